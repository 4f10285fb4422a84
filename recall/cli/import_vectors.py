"""``recall import``: a bundle from vectors made elsewhere (MF, item2vec, graph embeddings).

Reads the files (:mod:`recall.trainer.import_files`, pyarrow, only for this command), checks
and writes the bundle (:mod:`recall.index.importer`); prints its path. The bundle then goes
through ``recall build-index`` and ``recall publish`` like a trained one.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from recall.cli.command import Subcommands, add_command


def add_parser(sub: Subcommands) -> None:
    imp = add_command(
        sub, "import", run, "write a bundle from item (and user) vectors made elsewhere"
    )
    imp.add_argument(
        "--items", type=Path, required=True, help="item vectors: .npz (ids, vectors) or .parquet"
    )
    imp.add_argument("--users", type=Path, help="user vectors (same formats), e.g. MF factors")
    imp.add_argument("--out", type=Path, required=True, help="bundle root")
    imp.add_argument(
        "--metric",
        choices=["ip", "cosine"],
        default="ip",
        help="ip: scores are inner products; cosine: vectors normalized here (default ip)",
    )
    imp.add_argument(
        "--interactions",
        type=Path,
        help="user_id,item_id,timestamp (.csv/.parquet): seen items, popularity, user windows",
    )
    imp.add_argument(
        "--item-attributes", type=Path, help="items.csv / .parquet: item_id + attribute columns"
    )
    imp.add_argument(
        "--id-column", help="the ids' array (.npz, default ids) or column (.parquet, default id)"
    )
    imp.add_argument(
        "--vector-column",
        help="the vectors' array (.npz, default vectors) or column (.parquet, default vector)",
    )
    imp.add_argument(
        "--history-length",
        type=int,
        default=50,
        help="a history's query vector is the mean of its last N items' vectors (default 50)",
    )
    imp.add_argument(
        "--trained-until",
        type=float,
        help="unix seconds: later events are fresh (default: the last interaction, else now)",
    )
    imp.add_argument("--model", help="what made the vectors, for the manifest (e.g. 'ALS')")


def run(args: argparse.Namespace) -> int:
    from recall.index.ids import IdMap
    from recall.index.importer import METRICS, ImportOptions, import_bundle
    from recall.trainer.import_files import read_interactions, read_item_attributes, read_vectors

    items = read_vectors(args.items, args.id_column, args.vector_column)
    users = read_vectors(args.users, args.id_column, args.vector_column) if args.users else None
    interactions = read_interactions(args.interactions) if args.interactions else None
    attributes = None
    if args.item_attributes:
        attributes = read_item_attributes(args.item_attributes, IdMap(items.ids))
    options = ImportOptions(
        metric=METRICS[args.metric],
        history_length=args.history_length,
        trained_until=args.trained_until,
        model=args.model,
        command=_command(args),
    )
    bundle = import_bundle(args.out, items, users, interactions, attributes, options)
    sys.stdout.write(f"{bundle}\n")
    return 0


def _command(args: argparse.Namespace) -> str:
    """The command line, flags in a fixed order, as the manifest records it."""
    words = ["recall", "import"]
    for flag in (
        "items",
        "users",
        "out",
        "metric",
        "interactions",
        "item_attributes",
        "id_column",
        "vector_column",
        "history_length",
        "trained_until",
        "model",
    ):
        value = getattr(args, flag)
        if value is not None:
            words += [f"--{flag.replace('_', '-')}", str(value)]
    return shlex.join(words)
