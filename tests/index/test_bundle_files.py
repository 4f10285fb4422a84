"""Bundle files that are not regular files of the bundle: refused at once, never a hang.

A FIFO or a symlink to ``/dev/zero`` whose manifest entry says 0 bytes used to hang
``recall publish`` (and the service's reloader, holding its lock); a file symlinked out
of the root used to be accepted. Every case runs a real ``recall publish`` process (with a
timeout) or a real served app.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import pytest

from recall.index import bundle as b
from recall.index.current import CURRENT
from recall.index.publish import publish, read_current
from recall.service import reloader
from recall.service.app import create_app
from recall.service.recaller import ServingBundle
from tests.cli.test_cli import recall
from tests.index.test_publish import _bundle
from tests.index.test_verify import OTHER_ID, edit_manifest
from tests.live import live_server
from tests.service.test_reload import (
    AUTH,
    GOOD,
    _settings,
    reloads,
    served_id,
    serving_root,
    wait_until,
    write_current,
)

VICTIM = b.ITEM_POPULARITY  # read early by verify_bundle
THIRD_ID = "20260101T000000Z-eeeeee"


def _empty_entry(bundle: Path, name: str) -> None:
    """Say in the manifest that ``name`` is empty (so a FIFO or /dev/zero matches its size)."""
    empty = b.FileEntry(sha256=hashlib.sha256(b"").hexdigest(), bytes=0)
    edit_manifest(bundle, files={**b.read_manifest(bundle).files, name: empty})


def _fifo(bundle: Path) -> Path:
    (bundle / VICTIM).unlink()
    os.mkfifo(bundle / VICTIM)
    _empty_entry(bundle, VICTIM)
    return bundle / VICTIM


def _dev_zero(bundle: Path) -> Path:
    (bundle / VICTIM).unlink()
    (bundle / VICTIM).symlink_to("/dev/zero")
    _empty_entry(bundle, VICTIM)
    return bundle / VICTIM


def _symlink_out_of_root(bundle: Path) -> Path:
    """The very same bytes, but outside the root: the checksum matches, the place does not."""
    outside = bundle.parent.parent / "outside"
    outside.mkdir(exist_ok=True)
    moved = shutil.move(bundle / VICTIM, outside / VICTIM)
    (bundle / VICTIM).symlink_to(moved)
    return bundle / VICTIM


ODD_FILES: list[tuple[str, Callable[[Path], Path], str]] = [
    ("fifo", _fifo, "is not a regular file"),
    ("symlink-to-dev-zero", _dev_zero, "is a symlink"),
    ("symlink-out-of-root", _symlink_out_of_root, "is a symlink"),
]


@pytest.mark.parametrize(
    ("make_odd", "message"), [pytest.param(f, m, id=name) for name, f, m in ODD_FILES]
)
def test_recall_publish_refuses_an_odd_bundle_file_at_once(
    tmp_path: Path, make_odd: Callable[[Path], Path], message: str
) -> None:
    root = tmp_path / "root"
    good, odd = _bundle(root, 1), _bundle(root, 2)
    publish(good)
    make_odd(odd)
    started = time.monotonic()
    done = recall("publish", odd)  # hung for good before (subprocess timeout: 120 s)
    assert time.monotonic() - started < 60
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{VICTIM} {message}" in lines[0], done.stderr
    assert read_current(root) == good.name


def test_a_manifest_that_is_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    root = tmp_path / "root"
    bundle = _bundle(root, 1)
    (bundle / b.MANIFEST).unlink()
    os.mkfifo(bundle / b.MANIFEST)
    done = recall("publish", bundle)
    assert done.returncode == 2 and "manifest.json is not a regular file" in done.stderr
    assert read_current(root) is None


@contextmanager
def _unblocking(fifo: Path) -> Iterator[None]:
    """Whatever happens, let go of a reader blocked on ``fifo`` (so a failing run ends)."""
    try:
        yield
    finally:
        for _ in range(50):
            with suppress(OSError):  # ENXIO: no reader waiting
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            time.sleep(0.02)


@pytest.fixture
def root(tmp_path: Path, published_root: Path) -> Path:
    """A root serving GOOD, holding OTHER_ID and THIRD_ID (both good, unpublished)."""
    return serving_root(tmp_path, published_root, OTHER_ID, THIRD_ID)


def test_a_fifo_in_the_current_bundle_neither_hangs_the_reloader_nor_admin_reload(
    root: Path,
) -> None:
    fifo = _fifo(root / OTHER_ID)
    with (
        _unblocking(fifo),
        live_server(create_app(_settings(root))) as url,
        httpx.Client(base_url=url, timeout=10) as client,
    ):
        assert served_id(client) == GOOD
        write_current(root, f"{OTHER_ID}\n".encode())
        wait_until(lambda: reloads(client)[1] >= 1, timeout_s=10)  # refused, not stuck
        started = time.monotonic()
        response = client.post("/v1/admin/reload", headers=AUTH)
        assert time.monotonic() - started < 5
        assert response.status_code == 409, response.text
        assert response.json()["error"]["code"] == "reload_failed"
        assert served_id(client) == GOOD
        write_current(root, f"{THIRD_ID}\n".encode())  # a later good CURRENT is loaded
        wait_until(lambda: served_id(client) == THIRD_ID, timeout_s=10)
        assert reloads(client) == (2, 2)
    assert (root / CURRENT).read_text() == f"{THIRD_ID}\n"


def test_admin_reload_waits_a_bounded_time_for_a_reload_in_progress(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A load that takes long (slow storage) holds the reload lock: an admin reload answers
    409 after ``ADMIN_WAIT_S`` instead of waiting for it, and the load still lands."""
    real = ServingBundle.load

    def slow_load(path: Path, users: Any = None) -> ServingBundle:
        if path.name == OTHER_ID:
            time.sleep(4)
        return real(path, users)

    monkeypatch.setattr(ServingBundle, "load", staticmethod(slow_load))
    monkeypatch.setattr(reloader, "ADMIN_WAIT_S", 0.5, raising=False)
    with (
        live_server(create_app(_settings(root))) as url,
        httpx.Client(base_url=url, timeout=10) as client,
    ):
        write_current(root, f"{OTHER_ID}\n".encode())
        time.sleep(0.5)  # the poller is loading OTHER_ID now
        started = time.monotonic()
        response = client.post("/v1/admin/reload", headers=AUTH)
        assert time.monotonic() - started < 2.5
        assert response.status_code == 409, response.text
        assert response.json()["error"]["message"] == (
            f"a reload is in progress; still serving {GOOD}; try again"
        )
        wait_until(lambda: served_id(client) == OTHER_ID, timeout_s=10)
