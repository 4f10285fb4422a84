"""Freshness on MovieLens 100K: recall that sees what a user did since training.

The replay of issue 9, through the HTTP API of a real ``recall serve`` process:

1. train (``recall train``) on every interaction up to the 80% time quantile, build the
   index and publish;
2. serve it on 127.0.0.1 with an embedded SQLite state store in the work directory;
3. replay the later interactions in time order (the first ``--events`` of them). Before
   each one, ask for 50 items and count a hit when the event's item is among them:

   - ``stale``: ``{"user_id", "k": 50, "fallback": "popular"}`` with no event ever posted
     (today's service: the bundle's vector, or the popular list for a new user);
   - ``history``: ``{"history": [...]}``, the user's whole history so far (training items
     then the replayed ones, oldest first) sent by the client, popular when empty: the
     client-side reference;
   - ``fresh``: ``{"user_id", ...}`` as ``stale``, then ``POST /v1/events`` with the event:
     the service folds the events into the user's vector itself (default settings);
   - ``fresh_w1000``: the same on a second server (a new state) with
     ``RECALL_STATE_WINDOW=1000``: ``exclude_seen`` drops the fresh items the store keeps
     per user, the last ``RECALL_STATE_WINDOW`` (50 by default), so a user with more
     events since training can be shown one they already saw; this mode shows the cost.

   Users the bundle knows and new users are counted apart. ``exclude_seen`` is the
   service's default (on) in every mode.

Prints a table and writes ``bench/results/freshness.json`` (machine, date) for
docs/state.md to quote.

    .venv/bin/python bench/freshness.py                  # the default (attention) tower
    .venv/bin/python bench/freshness.py --events 1000 --epochs 3 --out /tmp/freshness.json
    .venv/bin/python bench/freshness.py --tower mean --out bench/results/freshness-mean.json

MovieLens 100K is read from ``--data``, else ``$RECALL_ML100K_DIR``, else
``../shared/data/ml-100k`` beside the repository. ``--workdir`` keeps the trained bundle:
a second run with the same split and training flags skips training.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

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
from bench._server import serve  # noqa: E402
from bench._training import record_training, train_flat, trained_before  # noqa: E402
from recall.index.tower import TOWER_KINDS  # noqa: E402
from recall.service.state import sqlite_url  # noqa: E402
from recall.trainer.config import TrainConfig  # noqa: E402

logger = logging.getLogger("bench.freshness")

MODES = ("stale", "history", "fresh", "fresh_w1000")
WIDE_WINDOW = 1000
K = 50


def train_and_publish(split: Path, root: Path, seed: int, epochs: int | None, tower: str) -> float:
    """``recall train`` + ``recall build-index --publish``; seconds taken."""
    started = time.perf_counter()
    flags = ["--seed", str(seed), "--tower", tower, *(["--epochs", str(epochs)] if epochs else [])]
    train_flat(split, root, *flags, publish=True)
    return time.perf_counter() - started


@dataclass
class Tally:
    """Hits and asks per user group."""

    hits: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    asks: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    sources: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    not_fresh: int = 0  # answers with "fresh": false (the store read timed out)

    def add(self, group: str, hit: bool, source: str, fresh: bool) -> None:
        for g in (group, "all"):
            self.asks[g] += 1
            self.hits[g] += int(hit)
        self.sources[source] += 1
        self.not_fresh += int(not fresh)

    def hr(self, group: str) -> float:
        return self.hits[group] / self.asks[group] if self.asks[group] else float("nan")


def _recall(client: httpx.Client, body: dict[str, Any]) -> tuple[list[int], str, bool]:
    response = client.post("/v1/recall", json=body)
    response.raise_for_status()
    answer = response.json()
    items = [int(i["item_id"]) for i in answer["items"]]
    return items, str(answer["source"]), bool(answer.get("fresh", True))


def replay(
    url: str,
    mode: str,
    events: list[Interaction],
    train_history: dict[int, list[int]],
    known_users: set[int],
) -> tuple[Tally, float]:
    """Ask (and, in ``fresh`` mode, post) for each event in order; (tally, seconds)."""
    tally = Tally()
    history = {u: list(items) for u, items in train_history.items()}
    started = time.perf_counter()
    with httpx.Client(base_url=url, timeout=30) as client:
        for event in events:
            group = "known" if event.user_id in known_users else "new"
            so_far = history.setdefault(event.user_id, [])
            if mode == "history" and so_far:
                body: dict[str, Any] = {"history": so_far, "k": K, "fallback": "popular"}
            else:
                body = {"user_id": event.user_id, "k": K, "fallback": "popular"}
            items, source, fresh = _recall(client, body)
            tally.add(group, event.item_id in items, source, fresh)
            so_far.append(event.item_id)
            if mode.startswith("fresh"):
                posted = client.post(
                    "/v1/events",
                    json={
                        "events": [
                            {
                                "user_id": event.user_id,
                                "item_id": event.item_id,
                                "timestamp": event.timestamp,
                            }
                        ]
                    },
                )
                posted.raise_for_status()
                if posted.json()["accepted"] != 1:
                    raise RuntimeError(f"event not accepted: {posted.text}")
    return tally, time.perf_counter() - started


def run(args: argparse.Namespace) -> dict[str, Any]:
    head = header("freshness")
    data = args.data or ml100k_dir()
    train_rows, later, events, cut = replay_split(data, args.quantile, args.events)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="recall-freshness-"))
    split, root = workdir / "data", workdir / "bundles"
    stamp = {
        "quantile": args.quantile,
        "seed": args.seed,
        "epochs": args.epochs,
        "tower": args.tower,
    }
    previous = trained_before(workdir, stamp)
    if previous is not None and (root / "CURRENT").is_file():
        train_s = previous.get("train_seconds")
        logger.info("reusing the bundle in %s", root)
    else:
        shutil.rmtree(split, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
        write_split(data, train_rows, split)
        logger.info("training the %s tower (recall train; its log shows on failure)", args.tower)
        train_s = train_and_publish(split, root, args.seed, args.epochs, args.tower)
        record_training(workdir, stamp, train_seconds=train_s)
        logger.info("trained and published in %.0f s", train_s)
    bundle = root / (root / "CURRENT").read_text().strip()
    manifest = json.loads((bundle / "manifest.json").read_text())
    known_users = {int(u) for u in np.load(bundle / "user_ids.npy", allow_pickle=False)}

    train_history: dict[int, list[int]] = defaultdict(list)
    for r in train_rows:  # time order
        train_history[r.user_id].append(r.item_id)

    results: dict[str, Any] = {}
    servers = [
        ("state", MODES[:3], {}),
        ("state_w1000", MODES[3:], {"RECALL_STATE_WINDOW": str(WIDE_WINDOW)}),
    ]
    for state_dir, modes, extra in servers:
        state = workdir / state_dir
        shutil.rmtree(state, ignore_errors=True)
        env = {
            "RECALL_STATE_URL": sqlite_url(state / "events.sqlite"),
            "RECALL_MAX_HISTORY": "5000",  # a client-side history of a heavy user
            **extra,
        }
        with serve(root, workers=1, env=env) as server:
            for mode in modes:  # fresh last: the other two must see no posted event
                tally, seconds = replay(server.url, mode, events, train_history, known_users)
                results[mode] = {
                    "hr@50": {g: round(tally.hr(g), 4) for g in ("all", "known", "new")},
                    "asks": dict(tally.asks),
                    "sources": dict(tally.sources),
                    "not_fresh_answers": tally.not_fresh,
                    "seconds": round(seconds, 1),
                }
                logger.info("%s: %s", mode, results[mode]["hr@50"])
    stale, fresh, hist, wide = (
        results[m]["hr@50"] for m in ("stale", "fresh", "history", "fresh_w1000")
    )
    return {
        **head,
        "data": str(data),
        "protocol": (
            f"train on interactions with timestamp <= the {args.quantile:.0%} time quantile; "
            f"replay the first {len(events)} later interactions in time order through HTTP; "
            f"before each, POST /v1/recall k={K} (exclude_seen default, fallback popular) and "
            "count a hit when the event's item is in it; fresh: then POST /v1/events with it; "
            f"fresh_w1000: the same with RECALL_STATE_WINDOW={WIDE_WINDOW}; one worker, "
            "SQLite state"
        ),
        "training_interactions": len(train_rows),
        "later_interactions": len(later),
        "events": len(events),
        "cut_timestamp": cut,
        "trained_until": manifest.get("trained_until"),
        "bundle": {"id": bundle.name, "schema_version": manifest.get("schema_version")},
        "train_seconds": None if train_s is None else round(train_s, 1),
        "seed": args.seed,
        "epochs": args.epochs,
        "tower": args.tower,
        "modes": results,
        "ratios": {
            "fresh/stale": {g: round(fresh[g] / stale[g], 3) for g in fresh if stale[g]},
            "fresh/history": {g: round(fresh[g] / hist[g], 3) for g in fresh if hist[g]},
            "fresh_w1000/history": {g: round(wide[g] / hist[g], 3) for g in wide if hist[g]},
        },
    }


def format_table(report: dict[str, Any]) -> str:
    """HR@50 per mode and user group, the events asked, the ratios."""
    lines = [
        f"HR@{K} over {report['events']} later events (MovieLens 100K, replay in time order, "
        f"{report['tower']} tower)",
        f"{'mode':<13}{'all':>8}{'known':>8}{'new':>8}{'not fresh':>11}",
    ]
    for mode in MODES:
        m = report["modes"][mode]
        hr = m["hr@50"]
        lines.append(
            f"{mode:<13}{hr['all']:>8.3f}{hr['known']:>8.3f}{hr['new']:>8.3f}"
            f"{m['not_fresh_answers']:>11}"
        )
    asks = report["modes"]["fresh"]["asks"]
    lines.append(
        f"{'events':<13}{asks.get('all', 0):>8}{asks.get('known', 0):>8}{asks.get('new', 0):>8}"
    )
    for name, ratio in report["ratios"].items():
        lines.append(f"{name:<20}" + "  ".join(f"{g} {v:.2f}x" for g, v in ratio.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help=f"MovieLens 100K (default ${ML100K_ENV})")
    parser.add_argument("--events", type=int, default=3000, help="later events to replay")
    parser.add_argument("--quantile", type=float, default=0.8, help="training cut (time)")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--epochs", type=int, help="training epochs (default: the config's)")
    default_tower = TrainConfig.model_fields["tower"].default
    parser.add_argument(
        "--tower", choices=TOWER_KINDS, default=default_tower, help=f"default {default_tower}"
    )
    parser.add_argument("--workdir", type=Path, help="keeps data, bundle, state (default tmp)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "freshness.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    report = run(args)
    finish(args.out, report, format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
