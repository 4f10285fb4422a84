"""The Redis Cluster backend beyond the contract suite (which test_state.py runs on it too):
its URLs and start-up check, the key layout (one user = one slot), the log split over
buckets and merged back, scripts a node forgot, and a master killed under traffic."""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.cluster import key_slot

from recall.service.state import (
    LIVE_KS,
    Event,
    LiveCount,
    StoreTimeout,
    StoreUnavailable,
    check_url,
    open_store,
)
from recall.service.state.redis import live_key
from recall.service.state.redis_client import (
    ClusterUrl,
    check_reachable,
    connect_sync,
    parse_cluster_url,
    user_key,
)
from tests.live import free_port
from tests.redis_cluster import RedisCluster
from tests.redis_server import RedisServer, redis_server

T0 = 1_700_000_000.0
REPO = Path(__file__).resolve().parents[3]
RECALL = Path(sys.executable).with_name("recall")  # the console script of this venv
WRITE_S = 5.0
"""Write bound of the tests that check what is stored, not how fast: a new store's first
write also connects to the masters, which a loaded shared machine stretched past 1 s."""


@pytest.fixture
def cluster(shared_cluster: RedisCluster) -> RedisCluster:
    shared_cluster.flush()
    return shared_cluster


@pytest.fixture(scope="module")
def plain_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("plain-redis")) as server:
        yield server


def test_cluster_urls_parse() -> None:
    assert parse_cluster_url("redis+cluster://10.0.0.1:7000,node-b:7001") == ClusterUrl(
        (("10.0.0.1", 7000), ("node-b", 7001))
    )
    parsed = parse_cluster_url("rediss+cluster://me:p%40ss@h:1/?wait_replicas=2&wait_ms=5")
    assert parsed == ClusterUrl((("h", 1),), "me", "p@ss", True, 2, 5)
    assert parse_cluster_url("redis+cluster://[::1]:7000").nodes == (("::1", 7000),)
    assert check_url("redis+cluster://h:1,h:2") == "redis+cluster"
    for bad in (
        "redis+cluster://",
        "redis+cluster://host",  # no port
        "redis+cluster://h:1,,h:2",
        "redis+cluster://h:1/0",  # a cluster has no database number
        "redis+cluster://h:notaport",
        "redis+cluster://h:1?wait_ms=-1",
        "redis+cluster://h:1?sentinel=yes",
    ):
        with pytest.raises(ValueError, match=r"(?i)cluster"):
            check_url(bad)
    with pytest.raises(ValueError) as secret:  # never quoted: a URL may hold a password
        check_url("redis+cluster://me:hunter2@h?wait_ms=x")
    assert "hunter2" not in str(secret.value)


def test_start_up_check_names_the_setting(cluster: RedisCluster, plain_redis: RedisServer) -> None:
    check_reachable(cluster.url(), "RECALL_STATE_URL")  # a healthy cluster passes
    with pytest.raises(StoreUnavailable, match="RECALL_STATE_URL: no Redis Cluster node answered"):
        check_reachable(f"redis+cluster://127.0.0.1:{free_port()}", "RECALL_STATE_URL")
    with pytest.raises(ValueError, match="--state-url: the server is not a Redis Cluster"):
        check_reachable(f"redis+cluster://127.0.0.1:{plain_redis.port}", "--state-url")
    check_reachable(plain_redis.url(), "RECALL_STATE_URL")  # one server: not checked here


def test_every_key_of_a_user_is_in_the_users_slot(cluster: RedisCluster) -> None:
    """The keys the store writes for a user, tricky ids included, share one slot: the
    cluster would refuse the script otherwise (CROSSSLOT)."""
    users: list[int | str] = [7, "7", "a}b", "{x}", "", "ü", -(2**63)]
    events = [Event(u, 1, time.time()) for u in users]
    events += [Event(u, 2, time.time(), "impression") for u in users]

    async def body() -> None:
        store = open_store(cluster.url(), write_timeout_s=WRITE_S)
        try:
            await store.add(events)
        finally:
            await store.close()

    asyncio.run(body())
    with connect_sync(cluster.url()) as client:
        for u in users:
            recent, shown = user_key(u, b"r"), user_key(u, b"s")
            assert client.exists(recent) and client.exists(shown)
            assert key_slot(recent) == key_slot(shown)
    assert len({key_slot(user_key(u, b"r")) for u in users}) > 1  # users do spread


def test_the_log_spreads_over_buckets_and_exports_in_arrival_order(
    cluster: RedisCluster,
) -> None:
    """Sixteen writers (one store each, as replicas and workers are) append to buckets of
    their own on different masters; export merges them back into arrival order."""
    events = [Event(i % 5, i, T0 + i) for i in range(64)]

    async def body() -> list[Event]:
        stores = [open_store(cluster.url(), write_timeout_s=WRITE_S) for _ in range(16)]
        try:
            for i, event in enumerate(events):
                await stores[i % 16].add([event])
                await asyncio.sleep(0.002)  # arrival order is by the millisecond
            return [e async for e in stores[0].export()]
        finally:
            for store in stores:
                await store.close()

    assert asyncio.run(body()) == events
    holding = set()
    for port in cluster.masters():
        with cluster.client(port) as client:
            if next(client.scan_iter(match="recall:{log:*}"), None) is not None:
                holding.add(port)
    assert len(holding) >= 2, "the log buckets in use all live on one master"


def test_scripts_a_node_forgot_are_loaded_again(cluster: RedisCluster) -> None:
    """A promoted replica or a SCRIPT FLUSH: the node answers NOSCRIPT, the store loads
    the script and sends the calls again, once."""

    async def body() -> None:
        store = open_store(cluster.url(), window=10, write_timeout_s=WRITE_S)
        try:
            await store.add([Event(u, 1, T0) for u in range(20)])
            for port in cluster.masters():
                with cluster.client(port) as client:
                    client.script_flush()
            await store.add([Event(u, 2, T0 + 1) for u in range(20)])
            recent = await store.recent(list(range(20)), after=-math.inf)
            assert recent == [[(1, T0), (2, T0 + 1)]] * 20
            assert [e.item_id for e in [e async for e in store.export()]] == [1] * 20 + [2] * 20
        finally:
            await store.close()

    asyncio.run(body())


def _users_on_two_masters(cluster: RedisCluster, port: int) -> tuple[int, int]:
    """A user whose slot is on the master at ``port`` and a user whose slot is not."""
    masters = [cluster.master_of(user_key(u, b"r")) for u in range(1000)]
    return masters.index(port), next(u for u, m in enumerate(masters) if m != port)


def _live_count(port: int, cluster: RedisCluster) -> LiveCount:
    """One live event (a hit at every K) of an experiment whose counts are on ``port``."""
    experiment = next(f"e{n}" for n in range(1000) if cluster.master_of(live_key(f"e{n}")) == port)
    return LiveCount(experiment, "control", "b", 0.0, 1, (1,) * len(LIVE_KS))


@pytest.mark.slow
def test_a_master_killed_under_traffic(cluster: RedisCluster) -> None:
    """SIGKILL the master holding the writer's log bucket, one user's slot and an
    experiment's live counts while writers and readers run: that user's reads fail within
    their bound, the other user's keep answering, and the other user's adds are all
    accepted (the log entry goes to a bucket on another master in the same call; the live
    counts alone are not kept: ``add`` says so). Once the replica is promoted everything
    answers again on the same store; every event acknowledged before the kill is there
    (WAIT 1: it had reached the replica), and the log holds each acknowledged add once and
    no refused add."""
    killed: list[int] = []

    async def body() -> None:
        # a window that keeps every event: a refused add may have stored part of it
        store = open_store(cluster.url(), window=10_000, timeout_s=0.05, write_timeout_s=0.5)
        await store.add([Event(-1, 0, T0)])  # the writer's log bucket, found next
        (port,) = cluster.masters_with_keys("recall:{log:*}")  # flushed before: one
        down_user, up_user = _users_on_two_masters(cluster, port)
        acked: list[Event] = [Event(-1, 0, T0)]
        late: list[Event] = []  # adds that ran past their bound: stored or not
        stop = asyncio.Event()

        async def writer() -> None:
            n = 0
            while not stop.is_set():
                batch = [Event(down_user, n, T0 + n), Event(up_user, n, T0 + n)]
                try:
                    await store.add(batch)
                    acked.extend(batch)
                except StoreTimeout:
                    late.extend(batch)
                except StoreUnavailable:
                    pass
                n += 1
                await asyncio.sleep(0.005)

        task = asyncio.create_task(writer())
        try:
            await asyncio.sleep(0.3)
            cluster.kill(port)
            killed.append(port)
            killed_at = time.monotonic()
            live = [_live_count(port, cluster)]
            # Before the failover: the other user's adds are accepted, the counts not kept.
            for n in range(3):
                event = Event(up_user, -1 - n, T0 - 1 - n)
                assert await store.add([event], live) is False
                acked.append(event)
            # The dead shard's user fails fast, the other answers.
            started = time.perf_counter()
            with pytest.raises(StoreUnavailable):
                await store.recent([down_user], after=-math.inf)
            assert time.perf_counter() - started < 0.5
            assert (await store.recent([up_user], after=-math.inf))[0]
            # After the failover: the same store answers for the user again.
            while True:
                try:
                    await store.recent([down_user], after=-math.inf)
                    break
                except StoreUnavailable:
                    assert time.monotonic() - killed_at < 20, "no failover within 20 s"
                    await asyncio.sleep(0.1)
            await asyncio.sleep(0.3)
            assert await store.add([Event(up_user, -9, T0 - 9)], live) is True
            acked.append(Event(up_user, -9, T0 - 9))
        finally:
            stop.set()
            await task
        try:
            for user in (down_user, up_user):
                mine = {(e.item_id, e.timestamp) for e in acked if e.user_id == user}
                stored = set((await store.recent([user], after=-math.inf))[0])
                assert mine <= stored, f"acknowledged events of user {user} were lost"
            logged = Counter([e async for e in store.export()])
            assert set(acked) <= set(logged) <= set(acked) | set(late)
            assert set(logged.values()) == {1}, "an event is in the log twice"
        finally:
            await store.close()

    try:
        asyncio.run(body())
    finally:
        for port in killed:
            cluster.restart(port)  # it rejoins as a replica of its promoted replica


def test_a_plain_server_is_not_mistaken_for_a_cluster(plain_redis: RedisServer) -> None:
    """redis+cluster:// at one server fails at the first call with a clear error."""

    async def body() -> None:
        store = open_store(f"redis+cluster://127.0.0.1:{plain_redis.port}")
        try:
            with pytest.raises(StoreUnavailable, match="luster"):
                await store.ping()
        finally:
            await store.close()

    asyncio.run(body())
    with redis.Redis(port=plain_redis.port) as client:
        assert client.dbsize() == 0


def test_serve_refuses_a_cluster_url_that_leads_nowhere(
    plain_redis: RedisServer, tmp_path: Path
) -> None:
    """``recall serve`` (the real console script) exits 2 naming RECALL_STATE_URL, before
    any worker starts: a URL that does not parse, no node answering, not a cluster."""
    cases = {
        "redis+cluster://h:1/0": "RECALL_STATE_URL: a Redis Cluster has no database number",
        f"redis+cluster://127.0.0.1:{free_port()}": "RECALL_STATE_URL: no Redis Cluster node",
        f"redis+cluster://127.0.0.1:{plain_redis.port}": "RECALL_STATE_URL: the server is not",
    }
    for url, expected in cases.items():
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECALL_")}
        env.update(RECALL_STATE_URL=url, RECALL_ROOT=str(tmp_path), PYTHONPATH=str(REPO))
        result = subprocess.run(
            [str(RECALL), "serve"], env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 2, result.stderr
        assert expected in result.stderr and "Traceback" not in result.stderr
