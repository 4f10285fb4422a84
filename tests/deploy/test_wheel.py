"""The built wheel, installed into a fresh virtual environment, claims one top-level name
(``recall``) and serves from a working directory whose ``index.py``, ``service.py`` and
``trainer.py`` would shadow generic package names."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from recall.index.build import BuildOptions, build_index
from recall.index.publish import publish
from tests.index_data import clustered, write_vectors_bundle
from tests.live import free_port
from tests.serve_process import stop, wait_ready

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the sources (an in-tree build would leave build/)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("recall", "index", "service", "trainer"):
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(REPO / name, src / name, ignore=ignore, symlinks=True)
    return build_wheel(src, tmp_path_factory.mktemp("dist"))


def build_wheel(src: Path, out: Path) -> Path:
    """``pip wheel`` of the sources in ``src`` into ``out``; the one wheel it made."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(out),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (found,) = out.glob("recall-*.whl")
    return found


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Path:
    """A fresh venv with the wheel installed without its dependencies; those come from this
    interpreter's site-packages through a path entry (not processed as a site directory, so
    this checkout's editable install is not seen)."""
    env_dir = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(purelib) / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            "--no-deps",
            str(wheel),
        ],
        check=True,
        timeout=300,
    )
    return env_dir


def test_the_wheel_installs_recall_alone(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        top_level = next(n for n in zf.namelist() if n.endswith(".dist-info/top_level.txt"))
        assert zf.read(top_level).decode().split() == ["recall"]
        roots = {name.split("/")[0] for name in zf.namelist()}
    assert {r for r in roots if not r.endswith(".dist-info")} == {"recall"}


@pytest.fixture
def shadowing_cwd(tmp_path: Path) -> Path:
    """A working directory whose modules would win over generic package names."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    for name in ("index", "service", "trainer"):
        (cwd / f"{name}.py").write_text(f"raise ImportError('the cwd {name}.py was imported')\n")
    return cwd


@pytest.mark.parametrize(
    "command",
    [
        ["bin/recall", "--version"],
        # python -c puts the working directory first on sys.path
        ["bin/python", "-c", "from recall.cli import main; main(['--version'])"],
    ],
    ids=["console-script", "python-c"],
)
def test_recall_version_runs_from_a_shadowing_directory(
    venv: Path, shadowing_cwd: Path, command: list[str]
) -> None:
    result = subprocess.run(
        [venv / command[0], *command[1:]],
        cwd=shadowing_cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("recall ")


@pytest.fixture
def served(venv: Path, shadowing_cwd: Path, tmp_path: Path) -> Iterator[str]:
    root = tmp_path / "root"
    bundle = write_vectors_bundle(root, *clustered(300, 20, dim=8, seed=3))
    build_index(bundle, BuildOptions(kind="flat"))
    publish(bundle)
    port = free_port()
    env = {**os.environ, "RECALL_STATE_URL": f"sqlite:///{tmp_path / 'events.sqlite'}"}
    server = subprocess.Popen(
        [venv / "bin" / "recall", "serve", "--root", str(root), "--port", str(port)],
        cwd=shadowing_cwd,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, server)
        yield base
    finally:
        stop(server)


def test_the_installed_wheel_serves_a_recall(served: str) -> None:
    vector = httpx.get(f"{served}/v1/users/0/vector", timeout=5).json()["vector"]
    answer = httpx.post(f"{served}/v1/recall", json={"vector": vector, "k": 5}, timeout=5)
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["items"]) == 5
