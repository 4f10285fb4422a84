"""Recall against one bundle, without HTTP: the bundle, queries, results and searches.

:class:`ServingBundle` holds one verified bundle (vectors memory-mapped, the FAISS index,
id maps, seen lists, the numpy user tower). :func:`recall_plain` (history or vector
queries), :func:`answer`, :func:`similar` and the lookup functions answer one request
against one bundle, so a response never mixes two bundles; :class:`recall.service.core.
RecallCore` is the one object the routes call. They raise the domain errors of
:mod:`recall.service.domain_errors`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from recall.index import bundle as b
from recall.index.allowed import AllowedItems
from recall.index.attributes import AttributeFilterError, ItemAttributes
from recall.index.filters import FilterError, compile_filter
from recall.index.history import UserHistory
from recall.index.ids import ExternalId, IdMap
from recall.index.item_mean import HistoryEncoder, ItemMean
from recall.index.search import Found, ItemIndex, Strategy, max_row_norm
from recall.index.tower import FLOAT32_MAX, FeatureError, FeatureValue, UserTower
from recall.index.verify import UsersElsewhere, VerifiedBundle, verify_bundle
from recall.service.domain_errors import InvalidRequest, UnknownId, clip
from recall.service.filter_cache import FilterCache, filter_key
from recall.service.users import RecordShape

logger = logging.getLogger(__name__)


class Source(StrEnum):
    """Where a recall's query vector came from."""

    USER = "user"
    USER_EVENTS = "user+events"  # the user's training window + newer events (service.fresh)
    EVENTS = "events"  # a user known only from events (service.fresh)
    HISTORY = "history"
    # the same three from a bundle without a user tower, by its item-mean rule
    USER_EVENTS_MEAN = "user+events:item-mean"
    EVENTS_MEAN = "events:item-mean"
    HISTORY_MEAN = "history:item-mean"
    VECTOR = "vector"
    ITEM = "item"
    POPULAR = "popular"


@dataclass(frozen=True)
class RecallQuery:
    """One recall request: exactly one of ``user_id``, ``history``, ``vector``."""

    user_id: ExternalId | None = None
    history: Sequence[ExternalId] | None = None
    features: Mapping[str, FeatureValue] | None = None
    vector: Sequence[float] | None = None
    k: int = 100
    exclude_seen: bool | None = None
    exclude: Sequence[ExternalId] = ()
    fallback: str | None = None
    filter: Mapping[str, Mapping[str, object]] | None = None  # attribute -> {op: operand}


@dataclass(frozen=True)
class RecallResult:
    """Top-k items, best first: external ids (k,) and scores (k,) float32."""

    bundle_id: str
    source: Source
    item_ids: list[ExternalId]
    scores: list[float]
    strategy: Strategy | None = None  # how the index answered; None: no search (popular)


@dataclass(frozen=True)
class ServingBundle:
    """A verified, loaded bundle as the service serves it: the
    :class:`~recall.index.verify.VerifiedBundle` (the very arrays verification checked) and
    what serving derives from it; immutable, shared by every request that started on it.
    The properties below are the parts of the verified bundle the service reads."""

    verified: VerifiedBundle
    popular_rows: np.ndarray  # (n_items,) item rows, most popular first
    #: The shape of this bundle's user records in the state store (Redis mode: the
    #: bundle's user files are not opened); None: the users come from the bundle's files.
    store_records: RecordShape | None = None

    @property
    def id(self) -> str:
        return self.manifest.id

    @property
    def path(self) -> Path:
        return self.verified.path

    @property
    def manifest(self) -> b.Manifest:
        return self.verified.manifest

    @property
    def item_ids(self) -> IdMap:
        return self.verified.item_ids

    @property
    def user_ids(self) -> IdMap:
        return self.verified.user_ids

    @property
    def item_vectors(self) -> np.ndarray:
        """(n_items, dim) float32, memory-mapped (the index's own)."""
        return self.verified.index.items

    @property
    def user_vectors(self) -> np.ndarray:
        """(n_users, dim) float32, memory-mapped."""
        return self.verified.user_vectors

    @property
    def tower(self) -> HistoryEncoder:
        """The user tower, or the item mean of a bundle without one (``recall import``)."""
        return self.verified.tower

    @property
    def popularity(self) -> np.ndarray:
        """(n_items,) float32 training interactions per item."""
        return self.verified.popularity

    @property
    def index(self) -> ItemIndex:
        return self.verified.index

    @property
    def history(self) -> UserHistory | None:
        """schema_version 2: each user's training window + features."""
        return self.verified.history

    @property
    def trained_until(self) -> float | None:
        """schema_version 2: unix seconds; later events are fresh."""
        return self.verified.trained_until

    @property
    def attributes(self) -> ItemAttributes | None:
        """items.csv columns (schema_version 2, optional)."""
        return self.verified.attributes

    @property
    def dim(self) -> int:
        return self.manifest.dim

    def computed(self, source: Source) -> Source:
        """The source of a vector computed from a history (``history``, ``user+events``,
        ``events``): its ``:item-mean`` form when the bundle has the item-mean rule
        (:mod:`recall.index.item_mean`) instead of a user tower."""
        if not isinstance(self.tower, ItemMean):
            return source
        return Source(f"{source.value}:item-mean")

    @cached_property
    def filters(self) -> FilterCache:
        """The masks of the filters recent requests used (:mod:`recall.service.filter_cache`)."""
        return FilterCache()

    @cached_property
    def max_item_norm(self) -> float:
        """The largest L2 norm of an item vector (float64; computed once, in warm-up)."""
        return max_row_norm(self.item_vectors)

    @classmethod
    def load(
        cls,
        path: Path,
        users: tuple[UsersElsewhere, RecordShape] | None = None,
    ) -> ServingBundle:
        """Verify (:func:`recall.index.verify.verify_bundle`: the rules publish applies), load,
        and warm up; ``users``: the bundle's users are in the state store (its user files
        are not opened). Raises :class:`~recall.index.bundle.BundleError` for a bundle that
        is not servable."""
        started = time.perf_counter()
        elsewhere, shape = users if users is not None else (None, None)
        verified = verify_bundle(path, elsewhere)
        if shape is not None and shape.dim != verified.manifest.dim:
            raise b.BundleError(
                f"{path}: the store's user records are {shape.dim} wide, the bundle "
                f"{verified.manifest.dim}"
            )
        bundle = cls(verified, np.argsort(-verified.popularity, kind="stable"), shape)
        bundle.warm_up()
        logger.info(
            "loaded bundle %s (%d items, %d users%s) in %.2f s",
            bundle.id,
            len(bundle.item_ids),
            bundle.manifest.counts.users,
            " in the state store" if shape is not None else "",
            time.perf_counter() - started,
        )
        return bundle

    def warm_up(self) -> None:
        """Run one search of each kind so the first real request pays no first-touch cost."""
        query = self.user_vectors if len(self.user_ids) else self.item_vectors
        if len(query):
            self.index.search(np.asarray(query[:1]), 10)
        self.tower.encode([np.zeros(1, dtype=np.int64)])
        _ = self.max_item_norm
        _ = self.filters  # made once here, not raced for by the first requests

    def seen(self, user_row: int) -> np.ndarray:
        """The item rows user ``user_row`` saw in training (nnz_u,), from the bundle's CSR."""
        indptr = self.verified.seen_indptr
        return self.verified.seen_items[indptr[user_row] : indptr[user_row + 1]]


def check_k(k: int, max_k: int) -> None:
    if not 1 <= k <= max_k:
        raise InvalidRequest(f"k must be between 1 and {max_k}, got {clip(k)}")


def _rows(ids: IdMap, values: Sequence[ExternalId]) -> np.ndarray:
    rows = ids.rows(values)
    return rows[rows >= 0]


def _query_vector(bundle: ServingBundle, vector: Sequence[float]) -> np.ndarray:
    if len(vector) != bundle.dim:
        raise InvalidRequest(f"vector must have {bundle.dim} values, got {len(vector)}")
    q = np.asarray(vector, dtype=np.float64)
    if not (np.abs(q) <= FLOAT32_MAX).all():  # NaN fails this too
        raise InvalidRequest("vector must hold finite float32 numbers (no NaN or Inf)")
    return q.astype(np.float32)


def check_one_source(query: RecallQuery) -> None:
    """:class:`InvalidRequest` unless exactly one of user_id, history, vector is given."""
    given = [query.user_id is not None, query.history is not None, query.vector is not None]
    if sum(given) != 1:
        raise InvalidRequest("give exactly one of user_id, history, vector")


def plain_query(
    bundle: ServingBundle, query: RecallQuery
) -> tuple[Source, np.ndarray | None, np.ndarray]:
    """(source, query vector (dim,) or None for the popular fallback, excluded item rows)
    of a history or vector query; a user_id query is answered by
    :meth:`recall.service.core.RecallCore.recall` (with the user's events)."""
    check_one_source(query)
    if query.user_id is not None:
        raise ValueError("a user_id query needs the user's state: RecallCore.recall")
    exclude = _rows(bundle.item_ids, query.exclude)
    if query.history is not None:
        history = _rows(bundle.item_ids, query.history)
        try:
            bundle.tower.spec.check_features(query.features)
            if not len(history):  # like an unknown user (the tower never saw an empty one)
                if query.fallback == "popular":
                    return Source.POPULAR, None, exclude
                raise UnknownId("no item of the history is known")
            vector = bundle.tower.encode([history], [query.features])[0]
        except FeatureError as e:
            raise InvalidRequest(str(e)) from None
        if query.exclude_seen is not False:
            exclude = np.concatenate([exclude, history])
        return bundle.computed(Source.HISTORY), vector, exclude
    return Source.VECTOR, _query_vector(bundle, query.vector or ()), exclude


def allowed_items(
    bundle: ServingBundle,
    spec: Mapping[str, Mapping[str, object]] | None,
    available: AllowedItems | None = None,
) -> AllowedItems | None:
    """The items one request may return: the filter's matches (compiled once per filter,
    the bundle's :class:`FilterCache`) AND ``available`` (items not disabled); None when
    both are None (all). A filter this bundle cannot apply is :class:`InvalidRequest`
    naming the problem."""
    if spec is None:
        return available
    try:
        matches = bundle.filters.get(
            spec, lambda s: AllowedItems(compile_filter(s, bundle.attributes))
        )
    except (FilterError, AttributeFilterError) as e:
        raise InvalidRequest(str(e)) from None
    return matches if available is None else matches.intersect(available)


class FilterMasks:
    """The :class:`AllowedItems` of each filter one request or one batch uses: ``available``
    (items not disabled; None = all) AND the filter, compiled once per distinct filter (the
    entries of a batch often share one). Not thread-safe: one per request."""

    def __init__(self, bundle: ServingBundle, available: AllowedItems | None = None) -> None:
        self.bundle = bundle
        self.available = available
        self._items: dict[str, AllowedItems | None] = {}

    def mask(self, spec: Mapping[str, Mapping[str, object]] | None) -> AllowedItems | None:
        """:func:`allowed_items` of ``spec`` (None: all), kept by filter."""
        if spec is None:
            return self.available
        key = filter_key(spec)
        if key not in self._items:
            self._items[key] = allowed_items(self.bundle, spec, self.available)
        return self._items[key]


def recall_plain(
    bundle: ServingBundle, query: RecallQuery, max_k: int, masks: FilterMasks | None = None
) -> RecallResult:
    """Top-k items by inner product for one history or vector query among the items its
    filter and the availability of ``masks`` allow, exclusions applied (k items unless
    fewer are left)."""
    check_k(query.k, max_k)
    allowed = (masks or FilterMasks(bundle)).mask(query.filter)
    source, vector, exclude = plain_query(bundle, query)
    return answer(bundle, query.k, source, vector, exclude, allowed)


def answer(
    bundle: ServingBundle,
    k: int,
    source: Source,
    vector: np.ndarray | None,
    exclude: np.ndarray,
    allowed: AllowedItems | None = None,
) -> RecallResult:
    """Top-k for a query vector (dim,) float32, or the popular items when it is None,
    among the ``allowed`` items (None = all) without the ``exclude``
    item rows."""
    strategy: Strategy | None = None
    if vector is None:
        rows, scores = popular(bundle, k, exclude, allowed)
    else:
        query_vector = _check_range(bundle, vector)[None, :]
        found = _search(bundle, query_vector, k, exclude, allowed)
        rows, scores, strategy = found.rows[0], _finite(found.scores[0]), found.strategies[0]
    ids = bundle.item_ids.ids[rows].tolist()
    return RecallResult(bundle.id, source, ids, scores.tolist(), strategy)


def _search(
    bundle: ServingBundle,
    query: np.ndarray,
    k: int,
    exclude: np.ndarray,
    allowed: AllowedItems | None,
) -> Found:
    """Scores (1, k') and rows (1, k') of the top-k among allowed, non-excluded items for
    one query (1, dim), and the strategy the index chose by how many items are allowed."""
    return bundle.index.search_detailed(query, k, exclude=[exclude], allowed=allowed)


def _check_range(bundle: ServingBundle, query: np.ndarray) -> np.ndarray:
    """``query`` (dim,) float32, or :class:`InvalidRequest` if a score could overflow
    float32: ``|q . x| <= |q| |x|`` (Cauchy-Schwarz, partial sums included), so a query
    whose norm times the largest item norm stays under half of float32's maximum can
    overflow no score, whatever ``k`` and the ranking."""
    norm = float(np.linalg.norm(query.astype(np.float64)))
    if not norm * bundle.max_item_norm <= FLOAT32_MAX / 2:
        raise InvalidRequest(
            f"the query vector is too large (norm {norm:.3g}): its scores would overflow "
            "float32; scale it down"
        )
    return query


def _finite(scores: np.ndarray) -> np.ndarray:
    """``scores`` (k,) float32, or :class:`InvalidRequest` if one overflowed to Inf/NaN (a
    query vector too large for float32 dot products)."""
    if not np.isfinite(scores).all():
        raise InvalidRequest("the query's scores overflow float32: scale the vector down")
    return scores


def popular(
    bundle: ServingBundle, k: int, exclude: np.ndarray, allowed: AllowedItems | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The k most popular ``allowed`` items (None = all) not excluded:
    (rows (k',), training counts (k',)), k' < k only when fewer items are left."""
    order = bundle.popular_rows
    if allowed is not None:
        order = order[allowed.mask[order]]
    if len(exclude):
        head = order[: k + len(exclude)]
        order = head[~np.isin(head, exclude)]
    rows = order[:k]
    return rows, bundle.popularity[rows]


def similar(
    bundle: ServingBundle,
    item_id: ExternalId,
    k: int,
    max_k: int,
    spec: Mapping[str, Mapping[str, object]] | None = None,
    exclude: Sequence[ExternalId] = (),
    available: AllowedItems | None = None,
) -> RecallResult:
    """Item-to-item neighbours by ``W_i . W_j`` (a trained bundle's bias slot is 0 in the
    query; imported vectors have none) among the items the filter ``spec`` and
    ``available`` allow, the item and ``exclude`` dropped."""
    check_k(k, max_k)
    allowed = allowed_items(bundle, spec, available)
    row = bundle.item_ids.row(item_id)
    if row is None:
        raise UnknownId(f"unknown item id {clip(item_id)}")
    query = np.array(bundle.item_vectors[row], dtype=np.float32)
    if isinstance(bundle.tower, UserTower):
        query[-1] = 0.0
    dropped = np.concatenate([_rows(bundle.item_ids, exclude), [row]]).astype(np.int64)
    found = _search(bundle, query[None, :], k, dropped, allowed)
    return RecallResult(
        bundle.id,
        Source.ITEM,
        bundle.item_ids.ids[found.rows[0]].tolist(),
        _finite(found.scores[0]).tolist(),
        found.strategies[0],
    )


def attributes_of(
    bundle: ServingBundle, item_ids: Sequence[ExternalId]
) -> list[dict[str, Any]] | None:
    """The attributes of known items (``item_ids`` from an answer), in order; None for a
    bundle without item attributes."""
    if bundle.attributes is None:
        return None
    rows = bundle.item_ids.rows(list(item_ids)) if len(item_ids) else np.zeros(0, np.int64)
    return bundle.attributes.rows_as_dicts(rows)


def item_of(bundle: ServingBundle, item_id: ExternalId) -> tuple[ExternalId, dict[str, Any]]:
    """One item's id as the bundle types it and its attributes ({} for a bundle without
    item attributes)."""
    row = bundle.item_ids.row(item_id)
    if row is None:
        raise UnknownId(f"unknown item id {clip(item_id)}")
    external: ExternalId = bundle.item_ids.ids[row].item()
    if bundle.attributes is None:
        return external, {}
    return external, bundle.attributes.rows_as_dicts(np.array([row], dtype=np.int64))[0]


def vector_of(bundle: ServingBundle, kind: str, id_: ExternalId) -> tuple[ExternalId, np.ndarray]:
    """One user's or item's id as the bundle types it, and its stored row (dim,) float32."""
    ids, vectors = _table(bundle, kind)
    row = ids.row(id_)
    if row is None:
        raise UnknownId(f"unknown {kind[:-1]} id {clip(id_)}")
    external: ExternalId = ids.ids[row].item()
    return external, np.asarray(vectors[row])


def vectors_of(
    bundle: ServingBundle, kind: str, ids_: Sequence[ExternalId]
) -> tuple[np.ndarray, np.ndarray]:
    """Rows for ``ids_`` in request order: (vectors (n, dim) float32 with NaN rows where
    the id is unknown, found mask (n,) bool). Duplicates are allowed."""
    ids, vectors = _table(bundle, kind)
    rows = ids.rows(ids_)
    found = rows >= 0
    if found.all():
        return vectors.take(rows, axis=0), found
    out = np.full((len(rows), bundle.dim), np.nan, dtype=np.float32)
    out[found] = vectors[rows[found]]
    return out, found


def _table(bundle: ServingBundle, kind: str) -> tuple[IdMap, np.ndarray]:
    if kind == "users":
        return bundle.user_ids, bundle.user_vectors
    return bundle.item_ids, bundle.item_vectors
