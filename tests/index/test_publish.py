"""Publishing: verify-then-swap CURRENT, rollback, retention, killed builds, the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from recall import cli
from recall.cli import build_index as build_index_command
from recall.index import bundle as b
from recall.index import faiss_index as fi
from recall.index.build import build_index
from recall.index.publish import CURRENT, publish, read_current, retain, verify_bundle
from recall.index.search import ItemIndex
from recall.trainer.config import TrainConfig
from recall.trainer.data import Dataset
from recall.trainer.export import export_bundle
from recall.trainer.train import Trained
from tests.index_data import FAST_FLAT, clustered, write_vectors_bundle

REPO = Path(__file__).resolve().parents[2]


def _bundle(root: Path, n: int, *, built: bool = True, seed: int = 0) -> Path:
    items, users = clustered(300, 50, 8, seed=seed)
    bundle = write_vectors_bundle(root, items, users, bundle_id=f"20260101T0000{n:02d}Z-abcdef")
    if built:
        build_index(bundle, FAST_FLAT)
    return bundle


def _ids(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".") and p.is_dir())


def test_publish_makes_current_and_rollback_works(tmp_path: Path) -> None:
    first, second = _bundle(tmp_path, 1), _bundle(tmp_path, 2)
    assert read_current(tmp_path) is None
    publish(first)
    assert (tmp_path / CURRENT).read_text() == f"{first.name}\n"
    publish(second)
    assert read_current(tmp_path) == second.name
    publish(first)  # rollback
    assert read_current(tmp_path) == first.name
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda bd: (bd / b.USER_TOWER).unlink(), "user_tower.npz is missing"),
        (lambda bd: (bd / b.INDEX).unlink(), "index.faiss is missing"),
        (lambda bd: _flip(bd / b.INDEX), "index.faiss fails its sha256"),
        (lambda bd: _flip(bd / b.USER_SEEN), "user_seen.npz fails its sha256"),
        (lambda bd: _flip(bd / b.ITEM_IDS), "item_ids.npy fails its sha256"),
        (lambda bd: (bd / b.MANIFEST).unlink(), "no manifest.json"),
    ],
)
def test_a_damaged_bundle_is_refused_and_nothing_is_published(
    tmp_path: Path, damage: object, message: str
) -> None:
    good, bad = _bundle(tmp_path, 1), _bundle(tmp_path, 2)
    publish(good)
    damage(bad)  # type: ignore[operator]
    with pytest.raises(b.BundleError, match=message):
        publish(bad)
    assert read_current(tmp_path) == good.name


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_bundle_without_index_is_refused(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, 1, built=False)
    with pytest.raises(b.BundleError, match="no index"):
        publish(bundle)
    assert read_current(tmp_path) is None


def test_nan_rows_are_refused_even_when_checksums_match(tmp_path: Path) -> None:
    items, users = clustered(300, 50, 8)
    bundle = write_vectors_bundle(tmp_path, items, users)
    build_index(bundle, FAST_FLAT)
    users[3, 0] = np.nan  # a trainer bug, faithfully checksummed
    b.save_array(bundle / b.USER_VECTORS, users)
    manifest = b.read_manifest(bundle)
    files = {**manifest.files, b.USER_VECTORS: b.file_entry(bundle / b.USER_VECTORS)}
    forged = b.Manifest.model_validate({**manifest.model_dump(), "files": files})
    b.write_json_atomic(bundle / b.MANIFEST, forged.model_dump_json())
    with pytest.raises(b.BundleError, match="NaN/Inf"):
        publish(bundle)
    assert read_current(tmp_path) is None


def test_wrong_dimension_is_refused(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, 1)
    manifest = b.read_manifest(bundle)
    forged = b.Manifest.model_validate({**manifest.model_dump(), "dim": manifest.dim + 1})
    b.write_json_atomic(bundle / b.MANIFEST, forged.model_dump_json())
    with pytest.raises(b.BundleError, match=r"shape \(50, 9\), manifest says \(50, 10\)"):
        verify_bundle(bundle)
    with pytest.raises(b.BundleError, match="shape"):
        publish(bundle)
    assert read_current(tmp_path) is None


def test_building_into_the_current_bundle_is_refused(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, 1)
    publish(bundle)
    before = (bundle / b.MANIFEST).read_bytes(), (bundle / b.INDEX).read_bytes()
    with pytest.raises(b.BundleError, match="CURRENT bundle; published bundles are immutable"):
        build_index(bundle, FAST_FLAT)
    assert ((bundle / b.MANIFEST).read_bytes(), (bundle / b.INDEX).read_bytes()) == before


def test_retention_keeps_the_newest_and_never_current(tmp_path: Path) -> None:
    bundles = [_bundle(tmp_path, i) for i in range(5)]
    publish(bundles[0], keep=5)
    publish(bundles[4], keep=5)
    publish(bundles[0], keep=2)  # rollback to the oldest, keep 2
    assert _ids(tmp_path) == sorted([bundles[0].name, bundles[3].name, bundles[4].name])
    assert read_current(tmp_path) == bundles[0].name
    removed = retain(tmp_path, keep=1)
    assert _ids(tmp_path) == sorted([bundles[0].name, bundles[4].name])
    assert removed == [bundles[3]]
    with pytest.raises(ValueError, match="keep"):
        retain(tmp_path, keep=0)


def test_retention_leaves_foreign_and_unfinished_directories(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, 1)
    (tmp_path / "notes").mkdir()
    old_staging = tmp_path / ".staging-20250101T000000Z-000000"
    new_staging = tmp_path / ".staging-20260101T000000Z-111111"
    old_staging.mkdir()
    new_staging.mkdir()
    week_ago = time.time() - 7 * 24 * 3600
    os.utime(old_staging, (week_ago, week_ago))
    publish(bundle, keep=1)
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {bundle.name, "notes", new_staging.name, CURRENT}


def test_publish_keeps_current_unchanged_when_the_lock_is_held(tmp_path: Path) -> None:
    from recall.index.publish import bundle_lock

    first, second = _bundle(tmp_path, 1), _bundle(tmp_path, 2)
    publish(first)
    with bundle_lock(second), pytest.raises(b.BundleError, match="in progress"):
        publish(second)
    assert read_current(tmp_path) == first.name


_KILL_SCRIPT = """
import os, signal, sys
from pathlib import Path
from recall.index import faiss_index as fi
from recall.index.build import BuildOptions, build_index

where = sys.argv[2]
def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
if where == "training":
    fi.create_index = die
elif where == "writing":
    import faiss
    def write_half_then_die(index, path):
        Path(path).write_bytes(b"half an index")
        die()
    faiss.write_index = write_half_then_die
elif where == "index-written":
    real = fi.write_index
    def write_then_die(index, path):
        real(index, path)
        die()
    fi.write_index = write_then_die
build_index(Path(sys.argv[1]), BuildOptions(kind="hnsw", sample_queries=20))
"""


@pytest.mark.parametrize("where", ["training", "writing", "index-written"])
def test_a_build_killed_half_way_leaves_current_unchanged(tmp_path: Path, where: str) -> None:
    good = _bundle(tmp_path, 1)
    publish(good)
    victim = _bundle(tmp_path, 2)  # had a flat index; now rebuilt as hnsw and killed
    manifest_before = (victim / b.MANIFEST).read_bytes()
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_KILL_SCRIPT), str(victim), where],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert read_current(tmp_path) == good.name
    assert (victim / b.MANIFEST).read_bytes() == manifest_before
    leftovers = [p.name for p in victim.iterdir() if p.name.startswith(".")]
    assert len(leftovers) == (where == "writing")
    assert all(name.startswith(".index.faiss.tmp-") for name in leftovers)
    if where == "index-written":  # new index.faiss, old manifest: refused until rebuilt
        with pytest.raises(b.BundleError, match=r"index\.faiss (has \d+ bytes|fails its sha256)"):
            publish(victim)
        assert read_current(tmp_path) == good.name
    build_index(victim, FAST_FLAT)  # a rebuild repairs the bundle and removes leftovers
    assert not [p for p in victim.iterdir() if p.name.startswith(".")]
    publish(victim)
    assert read_current(tmp_path) == victim.name


def test_cli_build_index_publish_and_rollback(tmp_path: Path) -> None:
    first, second = _bundle(tmp_path, 1, built=False), _bundle(tmp_path, 2, built=False)
    assert cli.main(["build-index", str(first), "--kind", "flat", "--publish"]) == 0
    assert read_current(tmp_path) == first.name
    args = ["build-index", str(second), "--kind", "hnsw", "--sample-queries", "20"]
    assert cli.main([*args, "--target-recall", "0.9", "--publish", "--keep", "2"]) == 0
    assert read_current(tmp_path) == second.name
    assert b.read_manifest(second).index["kind"] == "hnsw"  # type: ignore[index]
    assert cli.main(["publish", str(first)]) == 0
    assert read_current(tmp_path) == first.name
    assert cli.main(["build-index", str(first)]) == 2  # CURRENT is immutable
    assert cli.main(["publish", str(tmp_path / "nope")]) == 2
    assert cli.main(["build-index", str(second), "--target-recall", "2"]) == 2


def test_cli_kind_choices_match_the_index_package() -> None:
    assert build_index_command.KIND_CHOICES == fi.KIND_CHOICES


def test_a_trained_bundle_builds_publishes_and_serves(
    tmp_path: Path, trained: Trained, synthetic: Dataset, small_config: TrainConfig
) -> None:
    bundle = export_bundle(trained, synthetic, small_config, tmp_path)
    section = build_index(bundle)  # auto: a small catalog gets the exact index
    assert section["kind"] == "flat" and section["recall"]["at_100"] == 1.0
    publish(bundle)
    assert read_current(tmp_path) == bundle.name
    index = ItemIndex.load(bundle)
    manifest = b.read_manifest(bundle)
    users = b.load_array(bundle, manifest, b.USER_VECTORS)
    items = b.load_array(bundle, manifest, b.ITEM_VECTORS)
    scores, _ = index.search(users[:5], 10)
    np.testing.assert_allclose(scores[:, 0], (users[:5] @ items.T).max(axis=1), rtol=1e-5)


_DIE_AT_REPLACE = """
import os, signal, sys
from pathlib import Path
from recall.index.build import BuildOptions, build_index
from recall.index.publish import publish

real_replace = os.replace
def replace_or_die(src, dst, *args, **kwargs):
    if Path(dst).name == sys.argv[3]:  # the temp file is written and fsynced: die now
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst, *args, **kwargs)
os.replace = replace_or_die
if sys.argv[1] == "publish":
    publish(Path(sys.argv[2]))
else:
    build_index(Path(sys.argv[2]), BuildOptions(kind="flat", sample_queries=20))
"""


def _die_at_replace(what: str, bundle: Path, target: str) -> None:
    """Run a publish or a build of ``bundle`` in a child killed (SIGKILL) just before it
    renames its temp file onto ``target``."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_DIE_AT_REPLACE), what, str(bundle), target],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()


def _temps(directory: Path, name: str) -> list[str]:
    return sorted(p.name for p in directory.glob(f".{name}.tmp-*"))


@pytest.mark.parametrize("cleaner", ["publish", "retain"])
def test_current_temp_files_of_a_killed_publish_are_removed_by_the_next(
    tmp_path: Path, cleaner: str
) -> None:
    first, second = _bundle(tmp_path, 1), _bundle(tmp_path, 2)
    publish(first)
    _die_at_replace("publish", second, CURRENT)
    _die_at_replace("publish", second, CURRENT)
    leftovers = _temps(tmp_path, CURRENT)
    assert len(leftovers) == 2  # what the crashes left behind
    assert read_current(tmp_path) == first.name
    if cleaner == "publish":
        removed = publish(second)
        assert read_current(tmp_path) == second.name
    else:
        removed = retain(tmp_path)
    assert _temps(tmp_path, CURRENT) == []
    assert sorted(p.name for p in removed) == leftovers


def test_current_temp_files_are_left_alone_while_another_holds_the_root_lock(
    tmp_path: Path,
) -> None:
    """Only the holder of the root's lock writes ``.CURRENT.tmp-*``: anyone else waits."""
    import fcntl

    bundle = _bundle(tmp_path, 1)
    live = tmp_path / f".{CURRENT}.tmp-0123abcd"  # a publish in another process, mid-write
    live.write_text("being written")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        for attempt in (lambda: publish(bundle), lambda: retain(tmp_path)):
            with pytest.raises(b.BundleError, match="in progress elsewhere"):
                attempt()
            assert live.read_text() == "being written"
    finally:
        os.close(fd)
    publish(bundle)
    assert not live.exists()


def test_publish_repairs_an_unreadable_current(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, 1)
    (tmp_path / CURRENT).write_bytes(b"\xff\n")
    with pytest.raises(b.BundleError, match="not UTF-8"):
        read_current(tmp_path)
    publish(bundle)
    assert read_current(tmp_path) == bundle.name


def test_manifest_temp_files_of_a_killed_build_are_removed_by_the_next(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, 1, built=False)
    _die_at_replace("build", bundle, b.MANIFEST)
    assert len(_temps(bundle, b.MANIFEST)) == 1
    with pytest.raises(b.BundleError, match="no index"):
        publish(bundle)  # index.faiss written, the manifest not: not publishable
    build_index(bundle, FAST_FLAT)
    assert not [p.name for p in bundle.iterdir() if p.name.startswith(".")]
    publish(bundle)
    assert read_current(tmp_path) == bundle.name
