"""``recall train``: train the model on a data directory and write a bundle."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from recall.cli.command import Subcommands, add_command


def add_parser(sub: Subcommands) -> None:
    tr = add_command(sub, "train", run, "train the model and write a bundle (prints its path)")
    tr.add_argument("--data", type=Path, required=True, help="input data directory")
    tr.add_argument("--out", type=Path, required=True, help="bundle root")
    tr.add_argument("--config", type=Path, help="TOML file with TrainConfig fields")
    tr.add_argument("--device", choices=["cpu", "cuda"], help="where torch trains")
    tr.add_argument("--seed", type=int, help="random seed of the run")
    tr.add_argument("--epochs", type=int, help="upper bound (early stopping)")
    tr.add_argument("--batch-size", type=int, help="examples per step")
    tr.add_argument("--lr", type=float, help="learning rate (Adam)")
    tr.add_argument(
        "--loss",
        choices=["auto", "full", "sampled"],
        help="softmax: full, sampled (log-Q), or auto by catalog size",
    )
    tr.add_argument(
        "--tower",
        choices=["mean", "attention"],
        help="user tower: mean of the history, or mean + self-attention over it",
    )
    tr.add_argument("--hidden", type=int, nargs="+", help="tower widths; the last is dim(u)")
    tr.add_argument("--max-examples-per-user", type=int, help="cap on training examples")
    tr.add_argument(
        "--item-schema",
        metavar="COL=KIND,...",
        help="declare items.csv column kinds (numeric, categorical, multi) over inference",
    )
    tr.add_argument(
        "--user-schema",
        metavar="COL=KIND,...",
        help="declare users.csv column kinds (numeric, categorical) over inference",
    )
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    bundle = run_training(
        args.data, args.out, args.config, _overrides(args), progress=not args.no_progress
    )
    sys.stdout.write(f"{bundle}\n")
    return 0


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    """The TrainConfig fields the flags set (None: not given, the config file or default)."""
    return {
        "seed": args.seed,
        "device": args.device,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "loss": args.loss,
        "tower": args.tower,
        "hidden": args.hidden,
        "max_examples_per_user": args.max_examples_per_user,
        "item_schema": args.item_schema,
        "user_schema": args.user_schema,
    }


def run_training(
    data: Path, out: Path, config_file: Path | None, overrides: dict[str, object], progress: bool
) -> Path:
    """Train on ``data`` with the config file plus ``overrides``; the written bundle's path
    (under ``out``)."""
    from recall.trainer.config import load_config
    from recall.trainer.data import load_dataset
    from recall.trainer.export import export_bundle
    from recall.trainer.train import train

    config = load_config(config_file, overrides)
    dataset = load_dataset(data, config.item_schema, config.user_schema)
    trained = train(dataset, config, progress=progress)
    return export_bundle(trained, dataset, config, out)
