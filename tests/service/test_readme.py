"""The README's HTTP examples, run as written against a live server.

Convention (README.md, section "HTTP API"): every ```sh block there is a list of shell
commands (``\\`` continues a line) run in one bash, with ``http://127.0.0.1:8000`` (the
demo's address) replaced by the test server's. The comment of a command, on its last
line or on the comment lines right after it, is what it answers: the HTTP status of
every curl call in it (200 unless the comment starts with another code), the quoted
``"key":`` names its JSON body must contain (at any depth), the values shown for
``status``, ``source`` and ``code``, and the ``recall_*`` metric names of a
Prometheus text. A command that writes a ``.npy`` with ``-o`` is checked for the row
count and the ``X-Missing-Count`` its comment shows. The ```python block of "Python
client" runs with the same substitution and ``RECALL_ADMIN_TOKEN`` set.

The server serves the ``published_root`` bundle (tests/conftest.py): written for data of
the demo's generator (trainer/synth.py), so the same ids (users and items from 1) and
user features (age, gender, country) exist.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic_core import PydanticUndefined

from recall.index.publish import publish
from recall.service.app import create_app
from recall.service.recaller import ServingBundle
from recall.service.settings import STATE_FILE, Settings
from recall.service.state import sqlite_url
from tests.index.test_verify import copy_bundle
from tests.live import live_server

README = Path(__file__).resolve().parents[2] / "README.md"
DEMO_URL = "http://127.0.0.1:8000"
CHECKED_VALUES = ("status", "source", "code")
MARK = "@@readme-command@@"


@dataclass(frozen=True)
class Example:
    """One command of a README ```sh block and the answer its comment shows."""

    command: str
    claim: str

    @property
    def status(self) -> int:
        found = re.match(r"\s*(\d{3})\b", self.claim)
        return int(found.group(1)) if found else 200

    @property
    def keys(self) -> set[str]:
        return set(re.findall(r'"(\w+)"\s*:', self.claim))

    @property
    def values(self) -> set[tuple[str, Any]]:
        pairs = re.findall(r'"(\w+)"\s*:\s*("[^"]*"|-?\d+)', self.claim)
        return {(k, json.loads(v)) for k, v in pairs if k in CHECKED_VALUES}


def section(text: str, title: str) -> str:
    """The body of the ``## title`` section."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, re.DOTALL | re.MULTILINE)
    assert match is not None, f"README has no section {title!r}"
    return match.group(1)


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```$", text, re.DOTALL | re.MULTILINE)


def examples(block: str) -> list[Example]:
    """The commands of one sh block, each with its comment."""
    out: list[tuple[list[str], list[str]]] = []
    continued = False
    for line in block.splitlines():
        if continued:
            out[-1][0].append(line)
        elif line.startswith("#"):
            assert out, f"a comment before any command: {line!r}"
            out[-1][1].append(line.lstrip("# "))
            continue
        elif line.strip():
            out.append(([line], []))
        else:
            continue
        continued = line.endswith("\\")
        last = out[-1][0]
        code, sep, comment = last[-1].partition("  # ")
        if sep and not continued:
            last[-1] = code.rstrip()
            out[-1][1].append(comment)
    return [Example("\n".join(lines), " ".join(claim)) for lines, claim in out]


def _pairs(value: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) of a JSON document, at any depth."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield k, v
            yield from _pairs(v)
    elif isinstance(value, list):
        for v in value:
            yield from _pairs(v)


@pytest.fixture(scope="module")
def token() -> str:
    return secrets.token_hex(24)


@pytest.fixture(scope="module")
def demo_root(published_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root of its own with the test bundle published, so the server gets the default
    state store (``<root>/.state/events.sqlite``) as ``make demo`` does, without writing
    events into the shared ``published_root``."""
    root = tmp_path_factory.mktemp("readme-root")
    publish(copy_bundle(published_root, root))
    return root


@pytest.fixture(scope="module")
def base_url(demo_root: Path, token: str) -> Iterator[str]:
    settings = Settings(root=demo_root, admin_token=token, reload_interval_s=0)
    assert settings.state_url == sqlite_url(demo_root / STATE_FILE)  # the default
    with live_server(create_app(settings)) as url:
        yield url
    assert (demo_root / STATE_FILE).is_file()  # the examples' events went there


@pytest.fixture(scope="module")
def readme() -> str:
    return README.read_text()


def test_the_settings_table_is_every_setting_with_its_default(readme: str) -> None:
    """README's Settings table lists exactly the fields of Settings, each with the default
    the code has (a number or word in backticks, or "unset" / "required")."""
    rows = dict(re.findall(r"^\| `(RECALL_\w+)` \| ([^|]*) \|", section(readme, "Settings"), re.M))
    fields = {f"RECALL_{name.upper()}": field for name, field in Settings.model_fields.items()}
    assert set(rows) == set(fields)
    for name, cell in rows.items():
        default, shown = fields[name].default, re.match(r"`([^`]*)`", cell.strip())
        if default is PydanticUndefined:
            assert cell.startswith("required"), name
        elif default is None:
            assert cell.startswith("unset"), name
        elif isinstance(default, bool | int | float):
            assert shown is not None and json.loads(shown.group(1)) == default, (name, cell)
        elif default:  # the empty state URL means "derived from the root", said in words
            assert shown is not None and shown.group(1) == default, (name, cell)


def test_examples_use_what_the_bundle_knows(published_root: Path, readme: str) -> None:
    """The ids and features of the examples exist in the test bundle, as in the demo's."""
    bundle = ServingBundle.load(published_root / (published_root / "CURRENT").read_text().strip())
    users, items = set(bundle.user_ids.ids.tolist()), set(bundle.item_ids.ids.tolist())
    assert {196, 186} <= users and {1, 50, 181} <= items
    assert 999999 not in users | items  # the examples' unknown id
    text = section(readme, "HTTP API") + section(readme, "Python client")
    for feature in re.findall(r'"features": \{([^}]*)\}', text) + re.findall(
        r"features=\{([^}]*)\}", text
    ):
        names = set(re.findall(r'"(\w+)":', feature))
        assert names <= {"age", "gender", "country"}, names


def test_the_http_examples_answer_as_shown(
    base_url: str, token: str, readme: str, tmp_path: Path
) -> None:
    if shutil.which("curl") is None:
        pytest.fail("curl is not installed: apt-get install -y curl (.ci/run installs it)")
    found = [e for b in blocks(section(readme, "HTTP API"), "sh") for e in examples(b)]
    assert len(found) >= 15, [e.command for e in found]
    # One bash for all: variables (B, V) carry over. Each curl writes its status to stderr.
    script = ["set -e -o pipefail", "curl() { command curl -w '%{stderr}%{http_code}\\n' \"$@\"; }"]
    for i, example in enumerate(found):
        script += [f"printf '\\n{MARK}{i}\\n'", f"printf '\\n{MARK}{i}\\n' >&2", example.command]
    done = subprocess.run(
        ["bash", "-c", "\n".join(script).replace(DEMO_URL, base_url)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "RECALL_ADMIN_TOKEN": token},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out, err = _split(done.stdout), _split(done.stderr)
    assert len(out) == len(err) == len(found)
    for example, body, statuses in zip(found, out, err, strict=True):
        body = body.strip()
        where = f"README example:\n{example.command}\n# {example.claim}\n-> {body[:300]!r}"
        calls = example.command.count("curl ")  # B=... calls none, V=$(curl ...) one
        assert [int(c) for c in statuses.split()] == [example.status] * calls, (statuses, where)
        if "-o " in example.command:
            _check_npy(example, tmp_path, where)
        elif "recall_" in example.claim and not example.keys:  # Prometheus text
            for name in re.findall(r"recall_\w+", example.claim):
                assert re.search(rf"^{name}\b", body, re.MULTILINE), (name, where)
        elif re.match(r"\w+=", example.command):  # an assignment prints nothing
            assert body == "", where
        else:
            pairs = list(_pairs(json.loads(body)))
            assert example.keys <= {k for k, _ in pairs}, where
            for pair in example.values:
                assert pair in pairs, (pair, where)


def _split(text: str) -> list[str]:
    """The output of each command, by the markers echoed before each."""
    return re.split(rf"\n{MARK}\d+\n", text)[1:]


def _check_npy(example: Example, workdir: Path, where: str) -> None:
    name = re.search(r"-o (\S+)", example.command)
    assert name is not None
    vectors = np.load(workdir / name.group(1), allow_pickle=False)
    assert vectors.dtype == np.float32, where
    rows = re.search(r"\((\d+), \d+\)", example.claim)
    assert rows is not None, where
    assert vectors.shape[0] == int(rows.group(1)), where
    missing = re.search(r"X-Missing-Count: (\d+)", example.claim)
    assert missing is not None, where
    assert int(np.isnan(vectors).all(axis=1).sum()) == int(missing.group(1)), where


def test_the_python_client_example_runs(base_url: str, token: str, readme: str) -> None:
    (code,) = blocks(section(readme, "Python client"), "python")
    assert DEMO_URL in code
    repo = README.parent
    done = subprocess.run(
        [sys.executable, "-c", code.replace(DEMO_URL, base_url)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=repo,
        env={**os.environ, "RECALL_ADMIN_TOKEN": token, "PYTHONPATH": str(repo)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
