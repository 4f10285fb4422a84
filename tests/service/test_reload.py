"""Hot reload against whatever CURRENT holds, over a real uvicorn server on 127.0.0.1.

The poller must never die: a CURRENT that cannot be read or names no servable bundle is
logged and counted once (``recall_reloads_total{result="failure"}``), the old bundle keeps
serving, and the next change of CURRENT is picked up. Clients never see paths or what
CURRENT holds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from recall.index import bundle as b
from recall.index.current import CURRENT
from recall.service.app import create_app
from recall.service.metrics import Metrics
from recall.service.recaller import ServingBundle
from recall.service.reloader import BundleHolder, LocalSource
from recall.service.settings import Settings
from tests.conftest import PUBLISHED_ID
from tests.index.test_verify import OTHER_ID, copy_bundle, resign
from tests.live import TOKEN, live_server

GOOD = PUBLISHED_ID  # the published test bundle
POLL_S = 0.05
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BAD_ID = "20260101T000000Z-cccccc"
NAN_ROW = 5


def _settings(root: Path, poll_s: float = POLL_S) -> Settings:
    return Settings.model_validate(
        {"root": root, "reload_interval_s": poll_s, "admin_token": TOKEN}
    )


def write_current(root: Path, raw: bytes) -> None:
    """Replace CURRENT atomically (a new file: what a publish does)."""
    tmp = root / ".test-current"
    tmp.write_bytes(raw)
    os.replace(tmp, root / CURRENT)


def reloads(client: httpx.Client) -> tuple[float, float]:
    """``recall_reloads_total`` (success, failure) from /metrics."""
    text = client.get("/metrics").text

    def value(result: str) -> float:
        match = re.search(rf'recall_reloads_total\{{result="{result}"\}} (\S+)', text)
        assert match, text
        return float(match.group(1))

    return value("success"), value("failure")


def wait_until(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.02)


def served_id(client: httpx.Client) -> str | None:
    response = client.get("/readyz")
    return str(response.json()["bundle_id"]) if response.status_code == 200 else None


def serving_root(tmp_path: Path, published_root: Path, *also: str) -> Path:
    """``tmp_path/root``: a root serving GOOD (the published test bundle), holding copies
    of it as the bundles ``also`` (good, unpublished) too."""
    root = tmp_path / "root"
    root.mkdir()
    for bundle_id in (None, *also):
        copy_bundle(published_root, root, bundle_id)
    write_current(root, f"{GOOD}\n".encode())
    return root


@pytest.fixture
def root(tmp_path: Path, published_root: Path) -> Path:
    """A root serving GOOD, holding OTHER_ID (good, unpublished) too."""
    return serving_root(tmp_path, published_root, OTHER_ID)


def _nan_bundle(root: Path) -> None:
    bundle = copy_bundle(root, root, BAD_ID)  # root's CURRENT names GOOD: copy it
    users = np.array(np.load(bundle / b.USER_VECTORS))
    users[NAN_ROW, :] = np.nan  # not row 0: warm-up searches with row 0
    resign(bundle, b.USER_VECTORS, users)
    write_current(root, f"{BAD_ID}\n".encode())


def _renamed_bundle(root: Path) -> None:
    """A directory whose name is not its manifest id (reloaded on every poll before)."""
    copy_bundle(root, root, BAD_ID).rename(root / "20260101T000000Z-dddddd")
    write_current(root, b"20260101T000000Z-dddddd\n")


def _bundle_symlink_out_of_root(root: Path) -> None:
    outside = root.parent / "outside"
    outside.mkdir()
    bundle = copy_bundle(root, outside, BAD_ID)
    (root / BAD_ID).symlink_to(bundle, target_is_directory=True)
    write_current(root, f"{BAD_ID}\n".encode())


def _current_is_directory(root: Path) -> None:
    (root / CURRENT).unlink()
    (root / CURRENT).mkdir()


def _current_is_symlink(root: Path) -> None:
    """Even a symlink to a file naming a good bundle: CURRENT must be a regular file."""
    target = root.parent / "elsewhere"
    target.write_text(f"{OTHER_ID}\n")
    (root / CURRENT).unlink()
    (root / CURRENT).symlink_to(target)


def _raw(raw: bytes) -> Callable[[Path], None]:
    return lambda root: write_current(root, raw)


BAD_CURRENTS: list[tuple[str, Callable[[Path], None]]] = [
    ("undecodable", _raw(b"\xff\n")),
    ("not-an-id", _raw(b"../../etc/passwd\n")),
    ("empty", _raw(b"")),
    ("too-long", _raw(b"a" * 5000)),
    ("directory", _current_is_directory),
    ("symlink", _current_is_symlink),
    ("missing-bundle", _raw(b"20990101T000000Z-ffffff\n")),
    ("nan-user-vectors", _nan_bundle),
    ("name-is-not-the-id", _renamed_bundle),
    ("bundle-symlink-out-of-root", _bundle_symlink_out_of_root),
]


def _fix_current(root: Path, bundle_id: str) -> None:
    path = root / CURRENT
    if path.is_dir() and not path.is_symlink():
        path.rmdir()
    write_current(root, f"{bundle_id}\n".encode())


@pytest.mark.parametrize("make_bad", [pytest.param(f, id=name) for name, f in BAD_CURRENTS])
def test_a_bad_current_is_counted_once_old_bundle_serves_next_change_is_picked_up(
    root: Path, make_bad: Callable[[Path], None]
) -> None:
    nan_user = ServingBundle.load(root / GOOD).user_ids.ids[NAN_ROW].item()
    with live_server(create_app(_settings(root))) as url, httpx.Client(base_url=url) as client:
        assert served_id(client) == GOOD and reloads(client) == (1, 0)
        make_bad(root)
        wait_until(lambda: reloads(client)[1] >= 1)
        time.sleep(12 * POLL_S)  # a dozen polls of the same bad CURRENT
        assert reloads(client) == (1, 1)
        assert served_id(client) == GOOD
        answer = client.post("/v1/recall", json={"user_id": nan_user, "k": 5})
        assert answer.status_code == 200 and answer.json()["bundle_id"] == GOOD
        _fix_current(root, OTHER_ID)
        wait_until(lambda: served_id(client) == OTHER_ID)
        assert reloads(client) == (2, 1)


def test_a_failing_load_of_any_kind_does_not_stop_the_poller(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception nobody expected (not a BundleError) is a counted failure too."""
    real = ServingBundle.load

    def explode_once(path: Path, users: Any = None) -> ServingBundle:
        if path.name == OTHER_ID and not getattr(explode_once, "done", False):
            explode_once.done = True  # type: ignore[attr-defined]
            raise RuntimeError("a bug in the loader")
        return real(path, users)

    monkeypatch.setattr(ServingBundle, "load", staticmethod(explode_once))
    with live_server(create_app(_settings(root))) as url, httpx.Client(base_url=url) as client:
        write_current(root, f"{OTHER_ID}\n".encode())
        wait_until(lambda: reloads(client)[1] >= 1)
        time.sleep(12 * POLL_S)
        assert reloads(client) == (1, 1) and served_id(client) == GOOD
        write_current(root, f"{OTHER_ID}\n".encode())  # rewritten: a change, so retried
        wait_until(lambda: served_id(client) == OTHER_ID)
        assert reloads(client) == (2, 1)


@pytest.fixture
def reloader_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.INFO, logger="recall.service.reloader")
    yield caplog


def _complaints(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "recall.service.reloader" and r.levelno >= logging.WARNING
    ]


@pytest.mark.parametrize(
    ("make_bad", "failures"),
    [
        pytest.param(lambda root: (root / CURRENT).unlink(), 0, id="missing"),
        pytest.param(_raw(b"\xff\n"), 1, id="undecodable"),
        pytest.param(_renamed_bundle, 1, id="name-is-not-the-id"),
    ],
)
def test_a_server_started_without_a_valid_current_starts_says_so_once_and_waits(
    root: Path,
    reloader_log: pytest.LogCaptureFixture,
    make_bad: Callable[[Path], None],
    failures: int,
) -> None:
    make_bad(root)
    with live_server(create_app(_settings(root))) as url, httpx.Client(base_url=url) as client:
        assert client.get("/healthz").status_code == 200
        time.sleep(12 * POLL_S)
        for response in (client.get("/readyz"), client.post("/v1/recall", json={"user_id": 1})):
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "not_ready"
        assert reloads(client) == (0, failures)
        complaints = _complaints(reloader_log)
        assert len(complaints) == 1, complaints
        assert CURRENT in complaints[0] or "20260101T000000Z-dddddd" in complaints[0]
        _fix_current(root, OTHER_ID)
        wait_until(lambda: served_id(client) == OTHER_ID)
        assert reloads(client) == (1, failures)


def _passwd_symlink(root: Path) -> None:
    secret = root.parent / "passwd"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / CURRENT).unlink()
    (root / CURRENT).symlink_to(secret)


@pytest.mark.parametrize(
    "make_bad",
    [
        pytest.param(_passwd_symlink, id="symlink-to-a-secret"),
        pytest.param(_raw(b"root:x:0:0:root:/root:/bin/bash\n"), id="file-content"),
        pytest.param(_raw(b"\xff\n"), id="undecodable"),
        pytest.param(_raw(b"20990101T000000Z-ffffff\n"), id="missing-bundle"),
        pytest.param(_nan_bundle, id="nan-user-vectors"),
    ],
)
def test_admin_reload_of_a_bad_current_is_a_409_naming_no_path_or_content(
    root: Path, reloader_log: pytest.LogCaptureFixture, make_bad: Callable[[Path], None]
) -> None:
    make_bad(root)
    with (
        live_server(create_app(_settings(root, poll_s=0))) as url,
        httpx.Client(base_url=url) as client,
    ):
        for _ in range(2):  # an admin reload retries (and counts) every time
            response = client.post("/v1/admin/reload", headers=AUTH)
            assert response.status_code == 409, response.text
            error = response.json()["error"]
            assert error["code"] == "reload_failed"
            message = error["message"]
            assert "/" not in message and "root:x" not in message and "\\x" not in message
            assert str(root.parent) not in message
        assert reloads(client)[1] >= 2
        assert client.get("/readyz").status_code == 503
    assert any(str(root) in m for m in _complaints(reloader_log))  # the log says where


def test_admin_reload_while_serving_keeps_the_old_bundle_and_says_so(root: Path) -> None:
    with (
        live_server(create_app(_settings(root, poll_s=0))) as url,
        httpx.Client(base_url=url) as client,
    ):
        _nan_bundle(root)
        response = client.post("/v1/admin/reload", headers=AUTH)
        assert response.status_code == 409
        assert response.json()["error"]["message"] == (
            f"bundle {BAD_ID} was refused; still serving {GOOD}; the server log says why"
        )
        assert served_id(client) == GOOD
        write_current(root, f"{OTHER_ID}\n".encode())
        response = client.post("/v1/admin/reload", headers=AUTH)
        assert response.status_code == 200
        assert response.json() == {"bundle_id": OTHER_ID, "changed": True}


def test_not_ready_messages_name_no_path(tmp_path: Path) -> None:
    with (
        live_server(create_app(_settings(tmp_path, poll_s=0))) as url,
        httpx.Client(base_url=url) as client,
    ):
        for response in (client.get("/readyz"), client.post("/v1/admin/reload", headers=AUTH)):
            assert response.status_code == 503
            assert str(tmp_path) not in response.json()["error"]["message"]


def test_a_reload_cancelled_as_it_gets_the_lock_is_cancelled(tmp_path: Path) -> None:
    """Stopping the poller (``cancel()``) must stop it even when the cancel lands just
    after the reload lock was handed to it: Python 3.11's ``asyncio.wait_for`` returned
    normally then, the poller polled on and the server's shutdown waited for it forever."""

    async def scenario() -> None:
        holder = BundleHolder(LocalSource(tmp_path), Metrics())
        lock = holder._lock
        await lock.acquire()  # a reload in progress
        waiting = asyncio.create_task(holder.reload())
        await asyncio.sleep(0)  # it waits for the lock now
        lock.release()  # the lock goes to the waiting reload ...
        waiting.cancel()  # ... and the cancel lands after it
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert not lock.locked()

    asyncio.run(scenario())
