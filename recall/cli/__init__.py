"""The ``recall`` command line: one entry point (:func:`main`), one module per command.

The commands sit above the libraries: only this package may import
:mod:`recall.trainer`, :mod:`recall.service` and :mod:`recall.index` together. Each command
imports its implementation only when it runs, so the service's image (no torch, no
pyarrow) runs ``recall serve`` while ``recall train`` lives in the trainer's image.
Logging is configured here, once; every command logs as ``recall``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from recall.cli import (
    build_index,
    demo,
    eval,
    events,
    experiment,
    import_vectors,
    publish,
    serve,
    synth,
    train,
)
from recall.cli.command import STORE_DID_NOT_ANSWER, StoreDidNotAnswer
from recall.index.bundle import BundleError
from recall.index.roots import ObjectStoreUnavailable

__all__ = ["build_parser", "main"]

logger = logging.getLogger("recall")

INTERRUPTED = 130
"""The exit code after Ctrl-C (SIGINT), as a shell reports it: 128 + 2."""

COMMANDS = (
    demo,
    synth,
    train,
    import_vectors,
    eval,
    build_index,
    serve,
    publish,
    experiment,
    events,
)
"""The command modules, in the order ``recall --help`` lists them."""


def _version() -> str:
    try:
        return version("recall")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """Every subcommand and flag, each with a help line (tests/cli/test_cli.py checks)."""
    parser = argparse.ArgumentParser(
        prog="recall",
        description="Train, index and serve embeddings for candidate generation.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING"],
        help="log level on stderr (default %(default)s; DEBUG also shows faiss's loader)",
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="the job to run"
    )
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command ``argv`` names (default ``sys.argv[1:]``); the exit code: the
    command's own, 2 for bad input, 3 when a store did not answer, 130 on Ctrl-C (one
    error line each, no traceback)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.log_level != "DEBUG":  # its INFO lines list each CPU-specific module it tries
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        code: int = args.handler(args)
    except (BundleError, ValueError, OSError) as e:  # bad input: one line, no traceback
        logger.error("recall %s: %s", args.command, e)
        return 2
    except StoreDidNotAnswer as e:
        logger.error("recall %s: %s", args.command, e)
        return STORE_DID_NOT_ANSWER
    except ObjectStoreUnavailable as e:  # an s3:// root's object store, from any command
        logger.error("recall %s: the object store did not answer: %s", args.command, e)
        return STORE_DID_NOT_ANSWER
    except KeyboardInterrupt:  # Ctrl-C, in a long `recall train` say: no traceback
        logger.error("recall %s: interrupted", args.command)
        return INTERRUPTED
    return code
