"""The ``recall`` command line, end to end on real files."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
from importlib.metadata import version
from pathlib import Path

import pytest

from recall.cli import build_parser, main
from recall.index import bundle as b
from recall.index.publish import read_current
from tests.conftest import BundleFactory
from tests.serve_process import RECALL

REPO = Path(__file__).resolve().parents[2]


def recall(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real ``recall`` console script on this checkout, no RECALL_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECALL_")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [str(RECALL), *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def strict_json(text: str) -> object:
    def refuse(constant: str) -> object:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_synth_train_eval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, root = tmp_path / "data", tmp_path / "bundles"
    assert main(["synth", "--out", str(data), "--users", "200", "--items", "80"]) == 0
    train = ["train", "--data", str(data), "--out", str(root), "--epochs", "2"]
    assert main([*train, "--hidden", "16", "--tower", "attention", "--no-progress"]) == 0
    bundle = Path(capsys.readouterr().out.strip())
    assert bundle.parent == root
    config = b.read_manifest(bundle).trainer["config"]
    assert config["hidden"] == [16] and config["tower"] == "attention"

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


def test_eval_writes_json_only_where_out_says(
    tmp_path: Path,
    make_bundle: BundleFactory,
    synthetic_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bundle = tmp_path / "root" / make_bundle(tmp_path / "root", "20260101T000000Z-e0a1b2")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert main(["eval", str(bundle), "--data", str(synthetic_dir)]) == 0
    assert capsys.readouterr().out.startswith("method")
    assert list(cwd.iterdir()) == []  # the table only: nothing written into the cwd

    report = tmp_path / "reports" / "eval.json"
    report.parent.mkdir()
    assert main(["eval", str(bundle), "--data", str(synthetic_dir), "--out", str(report)]) == 0
    written = strict_json(report.read_text())
    assert isinstance(written, dict)
    assert written["results"]["model"]["users"] == 400
    assert list(cwd.iterdir()) == []


def test_eval_on_data_the_bundle_does_not_know_exits_2(
    tmp_path: Path, make_bundle: BundleFactory
) -> None:
    bundle = tmp_path / "root" / make_bundle(tmp_path / "root", "20260101T000000Z-e0c3d4")
    other = tmp_path / "other"  # string ids: no user or item in common with the bundle
    other.mkdir()
    rows = [f"u{u},i{(u + t) % 7},{100 * t}" for u in range(20) for t in range(4)]
    (other / "interactions.csv").write_text("\n".join(["user_id,item_id,timestamp", *rows]))
    cwd = tmp_path / "cwd"
    cwd.mkdir()

    result = recall("eval", bundle, "--data", other, "--out", cwd / "eval.json", cwd=cwd)
    assert result.returncode == 2, result.stderr
    assert "the data and the bundle have no test user in common" in result.stderr
    assert "of 20 test users, 0 are in the bundle" in result.stderr
    assert "Warning" not in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""  # no table of NaN
    assert list(cwd.iterdir()) == []


def all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parser and every subcommand's parser, depth first."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += all_parsers(sub)
    return found


def test_every_flag_has_a_help_line_without_rest_markup() -> None:
    parsers = all_parsers(build_parser())
    # recall + 9 subcommands + events export + experiment start, status, stop
    assert len(parsers) == 15
    for parser in parsers:
        for action in parser._actions:
            where = f"{parser.prog} {'/'.join(action.option_strings) or action.dest}"
            assert action.help and action.help != argparse.SUPPRESS, f"{where}: no help"
        text = parser.format_help()
        assert "``" not in text, f"{parser.prog}: reST markup in its help"
        assert parser.description, f"{parser.prog}: no description"


def test_version() -> None:
    result = recall("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"recall {version('recall')}"


def test_serve_without_a_root_names_the_flag_and_variable(tmp_path: Path) -> None:
    result = recall("serve", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.rstrip().endswith("recall serve: set --root or RECALL_ROOT")
    assert "Traceback" not in result.stderr and "Field required" not in result.stderr


def test_serve_on_a_root_that_does_not_exist_exits_2_creating_nothing(tmp_path: Path) -> None:
    """A typo in --root is refused at once, not served as 503 forever with a .state/ made
    under the typo."""
    typo = tmp_path / "bundels"
    result = recall("serve", "--root", typo)
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert line.endswith(
        f"recall serve: --root or RECALL_ROOT: {typo} is not a directory (create it, or "
        "publish a bundle there: recall build-index ROOT/<id> --publish)"
    )
    assert "Traceback" not in result.stderr
    assert not typo.exists()


def test_a_root_given_for_a_bundle_and_a_bundle_for_a_root_are_named(
    published_root: Path,
) -> None:
    current = read_current(published_root)
    assert current is not None
    bundle = published_root / current
    served = recall("serve", "--root", bundle)
    assert served.returncode == 2
    line = served.stderr.strip().splitlines()[-1]
    assert line.endswith(
        f"recall serve: --root or RECALL_ROOT: {bundle} is a bundle, not a bundle root: serve "
        f"the directory that holds it and CURRENT (--root {published_root})"
    )
    indexed = recall("build-index", published_root)
    assert indexed.returncode == 2
    line = indexed.stderr.strip().splitlines()[-1]
    assert line.endswith(
        f"recall build-index: {published_root}: no manifest.json (a bundle root: name one of "
        f"its bundles, {published_root}/<bundle-id>)"
    )


def test_serve_and_demo_on_a_port_in_use_exit_2_at_once(tmp_path: Path) -> None:
    """Before loading a bundle, and before the demo trains for minutes."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        served = recall("serve", "--root", tmp_path, "--port", port)
        demo = recall("demo", "--workdir", tmp_path / "demo", "--port", port)
    in_use = f"127.0.0.1:{port} is already in use (another recall serve or make demo? stop it"
    assert served.returncode == 2
    assert f"recall serve: --port or RECALL_PORT: {in_use}" in served.stderr.splitlines()[-1]
    assert demo.returncode == 2
    assert f"recall demo: --port: {in_use}" in demo.stderr.splitlines()[-1]
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--port", "70000"], "--port or RECALL_PORT: Input should be less than or equal"),
        (["--workers", "0"], "--workers or RECALL_WORKERS: Input should be greater than"),
    ],
)
def test_invalid_serve_flags_name_flag_and_variable(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    result = recall("serve", "--root", tmp_path, *args)
    assert result.returncode == 2
    assert f"recall serve: {expected}" in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_variables_name_the_variable(tmp_path: Path) -> None:
    """Settings without a flag name their RECALL_* variable; a refused token is not echoed."""
    token = "change-me-to-a-long-random-string"
    env = {**os.environ, "RECALL_MAX_K": "0", "RECALL_ADMIN_TOKEN": token}
    env["PYTHONPATH"] = str(REPO)
    command = [str(RECALL), "serve", "--root", str(tmp_path)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert "RECALL_MAX_K: Input should be greater than or equal to 1" in line
    assert "RECALL_ADMIN_TOKEN: admin token is a placeholder" in line
    assert token not in result.stderr


def test_faiss_loader_lines_only_at_debug(tmp_path: Path) -> None:
    """``recall publish`` imports faiss; its loader logs each module it tries at INFO."""
    quiet = recall("publish", tmp_path / "nothing")
    assert quiet.returncode == 2
    assert "recall publish:" in quiet.stderr  # the error itself still shows
    assert "faiss.loader" not in quiet.stderr and "AVX" not in quiet.stderr
    loud = recall("--log-level", "DEBUG", "publish", tmp_path / "nothing")
    assert "faiss.loader" in loud.stderr  # the lines exist: hidden, not absent


def test_ctrl_c_in_training_is_one_line_and_exit_130(tmp_path: Path, synthetic_dir: Path) -> None:
    """SIGINT once training has started (its first log line about the examples)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECALL_")}
    train = [str(RECALL), "train", "--data", str(synthetic_dir), "--out", str(tmp_path / "b")]
    with subprocess.Popen(
        [*train, "--epochs", "1000", "--no-progress"], env=env, stderr=subprocess.PIPE, text=True
    ) as process:
        assert process.stderr is not None
        seen = []
        for line in process.stderr:
            seen.append(line)
            if "examples;" in line:
                process.send_signal(signal.SIGINT)
                break
        rest = process.stderr.read()
        assert process.wait(timeout=60) == 130, "".join(seen) + rest
    assert "Traceback" not in rest
    assert rest.strip().splitlines()[-1].endswith("ERROR recall: recall train: interrupted")


@pytest.mark.slow
def test_demo_ends_with_a_published_bundle(tmp_path: Path) -> None:
    demo = ["demo", "--workdir", str(tmp_path), "--users", "300", "--items", "120"]
    assert main([*demo, "--no-serve"]) == 0
    root = tmp_path / "bundles"
    current = read_current(root)
    assert current is not None
    assert b.read_manifest(root / current).index is not None
    assert list(tmp_path.glob("eval-*.json"))
