"""recall.service.state: one contract suite over both backends (a real SQLite file, a real
``redis-server`` process), then what each backend promises on its own: SQLite durability and
concurrent writer processes, Redis down/blackholed/restarted."""

from __future__ import annotations

import asyncio
import math
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from recall.service.settings import Settings
from recall.service.state import Event, StateStore, StoreUnavailable, check_url, open_store
from tests.redis_cluster import RedisCluster
from tests.redis_server import RedisServer, free_port, redis_server

REPO = Path(__file__).resolve().parents[3]
T0 = 1_700_000_000.0


def run(coro: Awaitable[Any]) -> Any:
    async def main() -> Any:
        return await coro

    return asyncio.run(main())


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(params=["sqlite", "redis", "redis+cluster"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store of each backend: a new SQLite file, the module's Redis flushed,
    or the session's Redis Cluster flushed."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/state/events.sqlite"
    if request.param == "redis+cluster":
        cluster: RedisCluster = request.getfixturevalue("shared_cluster")
        cluster.flush()
        return cluster.url()
    server: RedisServer = request.getfixturevalue("shared_redis")
    with redis.Redis.from_url(server.url()) as client:
        client.flushall()
    return server.url()


def with_store(url: str, body: Callable[[StateStore], Awaitable[Any]], **limits: Any) -> Any:
    """``body(store)`` in one event loop, the store closed after. Writes get 5 s unless the
    test sets their bound: the contract is about what is stored, and a loaded shared
    machine has stalled a cluster write past the default 1 s."""
    limits.setdefault("write_timeout_s", 5.0)

    async def main() -> Any:
        store = open_store(url, **limits)
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(main())


async def export_all(store: StateStore, since: float | None = None) -> list[Event]:
    return [e async for e in store.export(since)]


# -- the contract, both backends -------------------------------------------------------


def test_ids_keep_their_type(url: str) -> None:
    async def body(store: StateStore) -> None:
        events = [
            Event(7, 1, T0 + 1),
            Event("7", "1", T0 + 2),
            Event(7, "x y|z", T0 + 3),
            Event(2**62, -5, T0 + 4),
            Event("7", 1, time.time(), "impression"),  # within the shown TTL
        ]
        await store.add(events)
        recent = await store.recent([7, "7", 2**62, 8, "8"], after=-math.inf)
        assert recent == [[(1, T0 + 1), ("x y|z", T0 + 3)], [("1", T0 + 2)], [(-5, T0 + 4)], [], []]
        assert [type(item) for item, _ in recent[0]] == [int, str]
        assert await store.shown(["7", 7], since=-math.inf) == [[1], []]
        exported = await export_all(store)
        assert exported == events
        assert [(type(e.user_id), type(e.item_id)) for e in exported] == [
            (int, int),
            (str, str),
            (int, str),
            (int, int),
            (str, int),
        ]

    with_store(url, body)


def test_recent_is_time_ordered_capped_and_filtered(url: str) -> None:
    async def body(store: StateStore) -> None:
        # Out of order across two batches; item 10 twice at different times; one exact repeat.
        await store.add([Event(1, 10, T0 + 5), Event(1, 11, T0 + 1), Event(2, 20, T0 + 3)])
        await store.add(
            [Event(1, 12, T0 + 3), Event(1, 10, T0 + 2), Event(1, 12, T0 + 3), Event(1, 13, T0)]
        )
        everything = [(11, T0 + 1), (10, T0 + 2), (12, T0 + 3), (10, T0 + 5)]
        assert await store.recent([1, 2], after=-math.inf) == [everything, [(20, T0 + 3)]]
        assert await store.recent([1], after=T0 + 2) == [everything[2:]]  # strictly after
        assert await store.recent([2, 1, 2], after=T0 + 5) == [[], [], []]
        assert await store.recent([], after=0) == []
        # An event older than the whole window does not enter it; a newer one pushes out.
        await store.add([Event(1, 14, T0 - 10), Event(1, 15, T0 + 9)])
        assert await store.recent([1], after=-math.inf) == [[*everything[1:], (15, T0 + 9)]]

    with_store(url, body, window=4)


def test_impressions_are_kept_apart_for_the_ttl(url: str) -> None:
    now = time.time()

    async def body(store: StateStore) -> None:
        await store.add(
            [
                Event(1, 10, now - 30, "impression"),
                Event(1, 11, now - 20, "impression"),
                Event(1, 10, now - 10, "impression"),  # shown again: counts once, latest time
                Event(1, 12, now - 5),  # an interaction is not an impression
                Event(1, 13, now - 120, "impression"),  # past the TTL (60 s)
                Event(2, 13, now, "impression"),
            ]
        )
        assert await store.shown([1, 2, 3], since=-math.inf) == [[11, 10], [13], []]
        assert await store.shown([1], since=now - 15) == [[10]]
        assert await store.shown([1], since=now - 10) == [[10]]  # since is inclusive
        assert await store.recent([1], after=-math.inf) == [[(12, now - 5)]]

    with_store(url, body, shown_ttl_s=60)


def test_export_is_the_whole_log_in_arrival_order(url: str) -> None:
    first = [Event(1, 10, T0 + 5), Event(2, 20, T0 + 1, "impression"), Event(1, 10, T0 + 5)]
    second = [Event(3, 30, T0 + 3), Event("a", "b", T0 - 100)]

    async def body(store: StateStore) -> None:
        await store.add(first)
        await store.add([])
        await store.add(second)
        assert await export_all(store) == first + second  # duplicates and impressions too
        assert await export_all(store, since=T0 + 3) == [first[0], first[2], second[0]]
        assert await export_all(store, since=T0 + 6) == []

    with_store(url, body, window=1)


def test_a_large_batch_for_one_user(url: str) -> None:
    events = [Event("heavy", i, T0 + i) for i in range(5000)]
    now = time.time()
    shown = [Event("heavy", i, now - i / 1000, "impression") for i in range(5000)]

    async def body(store: StateStore) -> None:
        await store.add(events + shown)
        assert await store.recent(["heavy"], after=-math.inf) == [
            [(e.item_id, e.timestamp) for e in events[-3000:]]
        ]
        assert await store.shown(["heavy"], since=-math.inf) == [list(range(4999, -1, -1))]

    with_store(url, body, window=3000)


def test_export_pages_through_a_long_log(url: str) -> None:
    events = [Event(u % 97, u, T0 + u) for u in range(12_345)]

    async def body(store: StateStore) -> None:
        for start in range(0, len(events), 1000):
            await store.add(events[start : start + 1000])
        assert await export_all(store) == events

    with_store(url, body)


def test_the_log_keeps_what_arrived_within_retention(url: str) -> None:
    async def body(store: StateStore) -> None:
        await store.add([Event(1, 10, T0), Event(1, 11, T0 + 1, "impression")])
        await asyncio.sleep(1.2)
        await store.add([Event(2, 20, T0 - 50)])  # old timestamp, new arrival: kept
        assert await export_all(store) == [Event(2, 20, T0 - 50)]
        assert await store.recent([2], after=-math.inf) == [[(20, T0 - 50)]]

    with_store(url, body, retention_s=1.0)


def test_concurrent_adds_all_land(url: str) -> None:
    """Many adds in flight at once (SQLite commits them in groups, Redis on several
    connections): every event is stored once, each user's window is right."""
    batches = [[Event(b % 4, b * 100 + i, T0 + b * 100 + i) for i in range(25)] for b in range(40)]

    async def body(store: StateStore) -> None:
        await asyncio.gather(*(store.add(batch) for batch in batches))
        exported = await export_all(store)
        assert sorted(exported, key=lambda e: e.timestamp) == [e for b in batches for e in b]
        recent = await store.recent([0, 1, 2, 3], after=-math.inf)
        for user, items in enumerate(recent):
            mine = [(e.item_id, e.timestamp) for b in batches for e in b if e.user_id == user]
            assert items == mine[-30:]

    with_store(url, body, window=30)


def test_bad_arguments_are_the_callers_bug(url: str) -> None:
    async def body(store: StateStore) -> None:
        with pytest.raises(TypeError):
            await store.add([Event(1.5, 1, T0)])  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await store.add([Event(True, 1, T0)])
        with pytest.raises(ValueError, match="int64"):
            await store.add([Event(2**63, 1, T0)])
        with pytest.raises(ValueError, match="finite"):
            await store.add([Event(1, 1, math.nan)])
        with pytest.raises(ValueError, match="type"):
            await store.add([Event(1, 1, T0, "click")])  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await store.recent([None], after=0)  # type: ignore[list-item]
        with pytest.raises(ValueError, match="NaN"):
            await store.recent([1], after=math.nan)
        with pytest.raises(ValueError, match="NaN"):
            await store.shown([1], since=math.nan)
        assert await export_all(store) == []  # a refused batch stores nothing

    with_store(url, body)


def test_ping_and_close(url: str) -> None:
    async def body() -> None:
        store = open_store(url)
        await store.ping()
        await store.close()
        await store.close()  # twice is fine
        with pytest.raises(StoreUnavailable):
            await store.recent([1], after=0)

    run(body())


def test_a_cancelled_call_is_cancelled_even_when_its_answer_came(url: str) -> None:
    """Cancelling a task in a store call raises CancelledError in it, also when the
    answer arrived first but the task had not resumed yet. Python 3.11's asyncio.wait_for
    returned the answer then, losing the cancel, so a poller stopped by cancel() kept
    polling and the worker's shutdown hung (seen in test_metrics_workers)."""

    async def body(store: StateStore) -> None:
        await store.availability_version()  # connected, tables made
        for _ in range(5):
            task = asyncio.create_task(store.availability_version())
            await asyncio.sleep(0)  # the call is under way
            time.sleep(0.05)  # the loop blocked: the answer arrives, the task waits
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    with_store(url, body)


def test_availability_is_versioned_typed_and_atomic(url: str) -> None:
    async def body(store: StateStore) -> None:
        assert await store.availability_version() == 0
        assert await store.availability() == (0, [])
        assert await store.set_availability([], []) == 0  # nothing to change: no bump
        assert await store.set_availability([7, "7", "x|y", 7, -3], []) == 1
        assert await store.availability() == (1, [-3, 7, "7", "x|y"])  # typed, deduplicated
        assert await store.set_availability(["new"], ["7", 12345]) == 2  # unknown enable: no-op
        version, disabled = await store.availability()
        assert (version, disabled) == (2, [-3, 7, "new", "x|y"])
        assert [type(i) for i in disabled] == [int, int, str, str]
        assert await store.availability_version() == 2
        with pytest.raises(ValueError, match="both"):
            await store.set_availability([1, 2], [2])
        with pytest.raises(TypeError):
            await store.set_availability([1.5], [])  # type: ignore[list-item]
        with pytest.raises(ValueError, match="int64"):
            await store.set_availability([], [2**63])
        assert await store.availability() == (2, [-3, 7, "new", "x|y"])  # refused: unchanged
        # A large change in one call (past Lua's unpack limit), then all enabled again.
        many = [*range(20_000), *(f"s{i}" for i in range(5_000))]
        assert await store.set_availability(many, [-3]) == 3
        version, disabled = await store.availability()
        assert version == 3 and len(disabled) == 25_000 + 2 and -3 not in disabled  # + "new", "x|y"
        assert await store.set_availability([], disabled) == 4
        assert await store.availability() == (4, [])

    with_store(url, body)


def test_availability_changes_from_many_writers_all_count(url: str) -> None:
    """Concurrent changes each bump the version once: the versions they return are
    distinct and the last read sees every disabled id (a store shared by replicas)."""

    async def body(store: StateStore) -> None:
        versions = await asyncio.gather(*(store.set_availability([i], []) for i in range(30)))
        assert sorted(versions) == list(range(1, 31))
        assert await store.availability() == (30, list(range(30)))

    with_store(url, body)


def test_availability_survives_reopening(url: str) -> None:
    async def first(store: StateStore) -> None:
        await store.set_availability([1, "b"], [])

    async def second(store: StateStore) -> None:
        assert await store.availability() == (1, [1, "b"])

    with_store(url, first)
    with_store(url, second)


# -- SQLite ------------------------------------------------------------------------------

WRITER = """
import asyncio, os, sys
from recall.service.state import Event, open_store
url, user, n, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

async def main():
    store = open_store(url, window=10_000, write_timeout_s=10)
    for b in range(n):
        await store.add([Event(user, b * batch + i, 1e9 + b * batch + i) for i in range(batch)])
    print("acked", flush=True)
    os._exit(0)  # no close(): what add() acknowledged must already be on disk

asyncio.run(main())
"""


def run_writers(url: str, users: list[str], batches: int, batch: int) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(WRITER), url, u, str(batches), str(batch)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for u in users
    ]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and out == "acked\n", err


def test_sqlite_creates_its_directory_and_durable_wal_file(tmp_path: Path) -> None:
    path = tmp_path / "root" / ".state" / "events.sqlite"

    async def body(store: StateStore) -> None:
        await store.add([Event(1, 2, T0)])

    with_store(f"sqlite://{path}", body)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert conn.execute("SELECT user, item, ts FROM recent").fetchall() == [(1, 2, T0)]


def test_sqlite_writers_in_several_processes_lose_nothing(tmp_path: Path) -> None:
    """Two processes write at once (as a replica's workers do) and exit without closing:
    every acknowledged event is there, seen by a store opened afterwards."""
    url = f"sqlite://{tmp_path}/events.sqlite"
    run_writers(url, ["a", "b"], batches=60, batch=50)

    async def body(store: StateStore) -> None:
        recent = await store.recent(["a", "b"], after=-math.inf)
        for items in recent:
            assert [item for item, _ in items] == list(range(3000))
        exported = await export_all(store)
        assert len(exported) == 6000
        for user in ("a", "b"):
            assert [e.item_id for e in exported if e.user_id == user] == list(range(3000))

    with_store(url, body, window=10_000, timeout_s=5)  # reads 6,000 events at once


def test_sqlite_relative_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    async def body(store: StateStore) -> None:
        await store.add([Event(1, 2, T0)])

    with_store("sqlite:rel/events.sqlite", body)
    assert (tmp_path / "rel" / "events.sqlite").is_file()


def test_sqlite_write_waits_for_a_locked_file_at_most_its_bound(tmp_path: Path) -> None:
    """Another process holding the write lock: add() gives up after write_timeout_s with
    StoreUnavailable, reads still answer (WAL), and writes go through once it lets go.
    The upper bound leaves 2 s for a loaded machine's scheduling (a 1 s one failed under
    load); a wait past the bound would be sqlite3's own 5 s at least."""
    path = tmp_path / "events.sqlite"
    url = f"sqlite://{path}"
    with_store(url, lambda s: s.add([Event(1, 1, T0)]))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")

    async def body(store: StateStore) -> None:
        start = time.monotonic()
        with pytest.raises(StoreUnavailable, match="add"):
            await store.add([Event(1, 2, T0 + 1)])
        took = time.monotonic() - start
        assert 0.2 <= took < 0.3 + 2.0, took
        assert await store.recent([1], after=-math.inf) == [[(1, T0)]]
        holder.execute("ROLLBACK")
        await store.add([Event(1, 3, T0 + 2)])
        assert await store.recent([1], after=-math.inf) == [[(1, T0), (3, T0 + 2)]]

    with_store(url, body, write_timeout_s=0.3)


def test_sqlite_unusable_path_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")

    async def body(store: StateStore) -> None:
        with pytest.raises(StoreUnavailable):
            await store.ping()
        with pytest.raises(StoreUnavailable):
            await store.add([Event(1, 1, T0)])

    with_store(f"sqlite://{tmp_path}/file/events.sqlite", body)


def test_sqlite_trims_the_log_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite"

    async def body(store: StateStore) -> None:
        await store.add([Event(u, u, T0) for u in range(100)])

    with_store(f"sqlite://{path}", body, retention_s=0.5)
    time.sleep(0.6)
    with_store(f"sqlite://{path}", lambda s: s.add([Event(1, 1, T0)]), retention_s=0.5)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM log").fetchone() == (1,)


# -- Redis --------------------------------------------------------------------------------


def test_redis_blackholed_or_refused_is_unavailable_within_the_bound() -> None:
    """A server that accepts connections and never answers, and a port nobody listens on:
    reads give up after timeout_s (0.05 s), writes after write_timeout_s (0.3 s)."""
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)  # the kernel completes handshakes; nobody ever reads
        blackholed = f"redis://127.0.0.1:{hole.getsockname()[1]}/0"
        refused = f"redis://127.0.0.1:{free_port()}/0"

        async def calls(url: str) -> list[float]:
            store = open_store(url, timeout_s=0.05, write_timeout_s=0.3)
            times = []
            for call in (
                lambda: store.recent([1, "a"], after=0),
                lambda: store.shown([1], since=0),
                lambda: store.add([Event(1, 2, T0)]),
                lambda: store.ping(),
            ):
                start = time.monotonic()
                with pytest.raises(StoreUnavailable):
                    await call()
                times.append(time.monotonic() - start)
            await store.close()
            return times

        recent, shown, add, ping = run(calls(blackholed))
        assert 0.04 <= recent < 0.25 and 0.04 <= shown < 0.25
        assert 0.25 <= add < 0.6 and 0.25 <= ping < 0.6
        assert max(run(calls(refused))) < 0.25


def test_redis_killed_then_restarted(tmp_path: Path) -> None:
    """One store across a crash of Redis (AOF fsynced on every write, so the test is exact;
    with everysec a crash loses up to about a second): calls fail fast with StoreUnavailable
    while it is down, and the same store works again once it is back, acknowledged events
    all there."""
    with redis_server(tmp_path / "redis", appendonly=True) as server:

        async def main() -> None:
            store = open_store(server.url(), timeout_s=0.05, write_timeout_s=0.5)
            await store.add([Event(1, 10, T0), Event(1, 11, T0 + 1)])
            server.kill()
            for _ in range(3):
                start = time.monotonic()
                with pytest.raises(StoreUnavailable):
                    await store.recent([1], after=-math.inf)
                assert time.monotonic() - start < 0.25
            with pytest.raises(StoreUnavailable):
                await store.add([Event(1, 12, T0 + 2)])
            server.start()
            assert await store.recent([1], after=-math.inf) == [[(10, T0), (11, T0 + 1)]]
            await store.add([Event(1, 13, T0 + 3)])
            assert await store.recent([1], after=T0) == [[(11, T0 + 1), (13, T0 + 3)]]
            assert len(await export_all(store)) == 3
            await store.close()

        run(main())


def test_redis_bounds_what_it_keeps(shared_redis: RedisServer) -> None:
    """The log stream is trimmed by arrival time, per-user keys carry their TTL."""
    url = shared_redis.url(db=1)
    with redis.Redis.from_url(url) as client:
        client.flushdb()

    async def body(store: StateStore) -> None:
        for b in range(300):
            await store.add([Event(b, b, T0)])
        await asyncio.sleep(1.1)
        await store.add([Event(1, 1, time.time(), "impression")])

    with_store(url, body, retention_s=1.0, shown_ttl_s=60)
    with redis.Redis.from_url(url) as client:
        assert client.xlen(b"recall:{log:0}") < 101  # trimmed by whole stream nodes (100 entries)
        assert 0 < client.ttl(b"recall:{u:1}:s") <= 60
        assert 0 < client.ttl(b"recall:{u:1}:r") <= 1 or not client.exists(b"recall:{u:1}:r")


# -- URLs and settings -------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, backend",
    [
        ("sqlite:///abs/events.sqlite", "sqlite"),
        ("sqlite:rel/events.sqlite", "sqlite"),
        ("redis://localhost:6379/0", "redis"),
        ("rediss://:pw@cache.internal:6380/2", "redis"),
    ],
)
def test_urls(url: str, backend: str) -> None:
    assert check_url(url) == backend


@pytest.mark.parametrize(
    "url",
    ["", "postgres://u:hunter2@db/x", "sqlite://", "sqlite://host/x", "sqlite:///dir/", "redis:x"],
)
def test_bad_urls_are_refused_without_quoting_them(url: str) -> None:
    with pytest.raises(ValueError) as caught:
        check_url(url)
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ValueError):
        open_store(url)


def test_settings_default_to_a_sqlite_file_under_the_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RECALL_ROOT", "bundles")
    settings = Settings()
    assert settings.state_url == f"sqlite://{tmp_path}/bundles/.state/events.sqlite"
    assert (settings.state_timeout_s, settings.state_window, settings.max_events) == (
        0.05,
        50,
        1000,
    )
    assert (settings.shown_ttl_s, settings.events_retention_s) == (3600, 30 * 86400)
    monkeypatch.setenv("RECALL_STATE_URL", "redis://redis:6379/0")
    assert Settings().state_url == "redis://redis:6379/0"


def test_settings_name_a_bad_state_url(monkeypatch: pytest.MonkeyPatch) -> None:
    from recall.service.settings import SettingsError, load_settings

    monkeypatch.setenv("RECALL_ROOT", "/bundles")
    monkeypatch.setenv("RECALL_STATE_URL", "postgres://u:hunter2@db/x")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert str(caught.value).startswith("RECALL_STATE_URL: unsupported state URL scheme")
    assert "hunter2" not in str(caught.value)
