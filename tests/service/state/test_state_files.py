"""The embedded SQLite store notices its file removed, replaced or corrupted while it is
open: from then on every call is StoreUnavailable (events 503, recall ``fresh: false``),
one error line is logged, and no event is acknowledged that the file at the path lacks."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import shutil
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from recall.index.current import CURRENT
from recall.service.app import create_app
from recall.service.recaller import ServingBundle
from recall.service.state import Event, StoreUnavailable, open_store, sqlite_url
from recall.service.state.base import StoreLimits
from recall.service.state.sqlite import SQLiteStore
from tests.live import live_server, settings
from tests.service.test_events import metric, post_events, recall, unseen_items, user

T0 = 1_700_000_000.0
LIMITS = StoreLimits(
    window=50, shown_ttl_s=3600, retention_s=86400, timeout_s=0.5, write_timeout_s=1.0
)
FILES = ("", "-wal", "-shm")


def broken_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "recall.service.state.sqlite" and r.levelno >= logging.ERROR
    ]


def remove_files(path: Path) -> None:
    """``rm events.sqlite*``, as the careless operator did."""
    for suffix in FILES:
        Path(f"{path}{suffix}").unlink()


def test_files_removed_while_serving_answer_503_and_log_once(
    published_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state" / "events.sqlite"
    served = ServingBundle.load(published_root / (published_root / CURRENT).read_text().strip())
    user_id = user(served, 4)
    items = unseen_items(served, 4, 3)
    with (
        caplog.at_level(logging.ERROR, logger="recall.service.state.sqlite"),
        live_server(create_app(settings(published_root, state_url=sqlite_url(path)))) as base,
        httpx.Client(base_url=base) as c,
    ):
        post_events(c, [{"user_id": user_id, "item_id": items[0]}])
        assert recall(c, user_id=user_id, k=5)["fresh_events"] == 1
        remove_files(path)
        for item in items[1:]:
            response = c.post(
                "/v1/events", json={"events": [{"user_id": user_id, "item_id": item}]}
            )
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "state_unavailable"
        body = recall(c, user_id=user_id, k=5)
        assert body["fresh"] is False and body["source"] == "user"
        metrics = c.get("/metrics").text
        assert metric(metrics, 'recall_state_errors_total{op="add"}') == 2
        assert metric(metrics, 'recall_state_errors_total{op="recent"}') >= 1
    assert not path.exists()  # nothing recreated an empty file behind the operator's back
    lines = broken_lines(caplog)
    assert len(lines) == 1 and "removed" in lines[0].getMessage()


def test_a_replaced_file_refuses_writes_and_every_acknowledged_event_is_in_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Writers run while the files are swapped for copies (a restore over a live store):
    the first add after the swap fails, every later one too, and the file now at the path
    holds every event that was acknowledged."""
    path = tmp_path / "events.sqlite"
    acked: list[Event] = []

    async def writer(store: SQLiteStore, name: str) -> None:
        for n in range(10_000):
            batch = [Event(name, n * 10 + j, T0 + n) for j in range(10)]
            try:
                await store.add(batch)
            except StoreUnavailable:
                return
            acked.extend(batch)
        raise AssertionError("writes went on after the swap")

    async def swap() -> None:
        await asyncio.sleep(0.3)
        for suffix in FILES:  # a copy of each file, renamed over it: new inodes
            src = Path(f"{path}{suffix}")
            shutil.copyfile(src, f"{src}.copy")
            os.replace(f"{src}.copy", src)

    async def main() -> None:
        store = SQLiteStore(path, LIMITS)
        try:
            await store.ping()
            await asyncio.gather(swap(), *(writer(store, w) for w in ("a", "b", "c")))
            with pytest.raises(StoreUnavailable, match="replaced"):
                await store.add([Event("late", 1, T0)])
            with pytest.raises(StoreUnavailable, match="replaced"):
                await store.recent(["a"], after=-math.inf)
        finally:
            await store.close()

    with caplog.at_level(logging.ERROR, logger="recall.service.state.sqlite"):
        asyncio.run(main())
    assert len(broken_lines(caplog)) == 1
    assert acked  # the writers ran before the swap
    conn = sqlite3.connect(path)
    stored = conn.execute("SELECT user, item, ts FROM log").fetchall()
    conn.close()
    missing = {(e.user_id, e.item_id, e.timestamp) for e in acked} - set(stored)
    assert not missing, f"{len(missing)} acknowledged events are not in the file"


def overwrite_pages(path: Path, first: int, count: int) -> None:
    """Fill ``count`` database pages from page ``first`` (0-based) with garbage, after a
    checkpoint moved every committed page from the WAL into the file."""
    conn = sqlite3.connect(path)
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    assert conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
    conn.close()
    with open(path, "r+b") as f:
        f.seek(first * page)
        f.write(os.urandom(count * page))
        f.flush()
        os.fsync(f.fileno())


def test_overwritten_pages_are_found_and_refuse_writes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """64 pages of the database overwritten while the store writes: a quick_check finds
    it within its schedule (or a write that reads a damaged page does, at once) and every
    write after that is refused, logged once. The bound is ten schedules, 2 s: a 1 s one
    failed on a loaded machine, whose fsyncs and threads wait their turn."""
    path = tmp_path / "events.sqlite"
    monkeypatch.setattr("recall.service.state.sqlite.CHECK_EVERY_S", 0.05, raising=False)
    monkeypatch.setattr("recall.service.state.sqlite.QUICK_CHECK_EVERY_S", 0.2, raising=False)

    async def main() -> float:
        store = open_store(sqlite_url(path))
        try:
            for n in range(40):  # ~8,000 events: a few hundred pages
                await store.add([Event(f"u{n}-{j}", j, T0 + j) for j in range(200)])
            await asyncio.sleep(0.3)  # the first quick_check has run and passed
            await store.add([Event("before", 1, T0)])
            overwrite_pages(path, 8, 64)
            start = time.monotonic()
            while time.monotonic() - start < 5:
                try:
                    await store.add([Event("after", 1, T0)])
                except StoreUnavailable:
                    break
                await asyncio.sleep(0.02)
            else:
                pytest.fail("the damage was not found within 5 s")
            took = time.monotonic() - start
            for _ in range(3):
                with pytest.raises(StoreUnavailable, match="unusable"):
                    await store.add([Event("later", 1, T0)])
            return took
        finally:
            await store.close()

    with caplog.at_level(logging.ERROR, logger="recall.service.state.sqlite"):
        took = asyncio.run(main())
    assert took < 10 * 0.2, took  # a quick_check every 0.2 s; the file is small
    lines = broken_lines(caplog)
    assert len(lines) == 1
    assert "quick_check" in lines[0].getMessage() or "malformed" in lines[0].getMessage()


def test_a_file_that_is_not_a_database_breaks_the_store(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SQLite's own SQLITE_NOTADB (the header overwritten, then a restart) breaks the
    store for good, logged once as unusable."""
    path = tmp_path / "events.sqlite"

    async def main() -> None:
        store = open_store(sqlite_url(path))
        try:
            await store.add([Event(1, 1, T0)])
        finally:
            await store.close()
        overwrite_pages(path, 0, 1)
        store = open_store(sqlite_url(path))
        try:
            with pytest.raises(StoreUnavailable, match="not a database"):
                await store.add([Event(1, 2, T0)])
            for _ in range(3):
                with pytest.raises(StoreUnavailable, match="unusable"):
                    await store.ping()
        finally:
            await store.close()

    with caplog.at_level(logging.ERROR, logger="recall.service.state.sqlite"):
        asyncio.run(main())
    lines = broken_lines(caplog)
    assert len(lines) == 1 and "not a database" in lines[0].getMessage()
