"""Replica memory with the users in the store, and the publish load rate (issue 18 §2, §5).

For each user count (default 10k and 1M, over the same 100k items), writes a
schema_version 2 bundle (user windows of up to 50 items with timestamps, seen lists,
stored vectors), then:

- loads its users into one real ``redis-server`` (``UserLoader``, what ``recall publish
  --state-url`` runs) and, when ``--cluster``, into a real 3-master Redis Cluster
  (``tests/redis_cluster.py``): users/s, and the store's bytes per user (``used_memory``
  before and after, over the users);
- serves it with ``recall serve`` (one worker, a real subprocess) in Redis mode, sends
  ``--requests`` recalls by random user ids, and reads the replica's RSS and PSS
  (``/proc/<pid>/smaps_rollup``, summed over its process tree); the same in SQLite mode
  (the user files mapped) beside it;
- prints the bundle bytes a replica must fetch: every file, or without the ``user_*``
  files (Redis mode; ``user_tower.npz`` is the model and stays).

    .venv/bin/python -m bench.replica_memory --out bench/results/replica_memory.json
    .venv/bin/python -m bench.replica_memory --users 10000 100000 --out /tmp/rm.json  # quick
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis

from bench._bundles import clustered_vectors, seen_lists, tower_arrays
from bench._results import finish, header
from bench._server import serve
from recall.index import bundle as b
from recall.index.build import BuildOptions, build_index
from recall.index.publish import publish
from recall.index.verify import verify_bundle
from recall.service.state.users import USER_FILES, UserLoader
from tests.redis_server import redis_server

logger = logging.getLogger("bench.replica_memory")

DIM = 32  # plus the bias coordinate
WINDOW = 50
TRAINED_UNTIL = 1_700_000_000.0


def write_bundle(root: Path, n_items: int, n_users: int, seed: int = 0) -> Path:
    """A published schema_version 2 bundle: ``n_items`` clustered items, ``n_users`` users
    with windows of 5..50 items (log-normal, ~20) and seen lists of ~30."""
    rng = np.random.default_rng(seed + 1)
    items, users = clustered_vectors(n_items, n_users, DIM, seed)
    popularity = np.exp(items[:, -1])
    indptr, seen = seen_lists(n_users, popularity, 30.0, rng)
    lengths = np.clip(rng.lognormal(np.log(20), 0.5, n_users), 5, WINDOW).astype(np.int64)
    window_at = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(lengths, out=window_at[1:])
    total = int(window_at[-1])
    window_items = rng.choice(n_items, size=total, p=popularity / popularity.sum())
    # oldest first within each user: a global increasing ramp is increasing per user too
    times = np.linspace(TRAINED_UNTIL - 86_400 * 365, TRAINED_UNTIL, total)
    arrays: dict[str, np.ndarray | dict[str, np.ndarray]] = {
        b.ITEM_IDS: np.arange(n_items, dtype=np.int64) + 10_000_000,
        b.ITEM_VECTORS: items,
        b.USER_IDS: np.arange(n_users, dtype=np.int64),
        b.USER_VECTORS: users,
        b.USER_SEEN: {"indptr": indptr, "indices": seen},
        b.USER_TOWER: tower_arrays(n_items, DIM, rng),
        b.ITEM_POPULARITY: np.bincount(seen, minlength=n_items).astype(np.int64),
        b.USER_HISTORY: {
            "indptr": window_at,
            "items": window_items.astype(np.int32),
            "timestamps": times,
            "categorical": np.zeros((n_users, 0), dtype=np.int64),
            "numeric": np.zeros((n_users, 0), dtype=np.float32),
        },
    }
    bundle = b.write_bundle(
        root,
        b.new_bundle_id(),
        arrays,
        dim=DIM + 1,
        counts=b.Counts(users=n_users, items=n_items, interactions=int(seen.size)),
        trainer={"source": "bench/replica_memory.py"},
        trained_until=TRAINED_UNTIL,
    )
    build_index(bundle, BuildOptions(kind="flat", sample_queries=200, latency_queries=5))
    publish(bundle)
    return bundle


def used_memory(url: str) -> int:
    """``used_memory`` summed over the masters the URL reaches (bytes)."""
    from recall.service.state.redis_client import connect_sync, is_cluster_url

    client: Any = connect_sync(url, timeout_s=10)
    if is_cluster_url(url):  # {node: info} of each master (replicas hold copies)
        info = client.info("memory", target_nodes=client.PRIMARIES)
        return sum(int(node["used_memory"]) for node in info.values())
    return int(client.info("memory")["used_memory"])


def load(url: str, bundle: Path) -> dict[str, float]:
    """Load ``bundle``'s users into ``url``: users/s and store bytes per user."""
    verified = verify_bundle(bundle)
    before = used_memory(url)
    loader = UserLoader(url)
    started = time.perf_counter()
    written = loader.load(verified)
    took = time.perf_counter() - started
    loader.close()
    users = verified.manifest.counts.users
    assert written == users, (written, users)
    return {
        "seconds": round(took, 2),
        "users_per_s": round(users / took),
        "store_bytes_per_user": round((used_memory(url) - before) / users, 1),
    }


def tree_memory(pid: int) -> dict[str, float]:
    """RSS and PSS (MB) of ``pid`` and its descendants, from smaps_rollup."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat[stat.rindex(")") + 2 :].split()[1])
            children.setdefault(parent, []).append(int(entry))
    todo, rss, pss = [pid], 0, 0
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            rollup = Path(f"/proc/{p}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in rollup.splitlines():
            name, _, value = line.partition(":")
            if name == "Rss":
                rss += int(value.split()[0])
            elif name == "Pss":
                pss += int(value.split()[0])
    return {"rss_mb": round(rss / 1024, 1), "pss_mb": round(pss / 1024, 1)}


def replica(root: Path, n_users: int, state_url: str, requests: int) -> dict[str, float]:
    """Serve ``root`` with ``state_url``, recall ``requests`` random users, then measure."""
    rng = random.Random(0)
    env = {"RECALL_STATE_URL": state_url, "RECALL_STATE_TIMEOUT_S": "2"}  # a busy machine
    with serve(root, 1, env=env) as server, httpx.Client() as c:
        for _ in range(requests):
            response = c.post(
                f"{server.url}/v1/recall", json={"user_id": rng.randrange(n_users), "k": 50}
            )
            assert response.status_code == 200, response.text
        return tree_memory(server.process.pid)


def fetch_bytes(bundle: Path, users_in_store: bool) -> int:
    files = b.read_manifest(bundle).files
    return sum(f.bytes for name, f in files.items() if not (users_in_store and name in USER_FILES))


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    with redis_server(work / "redis") as server:
        url = server.url()
        for n_users in args.users:
            root = work / f"root-{n_users}"
            logger.info("writing a bundle of %d items and %d users", args.items, n_users)
            bundle = write_bundle(root, args.items, n_users)
            row: dict[str, Any] = {"users": n_users, "items": args.items}
            row["redis_load"] = load(url, bundle)
            row["replica_redis"] = replica(root, n_users, url, args.requests)
            sqlite = f"sqlite://{work}/events-{n_users}.sqlite"
            row["replica_sqlite"] = replica(root, n_users, sqlite, args.requests)
            row["fetch_bytes_redis"] = fetch_bytes(bundle, True)
            row["fetch_bytes_sqlite"] = fetch_bytes(bundle, False)
            if args.cluster:
                row["cluster_load"] = cluster_load(work / f"cluster-{n_users}", bundle)
            redis.Redis.from_url(url).flushall(asynchronous=True)
            shutil.rmtree(root)
            rows.append(row)
            logger.info("%s", row)
    return {"rows": rows}


def cluster_load(directory: Path, bundle: Path) -> dict[str, float]:
    """The load into a fresh 3-master cluster of real redis-server processes."""
    from tests.redis_cluster import redis_cluster

    with redis_cluster(directory) as cluster:
        return load(cluster.url(), bundle)


def table(report: dict[str, Any]) -> str:
    lines = [
        "| users | replica RSS / PSS, Redis mode (MB) | SQLite mode (MB) | bundle bytes to "
        "fetch, Redis / SQLite mode | load into one Redis (users/s) | into the cluster "
        "| store bytes/user |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["rows"]:
        cluster = r.get("cluster_load", {}).get("users_per_s", "-")
        lines.append(
            f"| {r['users']:,} | {r['replica_redis']['rss_mb']} / {r['replica_redis']['pss_mb']} "
            f"| {r['replica_sqlite']['rss_mb']} / {r['replica_sqlite']['pss_mb']} "
            f"| {r['fetch_bytes_redis'] / 1e6:.1f} MB / {r['fetch_bytes_sqlite'] / 1e6:.1f} MB "
            f"| {r['redis_load']['users_per_s']:,} | {cluster} "
            f"| {r['redis_load']['store_bytes_per_user']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--users", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--requests", type=int, default=2000, help="recalls before measuring")
    parser.add_argument("--cluster", action="store_true", help="also load into a Redis Cluster")
    parser.add_argument("--out", type=Path, help="write the report (JSON) here")
    args = parser.parse_args()
    timed_report("replica_memory", args, run, table)


def timed_report(
    benchmark: str,
    args: argparse.Namespace,
    run: Callable[[argparse.Namespace, Path], dict[str, Any]],
    table: Callable[[dict[str, Any]], str],
) -> None:
    """``run(args, work)`` in a temporary ``work`` directory, timed: its ``table`` printed,
    its report (with machine and date) written to ``args.out``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    report = header(benchmark)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"{benchmark}-") as work:
        report.update(run(args, Path(work)))
    report["seconds"] = round(time.perf_counter() - started, 1)
    finish(args.out, report, table(report))


if __name__ == "__main__":
    main()
