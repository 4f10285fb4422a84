"""The state store's contract: what happened since the bundle was trained.

One small interface (:class:`StateStore`), two backends chosen by URL (``sqlite:`` embedded,
``redis://`` shared by replicas). Every call is a batch; the only error a caller must handle
for store trouble (down, slow, locked, full disk) is :class:`StoreUnavailable`. Bad
arguments (an id that is neither int nor str, a non-finite timestamp) raise
``TypeError``/``ValueError``: those are bugs of the caller, not store trouble.
"""

from __future__ import annotations

import math
import operator
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, SupportsIndex, runtime_checkable

from recall.index.ids import ExternalId

EventType = Literal["interaction", "impression"]
EVENT_TYPES: tuple[EventType, ...] = ("interaction", "impression")

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

DEFAULT_RETENTION_S = 30 * 86400.0
"""How long the retraining log keeps an event after it arrived (seconds, wall clock): the
default of ``RECALL_EVENTS_RETENTION_S`` (:class:`recall.service.settings.Settings`)."""

DEFAULT_SERVED_TTL_S = 86400.0
"""How long a user's served list counts live hits (seconds, wall clock): the default of
``RECALL_SERVED_TTL_S``."""

LIVE_KS: tuple[int, ...] = (10, 50, 100)
"""The cut-offs of live hits: an event is a hit at K when its item's rank in the served
list is < K; a served list keeps the top ``LIVE_KS[-1]``."""

DEFAULT_WRITE_TIMEOUT_S = 1.0
"""Bound on a write (``add``), ``ping`` and each page of ``export``: a write waits for the
disk (SQLite's fsync, another worker's write lock) and a refused write costs the client a
retry, so it gets longer than the read bound ``timeout_s`` that guards recall latency."""


@dataclass(frozen=True, slots=True)
class StoreLimits:
    """What a backend keeps and how long it may take: per user the last ``window``
    interactions, impressions for ``shown_ttl_s``, the retraining log for ``retention_s``
    and the last served list for ``served_ttl_s`` (seconds, wall clock); reads bounded by
    ``timeout_s``, writes, ``ping`` and each page of ``export`` by ``write_timeout_s``."""

    window: int
    shown_ttl_s: float
    retention_s: float
    timeout_s: float
    write_timeout_s: float
    served_ttl_s: float = DEFAULT_SERVED_TTL_S


@dataclass(frozen=True, slots=True)
class Event:
    """One thing a user did: ``timestamp`` in unix seconds."""

    user_id: ExternalId
    item_id: ExternalId
    timestamp: float
    type: EventType = "interaction"


@dataclass(frozen=True, slots=True)
class ServedList:
    """What the last recall by user id returned to a user: the top ``LIVE_KS[-1]`` item
    ids in rank order, the experiment (``""``: none), arm and bundle that answered, and
    ``served_at`` (unix seconds)."""

    user_id: ExternalId
    experiment_id: str
    arm: str
    bundle_id: str
    item_ids: tuple[ExternalId, ...]
    served_at: float


@dataclass(frozen=True, slots=True)
class LiveCount:
    """Live events of one (experiment, arm, bundle, time bucket) and their hits at each K
    of :data:`LIVE_KS` (``hits[j]``: at ``LIVE_KS[j]``); ``bucket``: its start, unix s."""

    experiment_id: str
    arm: str
    bundle_id: str
    bucket: float
    events: int
    hits: tuple[int, ...]


class StoreUnavailable(Exception):
    """The store is down, slow (past its timeout) or refused the call: the one store error.

    Not a domain error: :class:`~recall.service.state_access.StateAccess` turns it into a
    read answered from the bundle alone (``fresh: false``) or, for a write, the domain
    error :class:`~recall.service.domain_errors.StateDown` (503 ``state_unavailable``,
    which the client raises as its own ``recall.client.StateUnavailable``)."""


class StoreTimeout(StoreUnavailable):
    """A store call ran past its bound (the store is slow, or stalled): counted apart from
    other store trouble in ``recall_unfresh_answers_total{reason="timeout"}``."""


class StateStore(Protocol):
    """Events since the bundle: per-user recent interactions, impressions, a retraining log;
    and which items are disabled (availability, keyed by external id, versioned).

    A cancelled call raises CancelledError, also when its answer arrived before the task
    resumed: Python 3.11's ``asyncio.wait_for`` (so calls are bounded with
    ``asyncio.timeout``) and redis-py 8.1 return the answer then instead, and a poller
    stopped by ``cancel()`` kept polling, hanging its worker's shutdown."""

    async def add(self, events: Sequence[Event], live: Sequence[LiveCount] = ()) -> bool:
        """Store ``events`` and add ``live`` to the live counts (the same transaction on
        SQLite and one Redis server; on a cluster per slot); durable when this returns
        (SQLite: committed and fsynced; Redis: per the server's AOF policy). Bounded by
        the write timeout. A call that raised may still have stored its events (the write
        finished after the deadline). True, or False when the events were stored but the
        live counts could not be (a cluster whose master of the counts is down)."""
        ...

    async def remember(self, lists: Sequence[ServedList]) -> None:
        """Keep each list as its user's last served list (replacing the one before), for
        ``served_ttl_s``. Not durable (SQLite: no fsync; a power cut may lose the last
        ones). Bounded by ``timeout_s``: it is on a recall's path."""
        ...

    async def served(self, user_ids: Sequence[ExternalId]) -> list[ServedList | None]:
        """Per user (same order): their last served list, None when there is none or it is
        older than ``served_ttl_s``. Bounded by ``timeout_s``."""
        ...

    async def live_counts(self, experiment_id: str) -> list[LiveCount]:
        """Every live count of the experiment (``""``: of no experiment), one per (arm,
        bundle, bucket), in no set order. Bounded by the write timeout."""
        ...

    async def recent(
        self, user_ids: Sequence[ExternalId], after: float
    ) -> list[list[tuple[ExternalId, float]]]:
        """Per user (same order): interactions with timestamp > ``after`` (``-math.inf``: all),
        oldest first, at most the last ``window`` of them, as ``(item_id, timestamp)``.
        Exact duplicates (same user, item and timestamp) count once. Bounded by ``timeout_s``.
        A user whose last interaction arrived more than ``retention_s`` ago may be forgotten
        (Redis: the key expires; SQLite keeps the window)."""
        ...

    async def shown(self, user_ids: Sequence[ExternalId], since: float) -> list[list[ExternalId]]:
        """Per user (same order): distinct item ids of impressions with timestamp >= ``since``,
        oldest first (an item's latest impression counts). Bounded by ``timeout_s``.
        Impressions older than ``shown_ttl_s`` (wall clock) are dropped by the store."""
        ...

    def export(self, since: float | None = None) -> AsyncIterator[Event]:
        """The retraining log (interactions and impressions, every event, duplicates too) in
        the order the store received them (time order for live events; a replay keeps its
        arrival order), only events with timestamp >= ``since`` when given. Holds what
        arrived within ``retention_s`` (wall clock)."""
        ...

    async def set_availability(
        self, disable: Sequence[ExternalId], enable: Sequence[ExternalId]
    ) -> int:
        """Mark the items ``disable`` unavailable and ``enable`` available again (ids as
        given, kept typed; an id in both lists is a ValueError), atomically with a bump of
        the availability version; returns the new version (the current one, unchanged, when
        both lists are empty). Bounded by the write timeout."""
        ...

    async def availability(self) -> tuple[int, list[ExternalId]]:
        """``(version, disabled item ids)`` read together (one snapshot); ids in a stable
        order (ints ascending, then strs). Bounded by the write timeout (not on a recall's
        path: replicas read it when the version changed)."""
        ...

    async def availability_version(self) -> int:
        """The availability version alone (0 before any change): cheap, polled by every
        replica. Bounded by the write timeout."""
        ...

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers (SQLite: creates the file)."""
        ...

    async def close(self) -> None:
        """Release connections and threads; later calls raise StoreUnavailable."""
        ...


Recent = list[list[tuple[ExternalId, float]]]
"""Per user: interactions ``(item_id, timestamp)``, oldest first (:meth:`StateStore.recent`)."""


@runtime_checkable
class ReadsInThread(Protocol):
    """A store that can also read in the caller's own thread (SQLite: a local file): a
    recall then reads and searches in one hand-off to a search thread, and the read's bound
    starts when the read does, never while it waits in a queue."""

    def read_in_thread(
        self, user_ids: Sequence[ExternalId], after: float, shown_since: float | None
    ) -> tuple[Recent, list[list[ExternalId]] | None]:
        """``(recent(user_ids, after), shown(user_ids, shown_since))`` as one blocking call
        (shown None when ``shown_since`` is None), bounded by ``timeout_s`` from its start;
        raises :class:`StoreUnavailable` (:class:`StoreTimeout` past the bound)."""
        ...

    def remember_in_thread(self, lists: Sequence[ServedList]) -> None:
        """:meth:`StateStore.remember` as one blocking call in the caller's thread, bounded
        by ``timeout_s`` from its start."""
        ...


def check_id(value: object) -> ExternalId:
    """``value`` as a store id: str as is, an integer (numpy's too) as a Python int64."""
    if type(value) is str:  # fast paths first: isinstance on a Protocol costs ~10 us
        return value
    if type(value) is int and INT64_MIN <= value <= INT64_MAX:
        return value
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        raise TypeError("an id is an int or a str, not a bool")
    if not isinstance(value, SupportsIndex):  # int, numpy's ints; not float
        raise TypeError(f"an id is an int or a str, not {type(value).__name__}")
    number = operator.index(value)
    if not INT64_MIN <= number <= INT64_MAX:
        raise ValueError(f"int id {number} is outside int64")
    return number


def check_availability(
    disable: Sequence[object], enable: Sequence[object]
) -> tuple[list[ExternalId], list[ExternalId]]:
    """``(disable, enable)`` as store ids (:func:`check_id`), duplicates dropped; ValueError
    naming an id that is in both lists."""
    off = list(dict.fromkeys(check_id(i) for i in disable))
    on = list(dict.fromkeys(check_id(i) for i in enable))
    both = set(off).intersection(on)  # 7 and "7" are different ids
    if both:
        raise ValueError(f"id {sorted(both, key=id_order)[0]!r} is both disabled and enabled")
    return off, on


def id_order(value: ExternalId) -> tuple[int, int, str]:
    """A sort key over mixed ids: ints ascending, then strs."""
    if isinstance(value, int):
        return (0, value, "")
    return (1, 0, value)


def check_time(value: float) -> float:
    """``value`` as a float bound of a read: ``-inf``/``inf`` allowed, NaN refused."""
    bound = float(value)
    if math.isnan(bound):
        raise ValueError("a time bound is not a number (NaN)")
    return bound


def check_event(event: Event) -> tuple[ExternalId, ExternalId, float, EventType]:
    """``(user_id, item_id, timestamp, type)`` checked: ids by :func:`check_id`, a finite
    float timestamp, a known type."""
    timestamp = float(event.timestamp)
    if not math.isfinite(timestamp):
        raise ValueError(f"timestamp {timestamp} is not finite")
    if event.type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event.type!r}")
    return check_id(event.user_id), check_id(event.item_id), timestamp, event.type
