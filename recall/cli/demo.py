"""``recall demo``: the whole pipeline on synthetic data, from ``synth`` to ``serve``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from recall.cli.command import Subcommands, add_command
from recall.cli.eval import run_eval
from recall.cli.serve import check_port_free, run_server
from recall.cli.train import run_training

logger = logging.getLogger("recall")


def add_parser(sub: Subcommands) -> None:
    demo = add_command(sub, "demo", run, "the whole pipeline on built-in synthetic data")
    demo.add_argument(
        "--workdir", type=Path, default=Path("runs/demo"), help="where it all goes (%(default)s)"
    )
    demo.add_argument("--users", type=int, default=5_000, help="users to synthesize (%(default)s)")
    demo.add_argument("--items", type=int, default=2_000, help="items to synthesize (%(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="seed of data and training")
    demo.add_argument("--port", type=int, default=8000, help="port to serve on (%(default)s)")
    demo.add_argument("--no-serve", action="store_true", help="stop after publishing")


def run(args: argparse.Namespace) -> int:
    from recall.index.build import build_index
    from recall.index.publish import publish
    from recall.trainer.synth import SynthConfig, write_synthetic

    work: Path = args.workdir
    if not args.no_serve:  # before minutes of training, not after
        check_port_free("127.0.0.1", args.port, "--port")
    data = work / "data"
    if not (data / "interactions.csv").exists():
        logger.info("demo: synthesizing %d users x %d items into %s", args.users, args.items, data)
        write_synthetic(data, SynthConfig(n_users=args.users, n_items=args.items, seed=args.seed))
    else:  # --users and --items would otherwise be ignored without a word
        logger.info("demo: reusing the data in %s (remove it to synthesize new data)", data)
    logger.info("demo: training on %s", data)
    bundle = run_training(data, work / "bundles", None, {"seed": args.seed}, progress=True)
    assert bundle is not None  # one process: rank 0, the writer
    logger.info("demo: evaluating %s", bundle)
    run_eval(bundle, data, work / f"eval-{bundle.name}.json", None)
    logger.info("demo: building the index of %s", bundle)
    build_index(bundle)
    publish(bundle)
    logger.info("demo: published %s as %s", bundle.name, bundle.parent / "CURRENT")
    if not args.no_serve:
        run_server(bundle.parent, "127.0.0.1", args.port, 1)
    return 0
