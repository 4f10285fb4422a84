"""What every command module shares: how it adds its subcommand to the parser, and the
exit codes past a command's own (0 done, 2 bad input)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeAlias

Handler = Callable[[argparse.Namespace], int]
"""Runs a parsed command; returns the process exit code."""

STORE_DID_NOT_ANSWER = 3
"""The exit code of :class:`StoreDidNotAnswer`."""


class StoreDidNotAnswer(Exception):
    """A store a command needs (the state store, an ``s3://`` root's object store) did not
    answer, so nothing was changed: ``recall`` prints this one line and exits 3 (the input
    may be fine: run it again later)."""


Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What ``ArgumentParser.add_subparsers`` returns."""


def add_command(
    sub: Subcommands, name: str, handler: Handler, help: str
) -> argparse.ArgumentParser:
    """Add subcommand ``name`` (its help line doubles as its description) that runs
    ``handler``; returns its parser, for the command's flags."""
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help, description=help)
    parser.set_defaults(handler=handler)
    return parser
