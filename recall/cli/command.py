"""What every command module shares: how it adds its subcommand to the parser."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeAlias

Handler = Callable[[argparse.Namespace], int]
"""Runs a parsed command; returns the process exit code."""

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
