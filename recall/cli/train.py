"""``recall train``: train the model on a data directory and write a bundle.

Under ``torchrun`` every process runs this command; rank 0 writes the bundle and prints
its path (docs/training.md).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from recall.cli.command import Subcommands, add_command

logger = logging.getLogger(__name__)


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
        help="user tower: mean + self-attention over the history (default), or its mean only",
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
    tr.add_argument(
        "--resume",
        action="store_true",
        help="continue from the checkpoint under --out if there is one (same config, data "
        "and number of processes), else start from the beginning",
    )
    tr.add_argument(
        "--checkpoint-steps",
        type=int,
        metavar="N",
        help="also checkpoint every N steps (always: after every epoch)",
    )
    tr.add_argument(
        "--collective-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="under torchrun: how long a rank waits for the others before it fails "
        "(default %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    from torch.distributed import DistError

    from recall.trainer.distributed import PeerLost

    if args.checkpoint_steps is not None and args.checkpoint_steps < 1:
        raise ValueError(f"--checkpoint-steps must be at least 1, got {args.checkpoint_steps}")
    if args.collective_timeout <= 0:
        raise ValueError(f"--collective-timeout must be positive, got {args.collective_timeout}")
    try:
        bundle = run_training(
            args.data,
            args.out,
            args.config,
            _overrides(args),
            progress=not args.no_progress,
            resume=args.resume,
            checkpoint_steps=args.checkpoint_steps,
            collective_timeout=args.collective_timeout,
        )
    except (PeerLost, DistError) as e:  # another rank died or hung: stop, write nothing
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        logger.error(
            "recall train: lost the other ranks (%s); no bundle was written; `recall train "
            "--resume` continues from the last checkpoint under %s",
            first_line,
            args.out,
        )
        return 1
    if bundle is not None:
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
    data: Path,
    out: Path,
    config_file: Path | None,
    overrides: dict[str, object],
    progress: bool,
    *,
    resume: bool = False,
    checkpoint_steps: int | None = None,
    collective_timeout: float = 300.0,
) -> Path | None:
    """Train on ``data`` with the config file plus ``overrides``, checkpointing under
    ``out``; the written bundle's path (under ``out``), None on ranks other than 0. The
    checkpoint is removed once the bundle is written."""
    from recall.trainer import distributed
    from recall.trainer.checkpoint import checkpoint_path, remove_leftovers
    from recall.trainer.config import load_config
    from recall.trainer.data import load_dataset
    from recall.trainer.export import export_bundle
    from recall.trainer.train import RunOptions, train

    config = load_config(config_file, overrides)
    ranks = distributed.from_environment()
    checkpoint = checkpoint_path(out)
    distributed.start(ranks, distributed.device_for(config.device, ranks), collective_timeout)
    if not ranks.is_writer:  # rank 0 tells the story; the others only warn and fail
        logging.getLogger("recall").setLevel(logging.WARNING)
    try:
        if ranks.is_writer:
            remove_leftovers(checkpoint)
        dataset = load_dataset(data, config.item_schema, config.user_schema)
        run = RunOptions(ranks, checkpoint, checkpoint_steps, resume)
        trained = train(dataset, config, progress=progress, run=run)
        if not ranks.is_writer:
            return None
        bundle = export_bundle(trained, dataset, config, out)
        checkpoint.unlink(missing_ok=True)
        if checkpoint.parent.exists() and not any(checkpoint.parent.iterdir()):
            checkpoint.parent.rmdir()
        return bundle
    finally:
        distributed.stop(ranks)
