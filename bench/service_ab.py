"""A/B of two versions of the service on the same load: this checkout vs another source tree.

On a shared machine a before/after pair of ``service_bench.py`` runs minutes apart says
little (the other jobs' load moves more than the change does). This runs ``recall
serve`` from this checkout (``new``) and from ``--base`` (a source tree of the project,
e.g. ``git archive <commit> | tar -x -C DIR``; ``old``) one after the other, alternated
for ``--rounds`` rounds on one bundle root of ``service_bench.py``'s cache with its
SQLite state store, one worker, wrk at saturation, and reports per version the median
requests/s, server CPU per request and answers counted ``fresh: false`` (the old
version has no such metric: its ``recall_state_errors_total{op="recent"}`` instead).

    git archive a45f4db | tar -x -C /tmp/base
    .venv/bin/python bench/service_ab.py --base /tmp/base \\
        --root /tmp/recall-bench/1000000-hnsw-v2 \\
        --state /tmp/recall-bench/1000000-hnsw-state/events.sqlite --users 98000

Without ``--base`` both run this checkout, ``old`` with ``--old-env`` and ``new`` with
``--new-env`` (``NAME=VALUE`` settings, e.g. ``--new-env RECALL_SEARCH_THREADS=0``);
``--workers`` runs each with that many workers and ``--connections`` per worker.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO))  # this process only: a server's `recall` is its tree's

from bench._results import finish, header  # noqa: E402
from bench._server import serve  # noqa: E402
from bench._wrk import run_wrk  # noqa: E402
from recall.service.state import sqlite_url  # noqa: E402

logger = logging.getLogger("bench.service_ab")


def failed_reads(url: str) -> float:
    """Recalls answered without the store: the new metric, or the old version's count of
    failed ``recent`` reads."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    new = [line for line in text.splitlines() if line.startswith("recall_unfresh_answers_total{")]
    old = [
        line
        for line in text.splitlines()
        if line.startswith('recall_state_errors_total{op="recent"}')
    ]
    return sum(float(line.rsplit(" ", 1)[1]) for line in new or old)


def one_run(root: Path, env: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    connections = args.connections * args.workers
    with serve(root, args.workers, env) as server:
        run_wrk(server.url, n_users=args.users, seconds=3, connections=connections)  # warm
        before, cpu0 = failed_reads(server.url), server.cpu_seconds()
        r = run_wrk(server.url, n_users=args.users, seconds=args.seconds, connections=connections)
        cpu = server.cpu_seconds() - cpu0
        return {
            "rps": round(r.rps, 1),
            "p50_ms": round(r.p50_ms, 2),
            "p99_ms": round(r.p99_ms, 2),
            "server_cpu_ms_per_request": round(1e3 * cpu / max(r.requests, 1), 3),
            "requests": r.requests,
            "unfresh": failed_reads(server.url) - before,
            "load_average": round(os.getloadavg()[0], 2),
        }


def _settings(pairs: list[str]) -> dict[str, str]:
    """``NAME=VALUE`` arguments as an environment."""
    return dict(pair.split("=", 1) for pair in pairs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", type=Path, help="the other source tree (old; default: this one)")
    p.add_argument("--old-env", nargs="*", default=[], help="NAME=VALUE settings of old")
    p.add_argument("--new-env", nargs="*", default=[], help="NAME=VALUE settings of new")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--connections", type=int, default=8, help="per worker")
    p.add_argument("--root", type=Path, required=True, help="a bundle root")
    p.add_argument("--state", type=Path, required=True, help="the SQLite state file")
    p.add_argument("--users", type=int, required=True, help="users 0..N-1 (without events)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--out", type=Path, default=Path("bench/results/service_ab.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    report = header("service_ab")
    base_env = {"RECALL_STATE_URL": sqlite_url(args.state)}
    # `recall` resolves to the tree named on the path (run from outside the checkout)
    here = str(REPO)
    old_tree = here if args.base is None else str(args.base.absolute())
    versions = {
        "old": {**base_env, **_settings(args.old_env), "PYTHONPATH": old_tree},
        "new": {**base_env, **_settings(args.new_env), "PYTHONPATH": here},
    }
    os.chdir("/")  # the checkout's own directory must not shadow --base on sys.path
    runs: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
    for i in range(args.rounds):
        for name in ("old", "new") if i % 2 == 0 else ("new", "old"):
            runs[name].append(one_run(args.root, versions[name], args))
            logger.info("%s: %s", name, json.dumps(runs[name][-1]))
    summary = {
        name: {
            key: statistics.median(r[key] for r in rs)
            for key in ("rps", "p50_ms", "p99_ms", "server_cpu_ms_per_request")
        }
        | {"unfresh": sum(r["unfresh"] for r in rs), "requests": sum(r["requests"] for r in rs)}
        for name, rs in runs.items()
    }
    report |= {
        "settings": {k: str(v) for k, v in vars(args).items()},
        "runs": runs,
        "median": summary,
    }
    # a relative --out is the checkout's (the cwd is / by now); REPO / an absolute --out is --out
    finish(REPO / args.out, report, json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
