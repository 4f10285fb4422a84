"""The retraining log read out of a state store: a plain iterator of event batches.

Synchronous, for offline jobs (``recall events export``): one event loop drives the
store's async :meth:`~recall.service.state.base.StateStore.export` for the whole
iteration, so the log streams through in batches, never whole into memory. How the
events are written (the trainer's input format) is the caller's business.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Generator

from recall.service.state import open_store
from recall.service.state.base import DEFAULT_RETENTION_S, Event, StateStore

BATCH_EVENTS = 10_000
"""Most events in one yielded batch."""


def read_events(
    url: str,
    *,
    since: float | None = None,
    retention_s: float = DEFAULT_RETENTION_S,
    batch_size: int = BATCH_EVENTS,
) -> Generator[list[Event], None, None]:
    """Every event of the store at ``url`` (interactions and impressions, in log order)
    with timestamp >= ``since`` when given, that arrived within ``retention_s`` seconds,
    as lists of at most ``batch_size`` events. The store is opened on the first ``next``
    and closed when the iteration ends or the iterator is closed. Raises StoreUnavailable
    when the store cannot be read, ValueError for a bad URL."""
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    with asyncio.Runner() as runner:
        store = open_store(url, retention_s=retention_s)
        events = store.export(since)
        try:
            while batch := runner.run(_next_batch(events, batch_size)):
                yield batch
        finally:
            runner.run(_close(events, store))


async def _next_batch(events: AsyncIterator[Event], size: int) -> list[Event]:
    batch: list[Event] = []
    async for event in events:  # leaving the loop early does not close the iterator
        batch.append(event)
        if len(batch) == size:
            break
    return batch


async def _close(events: AsyncIterator[Event], store: StateStore) -> None:
    try:
        if isinstance(events, AsyncGenerator):
            await events.aclose()
    finally:
        await store.close()
