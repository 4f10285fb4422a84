"""Recall by user id over HTTP with each state store: SQLite, one Redis, a Redis Cluster.

One ``recall serve`` replica (1 worker, a 10,000-item Flat bundle) per store, all running at
once; the stores are a SQLite file, one ``redis-server`` and a six-node Redis Cluster
(three masters, three replicas; ``tests/redis_cluster.py``), all on 127.0.0.1. 1,000 users
first get 10 events each through ``POST /v1/events``. Then, in rounds that alternate the
replicas (the machine is shared: ratios from one run, side by side), one client sends
``POST /v1/recall {"user_id", "k": 100}`` for random users of those at ``--rate`` requests/s
(open loop, one connection) and ``POST /v1/events`` with 10 events of one user at a tenth
of it; each request's latency is measured at the client. The replicas' store read bound is
1 s, so every answer includes its read. Then the store calls alone, in process.

The cluster runs twice: with the default ``WAIT 1 100`` after each write (an event is on a
replica before its 200) and with ``?wait_replicas=0``, so the WAIT's cost shows in the
events row. Targets (issue 18): cluster p50 within +0.3 ms of one Redis.

    .venv/bin/python bench/state_latency.py --out bench/results/state_latency.json
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import random
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._bundles import ITEM_ID_OFFSET, BenchBundle, ensure_bundle  # noqa: E402
from bench._results import finish, header  # noqa: E402
from bench._server import serve  # noqa: E402
from recall.service.state import Event, open_store, sqlite_url  # noqa: E402
from tests.redis_cluster import redis_cluster  # noqa: E402
from tests.redis_server import (  # noqa: E402
    load_users,
    redis_server,
    server_version,
)

logger = logging.getLogger("bench.state_latency")

USERS = 1000
BATCH_USERS = 8
SLOW_OK = {"RECALL_STATE_TIMEOUT_S": "1"}
"""A read bound of 1 s, not 50 ms: on a loaded machine a late read would otherwise be
dropped (``fresh: false``) and the answer would look faster than the store is."""
EVENTS_PER_USER = 10


def paced(
    client: httpx.Client, bodies: list[dict[str, Any]], path: str, rate: float
) -> list[float]:
    """Send ``bodies`` to ``path`` at ``rate`` per second (open loop: a late request does
    not delay the schedule); latency of each in ms. Every answer must be 200."""
    out = []
    start = time.perf_counter()
    for i, body in enumerate(bodies):
        due = start + i / rate
        now = time.perf_counter()
        if due > now:
            time.sleep(due - now)
        t = time.perf_counter()
        response = client.post(path, json=body)
        out.append((time.perf_counter() - t) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"{path}: {response.status_code} {response.text[:200]}")
    return out


def stats(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 3),
        "p99_ms": round(float(np.percentile(a, 99)), 3),
        "n": len(ms),
    }


def in_process(urls: dict[str, str], rounds: int, calls: int) -> dict[str, dict[str, Any]]:
    """The store calls alone, in this process (no HTTP: the part that differs between the
    stores, with far less noise): ``recent`` of one user with 10 events and of 8 (a
    batch recall's read: one round trip per node on a cluster), and ``add`` of 10 events
    of one user; rounds alternate the stores."""

    async def run() -> dict[str, dict[str, Any]]:
        stores = {name: open_store(url, timeout_s=1.0) for name, url in urls.items()}
        reads: dict[str, list[float]] = {name: [] for name in stores}
        batch_reads: dict[str, list[float]] = {name: [] for name in stores}
        adds: dict[str, list[float]] = {name: [] for name in stores}
        rng = random.Random(1)
        try:
            for _ in range(rounds):
                for name, store in stores.items():
                    for _ in range(calls):
                        t = time.perf_counter()
                        await store.recent([rng.randrange(USERS)], after=-math.inf)
                        reads[name].append((time.perf_counter() - t) * 1000)
                    for _ in range(calls // 4):  # a batch recall's read: 8 users
                        users = rng.sample(range(USERS), BATCH_USERS)
                        t = time.perf_counter()
                        await store.recent(users, after=-math.inf)
                        batch_reads[name].append((time.perf_counter() - t) * 1000)
                    for _ in range(calls // 4):
                        user = USERS + rng.randrange(10 * USERS)
                        batch = [Event(user, i, time.time()) for i in range(EVENTS_PER_USER)]
                        t = time.perf_counter()
                        await store.add(batch)
                        adds[name].append((time.perf_counter() - t) * 1000)
        finally:
            for store in stores.values():
                await store.close()
        return {
            n: {
                "recent_1": stats(reads[n]),
                f"recent_{BATCH_USERS}": stats(batch_reads[n]),
                "add_10": stats(adds[n]),
            }
            for n in stores
        }

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200, help="recalls per second")
    parser.add_argument("--requests", type=int, default=1000, help="recalls per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/state_latency.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    spec = BenchBundle(n_items=10_000, n_users=10_000, kind="flat")
    bundle = ensure_bundle(args.workdir / "bench-bundles", spec)
    rng = random.Random(0)
    report: dict[str, Any] = {
        **header("state_latency"),
        "redis_server": server_version(),
        "method": __doc__.split("\n\n")[1].replace("\n", " "),
        "rate_per_s": args.rate,
        "requests_per_round": args.requests,
        "rounds": args.rounds,
    }
    with (
        tempfile.TemporaryDirectory(dir=args.workdir, prefix="state-latency-") as tmp,
        ExitStack() as stack,
    ):
        work = Path(tmp)
        one = stack.enter_context(redis_server(work / "redis"))
        cluster = stack.enter_context(redis_cluster(work / "cluster"))
        urls = {
            "sqlite": sqlite_url(work / "events.sqlite"),
            "redis": one.url(),
            "cluster": cluster.url(3),
            "cluster, no WAIT": cluster.url(3) + "?wait_replicas=0",
        }
        for url in (urls["redis"], urls["cluster"]):  # Redis mode: replicas read users there
            load_users(url, bundle)
        servers = {
            name: stack.enter_context(
                serve(bundle.parent, 1, env={"RECALL_STATE_URL": url, **SLOW_OK})
            )
            for name, url in urls.items()
        }
        clients = {
            name: stack.enter_context(httpx.Client(base_url=s.url, timeout=10))
            for name, s in servers.items()
        }
        now = time.time()
        for name, client in clients.items():  # the users' events (the cluster's once)
            if name == "cluster, no WAIT":
                continue
            for u in range(USERS):
                events = [
                    {
                        "user_id": u,
                        "item_id": ITEM_ID_OFFSET + rng.randrange(spec.n_items),
                        "timestamp": now - 100 + i,
                    }
                    for i in range(EVENTS_PER_USER)
                ]
                assert client.post("/v1/events", json={"events": events}).status_code == 200
        recalls: dict[str, list[float]] = {name: [] for name in clients}
        writes: dict[str, list[float]] = {name: [] for name in clients}
        for round_ in range(args.rounds):
            order = list(clients)
            rng.shuffle(order)
            for name in order:
                bodies = [{"user_id": rng.randrange(USERS), "k": 100} for _ in range(args.requests)]
                paced(clients[name], bodies[:50], "/v1/recall", args.rate)  # warm up
                recalls[name] += paced(clients[name], bodies, "/v1/recall", args.rate)
                batches = [
                    {
                        "events": [
                            {
                                "user_id": USERS + rng.randrange(10 * USERS),
                                "item_id": ITEM_ID_OFFSET + rng.randrange(spec.n_items),
                            }
                            for _ in range(EVENTS_PER_USER)
                        ]
                    }
                    for _ in range(args.requests // 10)
                ]
                writes[name] += paced(clients[name], batches, "/v1/events", args.rate / 10)
                logger.info("round %d %s: recall %s", round_, name, stats(recalls[name]))
        report["in_process"] = in_process(urls, args.rounds * 2, 500)
    report["recall_by_user_id"] = {name: stats(ms) for name, ms in recalls.items()}
    report["post_events_10"] = {name: stats(ms) for name, ms in writes.items()}
    lines = [
        "| store | recall p50 / p99 (ms) | POST /v1/events (10) p50 / p99 (ms) |",
        "| --- | --- | --- |",
    ]
    for name in clients:
        r, w = report["recall_by_user_id"][name], report["post_events_10"][name]
        lines.append(
            f"| {name} | {r['p50_ms']:.3f} / {r['p99_ms']:.3f} | "
            f"{w['p50_ms']:.3f} / {w['p99_ms']:.3f} |"
        )
    lines += [
        "",
        "| in process, p50 / p99 ms | recent, 1 user | recent, 8 users | add, 10 events |",
        "| --- | --- | --- | --- |",
    ]
    for name, row in report["in_process"].items():
        cells = [row["recent_1"], row[f"recent_{BATCH_USERS}"], row["add_10"]]
        text = " | ".join(f"{c['p50_ms']:.3f} / {c['p99_ms']:.3f}" for c in cells)
        lines.append(f"| {name} | {text} |")
    delta = (
        report["recall_by_user_id"]["cluster"]["p50_ms"]
        - report["recall_by_user_id"]["redis"]["p50_ms"]
    )
    report["cluster_minus_redis_p50_ms"] = round(delta, 3)
    lines.append(f"\ncluster - one Redis, recall p50: {delta:+.3f} ms (target <= +0.3 ms)")
    finish(args.out, report, "\n".join(lines))


if __name__ == "__main__":
    main()
