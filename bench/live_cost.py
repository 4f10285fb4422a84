"""What remembering the served list costs a recall by user id, and a user's bytes in the store.

Live quality (docs/experiments.md, "Live quality") keeps each user's last served list in
the state store: one more store write on every recall by user id. Here, in one process
(the FastAPI app over ``httpx.ASGITransport``: routing, validation, the store read, the
search, JSON, the write; no network), recalls by user id (k=100) alternate between the
real route (the list remembered before the answer is sent) and the same route with the
remember step skipped, pair by pair, on the 1M-item HNSW bundle of ``bench/_bundles.py``,
against SQLite and a real redis-server. Then the store write alone, and the bytes per
active user: SQLite's pages grown per list remembered, Redis' ``MEMORY USAGE`` of a key.

    .venv/bin/python -m bench.live_cost --out bench/results/live_cost.json
    .venv/bin/python -m bench.live_cost --items 100000 --kind flat --requests 300
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis

from bench._bundles import BenchBundle, ensure_bundle
from bench._results import finish, header
from recall.service.app import create_app
from recall.service.deps import app_state_of
from recall.service.fresh import UserState
from recall.service.pool import SearchPool
from recall.service.settings import Settings
from recall.service.state import ServedList, sqlite_url
from recall.service.state_access import Served, StateAccess
from tests.redis_server import load_users, redis_server

logger = logging.getLogger("bench.live_cost")

RESULTS = Path(__file__).resolve().parent / "results" / "live_cost.json"


def _p(latencies: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(latencies) * 1e3, q)), 4)


async def _without_remember(
    access: StateAccess,
    pool: SearchPool,
    user_ids: list[Any],
    fn: Callable[[UserState], Served[Any]],
    **kwargs: Any,
) -> Any:
    """The route's work with the remember step skipped: what a recall cost before."""
    return await access.run_with_state(pool, user_ids, lambda state: fn(state)[0], **kwargs)


async def measure(
    root: Path, state_url: str, all_users: np.ndarray, requests: int
) -> dict[str, Any]:
    """Alternate remembered and not remembered recalls of users among ``all_users`` (the
    bundle's ids: in Redis mode the served bundle holds none); then the write alone."""
    settings = Settings(root=root, state_url=state_url, reload_interval_s=0, search_threads=1)
    app = create_app(settings)
    rng = np.random.default_rng(0)
    async with app.router.lifespan_context(app):
        state = app_state_of(app)
        access = state.state_access()
        bundle = state.holder.require()
        users_list: list[int] = rng.permutation(all_users)[: 2 * requests].tolist()
        remember = access.run_and_remember

        async def skip(*args: Any, **kwargs: Any) -> Any:
            return await _without_remember(access, *args, **kwargs)

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:

            async def recall(user_id: int, on: bool) -> float:
                access.run_and_remember = remember if on else skip  # type: ignore[method-assign]
                started = time.perf_counter()
                response = await client.post("/v1/recall", json={"user_id": user_id, "k": 100})
                elapsed = time.perf_counter() - started
                response.raise_for_status()
                assert response.json()["fresh"], response.text
                return elapsed

            for j in range(min(50, len(users_list))):  # warm-up
                await recall(users_list[j], j % 2 == 0)
            on_lat, off_lat = [], []
            for j in range(requests):  # pairs; which goes first alternates
                for on in (j % 2 == 0, j % 2 == 1):
                    user = users_list[2 * j + int(on)]
                    (on_lat if on else off_lat).append(await recall(user, on))
            access.run_and_remember = remember  # type: ignore[method-assign]
        unremembered = state.metrics.live_unremembered
        failed = sum(unremembered.labels(r)._value.get() for r in ("timeout", "unavailable"))
        served = await access.store.served(users_list[1 : 2 * requests : 2][:5])
        assert all(s is not None for s in served), "the remembered lists are not in the store"
        items = tuple(bundle.item_ids.ids[:100].tolist())
        write_lat = []
        for j in range(requests):
            one = ServedList(users_list[j], "", "control", bundle.id, items, time.time())
            started = time.perf_counter()
            await access.store.remember([one])
            write_lat.append(time.perf_counter() - started)
    return {
        "requests": requests,
        "remembered": {"p50_ms": _p(on_lat, 50), "p99_ms": _p(on_lat, 99)},
        "not_remembered": {"p50_ms": _p(off_lat, 50), "p99_ms": _p(off_lat, 99)},
        "p50_cost_ms": round(_p(on_lat, 50) - _p(off_lat, 50), 4),
        "write_alone": {"p50_ms": _p(write_lat, 50), "p99_ms": _p(write_lat, 99)},
        "unremembered": failed,
    }


def sqlite_bytes_per_user(path: Path, users: int, item_ids: list[int]) -> float:
    """Pages the ``served`` table and its index grow by per remembered list (checkpointed)."""
    from recall.service.state.served import encode
    from recall.service.state.sqlite import REMEMBER

    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        before = conn.execute("PRAGMA page_count").fetchone()[0]
        now = time.time()
        rows = [
            (u, now, encode(ServedList(u, "", "control", "b", tuple(item_ids), now)))
            for u in range(10**9, 10**9 + users)
        ]
        conn.execute("BEGIN")
        conn.executemany(REMEMBER, rows)
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        after = conn.execute("PRAGMA page_count").fetchone()[0]
        page = conn.execute("PRAGMA page_size").fetchone()[0]
    finally:
        conn.close()
    return round((after - before) * page / users, 1)


def redis_bytes_per_user(url: str, users: list[int]) -> float:
    """``MEMORY USAGE`` of users' served keys, on average."""
    from recall.service.state.redis_client import user_key

    with redis.Redis.from_url(url) as client:
        sizes = [client.memory_usage(user_key(u, b"served"), samples=0) for u in users]
    return round(float(np.mean([s for s in sizes if s])), 1)


@contextmanager
def redis_state(workdir: Path, bundle: Path) -> Iterator[str]:
    with redis_server(workdir / "redis") as server:
        load_users(server.url(), bundle)
        yield server.url()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--kind", default="hnsw")
    p.add_argument("--cache", type=Path, default=Path("/tmp/recall-bench"))
    p.add_argument("--requests", type=int, default=1000, help="request pairs per store (>= 1)")
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    args = parse_args(argv)
    spec = BenchBundle(args.items, args.users, args.kind)
    bundle = ensure_bundle(args.cache, spec)
    root = bundle.parent
    results: dict[str, Any] = {**header("live_cost"), "bundle": spec.name, "stores": {}}
    with tempfile.TemporaryDirectory(prefix="recall-live-cost-") as tmp:
        workdir = Path(tmp)
        path = workdir / "events.sqlite"
        all_users = np.load(bundle / "user_ids.npy", allow_pickle=False)
        sqlite = asyncio.run(measure(root, sqlite_url(path), all_users, args.requests))
        item_ids = list(range(10**6, 10**6 + 100))  # 7-digit ids, as at 1M items
        sqlite["bytes_per_user"] = sqlite_bytes_per_user(path, 10_000, item_ids)
        results["stores"]["sqlite"] = sqlite
        with redis_state(workdir, bundle) as url:
            measured = asyncio.run(measure(root, url, all_users, args.requests))
            with redis.Redis.from_url(url) as client:
                keys = client.keys(b"recall:{u:*}:served")[:200]
            users = [json.loads(k.split(b"{u:")[1].split(b"}")[0]) for k in keys]
            measured["bytes_per_user"] = redis_bytes_per_user(url, users)
            results["stores"]["redis"] = measured
    finish(args.out, results, table(results))


def table(results: dict[str, Any]) -> str:
    """The stores' p50 latencies (ms) with and without the served list, and bytes per user."""
    lines = [
        f"{'store':<8}{'remembered':>12}{'without':>10}{'cost':>8}{'write':>8}{'bytes/user':>12}",
        f"{'':<8}{'p50 ms':>12}{'p50 ms':>10}{'p50 ms':>8}{'p50 ms':>8}",
    ]
    for name, r in results["stores"].items():
        on, off = r["remembered"]["p50_ms"], r["not_remembered"]["p50_ms"]
        cost, write = r["p50_cost_ms"], r["write_alone"]["p50_ms"]
        lines.append(
            f"{name:<8}{on:>12.3f}{off:>10.3f}{cost:>8.3f}{write:>8.3f}{r['bytes_per_user']:>12.0f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
