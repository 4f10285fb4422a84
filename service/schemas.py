"""Request and response bodies of HTTP API v1 (they also document the OpenAPI schema)."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    WithJsonSchema,
    model_validator,
)

from recall.index.experiment import ARM_NAME, CONTROL
from recall.index.ids import MAX_ID_BYTES, id_problem

# Strict JSON types throughout: coercion (true -> 1, "5" -> 5, "yes" -> true) would hide
# client bugs. Strings must be encodable as UTF-8 (JSON's "\ud800" escape is not), so no
# echo of a client string (404 messages, `missing`) can fail to serialize.


def _utf8(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return value


def _id_text(value: str) -> str:
    """A string id: valid Unicode, at most MAX_ID_BYTES bytes of UTF-8, no NUL."""
    problem = id_problem(_utf8(value))
    if problem is not None:
        raise ValueError(problem)
    return value


def _id_type(value: object) -> object:
    """One clear message for a bad id (the union's own is one line per member)."""
    if isinstance(value, str):
        return _id_text(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("an id is an integer or a string")
    if not -(2**63) <= value < 2**63:
        raise ValueError("an integer id must fit in int64")
    return value


def _feature_type(value: object) -> object:
    if isinstance(value, str):
        return _utf8(value)
    if isinstance(value, bool) or not isinstance(value, int | float | None):
        raise ValueError("a feature value is a string, a number or null")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("a numeric feature must be finite (no NaN or Infinity)")
    return value


def _number(value: object) -> object:
    """A filter operand number: an int64 or a finite float, not a bool (JSON true is not 1)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("a filter bound is a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("a filter number must be finite (no NaN or Infinity)")
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        raise ValueError("an integer in a filter must fit in int64")
    return value


def _filter_value(value: object) -> object:
    """One value of an ``any``/``none`` list: a string or a number, not a bool or null."""
    if isinstance(value, str):
        return _utf8(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("a filter value is a string or a number")
    return _number(value)


_JSON_INT = re.compile(r"-?(0|[1-9][0-9]*)")


def _query_int(value: object) -> object:
    """A query-string integer spelled as JSON spells one: ASCII digits, an optional
    leading minus, no leading zeros; ``int()``'s and pydantic's laxer forms (``+5``,
    `` 5``, ``1_0``, ``5.0``) are refused as a JSON body refuses them."""
    if isinstance(value, str) and not _JSON_INT.fullmatch(value):
        raise ValueError("must be an integer: digits with an optional leading minus")
    return value


QueryInt = Annotated[int, BeforeValidator(_query_int)]
"""The one integer type of every query parameter (``Annotated[QueryInt, Query(...)]``)."""
Text = Annotated[StrictStr, AfterValidator(_utf8)]
Int64 = Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1)]
JsonId = Annotated[
    Int64 | Text,
    BeforeValidator(_id_type),
    Field(
        description="an id as the input data gave it: an int64 or a string of at most "
        f"{MAX_ID_BYTES} bytes of UTF-8, without NUL"
    ),
]
PathId = Annotated[
    str,
    AfterValidator(_id_text),
    Field(description=f"an id as the input data gave it (at most {MAX_ID_BYTES} bytes)"),
]
"""An id in a URL path (``/v1/items/{id}``...): the same limits as a body's ids."""
FiniteFloat = Annotated[StrictFloat, Field(allow_inf_nan=False)]
FeatureValue = Annotated[StrictInt | FiniteFloat | Text | None, BeforeValidator(_feature_type)]


ArmName = Annotated[
    StrictStr,
    Field(
        pattern=f"^{ARM_NAME.pattern}$",
        description="the experiment arm to answer from (default control); only without "
        "user_id: a user's arm is the hash of their id",
    ),
]
ARM = Field(
    CONTROL,
    description="the experiment arm whose bundle answered: control (CURRENT's bundle, "
    "also when no experiment runs or the arm's bundle is not served here) or an arm's name",
)

FilterNumber = Annotated[Int64 | FiniteFloat, BeforeValidator(_number)]
FilterValue = Annotated[Int64 | FiniteFloat | Text, BeforeValidator(_filter_value)]


class Condition(BaseModel):
    """What one attribute must satisfy: every op given must hold (at least one op).

    Which ops fit which attribute kind (``GET /v1/model`` lists the bundle's attributes):
    ``any``/``none`` take a non-empty list of strings (categorical and multi-valued
    attributes) or numbers (numeric ones); ``gte``/``gt``/``lte``/``lt`` take a number
    (numeric attributes only). A missing value matches ``none`` and nothing else."""

    model_config = ConfigDict(extra="forbid")

    # null is the same as leaving the op out
    any: list[FilterValue] | None = Field(
        None, description="the item has at least one of these values"
    )
    none: list[FilterValue] | None = Field(None, description="the item has none of these values")
    gte: FilterNumber | None = Field(None, description="numeric attribute >= this")
    gt: FilterNumber | None = Field(None, description="numeric attribute > this")
    lte: FilterNumber | None = Field(None, description="numeric attribute <= this")
    lt: FilterNumber | None = Field(None, description="numeric attribute < this")


Filter = Annotated[
    dict[Text, Condition],
    Field(
        description="conditions on item attributes, all of which must hold, e.g. "
        '{"genres": {"any": ["Comedy", "Drama"]}, "year": {"gte": 1990, "lt": 2000}}; '
        "the answer is the exact top-k among matching items. Unknown attributes, a wrong "
        "op or value type for the attribute's kind, an empty filter or condition: 422",
        examples=[{"genres": {"any": ["Comedy"]}, "year": {"gte": 1990}}],
    ),
]


def conditions(spec: dict[str, Condition] | None) -> dict[str, dict[str, object]] | None:
    """A validated filter as plain ``{attribute: {op: operand}}`` (ops given only)."""
    if spec is None:
        return None
    return {name: c.model_dump(exclude_none=True) for name, c in spec.items()}


WITH_ATTRIBUTES = Field(
    False,
    description="add each returned item's attributes (`attributes`); a bundle without "
    "item attributes answers without that key",
)


class RecallRequest(BaseModel):
    """Exactly one of ``user_id``, ``history`` (+ ``features``), ``vector``."""

    model_config = ConfigDict(extra="forbid")

    user_id: JsonId | None = None
    history: list[JsonId] | None = Field(
        None, description="item ids the user watched, oldest first"
    )
    features: dict[Text, FeatureValue] | None = Field(
        None,
        description="user features for the tower, e.g. age, gender: categorical ones as "
        "strings (one the vocabulary lacks = unknown), numeric ones as numbers within "
        "float32, null = missing; other names or types get a 422 listing the known ones",
    )
    vector: list[FiniteFloat] | None = Field(None, description="a raw query vector (dim)")
    k: StrictInt = Field(100, description="how many items; 1..RECALL_MAX_K")
    exclude_seen: StrictBool | None = Field(
        None, description="drop the user's training items / the history (default: on)"
    )
    exclude: list[JsonId] = Field(default_factory=list, description="item ids to drop")
    fallback: Literal["popular"] | None = Field(
        None,
        description="'popular': answer an unknown user_id, or a history with no known "
        "item, with popular items (source 'popular') instead of a 404",
    )
    exclude_shown: StrictBool = Field(
        False,
        description="drop the items of the user's impressions (POST /v1/events, type "
        "'impression') of the last RECALL_SHOWN_TTL_S seconds; needs user_id",
    )
    filter: Filter | None = None
    with_attributes: StrictBool = WITH_ATTRIBUTES
    arm: ArmName | None = None

    @model_validator(mode="after")
    def _exactly_one_query(self) -> RecallRequest:
        given = [self.user_id is not None, self.history is not None, self.vector is not None]
        if sum(given) != 1:
            raise ValueError("give exactly one of user_id, history, vector")
        if self.arm is not None and self.user_id is not None:
            raise ValueError("arm goes without user_id (a user's arm is the hash of their id)")
        if self.features is not None and self.history is None:
            raise ValueError("features go with history")
        if self.exclude_shown and self.user_id is None:
            raise ValueError("exclude_shown goes with user_id (impressions are per user)")
        return self


class ScoredItem(BaseModel):
    item_id: JsonId
    score: float
    attributes: dict[str, Any] | None = Field(
        None, description="with_attributes only: the item's attributes (missing ones left out)"
    )


Source = Literal[
    "user",
    "user+events",
    "events",
    "history",
    "user+events:item-mean",
    "events:item-mean",
    "history:item-mean",
    "vector",
    "item",
    "popular",
]
UserSource = Literal["user", "user+events", "events", "user+events:item-mean", "events:item-mean"]

FRESH_EVENTS = Field(
    0,
    description="the user's events newer than the bundle's training data that went into "
    "the query vector (events on items the bundle knows, at most the tower's window)",
)
FRESH = Field(
    True,
    description="false when the state store could not be read in time: the answer then "
    "comes from the bundle alone (no fresh events, no exclude_shown)",
)


class RecallResponse(BaseModel):
    bundle_id: str
    arm: str = ARM
    source: Source = Field(
        description="user: the bundle's vector; user+events: the user's training history "
        "followed by newer events through the tower; events: a user known only from "
        "events; history, vector, item, popular: as asked or the fallback; "
        "...:item-mean: computed by the item-mean rule of a bundle without a user tower "
        "(imported vectors: the mean of the items' vectors)"
    )
    items: list[ScoredItem]
    fresh_events: int = FRESH_EVENTS
    fresh: bool = FRESH


class BatchRecallRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requests: list[dict[str, Any]] = Field(
        description="RecallRequest objects; each is validated and answered on its own"
    )


class SimilarRequest(BaseModel):
    """``POST /v1/items/{id}/similar``: the GET form's ``k`` plus a filter and exclusions."""

    model_config = ConfigDict(extra="forbid")

    k: StrictInt = Field(100, description="how many items; 1..RECALL_MAX_K")
    filter: Filter | None = None
    exclude: list[JsonId] = Field(default_factory=list, description="item ids to drop")
    with_attributes: StrictBool = WITH_ATTRIBUTES
    arm: ArmName | None = None


class ItemResponse(BaseModel):
    bundle_id: str
    id: JsonId
    attributes: dict[str, Any] = Field(
        description="the item's attributes from the training data's items table: strings "
        "(categorical), lists of strings (multi-valued), numbers; missing ones left out; "
        "{} for a bundle without item attributes"
    )


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class BatchItemResult(BaseModel):
    status: int
    bundle_id: str | None = Field(None, description="the bundle that answered this entry")
    arm: str | None = Field(None, description="the arm that answered this entry (as `arm`)")
    source: Source | None = None
    items: list[ScoredItem] | None = None
    fresh_events: int | None = None
    fresh: bool | None = None
    error: ErrorBody | None = None


class BatchRecallResponse(BaseModel):
    bundle_id: str
    results: list[BatchItemResult]


class IdsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[JsonId] = Field(description="ids to look up; duplicates allowed")


class VectorResponse(BaseModel):
    bundle_id: str
    id: JsonId
    vector: list[float]
    source: UserSource | None = Field(
        None, description="users only: where the vector came from (as in a recall)"
    )
    fresh_events: int | None = Field(None, description="users only: as in a recall")
    fresh: bool | None = Field(None, description="users only: as in a recall")


class VectorsResponse(BaseModel):
    bundle_id: str
    dim: int
    vectors: list[list[float] | None] = Field(description="in request order; null if missing")
    missing: list[JsonId] = Field(
        description="requested ids the bundle does not know (users: nor the events)"
    )
    fresh_events: list[int] | None = Field(
        None,
        description="users only, in request order: fresh events in each vector (0 = the "
        "bundle's vector; a user known only from events has a vector from them)",
    )
    fresh: bool | None = Field(None, description="users only: as in a recall")


class ModelInfo(BaseModel):
    bundle_id: str
    created_at: str
    dim: int
    counts: dict[str, int]
    index: dict[str, Any] | None = Field(
        description="the index: kind, search settings, measured recall and latency "
        "(`filtered`: the same under filters of several selectivities, with the strategy)"
    )
    trainer_metrics: dict[str, Any]
    item_attributes: list[dict[str, str]] | None = Field(
        None,
        description='the attributes filters can use: [{"name", "kind"}], kind categorical, '
        "multi or numeric; null for a bundle without item attributes",
    )
    columns: dict[str, list[dict[str, Any]]] | None = Field(
        None,
        description="how the trainer typed each column of items.csv and users.csv: "
        '{"items": [...], "users": [...]}, each {"name", "kind", "declared", '
        '"made_missing", "examples"} (non-blank values of a numeric column that were not '
        "numbers, made missing; up to 5 of them); null for a bundle without this record",
    )
    metric: Literal["inner_product", "cosine"] = Field(
        "inner_product", description="cosine: every vector has unit norm, scores are cosines"
    )
    history_rule: dict[str, Any] | None = Field(
        None,
        description='a bundle without a user tower: {"rule": "item_mean", "history_length"}, '
        "a history's vector is the mean of its last history_length items' vectors "
        "(normalized for cosine); null: the trained user tower",
    )
    source: dict[str, Any] | None = Field(
        None,
        description='an imported bundle: {"kind": "import", "model", "command", "inputs": '
        '{"items" | "users" | "interactions" | "item_attributes": {"path", "sha256", '
        '"bytes", "rows", "columns"}}, "normalized"}; null: trained by `recall train`',
    )


class ReloadResponse(BaseModel):
    bundle_id: str
    changed: bool


MAX_FUTURE_S = 86_400.0
"""An event may be at most this far in the future (clock skew), else it is rejected."""


def _timestamp(value: object) -> object:
    """Unix seconds as a float: a JSON number (not bool), finite, >= 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("timestamp is a number of unix seconds")
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds):
        raise ValueError("timestamp must be finite (no NaN or Infinity)")
    if seconds < 0:
        raise ValueError("timestamp must be >= 0 (unix seconds)")
    return seconds


Timestamp = Annotated[
    float, BeforeValidator(_timestamp), Field(description="unix seconds; default: now")
]


class EventIn(BaseModel):
    """One event of ``POST /v1/events``; validated on its own (a bad one is rejected inline)."""

    model_config = ConfigDict(extra="forbid")

    user_id: JsonId
    item_id: JsonId
    timestamp: Timestamp | None = None
    type: Literal["interaction", "impression"] = Field(
        "interaction",
        description="interaction (watched, clicked...: moves the user's vector) or "
        "impression (shown: dropped by exclude_shown within RECALL_SHOWN_TTL_S)",
    )


class EventsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Any per entry, so that one bad event is rejected inline instead of the whole body.
    events: list[Annotated[Any, WithJsonSchema(EventIn.model_json_schema())]] = Field(
        description="at most RECALL_MAX_EVENTS events; each validated on its own"
    )


class RejectedEvent(BaseModel):
    index: int = Field(description="position in the request's events")
    error: ErrorBody


class EventsResponse(BaseModel):
    accepted: int = Field(description="events stored (durable when this answer is sent)")
    rejected: list[RejectedEvent]
    unknown_items: int = Field(
        description="accepted events on items the bundle does not know: kept for "
        "retraining, but they cannot move a vector yet"
    )


class AvailabilityRequest(BaseModel):
    """``POST /v1/admin/items/availability``: items to disable and to enable again."""

    model_config = ConfigDict(extra="forbid")

    disable: list[JsonId] = Field(
        default_factory=list, description="item ids no answer may contain until enabled"
    )
    enable: list[JsonId] = Field(
        default_factory=list, description="item ids to allow again (not disabled: no-op)"
    )


class AvailabilityChange(BaseModel):
    version: int = Field(description="the availability version this change made")
    disabled: int = Field(description="items disabled now, in all (this bundle's or not)")
    unknown: list[JsonId] = Field(
        description="ids of the request the serving bundle does not know (stored anyway: "
        "a later bundle may know them)"
    )


class AvailabilityState(BaseModel):
    version: int = Field(description="bumped by every change; 0 before the first")
    disabled: list[JsonId] = Field(description="disabled item ids, ints first, then strings")


# The console's read-only endpoints (routes/console.py, routes/items.py, routes/operations.py)


class HistoryItem(BaseModel):
    item_id: int | str
    timestamp: float = Field(description="unix seconds")
    attributes: dict[str, Any] | None = Field(
        None, description="the item's attributes (left out when the bundle has none)"
    )


class HistoryResponse(BaseModel):
    bundle_id: str
    user_id: int | str
    known: bool = Field(description="the bundle has this user (trained on their history)")
    history: list[HistoryItem] = Field(description="the training window, newest first")
    fresh_events: list[HistoryItem] = Field(
        description="interactions stored after the bundle's training data, newest first"
    )
    fresh: bool = Field(description="false when the state store could not be read")


class FoundItem(BaseModel):
    item_id: int | str
    attributes: dict[str, Any]


class SearchResponse(BaseModel):
    bundle_id: str
    items: list[FoundItem]


class Reload(BaseModel):
    at: float = Field(description="unix seconds")
    bundle_id: str | None
    result: str = Field(description="success, failure or unchanged")
    reason: str | None = Field(None, description="why a reload failed (bundle ids only)")


class ReplicaArm(BaseModel):
    name: str
    bundle_id: str
    share: float = Field(description="the share of users in this arm (0..1)")
    state: Literal["loaded", "shared", "fallback"] = Field(
        description="loaded: its bundle is served here; shared: it is CURRENT's bundle, "
        "loaded once; fallback: refused or not loaded yet, its users get control"
    )
    reason: str | None = Field(None, description="fallback: why (bundle ids only)")


class ReplicaExperiment(BaseModel):
    id: str
    started_at: float = Field(description="unix seconds")
    arms: list[ReplicaArm]


class ReplicaInfo(BaseModel):
    started_at: float = Field(description="unix seconds")
    bundle_id: str | None
    reloads: list[Reload] = Field(description="the last 50 reload attempts, oldest first")
    store_reachable: bool = Field(
        description="whether the bundle store (an s3:// root) answered the last poll"
    )
    serving_from_cache: bool = Field(
        description="serving the last bundle verified in the download cache, not CURRENT"
    )
    experiment: ReplicaExperiment | None = Field(
        None, description="the experiment this replica serves beside CURRENT (null: none)"
    )


class LiveRate(BaseModel):
    value: float | None = Field(description="hits / events (null: no events)")
    low: float | None = Field(description="95% Wilson score interval, low end")
    high: float | None = Field(description="... high end")


class LiveArm(BaseModel):
    name: str
    bundle_ids: list[str] = Field(description="bundles that answered its counted events")
    share: float = Field(description="the share of users in this arm (0..1)")
    events: int = Field(description="interaction events of users with a served list")
    hits: dict[str, int] = Field(description="per K: events whose item ranked < K")
    hr: dict[str, LiveRate] = Field(description="per K: live HR@K with its interval")


class LiveDifference(BaseModel):
    arm: str
    vs: str = Field(description="the arm compared with (control)")
    k: str
    value: float | None = Field(description="HR@K of arm minus that of vs (null: no events)")
    low: float | None = Field(description="95% Newcombe hybrid score interval, low end")
    high: float | None = Field(description="... high end")


class LiveBucket(BaseModel):
    arm: str
    t: float = Field(description="the bucket's start, unix seconds")
    events: int
    hits: dict[str, int]


class ExperimentArmInfo(BaseModel):
    name: str
    bundle_id: str
    share: float


class ExperimentInfo(BaseModel):
    id: str
    started_at: float = Field(description="unix seconds")
    arms: list[ExperimentArmInfo]


class ExperimentReport(BaseModel):
    experiment: ExperimentInfo | None = Field(
        description="the experiment served now (null: none; control alone is counted)"
    )
    ks: list[int] = Field(description="the K of the live hits")
    arms: list[LiveArm] = Field(description="control first, then the experiment's arms")
    differences: list[LiveDifference] = Field(description="each arm vs control, per K")
    series: list[LiveBucket] = Field(
        description="per arm and time bucket, in time order; the last 1,000 buckets per arm"
    )
