"""What another Python thread in the same process does to a recall: the GIL, measured.

Over HTTP a recall's search thread shares its process with the event loop (and the other
search threads); in ``bench/service_bench.py``'s in-process rows it runs alone. This runs
``RecallCore.recall`` on one thread (the service bench's ``default`` load: a user of the
bundle, k = 100, ``exclude_seen``) for a few seconds in each of these settings, alternated
over ``--rounds`` rounds:

- ``alone``: nothing else runs;
- ``busy process``: another process keeps a core busy with Python (not this GIL);
- ``busy thread``: a thread of this process runs Python all the time (it always wants
  the GIL: the worst case, an event loop that never waits);
- ``loop-like thread``: a thread of this process runs Python for ``--burst-us`` and then
  sleeps as long (half the GIL's time wanted: an event loop under load).

It reports the recall's CPU (``time.thread_time``) and its rate. The recall releases the
GIL in FAISS's search, in SQLite and in numpy's larger loops; each time, the other thread
may take it, and the recall waits to get it back (up to ``sys.getswitchinterval()``).

Then the same recall inside the service: the app driven through its ASGI interface
(``bench/asgi_cpu.py``'s driver, 2 requests in flight, the bundle's SQLite state file
beside it with ``--state``) with 1, 2 and 4 search threads, ``RecallCore.recall`` timed
where it runs (its CPU in the search thread), beside the process CPU per request.

    .venv/bin/python -m bench.gil_contention --root /tmp/recall-bench/100000-hnsw-v2 \\
        --out bench/results/gil_contention_100k.json

(the bundle roots are the ones ``bench/service_bench.py`` caches under /tmp/recall-bench).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from bench._results import finish, header
from recall.service.core import RecallCore
from recall.service.fresh import UserState
from recall.service.recaller import RecallQuery, ServingBundle

logger = logging.getLogger("bench.gil_contention")

BUSY_PROCESS = "while True: pass"


@contextmanager
def busy_process() -> Iterator[None]:
    """Another process spinning in Python (another GIL, the other core)."""
    process = subprocess.Popen([sys.executable, "-c", BUSY_PROCESS])
    try:
        time.sleep(0.2)
        yield
    finally:
        process.kill()
        process.wait()


@contextmanager
def python_thread(burst_s: float, pause_s: float) -> Iterator[None]:
    """A thread of this process running Python for ``burst_s``, then sleeping ``pause_s``
    (0: never), until the block ends."""
    stop = threading.Event()

    def spin() -> None:
        x = 0
        while not stop.is_set():
            until = time.perf_counter() + burst_s
            while time.perf_counter() < until:
                x += 1
            if pause_s:
                time.sleep(pause_s)

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    try:
        time.sleep(0.05)
        yield
    finally:
        stop.set()
        thread.join()


def recall_loop(
    recall: Callable[[int], None], users: np.ndarray, seconds: float
) -> dict[str, float]:
    """``recall(user)`` over ``users`` in turn for ``seconds``: CPU µs per recall, recalls/s."""
    n = 0
    cpu0, t0 = time.thread_time(), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        recall(int(users[n % len(users)]))
        n += 1
    wall = time.perf_counter() - t0
    return {"cpu_us": round(1e6 * (time.thread_time() - cpu0) / n, 1), "qps": round(n / wall, 1)}


def in_app(args: argparse.Namespace, users: list[int]) -> dict[str, dict[str, float]]:
    """Per search-thread count: CPU µs per request of the process and of
    ``RecallCore.recall`` in the search thread that ran it, through the app."""
    import asyncio

    import uvloop

    from bench.asgi_cpu import drive
    from recall.service.app import create_app
    from recall.service.settings import Settings
    from recall.service.state import sqlite_url

    spent = [0.0, 0]
    recall = RecallCore.recall

    def timed(self: RecallCore, *a: Any, **kw: Any) -> Any:
        cpu = time.thread_time()
        try:
            return recall(self, *a, **kw)
        finally:
            spent[0] += time.thread_time() - cpu
            spent[1] += 1

    bodies = [("POST", "/v1/recall", b'{"user_id":%d,"k":100}' % u) for u in users]
    out: dict[str, list[dict[str, float]]] = {}
    RecallCore.recall = timed  # type: ignore[method-assign]
    try:
        for i in range(args.rounds):
            for threads in (1, 2, 4) if i % 2 == 0 else (4, 2, 1):
                settings = Settings(  # type: ignore[call-arg]
                    root=args.root,
                    state_url=sqlite_url(args.state),
                    reload_interval_s=0,
                    search_threads=threads,
                )
                app = create_app(settings)

                async def run(app: Any = app) -> float:
                    async with app.router.lifespan_context(app):
                        await drive(app, bodies[: len(bodies) // 10], 2)  # warm
                        spent[:] = [0.0, 0]
                        process, _ = await drive(app, bodies, 2)
                        return process

                with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                    process = runner.run(run())
                row = {
                    "process_us": round(1e6 * process, 1),
                    "recall_us": round(1e6 * spent[0] / max(spent[1], 1), 1),
                }
                out.setdefault(f"{threads} search threads", []).append(row)
                logger.info("in the app, %d search threads: %s", threads, json.dumps(row))
    finally:
        RecallCore.recall = recall  # type: ignore[method-assign]
    return {
        name: {key: statistics.median(r[key] for r in rs) for key in rs[0]}
        for name, rs in out.items()
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, required=True, help="a bundle root (with CURRENT)")
    p.add_argument("--users", type=int, default=48_000, help="users 0..N-1")
    p.add_argument("--seconds", type=float, default=3.0, help="each setting, each round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--burst-us", type=float, default=100.0)
    p.add_argument("--state", type=Path, help="the SQLite state file: also measure in the app")
    p.add_argument("--requests", type=int, default=3000, help="in the app, each run")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    head = header("gil_contention")

    bundle = ServingBundle.load(args.root / (args.root / "CURRENT").read_text().strip())
    faiss.omp_set_num_threads(1)
    core = RecallCore(1000)
    ids = bundle.user_ids.ids
    no_state = UserState.empty(1)

    def recall(row: int) -> None:
        core.recall(bundle, RecallQuery(user_id=int(ids[row]), k=100), no_state)

    users = np.random.default_rng(0).integers(0, args.users, 20_000)
    recall_loop(recall, users, 1.0)  # warm the pages these users touch
    burst = args.burst_us / 1e6
    settings: dict[str, Callable[[], Any]] = {
        "alone": lambda: _nothing(),
        "busy process": busy_process,
        "busy thread": lambda: python_thread(burst, 0.0),
        "loop-like thread": lambda: python_thread(burst, burst),
    }
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in settings}
    for i in range(args.rounds):
        for name in list(settings) if i % 2 == 0 else list(reversed(settings)):
            with settings[name]():
                runs[name].append(recall_loop(recall, users, args.seconds))
            logger.info("%s: %s", name, json.dumps(runs[name][-1]))
    median = {
        name: {key: statistics.median(r[key] for r in rs) for key in ("cpu_us", "qps")}
        for name, rs in runs.items()
    }
    alone = median["alone"]["cpu_us"]
    lines = [
        f"{len(bundle.item_ids.ids):,} items, switch interval {sys.getswitchinterval() * 1e3:g} ms",
        "| beside the recall | recall CPU µs | vs alone | recalls/s |",
        "|---|---:|---:|---:|",
        *(
            f"| {name} | {m['cpu_us']:,.0f} | {m['cpu_us'] / alone:.2f} | {m['qps']:,.0f} |"
            for name, m in median.items()
        ),
    ]
    app_median = None
    if args.state is not None:
        app_median = in_app(args, users[: args.requests].tolist())
        lines += [
            "",
            "| in the app (ASGI, 2 in flight) | process CPU µs | recall CPU µs | vs alone |",
            "|---|---:|---:|---:|",
            *(
                f"| {name} | {m['process_us']:,.0f} | {m['recall_us']:,.0f} | "
                f"{m['recall_us'] / alone:.2f} |"
                for name, m in app_median.items()
            ),
        ]
    report = {
        **head,
        "settings": {k: str(v) for k, v in vars(args).items()},
        "n_items": len(bundle.item_ids.ids),
        "runs": runs,
        "median": median,
        "in_app": app_median,
    }
    finish(args.out, report, "\n".join(lines))
    return 0


@contextmanager
def _nothing() -> Iterator[None]:
    yield


if __name__ == "__main__":
    sys.exit(main())
