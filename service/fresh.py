"""User vectors from the bundle plus the user's newer events (pure functions, no I/O).

The HTTP layer reads each user's recent events from the state store (``(item_id,
timestamp)`` pairs, oldest first) and hands them here with the bundle:

- a user the bundle knows, with events after the bundle's ``trained_until`` on items it
  knows: the user's training window (``user_history.npz``) followed by those events, cut
  to the tower's ``history_length``, through :meth:`UserTower.encode_encoded` with the
  user's stored features -- source ``user+events``;
- a user the bundle knows, with no such event (or a v1 bundle, which has no window): the
  stored vector -- source ``user``;
- a user the bundle never saw, with events on known items: the tower on those events,
  without features -- source ``events``;
- otherwise: no vector (404, or the popular fallback).

A bundle without a user tower (``recall import``) computes these vectors by its item-mean
rule instead (:mod:`recall.index.item_mean`: the mean of the items' vectors; a known user's
stored vector is blended with the fresh events' items); the sources then end in
``:item-mean``.

Ids from clients and from the store go through :meth:`IdMap.canonical` first, so ``"7"`` and
``7`` name the same user or item of an int-typed bundle (as :class:`IdMap` matches them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from recall.index import bundle as b
from recall.index.ids import ExternalId
from recall.index.item_mean import ItemMean
from recall.service import recaller as core
from recall.service.domain_errors import StateDown, UnknownId, clip
from recall.service.recaller import RecallQuery, RecallResult, ServingBundle, Source
from recall.service.users import StoredUser, bundle_users

__all__ = [
    "FreshRecall",
    "UserState",
    "UserVector",
    "recall_user",
    "user_vectors",
]

Events = Sequence[tuple[ExternalId, float]]
"""One user's events from the store: (item_id, unix seconds), oldest first."""


@dataclass(frozen=True)
class UserState:
    """What the store holds for some users, in their order: ``events[j]`` (item_id,
    timestamp) oldest first, ``shown[j]`` item ids of recent impressions (empty lists when
    not asked); ``fresh`` False when the store could not be read (lists then empty).
    ``users``: the users as the bundle stored them, read from the state store (Redis mode,
    :mod:`recall.service.users`), None where the bundle's own files say (SQLite mode);
    ``users_down`` True when they had to be read from the store and could not be.
    ``unread``: the positions of the users whose reads failed when the others' did not (a
    Redis Cluster shard down): their lists are empty and ``fresh`` is False for the whole,
    but :meth:`one` gives each of the others ``fresh``."""

    events: list[list[tuple[ExternalId, float]]]
    shown: list[list[ExternalId]]
    fresh: bool
    users: list[StoredUser | None] | None = None
    users_down: bool = False
    unread: frozenset[int] = frozenset()

    @classmethod
    def empty(cls, n: int, fresh: bool = True) -> UserState:
        """No events and no impressions for ``n`` users."""
        return cls([[] for _ in range(n)], [[] for _ in range(n)], fresh)

    def one(self, j: int, with_shown: bool = True) -> UserState:
        """User ``j``'s part alone (its impressions only ``with_shown``)."""
        users = None if self.users is None else [self.users[j]]
        shown = self.shown[j] if with_shown else []
        fresh, users_down = self.fresh, self.users_down
        if self.unread:
            fresh, users_down = j not in self.unread, users_down and j in self.unread
        return UserState([self.events[j]], [shown], fresh, users, users_down)


@dataclass(frozen=True)
class UserVector:
    """One user's query vector and what it came from.

    ``vector`` (dim,) float32; ``seen`` item rows the user interacted with (training set
    and events, for ``exclude_seen``); ``fresh_events``: events in the vector that the
    bundle did not (0 for source ``user``)."""

    source: Source
    vector: np.ndarray
    seen: np.ndarray
    fresh_events: int


def _event_rows(bundle: ServingBundle, events: Events, after: float | None) -> np.ndarray:
    """Item rows (int64) of the events on known items with timestamp > ``after`` (all when
    ``after`` is None), oldest first."""
    items = [item for item, ts in events if after is None or ts > after]
    if not items:
        return np.zeros(0, dtype=np.int64)
    rows = bundle.item_ids.rows(items)
    return rows[rows >= 0]


def user_vectors(
    bundle: ServingBundle,
    user_ids: Sequence[ExternalId],
    events: Sequence[Events],
    users: Sequence[StoredUser | None] | None = None,
) -> list[UserVector | None]:
    """The query vector of each user (see the module docstring), None where neither the
    bundle nor usable events know the user. ``events[j]`` are ``user_ids[j]``'s, from the
    store (empty when the store was not read); ``users[j]`` the user as the bundle stored
    them, read from the state store (None: from the bundle's files). The tower runs once
    per kind of user."""
    if len(user_ids) != len(events):
        raise ValueError("events must have one entry per user")
    if users is None:
        users = bundle_users(bundle.verified, user_ids)
    length = bundle.tower.spec.history_length
    trained_until = bundle.trained_until
    has_windows = b.USER_HISTORY in bundle.manifest.files
    out: list[UserVector | None] = [None] * len(user_ids)
    refresh: list[tuple[int, StoredUser, np.ndarray]] = []  # (position, user, fresh rows)
    new: list[tuple[int, np.ndarray]] = []  # (position, event rows)
    for j, (user, user_events) in enumerate(zip(users, events, strict=True)):
        if user is None:
            event_rows = _event_rows(bundle, user_events, None)
            if len(event_rows):
                new.append((j, event_rows))
            continue
        if trained_until is None or not has_windows:  # v1, or no user_history: no window
            seen = np.concatenate([user.seen, _event_rows(bundle, user_events, None)])
            out[j] = UserVector(Source.USER, user.vector, seen, 0)
            continue
        fresh = _event_rows(bundle, user_events, trained_until)
        if not len(fresh):
            out[j] = UserVector(Source.USER, user.vector, user.seen, 0)
        else:
            refresh.append((j, user, fresh))
    if refresh:
        if isinstance(bundle.tower, ItemMean):  # the stored vector moved by the events
            vectors = bundle.tower.refresh(
                np.stack([user.vector for _, user, _ in refresh]),
                np.array([len(user.window) for _, user, _ in refresh], dtype=np.int64),
                [fresh for _, _, fresh in refresh],
            )
        else:
            windows = [np.concatenate([user.window, fresh])[-length:] for _, user, fresh in refresh]
            vectors = bundle.tower.encode_encoded(  # np.array: np.stack's checks cost more
                windows,
                np.array([user.categorical for _, user, _ in refresh]),
                np.array([user.numeric for _, user, _ in refresh]),
            )
        source = bundle.computed(Source.USER_EVENTS)
        for (j, user, fresh), vector in zip(refresh, vectors, strict=True):
            seen = np.concatenate([user.seen, fresh])
            out[j] = UserVector(source, vector, seen, min(len(fresh), length))
    if new:
        vectors = bundle.tower.encode([event_rows for _, event_rows in new])
        source = bundle.computed(Source.EVENTS)
        for (j, event_rows), vector in zip(new, vectors, strict=True):
            out[j] = UserVector(source, vector, event_rows, min(len(event_rows), length))
    return out


@dataclass(frozen=True)
class FreshRecall:
    """A recall answer and how many fresh events its query vector used."""

    result: RecallResult
    fresh_events: int


def recall_user(
    bundle: ServingBundle,
    query: RecallQuery,
    user: UserVector | None,
    shown: Sequence[ExternalId],
    max_k: int,
    store_read: bool = True,
    masks: core.FilterMasks | None = None,
) -> FreshRecall:
    """Top-k for a ``user_id`` query whose vector :func:`user_vectors` made (``user``),
    among the items its filter and the availability of ``masks`` allow,
    minus ``shown`` (item ids of recent impressions, when the request asked) and, unless
    ``exclude_seen`` is false, the items the user has seen. ``store_read`` False (the
    store could not be read) and a user the bundle lacks: StateDown (503), not a 404."""
    if query.user_id is None:
        raise ValueError("recall_user answers user_id queries")
    core.check_k(query.k, max_k)
    allowed = (masks or core.FilterMasks(bundle)).mask(query.filter)
    dropped = [*query.exclude, *shown]
    exclude = bundle.item_ids.rows(dropped) if dropped else np.zeros(0, np.int64)
    exclude = exclude[exclude >= 0]
    if user is None:
        if query.fallback != "popular" and not store_read:  # their events may exist
            raise StateDown(
                f"user_id {clip(query.user_id)} is not in the bundle and the state store "
                "is unavailable, so their events could not be read; retry later"
            )
        if query.fallback != "popular":
            raise UnknownId(f"unknown user_id {clip(query.user_id)}")
        answer = core.answer(bundle, query.k, Source.POPULAR, None, exclude, allowed)
        return FreshRecall(answer, 0)
    if query.exclude_seen is not False:
        exclude = np.concatenate([exclude, user.seen])
    result = core.answer(bundle, query.k, user.source, user.vector, exclude, allowed)
    return FreshRecall(result, user.fresh_events)
