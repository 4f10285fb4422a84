"""The ``recall`` command line, end to end on real files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from index import bundle as b
from index.publish import read_current
from service.cli import main


def test_synth_train_eval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, root = tmp_path / "data", tmp_path / "bundles"
    assert main(["synth", "--out", str(data), "--users", "200", "--items", "80"]) == 0
    train = ["train", "--data", str(data), "--out", str(root), "--epochs", "2"]
    assert main([*train, "--hidden", "16", "--no-progress"]) == 0
    bundle = Path(capsys.readouterr().out.strip())
    assert bundle.parent == root
    assert b.read_manifest(bundle).trainer["config"]["hidden"] == [16]

    report = tmp_path / "eval.json"
    assert main(["eval", str(bundle), "--data", str(data), "--out", str(report)]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:3] == ["method", "hr@10", "hr@50"]
    results = json.loads(report.read_text())["results"]
    assert set(results) == {"model", "popularity"}
    assert results["model"]["users"] == 200


def test_bad_input_is_one_error_line_and_exit_2(
    tmp_path: Path, synthetic_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert main(["eval", str(tmp_path / "nothing"), "--data", str(synthetic_dir)]) == 2
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "no manifest.json" in errors[0]
    assert "interactions" in errors[1]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_demo_ends_with_a_published_bundle(tmp_path: Path) -> None:
    demo = ["demo", "--workdir", str(tmp_path), "--users", "300", "--items", "120"]
    assert main([*demo, "--no-serve"]) == 0
    root = tmp_path / "bundles"
    current = read_current(root)
    assert current is not None
    assert b.read_manifest(root / current).index is not None
    assert list(tmp_path.glob("eval-*.json"))
