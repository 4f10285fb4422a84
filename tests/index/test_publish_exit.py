"""``recall publish``'s exit code tells the truth about CURRENT (real processes).

0: CURRENT names the bundle (retention skips what it cannot read, and never turns a done
publish into a failure; publishing the CURRENT bundle again is a no-op). 2: refused, one
clean error line and CURRENT as it was.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from recall.index import bundle as b
from recall.index.current import CURRENT
from recall.index.publish import publish, read_current
from tests.cli.test_cli import recall
from tests.index.test_bundle_files import _unblocking
from tests.index.test_publish import _bundle
from tests.index.test_verify import edit_manifest

BAD_ID = "20260101T000099Z-abcdef"  # newest by name, but no readable manifest


def _undecodable(manifest: Path) -> None:
    manifest.write_bytes(b"\xff\xfe{}")


def _directory(manifest: Path) -> None:
    manifest.mkdir()


def _fifo(manifest: Path) -> None:
    os.mkfifo(manifest)


@pytest.mark.parametrize("make_bad", [_undecodable, _directory, _fifo])
def test_a_bad_manifest_elsewhere_in_the_root_neither_fails_nor_stops_retention(
    tmp_path: Path, make_bad: Callable[[Path], None]
) -> None:
    old, new = _bundle(tmp_path, 1), _bundle(tmp_path, 2)
    publish(old)
    (tmp_path / BAD_ID).mkdir()
    make_bad(tmp_path / BAD_ID / b.MANIFEST)
    with _unblocking(tmp_path / BAD_ID / b.MANIFEST):
        done = recall("publish", new, "--keep", "1")
    assert done.returncode == 0, done.stderr
    assert read_current(tmp_path) == new.name
    assert not old.exists()  # retention ran
    assert (tmp_path / BAD_ID).is_dir()  # and left what it cannot read alone, saying so
    assert f"leaving {tmp_path / BAD_ID} alone" in done.stderr


def test_publishing_the_current_bundle_again_is_a_no_op(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, 1)
    publish(bundle)
    before = os.stat(tmp_path / CURRENT)
    done = recall("publish", bundle)
    assert done.returncode == 0, done.stderr
    after = os.stat(tmp_path / CURRENT)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert read_current(tmp_path) == bundle.name


def test_rerunning_build_index_publish_after_it_became_current_succeeds(tmp_path: Path) -> None:
    """A ``build-index --publish`` killed after the switch, run again (a retried job)."""
    other, bundle = _bundle(tmp_path, 1), _bundle(tmp_path, 2, built=False)
    publish(other)
    first = recall("build-index", bundle, "--kind", "flat", "--sample-queries", "20", "--publish")
    assert first.returncode == 0, first.stderr
    manifest = (bundle / b.MANIFEST).read_bytes()
    again = recall("build-index", bundle, "--kind", "flat", "--sample-queries", "20", "--publish")
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"{bundle}\n"
    assert read_current(tmp_path) == bundle.name
    assert (bundle / b.MANIFEST).read_bytes() == manifest  # not rebuilt: it is published
    assert recall("build-index", bundle, "--kind", "flat").returncode == 2  # still immutable


def _resign_raw(bundle: Path, name: str, raw: bytes) -> None:
    (bundle / name).write_bytes(raw)
    edit_manifest(
        bundle, files={**b.read_manifest(bundle).files, name: b.file_entry(bundle / name)}
    )


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        pytest.param(b.USER_SEEN, b"PK\x03\x04" + bytes(100), id="npz-not-a-zip"),
        pytest.param(b.ITEM_POPULARITY, b"", id="npy-empty"),
    ],
)
def test_a_corrupt_bundle_is_one_clean_error_line_with_exit_2(
    tmp_path: Path, name: str, raw: bytes
) -> None:
    good, corrupt = _bundle(tmp_path, 1), _bundle(tmp_path, 2)
    publish(good)
    _resign_raw(corrupt, name, raw)  # checksums match: the content is what is wrong
    done = recall("publish", corrupt)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"{corrupt}: refused" in lines[0]
    assert read_current(tmp_path) == good.name
