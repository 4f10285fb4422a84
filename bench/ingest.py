"""Ingestion benchmark: events/s into the state store itself (no HTTP), SQLite and Redis side
by side, batches of 100 events, plus the latency of the read a recall makes.

    .venv/bin/python bench/ingest.py --out bench/results/ingest.json

Each store first gets ``WINDOW`` (50) events for every user (``--users``), so the timed
runs meet the steady state (full windows: every insert also trims). Then for each
configuration ``processes`` x ``in_flight`` writers (processes stand for a replica's
uvicorn workers, in-flight calls for concurrent requests in one worker) each call
``store.add`` with 100 events of random users for ``--seconds``; events/s is the sum over
processes, the median of ``--repeats`` runs. Then ``recent([user], after)`` p50/p99 for
single users, one call at a time, and what the store holds. SQLite runs on a file under
``--workdir`` (a real disk: fsync per commit, as ``synchronous=FULL`` does in the
service); Redis is a ``redis-server`` started here with the
compose file's persistence (AOF, ``appendfsync everysec``) unless ``--redis-url`` names one.
The service's HTTP path adds parsing and validation on top: this is the store's ceiling.

``--http`` measures that path instead: ``POST /v1/events`` on one ``recall serve`` replica
(``workers x concurrency`` configurations, ``--http-configs``) over a small synthetic
bundle, SQLite and Redis, batches of 100 (bench/_http_ingest.py); results go to
``bench/results/ingest_http.json`` unless ``--out`` says otherwise.

    .venv/bin/python bench/ingest.py --http
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import redis

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO))

from bench._bundles import ITEM_ID_OFFSET, BenchBundle, ensure_bundle  # noqa: E402
from bench._http_ingest import http_ingest  # noqa: E402
from bench._results import finish, header  # noqa: E402
from recall.service.state import Event, open_store, sqlite_url  # noqa: E402
from tests.redis_server import load_users, redis_server, server_version  # noqa: E402

logger = logging.getLogger("bench.ingest")

BATCH = 100
WINDOW = 50  # the service's default RECALL_STATE_WINDOW
PREPARED = 2000
"""Batches made per process (200,000 events); a faster store cycles through them again."""


async def write_for(
    url: str, seconds: float, in_flight: int, users: int, seed: int, start_at: float
) -> int:
    """Events stored by ``in_flight`` concurrent writers in ``seconds`` from ``start_at``
    (unix time)."""
    store = open_store(url, write_timeout_s=30)
    await store.ping()
    rng = random.Random(seed)
    now = time.time()
    batches = [  # made before the clock starts: the bench measures the store, not this
        [
            Event(rng.randrange(users), rng.randrange(50_000), now - rng.random() * 3600)
            for _ in range(BATCH)
        ]
        for _ in range(PREPARED)
    ]
    stored = 0
    await asyncio.sleep(max(0.0, start_at - time.time()))
    deadline = time.monotonic() + seconds

    async def writer() -> None:
        nonlocal stored
        while time.monotonic() < deadline:
            await store.add(batches[(stored // BATCH) % PREPARED])
            stored += BATCH

    await asyncio.gather(*(writer() for _ in range(in_flight)))
    await store.close()
    return stored


async def fill(url: str, users: int, per_user: int) -> None:
    """``per_user`` events for each of ``users``, so the timed runs meet full windows (the
    steady state: every insert also trims) rather than an empty store."""
    store = open_store(url, write_timeout_s=60)
    rng = random.Random(99)
    now = time.time() - 7200
    order = [u for _ in range(per_user) for u in range(users)]
    for start in range(0, len(order), 1000):
        await store.add(
            [
                Event(u, rng.randrange(50_000), now + rng.random())
                for u in order[start : start + 1000]
            ]
        )
    await store.close()


def ingest(url: str, processes: int, in_flight: int, seconds: float, users: int) -> float:
    """Events/s of ``processes`` worker processes writing at once (run by this script).
    Each prepares its events, then waits for a shared start time, writes for ``seconds``."""
    start_at = time.time() + 3 + PREPARED / 1000  # time to prepare the events
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                url,
                str(seconds),
                str(in_flight),
                *(str(users), str(seed), str(start_at)),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for seed in range(processes)
    ]
    stored = 0
    for p in procs:
        out, _ = p.communicate(timeout=seconds + 120)
        if p.returncode != 0:
            raise RuntimeError(f"a writer process failed ({p.returncode})")
        stored += int(out)
    return stored / seconds


async def read_latency(url: str, users: int, calls: int) -> dict[str, float]:
    """p50/p99 (ms) of ``recent([user], after=-inf)``, one call at a time."""
    store = open_store(url, timeout_s=1.0)
    rng = random.Random(7)
    times = []
    found = 0
    for _ in range(calls):
        start = time.perf_counter()
        (items,) = await store.recent([rng.randrange(users)], after=float("-inf"))
        times.append(time.perf_counter() - start)
        found += len(items)
    await store.close()
    times.sort()
    return {
        "recent_p50_ms": round(times[len(times) // 2] * 1000, 3),
        "recent_p99_ms": round(times[int(len(times) * 0.99)] * 1000, 3),
        "recent_mean_items": round(found / calls, 1),
    }


def storage(backend: str, url: str, sqlite_file: Path) -> dict[str, Any]:
    """What the store holds after the runs: logged events, bytes per logged event and per
    user's recent window (Redis: ``MEMORY USAGE``; SQLite: the file with its WAL)."""
    if backend == "sqlite":
        import sqlite3

        with sqlite3.connect(sqlite_file) as conn:
            (events,) = conn.execute("SELECT count(*) FROM log").fetchone()
            (users,) = conn.execute("SELECT count(DISTINCT user) FROM recent").fetchone()
        size = sum(p.stat().st_size for p in sqlite_file.parent.glob(sqlite_file.name + "*"))
        return {"logged_events": events, "users": users, "file_mb": round(size / 2**20, 1)}
    with redis.Redis.from_url(url) as client:
        log = b"recall:{log:0}"
        events = sum(len(json.loads(fields[b"e"])) for _, fields in client.xrange(log, count=10**9))
        log_bytes = client.memory_usage(log, samples=0) or 0
        keys = list(client.scan_iter(b"recall:r:*", count=1000))
        sample = keys[:: max(1, len(keys) // 500)]
        per_user = sum(client.memory_usage(k) or 0 for k in sample) / max(1, len(sample))
        used = client.info("memory")["used_memory"]
    return {
        "logged_events": events,
        "users": len(keys),
        "log_bytes_per_event": round(log_bytes / max(1, events), 1),
        "recent_bytes_per_user": round(per_user),
        "used_memory_mb": round(used / 2**20, 1),
    }


def machine_extra() -> dict[str, Any]:
    """What the results add to bench/_machine.py's machine: the kernel and the stores'
    versions."""
    redis_version = server_version().split()
    try:
        import hiredis  # noqa: F401

        has_hiredis = True
    except ImportError:
        has_hiredis = False
    return {
        "kernel": platform.release(),
        "versions": {
            "sqlite": __import__("sqlite3").sqlite_version,
            "redis_server": next((w[2:] for w in redis_version if w.startswith("v=")), "?"),
            "redis_py": redis.__version__,
            "hiredis": has_hiredis,
        },
    }


@contextmanager
def compose_redis(directory: Path) -> Iterator[str]:
    """A ``redis-server`` with the compose file's persistence (AOF, fsync every second)
    until the block ends: its URL."""
    with redis_server(directory, appendonly=True, appendfsync="everysec") as server:
        yield server.url()


def http_main(args: argparse.Namespace) -> None:
    """``--http``: events/s through ``POST /v1/events`` per replica, SQLite and Redis."""
    args.workdir.mkdir(parents=True, exist_ok=True)
    spec = BenchBundle(n_items=10_000, n_users=args.users, kind="flat")
    bundle = ensure_bundle(args.workdir / "bench-bundles", spec)
    item_ids = [ITEM_ID_OFFSET + i for i in range(spec.n_items)]
    configs = [tuple(int(x) for x in c.split("x")) for c in args.http_configs.split(",")]
    report: dict[str, Any] = {
        **header("ingest_http", **machine_extra()),
        "path": "POST /v1/events through recall serve on 127.0.0.1, one Python asyncio client "
        "on the same machine",
        "batch": BATCH,
        "users": args.users,
        "seconds": args.seconds,
        "repeats": args.repeats,
        "results": [],
    }
    with (
        tempfile.TemporaryDirectory(dir=args.workdir, prefix="ingest-http-") as tmp,
        compose_redis(Path(tmp) / "redis") as redis_url,
    ):
        for backend in ("sqlite", "redis"):
            for workers, concurrency in configs:
                if backend == "redis":
                    url = redis_url
                    with redis.Redis.from_url(url) as client:
                        client.flushdb()
                    load_users(url, bundle)  # Redis mode: a replica reads its users there
                else:
                    url = sqlite_url(Path(tmp) / f"events-{workers}x{concurrency}.sqlite")
                row = {"backend": backend} | http_ingest(
                    bundle.parent,
                    url,
                    workers=workers,
                    seconds=args.seconds,
                    concurrency=concurrency,
                    users=args.users,
                    item_ids=item_ids,
                    repeats=args.repeats,
                )
                report["results"].append(row)
                logger.info("%s", json.dumps(row))
    lines = ["| replica | SQLite events/s | Redis events/s |", "| --- | --- | --- |"]
    cells: dict[str, dict[str, str]] = {}
    for r in report["results"]:
        line = f"{r['workers']} worker(s), {r['concurrency']} batches in flight"
        cells.setdefault(line, {})[r["backend"]] = (
            f"{r['events_per_s']:,.0f} (p50 {r['batch_p50_ms']} ms)"
        )
    lines += [f"| {k} | {v.get('sqlite', '-')} | {v.get('redis', '-')} |" for k, v in cells.items()]
    finish(args.out or REPO / "bench/results/ingest_http.json", report, "\n".join(lines))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        url, seconds, in_flight, users, seed, start_at = sys.argv[2:8]
        stored = asyncio.run(
            write_for(url, float(seconds), int(in_flight), int(users), int(seed), float(start_at))
        )
        print(stored)
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0, help="per configuration")
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--configs", default="1x1,1x8,2x8", help="processes x in-flight, ...")
    p.add_argument("--repeats", type=int, default=3, help="runs per configuration (median)")
    p.add_argument("--workdir", type=Path, default=Path("runs"), help="SQLite/AOF files go here")
    p.add_argument("--redis-url", help="an existing Redis (its db is flushed first)")
    p.add_argument("--out", type=Path, help="default bench/results/ingest[_http].json")
    p.add_argument("--http", action="store_true", help="through POST /v1/events instead")
    p.add_argument(
        "--http-configs", default="1x16,2x16", help="--http: workers x batches in flight, ..."
    )
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.http:
        logging.getLogger("httpx").setLevel(logging.WARNING)
        http_main(args)
        return
    args.out = args.out or REPO / "bench/results/ingest.json"
    configs = [tuple(int(x) for x in c.split("x")) for c in args.configs.split(",")]
    report: dict[str, Any] = {
        **header("ingest", **machine_extra()),
        "batch": BATCH,
        "users": args.users,
        "seconds": args.seconds,
        "repeats": args.repeats,
        "results": [],
    }
    args.workdir.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(dir=args.workdir, prefix="ingest-") as tmp,
        ExitStack() as stack,
    ):
        redis_url = args.redis_url or stack.enter_context(compose_redis(Path(tmp) / "redis"))
        backends = {
            "sqlite": sqlite_url(Path(tmp) / "events.sqlite"),
            "redis": redis_url,
        }
        for name, url in backends.items():
            if name == "redis":
                with redis.Redis.from_url(url) as client:
                    client.flushdb()
            started = time.monotonic()
            asyncio.run(fill(url, args.users, WINDOW))
            logger.info(
                "%s: filled %d windows in %.0f s", name, args.users, time.monotonic() - started
            )
            for processes, in_flight in configs:
                rates = [
                    round(ingest(url, processes, in_flight, args.seconds, args.users))
                    for _ in range(args.repeats)
                ]
                row = {
                    "backend": name,
                    "processes": processes,
                    "in_flight": in_flight,
                    "events_per_s": statistics.median(rates),
                    "runs": rates,
                }
                report["results"].append(row)
                logger.info("%s", json.dumps(row))
            latency = asyncio.run(read_latency(url, args.users, 2000))
            latency |= storage(name, url, Path(tmp) / "events.sqlite")
            report["results"].append({"backend": name, **latency})
            logger.info("%s %s", name, json.dumps(latency))
    finish(args.out, report, format_table(report["results"]))


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table: one line per configuration, SQLite and Redis side by side."""
    cells: dict[str, dict[str, str]] = {}
    for r in rows:
        if "events_per_s" in r:
            line = f"{r['processes']} process(es) x {r['in_flight']} in flight, events/s"
            cells.setdefault(line, {})[r["backend"]] = f"{r['events_per_s']:,.0f}"
        else:
            line = "recent([user]) p50 / p99"
            cells.setdefault(line, {})[r["backend"]] = (
                f"{r['recent_p50_ms']} / {r['recent_p99_ms']} ms"
            )
    lines = ["| | SQLite | Redis |", "| --- | --- | --- |"]
    lines += [f"| {k} | {v.get('sqlite', '-')} | {v.get('redis', '-')} |" for k, v in cells.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
