"""``recall publish``: verify a bundle and make it ``CURRENT`` (also the rollback).

Exit codes past the usual (0 done, 2 bad input, 3 a store did not answer: the state store
the users go to, or an ``s3://`` root's object store; nothing switched): 4 another publish
replaced ``CURRENT`` meanwhile (this bundle is uploaded but not ``CURRENT``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from recall.cli.command import Subcommands, add_command
from recall.cli.users import add_state_url

if TYPE_CHECKING:
    from recall.index.publish import UserSink

logger = logging.getLogger("recall")

LOST_RACE = 4


def add_parser(sub: Subcommands) -> None:
    pub = add_command(sub, "publish", run, "verify a bundle and make it CURRENT (also rollback)")
    pub.add_argument(
        "bundle", help="ROOT/<bundle-id>: a local bundle, or s3://bucket/prefix/<id> (rollback)"
    )
    add_root_flags(pub)


def add_root_flags(parser: argparse.ArgumentParser) -> None:
    """``--root``, ``--keep`` and ``--state-url``, shared with ``recall build-index
    --publish``."""
    parser.add_argument(
        "--root",
        help="publish the local bundle to this root, e.g. s3://bucket/prefix "
        "(default: the bundle's parent directory)",
    )
    parser.add_argument("--keep", type=int, default=3, help="bundles to keep (CURRENT always)")
    add_state_url(parser)


def run(args: argparse.Namespace) -> int:
    from recall.cli.users import user_sink

    with user_sink(args) as users:
        return publish_bundle(args.bundle, args.root, keep=args.keep, users=users)


def publish_bundle(
    bundle: str | Path, root: str | None, *, keep: int, users: UserSink | None = None
) -> int:
    """Publish ``bundle`` to ``root`` (None: its parent; ``s3://.../<id>``: a rollback in
    the bucket), its ``users`` loaded first when given; the command's exit code."""
    from recall.index.roots import (
        PublishConflict,
        S3Location,
        S3Root,
        is_s3_url,
        open_root,
    )

    try:
        if isinstance(bundle, str) and is_s3_url(bundle):
            if root is not None:
                raise ValueError("--root goes with a local bundle, not an s3:// one")
            location = S3Location.parse(bundle)
            S3Root(location.parent).rollback(location.name, keep=keep, users=users)
        else:
            path = Path(bundle)
            open_root(root or str(path.absolute().parent)).publish(path, keep=keep, users=users)
    except PublishConflict as e:
        logger.error("recall publish: %s", e)
        return LOST_RACE
    return 0
