"""CPU per request of the app itself: ``POST /v1/recall`` through its ASGI interface in
process (no sockets, no uvicorn, no client), beside the in-process recall of the same users.

What a request costs beyond the search, without the noise of a wrk run on a shared machine:
the app (middleware, routing, the body, the route, the store read, the hand-offs, the JSON)
runs on a uvloop loop with ``--concurrency`` requests in flight, and its process CPU per
request (``time.process_time``: the loop and the search threads) is set against the CPU of
``RecallCore.recall`` for the same users on one thread (``time.thread_time``) and of
``GET /healthz`` through the same app. What uvicorn adds on top (httptools, the sockets)
is the HTTP floor of ``bench/service_bench.py``.

Beside them: the loop's function calls per recall (``loop_calls``, a count the machine's
load does not move) and the framework's floor in process, a bare Starlette and a bare
FastAPI route (``bench/_floor.py``) that read the body and answer a real answer's bytes.
``--profile FILE``: one run of this checkout with a cProfile of the loop's recalls, on CPU
time (a wall-clock profile charges the loop for its waits on the GIL).

With ``--base DIR`` (a source tree, e.g. ``git archive <commit> | tar -x -C DIR``) the same
measurement runs for that tree and for this checkout in fresh processes, alternated for
``--rounds`` rounds; the report gives each round and the medians.

    .venv/bin/python bench/asgi_cpu.py --root /tmp/recall-bench/100000-hnsw-v2 \\
        --state /tmp/recall-bench/100000-hnsw-state/events.sqlite --users 48000 \\
        --base /tmp/base --out bench/results/asgi_cpu_100k.json
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import logging
import os
import pstats
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

logger = logging.getLogger("bench.asgi_cpu")

Asgi = Callable[..., Coroutine[Any, Any, None]]


async def call(
    app: Asgi, method: str, path: str, body: bytes = b"", answer: list[bytes] | None = None
) -> int:
    """One request through ``app``'s ASGI interface; its status (the body's bytes appended
    to ``answer``)."""
    headers = [(b"host", b"bench"), (b"content-length", str(len(body)).encode())]
    if body:
        headers.append((b"content-type", b"application/json"))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }
    read = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal read
        if not read:
            read = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client never goes away
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif answer is not None:
            answer.append(message["body"])

    await app(scope, receive, send)
    return status


async def drive(
    app: Asgi, requests: list[tuple[str, str, bytes]], concurrency: int
) -> tuple[float, float]:
    """CPU seconds per request for ``requests``, ``concurrency`` at a time: of the process
    (the loop and the search threads), of the event loop's thread."""
    queue = list(reversed(requests))

    async def client() -> None:
        while queue:
            method, path, body = queue.pop()
            status = await call(app, method, path, body)
            if status != 200:
                raise RuntimeError(f"{method} {path} {body!r}: {status}")

    cpu, loop = time.process_time(), time.thread_time()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    n = len(requests)
    return (time.process_time() - cpu) / n, (time.thread_time() - loop) / n


async def calls_per_request(
    app: Asgi, requests: list[tuple[str, str, bytes]], concurrency: int
) -> float:
    """Python and C function calls (a coroutine's resumption counts as one) the event
    loop's thread makes per request: what its CPU figure would be without the machine's
    noise."""
    calls = 0

    def count(frame: object, event: str, arg: object) -> None:
        nonlocal calls
        if event in ("call", "c_call"):
            calls += 1

    sys.setprofile(count)  # this thread only: the loop's
    try:
        await drive(app, requests, concurrency)
    finally:
        sys.setprofile(None)
    return calls / len(requests)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """One process's figures (µs of CPU per request) for the code ``recall`` imports."""
    import faiss
    import numpy as np
    import uvloop
    from _floor import floor_app

    from recall.service.app import create_app
    from recall.service.deps import app_state_of
    from recall.service.fresh import UserState
    from recall.service.recaller import RecallQuery
    from recall.service.settings import Settings
    from recall.service.state import sqlite_url

    faiss.omp_set_num_threads(1)
    settings = Settings(root=args.root, state_url=sqlite_url(args.state), reload_interval_s=0)  # type: ignore[call-arg]
    app = create_app(settings)
    users = np.random.default_rng(args.seed).integers(0, args.users, args.requests).tolist()
    bodies = [b'{"user_id":%d,"k":%d%s}' % (u, args.k, args.extra.encode()) for u in users]
    recalls = [("POST", "/v1/recall", body) for body in bodies]
    health = [("GET", "/healthz", b"")] * args.requests

    async def run() -> dict[str, float]:
        async with app.router.lifespan_context(app):
            await drive(app, recalls[: args.requests // 10], args.concurrency)  # warm
            if args.profile is not None:  # the loop's thread only (a profiler is per thread)
                with cProfile.Profile(time.thread_time) as profile:  # CPU, not GIL waits
                    await drive(app, recalls, args.concurrency)
                profile.dump_stats(args.profile)
            recall, recall_loop = await drive(app, recalls, args.concurrency)
            healthz, _ = await drive(app, health, args.concurrency)
            calls = await calls_per_request(app, recalls[:500], args.concurrency)
            answer: list[bytes] = []
            await call(app, *recalls[0], answer=answer)
        # the framework alone: a bare route that reads the body and answers a real answer
        floor = {
            kind: (await drive(floor_app(kind, b"".join(answer)), recalls, args.concurrency))[1]
            for kind in ("starlette", "fastapi")
        }
        return {
            "recall_us": 1e6 * recall,
            "loop_us": 1e6 * recall_loop,
            "loop_calls": calls,
            "healthz_us": 1e6 * healthz,
            "floor_starlette_us": 1e6 * floor["starlette"],
            "floor_fastapi_us": 1e6 * floor["fastapi"],
        }

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        out = runner.run(run())
        state = app_state_of(app)
        bundle = state.holder.require()
        query_filter = json.loads("{" + args.extra.lstrip(",") + "}").get("filter")
        from recall.service.schemas import conditions

        cpu = time.thread_time()
        for u in users:
            query = RecallQuery(user_id=u, k=args.k, filter=conditions(query_filter))
            state.core.recall(bundle, query, UserState.empty(1))
        out["core_us"] = 1e6 * (time.thread_time() - cpu) / len(users)
    out["beyond_us"] = out["recall_us"] - out["core_us"]
    out["load_average"] = os.getloadavg()[0]
    return {k: round(v, 1) for k, v in out.items()}


def one_run(args: argparse.Namespace, base: Path | None) -> dict[str, Any]:
    """:func:`measure` in a fresh process, for ``base`` (None: this checkout)."""
    env = dict(os.environ)
    if base is not None:  # `recall` resolves to base first (run from outside the checkout)
        env["PYTHONPATH"] = str(base.absolute())
    argv = [sys.executable, str(Path(__file__).absolute()), "--worker", *args.passthrough]
    done = subprocess.run(argv, env=env, cwd="/", capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, required=True, help="a bundle root (v2, HNSW)")
    p.add_argument("--state", type=Path, required=True, help="its SQLite state file")
    p.add_argument("--users", type=int, required=True, help="users 0..N-1 (without events)")
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--extra", default="", help="more of the body, e.g. ',\"filter\":{...}'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--base", type=Path, help="another source tree, alternated with this one")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path)
    p.add_argument(
        "--profile",
        type=Path,
        help="one run of this checkout, cProfile of its event loop's recalls to this file",
    )
    args = p.parse_args(argv)
    args.root, args.state = args.root.absolute(), args.state.absolute()
    keep = ("root", "state", "users", "requests", "concurrency", "k", "extra", "seed")
    args.passthrough = [f"--{name}={getattr(args, name)}" for name in keep]
    if args.profile is not None:
        args.profile = args.profile.absolute()
        args.passthrough.append(f"--profile={args.profile}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        logging.basicConfig(level=logging.WARNING)
        sys.stdout.write(json.dumps(measure(args)) + "\n")
        return 0
    # here, not at the top: a worker must find `recall` on its PYTHONPATH (--base), not here
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench._results import finish, header

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.profile is not None:  # one run of this checkout, and where its loop's time went
        logger.info("new: %s", json.dumps(one_run(args, None)))
        pstats.Stats(str(args.profile), stream=sys.stdout).sort_stats("tottime").print_stats(40)
        return 0
    report = header("asgi_cpu")
    versions: dict[str, Path | None] = {"new": None}
    if args.base is not None:
        versions = {"old": args.base, "new": None}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in versions}
    for i in range(args.rounds):
        for name in list(versions) if i % 2 == 0 else list(reversed(versions)):
            runs[name].append(one_run(args, versions[name]))
            logger.info("%s: %s", name, json.dumps(runs[name][-1]))
    # CPU time under other jobs' load only grows (caches, a descheduled GIL holder): the
    # least of the rounds is the closest to the cost, the median says how stable it was
    median = {
        name: {key: statistics.median(r[key] for r in rs) for key in rs[0]}
        for name, rs in runs.items()
    }
    least = {name: {key: min(r[key] for r in rs) for key in rs[0]} for name, rs in runs.items()}
    report |= {
        "settings": {k: str(v) for k, v in vars(args).items() if k != "passthrough"},
        "runs": runs,
        "median": median,
        "least": least,
    }
    finish(args.out, report, json.dumps({"median": median, "least": least}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
