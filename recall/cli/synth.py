"""``recall synth``: a synthetic data set in the trainer's input format."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from recall.cli.command import Subcommands, add_command

logger = logging.getLogger("recall")


def add_parser(sub: Subcommands) -> None:
    synth = add_command(sub, "synth", run, "generate a synthetic data set in the input format")
    synth.add_argument("--out", type=Path, required=True, help="output data directory")
    synth.add_argument("--users", type=int, default=5_000, help="users (%(default)s)")
    synth.add_argument("--items", type=int, default=2_000, help="items (%(default)s)")
    synth.add_argument(
        "--clusters", type=int, default=20, help="planted taste clusters (%(default)s)"
    )
    synth.add_argument(
        "--mean-history", type=float, default=30.0, help="mean interactions per user"
    )
    synth.add_argument("--seed", type=int, default=0, help="random seed (%(default)s)")


def run(args: argparse.Namespace) -> int:
    from recall.trainer.synth import SynthConfig, write_synthetic

    summary = write_synthetic(
        args.out,
        SynthConfig(
            n_users=args.users,
            n_items=args.items,
            n_clusters=args.clusters,
            mean_history=args.mean_history,
            seed=args.seed,
        ),
    )
    logger.info(
        "wrote %d users, %d items, %d interactions to %s in %.1f s",
        summary.n_users,
        summary.n_items,
        summary.n_interactions,
        args.out,
        summary.seconds,
    )
    return 0
