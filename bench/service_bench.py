"""Service benchmark: recall over HTTP (``recall serve`` + wrk) vs the same recalls in process.

For each catalog size (default 100k and 1M items, d = 64 + bias), on a bundle of structured
vectors with an HNSW index tuned by ``recall.index.build`` to recall@100 >= 0.95 (cached under
``--cache``, see ``bench/_bundles.py``; made schema_version 2 by ``serving_v2``: training
windows, a numeric item attribute ``decile``), and three loads, each k = 100, the user's
seen items excluded (the HTTP default):

- ``default``: a random known user without events;
- ``events``: a random one of ``--fresh-users`` users with 10 events after the bundle's
  training data in the SQLite state store (window + events through the tower);
- ``filter``: a ``default`` user with ``{"decile": {"lt": 1}}``, 10% of the catalog.

1. In process: ``RecallCore.recall`` (the production path the route runs in a search
   thread, minus the store read and the JSON) on 1 and 2 threads, each with one OpenMP
   thread (the service's setting), the user's stored events handed in for ``events``.
2. Over HTTP: ``recall serve`` (a real subprocess, uvloop + httptools, the SQLite store)
   with 1 and 2 workers; ``wrk`` POSTing ``/v1/recall`` at saturation (``--connections``
   per worker): requests/s, the ratio to in process, server CPU per request from
   ``/proc`` and what it costs beyond the in-process recall, the answers the server
   counted ``fresh: false`` (``recall_unfresh_answers_total``); on one worker, p50/p99
   at about half the rate it held (few connections with a think time: wrk has no
   ``-R``), and GET /healthz (the HTTP floor).
   The floor of ``POST /v1/recall`` (one worker): a bare Starlette and a bare FastAPI app
   (``bench/_floor.py``) answering a real answer's bytes without any work.
3. ``POST /v1/items/vectors`` with 1,000 and 10,000 ids, JSON vs ``Accept:
   application/x-npy``: client time including decode, bytes.
4. With ``--micro-batch``: one worker, ``POST /v1/recall`` coalesced into one search per
   batch (``bench/_batcher.py``) vs not, alternated rounds (1M items by default).

The machine has 2 cores shared with wrk (and other jobs): read ratios measured side by
side, not absolute numbers. Writes a JSON report (``--out``) and prints Markdown tables.

    .venv/bin/python bench/service_bench.py --out bench/results/service_bench.json   # ~10 min
    .venv/bin/python bench/service_bench.py --sizes 100000 --seconds 5   # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import fastapi
import httpx
import numpy as np
import orjson
import uvicorn

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO))

from bench._bundles import (  # noqa: E402
    FILTER_ATTRIBUTE,
    TRAINED_UNTIL,
    BenchBundle,
    ensure_bundle,
    serving_v2,
    summary,
)
from bench._results import finish, header, write_json  # noqa: E402
from bench._server import Server, serve  # noqa: E402
from bench._wrk import WrkResult, run_wrk  # noqa: E402
from recall.index import bundle as b  # noqa: E402
from recall.index.ids import ExternalId  # noqa: E402
from recall.service.core import RecallCore  # noqa: E402
from recall.service.fresh import UserState  # noqa: E402
from recall.service.recaller import RecallQuery, ServingBundle  # noqa: E402
from recall.service.state import Event, ReadsInThread, open_store, sqlite_url  # noqa: E402

logger = logging.getLogger("bench.service")

K = 100
MAX_K = 1000
NPY = "application/x-npy"
EVENTS_PER_USER = 10
FILTER = {FILTER_ATTRIBUTE: {"lt": 1}}  # 10% of the catalog
LOADS = ("default", "events", "filter")


# --------------------------------------------------------------------------- in process


def _timed_loop(fn: Any, items: np.ndarray, seconds: float) -> tuple[int, float, list[float]]:
    """Call ``fn(item)`` over ``items`` (cycling) for about ``seconds``: (calls, wall s,
    per-call latencies s)."""
    lat: list[float] = []
    n = 0
    start = time.perf_counter()
    end = start + seconds
    now = start
    while now < end:
        t0 = time.perf_counter()
        fn(items[n % items.size])
        now = time.perf_counter()
        lat.append(now - t0)
        n += 1
    return n, now - start, lat


def _stats(n: int, wall: float, lat: list[float]) -> dict[str, float]:
    ms = np.asarray(lat) * 1e3
    return {
        "queries": n,
        "qps": round(n / wall, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
    }


@dataclass(frozen=True)
class Load:
    """One kind of request: users ``first_user .. first_user + n_users - 1``, JSON fields
    ``extra`` added to ``{"user_id", "k"}``."""

    name: str
    first_user: int
    n_users: int
    extra: str = ""

    def wrk(self) -> dict[str, Any]:
        return {"n_users": self.n_users, "first_user": self.first_user, "extra": self.extra}


def loads_of(n_users: int, fresh_users: int) -> dict[str, Load]:
    """The benchmark's loads: the last ``fresh_users`` users have events, the others none."""
    stale = n_users - fresh_users
    filter_json = orjson.dumps(FILTER).decode()
    return {
        "default": Load("default", 0, stale),
        "events": Load("events", stale, fresh_users),
        "filter": Load("filter", 0, stale, f',"filter":{filter_json}'),
    }


def add_events(state_url: str, bundle: ServingBundle, load: Load) -> dict[ExternalId, Any]:
    """``EVENTS_PER_USER`` events after the bundle's training data for each user of
    ``load``, written to the store; returns each user's events as the store gives them."""
    users = [int(u) for u in bundle.user_ids.ids[load.first_user : load.first_user + load.n_users]]
    rng = np.random.default_rng(3)
    items = bundle.item_ids.ids[rng.integers(len(bundle.item_ids), size=(len(users), 10))]

    async def write() -> Any:
        store = open_store(state_url, timeout_s=10, write_timeout_s=30)
        try:
            for start in range(0, len(users), 500):
                await store.add(
                    [
                        Event(u, int(items[j, e]), TRAINED_UNTIL + 1 + e)
                        for j, u in enumerate(users[start : start + 500], start)
                        for e in range(EVENTS_PER_USER)
                    ]
                )
            return await store.recent(users, TRAINED_UNTIL)
        finally:
            await store.close()

    return dict(zip(users, asyncio.run(write()), strict=True))


def _one_and_two_threads(fn: Any, users: np.ndarray, seconds: float) -> dict[str, Any]:
    """q/s of ``fn(user row)`` on one thread, then on two (each half of ``users``)."""
    _timed_loop(fn, users, min(1.0, seconds / 4))  # warm the pages these users touch
    cpu0 = time.thread_time()
    n, wall, lat = _timed_loop(fn, users, seconds)
    # CPU, not wall, per recall: what the server's CPU per request is compared with (a
    # shared machine's other jobs stretch the wall time, not the CPU time)
    one = {**_stats(n, wall, lat), "cpu_ms": round(1e3 * (time.thread_time() - cpu0) / n, 3)}
    results: list[tuple[int, float, list[float]]] = []

    def run(part: np.ndarray) -> None:
        faiss.omp_set_num_threads(1)  # per thread (libgomp), as the search threads do
        results.append(_timed_loop(fn, part, seconds))

    threads = [threading.Thread(target=run, args=(h,)) for h in np.array_split(users, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = sum(r[0] for r in results)
    wall = max(r[1] for r in results)
    return {"recall_1t": one, "recall_2t": _stats(total, wall, [x for r in results for x in r[2]])}


def store_read_us(state_url: str, loads: dict[str, Load], reads: int = 5000) -> dict[str, float]:
    """CPU microseconds of the read a recall by user_id makes in its search thread
    (``SQLiteStore.read_in_thread`` of one user, events after ``TRAINED_UNTIL``), for a
    user without events and for one with ``EVENTS_PER_USER``."""
    store = open_store(state_url)
    assert isinstance(store, ReadsInThread)
    out = {}
    for name in ("default", "events"):
        user = loads[name].first_user
        store.read_in_thread([user], TRAINED_UNTIL, None)  # the connection, opened once
        cpu0 = time.thread_time()
        for _ in range(reads):
            store.read_in_thread([user], TRAINED_UNTIL, None)
        out[name] = round(1e6 * (time.thread_time() - cpu0) / reads, 1)
    asyncio.run(store.close())
    return out


def in_process(
    bundle: ServingBundle,
    loads: dict[str, Load],
    events: dict[ExternalId, Any],
    seconds: float,
) -> dict[str, Any]:
    """q/s of ``RecallCore.recall`` for each load on one thread and on two, the same users
    the HTTP runs ask for (seeded), the ``events`` users' events handed in."""
    faiss.omp_set_num_threads(1)
    core = RecallCore(MAX_K)
    ids = bundle.user_ids.ids
    no_state = UserState.empty(1)
    out: dict[str, Any] = {}
    for name, load in loads.items():
        query = {"k": K, "filter": FILTER if name == "filter" else None}

        def recall(row: np.int64, query: dict[str, Any] = query) -> None:
            user_id = int(ids[row])
            state = UserState([events[user_id]], [[]], True) if user_id in events else no_state
            core.recall(bundle, RecallQuery(user_id=user_id, **query), state)

        users = load.first_user + np.random.default_rng(0).integers(0, load.n_users, 20_000)
        out[name] = _one_and_two_threads(recall, users, seconds)
        logger.info("in process, %s: %s", name, json.dumps(out[name]))
    return out


# --------------------------------------------------------------------------- over HTTP


def _load(server: Server, seconds: float, connections: int, **kw: Any) -> WrkResult:
    """wrk against the server, with the server's CPU time per request recorded."""
    cpu0 = server.cpu_seconds()
    result = run_wrk(server.url, seconds=seconds, connections=connections, **kw)
    result.server_cpu_s = server.cpu_seconds() - cpu0
    if result.failed:
        logger.warning("%d failed requests: %s", result.failed, result.errors)
    return result


def _result(r: WrkResult) -> dict[str, Any]:
    return r.as_dict()


def _warm(server: Server, n_users: int, **kw: Any) -> None:
    """Short loads until one has no failed request (every worker ready and warm)."""
    for _ in range(10):
        r = run_wrk(server.url, n_users=n_users, seconds=2, connections=4, **kw)
        if r.failed == 0 and r.requests > 0:
            return
        logger.info("warm-up: %d failed, again", r.failed)
    raise RuntimeError("the server keeps failing requests during warm-up")


def unfresh_answers(server: Server) -> float:
    """``recall_unfresh_answers_total`` over its reasons, from the server's /metrics."""
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("recall_unfresh_answers_total{")
    )


def http_runs(
    root: Path, loads: dict[str, Load], args: argparse.Namespace, env: dict[str, str]
) -> dict[str, Any]:
    """Per worker count and load: saturation, and on one worker a moderate rate; with each
    run the answers counted fresh: false. One worker also serves GET /healthz."""
    out: dict[str, Any] = {}
    for workers in args.workers:
        conns = args.connections * workers
        with serve(root, workers, env) as server:
            for load in loads.values():
                _warm(server, **load.wrk())
                before = unfresh_answers(server)
                sat = _load(server, args.seconds, conns, **load.wrk())
                run = {"connections": conns, **_result(sat)}
                if workers == 1:
                    run["moderate"] = _moderate(server, load, sat, args)
                run["unfresh_answers"] = unfresh_answers(server) - before
                out.setdefault(load.name, {})[f"{workers}w"] = run
                logger.info("%d worker(s), %s: %s", workers, load.name, json.dumps(run))
            if workers == 1:
                floor = _load(server, args.seconds / 2, conns, n_users=1, get_path="/healthz")
                out["healthz_1w"] = {"connections": conns, **_result(floor)}
                logger.info("GET /healthz: %s", json.dumps(out["healthz_1w"]))
                answer = httpx.post(f"{server.url}/v1/recall", json={"user_id": 0}, timeout=30)
        if workers == 1:
            out["floor_1w"] = http_floor(answer.content, loads["default"], args)
    return out


def http_floor(answer: bytes, load: Load, args: argparse.Namespace) -> dict[str, Any]:
    """``POST /v1/recall`` on a bare Starlette and a bare FastAPI app (``bench/_floor.py``)
    answering ``answer`` without any work: what the framework alone costs, one worker."""
    out: dict[str, Any] = {}
    with tempfile.NamedTemporaryFile(suffix=".json") as body:
        Path(body.name).write_bytes(answer)
        for kind in ("starlette", "fastapi"):
            env = {"BENCH_FLOOR_KIND": kind, "BENCH_FLOOR_BODY": body.name}
            with serve(Path("/nonexistent"), 1, env, app_factory="_floor:create_app") as server:
                _warm(server, **load.wrk())
                r = _load(server, args.seconds / 2, args.connections, **load.wrk())
            out[kind] = {"connections": args.connections, **_result(r)}
            logger.info("floor, %s: %s", kind, json.dumps(out[kind]))
    return out


def micro_batch_ab(root: Path, n_users: int, args: argparse.Namespace) -> dict[str, Any]:
    """1 worker, the service app with POST /v1/recall batched (bench/_batcher.py) or not,
    both started the same way, alternated for ``args.ab_rounds`` rounds; median of each.
    Loads: the default request (seen items excluded) and ``exclude_seen: false``."""
    runs: dict[str, dict[str, list[WrkResult]]] = {}
    for _ in range(args.ab_rounds):
        for load, extra in (("seen", ""), ("no-seen", ',"exclude_seen":false')):
            for flag in ("0", "1"):
                variant = "batch_on" if flag == "1" else "batch_off"
                env = {"BENCH_MICRO_BATCH": flag}
                with serve(root, 1, env, app_factory="_batcher:create_app") as server:
                    _warm(server, n_users)
                    r = _load(server, args.seconds, args.connections, n_users=n_users, extra=extra)
                runs.setdefault(variant, {}).setdefault(load, []).append(r)
    out: dict[str, Any] = {}
    for variant, loads in runs.items():
        out[variant] = {}
        for load, results in loads.items():
            mid = sorted(results, key=lambda r: r.rps)[len(results) // 2]  # median by rps
            out[variant][load] = {**_result(mid), "rps_all": [round(r.rps, 1) for r in results]}
    return out


def _moderate(server: Server, load: Load, sat: WrkResult, args: argparse.Namespace) -> Any:
    """About ``args.moderate_share`` of the saturated rate on few connections: each
    connection waits ``c / target - service time`` after each response."""
    c = args.moderate_connections
    target = max(1.0, args.moderate_share * sat.rps)
    service_ms = 1e3 / max(sat.rps, 1.0)
    delay = max(0.0, 1e3 * c / target - service_ms)
    r = _load(server, args.seconds, c, delay_ms=round(delay, 1), **load.wrk())
    return {"connections": c, "target_rps": round(target, 1), "delay_ms": round(delay, 1)} | (
        _result(r)
    )


# --------------------------------------------------------------------------- vector fetch


def vector_fetch(server: Server, item_ids: np.ndarray, sizes: list[int], repeats: int) -> Any:
    """Client time (request + decode to a float32 array) of POST /v1/items/vectors."""
    rng = np.random.default_rng(1)
    rows: list[dict[str, Any]] = []
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for n in sizes:
            ids = rng.choice(item_ids, size=n, replace=False).tolist()
            payload = orjson.dumps({"ids": ids})
            headers = {"Content-Type": "application/json"}
            timings: dict[str, dict[str, Any]] = {}
            for fmt in ("json", "npy"):
                h = {**headers, "Accept": NPY} if fmt == "npy" else headers
                times: list[float] = []
                size = 0
                for i in range(repeats + 1):
                    t0 = time.perf_counter()
                    resp = client.post("/v1/items/vectors", content=payload, headers=h)
                    resp.raise_for_status()
                    if fmt == "npy":
                        arr = np.load(io.BytesIO(resp.content), allow_pickle=False)
                    else:
                        arr = np.asarray(orjson.loads(resp.content)["vectors"], dtype=np.float32)
                    elapsed = time.perf_counter() - t0
                    if arr.shape[0] != n:
                        raise RuntimeError(f"{fmt}: got {arr.shape} for {n} ids")
                    size = len(resp.content)
                    if i:  # the first one warms up
                        times.append(elapsed)
                timings[fmt] = {
                    "ms_median": round(1e3 * statistics.median(times), 2),
                    "ms_min": round(1e3 * min(times), 2),
                    "bytes": size,
                }
            rows.append(
                {
                    "ids": n,
                    "json": timings["json"],
                    "npy": timings["npy"],
                    "speedup": round(timings["json"]["ms_median"] / timings["npy"]["ms_median"], 1),
                    "bytes_ratio": round(timings["json"]["bytes"] / timings["npy"]["bytes"], 2),
                }
            )
            logger.info("vectors: %s", json.dumps(rows[-1]))
    return rows


# --------------------------------------------------------------------------- report


def machine_extra() -> dict[str, Any]:
    """What the report's machine records beyond ``bench/_machine.machine()``: memory,
    kernel and the versions that matter here."""
    mem = next(
        (x.split()[1] for x in Path("/proc/meminfo").read_text().splitlines() if "MemTotal" in x),
        "0",
    )
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    return {
        "memory_gib": round(int(mem) / 2**20, 1),
        "kernel": platform.release(),
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "faiss": faiss.__version__,
            "fastapi": fastapi.__version__,
            "uvicorn": uvicorn.__version__,
            "httpx": httpx.__version__,
            "orjson": orjson.__version__,
            "wrk": (wrk.stdout or wrk.stderr).splitlines()[0].strip(),
        },
    }


def _ms(x: float) -> str:
    return f"{x:.2f}"


def _index_label(r: dict[str, Any]) -> str:
    ef = r["index"]["search_params"].get("efSearch")
    return f"{r['index']['factory']}{f' ef={ef}' if ef else ''}"


def tables(report: dict[str, Any]) -> str:
    """Markdown tables of a report."""
    lines = [
        "| items | index | load | recall 1t q/s | HTTP 1w req/s | 1w / 1t | recall 2t q/s "
        "| HTTP 2w req/s | 2w / 2t | recall CPU ms (1t) | server CPU ms/req (1w) | beyond ms "
        "| half rate req/s | p50 ms | p99 ms | fresh:false |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["recall"]:
        for name in LOADS:
            inp, http = r["in_process"][name], r["http"].get(name, {})
            one, two = inp["recall_1t"], inp["recall_2t"]
            w1, w2 = http.get("1w"), http.get("2w")
            recall_ms = one["cpu_ms"]
            row = f"| {r['n_items']:,} | {_index_label(r)} | {name} | {one['qps']:,.0f} "
            row += f"| {w1['rps']:,.0f} | {w1['rps'] / one['qps']:.0%} " if w1 else "| - | - "
            row += f"| {two['qps']:,.0f} "
            row += f"| {w2['rps']:,.0f} | {w2['rps'] / two['qps']:.0%} " if w2 else "| - | - "
            row += f"| {recall_ms:.2f} "
            if w1:
                cpu = w1["server_cpu_ms_per_request"]
                m = w1["moderate"]
                row += (
                    f"| {cpu:.2f} | {cpu - recall_ms:+.2f} | {m['rps']:,.0f} "
                    f"| {_ms(m['p50_ms'])} | {_ms(m['p99_ms'])} "
                )
            else:
                row += "| - | - | - | - | - "
            runs = [w for w in (w1, w2) if w]
            unfresh = sum(w["unfresh_answers"] for w in runs)
            asked = sum(w["requests"] + w.get("moderate", {}).get("requests", 0) for w in runs)
            lines.append(row + f"| {unfresh:,.0f} of {asked:,} |")
    lines += [
        "",
        "| items | GET /healthz 1w req/s | /healthz server CPU ms/request "
        "| floor POST, Starlette: req/s, CPU ms/req | floor POST, FastAPI: req/s, CPU ms/req "
        "| store read CPU us, no events | ..., 10 events |",
        "|---:|---:|---:|---|---|---:|---:|",
    ]
    for r in report["recall"]:
        floor, read = r["http"].get("healthz_1w"), r["store_read_us"]
        bare = r["http"].get("floor_1w", {})
        cells = [
            f"{bare[kind]['rps']:,.0f}, {bare[kind]['server_cpu_ms_per_request']:.2f}"
            if kind in bare
            else "-"
            for kind in ("starlette", "fastapi")
        ]
        if floor:
            lines.append(
                f"| {r['n_items']:,} | {floor['rps']:,.0f} "
                f"| {floor['server_cpu_ms_per_request']:.2f} | {cells[0]} | {cells[1]} "
                f"| {read['default']:.1f} | {read['events']:.1f} |"
            )
    if any("micro_batch" in r for r in report["recall"]):
        lines += [
            "",
            "| items | index | request | micro-batch | req/s (median) | all runs | p50 ms "
            "| p99 ms | server CPU ms/req |",
            "|---:|---|---|---|---:|---|---:|---:|---:|",
        ]
        for r in report["recall"]:
            for load in ("seen", "no-seen"):
                for variant in ("batch_off", "batch_on"):
                    v = r.get("micro_batch", {}).get(variant, {}).get(load)
                    if v is None:
                        continue
                    request = "exclude_seen (default)" if load == "seen" else "exclude_seen=false"
                    lines.append(
                        f"| {r['n_items']:,} | {_index_label(r)} | {request} "
                        f"| {variant.removeprefix('batch_')} | {v['rps']:,.0f} "
                        f"| {', '.join(f'{x:,.0f}' for x in v['rps_all'])} "
                        f"| {_ms(v['p50_ms'])} | {_ms(v['p99_ms'])} "
                        f"| {v['server_cpu_ms_per_request']:.2f} |"
                    )
    if report.get("vectors"):
        lines += [
            "",
            "| items | ids | JSON ms | JSON bytes | .npy ms | .npy bytes | .npy speed-up "
            "| JSON / .npy bytes |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for v in report["vectors"]:
            for r in v["rows"]:
                lines.append(
                    f"| {v['n_items']:,} | {r['ids']:,} | {r['json']['ms_median']} "
                    f"| {r['json']['bytes']:,} | {r['npy']['ms_median']} | {r['npy']['bytes']:,} "
                    f"| {r['speedup']}x | {r['bytes_ratio']}x |"
                )
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def bundle_specs(args: argparse.Namespace) -> list[BenchBundle]:
    specs = []
    for n in args.sizes:
        users = min(args.users, max(1000, n // 2))
        efc = args.ef_construction_1m if n >= 1_000_000 else args.ef_construction
        specs.append(BenchBundle(n, users, "hnsw", ef_construction=efc))
    return specs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--users", type=int, default=100_000, help="users per bundle (at most n/2)")
    p.add_argument("--fresh-users", type=int, default=2000, help="users with events")
    p.add_argument("--ef-construction", type=int, default=64)
    p.add_argument("--ef-construction-1m", type=int, default=64, help="for >= 1M items")
    p.add_argument("--cache", type=Path, default=Path("/tmp/recall-bench"))
    p.add_argument("--seconds", type=float, default=10.0, help="each wrk run")
    p.add_argument("--inproc-seconds", type=float, default=5.0, help="each in-process run")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--connections", type=int, default=8, help="per worker, at saturation")
    p.add_argument("--moderate-connections", type=int, default=2)
    p.add_argument("--moderate-share", type=float, default=0.5, help="of the 1-worker rate")
    p.add_argument("--micro-batch", action="store_true", help="A/B bench/_batcher.py off/on")
    p.add_argument("--micro-batch-sizes", type=int, nargs="+", default=[1_000_000])
    p.add_argument("--ab-rounds", type=int, default=2, help="micro-batch A/B rounds")
    p.add_argument("--vector-sizes", type=int, nargs="+", default=[1_000, 10_000])
    p.add_argument("--vector-repeats", type=int, default=9)
    p.add_argument("--no-vectors", action="store_true")
    p.add_argument("--out", type=Path, default=Path("bench/results/service_bench.json"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    report: dict[str, Any] = {
        **header("service_bench", **machine_extra()),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "recall": [],
        "vectors": [],
    }
    for spec in bundle_specs(args):
        v1 = ensure_bundle(args.cache, spec)
        path = serving_v2(v1, args.cache / f"{spec.name}-v2")
        manifest = b.read_manifest(path)
        entry: dict[str, Any] = {
            "n_items": spec.n_items,
            "n_users": spec.n_users,
            "index": summary(dict(manifest.index or {})),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        }
        state = args.cache / f"{spec.name}-state" / "events.sqlite"
        for old in state.parent.glob("events.sqlite*"):
            old.unlink()
        state_url = sqlite_url(state)
        loads = loads_of(spec.n_users, args.fresh_users)
        bundle = ServingBundle.load(path)
        events = add_events(state_url, bundle, loads["events"])
        entry["store_read_us"] = store_read_us(state_url, loads)
        logger.info("store read, CPU us: %s", json.dumps(entry["store_read_us"]))
        entry["in_process"] = in_process(bundle, loads, events, args.inproc_seconds)
        item_ids = np.asarray(bundle.item_ids.ids)
        del bundle
        gc.collect()
        env = {"RECALL_STATE_URL": state_url}
        entry["http"] = http_runs(path.parent, loads, args, env)
        if args.micro_batch and spec.n_items in args.micro_batch_sizes:
            stale = loads["default"].n_users
            entry["micro_batch"] = micro_batch_ab(path.parent, stale, args)
            logger.info("%s micro-batch A/B: %s", spec.name, json.dumps(entry["micro_batch"]))
        if not args.no_vectors:
            with serve(path.parent, 1, env) as server:
                rows_v = vector_fetch(server, item_ids, args.vector_sizes, args.vector_repeats)
            report["vectors"].append({"n_items": spec.n_items, "rows": rows_v})
        report["recall"].append(entry)
        write_json(args.out, report)  # partial results survive
    report["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    finish(args.out, report, tables(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
