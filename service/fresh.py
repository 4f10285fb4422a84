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

from recall.index.ids import ExternalId
from recall.index.item_mean import ItemMean
from recall.service import recaller as core
from recall.service.domain_errors import UnknownId, clip
from recall.service.recaller import RecallQuery, RecallResult, ServingBundle, Source

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
    not asked); ``fresh`` False when the store could not be read (lists then empty)."""

    events: list[list[tuple[ExternalId, float]]]
    shown: list[list[ExternalId]]
    fresh: bool

    @classmethod
    def empty(cls, n: int, fresh: bool = True) -> UserState:
        """No events and no impressions for ``n`` users."""
        return cls([[] for _ in range(n)], [[] for _ in range(n)], fresh)


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
    bundle: ServingBundle, user_ids: Sequence[ExternalId], events: Sequence[Events]
) -> list[UserVector | None]:
    """The query vector of each user (see the module docstring), None where neither the
    bundle nor usable events know the user. ``events[j]`` are ``user_ids[j]``'s, from the
    store (empty when the store was not read). The tower runs once per kind of user."""
    if len(user_ids) != len(events):
        raise ValueError("events must have one entry per user")
    length = bundle.tower.spec.history_length
    rows = bundle.user_ids.rows(list(user_ids)) if len(user_ids) else np.zeros(0, np.int64)
    history, trained_until = bundle.history, bundle.trained_until
    out: list[UserVector | None] = [None] * len(user_ids)
    refresh: list[tuple[int, int, np.ndarray]] = []  # (position, user row, fresh rows)
    new: list[tuple[int, np.ndarray]] = []  # (position, event rows)
    for j, (row, user_events) in enumerate(zip(rows.tolist(), events, strict=True)):
        if row < 0:
            event_rows = _event_rows(bundle, user_events, None)
            if len(event_rows):
                new.append((j, event_rows))
            continue
        stored = np.asarray(bundle.user_vectors[row])
        if history is None or trained_until is None:  # v1: no window to extend
            seen = np.concatenate([bundle.seen(row), _event_rows(bundle, user_events, None)])
            out[j] = UserVector(Source.USER, stored, seen, 0)
            continue
        fresh = _event_rows(bundle, user_events, trained_until)
        if not len(fresh):
            out[j] = UserVector(Source.USER, stored, bundle.seen(row), 0)
        else:
            refresh.append((j, row, fresh))
    if refresh and history is not None:
        user_rows = np.array([row for _, row, _ in refresh], dtype=np.int64)
        if isinstance(bundle.tower, ItemMean):  # the stored vector moved by the events
            vectors = bundle.tower.refresh(
                bundle.user_vectors[user_rows],
                np.diff(history.indptr)[user_rows],
                [fresh for _, _, fresh in refresh],
            )
        else:
            windows = [
                np.concatenate([history.window(row)[0], fresh])[-length:]
                for _, row, fresh in refresh
            ]
            vectors = bundle.tower.encode_encoded(
                windows, history.categorical[user_rows], history.numeric[user_rows]
            )
        source = bundle.computed(Source.USER_EVENTS)
        for (j, row, fresh), vector in zip(refresh, vectors, strict=True):
            seen = np.concatenate([bundle.seen(row), fresh])
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
    store could not be read): a 404 says that the user's events were not consulted."""
    if query.user_id is None:
        raise ValueError("recall_user answers user_id queries")
    core.check_k(query.k, max_k)
    allowed = (masks or core.FilterMasks(bundle)).mask(query.filter)
    dropped = [*query.exclude, *shown]
    exclude = bundle.item_ids.rows(dropped) if dropped else np.zeros(0, np.int64)
    exclude = exclude[exclude >= 0]
    if user is None:
        if query.fallback != "popular":
            unread = "" if store_read else " (the state store is unavailable: events not read)"
            raise UnknownId(f"unknown user_id {clip(query.user_id)}{unread}")
        answer = core.answer(bundle, query.k, Source.POPULAR, None, exclude, allowed)
        return FreshRecall(answer, 0)
    if query.exclude_seen is not False:
        exclude = np.concatenate([exclude, user.seen])
    result = core.answer(bundle, query.k, user.source, user.vector, exclude, allowed)
    return FreshRecall(result, user.fresh_events)
