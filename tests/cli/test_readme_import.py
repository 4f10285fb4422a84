"""The README's "Bring your own vectors", run as written: its ```python block (implicit's
ALS on an interactions.csv, factors saved as .npz) and its ```sh block (``recall import``,
``build-index --publish``, ``recall serve``, a recall over HTTP) in one directory, with
port 8000 replaced by a free one."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from recall.index.current import read_current
from tests.live import free_port

README = Path(__file__).resolve().parents[2] / "README.md"


def section_blocks(title: str) -> dict[str, str]:
    """The fenced blocks of the README section ``## title``, by language."""
    text = README.read_text()
    section = text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"```(\w+)\n(.*?)```", section, re.DOTALL))


def write_interactions(path: Path, seed: int = 0) -> None:
    """300 users (ids 1..300, so 196 exists) x 400 items, 20 interactions each."""
    rng = np.random.default_rng(seed)
    lines = ["user_id,item_id,timestamp"]
    for user in range(1, 301):
        for t, item in enumerate(rng.choice(400, size=20, replace=False)):
            lines.append(f"{user},{item + 1},{880000000 + 100 * user + t}")
    path.write_text("\n".join(lines) + "\n")


def test_bring_your_own_vectors_runs_as_written(tmp_path: Path) -> None:
    blocks = section_blocks("Bring your own vectors")
    write_interactions(tmp_path / "interactions.csv")
    subprocess.run([sys.executable, "-c", blocks["python"]], cwd=tmp_path, check=True, timeout=120)
    assert np.load(tmp_path / "items.npz")["vectors"].shape == (400, 32)

    script = blocks["sh"].replace("8000", str(free_port()))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    output = tmp_path / "stdout.txt"
    with output.open("w") as stdout:  # a file: the backgrounded server keeps a pipe open
        shell = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=tmp_path,
            env=env,
            stdout=stdout,
            start_new_session=True,  # the backgrounded `recall serve` is in this group
        )
        try:
            assert shell.wait(timeout=180) == 0
        finally:
            os.killpg(shell.pid, signal.SIGTERM)
    answer = json.loads(output.read_text().strip().splitlines()[-1])
    assert answer["source"] == "user" and len(answer["items"]) == 10
    current = read_current(tmp_path / "bundles")  # beside it: CURRENT, the server's .state/
    assert current is not None
    bundle = tmp_path / "bundles" / current
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["source"]["model"] == "implicit ALS"
    assert manifest["counts"] == {"users": 300, "items": 400, "interactions": 6000}
