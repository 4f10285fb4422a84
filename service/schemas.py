"""Request and response bodies of HTTP API v1 (they also document the OpenAPI schema)."""

from __future__ import annotations

import math
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
    model_validator,
)

# Strict JSON types throughout: coercion (true -> 1, "5" -> 5, "yes" -> true) would hide
# client bugs. Strings must be encodable as UTF-8 (JSON's "\ud800" escape is not), so no
# echo of a client string (404 messages, `missing`) can fail to serialize.


def _utf8(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return value


def _id_type(value: object) -> object:
    """One clear message for a bad id (the union's own is one line per member)."""
    if isinstance(value, str):
        return _utf8(value)
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


Text = Annotated[StrictStr, AfterValidator(_utf8)]
Int64 = Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1)]
ExternalId = Annotated[
    Int64 | Text,
    BeforeValidator(_id_type),
    Field(description="an id as the input data gave it: an int64 or a string"),
]
FiniteFloat = Annotated[StrictFloat, Field(allow_inf_nan=False)]
FeatureValue = Annotated[StrictInt | FiniteFloat | Text | None, BeforeValidator(_feature_type)]


class RecallRequest(BaseModel):
    """Exactly one of ``user_id``, ``history`` (+ ``features``), ``vector``."""

    model_config = ConfigDict(extra="forbid")

    user_id: ExternalId | None = None
    history: list[ExternalId] | None = Field(
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
    exclude: list[ExternalId] = Field(default_factory=list, description="item ids to drop")
    fallback: Literal["popular"] | None = Field(
        None,
        description="'popular': answer an unknown user_id, or a history with no known "
        "item, with popular items (source 'popular') instead of a 404",
    )

    @model_validator(mode="after")
    def _exactly_one_query(self) -> RecallRequest:
        given = [self.user_id is not None, self.history is not None, self.vector is not None]
        if sum(given) != 1:
            raise ValueError("give exactly one of user_id, history, vector")
        if self.features is not None and self.history is None:
            raise ValueError("features go with history")
        return self


class ScoredItem(BaseModel):
    item_id: ExternalId
    score: float


class RecallResponse(BaseModel):
    bundle_id: str
    source: Literal["user", "history", "vector", "item", "popular"]
    items: list[ScoredItem]


class BatchRecallRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requests: list[dict[str, Any]] = Field(
        description="RecallRequest objects; each is validated and answered on its own"
    )


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class BatchItemResult(BaseModel):
    status: int
    source: str | None = None
    items: list[ScoredItem] | None = None
    error: ErrorBody | None = None


class BatchRecallResponse(BaseModel):
    bundle_id: str
    results: list[BatchItemResult]


class IdsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[ExternalId] = Field(description="ids to look up; duplicates allowed")


class VectorResponse(BaseModel):
    bundle_id: str
    id: ExternalId
    vector: list[float]


class VectorsResponse(BaseModel):
    bundle_id: str
    dim: int
    vectors: list[list[float] | None] = Field(description="in request order; null if missing")
    missing: list[ExternalId] = Field(description="requested ids the bundle does not know")


class ModelInfo(BaseModel):
    bundle_id: str
    created_at: str
    dim: int
    counts: dict[str, int]
    index: dict[str, Any] | None
    trainer_metrics: dict[str, Any]


class ReloadResponse(BaseModel):
    bundle_id: str
    changed: bool
