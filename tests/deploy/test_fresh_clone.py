"""What a newcomer's clone meets. With no ``../shared`` beside the project, the MovieLens
test skips and names ``RECALL_ML100K_DIR`` (set to a wrong path, it fails); the README
installs the Debian packages as ``.ci/run`` does."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ML100K_TEST = "tests/trainer/test_data.py::test_ml_100k"


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packages, pyproject.toml and the tests, away from ``../shared``."""
    copy = tmp_path_factory.mktemp("clone") / "recall"
    ignore = shutil.ignore_patterns("__pycache__")
    for package in ("recall", "trainer", "index", "service", "tests"):
        shutil.copytree(REPO / package, copy / package, ignore=ignore, symlinks=True)
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    assert not (copy.parent / "shared").exists()
    return copy


def run_pytest(clone: Path, ml100k: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RECALL_ML100K_DIR"}
    if ml100k is not None:
        env["RECALL_ML100K_DIR"] = ml100k
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", ML100K_TEST]
    return subprocess.run(command, cwd=clone, env=env, capture_output=True, text=True, timeout=120)


def test_without_the_data_the_test_skips_naming_the_setting(clone: Path) -> None:
    result = run_pytest(clone, None)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 skipped" in result.stdout
    skipped = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skipped) == 1 and "set RECALL_ML100K_DIR" in skipped[0]
    assert str(clone.parent / "shared" / "data" / "ml-100k") in skipped[0]


def test_a_wrong_setting_fails_instead_of_skipping(clone: Path) -> None:
    result = run_pytest(clone, str(clone / "nowhere"))
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"MovieLens 100K not found at {clone / 'nowhere'}" in result.stdout
    assert "1 error" in result.stdout  # a fixture failure: reported as an error in setup


def test_readme_installs_the_debian_packages_as_ci_does() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    readme = " ".join((REPO / "README.md").read_text().split())
    assert "apt-get install -y -qq --no-install-recommends" in ci
    packages = " ".join(re.findall(r"missing\+=\(([\w-]+)\)", ci))
    assert packages.startswith("docker-compose nginx")
    assert f"`apt-get install --no-install-recommends {packages}`" in readme
    assert not re.search(r"apt-get install (?!--no-install-recommends)", readme)  # docker.io
