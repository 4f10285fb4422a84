"""``recall publish``: verify a bundle and make it ``CURRENT`` (also the rollback)."""

from __future__ import annotations

import argparse
from pathlib import Path

from recall.cli.command import Subcommands, add_command
from recall.cli.users import add_state_url


def add_parser(sub: Subcommands) -> None:
    pub = add_command(sub, "publish", run, "verify a bundle and make it CURRENT (also rollback)")
    pub.add_argument("bundle", type=Path, help="ROOT/<bundle-id>")
    pub.add_argument("--keep", type=int, default=3, help="bundles to keep (CURRENT always)")
    add_state_url(pub)


def run(args: argparse.Namespace) -> int:
    from recall.cli.users import user_sink
    from recall.index.publish import publish

    with user_sink(args) as users:
        publish(args.bundle, keep=args.keep, users=users)
    return 0
