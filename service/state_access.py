"""The HTTP layer's use of the state store: every call bounded, failures counted and logged.

A read that fails (store down, slow past its timeout, any :class:`StoreUnavailable`)
gives no events: recall then answers from the bundle alone and says ``"fresh": false``
(counted per user in ``recall_unfresh_answers_total{reason}``). A write that fails raises
:class:`~recall.service.domain_errors.StateDown` (503). Each failure counts in
``recall_state_errors_total{op}``; the log gets one line per ``log_every_s`` at most (the
count of failures since the last line included), so a dead store cannot flood it.

:meth:`StateAccess.run_with_state` is what the routes use: the read and the work that
needs it in one hand-off to a search thread when the store reads in the caller's thread
(SQLite), else the read on the event loop (Redis: network I/O) and then the hand-off.
:meth:`StateAccess.run_and_remember` also keeps the lists a recall by user id served (in
that search thread for SQLite, one pipelined write after it for Redis); a list that
could not be kept never fails the recall: it is counted in
``recall_live_unremembered_total{reason}``.

Users are named by the ids the store keys them by (as control's bundle types them); the
users of a bundle kept in the store (Redis mode) are read as that bundle types them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, TypeVar

from recall.index.ids import ExternalId
from recall.service.domain_errors import StateDown
from recall.service.fresh import UserState
from recall.service.metrics import Metrics
from recall.service.pool import SearchPool
from recall.service.recaller import ServingBundle
from recall.service.state import (
    Event,
    LiveCount,
    ReadsInThread,
    ServedList,
    StateStore,
    StoreTimeout,
    StoreUnavailable,
)
from recall.service.state.redis import RedisStore
from recall.service.state.users import StoreUsers
from recall.service.users import StoredUser

logger = logging.getLogger(__name__)

T = TypeVar("T")

Served = tuple[T, Sequence[ServedList]]
"""What a recall's work returns to :meth:`StateAccess.run_and_remember`: its answer and the
lists it served to users by id."""

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

    @property
    def store(self) -> StateStore:
        return self._store

    @store.setter
    def store(self, store: StateStore) -> None:
        self._store = store
        # checked once: isinstance against a Protocol costs microseconds
        self._in_thread = store if isinstance(store, ReadsInThread) else None
        self._sharded = isinstance(store, RedisStore) and store.cluster

    async def run_with_state(
        self,
        pool: SearchPool,
        user_ids: Sequence[ExternalId],
        fn: Callable[[UserState], T],
        *,
        after: float,
        with_shown: bool,
        bundle: ServingBundle | None = None,
    ) -> T:
        """``fn(state of user_ids)`` in a search thread (:meth:`read` says what the state
        holds). A store that reads in the caller's thread (SQLite) is read in that search
        thread first, its bound starting then: one hand-off, and no queue in front of the
        read counts against the store. Others (Redis), and a ``bundle`` whose users live in
        the store, are read on the event loop first."""
        store = self._in_thread
        users_in_store = bundle is not None and bundle.store_records is not None
        if store is None or not user_ids or users_in_store:
            state = await self.read(user_ids, after=after, with_shown=with_shown, bundle=bundle)
            return await pool.run(fn, state)
        return await pool.run(self._read_then, store, user_ids, fn, after, with_shown)

    async def run_and_remember(
        self,
        pool: SearchPool,
        user_ids: Sequence[ExternalId],
        fn: Callable[[UserState], Served[T]],
        *,
        after: float,
        with_shown: bool,
        bundle: ServingBundle | None = None,
    ) -> T:
        """:meth:`run_with_state`, and the lists ``fn`` served remembered before this
        returns (so an event posted after the answer finds them): in the search thread
        for a store that writes there (SQLite), else one store call after it. Not tried
        for a user whose state could not be read (the store down or slow; on a cluster,
        that user's shard): counted as ``unread``."""
        store = self._in_thread
        work = partial(self._answer_then_remember, fn, store, user_ids)
        out, pending = await self.run_with_state(
            pool, user_ids, work, after=after, with_shown=with_shown, bundle=bundle
        )
        if pending:
            await self.remember(pending)
        return out

    def _answer_then_remember(
        self,
        fn: Callable[[UserState], Served[T]],
        store: ReadsInThread | None,
        user_ids: Sequence[ExternalId],
        state: UserState,
    ) -> tuple[T, Sequence[ServedList]]:
        """In the search thread: ``fn(state)`` (the state of ``user_ids``), the lists of its
        users that were read remembered here when ``store`` writes in this thread; the
        lists still to remember otherwise."""
        out, lists = fn(state)
        if not state.fresh:
            lists = self._of_read_users(lists, user_ids, state)
        if not lists:
            return out, ()
        if store is None:
            return out, lists
        try:
            store.remember_in_thread(lists)
        except StoreUnavailable as e:
            self._count_unremembered(e, len(lists))
        return out, ()

    def _of_read_users(
        self, lists: Sequence[ServedList], user_ids: Sequence[ExternalId], state: UserState
    ) -> Sequence[ServedList]:
        """The ``lists`` of the users whose state was read (all of ``user_ids`` failed
        unless ``state.unread`` names some); the others counted as unread."""
        unread = {user_ids[j] for j in state.unread}
        kept = [s for s in lists if s.user_id not in unread] if unread else []
        if len(kept) < len(lists):
            self.metrics.live_unremembered.labels("unread").inc(len(lists) - len(kept))
        return kept

    async def remember(self, lists: Sequence[ServedList]) -> None:
        """Keep ``lists`` as their users' last served lists; never raises for store
        trouble (counted)."""
        done = await self._bounded("remember", self.store.remember(lists))
        if isinstance(done, Exception):
            self._count_unremembered(done, len(lists))

    def _count_unremembered(self, error: BaseException, lists: int) -> None:
        self.failed("remember", error)
        timeout = isinstance(error, StoreTimeout | TimeoutError)
        self.metrics.live_unremembered.labels("timeout" if timeout else "unavailable").inc(lists)

    async def served(self, user_ids: Sequence[ExternalId]) -> list[ServedList | None] | None:
        """Each user's last served list (None: none, or older than the TTL); None when the
        store could not be read (counted)."""
        if not user_ids:
            return []
        reply = await self._bounded("served", self.store.served(user_ids))
        return None if isinstance(reply, Exception) else reply

    async def live_counts(self, experiment_id: str) -> list[LiveCount]:
        """The live counts of an experiment (``""``: none), or raise :class:`StateDown`."""
        try:
            async with asyncio.timeout(WRITE_GUARD_S):
                return await self.store.live_counts(experiment_id)
        except (StoreUnavailable, TimeoutError) as e:
            self.failed("live_counts", e)
            raise StateDown("the state store is unavailable; retry later") from None

    def _read_then(
        self,
        store: ReadsInThread,
        user_ids: Sequence[ExternalId],
        fn: Callable[[UserState], T],
        after: float,
        with_shown: bool,
    ) -> T:
        since = time.time() - self.shown_ttl_s if with_shown else None
        try:
            events, shown = store.read_in_thread(user_ids, after, since)
        except StoreUnavailable as e:
            for op in ("recent", "shown") if with_shown else ("recent",):  # neither was read
                self.failed(op, e)
            self._count_unfresh(e, len(user_ids))
            return fn(UserState.empty(len(user_ids), fresh=False))
        if shown is None:
            return fn(UserState(events, [[] for _ in user_ids], True))
        return fn(UserState(events, shown, True))

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
        ``fresh=False`` (``users_down`` when the users could not be read). On a Redis
        Cluster a read of several users that failed (one shard down fails the whole
        pipeline) is made again a user at a time: only the users it cannot read go
        without (``unread``), at the cost of one more read bound."""
        n = len(user_ids)
        if not n:
            return UserState.empty(0)
        if bundle is not None and bundle.store_records is not None and self.users is None:
            raise RuntimeError("a bundle with users in the store needs StateAccess.users")
        state, error = await self._read(user_ids, after, with_shown, bundle)
        if error is not None and n > 1 and self._sharded:
            alone = await asyncio.gather(
                *(self._read([user], after, with_shown, bundle) for user in user_ids)
            )
            errors = [e for _, e in alone if e is not None]
            if len(errors) < n:  # some users' shards answered
                state = _joined(alone)
                error, n = (errors[0] if errors else None), len(errors)
        if error is not None:
            self._count_unfresh(error, n)
        return state

    async def _read(
        self,
        user_ids: Sequence[ExternalId],
        after: float,
        with_shown: bool,
        bundle: ServingBundle | None,
    ) -> tuple[UserState, Exception | None]:
        """The state of ``user_ids`` (each part read concurrently), and the first error of
        the parts that failed (logged and counted per part), None when none did."""
        n = len(user_ids)
        empty = UserState.empty(n)
        calls: list[Awaitable[Any]] = [self._bounded("recent", self.store.recent(user_ids, after))]
        if with_shown:
            since = time.time() - self.shown_ttl_s
            calls.append(self._bounded("shown", self.store.shown(user_ids, since)))
        shape = None if bundle is None else bundle.store_records
        if shape is not None and bundle is not None and self.users is not None:
            typed = [bundle.user_ids.canonical(u) for u in user_ids]  # as its records are keyed
            calls.append(self._bounded("users", self.users.read(bundle.id, shape, typed)))
        raw = await asyncio.gather(*calls)
        error = next((r for r in raw if isinstance(r, Exception)), None)
        replies = [None if isinstance(r, Exception) else r for r in raw]
        events = replies[0]
        shown = replies[1] if with_shown else empty.shown
        users = replies[-1] if shape is not None else None
        state = UserState(
            events if events is not None else empty.events,
            shown if shown is not None else empty.shown,
            error is None,
            users if users is not None or shape is None else [None] * n,
            users_down=shape is not None and users is None,
        )
        return state, error

    async def add(self, events: Sequence[Event], live: Sequence[LiveCount] = ()) -> bool:
        """Store ``events`` and the ``live`` counts they make (durable when this returns),
        or raise :class:`StateDown`; whether the counts were stored too (the store's
        ``add``)."""
        try:
            async with asyncio.timeout(WRITE_GUARD_S):
                return await self.store.add(events, live)
        except (StoreUnavailable, TimeoutError) as e:
            self.failed("add", e)
            raise StateDown(
                "the state store is unavailable: the events were not stored; retry later"
            ) from None

    async def _bounded(self, op: str, call: Awaitable[T]) -> T | Exception:
        """``await call`` within twice the read timeout (the store bounds it by the read
        timeout itself; this is the backstop); on store trouble, counted and logged, the
        error."""
        try:
            async with asyncio.timeout(2 * self.timeout_s):
                return await call
        except (StoreUnavailable, TimeoutError) as e:
            self.failed(op, e)
            return e

    def _count_unfresh(self, error: BaseException, users: int) -> None:
        """``users`` answers go without the store's state because of ``error``."""
        timeout = isinstance(error, StoreTimeout | TimeoutError)
        self.metrics.unfresh.labels("timeout" if timeout else "unavailable").inc(users)

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


def _joined(alone: Sequence[tuple[UserState, Exception | None]]) -> UserState:
    """One state of users read one at a time, ``(their state, the error of its read)``
    each: a user whose read failed in any part goes without all of it (``unread``)."""
    events: list[list[tuple[ExternalId, float]]] = []
    shown: list[list[ExternalId]] = []
    users: list[StoredUser | None] = []
    for state, error in alone:
        failed = error is not None
        events.append([] if failed else state.events[0])
        shown.append([] if failed else state.shown[0])
        users.append(None if failed or state.users is None else state.users[0])
    unread = frozenset(j for j, (_, error) in enumerate(alone) if error is not None)
    in_store = alone[0][0].users is not None
    return UserState(
        events,
        shown,
        not unread,
        users if in_store else None,
        users_down=in_store and bool(unread),
        unread=unread,
    )
