"""What an experiment costs a replica in memory (issue 21 §1).

For each catalog size, writes two bundles of the same shape (``bench/replica_memory.py``'s
bundles: clustered items, users with windows and seen lists, an exact index), then
serves the root with ``recall serve`` (one worker, a real subprocess, SQLite mode),
sends ``--requests`` recalls by random user ids and reads the replica's RSS and PSS
(``/proc/<pid>/smaps_rollup`` over its process tree), three times:

- control alone (no EXPERIMENT);
- with an arm on the other bundle (half the users): both item sides mapped and touched;
- with an arm on CURRENT's own bundle (an A/A test): shared, loaded once.

It also prints each bundle's bytes (what a second arm maps). Run:

    .venv/bin/python -m bench.experiment_memory --out bench/results/experiment_memory.json
    .venv/bin/python -m bench.experiment_memory --items 20000 --requests 200  # quick
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from bench.replica_memory import replica, timed_report, write_bundle
from recall.index import bundle as b
from recall.index.experiment import Arm, Experiment
from recall.index.roots import LocalRoot

logger = logging.getLogger("bench.experiment_memory")


def with_arm(
    root: Path, bundle_id: str, measure: Callable[[], dict[str, float]]
) -> dict[str, float]:
    """``measure()`` while an experiment gives half the users an arm on ``bundle_id``."""
    local = LocalRoot(root)
    arm = Arm(name="canary", bundle_id=bundle_id, share=0.5)
    local.start_experiment(
        Experiment(id=f"exp-bench-{bundle_id}", salt="bench", started_at=time.time(), arms=(arm,))
    )
    try:
        return measure()
    finally:
        local.stop_experiment(local.experiment())


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for n_items in args.items:
        root = work / f"root-{n_items}"
        logger.info("writing two bundles of %d items and %d users", n_items, args.users)
        other = write_bundle(root, n_items, args.users, seed=1)
        control = write_bundle(root, n_items, args.users, seed=0)  # published last: CURRENT
        sqlite = f"sqlite://{work}/events-{n_items}.sqlite"
        measure = partial(replica, root, args.users, sqlite, args.requests)

        row: dict[str, Any] = {
            "items": n_items,
            "users": args.users,
            "bundle_bytes": sum(f.bytes for f in b.read_manifest(control).files.values()),
            "control_alone": measure(),
            "arm_on_another_bundle": with_arm(root, other.name, measure),
            "arm_on_currents_bundle": with_arm(root, control.name, measure),
        }
        rows.append(row)
        logger.info("%s", row)
        shutil.rmtree(root)
    return {"rows": rows}


def table(report: dict[str, Any]) -> str:
    lines = [
        "| items | bundle (MB) | control alone RSS / PSS (MB) | + an arm on another bundle "
        "| + an arm on CURRENT's bundle |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in report["rows"]:

        def cell(key: str, r: dict[str, Any] = r) -> str:
            return f"{r[key]['rss_mb']} / {r[key]['pss_mb']}"

        lines.append(
            f"| {r['items']:,} | {r['bundle_bytes'] / 1e6:.0f} | {cell('control_alone')} "
            f"| {cell('arm_on_another_bundle')} | {cell('arm_on_currents_bundle')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=2000, help="recalls before measuring")
    parser.add_argument("--out", type=Path, help="write the report (JSON) here")
    args = parser.parse_args()
    timed_report("experiment_memory", args, run, table)


if __name__ == "__main__":
    main()
