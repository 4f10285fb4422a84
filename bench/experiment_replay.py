"""The honest check of live quality: an experiment replayed on MovieLens 100K (issue 21).

Two bundles of different quality, one experiment, one replay in time order through the
HTTP API of a real ``recall serve`` process (two workers sharing the state store):

1. train (``recall train``, ``--epochs`` quick) on the interactions up to the 80% time
   quantile twice: ``full`` on all of them, ``half`` on a seeded random half of them
   (every user keeps about half of their training items); build both indexes;
2. publish ``full`` (CURRENT: the control arm) and start an experiment with ``half`` as
   the arm ``half`` at share 0.5 (``recall experiment start``);
3. serve, and replay the first ``--events`` later interactions in time order: for each,
   ``POST /v1/recall {"user_id", "k": 100, "fallback": "popular"}`` and then
   ``POST /v1/events`` with the interaction. The replay counts, per arm (the ``arm`` of
   each answer), an event and a hit at K when the item is in the answer's first K items;
4. ``GET /v1/experiment``: each arm's events and hits must equal the replay's own counts,
   to the event (asserted), and its Wilson intervals and Newcombe difference the ones
   computed here from those counts. The better arm should win with an interval that
   excludes zero: the table says whether it did.

It runs once per state store: the embedded SQLite (a fresh file) and a real Redis (a
``redis-server`` it starts, or ``--redis URL``; the bundles' users are loaded into it as
``recall publish --state-url`` does). Prints a table and writes
``bench/results/experiment_replay.json`` (machine and date) for docs/experiments.md.

    .venv/bin/python bench/experiment_replay.py
    .venv/bin/python bench/experiment_replay.py --events 2000 --state sqlite --out /tmp/x.json

MovieLens 100K is read from ``--data``, else ``$RECALL_ML100K_DIR``, else
``../shared/data/ml-100k``. ``--workdir`` keeps the data splits and bundles: a second run
with the same split and training flags skips training.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO))

from bench._data import (  # noqa: E402
    ML100K_ENV,
    Interaction,
    ml100k_dir,
    replay_split,
    write_split,
)
from bench._results import finish, header  # noqa: E402
from bench._server import recall_cli, serve  # noqa: E402
from bench._training import record_training, train_flat, trained_before  # noqa: E402
from recall.service.state import sqlite_url  # noqa: E402

logger = logging.getLogger("bench.experiment_replay")

KS = (10, 50, 100)
STORE_BOUND = {"RECALL_STATE_TIMEOUT_S": "1"}
"""A store bound of 1 s, not 50 ms: on a loaded machine a late read or write is otherwise
dropped (recall answers without it, an event is stored but not counted), and the counts
this replay checks would miss those events. The drops are counted in ``/metrics``
(:data:`DROP_COUNTERS`); the report carries them."""
DROP_COUNTERS = ("recall_state_errors_total", "recall_live_unremembered_total")
K_ASK = max(KS)
ARM = "half"
CONTROL = "control"
Z95 = 1.959963984540054
WORKERS = 2


# ---------------------------------------------------------------- intervals


def wilson(hits: int, n: int) -> tuple[float, float, float] | None:
    """(rate, low, high): the 95% Wilson score interval of ``hits`` of ``n``; None at n 0."""
    if n == 0:
        return None
    p = hits / n
    z2 = Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return p, max(0.0, centre - half), min(1.0, centre + half)


def newcombe(a: tuple[int, int], b: tuple[int, int]) -> tuple[float, float, float] | None:
    """(difference, low, high) of rate a minus rate b, each (hits, n): Newcombe's hybrid
    score interval (his method 10) from the two Wilson intervals; None if either n is 0."""
    wa, wb = wilson(*a), wilson(*b)
    if wa is None or wb is None:
        return None
    (pa, la, ua), (pb, lb, ub) = wa, wb
    d = pa - pb
    return d, d - math.hypot(pa - la, ub - pb), d + math.hypot(ua - pa, pb - lb)


# ---------------------------------------------------------------- bundles


def half_of(rows: list[Interaction], seed: int) -> list[Interaction]:
    """A seeded random half of ``rows``, in their order."""
    keep = random.Random(seed).sample(range(len(rows)), len(rows) // 2)
    return [rows[i] for i in sorted(keep)]


def prepare(
    workdir: Path, data: Path, train_rows: list[Interaction], seed: int, epochs: int
) -> tuple[Path, dict[str, str], float | None]:
    """``workdir/bundles`` with the control and the :data:`ARM` bundle (trained now, or
    reused when trained on the same rows with the same flags): (root, {arm: bundle id},
    training seconds)."""
    root = workdir / "bundles"
    stamp = {"data": str(data), "rows": len(train_rows), "seed": seed, "epochs": epochs}
    previous = trained_before(workdir, stamp)
    if previous is not None and all((root / b).is_dir() for b in previous["bundles"].values()):
        logger.info("reusing the bundles in %s", root)
        return root, previous["bundles"], previous.get("train_seconds")
    shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    bundles = {}
    for name, rows in ((CONTROL, train_rows), (ARM, half_of(train_rows, seed))):
        split = workdir / f"data-{name}"
        shutil.rmtree(split, ignore_errors=True)
        write_split(data, rows, split)
        bundles[name] = train_flat(split, root, "--seed", str(seed), "--epochs", str(epochs)).name
        logger.info("trained %s on %d interactions: %s", name, len(rows), bundles[name])
    seconds = time.perf_counter() - started
    record_training(workdir, stamp, bundles=bundles, train_seconds=seconds)
    return root, bundles, seconds


def start_experiment(root: Path, bundles: dict[str, str], share: float, seed: int) -> None:
    """CURRENT names ``full``; a new experiment with ``half`` at ``share`` (one running
    before is stopped: each replay counts under an experiment id of its own)."""
    recall_cli("publish", root / bundles[CONTROL])
    if (root / "EXPERIMENT").exists():
        recall_cli("experiment", "stop", root)
    recall_cli(
        "experiment", "start", root, "--arm", f"{ARM}={bundles[ARM]}",
        "--share", str(share), "--salt", f"replay-{seed}",
    )  # fmt: skip


# ---------------------------------------------------------------- the replay


@dataclass
class ArmTally:
    """What the replay saw of one arm: events, hits at each K, the bundles that answered."""

    events: int = 0
    hits: dict[int, int] = field(default_factory=lambda: dict.fromkeys(KS, 0))
    bundle_ids: set[str] = field(default_factory=set)
    sources: dict[str, int] = field(default_factory=dict)


def replay(url: str, events: list[Interaction]) -> tuple[dict[str, ArmTally], float]:
    """Recall (k=100) then post each event, in order; ({arm: tally}, seconds)."""
    tallies: dict[str, ArmTally] = {}
    started = time.perf_counter()
    with httpx.Client(base_url=url, timeout=30) as client:
        for event in events:
            asked = client.post(
                "/v1/recall", json={"user_id": event.user_id, "k": K_ASK, "fallback": "popular"}
            )
            asked.raise_for_status()
            answer = asked.json()
            items = [int(i["item_id"]) for i in answer["items"]]
            tally = tallies.setdefault(answer["arm"], ArmTally())
            tally.events += 1
            tally.bundle_ids.add(answer["bundle_id"])
            tally.sources[answer["source"]] = tally.sources.get(answer["source"], 0) + 1
            rank = items.index(event.item_id) if event.item_id in items else K_ASK
            for k in KS:
                tally.hits[k] += int(rank < k)
            posted = client.post(
                "/v1/events",
                json={"events": [{"user_id": event.user_id, "item_id": event.item_id}]},
            )
            posted.raise_for_status()
            if posted.json()["accepted"] != 1:
                raise RuntimeError(f"event not accepted: {posted.text}")
    return tallies, time.perf_counter() - started


def compare(
    tallies: dict[str, ArmTally], served: dict[str, Any], dropped: dict[str, float]
) -> dict[str, Any]:
    """The replay's counts beside ``GET /v1/experiment``'s, per arm; raises when the
    counts differ by one event or one hit, or an interval differs from the one computed
    here from the same counts (naming the store calls the service ``dropped``)."""
    arms: dict[str, Any] = {}
    by_name = {a["name"]: a for a in served["arms"]}
    mismatches = []
    for name, tally in sorted(tallies.items()):
        got = by_name.get(name)
        if got is None:
            mismatches.append(f"{name}: not in /v1/experiment")
            continue
        if got["events"] != tally.events:
            mismatches.append(f"{name}: events {got['events']} served, {tally.events} replayed")
        row: dict[str, Any] = {
            "events": tally.events,
            "bundle_ids": sorted(tally.bundle_ids),
            "sources": tally.sources,
            "share": got["share"],
        }
        for k in KS:
            served_hits = got["hits"][str(k)]
            if served_hits != tally.hits[k]:
                mismatches.append(f"{name}: hits@{k} {served_hits} served, {tally.hits[k]} here")
            own = wilson(tally.hits[k], tally.events)
            hr = got["hr"][str(k)]
            if own is None or not all(
                math.isclose(hr[key], v, abs_tol=1e-9)
                for key, v in zip(("value", "low", "high"), own, strict=True)
            ):
                mismatches.append(f"{name}: HR@{k} {hr} served, Wilson {own} here")
            row[f"hr@{k}"] = {"replay": own[0] if own else None, "served": hr}
        arms[name] = row
    differences = {}
    for d in served["differences"]:
        a, b, k = tallies.get(d["arm"]), tallies.get(d["vs"]), int(d["k"])
        own = newcombe((a.hits[k], a.events), (b.hits[k], b.events)) if a and b else None
        values = (d["value"], d["low"], d["high"])
        if own is None or not all(
            math.isclose(x, y, abs_tol=1e-9) for x, y in zip(values, own, strict=True)
        ):
            mismatches.append(f"difference {d}: Newcombe {own} here")
        differences[f"{d['arm']}-{d['vs']}@{k}"] = d
    if mismatches:
        why = f" (the store dropped calls: {dropped})" if dropped else ""
        raise AssertionError(
            "/v1/experiment differs from the replay: " + "; ".join(mismatches) + why
        )
    return {"arms": arms, "differences": differences}


def drops(metrics: str) -> dict[str, float]:
    """The nonzero samples of :data:`DROP_COUNTERS` in a ``/metrics`` text (all workers)."""
    out = {}
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name in DROP_COUNTERS and sample.value:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                out[f"{sample.name}{{{labels}}}"] = sample.value
    return out


@contextmanager
def state_store(kind: str, workdir: Path, redis_url: str | None) -> Iterator[str]:
    """A fresh state store's URL: a new SQLite file, the given Redis, or a redis-server
    started here (tests/redis_server.py) until the block ends."""
    if kind == "sqlite":
        path = workdir / "state-sqlite"
        shutil.rmtree(path, ignore_errors=True)
        yield sqlite_url(path / "events.sqlite")
    elif redis_url is not None:
        yield redis_url
    else:
        from tests.redis_server import redis_server

        with redis_server(workdir / "redis") as server:
            yield server.url()


def run_one(
    kind: str,
    args: argparse.Namespace,
    root: Path,
    bundles: dict[str, str],
    events: list[Interaction],
) -> dict[str, Any]:
    """One replay against state store ``kind`` ("sqlite" or "redis")."""
    with state_store(kind, args.workdir, args.redis) as url:
        if kind == "redis":
            from tests.redis_server import load_users

            for bundle in bundles.values():
                load_users(url, root / bundle)
        start_experiment(root, bundles, args.share, args.seed)
        env = {"RECALL_STATE_URL": url, **STORE_BOUND}
        with serve(root, workers=WORKERS, env=env) as server:
            tallies, seconds = replay(server.url, events)
            served = httpx.get(f"{server.url}/v1/experiment", timeout=30).json()
            dropped = drops(httpx.get(f"{server.url}/metrics", timeout=30).text)
    if dropped:
        logger.warning("%s: the store dropped calls: %s", kind, dropped)
    report = compare(tallies, served, dropped)
    logger.info("%s: replayed %d events in %.0f s; counts equal", kind, len(events), seconds)
    return {"state": kind, "seconds": round(seconds, 1), "experiment": served["experiment"],
            "store_drops": dropped, **report}  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    head = header("experiment_replay")
    data = args.data or ml100k_dir()
    train_rows, later, events, _ = replay_split(data, args.quantile, args.events)
    args.workdir = args.workdir or Path(tempfile.mkdtemp(prefix="recall-experiment-replay-"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    root, bundles, train_s = prepare(args.workdir, data, train_rows, args.seed, args.epochs)
    runs = [run_one(kind, args, root, bundles, events) for kind in args.state]
    return {
        **head,
        "data": str(data),
        "protocol": (
            f"train on interactions with timestamp <= the {args.quantile:.0%} time quantile "
            f"(control: all {len(train_rows)}; {ARM}: a seeded random half), {args.epochs} "
            f"epochs, Flat index; CURRENT = control, experiment arm {ARM} at share "
            f"{args.share}; replay the first {len(events)} later interactions in time order: "
            f"POST /v1/recall k={K_ASK} (fallback popular) then POST /v1/events; "
            f"recall serve with {WORKERS} workers"
        ),
        "training_interactions": len(train_rows),
        "later_interactions": len(later),
        "events": len(events),
        "bundles": bundles,
        "train_seconds": None if train_s is None else round(train_s, 1),
        "seed": args.seed,
        "epochs": args.epochs,
        "runs": runs,
    }


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def format_table(report: dict[str, Any], k: int = 50) -> str:
    """Live HR@k per state store and arm, replayed and served, and each difference."""
    lines = [
        f"Live HR@{k} per arm, replay of {report['events']} later MovieLens 100K events "
        f"(% ; 95% interval)",
        f"{'state':<8}{'arm':<9}{'events':>7}{'replay':>9}{'served':>9}  {'interval':<14}",
    ]
    for r in report["runs"]:
        for name, arm in r["arms"].items():
            hr = arm[f"hr@{k}"]
            served = hr["served"]
            lines.append(
                f"{r['state']:<8}{name:<9}{arm['events']:>7}{pct(hr['replay']):>9}"
                f"{pct(served['value']):>9}  {pct(served['low'])} to {pct(served['high'])}"
            )
        for d in r["differences"].values():
            if int(d["k"]) != k:
                continue
            wins = "excludes 0" if d["low"] > 0 or d["high"] < 0 else "holds 0"
            lines.append(
                f"{r['state']:<8}{d['arm']} - {d['vs']}: {pct(d['value'])} pp "
                f"({pct(d['low'])} to {pct(d['high'])}; {wins})"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help=f"MovieLens 100K (default ${ML100K_ENV})")
    parser.add_argument("--events", type=int, default=6000, help="later events to replay")
    parser.add_argument("--quantile", type=float, default=0.8, help="training cut (time)")
    parser.add_argument("--seed", type=int, default=0, help="training and split seed")
    parser.add_argument("--epochs", type=int, default=4, help="training epochs (quick)")
    parser.add_argument("--share", type=float, default=0.5, help=f"the {ARM} arm's share")
    parser.add_argument(
        "--state",
        nargs="+",
        choices=["sqlite", "redis"],
        default=["sqlite", "redis"],
        help="state stores to replay against, one replay each",
    )
    parser.add_argument("--redis", help="a Redis URL to use (default: start a redis-server)")
    parser.add_argument("--workdir", type=Path, help="keeps splits and bundles (default tmp)")
    parser.add_argument(
        "--out", type=Path, default=REPO / "bench" / "results" / "experiment_replay.json"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    report = run(args)
    finish(args.out, report, format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
