"""The state store a publish loads the bundle's users into (``--state-url`` or
``RECALL_STATE_URL``): Redis keeps them, SQLite and no URL leave them in the bundle."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from recall.cli.command import StoreDidNotAnswer

if TYPE_CHECKING:  # imported when a publish runs, not when the parser is built
    from recall.index.publish import UserSink
    from recall.index.verify import VerifiedBundle
    from recall.service.state.users import UserLoader

ENV = "RECALL_STATE_URL"


def add_state_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-url",
        help=f"the replicas' state store (default ${ENV}); with Redis, the bundle's users "
        "are loaded into it before CURRENT changes",
    )


class _Sink:
    """A :class:`UserLoader` whose store trouble is one error line naming the setting."""

    def __init__(self, loader: UserLoader, setting: str) -> None:
        self.loader, self.setting = loader, setting

    def load(self, verified: VerifiedBundle) -> object:
        from recall.service.state import StoreUnavailable

        try:
            return self.loader.load(verified)
        except StoreUnavailable as e:
            raise StoreDidNotAnswer(f"{self.setting}: {e}; nothing was published") from None

    def drop(self, bundle_ids: Iterable[str]) -> None:
        self.loader.drop(bundle_ids)


@contextmanager
def user_sink(args: argparse.Namespace) -> Iterator[UserSink | None]:
    """Where ``args`` (``--state-url``, else ``$RECALL_STATE_URL``) puts the users: a
    reachable Redis, or None (no URL, SQLite). A URL that does not parse or a store that
    does not answer is a ValueError naming the setting (the command exits 2)."""
    from recall.service.state import StoreUnavailable, check_url
    from recall.service.state.redis_client import check_reachable
    from recall.service.state.users import UserLoader

    url = args.state_url or os.environ.get(ENV) or None
    setting = "--state-url" if args.state_url else ENV
    if url is None:
        yield None
        return
    try:
        backend = check_url(url)
    except ValueError as e:
        raise ValueError(f"{setting}: {e}") from None
    if backend == "sqlite":  # one host: the replica maps the bundle's user files
        yield None
        return
    try:
        check_reachable(url, setting)  # a cluster URL: a node answers and is in a cluster
        loader = UserLoader(url)
        loader.ping()
    except StoreUnavailable as e:
        raise StoreDidNotAnswer(
            f"{setting}: the state store did not answer ({e}); nothing was published"
        ) from None
    try:
        yield _Sink(loader, setting)
    finally:
        loader.close()
