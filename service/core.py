"""The recall core: the one object that answers every recall and vector lookup, without
HTTP (nothing here imports FastAPI or Starlette).

:class:`RecallCore` answers against one :class:`~recall.service.recaller.ServingBundle`
(taken once per request) a query by user id with what the state store holds for the user
(:class:`~recall.service.fresh.UserState`: their newer events and recent impressions),
by history, by vector, item-to-item, a batch of queries, and the user and item vector
lookups. It runs in a search thread (it blocks on FAISS); the routes read the store
before and translate the answer after. It raises the domain errors of
:mod:`recall.service.domain_errors`; a batch returns each entry's error in its slot.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from recall.index.allowed import AllowedItems
from recall.index.experiment import CONTROL
from recall.index.ids import ExternalId
from recall.index.search import Strategy
from recall.service import recaller
from recall.service.domain_errors import RecallError, StateDown, UnknownId, clip
from recall.service.fresh import UserState, UserVector, recall_user, user_vectors
from recall.service.recaller import (
    FilterMasks,
    RecallQuery,
    RecallResult,
    ServingBundle,
    check_one_source,
)
from recall.service.users import StoredUser

logger = logging.getLogger(__name__)

#: The items of a bundle no one disabled (None: all), as the app's availability gives them.
AvailableItemsOf = Callable[[ServingBundle], AllowedItems | None]


@dataclass(frozen=True)
class RecallAnswer:
    """One recall's answer: the result, how many fresh events its query vector used, and
    ``fresh`` False when the user's state could not be read; ``attributes`` one dict per
    item when asked for and the bundle has them; the experiment ``arm`` whose bundle
    answered (:data:`~recall.index.experiment.CONTROL` when no experiment runs)."""

    result: RecallResult
    fresh_events: int = 0
    fresh: bool = True
    attributes: list[dict[str, Any]] | None = None
    arm: str = CONTROL


@dataclass(frozen=True)
class UserVectorAnswer:
    """One user's vector as a recall by user_id uses it, and its typed id."""

    id: ExternalId
    user: UserVector
    fresh: bool


def _no_availability(bundle: ServingBundle) -> AllowedItems | None:
    return None


class RecallCore:
    """Every recall and vector lookup, for requests up to ``max_k`` items; ``available_items``
    gives the items of a bundle no one disabled, ``on_search`` hears each search's strategy."""

    def __init__(
        self,
        max_k: int,
        available_items: AvailableItemsOf = _no_availability,
        on_search: Callable[[Strategy], None] | None = None,
    ) -> None:
        self.max_k = max_k
        self.available_items = available_items
        self.on_search = on_search

    def canonical(self, bundle: ServingBundle, query: RecallQuery) -> RecallQuery:
        """``query`` with its user id as the bundle's ids type it (``"7"`` -> 7)."""
        if query.user_id is None:
            return query
        user_id = bundle.user_ids.canonical(query.user_id)
        # `is`, not ==: 7 == 7.0 and True == 1, yet a query must hold the id as typed here
        return query if user_id is query.user_id else replace(query, user_id=user_id)

    def recall(
        self,
        bundle: ServingBundle,
        query: RecallQuery,
        state: UserState | None = None,
        *,
        with_attributes: bool = False,
        masks: FilterMasks | None = None,
        arm: str = CONTROL,
    ) -> RecallAnswer:
        """Top-k for one query on ``bundle`` (the bundle of experiment ``arm``). A user_id
        query uses ``state`` (the user's events and impressions; None: none, as from an
        empty store): the user's stored vector, or one from their training window and
        newer events (:mod:`recall.service.fresh`)."""
        check_one_source(query)
        masks = masks or FilterMasks(bundle, self.available_items(bundle))
        if query.user_id is None:
            result = recaller.recall_plain(bundle, query, self.max_k, masks)
            return self._answer(bundle, result, 0, True, with_attributes, arm)
        user_id = bundle.user_ids.canonical(query.user_id)
        if type(user_id) is not type(query.user_id) or user_id != query.user_id:
            query = replace(query, user_id=user_id)
        state = state or UserState.empty(1)
        user = user_vectors(bundle, [user_id], state.events, state.users)[0]
        return self._recall_user(bundle, query, user, state, with_attributes, masks, arm)

    def recall_batch(
        self,
        bundle: ServingBundle,
        queries: Sequence[tuple[RecallQuery, bool, bool]],
        users: list[ExternalId],
        state: UserState,
        arm: str = CONTROL,
    ) -> list[RecallAnswer | Exception]:
        """Each ``(query, exclude_shown, with_attributes)`` answered, or its error in its
        slot (one entry's failure never fails the others). ``users``: the distinct
        canonical user ids of the user_id queries, ``state`` theirs in that order (the
        store read once for the batch); one availability and each distinct filter compiled
        once for the whole batch. Every query is of experiment ``arm``, whose bundle
        ``bundle`` is."""
        position = {user: j for j, user in enumerate(users)}
        masks = FilterMasks(bundle, self.available_items(bundle))
        vectors: list[UserVector | None] | None = []
        if users:
            try:
                vectors = user_vectors(bundle, users, state.events, state.users)
            except Exception:  # a user's vector failed: each entry computes its own below
                logger.exception("user vectors of a batch failed; computing them one by one")
                vectors = None
        out: list[RecallAnswer | Exception] = []
        for query, exclude_shown, with_attributes in queries:
            try:
                if query.user_id is None:
                    out.append(
                        self.recall(
                            bundle, query, with_attributes=with_attributes, masks=masks, arm=arm
                        )
                    )
                    continue
                j = position[query.user_id]
                one = state.one(j, with_shown=exclude_shown)
                user = (
                    vectors[j]
                    if vectors is not None
                    else user_vectors(bundle, [query.user_id], one.events, one.users)[0]
                )
                out.append(self._recall_user(bundle, query, user, one, with_attributes, masks, arm))
            except RecallError as e:
                out.append(e)
            except Exception as e:  # one entry's bug must not fail the others
                logger.exception("unhandled error in a batch entry")
                out.append(e)
        return out

    def similar(
        self,
        bundle: ServingBundle,
        item_id: ExternalId,
        k: int,
        spec: Mapping[str, Mapping[str, object]] | None = None,
        exclude: Sequence[ExternalId] = (),
        with_attributes: bool = False,
        arm: str = CONTROL,
    ) -> RecallAnswer:
        """Item-to-item neighbours of ``item_id`` among the items the filter ``spec``
        allows, ``exclude`` and the item itself dropped (``bundle``: experiment ``arm``'s)."""
        result = recaller.similar(
            bundle, item_id, k, self.max_k, spec, exclude, self.available_items(bundle)
        )
        return self._answer(bundle, result, 0, True, with_attributes, arm)

    def user_vector(
        self, bundle: ServingBundle, user_id: ExternalId, state: UserState
    ) -> UserVectorAnswer:
        """One user's vector as a recall by ``user_id`` (canonical) uses it, with ``state``
        (their events) read by the caller; :class:`UnknownId` when neither the bundle nor
        their events know them."""
        user = user_vectors(bundle, [user_id], state.events, state.users)[0]
        if user is None and state.users_down:
            raise StateDown("the state store is unavailable: the user could not be read")
        if user is None:
            raise UnknownId(f"unknown user id {clip(user_id)}")
        row = bundle.user_ids.row(user_id)
        typed_id = user_id if row is None else bundle.user_ids.ids[row].item()
        return UserVectorAnswer(typed_id, user, state.fresh)

    def user_vectors(
        self,
        bundle: ServingBundle,
        ids: list[ExternalId],
        events: list[list[tuple[ExternalId, float]]],
        users: list[StoredUser | None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """(vectors (n, dim) float32, NaN rows where unknown; found (n,) bool; fresh events
        per id) of canonical ``ids`` with their ``events`` (and ``users``, when the state
        store holds them): the stored rows, replaced by
        :func:`~recall.service.fresh.user_vectors` for ids with events (every id when the
        users come from the store)."""
        vectors, found = recaller.vectors_of(bundle, "users", ids)
        fresh_events = [0] * len(ids)
        touched = [j for j, e in enumerate(events) if e or users is not None]
        if touched:
            made = user_vectors(
                bundle,
                [ids[j] for j in touched],
                [events[j] for j in touched],
                None if users is None else [users[j] for j in touched],
            )
            vectors = np.array(vectors)  # writable, not the memory map
            for j, user in zip(touched, made, strict=True):
                if user is not None:
                    vectors[j], found[j], fresh_events[j] = user.vector, True, user.fresh_events
        return vectors, found, fresh_events

    def item_vectors(
        self, bundle: ServingBundle, ids: Sequence[ExternalId]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(vectors (n, dim) float32 with NaN rows where unknown, found (n,) bool)."""
        return recaller.vectors_of(bundle, "items", ids)

    def item_vector(
        self, bundle: ServingBundle, item_id: ExternalId
    ) -> tuple[ExternalId, np.ndarray]:
        """One item's typed id and stored vector (dim,) float32."""
        return recaller.vector_of(bundle, "items", item_id)

    def item(self, bundle: ServingBundle, item_id: ExternalId) -> tuple[ExternalId, dict[str, Any]]:
        """One item's typed id and attributes ({} for a bundle without attributes)."""
        return recaller.item_of(bundle, item_id)

    def _recall_user(
        self,
        bundle: ServingBundle,
        query: RecallQuery,
        user: UserVector | None,
        state: UserState,
        with_attributes: bool,
        masks: FilterMasks,
        arm: str,
    ) -> RecallAnswer:
        """A user_id query's answer with the user's vector (None: unknown) and state."""
        fresh = recall_user(bundle, query, user, state.shown[0], self.max_k, state.fresh, masks)
        return self._answer(
            bundle, fresh.result, fresh.fresh_events, state.fresh, with_attributes, arm
        )

    def _answer(
        self,
        bundle: ServingBundle,
        result: RecallResult,
        fresh_events: int,
        fresh: bool,
        with_attributes: bool,
        arm: str,
    ) -> RecallAnswer:
        if result.strategy is not None and self.on_search is not None:
            self.on_search(result.strategy)
        attributes = recaller.attributes_of(bundle, result.item_ids) if with_attributes else None
        return RecallAnswer(result, fresh_events, fresh, attributes, arm)
