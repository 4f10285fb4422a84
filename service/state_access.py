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
from typing import Any, TypeVar

from recall.index.ids import ExternalId
from recall.service.domain_errors import StateDown
from recall.service.fresh import UserState
from recall.service.metrics import Metrics
from recall.service.recaller import ServingBundle
from recall.service.state import Event, StateStore, StoreUnavailable
from recall.service.state.users import StoreUsers

logger = logging.getLogger(__name__)

T = TypeVar("T")

WRITE_GUARD_S = 5.0
"""Outer bound on a write; the store's own write timeout (1 s) normally ends it first."""


class StateAccess:
    """Bounded, counted calls to one :class:`StateStore`, and to the ``users`` of the
    bundles that keep them in the store (Redis mode)."""

    def __init__(
        self,
        store: StateStore,
        metrics: Metrics,
        *,
        timeout_s: float,
        shown_ttl_s: float,
        log_every_s: float = 10.0,
        users: StoreUsers | None = None,
    ) -> None:
        self.store = store
        self.users = users
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.shown_ttl_s = shown_ttl_s
        self.log_every_s = log_every_s
        self._last_log = -math.inf
        self._unlogged = 0

    async def read(
        self,
        user_ids: Sequence[ExternalId],
        *,
        after: float,
        with_shown: bool,
        bundle: ServingBundle | None = None,
    ) -> UserState:
        """Recent interactions after ``after`` (unix seconds; ``-inf``: all the store
        keeps) and, when ``with_shown``, impressions within the shown TTL, for each user;
        and the users themselves when ``bundle`` keeps them in the store (read at the
        same time). Never raises for store trouble: returns empty lists and
        ``fresh=False`` (``users_down`` when the users could not be read)."""
        n = len(user_ids)
        empty = UserState([[] for _ in range(n)], [[] for _ in range(n)], True)
        if not n:
            return empty
        calls: list[Awaitable[Any]] = [self._bounded("recent", self.store.recent(user_ids, after))]
        if with_shown:
            since = time.time() - self.shown_ttl_s
            calls.append(self._bounded("shown", self.store.shown(user_ids, since)))
        shape = None if bundle is None else bundle.store_records
        if shape is not None and bundle is not None:
            if self.users is None:
                raise RuntimeError("a bundle with users in the store needs StateAccess.users")
            calls.append(self._bounded("users", self.users.read(bundle.id, shape, user_ids)))
        replies = await asyncio.gather(*calls)
        events = replies[0]
        shown = replies[1] if with_shown else empty.shown
        users = replies[-1] if shape is not None else None
        fresh = all(reply is not None for reply in replies)
        return UserState(
            events if events is not None else empty.events,
            shown if shown is not None else empty.shown,
            fresh,
            users if users is not None or shape is None else [None] * n,
            users_down=shape is not None and users is None,
        )

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
            {
                "availability": "recall applies the last known disabled items",
                "users": "recall by user id answers 503 (or the popular list when asked)",
            }.get(op, "recall answers from the bundle alone"),
        )
        self._last_log, self._unlogged = now, 0
