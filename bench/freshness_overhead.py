"""Server-side cost of fresh user vectors: recall by user_id with fresh events vs without.

The bundle is ``bench/_bundles.py``'s (default 1M items, HNSW tuned to recall@100 >=
0.95, 100k users), made schema_version 2 here: each user's training window is their last
<= 50 seen items (timestamps before ``trained_until``) and their stored vector is
recomputed from it with the bundle's tower, so stored and fresh vectors come from the same
function and the ANN search costs the same for both. Then, in one process (the FastAPI app
over ``httpx.ASGITransport``: routing, validation, the store read, the tower, the search,
JSON; no network), ``--events`` fresh events are posted for each of ``--fresh-users``
users into a SQLite state store, and recalls by user_id alternate between a user with
fresh events (source ``user+events``: window + events through the tower) and one without
(source ``user``: the stored vector; the store is read for both). The report: p50/p99 of
each and the difference, plus the store read alone (``recent`` for one user).

    .venv/bin/python -m bench.freshness_overhead              # 1M HNSW (minutes to build once)
    .venv/bin/python -m bench.freshness_overhead --items 100000 --kind flat --requests 500
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import faiss
import httpx
import numpy as np

from bench._bundles import (
    TRAINED_UNTIL,
    WINDOW,
    BenchBundle,
    ensure_bundle,
    seen_windows,
    upgrade_to_v2,
)
from bench._results import finish, header
from recall.index import bundle as b
from recall.index.publish import publish
from recall.index.tower import UserTower
from recall.service.app import create_app
from recall.service.deps import app_state_of
from recall.service.fresh import user_vectors
from recall.service.recaller import answer as search
from recall.service.settings import Settings
from recall.service.state import open_store, sqlite_url

logger = logging.getLogger("bench.freshness_overhead")

RESULTS = Path(__file__).resolve().parent / "results" / "freshness_overhead.json"
ROUND = 200  # request pairs per round of the overhead estimate


def make_v2(v1: Path, root: Path) -> Path:
    """A schema_version 2 copy of bundle ``v1`` under ``root`` (published there): big files
    hard-linked, ``user_history.npz`` written, user vectors recomputed from it."""
    if root.exists():
        shutil.rmtree(root)
    target = root / v1.name
    target.mkdir(parents=True)
    manifest = b.read_manifest(v1)
    for name in manifest.files:
        if name != b.USER_VECTORS:
            os.link(v1 / name, target / name)
    history = seen_windows(v1)
    n_users = len(history.indptr) - 1
    b.save_array(target / b.USER_HISTORY, history.arrays())
    tower = UserTower.from_arrays(dict(np.load(v1 / b.USER_TOWER)))
    vectors = np.empty((n_users, manifest.dim), dtype=np.float32)
    for start in range(0, n_users, 10_000):
        rows = range(start, min(start + 10_000, n_users))
        vectors[start : rows.stop] = tower.encode_encoded(
            [history.window(u)[0] for u in rows],
            history.categorical[start : rows.stop],
            history.numeric[start : rows.stop],
        )
    b.save_array(target / b.USER_VECTORS, vectors)
    upgrade_to_v2(target, manifest, [b.USER_VECTORS, b.USER_HISTORY])
    publish(target)
    return target


def _stats(latencies: list[float]) -> dict[str, float]:
    ms = np.asarray(latencies) * 1e3
    return {
        "n": int(ms.size),
        "p50_ms": round(float(np.percentile(ms, 50)), 4),
        "p90_ms": round(float(np.percentile(ms, 90)), 4),
        "p99_ms": round(float(np.percentile(ms, 99)), 4),
        "mean_ms": round(float(ms.mean()), 4),
    }


async def measure(root: Path, state_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Post the events, then time recalls alternating fresh and stale users."""
    settings = Settings(
        root=root,
        state_url=sqlite_url(state_dir / "events.sqlite"),
        reload_interval_s=0,
        search_threads=1,
    )
    app = create_app(settings)
    rng = np.random.default_rng(0)
    async with app.router.lifespan_context(app):
        bundle = app_state_of(app).holder.require()
        n_users, n_items = len(bundle.user_ids), len(bundle.item_ids)
        users = rng.permutation(n_users)[: 2 * args.fresh_users]
        fresh_users = bundle.user_ids.ids[users[: args.fresh_users]].tolist()
        stale_users = bundle.user_ids.ids[users[args.fresh_users :]].tolist()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            for start in range(0, len(fresh_users), 100):
                events = [
                    {
                        "user_id": u,
                        "item_id": int(bundle.item_ids.ids[rng.integers(n_items)]),
                        "timestamp": TRAINED_UNTIL + 1 + j,
                    }
                    for u in fresh_users[start : start + 100]
                    for j in range(args.events)
                ]
                for chunk in range(0, len(events), 1000):
                    answer = await client.post(
                        "/v1/events", json={"events": events[chunk : chunk + 1000]}
                    )
                    answer.raise_for_status()

            async def recall(user_id: int) -> tuple[float, dict[str, Any]]:
                started = time.perf_counter()
                response = await client.post("/v1/recall", json={"user_id": user_id, "k": 100})
                elapsed = time.perf_counter() - started
                response.raise_for_status()
                body: dict[str, Any] = response.json()
                return elapsed, body

            for u in fresh_users[:50] + stale_users[:50]:  # warm-up
                await recall(u)
            fresh_lat, stale_lat = [], []
            for j in range(args.requests):  # pairs; which goes first alternates
                for fresh_turn in (j % 2 == 0, j % 2 == 1):
                    if fresh_turn:
                        elapsed, body = await recall(fresh_users[j % len(fresh_users)])
                        assert body["source"] == "user+events" and body["fresh"], body
                        fresh_lat.append(elapsed)
                    else:
                        elapsed, body = await recall(stale_users[j % len(stale_users)])
                        assert body["source"] == "user" and body["fresh"], body
                        stale_lat.append(elapsed)
        store = app_state_of(app).state_access().store
        store_lat, store_empty_lat = [], []
        for j in range(args.requests):
            started = time.perf_counter()
            await store.recent([fresh_users[j % len(fresh_users)]], TRAINED_UNTIL)
            store_lat.append(time.perf_counter() - started)
            started = time.perf_counter()
            await store.recent([stale_users[j % len(stale_users)]], TRAINED_UNTIL)
            store_empty_lat.append(time.perf_counter() - started)
        # the search alone (no HTTP, no store) on the vectors each kind of user gets
        setup = open_store(settings.state_url, timeout_s=10)  # not timed: no tight bound
        fresh_events = await setup.recent(fresh_users, TRAINED_UNTIL)
        await setup.close()
        made = user_vectors(bundle, fresh_users, fresh_events)
        stored = user_vectors(bundle, stale_users, [[] for _ in stale_users])
        search_fresh, search_stale = [], []
        for j in range(args.requests):
            for user, lat in ((made, search_fresh), (stored, search_stale)):
                vector = user[j % len(user)]
                assert vector is not None
                started = time.perf_counter()
                search(bundle, 100, vector.source, vector.vector, vector.seen)
                lat.append(time.perf_counter() - started)
        tower_lat = []
        history = bundle.history
        assert history is not None
        for j in range(args.requests):
            row = int(users[j % args.fresh_users])
            window = np.concatenate(
                [history.window(row)[0], rng.integers(n_items, size=args.events)]
            )[-bundle.tower.spec.history_length :]
            started = time.perf_counter()
            bundle.tower.encode_encoded(
                [window], history.categorical[row : row + 1], history.numeric[row : row + 1]
            )
            tower_lat.append(time.perf_counter() - started)
    fresh, stale = _stats(fresh_lat), _stats(stale_lat)
    # the machine may be shared: the p50 difference within each round of ROUND pairs sees
    # the same background load on both sides; its median is the robust overhead figure
    rounds = [
        1e3
        * (float(np.median(fresh_lat[r : r + ROUND])) - float(np.median(stale_lat[r : r + ROUND])))
        for r in range(0, len(fresh_lat) - ROUND + 1, ROUND)
    ]
    return {
        "events_per_fresh_user": args.events,
        "with_fresh_events": fresh,
        "without_fresh_events": stale,
        "overhead_p50_ms": round(fresh["p50_ms"] - stale["p50_ms"], 4),
        "overhead_p99_ms": round(fresh["p99_ms"] - stale["p99_ms"], 4),
        "overhead_p50_ms_median_of_rounds": round(float(np.median(rounds)), 4),
        "rounds": len(rounds),
        "store_recent_one_user": _stats(store_lat),
        "store_recent_one_user_without_events": _stats(store_empty_lat),
        "tower_encode_one_user": _stats(tower_lat),
        "search_only_fresh_vectors": _stats(search_fresh),
        "search_only_stored_vectors": _stats(search_stale),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--kind", default="hnsw", choices=["flat", "hnsw"])
    p.add_argument("--events", type=int, nargs="+", default=[10, 50], help="per fresh user")
    p.add_argument("--fresh-users", type=int, default=2000)
    p.add_argument("--requests", type=int, default=4000, help="of each kind")
    p.add_argument("--cache", type=Path, default=Path("/tmp/recall-bench"))
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    head = header("freshness_overhead", numpy=np.__version__, faiss=faiss.__version__)
    spec = BenchBundle(args.items, args.users, args.kind)
    v1 = ensure_bundle(args.cache, spec)
    root = args.cache / f"{spec.name}-v2"
    bundle = make_v2(v1, root)
    runs = []
    for events in args.events:
        state_dir = args.cache / f"{spec.name}-v2-state-{events}"
        shutil.rmtree(state_dir, ignore_errors=True)
        state_dir.mkdir(parents=True)
        run_args = argparse.Namespace(**{**vars(args), "events": events})
        runs.append(asyncio.run(measure(root, state_dir, run_args)))
        logger.info("%s", json.dumps(runs[-1]))
    manifest = b.read_manifest(bundle)
    report = {
        **head,
        "load_average_at_end": round(os.getloadavg()[0], 2),
        "bundle": {
            "items": args.items,
            "users": args.users,
            "index": (manifest.index or {}).get("factory", args.kind),
            "search_params": (manifest.index or {}).get("search_params"),
            "history_length": WINDOW,
        },
        "method": "in process (FastAPI app over httpx.ASGITransport), one request at a time, "
        "k=100, SQLite state store; fresh and stale users alternate",
        "runs": runs,
    }
    finish(args.out, report)


if __name__ == "__main__":
    main()
