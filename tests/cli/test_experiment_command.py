"""``recall experiment start|status|stop`` on a local root and on a real moto_server S3
root: what it writes, what it refuses (exit 2, nothing written), and retention sparing
the arms' bundles."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from recall.cli import main
from recall.cli.experiment import new_experiment
from recall.index import bundle as b
from recall.index.current import CURRENT
from recall.index.experiment import EXPERIMENT, parse_experiment
from recall.index.publish import publish, read_current
from recall.index.roots import ExperimentConflict, LocalRoot, Root, S3Location, S3Root
from tests.conftest import PUBLISHED_ID
from tests.index.test_verify import copy_bundle, edit_manifest
from tests.index_data import flip_a_byte
from tests.moto_server import BUCKET, MotoServer, s3_environment

CONTROL_ID = PUBLISHED_ID  # control is the published test bundle
CANARY_ID = "20260102T000000Z-cccccc"
OTHER_ID = "20260103T000000Z-dddddd"
BROKEN_ID = "20260104T000000Z-eeeeee"


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every entry of the root (files with their bytes, directories as None), recursively:
    what "nothing written" compares."""
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture
def root(tmp_path: Path, published_root: Path) -> Path:
    """CURRENT = CONTROL_ID; CANARY_ID and OTHER_ID good bundles; BROKEN_ID fails its sha256."""
    root = tmp_path / "root"
    root.mkdir()
    for bundle_id in (CONTROL_ID, CANARY_ID, OTHER_ID, BROKEN_ID):
        copy_bundle(published_root, root, bundle_id)
    flip_a_byte(root / BROKEN_ID)
    (root / CURRENT).write_text(f"{CONTROL_ID}\n")
    return root


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def start(root: Path | str, *flags: str) -> int:
    return main(["experiment", "start", str(root), *flags])


def test_start_status_stop_on_a_local_root(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert start(root, "--arm", f"canary={CANARY_ID}", "--share", "0.1", "--salt", "s") == 0
    experiment_id = capsys.readouterr().out.strip()
    experiment = parse_experiment((root / EXPERIMENT).read_bytes())
    assert experiment.id == experiment_id and experiment_id.startswith("exp-")
    assert experiment.salt == "s"
    assert [(a.name, a.bundle_id, a.share) for a in experiment.arms] == [("canary", CANARY_ID, 0.1)]
    assert main(["experiment", "status", str(root), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["experiment"]["id"] == experiment_id
    assert status["control"] == {"bundle_id": CONTROL_ID, "share": pytest.approx(0.9)}
    assert main(["experiment", "status", str(root)]) == 0
    text = capsys.readouterr().out
    assert experiment_id in text and "canary" in text and "10.0%" in text and CONTROL_ID in text
    assert main(["experiment", "stop", str(root)]) == 0
    assert not (root / EXPERIMENT).exists()
    assert read_current(root) == CONTROL_ID
    assert main(["experiment", "status", str(root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["experiment"] is None


def test_a_share_per_arm_and_stop_promoting_an_arm(root: Path) -> None:
    arms = ["--arm", f"a={CANARY_ID}", "--arm", f"b={OTHER_ID}"]
    assert start(root, *arms, "--share", "0.2", "--share", "0.3") == 0
    experiment = parse_experiment((root / EXPERIMENT).read_bytes())
    assert [(a.name, a.share) for a in experiment.arms] == [("a", 0.2), ("b", 0.3)]
    assert main(["experiment", "stop", str(root), "--promote", "b"]) == 0
    assert read_current(root) == OTHER_ID
    assert not (root / EXPERIMENT).exists()


def test_two_starts_default_salts_differ_and_the_arm_may_be_controls_bundle(root: Path) -> None:
    assert start(root, "--arm", f"aa={CONTROL_ID}", "--share", "0.5") == 0  # an A/A test
    first = parse_experiment((root / EXPERIMENT).read_bytes())
    assert main(["experiment", "stop", str(root)]) == 0
    assert start(root, "--arm", f"aa={CONTROL_ID}", "--share", "0.5") == 0
    second = parse_experiment((root / EXPERIMENT).read_bytes())
    assert first.salt != second.salt and first.id != second.id


BAD_STARTS: list[tuple[str, list[str], str]] = [
    ("share-zero", ["--arm", f"canary={CANARY_ID}", "--share", "0"], "greater than 0"),
    ("share-one", ["--arm", f"canary={CANARY_ID}", "--share", "1"], "less than 1"),
    ("share-negative", ["--arm", f"canary={CANARY_ID}", "--share", "-0.1"], "greater than 0"),
    (
        "shares-sum-to-one",
        ["--arm", f"a={CANARY_ID}", "--arm", f"b={OTHER_ID}", "--share", "0.5"],
        "sum to 1",
    ),
    (
        "share-count",
        ["--arm", f"a={CANARY_ID}", "--arm", f"b={OTHER_ID}", *["--share", "0.1"] * 3],
        "one --share for every arm",
    ),
    ("named-control", ["--arm", f"control={CANARY_ID}", "--share", "0.1"], "'control'"),
    ("bad-name", ["--arm", f"Can ary={CANARY_ID}", "--share", "0.1"], "pattern"),
    ("no-equals", ["--arm", CANARY_ID, "--share", "0.1"], "NAME=BUNDLE_ID"),
    (
        "repeated-name",
        ["--arm", f"a={CANARY_ID}", "--arm", f"a={OTHER_ID}", "--share", "0.1"],
        "repeat",
    ),
    ("unknown-bundle", ["--arm", "canary=20990101T000000Z-ffffff", "--share", "0.1"], "no bundle"),
    ("not-an-id", ["--arm", "canary=../etc", "--share", "0.1"], "pattern"),
    ("unverified-bundle", ["--arm", f"canary={BROKEN_ID}", "--share", "0.1"], "sha256"),
]


@pytest.mark.parametrize(("flags", "problem"), [pytest.param(f, p, id=n) for n, f, p in BAD_STARTS])
def test_a_bad_start_exits_2_with_one_line_and_writes_nothing(
    root: Path, flags: list[str], problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    before = snapshot(root)
    assert start(root, *flags) == 2
    assert snapshot(root) == before
    lines = errors(caplog)
    assert len(lines) == 1 and problem in lines[0], lines


def _running(root: Path) -> None:
    assert start(root, "--arm", f"canary={CANARY_ID}", "--share", "0.1") == 0


def _unpublished(root: Path) -> None:
    (root / CURRENT).unlink()


def _invalid_file(root: Path) -> None:
    (root / EXPERIMENT).write_text("{}")


BAD_ACTIONS: list[tuple[str, Callable[[Path], None], list[str], str]] = [
    (
        "second-experiment",
        _running,
        ["start", "--arm", f"b={OTHER_ID}", "--share", "0.1"],
        "is running",
    ),
    ("stop-with-none", lambda root: None, ["stop"], "no experiment is running"),
    ("promote-unknown-arm", _running, ["stop", "--promote", "nope"], "no such arm"),
    ("promote-control", _running, ["stop", "--promote", "control"], "control is CURRENT already"),
    (
        "invalid-experiment-file",
        _invalid_file,
        ["start", "--arm", f"b={OTHER_ID}", "--share", "0.1"],
        "not a valid experiment",
    ),
    (
        "nothing-published",
        _unpublished,
        ["start", "--arm", f"b={OTHER_ID}", "--share", "0.1"],
        "nothing is published",
    ),
]


@pytest.mark.parametrize(
    ("prepare", "action", "problem"), [pytest.param(p, a, e, id=n) for n, p, a, e in BAD_ACTIONS]
)
def test_a_refused_action_exits_2_with_one_line_and_writes_nothing(
    root: Path,
    prepare: Callable[[Path], None],
    action: list[str],
    problem: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    prepare(root)
    before = snapshot(root)
    assert main(["experiment", action[0], str(root), *action[1:]]) == 2
    assert snapshot(root) == before
    lines = errors(caplog)
    assert len(lines) == 1 and problem in lines[0], lines


def test_status_of_a_root_that_does_not_exist_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """A typo in the root is an error, not "no experiment is running"."""
    assert main(["experiment", "status", str(tmp_path / "nowhere")]) == 2
    assert errors(caplog) == [f"recall experiment: {tmp_path / 'nowhere'}: no such directory"]
    assert capsys.readouterr().out == ""
    assert main(["experiment", "status", str(tmp_path)]) == 0  # a root with nothing published
    assert capsys.readouterr().out == "no experiment is running; CURRENT is absent\n"


def test_stop_removes_an_invalid_experiment_file(root: Path) -> None:
    (root / EXPERIMENT).write_text("not json")
    assert main(["experiment", "status", str(root)]) == 2
    assert main(["experiment", "stop", str(root)]) == 0
    assert not (root / EXPERIMENT).exists()


def test_stop_refuses_an_experiment_that_changed_since_it_was_read(root: Path) -> None:
    _running(root)
    local = LocalRoot(root)
    seen = local.experiment()
    assert main(["experiment", "stop", str(root)]) == 0
    _running(root)  # another experiment now
    with pytest.raises(ExperimentConflict, match="changed meanwhile"):
        local.stop_experiment(seen)
    assert (root / EXPERIMENT).exists()


def _aged(root: Path, bundle_id: str, days: int) -> None:
    created = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=days)
    edit_manifest(root / bundle_id, created_at=created)


def test_retention_never_removes_an_arms_bundle_local(root: Path) -> None:
    for days, bundle_id in enumerate((CANARY_ID, CONTROL_ID, OTHER_ID, BROKEN_ID)):
        _aged(root, bundle_id, days)  # the canary is the oldest
    (root / BROKEN_ID / b.MANIFEST).unlink()  # not a bundle any more: left alone
    _running(root)
    publish(root / OTHER_ID, keep=1)
    assert (root / CANARY_ID).is_dir()  # the oldest, but an arm's
    assert not (root / CONTROL_ID).exists()  # neither CURRENT nor an arm nor kept
    assert main(["experiment", "stop", str(root)]) == 0
    publish(root / OTHER_ID, keep=1)
    assert not (root / CANARY_ID).exists()


def test_retention_removes_nothing_while_the_experiment_file_is_invalid(root: Path) -> None:
    (root / EXPERIMENT).write_text("{}")
    publish(root / OTHER_ID, keep=1)  # publishes; retention refuses and logs
    assert read_current(root) == OTHER_ID
    assert all((root / i).is_dir() for i in (CONTROL_ID, CANARY_ID, OTHER_ID))


def test_the_temp_file_of_a_start_that_died_goes_with_the_next_publish(root: Path) -> None:
    dead = root / f".{EXPERIMENT}.tmp-0badf00d"  # written, never linked: the start died
    dead.write_bytes(b"{}")
    removed = publish(root / OTHER_ID, keep=10)
    assert dead in removed and not dead.exists()


# -- S3 ---------------------------------------------------------------------------------


@pytest.fixture
def s3_root(moto: MotoServer, root: Path, request: pytest.FixtureRequest) -> Iterator[S3Root]:
    """An S3 root of its own with the local root's bundles uploaded, CONTROL_ID CURRENT
    (BROKEN_ID copied as it is: its sha256 fails once downloaded)."""
    with s3_environment(moto):
        s3 = S3Root(S3Location(BUCKET, f"exp/{request.node.name}"))
        for bundle_id in (CANARY_ID, OTHER_ID, CONTROL_ID):
            s3.publish(root / bundle_id, keep=10)
        for path in sorted((root / BROKEN_ID).iterdir(), key=lambda p: p.name == b.MANIFEST):
            key = s3.location.key(BROKEN_ID, path.name)
            moto.client().put_object(Bucket=BUCKET, Key=key, Body=path.read_bytes())
        yield s3


def objects(moto: MotoServer, s3: S3Root) -> dict[str, str]:
    """Every object key of the root with its ETag."""
    listed = moto.client().list_objects_v2(Bucket=BUCKET, Prefix=s3.location.prefix + "/")
    return {o["Key"]: o["ETag"] for o in listed.get("Contents", [])}


def test_start_status_stop_promote_on_s3(
    s3_root: S3Root, capsys: pytest.CaptureFixture[str]
) -> None:
    url = s3_root.url
    assert start(url, "--arm", f"canary={CANARY_ID}", "--share", "0.25") == 0
    experiment_id = capsys.readouterr().out.strip()
    state = s3_root.experiment()
    assert state.experiment is not None and state.experiment.id == experiment_id
    assert s3_root.experiment_if_changed(str(state.key[1]) if state.key else None) is None
    assert main(["experiment", "status", url, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["experiment"]["arms"][0]["bundle_id"] == CANARY_ID
    assert status["control"]["bundle_id"] == CONTROL_ID
    assert main(["experiment", "stop", url, "--promote", "canary"]) == 0
    assert s3_root.current_id() == CANARY_ID
    assert s3_root.experiment().key is None


@pytest.mark.parametrize(
    ("prepare", "action", "problem"),
    [
        pytest.param(
            True, ["start", "--arm", f"b={OTHER_ID}", "--share", "0.1"], "is running", id="second"
        ),
        pytest.param(False, ["stop"], "no experiment is running", id="stop-with-none"),
        pytest.param(
            False,
            ["start", "--arm", "b=20990101T000000Z-ffffff", "--share", "0.1"],
            "no manifest.json",
            id="unknown-bundle",
        ),
        pytest.param(
            False, ["start", "--arm", f"b={BROKEN_ID}", "--share", "0.1"], "sha256", id="broken"
        ),
        pytest.param(True, ["stop", "--promote", "nope"], "no such arm", id="promote-unknown"),
    ],
)
def test_a_refused_action_on_s3_exits_2_and_writes_nothing(
    s3_root: S3Root,
    moto: MotoServer,
    prepare: bool,
    action: list[str],
    problem: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if prepare:
        assert start(s3_root.url, "--arm", f"canary={CANARY_ID}", "--share", "0.1") == 0
    before = objects(moto, s3_root)
    assert main(["experiment", action[0], s3_root.url, *action[1:]]) == 2
    assert objects(moto, s3_root) == before
    lines = errors(caplog)
    assert len(lines) == 1 and problem in lines[0], lines


def test_s3_stop_removes_only_the_experiment_it_saw(s3_root: S3Root) -> None:
    assert start(s3_root.url, "--arm", f"canary={CANARY_ID}", "--share", "0.1") == 0
    seen = s3_root.experiment()
    assert main(["experiment", "stop", s3_root.url]) == 0
    assert start(s3_root.url, "--arm", f"other={OTHER_ID}", "--share", "0.1") == 0
    with pytest.raises(ExperimentConflict, match="changed"):
        s3_root.stop_experiment(seen)  # If-Match the old ETag: refused
    running = s3_root.experiment().experiment
    assert running is not None and running.arms[0].name == "other"


def test_s3_retention_never_removes_an_arms_bundle(s3_root: S3Root, root: Path) -> None:
    assert start(s3_root.url, "--arm", f"canary={CANARY_ID}", "--share", "0.1") == 0
    removed = s3_root.retain(1)
    assert CANARY_ID not in removed and CONTROL_ID not in removed
    assert s3_root.read_manifest(CANARY_ID)
    assert main(["experiment", "stop", s3_root.url]) == 0
    assert CANARY_ID in s3_root.retain(1)


def test_s3_object_store_down_exits_3(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
        env.setenv("AWS_ACCESS_KEY_ID", "x")
        env.setenv("AWS_SECRET_ACCESS_KEY", "x")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        assert main(["experiment", "status", "s3://recall-test/nothing"]) == 3
    assert "did not answer" in errors(caplog)[0]


def _race(root: Root, arms: list[str]) -> tuple[list[str], list[BaseException]]:
    """Start one experiment per arm name at once, each in its own thread: (the names
    that started, the errors of the others)."""
    won: list[str] = []
    lost: list[BaseException] = []
    barrier = threading.Barrier(len(arms))

    def one(name: str) -> None:
        experiment = new_experiment([f"{name}={CANARY_ID}"], [0.1], None)
        barrier.wait()
        try:
            root.start_experiment(experiment)
            won.append(name)
        except b.BundleError as e:
            lost.append(e)

    threads = [threading.Thread(target=one, args=(name,)) for name in arms]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return won, lost


def test_of_two_starts_at_once_one_wins_local(root: Path) -> None:
    won, lost = _race(LocalRoot(root), ["a", "b"])
    assert len(won) == 1 and len(lost) == 1, (won, lost)
    running = LocalRoot(root).experiment().experiment
    assert running is not None and running.arms[0].name == won[0]


def test_of_two_starts_at_once_one_wins_s3(s3_root: S3Root) -> None:
    """Both pass the check that none runs (each downloads and verifies the arm's bundle
    meanwhile); the conditional PutObject lets one of them write."""
    won, lost = _race(s3_root, ["a", "b", "c"])
    assert len(won) == 1 and len(lost) == 2, (won, lost)
    assert all(isinstance(e, ExperimentConflict) for e in lost), lost
    running = s3_root.experiment().experiment
    assert running is not None and running.arms[0].name == won[0]
