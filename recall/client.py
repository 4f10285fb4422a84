"""A small typed client of HTTP API v1, on httpx (synchronous)::

    from recall.client import RecallClient, NotFound

    with RecallClient("http://127.0.0.1:8080") as client:
        result = client.recall(user_id=42, k=50)          # RecallResult
        result.item_ids, result.scores, result.bundle_id
        client.recall(history=[10, 11, 12], k=20)          # a new user, by what they watched
        client.recall(user_id=42, filter={"genres": {"any": ["Comedy"]}, "year": {"gte": 1990}},
                      with_attributes=True)                # items[i].attributes
        client.item(50).attributes                         # {"title": ..., "genres": [...]}
        vectors, missing = client.item_vectors([1, 2, 3])  # float32 (3, dim), ids not found

Every failure raises one exception tree; ``status`` is the HTTP status (None when no
answer came), ``code`` the envelope's machine-readable code, ``message`` its text::

    RecallError               any failure: .status, .code, .message
    ├── InvalidInput          422  invalid_input (k out of range, wrong dimension, NaN, ...)
    ├── NotFound              404  not_found (unknown user or item id, unknown route)
    ├── PayloadTooLarge       413  payload_too_large (body, batch or id list too large)
    ├── Unauthorized          401  unauthorized (no admin token)
    ├── Forbidden             403  forbidden (wrong admin token, admin API disabled)
    ├── ReloadFailed          409  reload_failed (the new bundle was refused; old one serves)
    ├── NotReady              503  not_ready / no_replica (no bundle loaded, no replica up)
    ├── StateUnavailable      503  state_unavailable (events not stored: retry later)
    └── TransportError        -    no HTTP answer: connection refused, timeout, ...

A batch does not raise for its items: each answer is a :class:`RecallResult` or the
:class:`RecallError` that item would have raised.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Literal
from urllib.parse import quote

import httpx
import numpy as np

__all__ = [
    "AvailabilityResult",
    "BatchResult",
    "EventsResult",
    "Forbidden",
    "InvalidInput",
    "Item",
    "ModelInfo",
    "NotFound",
    "NotReady",
    "PayloadTooLarge",
    "Query",
    "RecallClient",
    "RecallError",
    "RecallResult",
    "ReloadFailed",
    "ReloadResult",
    "ScoredItem",
    "StateUnavailable",
    "TransportError",
    "Unauthorized",
]

ExternalId = int | str
"""An id as the service takes and returns it (int64 or str). The client's own definition:
it ships without the server (no ``recall.index``, an import-linter contract), whose one
definition is :data:`recall.index.ids.ExternalId`."""
FeatureValue = str | int | float | None
Filter = Mapping[str, Mapping[str, Any]]
"""Conditions on item attributes, all of which must hold: ``{"year": {"gte": 1990}}``."""
NPY_MEDIA_TYPE = "application/x-npy"


class RecallError(Exception):
    """A request failed: HTTP ``status`` (None without an answer), ``code``, ``message``."""

    def __init__(self, status: int | None, code: str, message: str) -> None:
        super().__init__(f"{status or '-'} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class InvalidInput(RecallError):
    """422: the request is not valid for this bundle."""


class NotFound(RecallError):
    """404: unknown user or item id (or route)."""


class PayloadTooLarge(RecallError):
    """413: body, batch or id list over the server's limits."""


class Unauthorized(RecallError):
    """401: the admin API needs ``Authorization: Bearer <token>``."""


class Forbidden(RecallError):
    """403: wrong admin token, or the admin API is disabled."""


class ReloadFailed(RecallError):
    """409: the bundle CURRENT names was refused; the previous one still serves."""


class NotReady(RecallError):
    """503: no bundle loaded yet (or, behind nginx, no replica answered)."""


class StateUnavailable(RecallError):
    """503 state_unavailable: the state store could not take the events; none was stored."""


class TransportError(RecallError):
    """No HTTP answer: connection refused or reset, timeout, DNS failure."""


_ERRORS: dict[int, type[RecallError]] = {
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: ReloadFailed,
    413: PayloadTooLarge,
    422: InvalidInput,
    503: NotReady,
}


def error_from(status: int, body: Any) -> RecallError:
    """The exception for an error answer (``body``: the parsed JSON, or text)."""
    code, message = "http_error", str(body)[:500]
    if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
        code = str(body["error"].get("code", code))
        message = str(body["error"].get("message", ""))
    if code == "state_unavailable":
        return StateUnavailable(status, code, message)
    return _ERRORS.get(status, RecallError)(status, code, message)


@dataclass(frozen=True)
class Query:
    """One recall: exactly one of ``user_id``, ``history`` (+ ``features``), ``vector``."""

    user_id: ExternalId | None = None
    history: Sequence[ExternalId] | None = None
    features: Mapping[str, FeatureValue] | None = None
    vector: Sequence[float] | np.ndarray | None = None
    k: int = 100
    exclude_seen: bool | None = None
    exclude: Sequence[ExternalId] = ()
    fallback: Literal["popular"] | None = None
    exclude_shown: bool = False
    filter: Filter | None = None
    with_attributes: bool = False

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"k": self.k}
        if self.user_id is not None:
            body["user_id"] = self.user_id
        if self.history is not None:
            body["history"] = list(self.history)
        if self.features is not None:
            body["features"] = dict(self.features)
        if self.vector is not None:
            body["vector"] = np.asarray(self.vector, dtype=np.float64).tolist()
        if self.exclude_seen is not None:
            body["exclude_seen"] = self.exclude_seen
        if self.exclude:
            body["exclude"] = list(self.exclude)
        if self.fallback is not None:
            body["fallback"] = self.fallback
        if self.exclude_shown:
            body["exclude_shown"] = True
        if self.filter is not None:
            body["filter"] = {name: dict(c) for name, c in self.filter.items()}
        if self.with_attributes:
            body["with_attributes"] = True
        return body


@dataclass(frozen=True)
class ScoredItem:
    """``attributes``: with ``with_attributes`` only (None otherwise, and for a bundle
    without item attributes)."""

    item_id: ExternalId
    score: float
    attributes: dict[str, Any] | None = None


@dataclass(frozen=True)
class Item:
    """One item's attributes (``GET /v1/items/{id}``; {} for a bundle without them)."""

    bundle_id: str
    id: ExternalId
    attributes: dict[str, Any]


@dataclass(frozen=True)
class RecallResult:
    """Items best first; ``source``: user, user+events, events, history, vector, item or
    popular (user+events, events and history end in ``:item-mean`` for imported vectors,
    README "Bring your own vectors"); ``fresh_events``: the user's newer events in the query
    vector; ``fresh`` False when the service answered without its state store."""

    bundle_id: str
    source: str
    items: list[ScoredItem]
    fresh_events: int = 0
    fresh: bool = True

    @property
    def item_ids(self) -> list[ExternalId]:
        return [i.item_id for i in self.items]

    @property
    def scores(self) -> list[float]:
        return [i.score for i in self.items]


@dataclass(frozen=True)
class BatchResult:
    """Answers in request order: a result, or the error that request would have raised."""

    bundle_id: str
    results: list[RecallResult | RecallError]


@dataclass(frozen=True)
class ModelInfo:
    bundle_id: str
    created_at: datetime
    dim: int
    counts: dict[str, int]
    index: dict[str, Any] | None
    trainer_metrics: dict[str, Any] = field(default_factory=dict)
    # [{"name", "kind"}] of the attributes filters can use; None without item attributes
    item_attributes: list[dict[str, str]] | None = None
    # how the trainer typed items.csv / users.csv columns ({"items": [...], "users": [...]})
    columns: dict[str, list[dict[str, Any]]] | None = None


@dataclass(frozen=True)
class ReloadResult:
    bundle_id: str
    changed: bool


@dataclass(frozen=True)
class AvailabilityResult:
    """After a change: its ``version``, how many items are ``disabled`` in all, and the
    ``unknown`` ids of the request (the serving bundle lacks them; stored anyway)."""

    version: int
    disabled: int
    unknown: list[ExternalId]


@dataclass(frozen=True)
class EventsResult:
    """``accepted`` events stored; ``rejected``: (index in the request, error) of the bad
    ones; ``unknown_items``: accepted events on items the bundle does not know."""

    accepted: int
    rejected: list[tuple[int, RecallError]]
    unknown_items: int


def _items(raw: Iterable[Mapping[str, Any]]) -> list[ScoredItem]:
    return [
        ScoredItem(item["item_id"], float(item["score"]), item.get("attributes")) for item in raw
    ]


def _recall_result(body: Mapping[str, Any], bundle_id: str | None = None) -> RecallResult:
    return RecallResult(
        bundle_id or str(body["bundle_id"]),
        str(body["source"]),
        _items(body["items"]),
        int(body.get("fresh_events") or 0),
        bool(body.get("fresh", True)),
    )


def _batch_item(bundle_id: str, raw: Mapping[str, Any]) -> RecallResult | RecallError:
    status = int(raw["status"])
    if status == 200:
        return _recall_result(raw, bundle_id)
    return error_from(status, raw)


class RecallClient:
    """Synchronous client of one recall endpoint (a replica, or nginx in front of several).

    ``admin_token`` is only needed for :meth:`reload` and the availability calls. Pass
    ``client`` to reuse an ``httpx.Client`` of your own (its base URL is then used as is).
    Thread-safe as httpx.Client is; close it, or use it as a context manager.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        timeout: float = 10.0,
        admin_token: str | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        self._own = client is None
        self._http = client or httpx.Client(base_url=base_url, timeout=timeout)
        self._admin_token = admin_token

    def __enter__(self) -> RecallClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._own:
            self._http.close()

    # -- transport -------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        try:
            response = self._http.request(method, path, json=json, params=params, headers=headers)
        except httpx.TransportError as e:
            raise TransportError(None, "transport", f"{type(e).__name__}: {e}") from e
        if response.is_success:
            return response
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        raise error_from(response.status_code, body)

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._send(method, path, **kwargs).json()

    # -- operations ------------------------------------------------------------------------

    def health(self) -> bool:
        """Whether the process answers ``/healthz``."""
        try:
            self._send("GET", "/healthz")
        except RecallError:
            return False
        return True

    def ready(self) -> str | None:
        """The bundle id being served, or None while none is loaded (503)."""
        try:
            return str(self._json("GET", "/readyz")["bundle_id"])
        except NotReady:
            return None

    def model(self) -> ModelInfo:
        body = self._json("GET", "/v1/model")
        return ModelInfo(
            bundle_id=str(body["bundle_id"]),
            created_at=datetime.fromisoformat(body["created_at"]),
            dim=int(body["dim"]),
            counts={str(k): int(v) for k, v in body["counts"].items()},
            index=body.get("index"),
            trainer_metrics=dict(body.get("trainer_metrics") or {}),
            item_attributes=body.get("item_attributes"),
            columns=body.get("columns"),
        )

    def reload(self, admin_token: str | None = None) -> ReloadResult:
        """Load the bundle CURRENT names now (behind nginx: on the one replica reached)."""
        body = self._json("POST", "/v1/admin/reload", headers=self._admin(admin_token))
        return ReloadResult(str(body["bundle_id"]), bool(body["changed"]))

    def set_availability(
        self,
        disable: Sequence[ExternalId] = (),
        enable: Sequence[ExternalId] = (),
        admin_token: str | None = None,
    ) -> AvailabilityResult:
        """Disable items (in no answer of any replica within about a second) or enable
        them again; kept across bundles. Raises StateUnavailable (503) when the store
        could not take the change."""
        body = self._json(
            "POST",
            "/v1/admin/items/availability",
            json={"disable": list(disable), "enable": list(enable)},
            headers=self._admin(admin_token),
        )
        return AvailabilityResult(int(body["version"]), int(body["disabled"]), body["unknown"])

    def availability(self, admin_token: str | None = None) -> tuple[int, list[ExternalId]]:
        """``(version, disabled item ids)`` as the state store holds them."""
        body = self._json("GET", "/v1/admin/items/availability", headers=self._admin(admin_token))
        return int(body["version"]), list(body["disabled"])

    def _admin(self, admin_token: str | None) -> dict[str, str] | None:
        token = admin_token or self._admin_token
        return {"Authorization": f"Bearer {token}"} if token else None

    # -- recall ----------------------------------------------------------------------------

    def recall(
        self,
        *,
        user_id: ExternalId | None = None,
        history: Sequence[ExternalId] | None = None,
        features: Mapping[str, FeatureValue] | None = None,
        vector: Sequence[float] | np.ndarray | None = None,
        k: int = 100,
        exclude_seen: bool | None = None,
        exclude: Sequence[ExternalId] = (),
        fallback: Literal["popular"] | None = None,
        exclude_shown: bool = False,
        filter: Filter | None = None,
        with_attributes: bool = False,
    ) -> RecallResult:
        """Top-``k`` items for a user (with their newer events), a history, or a raw
        vector (one of them), among the items ``filter`` matches (exact top-k among them;
        :class:`InvalidInput` for a filter the bundle cannot apply)."""
        query = Query(
            user_id,
            history,
            features,
            vector,
            k,
            exclude_seen,
            exclude,
            fallback,
            exclude_shown,
            filter,
            with_attributes,
        )
        return self.recall_query(query)

    def recall_query(self, query: Query) -> RecallResult:
        return _recall_result(self._json("POST", "/v1/recall", json=query.to_json()))

    def recall_batch(self, queries: Iterable[Query]) -> BatchResult:
        """Many recalls on one bundle, answered in order; per-item errors do not raise."""
        body = self._json(
            "POST", "/v1/recall/batch", json={"requests": [q.to_json() for q in queries]}
        )
        bundle_id = str(body["bundle_id"])
        return BatchResult(bundle_id, [_batch_item(bundle_id, r) for r in body["results"]])

    def events(self, events: Iterable[Mapping[str, Any]]) -> EventsResult:
        """Store events (``{"user_id", "item_id", "timestamp"?, "type"?}`` each); bad ones
        come back in ``rejected``. Raises :class:`StateUnavailable` (nothing stored)."""
        body = self._json("POST", "/v1/events", json={"events": [dict(e) for e in events]})
        rejected = [(int(r["index"]), error_from(422, r)) for r in body["rejected"]]
        return EventsResult(int(body["accepted"]), rejected, int(body["unknown_items"]))

    def similar(
        self,
        item_id: ExternalId,
        k: int = 100,
        *,
        filter: Filter | None = None,
        exclude: Sequence[ExternalId] = (),
        with_attributes: bool = False,
    ) -> RecallResult:
        """Item-to-item neighbours (the item itself and ``exclude`` dropped) among the items
        ``filter`` matches; the POST form when any of those is given, else the GET one."""
        path = f"/v1/items/{quote(str(item_id), safe='')}/similar"
        if filter is None and not exclude and not with_attributes:
            return _recall_result(self._json("GET", path, params={"k": k}))
        body: dict[str, Any] = {"k": k, "exclude": list(exclude)}
        if filter is not None:
            body["filter"] = {name: dict(c) for name, c in filter.items()}
        if with_attributes:
            body["with_attributes"] = True
        return _recall_result(self._json("POST", path, json=body))

    def item(self, item_id: ExternalId) -> Item:
        """One item's attributes; :class:`NotFound` for an id the bundle does not know."""
        body = self._json("GET", f"/v1/items/{quote(str(item_id), safe='')}")
        return Item(str(body["bundle_id"]), body["id"], dict(body["attributes"]))

    # -- vectors ---------------------------------------------------------------------------

    def user_vector(self, user_id: ExternalId) -> np.ndarray:
        """One user's vector as a recall by user_id uses it (newer events included):
        float32 (dim,)."""
        return self._one_vector("users", user_id)

    def item_vector(self, item_id: ExternalId) -> np.ndarray:
        """The stored vector of one item: float32 (dim,)."""
        return self._one_vector("items", item_id)

    def user_vectors(self, ids: Sequence[ExternalId]) -> tuple[np.ndarray, list[ExternalId]]:
        """float32 (len(ids), dim) in request order (NaN rows for unknown ids), unknown ids."""
        return self._many_vectors("users", ids)

    def item_vectors(self, ids: Sequence[ExternalId]) -> tuple[np.ndarray, list[ExternalId]]:
        """float32 (len(ids), dim) in request order (NaN rows for unknown ids), unknown ids."""
        return self._many_vectors("items", ids)

    def _one_vector(self, kind: str, id: ExternalId) -> np.ndarray:
        body = self._json("GET", f"/v1/{kind}/{quote(str(id), safe='')}/vector")
        return np.asarray(body["vector"], dtype=np.float32)

    def _many_vectors(
        self, kind: str, ids: Sequence[ExternalId]
    ) -> tuple[np.ndarray, list[ExternalId]]:
        response = self._send(
            "POST",
            f"/v1/{kind}/vectors",
            json={"ids": list(ids)},
            headers={"Accept": NPY_MEDIA_TYPE},
        )
        try:
            array = np.load(io.BytesIO(response.content), allow_pickle=False)
        except ValueError as e:
            raise RecallError(response.status_code, "bad_response", f"not a .npy body: {e}") from e
        if array.dtype != np.float32 or array.ndim != 2 or array.shape[0] != len(ids):
            raise RecallError(
                response.status_code,
                "bad_response",
                f"expected float32 ({len(ids)}, dim), got {array.dtype} {array.shape}",
            )
        # Stored vectors are finite (the service verifies them), so NaN marks a missing id.
        found = ~np.isnan(array).all(axis=1) if array.shape[1] else np.ones(len(ids), bool)
        missing = [i for i, ok in zip(ids, found.tolist(), strict=True) if not ok]
        expected = response.headers.get("x-missing-count")
        if expected is not None and int(expected) != len(missing):
            raise RecallError(
                response.status_code,
                "bad_response",
                f"X-Missing-Count {expected} but {len(missing)} NaN rows",
            )
        return array, missing
