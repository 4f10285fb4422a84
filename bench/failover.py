"""What a client of a Redis Cluster state store sees in the first seconds after a master
dies: which calls are refused, for how long, how fast a refusal comes, and when the
replica's promotion makes everything answer again.

A six-node cluster (three masters, three replicas; ``tests/redis_cluster.py``,
``cluster-node-timeout`` 1 s, ``cluster-require-full-coverage no``) on 127.0.0.1 and one
store with the service's bounds (reads 50 ms, writes 1 s, ``WAIT 1 100``). Four probes run
concurrently, each call followed by a 10 ms pause: an add of one event of a user on a
live master, counting against an experiment whose live counts are on the master killed;
an add of a user on the master killed; a read (``recent``) of each of the two users. The
master killed (SIGKILL, 0.5 s in) also holds the store's log bucket: the worst case for
the live user's add. A round lasts until the dead master's user reads again, plus 1 s;
the node is restarted between rounds (it rejoins as a replica, the cluster flushed, a new
store). The rounds alternate the client's least time between two slot-map reads
(``redis_client.TOPOLOGY_REFRESH_S``, redis-py's default 1 s against the store's).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from redis.exceptions import RedisError  # noqa: E402

from bench._results import finish, header  # noqa: E402
from recall.service.state import (  # noqa: E402
    LIVE_KS,
    Event,
    LiveCount,
    StateStore,
    StoreTimeout,
    StoreUnavailable,
    open_store,
    redis_client,
)
from recall.service.state.redis import live_key  # noqa: E402
from recall.service.state.redis_client import user_key  # noqa: E402
from tests.redis_cluster import RedisCluster, redis_cluster  # noqa: E402
from tests.redis_server import server_version  # noqa: E402

logger = logging.getLogger("bench.failover")

T0 = 1_700_000_000.0
PAUSE_S = 0.01
KILL_AFTER_S = 0.5
AFTER_FAILOVER_S = 1.0
GIVE_UP_S = 30.0
PROBES = ("add, live master's user", "add, dead master's user", "read, live", "read, dead")

Record = tuple[str, float, float, str]
"""(probe, start in seconds after the kill, duration in seconds, outcome: ok, uncounted
(the add stored the events, not the live counts), refused, timeout)."""
Outage = tuple[str, float, float, str, bool]
"""A record and whether it started between the kill and the failover."""


def _users(cluster: RedisCluster, port: int) -> tuple[int, int]:
    """A user on the master at ``port`` and one on another master."""
    masters = [cluster.master_of(user_key(u, b"r")) for u in range(1000)]
    return masters.index(port), next(u for u, m in enumerate(masters) if m != port)


async def _probe(
    name: str,
    call: Callable[[int], Awaitable[object]],
    clock: dict[str, float],
    stop: asyncio.Event,
    out: list[Record],
) -> None:
    n = 0
    while not stop.is_set():
        started = time.perf_counter()
        try:
            outcome = "uncounted" if await call(n) is False else "ok"
        except StoreTimeout:
            outcome = "timeout"
        except StoreUnavailable:
            outcome = "refused"
        ended = time.perf_counter()
        out.append((name, started - clock.get("kill", float("inf")), ended - started, outcome))
        if name == "read, dead" and outcome == "ok" and "kill" in clock:
            clock.setdefault("failover", started - clock["kill"])
        n += 1
        await asyncio.sleep(PAUSE_S)


async def _promoted(cluster: RedisCluster, key: bytes, port: int, clock: dict[str, float]) -> None:
    """Until a live node's CLUSTER SLOTS names another master for ``key``'s slot: then the
    time since the kill in ``clock["promoted"]``."""
    while await asyncio.to_thread(_master_or_none, cluster, key) in (port, None):
        await asyncio.sleep(PAUSE_S)
    clock["promoted"] = time.perf_counter() - clock["kill"]


def _master_or_none(cluster: RedisCluster, key: bytes) -> int | None:
    try:
        return cluster.master_of(key)
    except (RedisError, OSError, RuntimeError):  # a node just killed, a slot in transit
        return None


async def _round(cluster: RedisCluster) -> tuple[list[Outage], dict[str, float], int]:
    """One kill: every probe call's record; when the replica was promoted (a live node's
    slot map) and when the store read the dead master's user again, in seconds after the
    kill; the port killed."""
    cluster.flush()
    store: StateStore = open_store(cluster.url(3), timeout_s=0.05, write_timeout_s=1.0)
    await store.add([Event(-1, 0, T0)])  # the store's log bucket, found next
    (port,) = cluster.masters_with_keys("recall:{log:*}")  # flushed before: one
    down, up = _users(cluster, port)
    experiment = next(f"e{n}" for n in range(1000) if cluster.master_of(live_key(f"e{n}")) == port)
    live = [LiveCount(experiment, "control", "b", 0.0, 1, (1,) * len(LIVE_KS))]
    calls: dict[str, Callable[[int], Awaitable[object]]] = {
        PROBES[0]: lambda n: store.add([Event(up, n, T0 + n)], live),
        PROBES[1]: lambda n: store.add([Event(down, n, T0 + n)]),
        PROBES[2]: lambda n: store.recent([up], after=T0),
        PROBES[3]: lambda n: store.recent([down], after=T0),
    }
    clock: dict[str, float] = {}
    stop = asyncio.Event()
    records: list[Record] = []
    tasks = [asyncio.create_task(_probe(p, c, clock, stop, records)) for p, c in calls.items()]
    try:
        await asyncio.sleep(KILL_AFTER_S)
        await asyncio.to_thread(cluster.kill, port)
        clock["kill"] = time.perf_counter()
        promoted = asyncio.create_task(_promoted(cluster, user_key(down, b"r"), port, clock))
        while "failover" not in clock or not promoted.done():
            if time.perf_counter() - clock["kill"] > GIVE_UP_S:
                raise RuntimeError(f"no failover within {GIVE_UP_S:g} s")
            await asyncio.sleep(0.05)
        await asyncio.sleep(AFTER_FAILOVER_S)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await store.close()
        await asyncio.to_thread(cluster.restart, port)
    outage = [(*r, 0 <= r[1] < clock["failover"]) for r in records]
    return outage, {k: clock[k] for k in ("promoted", "failover")}, port


def _summary(records: list[Outage]) -> dict[str, dict[str, Any]]:
    """Per probe, over the rounds: calls, refusals, timeouts and uncounted adds after the
    kill; the last refusal (s after the kill); p50 and max duration (ms) of the refused
    calls, of those that succeeded during the outage, and of those after the failover."""
    out: dict[str, dict[str, Any]] = {}
    for probe in PROBES:
        mine = [r for r in records if r[0] == probe and r[1] >= 0]
        refused = [r for r in mine if r[3] in ("refused", "timeout")]
        answered = [r for r in mine if r[3] in ("ok", "uncounted")]
        out[probe] = {
            "calls_after_kill": len(mine),
            "refused": sum(r[3] == "refused" for r in refused),
            "timeouts": sum(r[3] == "timeout" for r in refused),
            "uncounted": sum(r[3] == "uncounted" for r in mine),
            "last_refusal_s": round(max((r[1] for r in refused), default=0.0), 3),
            "refused_ms": _p50_max(refused),
            "ok_in_outage_ms": _p50_max([r for r in answered if r[4]]),
            "after_failover_ms": _p50_max([r for r in answered if not r[4]]),
        }
    return out


def _p50_max(records: list[Outage]) -> list[float] | None:
    """p50 and max duration (ms) of ``records``; None when there are none."""
    if not records:
        return None
    durations = [r[2] for r in records]
    return [_ms(statistics.median(durations)), _ms(max(durations))]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def _cell(p50_max: list[float] | None) -> str:
    return "-" if p50_max is None else f"{p50_max[0]:g} / {p50_max[1]:g}"


def _table(results: dict[str, dict[str, Any]]) -> str:
    lines = []
    for setting, result in results.items():
        lines += [
            f"slot-map refresh at most every {setting} s:",
            "  replica promoted (a live node's slot map), s after the kill: "
            + ", ".join(f"{t:.2f}" for t in result["promoted_s"]),
            "  the store reads the dead master's user again, s after the kill: "
            + ", ".join(f"{t:.2f}" for t in result["read_again_s"]),
            "| probe | calls after the kill | refused | timed out | stored, counts not kept "
            "| last refusal (s) | refused, p50 / max (ms) | answered during the outage "
            "| after the failover |",
            "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |",
        ]
        for probe, p in result["probes"].items():
            lines.append(
                f"| {probe} | {p['calls_after_kill']} | {p['refused']} | {p['timeouts']} "
                f"| {p['uncounted']} | {p['last_refusal_s']} "
                f"| {_cell(p['refused_ms'])} | {_cell(p['ok_in_outage_ms'])} "
                f"| {_cell(p['after_failover_ms'])} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="kills per refresh setting")
    parser.add_argument(
        "--refresh-s",
        type=float,
        nargs="+",
        default=[1.0, redis_client.TOPOLOGY_REFRESH_S],
        help="slot-map refresh intervals to compare, a round of each in turn "
        "(redis-py's default 1 s, the store's)",
    )
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument(
        "--out", type=Path, default=None, help="results JSON (e.g. bench/results/failover.json)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    report: dict[str, Any] = {
        **header("failover"),
        "redis_server": server_version(),
        "method": __doc__.split("\n\n")[1].replace("\n", " "),
        "rounds": args.rounds,
    }
    records: dict[float, list[Outage]] = {r: [] for r in args.refresh_s}
    times: dict[float, list[dict[str, float]]] = {r: [] for r in args.refresh_s}
    with (
        tempfile.TemporaryDirectory(dir=args.workdir, prefix="failover-") as tmp,
        redis_cluster(Path(tmp)) as cluster,
    ):
        for round_ in range(args.rounds):
            for refresh_s in args.refresh_s:
                redis_client.TOPOLOGY_REFRESH_S = refresh_s  # read by connect()
                mine, at, port = asyncio.run(_round(cluster))
                logger.info(
                    "round %d, refresh %g s: killed %d, promoted after %.2f s, read again "
                    "after %.2f s",
                    *(round_ + 1, refresh_s, port, at["promoted"], at["failover"]),
                )
                records[refresh_s] += mine
                times[refresh_s].append(at)
    report["by_refresh_s"] = {
        str(r): {
            "promoted_s": [round(t["promoted"], 3) for t in times[r]],
            "read_again_s": [round(t["failover"], 3) for t in times[r]],
            "probes": _summary(records[r]),
        }
        for r in args.refresh_s
    }
    finish(args.out, report, _table(report["by_refresh_s"]))


if __name__ == "__main__":
    main()
