"""What remembering a served list costs a search thread with SQLite, and how long it waits.

A recall by user id writes the list it served from the search thread that answered it
(:meth:`recall.service.state.sqlite.SQLiteStore.remember_in_thread`), before the answer
is sent. Here ``--workers`` processes (the workers of one replica) with ``--threads``
search threads each remember lists of random users into a store already holding
``--users`` users' lists, one write every ``--gap-ms`` per thread (the search between two
recalls), for ``--seconds``; with ``--events-every-ms``, one more process commits 10
events (fsynced, the write lock held through the fsync) that often. Reported per
version: writes/s, CPU µs per write (the thread's CPU time), wall p50/p99/max, the share
of writes that took over 1 ms, and the lists not remembered (StoreTimeout/Unavailable).

Versions: this checkout (``new``) and ``--base`` (another source tree, ``old``: ``git
archive <commit> | tar -x -C DIR``), alternated round by round, each round in fresh
processes on a fresh copy of the prefilled file, so both see the same machine::

    git archive 6005d1e | tar -x -C /tmp/served-base
    .venv/bin/python bench/served_write.py --base /tmp/served-base \\
        --out bench/results/served_write.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

# each process imports the `recall` its PYTHONPATH names: this checkout's or --base's
from recall.service.state.base import Event, ServedList, StoreLimits, StoreUnavailable
from recall.service.state.served import encode
from recall.service.state.sqlite import REMEMBER, SQLiteStore

logger = logging.getLogger("bench.served_write")

ITEMS = tuple(range(10**6, 10**6 + 100))  # 100 seven-digit ids, as at 1M items
LIMITS = StoreLimits(  # the service's defaults
    window=50, shown_ttl_s=86400, retention_s=86400, timeout_s=0.05, write_timeout_s=1.0
)


def prefill(path: Path, users: int) -> None:
    """A store file whose ``served`` table holds ``users`` lists (checkpointed)."""
    asyncio.run(_open_and_close(SQLiteStore(path, LIMITS)))
    now = time.time()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        conn.executemany(
            REMEMBER,
            ((u, now, encode(ServedList(u, "", "control", "b", ITEMS, now))) for u in range(users)),
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


async def _open_and_close(store: SQLiteStore) -> None:
    await store.ping()  # creates the file and its tables
    await store.close()


def worker(args: argparse.Namespace) -> None:
    """One process: ``--threads`` threads remembering lists; prints its JSON report."""
    store = SQLiteStore(args.path, LIMITS)
    stop = args.start_at + args.seconds
    results: list[dict[str, Any]] = []

    def run(seed: int) -> None:
        rng = random.Random(seed)
        wall, cpu, failed = [], [], 0
        time.sleep(max(0.0, args.start_at - time.time()))
        while time.time() < stop:
            user = rng.randrange(args.users)
            served = ServedList(user, "", "control", "b", ITEMS, time.time())
            c0, t0 = time.thread_time(), time.perf_counter()
            try:
                store.remember_in_thread([served])
            except StoreUnavailable:
                failed += 1
            wall.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
            time.sleep(args.gap_ms / 1000)
        results.append({"wall": wall, "cpu": cpu, "failed": failed})

    threads = [
        threading.Thread(target=run, args=(args.seed * 100 + j,)) for j in range(args.threads)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    asyncio.run(store.close())
    sys.stdout.write(json.dumps(results) + "\n")


def events_writer(args: argparse.Namespace) -> None:
    """One process committing 10 events every ``--events-every-ms`` until the round ends."""

    async def run() -> None:
        store = SQLiteStore(args.path, LIMITS)
        rng = random.Random(args.seed)
        await asyncio.sleep(max(0.0, args.start_at - time.time()))
        while time.time() < args.start_at + args.seconds:
            now = time.time()
            events = [Event(rng.randrange(args.users), 1, now) for _ in range(10)]
            await store.add(events)
            await asyncio.sleep(args.events_every_ms / 1000)
        await store.close()

    asyncio.run(run())


def one_round(
    version: str, tree: Path | None, prefilled: Path, args: argparse.Namespace, seed: int
) -> dict[str, Any]:
    """One round of ``version`` (the code under ``tree``; None: this checkout)."""
    with tempfile.TemporaryDirectory(prefix="served-write-") as tmp:
        path = Path(tmp) / "events.sqlite"
        shutil.copy(prefilled, path)
        env = dict(os.environ)
        if tree is not None:  # `recall` resolves to the other tree first on the path
            env["PYTHONPATH"] = str(tree.absolute())
        start_at = time.time() + 2.0  # the processes' imports done
        common = [
            sys.executable,
            str(Path(__file__).resolve()),
            *("--path", str(path), "--users", str(args.users), "--seconds", str(args.seconds)),
            *("--start-at", str(start_at), "--gap-ms", str(args.gap_ms)),
            *("--threads", str(args.threads)),
        ]
        procs = [
            subprocess.Popen(
                [*common, "--role", "worker", "--seed", str(seed * 10 + j)],
                env=env,
                cwd="/",  # the checkout must not shadow the other tree on sys.path
                stdout=subprocess.PIPE,
            )
            for j in range(args.workers)
        ]
        events = None
        if args.events_every_ms:
            events = subprocess.Popen(
                [*common, "--role", "events", "--events-every-ms", str(args.events_every_ms)],
                env=env,
                cwd="/",
            )
        threads = [json.loads(p.communicate()[0]) for p in procs]
        if events is not None:
            events.wait()
    wall = sorted(w for proc in threads for t in proc for w in t["wall"])
    cpu = [c for proc in threads for t in proc for c in t["cpu"]]
    n = len(wall)
    return {
        "version": version,
        "writes_per_s": round(n / args.seconds, 1),
        "cpu_us": round(statistics.fmean(cpu) * 1e6, 1),
        "p50_ms": round(wall[n // 2] * 1e3, 3),
        "p99_ms": round(wall[int(n * 0.99)] * 1e3, 3),
        "max_ms": round(wall[-1] * 1e3, 2),
        "over_1ms": round(sum(w > 1e-3 for w in wall) / n, 4),
        "failed": sum(t["failed"] for proc in threads for t in proc),
        "writes": n,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", type=Path, help="the other source tree (old); none: new only")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="search threads per worker")
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--seconds", type=float, default=5.0, help="each round")
    p.add_argument("--gap-ms", type=float, default=1.0, help="pause between a thread's writes")
    p.add_argument("--events-every-ms", type=float, default=0.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path)
    p.add_argument("--role", choices=["main", "worker", "events"], default="main")
    p.add_argument("--path", type=Path)
    p.add_argument("--start-at", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.role == "worker":
        worker(args)
        return 0
    if args.role == "events":
        events_writer(args)
        return 0
    # here, not at the top: a worker must find `recall` on its PYTHONPATH (--base), not here
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench._results import finish, header

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    report = header("served_write")
    versions: list[tuple[str, Path | None]] = [("new", None)]
    if args.base is not None:
        versions.insert(0, ("old", args.base))
    rounds = []
    with tempfile.TemporaryDirectory(prefix="served-prefill-") as tmp:
        prefilled = Path(tmp) / "events.sqlite"
        prefill(prefilled, args.users)
        for j in range(args.rounds):
            for version, tree in versions:
                rounds.append(one_round(version, tree, prefilled, args, j))
                logger.info("%s", json.dumps(rounds[-1]))
    report |= {
        "settings": {k: v for k, v in vars(args).items() if k not in ("role", "path", "out")},
        "rounds": rounds,
    }
    report["settings"]["base"] = str(args.base)
    lines = [
        "| version | writes/s | CPU µs/write | p50 ms | p99 ms | max ms | > 1 ms | lost |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rounds:
        lines.append(
            f"| {r['version']} | {r['writes_per_s']:,.0f} | {r['cpu_us']:.0f} | {r['p50_ms']:.3f}"
            f" | {r['p99_ms']:.3f} | {r['max_ms']:.1f} | {r['over_1ms']:.2%}"
            f" | {r['failed']} of {r['writes']:,} |"
        )
    finish(args.out, report, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
