"""The search thread of a recall, in process: q/s and where each microsecond goes.

Times :meth:`recall.service.core.RecallCore.recall` (the path a worker's search thread
runs for ``POST /v1/recall``, below HTTP and the store read) on one thread, one OpenMP
thread (the service's setting), recall by ``user_id``, ``k`` 100, ``exclude_seen`` on, in
three cases:

- ``user``: no events (the stored vector);
- ``user+10 events``: 10 events after the bundle's ``trained_until`` for every user, handed
  in as the store read would (the training window + events through the numpy tower);
- ``filter 10%``: a categorical filter that matches 10% of the catalog.

The bundle is ``bench/_bundles.py``'s (HNSW tuned to recall@100 >= 0.95), made schema
version 2 by :func:`bench.freshness_overhead.make_v2` and given one attribute column
(``shard``, ten values, ~10% each), cached beside it. With ``--stages``, py-spy
(``pip install py-spy``) samples the loop (``--native``) and each sample is charged to the
first stage of :data:`STAGES` found from the innermost frame out; a stage's µs is its
share of the samples times the CPU µs per recall of the unsampled loop (CPU time of the
thread, not wall time: on a shared machine the wall clock also counts other jobs).

Run it on two commits (the same script copied into the other checkout) to compare code
side by side on the same machine::

    .venv/bin/python -m bench.hot_path_profile --items 100000 1000000 --stages \\
        --out bench/results/hot_path.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from bench._bundles import BenchBundle, ensure_bundle
from bench._results import finish, header
from bench.freshness_overhead import TRAINED_UNTIL, make_v2
from recall.index import bundle as b
from recall.index.attributes import ItemAttributes
from recall.index.publish import read_current
from recall.service.core import RecallCore
from recall.service.fresh import UserState
from recall.service.recaller import RecallQuery, ServingBundle

logger = logging.getLogger("bench.hot_path_profile")

K = 100
MAX_K = 1000
SHARDS = 10
FILTER = {"shard": {"any": ["3"]}}

#: (stage, frame names that belong to it); a sample goes to the first stage one of whose
#: names is in a frame, searching from the innermost frame outwards (so a FAISS call under
#: an entry-point helper counts as FAISS, the helper's own numpy work as the helper's).
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("memmap subclass", ("memmap.__getitem__", "memmap.__array_finalize__")),
    ("selector checks in HNSW", ("IDSelectorNot::is_member", "IDSelectorBatch::is_member")),
    ("HNSW search (FAISS)", ("faiss::", "IndexHNSW_search", "libfaiss")),
    ("exclusions (selector, unique)", ("ExclusionSelector", "_check_exclude", "IDSelector")),
    ("entry points", ("EntryPoints.nearest",)),
    ("search parameters", ("search_parameters",)),
    ("user tower", ("UserTower.",)),
    ("filter lookup", ("FilterMasks.", "allowed_items", "FilterCache.", "filter_key")),
    ("clusters scan (exact)", ("ItemClusters.", "ItemIndex._scan")),
    ("re-score + top-k", ("topk_by_score", "ItemIndex._index_topk", "ItemIndex._faiss_search")),
    ("id maps", ("IdMap.",)),
    ("user vector + seen list", ("user_vectors", "ServingBundle.seen", "_event_rows")),
    ("search entry (checks)", ("ItemIndex.search_detailed", "ItemIndex._check")),
    ("answer (range, ids out)", ("answer (", "_check_range", "_finite", "search_hnsw_from")),
    ("core glue", ("RecallCore.", "recall_user", "UserState", "replace (")),
)


def spec(n_items: int, users: int) -> BenchBundle:
    """The HNSW bundle bench/service_bench.py uses for ``n_items`` (users at most n/2)."""
    return BenchBundle(n_items, min(users, max(1000, n_items // 2)), "hnsw")


def attributed_bundle(v1: Path, root: Path) -> Path:
    """A schema_version 2 copy of bundle ``v1`` under ``root`` with a ``shard`` column
    (SHARDS values, seeded), reused while it was made from ``v1``."""
    name = read_current(root) if root.is_dir() else None
    if name is not None:
        current = root / name
        if b.read_manifest(current).trainer.get("hot_path_from") == v1.name:
            return current
    target = make_v2(v1, root)
    manifest = b.read_manifest(target)
    n = manifest.counts.items
    shard = np.random.default_rng(0).integers(SHARDS, size=n).astype(str)
    attributes = ItemAttributes.from_raw({"shard": shard}, n, {"shard": "categorical"})
    b.save_array(target / b.ITEM_ATTRIBUTES, attributes.arrays())
    upgraded = b.Manifest.model_validate(
        {
            **manifest.model_dump(),
            "trainer": {**manifest.trainer, "hot_path_from": v1.name},
            "item_attributes": attributes.schema(),
            "files": {
                **manifest.files,
                b.ITEM_ATTRIBUTES: b.file_entry(target / b.ITEM_ATTRIBUTES),
            },
        }
    )
    b.write_json_atomic(target / b.MANIFEST, upgraded.model_dump_json())
    return target


def cases(bundle: ServingBundle, n: int, events: int) -> dict[str, list[Any]]:
    """Per case, ``n`` (query, state) pairs over random known users."""
    rng = np.random.default_rng(0)
    users = bundle.user_ids.ids[rng.integers(0, len(bundle.user_ids), n)].tolist()
    items = bundle.item_ids.ids
    after = (bundle.trained_until or TRAINED_UNTIL) + 1.0
    fresh = [
        UserState([[(item, after + j) for j, item in enumerate(picks)]], [[]], True)
        for picks in items[rng.integers(0, len(items), (n, events))].tolist()
    ]
    return {
        "user": [(RecallQuery(user_id=u, k=K), None) for u in users],
        f"user+{events} events": [
            (RecallQuery(user_id=u, k=K), s) for u, s in zip(users, fresh, strict=True)
        ],
        "filter 10%": [(RecallQuery(user_id=u, k=K, filter=FILTER), None) for u in users],
    }


def run_for(core: RecallCore, bundle: ServingBundle, calls: list[Any], seconds: float) -> Any:
    """Recall ``calls`` (cycling) for about ``seconds``: (recalls, wall s, CPU s of this
    thread, latencies s)."""
    lat: list[float] = []
    cpu = time.thread_time()
    start = time.perf_counter()
    end, now, n = start + seconds, start, 0
    while now < end:
        query, state = calls[n % len(calls)]
        t0 = time.perf_counter()
        core.recall(bundle, query, state)
        now = time.perf_counter()
        lat.append(now - t0)
        n += 1
    return n, now - start, time.thread_time() - cpu, lat


def stage_shares(
    core: RecallCore, bundle: ServingBundle, calls: list[Any], seconds: float
) -> dict[str, float]:
    """Each stage's share of a recall: py-spy samples this process while it recalls (its
    pauses slow the loop, so the caller scales the shares by an unsampled loop's CPU)."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.txt"
        command = [
            str(Path(sys.executable).with_name("py-spy")),
            *("record", "--native", "--format", "raw", "-r", "400"),
            *("-d", str(int(seconds)), "-o", str(raw), "--pid", str(os.getpid())),
        ]
        spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        done = threading.Event()

        def wait() -> None:
            spy.wait()
            done.set()

        threading.Thread(target=wait, daemon=True).start()
        n = 0
        while not done.is_set():
            query, state = calls[n % len(calls)]
            core.recall(bundle, query, state)
            n += 1
        if not raw.exists():
            assert spy.stderr is not None
            raise RuntimeError(f"py-spy failed: {spy.stderr.read().decode()[-500:]}")
        samples = _charge(raw.read_text())
    total = sum(samples.values()) or 1
    return {stage: count / total for stage, count in samples.most_common()}


def _charge(raw: str) -> Counter[str]:
    """Samples per stage from py-spy's raw output (``frame;frame;... count`` lines) of the
    main thread's recall loop (other threads and the harness are left out)."""
    out: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not any("RecallCore.recall" in f for f in frames):
            continue
        for frame in reversed(frames):
            stage = next((s for s, names in STAGES if any(x in frame for x in names)), None)
            if stage is not None:
                out[stage] += int(count)
                break
        else:
            out["other"] += int(count)
    return out


class Windows:
    """Time slots for taking turns with a run of other code (``--start-at``, ``--slot``):
    each ``next`` sleeps until this run's next slot; the two runs alternate, so each times
    its code while the other one waits (free-running without ``--start-at``)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.start, self.slot = args.start_at, args.slot
        self.length = args.seconds / args.rounds + 2.0  # a round, py-spy's start, a margin

    def __iter__(self) -> Any:
        j = 0
        while True:
            if self.start:
                time.sleep(max(0.0, self.start + (2 * j + self.slot) * self.length - time.time()))
            yield j
            j += 1


def measure(spec: BenchBundle, args: argparse.Namespace) -> dict[str, Any]:
    v1 = ensure_bundle(args.cache, spec)
    path = attributed_bundle(v1, args.cache / f"{spec.name}-hot-path")
    bundle = ServingBundle.load(path)
    core = RecallCore(MAX_K)
    out: dict[str, Any] = {"n_items": spec.n_items, "index": bundle.manifest.index}
    all_cases = cases(bundle, 20_000, args.events)
    window = iter(Windows(args))
    for name, calls in all_cases.items():
        next(window)
        run_for(core, bundle, calls, min(1.0, args.seconds / 4))  # warm the pages
        rounds = []
        for _ in range(args.rounds):
            next(window)
            rounds.append(run_for(core, bundle, calls, args.seconds / args.rounds))
        n, wall, cpu, lat = min(rounds, key=lambda r: r[2] / r[0])  # the least disturbed
        us = np.asarray(lat) * 1e6
        row: dict[str, Any] = {
            "qps": round(n / wall, 1),
            "cpu_us": round(cpu / n * 1e6, 1),
            "mean_us": round(float(us.mean()), 1),
            "p50_us": round(float(np.percentile(us, 50)), 1),
            "p99_us": round(float(np.percentile(us, 99)), 1),
        }
        if args.stages:
            next(window)
            shares = stage_shares(core, bundle, calls, args.seconds / args.rounds)
            row["stages_cpu_us"] = {k: round(v * row["cpu_us"], 1) for k, v in shares.items()}
        out[name] = row
        logger.info("%s %s: %s", spec.name, name, json.dumps(row))
    return out


def table(report: dict[str, Any]) -> str:
    lines = [
        "| items | case | q/s | CPU µs | p50 µs | p99 µs |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for entry in report["runs"]:
        for name, row in entry.items():
            if isinstance(row, dict) and "qps" in row:
                lines.append(
                    f"| {entry['n_items']:,} | {name} | {row['qps']:,.0f} | {row['cpu_us']:.0f}"
                    f" | {row['p50_us']:.0f} | {row['p99_us']:.0f} |"
                )
                for stage, us in row.get("stages_cpu_us", {}).items():
                    lines.append(f"|  | · {stage} |  | {us:.0f} |  |  |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--cache", type=Path, default=Path("/tmp/recall-bench"))
    p.add_argument("--seconds", type=float, default=5.0, help="each timed loop")
    p.add_argument("--events", type=int, default=10, help="fresh events per user")
    p.add_argument("--rounds", type=int, default=3, help="timed loops per case (best kept)")
    p.add_argument("--stages", action="store_true", help="sample stages with py-spy")
    p.add_argument("--start-at", type=float, default=0.0, help="unix time of the first slot")
    p.add_argument("--slot", type=int, default=0, choices=[0, 1], help="take turns: 0 or 1")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    faiss.omp_set_num_threads(1)
    report: dict[str, Any] = {
        **header("hot_path_profile"),
        "runs": [measure(spec(n, args.users), args) for n in args.items],
    }
    finish(args.out, report, table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
