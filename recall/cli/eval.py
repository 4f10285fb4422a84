"""``recall eval``: the offline quality report of a bundle (leave-last-out)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from recall.cli.command import Subcommands, add_command

logger = logging.getLogger("recall")


def add_parser(sub: Subcommands) -> None:
    ev = add_command(sub, "eval", run, "offline quality report (leave-last-out) vs popularity")
    ev.add_argument("bundle", type=Path, help="ROOT/<bundle-id>")
    ev.add_argument("--data", type=Path, required=True, help="the data set it was trained on")
    ev.add_argument("--out", type=Path, help="also write the results as JSON to this file")
    ev.add_argument("--max-users", type=int, help="evaluate a random sample of users")


def run(args: argparse.Namespace) -> int:
    run_eval(args.bundle, args.data, args.out, args.max_users)
    return 0


def run_eval(bundle: Path, data: Path, out: Path | None, max_users: int | None) -> None:
    """Print the results table on stdout; also write them as JSON to ``out`` when given."""
    from recall.trainer.data import load_dataset
    from recall.trainer.evaluate import evaluate_bundle, format_table

    results = evaluate_bundle(bundle, load_dataset(data), max_users)
    sys.stdout.write(format_table(results) + "\n")
    if out is not None:  # strict JSON: a NaN raises instead of writing a bare NaN
        report = {"bundle": str(bundle), "data": str(data), "results": results}
        out.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
        logger.info("wrote %s", out)
