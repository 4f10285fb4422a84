"""Service benchmark: recall over HTTP (``recall serve`` + wrk) vs the same queries in process.

For each catalog size (default 100k and 1M items, d = 64 + bias) and index kind (Flat, and
HNSW tuned by ``recall.index.build`` to recall@100 >= 0.95), on bundles of structured vectors
cached under ``--cache`` (see ``bench/_bundles.py``):

1. In process, single thread (``faiss.omp_set_num_threads(1)``, the service's setting),
   random known users, k = 100, the user's seen items excluded (the HTTP default):
   (a) ``ItemIndex.search`` alone, (b) ``recall.service.core.RecallCore.recall`` (the whole core: id
   lookup, seen list, search, id mapping), and (b) again on two threads.
2. Over HTTP: ``recall serve`` (a real subprocess, uvloop + httptools) with 1 and 2
   workers, ``wrk`` POSTing ``/v1/recall {"user_id": <random known id>, "k": 100}``:
   requests/s, p50, p99 at saturation; then, one worker, a moderate rate (about half of
   what one worker holds; few connections with a think time, wrk has no ``-R``).
   The figure is HTTP requests/s / in-process queries/s, measured in the same run.
3. ``POST /v1/items/vectors`` with 1,000 and 10,000 ids, JSON vs ``Accept:
   application/x-npy``: client time including decode (httpx + orjson + np.asarray, or
   np.load), bytes.
4. With ``--micro-batch``: one worker, ``POST /v1/recall`` coalesced into one search per
   batch (``bench/_batcher.py``) vs not, same load, alternated rounds (at 1M items by
   default). Also GET /healthz on one worker: the HTTP floor.

The machine has 2 cores shared with wrk (and other jobs): read ratios measured side by
side, not absolute numbers. Writes a JSON report (``--out``) and prints Markdown tables.

    .venv/bin/python bench/service_bench.py --micro-batch          # everything, ~15 min
    .venv/bin/python bench/service_bench.py --sizes 100000 --seconds 5   # quick look
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import fastapi
import httpx
import numpy as np
import orjson
import uvicorn
from _bundles import BenchBundle, ensure_bundle, summary
from _machine import cpu_model
from _server import Server, serve
from _wrk import WrkResult, run_wrk

from recall.index import bundle as b
from recall.service.core import RecallCore
from recall.service.recaller import RecallQuery, ServingBundle

logger = logging.getLogger("bench.service")

K = 100
MAX_K = 1000
NPY = "application/x-npy"


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


def in_process(bundle: ServingBundle, rows: np.ndarray, seconds: float) -> dict[str, Any]:
    """Single-thread q/s of (a) ItemIndex.search alone and (b) the recall core, and (b) on
    two threads; same users, seen items excluded, k = 100."""
    faiss.omp_set_num_threads(1)
    vectors = bundle.user_vectors
    ids = bundle.user_ids.ids

    def search(row: np.int64) -> None:
        q = np.asarray(vectors[row])[None, :]
        bundle.index.search(q, K, exclude=[bundle.seen(int(row))])

    recaller = RecallCore(MAX_K)  # the path production runs (no stored events)

    def recall(row: np.int64) -> None:
        recaller.recall(bundle, RecallQuery(user_id=int(ids[row]), k=K))

    for fn in (search, recall):  # warm the pages these users touch
        _timed_loop(fn, rows, min(1.0, seconds / 4))
    out = {
        "search_1t": _stats(*_timed_loop(search, rows, seconds)),
        "recall_1t": _stats(*_timed_loop(recall, rows, seconds)),
    }
    results: list[tuple[int, float, list[float]]] = []

    def run(part: np.ndarray) -> None:
        faiss.omp_set_num_threads(1)  # per thread (libgomp), as the service's search threads
        results.append(_timed_loop(recall, part, seconds))

    threads = [threading.Thread(target=run, args=(h,)) for h in np.array_split(rows, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = sum(r[0] for r in results)
    wall = max(r[1] for r in results)
    out["recall_2t"] = _stats(total, wall, [x for r in results for x in r[2]])
    return out


# --------------------------------------------------------------------------- over HTTP


def _load(server: Server, n_users: int, seconds: float, connections: int, **kw: Any) -> WrkResult:
    """wrk against the server, with the server's CPU time per request recorded."""
    cpu0 = server.cpu_seconds()
    result = run_wrk(server.url, n_users=n_users, seconds=seconds, connections=connections, **kw)
    result.server_cpu_s = server.cpu_seconds() - cpu0
    if result.failed:
        logger.warning("%d failed requests: %s", result.failed, result.errors)
    return result


def _result(r: WrkResult) -> dict[str, Any]:
    return r.as_dict()


def _warm(server: Server, n_users: int) -> None:
    """Short loads until one has no failed request (every worker ready and warm)."""
    for _ in range(10):
        r = run_wrk(server.url, n_users=n_users, seconds=2, connections=4)
        if r.failed == 0 and r.requests > 0:
            return
        logger.info("warm-up: %d failed, again", r.failed)
    raise RuntimeError("the server keeps failing requests during warm-up")


def http_runs(
    root: Path,
    n_users: int,
    args: argparse.Namespace,
    env: dict[str, str],
    with_moderate: bool,
) -> dict[str, Any]:
    """Saturation with 1 and 2 workers, and (optionally) a moderate rate on 1 worker."""
    out: dict[str, Any] = {}
    for workers in args.workers:
        with serve(root, workers, env) as server:
            _warm(server, n_users)
            conns = args.connections * workers
            sat = _load(server, n_users, args.seconds, conns)
            out[f"{workers}w"] = {"connections": conns, **_result(sat)}
            logger.info("%d worker(s): %s", workers, json.dumps(out[f"{workers}w"]))
            if with_moderate and workers == 1:
                out["moderate"] = _moderate(server, n_users, sat, args)
                logger.info("moderate: %s", json.dumps(out["moderate"]))
                floor = _load(server, n_users, args.seconds / 2, conns, get_path="/healthz")
                out["healthz_1w"] = {"connections": conns, **_result(floor)}
                logger.info("GET /healthz: %s", json.dumps(out["healthz_1w"]))
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
                    r = _load(server, n_users, args.seconds, args.connections, extra=extra)
                runs.setdefault(variant, {}).setdefault(load, []).append(r)
    out: dict[str, Any] = {}
    for variant, loads in runs.items():
        out[variant] = {}
        for load, results in loads.items():
            mid = sorted(results, key=lambda r: r.rps)[len(results) // 2]  # median by rps
            out[variant][load] = {**_result(mid), "rps_all": [round(r.rps, 1) for r in results]}
    return out


def _moderate(server: Server, n_users: int, sat: WrkResult, args: argparse.Namespace) -> Any:
    """About ``args.moderate_share`` of the saturated rate on few connections: each
    connection waits ``c / target - service time`` after each response."""
    c = args.moderate_connections
    target = max(1.0, args.moderate_share * sat.rps)
    service_ms = 1e3 / max(sat.rps, 1.0)
    delay = max(0.0, 1e3 * c / target - service_ms)
    r = _load(server, n_users, args.seconds, c, delay_ms=round(delay, 1))
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


def machine() -> dict[str, Any]:
    cpu = cpu_model()
    mem = next(
        (x.split()[1] for x in Path("/proc/meminfo").read_text().splitlines() if "MemTotal" in x),
        "0",
    )
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
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
        "| items | index | recall@100 | search 1t q/s | recall 1t q/s | recall 2t q/s "
        "| HTTP 1w req/s | p50 ms | p99 ms | 1w / search 1t | 1w / recall 1t "
        "| HTTP 2w req/s | p50 ms | p99 ms | 2w / recall 2t |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["recall"]:
        inp, http = r["in_process"], r["http"]["default"]
        row = (
            f"| {r['n_items']:,} | {_index_label(r)} | {r['index']['recall_at_100']:.3f} "
            f"| {inp['search_1t']['qps']:,.0f} | {inp['recall_1t']['qps']:,.0f} "
            f"| {inp['recall_2t']['qps']:,.0f} "
        )
        w1, w2 = http.get("1w"), http.get("2w")
        if w1:
            row += (
                f"| {w1['rps']:,.0f} | {_ms(w1['p50_ms'])} | {_ms(w1['p99_ms'])} "
                f"| {w1['rps'] / inp['search_1t']['qps']:.0%} "
                f"| {w1['rps'] / inp['recall_1t']['qps']:.0%} "
            )
        else:
            row += "| - | - | - | - | - "
        if w2:
            row += (
                f"| {w2['rps']:,.0f} | {_ms(w2['p50_ms'])} | {_ms(w2['p99_ms'])} "
                f"| {w2['rps'] / inp['recall_2t']['qps']:.0%} |"
            )
        else:
            row += "| - | - | - | - |"
        lines.append(row)
    lines += [
        "",
        "| items | index | in-process recall ms/query (1t) | HTTP 1w server CPU ms/request "
        "| GET /healthz 1w req/s | /healthz server CPU ms/request |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in report["recall"]:
        http = r["http"]["default"]
        w1, floor = http.get("1w"), http.get("healthz_1w")
        if w1 and floor:
            lines.append(
                f"| {r['n_items']:,} | {_index_label(r)} "
                f"| {1e3 / r['in_process']['recall_1t']['qps']:.2f} "
                f"| {w1['server_cpu_ms_per_request']:.2f} | {floor['rps']:,.0f} "
                f"| {floor['server_cpu_ms_per_request']:.2f} |"
            )
    lines += [
        "",
        "| items | index | connections | think ms | achieved req/s | p50 ms | p90 ms | p99 ms "
        "| p99.9 ms | max ms |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["recall"]:
        m = r["http"]["default"].get("moderate")
        if m:
            lines.append(
                f"| {r['n_items']:,} | {_index_label(r)} | {m['connections']} "
                f"| {m['delay_ms']} | {m['rps']:,.0f} | {_ms(m['p50_ms'])} | {_ms(m['p90_ms'])} "
                f"| {_ms(m['p99_ms'])} | {_ms(m['p999_ms'])} | {_ms(m['max_ms'])} |"
            )
    if any("batch_off" in r["http"] for r in report["recall"]):
        lines += [
            "",
            "| items | index | request | micro-batch | req/s (median) | all runs | p50 ms "
            "| p99 ms | server CPU ms/req |",
            "|---:|---|---|---|---:|---|---:|---:|---:|",
        ]
        for r in report["recall"]:
            for load in ("seen", "no-seen"):
                for variant in ("batch_off", "batch_on"):
                    v = r["http"].get(variant, {}).get(load)
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
        for kind in args.kinds:
            efc = args.ef_construction_1m if n >= 1_000_000 else args.ef_construction
            specs.append(BenchBundle(n, users, kind, ef_construction=efc))
    return specs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--kinds", nargs="+", default=["flat", "hnsw"], choices=["flat", "hnsw"])
    p.add_argument("--users", type=int, default=100_000, help="users per bundle (at most n/2)")
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
    p.add_argument("--out", type=Path, default=Path("bench/results/service.json"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "recall": [],
        "vectors": [],
    }
    for spec in bundle_specs(args):
        path = ensure_bundle(args.cache, spec)
        manifest = b.read_manifest(path)
        entry: dict[str, Any] = {
            "n_items": spec.n_items,
            "n_users": spec.n_users,
            "kind": spec.kind,
            "index": summary(dict(manifest.index or {})),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        }
        bundle = ServingBundle.load(path)
        rng = np.random.default_rng(0)
        rows = rng.integers(0, spec.n_users, size=20_000).astype(np.int64)
        entry["in_process"] = in_process(bundle, rows, args.inproc_seconds)
        logger.info("%s in process: %s", spec.name, json.dumps(entry["in_process"]))
        item_ids = np.asarray(bundle.item_ids.ids)
        del bundle
        gc.collect()
        entry["http"] = {"default": http_runs(path.parent, spec.n_users, args, {}, True)}
        if args.micro_batch and spec.n_items in args.micro_batch_sizes:
            entry["http"].update(micro_batch_ab(path.parent, spec.n_users, args))
            logger.info("%s micro-batch A/B: %s", spec.name, json.dumps(entry["http"]))
        if not args.no_vectors and spec.kind == args.kinds[-1]:
            with serve(path.parent, 1) as server:
                rows_v = vector_fetch(server, item_ids, args.vector_sizes, args.vector_repeats)
            report["vectors"].append({"n_items": spec.n_items, "rows": rows_v})
        report["recall"].append(entry)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")  # partial results survive
    report["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    sys.stdout.write(tables(report) + "\n")
    logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
