"""Request and response bodies of HTTP API v1 (they also document the OpenAPI schema)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
ExternalId = Annotated[Int64 | str, Field(description="an id as the input data gave it")]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
FeatureValue = str | int | FiniteFloat | None


class RecallRequest(BaseModel):
    """Exactly one of ``user_id``, ``history`` (+ ``features``), ``vector``."""

    model_config = ConfigDict(extra="forbid")

    user_id: ExternalId | None = None
    history: list[ExternalId] | None = Field(
        None, description="item ids the user watched, oldest first"
    )
    features: dict[str, FeatureValue] | None = Field(
        None, description="user features for the tower, e.g. age, gender"
    )
    vector: list[FiniteFloat] | None = Field(None, description="a raw query vector (dim)")
    k: int = Field(100, description="how many items; 1..RECALL_MAX_K")
    exclude_seen: bool | None = Field(
        None, description="drop the user's training items / the history (default: on)"
    )
    exclude: list[ExternalId] = Field(default_factory=list, description="item ids to drop")
    fallback: Literal["popular"] | None = Field(
        None, description="'popular': answer an unknown user_id with popular items"
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
