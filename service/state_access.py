"""The HTTP layer's use of the state store: every call bounded, failures counted and logged.

A read that fails (store down, slow past its timeout, any :class:`StoreUnavailable`)
returns None: recall then answers from the bundle alone and says ``"fresh": false``. A
write that fails raises :class:`~recall.service.domain_errors.StateDown` (503). Each
failure counts in ``recall_state_errors_total{op}``; the log gets one line per
``log_every_s`` at most (the count of failures since the last line included), so a dead
store cannot flood it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Sequence
from typing import TypeVar

from recall.index.ids import ExternalId
from recall.service.domain_errors import StateDown
from recall.service.fresh import UserState
from recall.service.metrics import Metrics
from recall.service.state import Event, StateStore, StoreUnavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")

WRITE_GUARD_S = 5.0
"""Outer bound on a write; the store's own write timeout (1 s) normally ends it first."""


class StateAccess:
    """Bounded, counted calls to one :class:`StateStore`."""

    def __init__(
        self,
        store: StateStore,
        metrics: Metrics,
        *,
        timeout_s: float,
        shown_ttl_s: float,
        log_every_s: float = 10.0,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.shown_ttl_s = shown_ttl_s
        self.log_every_s = log_every_s
        self._last_log = -math.inf
        self._unlogged = 0

    async def read(
        self, user_ids: Sequence[ExternalId], *, after: float, with_shown: bool
    ) -> UserState:
        """Recent interactions after ``after`` (unix seconds; ``-inf``: all the store
        keeps) and, when ``with_shown``, impressions within the shown TTL, for each user.
        Never raises for store trouble: returns empty lists and ``fresh=False``."""
        n = len(user_ids)
        empty = UserState([[] for _ in range(n)], [[] for _ in range(n)], True)
        if not n:
            return empty
        recent = self._bounded("recent", self.store.recent(user_ids, after))
        if not with_shown:
            events = await recent
            if events is None:
                return UserState(empty.events, empty.shown, False)
            return UserState(events, empty.shown, True)
        since = time.time() - self.shown_ttl_s
        events, shown = await asyncio.gather(
            recent, self._bounded("shown", self.store.shown(user_ids, since))
        )
        if events is None or shown is None:
            return UserState(events or empty.events, shown or empty.shown, False)
        return UserState(events, shown, True)

    async def add(self, events: Sequence[Event]) -> None:
        """Store ``events`` (durable when this returns), or raise :class:`StateDown`."""
        try:
            async with asyncio.timeout(WRITE_GUARD_S):
                await self.store.add(events)
        except (StoreUnavailable, TimeoutError) as e:
            self.failed("add", e)
            raise StateDown(
                "the state store is unavailable: the events were not stored; retry later"
            ) from None

    async def _bounded(self, op: str, call: Awaitable[T]) -> T | None:
        """``await call`` within twice the read timeout (the store bounds it by the read
        timeout itself; this is the backstop), None on store trouble."""
        try:
            async with asyncio.timeout(2 * self.timeout_s):
                return await call
        except (StoreUnavailable, TimeoutError) as e:
            self.failed(op, e)
            return None

    async def set_availability(
        self, disable: Sequence[ExternalId], enable: Sequence[ExternalId]
    ) -> int:
        """Disable/enable items (new availability version), or raise :class:`StateDown`."""
        try:
            async with asyncio.timeout(WRITE_GUARD_S):
                return await self.store.set_availability(disable, enable)
        except (StoreUnavailable, TimeoutError) as e:
            self.failed("availability", e)
            raise StateDown(
                "the state store is unavailable: availability was not changed; retry later"
            ) from None

    async def availability(self) -> tuple[int, list[ExternalId]]:
        """``(version, disabled ids)`` from the store, or raise :class:`StateDown`."""
        try:
            async with asyncio.timeout(WRITE_GUARD_S):
                return await self.store.availability()
        except (StoreUnavailable, TimeoutError) as e:
            self.failed("availability", e)
            raise StateDown("the state store is unavailable; retry later") from None

    def failed(self, op: str, error: BaseException) -> None:
        """Count a failed store call (``op``: a ``recall_state_errors_total`` label) and log
        it, at most one line per ``log_every_s``."""
        self.metrics.state_errors.labels(op).inc()
        now = time.monotonic()
        if now - self._last_log < self.log_every_s:
            self._unlogged += 1
            return
        logger.warning(
            "state store unavailable (%s: %s); %d more failure(s) since the last message; %s",
            op,
            str(error) or type(error).__name__,
            self._unlogged,
            "recall applies the last known disabled items"
            if op == "availability"
            else "recall answers from the bundle alone",
        )
        self._last_log, self._unlogged = now, 0
