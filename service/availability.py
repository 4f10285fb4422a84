"""Item availability at run time: the items no answer may contain, on every replica.

The disabled item ids live in the state store (``set_availability``; keyed by external
id, so they outlive a bundle), with a version bumped by every change. Each app process
polls that version every ``poll_s`` seconds (``RECALL_AVAILABILITY_POLL_S``) and reads the
set again when it moved, so a change reaches every replica within about one poll period.
:meth:`Availability.available_items` turns the set into the allowed items of a bundle
(:class:`~recall.index.allowed.AllowedItems`), cached per (bundle id, version): the recall paths
AND it into their filter's.

A store that cannot be read keeps the last known set (never an empty one: a down store
must not bring disabled items back), counted in ``recall_state_errors_total{op=
"availability"}`` and logged at most once per 10 s
(:class:`~recall.service.state_access.StateAccess`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from contextlib import suppress

import numpy as np

from recall.index.allowed import AllowedItems
from recall.index.ids import ExternalId
from recall.service.recaller import ServingBundle
from recall.service.state import StoreUnavailable
from recall.service.state_access import StateAccess

logger = logging.getLogger(__name__)

CACHED_MASKS = 4
"""Masks kept: a reload briefly serves two bundles, a change two versions."""


class Availability:
    """The disabled items as this process last read them, and their masks per bundle."""

    def __init__(self, access: StateAccess, poll_s: float) -> None:
        self.access = access
        self.poll_s = poll_s
        self.version = -1  # nothing read yet; the store's versions start at 0
        self.disabled: tuple[ExternalId, ...] = ()
        self._masks: dict[tuple[str, int], AllowedItems | None] = {}
        self._lock = threading.Lock()  # available_items() runs in the search threads
        self._task: asyncio.Task[None] | None = None

    async def refresh(self) -> bool:
        """One poll: read the version, and the set when it moved. True when the set
        changed; False when it did not or the store could not be read (counted, logged)."""
        store = self.access.store
        try:
            async with asyncio.timeout(2 * store_bound(self.access)):
                version = await store.availability_version()
                if version == self.version:
                    return False
                version, disabled = await store.availability()
        except (StoreUnavailable, TimeoutError) as e:
            self.access.failed("availability", e)
            return False
        self.apply(version, disabled)
        return True

    def apply(self, version: int, disabled: Sequence[ExternalId]) -> None:
        """Use ``disabled`` as of ``version`` (an older version than the one held is
        ignored: two reads may finish out of order)."""
        with self._lock:
            if version < self.version:
                return
            if version != self.version:
                logger.info("item availability version %d: %d disabled", version, len(disabled))
            self.version, self.disabled = version, tuple(disabled)

    def available_items(self, bundle: ServingBundle) -> AllowedItems | None:
        """The items of ``bundle`` that may be returned (shared), or None when no item of
        the bundle is disabled."""
        with self._lock:
            version, disabled = self.version, self.disabled
            key = (bundle.id, version)
            if key in self._masks:
                return self._masks[key]
        mask = disabled_mask(bundle, disabled)
        items = None if mask is None else AllowedItems(mask)
        with self._lock:
            while len(self._masks) >= CACHED_MASKS:
                del self._masks[next(iter(self._masks))]  # the oldest
            self._masks[key] = items
        return items

    async def start(self) -> None:
        """Read the set once (before the first request: a restarted replica must not serve
        disabled items until its first poll), then poll in the background."""
        await self.refresh()
        self._task = asyncio.create_task(self._poll())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.refresh()
            except Exception:  # a bug must not end the polling for good
                logger.exception("availability poll failed")


def store_bound(access: StateAccess) -> float:
    """Seconds a poll may take: the store's write bound (its availability calls use it)."""
    bound = getattr(access.store, "write_timeout_s", 1.0)
    return float(bound)


def disabled_mask(bundle: ServingBundle, disabled: Sequence[ExternalId]) -> np.ndarray | None:
    """Bool (n_items,): False at the rows of ``disabled`` ids the bundle knows, read-only;
    None when it knows none of them."""
    if not disabled:
        return None
    rows = bundle.item_ids.rows(list(disabled))
    rows = rows[rows >= 0]
    if not len(rows):
        return None
    mask = np.ones(len(bundle.item_ids), dtype=bool)
    mask[rows] = False
    mask.setflags(write=False)
    return mask


def unknown_ids(bundle: ServingBundle, ids: Sequence[ExternalId]) -> list[ExternalId]:
    """The ids of ``ids`` that ``bundle`` does not know, in order."""
    if not ids:
        return []
    rows = bundle.item_ids.rows(list(ids))
    return [i for i, r in zip(ids, rows.tolist(), strict=True) if r < 0]
