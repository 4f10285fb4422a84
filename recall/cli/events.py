"""``recall events export``: the state store's interactions as the trainer's input.

The glue of two layers: :func:`recall.service.state.retraining_log.read_events` reads the
log out of the store, :func:`recall.trainer.input_files.write_interactions` writes the
trainer's ``interactions.csv``; impressions are not interactions and are skipped here.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Generator, Iterable, Iterator
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING

from recall.cli.command import StoreDidNotAnswer, Subcommands

if TYPE_CHECKING:
    from recall.service.state import Event
    from recall.trainer.input_files import Row

logger = logging.getLogger("recall")


def add_parser(sub: Subcommands) -> None:
    events = sub.add_parser(
        "events", help="the live events of the state store", description="live events"
    )
    events_sub = events.add_subparsers(
        dest="events_command", required=True, metavar="ACTION", help="what to do"
    )
    exp = events_sub.add_parser(
        "export",
        help="write the stored interactions as DIR/interactions.csv (the trainer's input)",
        description="write the stored interactions as DIR/interactions.csv (the trainer's "
        "input); impressions are skipped; exit 3 when the store is unavailable",
    )
    exp.set_defaults(handler=export)
    exp.add_argument("--state-url", required=True, help="sqlite:///path or redis://host:port/db")
    exp.add_argument("--out", type=Path, required=True, help="output directory")
    exp.add_argument("--since", type=float, help="only events at or after this unix time")
    exp.add_argument(
        "--with-data",
        type=Path,
        help="data directory to merge: its interactions first, its users/items copied",
    )


class _Interactions:
    """The interactions of event batches as rows; counts the impressions it skips."""

    def __init__(self, batches: Iterable[list[Event]]) -> None:
        self.batches = batches
        self.impressions_skipped = 0

    def __iter__(self) -> Iterator[Row]:
        for batch in self.batches:
            for event in batch:
                if event.type != "interaction":
                    self.impressions_skipped += 1
                    continue
                yield event.user_id, event.item_id, event.timestamp


def _sqlite_exists(path: Path) -> bool:
    """Whether the SQLite store at ``path`` has been created. Not yet (the service has not
    run; its directory may not exist either): nothing to export, and nothing is created,
    said in a warning that names the path (a typo shows there). A path under a file is
    left to the store to report (exit 3)."""
    if path.exists() or any(p.exists() and not p.is_dir() for p in path.parents):
        return True
    logger.warning("events export: no state store at %s yet: no events to export", path)
    return False


def _no_events() -> Generator[list[Event], None, None]:
    yield from ()


def export(args: argparse.Namespace) -> int:
    from recall.service.settings import load_event_log_settings
    from recall.service.state import StoreUnavailable, check_url, sqlite_path
    from recall.service.state.redis_client import check_reachable
    from recall.service.state.retraining_log import read_events
    from recall.trainer.input_files import write_interactions

    retention_s = load_event_log_settings().events_retention_s
    try:
        backend = check_url(args.state_url)
    except ValueError as e:
        raise ValueError(f"--state-url: {e}") from None
    if backend == "sqlite" and not _sqlite_exists(sqlite_path(args.state_url)):
        events = _no_events()
    else:
        events = read_events(args.state_url, since=args.since, retention_s=retention_s)
    try:
        check_reachable(args.state_url, "--state-url")  # not a cluster: 2; no node up: 3
        with closing(events):
            interactions = _Interactions(events)
            written = write_interactions(args.out, interactions, with_data=args.with_data)
    except StoreUnavailable as e:  # exit 3: the store, not the input (train-and-publish.sh)
        raise StoreDidNotAnswer(f"the state store did not answer: {e}") from None
    logger.info(
        "events export: %s: %d data rows, %d events (%d impressions skipped)",
        written.path,
        written.data_rows,
        written.rows,
        interactions.impressions_skipped,
    )
    sys.stdout.write(f"{written.path}\n")
    return 0
