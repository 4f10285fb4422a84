"""The README's "Experiments" section, run as written: its ```sh block in a directory laid
out as ``make demo`` leaves it (``.venv/bin/recall``, ``runs/demo/data``, a published
``runs/demo/bundles`` and a server on it), with a small synthetic data set and port 8000
replaced by a free one."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from recall.index.current import read_current
from recall.index.experiment import EXPERIMENT
from tests.cli.test_readme_import import section_blocks
from tests.live import free_port
from tests.serve_process import RECALL


def recall(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        [str(RECALL), *args], cwd=cwd, check=True, capture_output=True, text=True, timeout=300
    )
    return done.stdout


@pytest.fixture
def demo_dir(tmp_path: Path) -> Path:
    """What ``make demo`` leaves, smaller: .venv/bin (this interpreter's), the data in
    runs/demo/data (400 synthetic users, so user 196 exists) and its model published."""
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "bin").symlink_to(RECALL.parent)
    recall(tmp_path, "synth", "--out", "runs/demo/data", "--users", "400", "--items", "300")
    out = recall(tmp_path, "train", "--data", "runs/demo/data", "--out", "runs/demo/bundles",
                 "--epochs", "2", "--no-progress")  # fmt: skip
    recall(tmp_path, "build-index", out.strip().splitlines()[-1], "--publish")
    return tmp_path


@pytest.fixture
def demo_server(demo_dir: Path) -> Iterator[int]:
    """``recall serve`` on the demo's root at a free port (polling CURRENT and EXPERIMENT
    every 0.2 s), until the test ends."""
    port = free_port()
    env = {**os.environ, "RECALL_RELOAD_INTERVAL_S": "0.2"}
    server = subprocess.Popen(
        [str(RECALL), "serve", "--root", "runs/demo/bundles", "--port", str(port)],
        cwd=demo_dir,
        env=env,
    )
    try:
        for _ in range(600):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None:
                raise RuntimeError(f"recall serve exited with {server.returncode}")
            time.sleep(0.1)
        else:
            raise RuntimeError("recall serve was not ready in 60 s")
        yield port
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_the_experiments_section_runs_as_written(demo_dir: Path, demo_server: int) -> None:
    script = section_blocks("Experiments")["sh"].replace("8000", str(demo_server))
    root = demo_dir / "runs" / "demo" / "bundles"
    control = read_current(root)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=demo_dir,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    answer = json.loads(next(line for line in lines if line.startswith("{")))
    assert answer["arm"] in ("control", "canary") and len(answer["items"]) == 5
    status = next(line.split() for line in lines if line.strip().startswith("canary"))
    assert status[1] == "10.0%"  # status: the arm, its share, its bundle
    canary = status[2]
    assert canary != control and read_current(root) == canary  # stop --promote
    assert not (root / EXPERIMENT).exists()
