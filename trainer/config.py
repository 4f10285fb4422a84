"""The trainer's typed, frozen configuration (from defaults, a TOML file, then flags)."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from recall.index.columns import USER_KINDS, Kind, parse_schema
from recall.index.tower import TowerKind


class ConfigError(ValueError):
    """A configuration file or value is invalid."""


class TrainConfig(BaseModel):
    """Everything that decides a training run; written into the bundle manifest."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 0
    device: Literal["cpu", "cuda"] = "cpu"

    # Model: YouTube DNN candidate generation (README, "The model").
    item_dim: int = Field(64, ge=1, description="input item embedding width")
    genre_dim: int = Field(16, ge=1)
    categorical_dim: int = Field(8, ge=1, description="embedding width per categorical feature")
    min_category_count: int = Field(5, ge=1, description="rarer values share the OOV row")
    hidden: list[int] = Field(default=[256, 64], min_length=1, description="last = dim(u)")
    history_length: int = Field(50, ge=1)
    tower: TowerKind = Field(
        "attention", description="history pooling: mean + a self-attention readout, or mean"
    )
    attention_heads: int = Field(2, ge=1, description="attention tower; divides item_dim")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)

    # Examples.
    max_examples_per_user: int = Field(300, ge=1)

    # Loss: full softmax for small catalogs, sampled softmax with log-Q correction else.
    loss: Literal["auto", "full", "sampled"] = "auto"
    full_softmax_max_items: int = Field(20_000, ge=1)
    negatives: int = Field(2048, ge=1, description="sampled negatives per batch (shared)")
    sampling_alpha: float = Field(0.75, ge=0.0, le=1.0, description="negatives ~ count^alpha")

    # Optimization.
    epochs: int = Field(30, ge=1, description="upper bound; early stopping usually ends sooner")
    patience: int = Field(3, ge=1, description="epochs without validation gain before stopping")
    batch_size: int = Field(512, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    max_steps_per_epoch: int | None = Field(None, ge=1, description="for benchmarks")
    bf16: Literal["auto", "on", "off"] = Field(
        "auto",
        description="bf16 autocast of the training forward pass and loss: auto = on GPUs "
        "with native bf16 (Ampere and later), on = on any device (the CPU too), off",
    )

    # Validation (early stopping): HR@k of the validation item over a user sample.
    validation_users: int = Field(5000, ge=1)
    validation_k: int = Field(50, ge=1)

    # Declared column kinds of items.csv / users.csv, over the inference rule
    # (index.columns): "year=numeric,genres=multi" or a TOML table {year = "numeric"}.
    item_schema: dict[str, Kind] = Field(default_factory=dict)
    user_schema: dict[str, Literal["categorical", "numeric"]] = Field(default_factory=dict)

    @field_validator("bf16", mode="before")
    @classmethod
    def _bf16(cls, value: Any) -> Any:
        """``true``/``false``, what the setting took before it had three values: true was
        "on CUDA", now "auto"; false is "off"."""
        if isinstance(value, bool):
            return "auto" if value else "off"
        return value

    @field_validator("item_schema", mode="before")
    @classmethod
    def _item_schema(cls, value: Any) -> dict[str, Kind]:
        return parse_schema(value)

    @field_validator("user_schema", mode="before")
    @classmethod
    def _user_schema(cls, value: Any) -> dict[str, Kind]:
        return parse_schema(value, USER_KINDS)

    @model_validator(mode="after")
    def _heads_divide_item_dim(self) -> TrainConfig:
        if self.tower == "attention" and self.item_dim % self.attention_heads:
            raise ValueError(
                f"attention_heads ({self.attention_heads}) must divide item_dim ({self.item_dim})"
            )
        return self

    def resolved_loss(self, n_items: int) -> Literal["full", "sampled"]:
        if self.loss != "auto":
            return self.loss
        return "full" if n_items <= self.full_softmax_max_items else "sampled"


def load_config(path: Path | None, overrides: Mapping[str, Any]) -> TrainConfig:
    """Defaults, then the TOML file (top-level keys or a ``[train]`` table), then overrides.

    ``overrides`` with value None are ignored (flags the user did not pass).
    """
    values: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"{path}: {e}") from None
        values.update(data.get("train", data))
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TrainConfig.model_validate(values)
    except ValidationError as e:
        where = f"{path}: " if path else ""
        raise ConfigError(f"{where}invalid training config:\n{e}") from None
