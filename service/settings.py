"""Service settings from ``RECALL_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from recall.index.roots import S3Location, is_s3_url
from recall.service.state import DEFAULT_RETENTION_S, DEFAULT_SERVED_TTL_S, check_url, sqlite_url

MIN_ADMIN_TOKEN_LENGTH = 16
PLACEHOLDER_PREFIXES = ("changeme", "replaceme", "yourtoken", "yoursecret", "placeholder")
"""Tokens that start like these (case, ``-`` and ``_`` ignored) are examples, not secrets."""
STATE_FILE = Path(".state/events.sqlite")
"""The default state store, under the bundle root."""


class EventLogSettings(BaseSettings):
    """The retraining log's settings: the part of :class:`Settings` that ``recall events
    export`` reads (it needs no bundle root)."""

    # hide_input_in_errors: a refused admin token is still a secret (no echo in logs).
    model_config = SettingsConfigDict(
        env_prefix="RECALL_", frozen=True, extra="forbid", hide_input_in_errors=True
    )

    events_retention_s: float = Field(DEFAULT_RETENTION_S, gt=0, description="retraining log kept")


class Settings(EventLogSettings):
    """Everything an operator can set (with ``events_retention_s`` of
    :class:`EventLogSettings`); created by the caller, never at import time."""

    root: Path | S3Location = Field(
        description="bundle root: a directory or s3://bucket/prefix; holds CURRENT and the bundles"
    )
    # An s3:// root's replica downloads bundles here (service/bundle_cache.py) and starts
    # from the last verified one when the store is down.
    cache_dir: Path | None = Field(None, description="download cache of an s3:// root")
    cache_keep: int = Field(2, ge=1, le=100, description="bundles the cache keeps")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64)
    max_k: int = Field(1000, ge=1, le=100_000, description="largest k a request may ask")
    max_batch: int = Field(256, ge=1, description="most requests in one recall batch")
    max_batch_items: int = Field(
        25_600, ge=1, description="most items a batch asks for in all (sum of k); else 413"
    )
    max_vector_ids: int = Field(10_000, ge=1, description="most ids in one vector lookup")
    max_history: int = Field(1000, ge=1, description="most items in a request's history")
    max_body_bytes: int = Field(2 << 20, ge=1024, description="larger bodies get 413")
    header_timeout_s: float = Field(
        10.0, gt=0, le=600, description="a request's headers must arrive within this"
    )
    reload_interval_s: float = Field(5.0, ge=0, description="CURRENT poll period; 0 = off")
    search_threads: int = Field(
        4, ge=0, le=256, description="threads running FAISS; 0: on each worker's event loop"
    )
    # FastAPI's native OpenTelemetry looks up the global providers (os.environ) on every
    # request even when none is set: ~8% of the event loop's time (docs/performance.md).
    opentelemetry: bool = Field(
        False, description="FastAPI's OpenTelemetry spans, metrics, logs (global providers)"
    )
    admin_token: SecretStr | None = Field(None, description="unset = admin API disabled")
    # Online state (service/state, docs/state.md). The default lives beside the bundles, in
    # a dot directory that bundle retention ignores.
    state_url: str = Field(
        "", description="sqlite:///path or redis://host:port/db; default <root>/.state/"
    )
    state_timeout_s: float = Field(0.05, gt=0, le=10, description="bound on a store read")
    state_window: int = Field(50, ge=1, le=10_000, description="interactions kept per user")
    shown_ttl_s: float = Field(3600, gt=0, description="impressions excluded this long")
    # Live quality (service/live_quality.py, docs/experiments.md "Live quality").
    served_ttl_s: float = Field(
        DEFAULT_SERVED_TTL_S, gt=0, description="a served list counts live hits this long"
    )
    live_bucket_s: float = Field(
        60.0, ge=1, le=86400, description="time bucket of the live counts (seconds)"
    )
    max_events: int = Field(1000, ge=1, le=100_000, description="most events per POST")
    # Item availability (service/availability.py): every replica polls the store's version.
    availability_poll_s: float = Field(
        0.25, gt=0, le=60, description="availability version poll period (seconds)"
    )
    max_availability_ids: int = Field(
        10_000, ge=1, le=1_000_000, description="most ids in one availability change"
    )

    @field_validator("admin_token")
    @classmethod
    def _strong_token(cls, token: SecretStr | None) -> SecretStr | None:
        if token is None or token.get_secret_value() == "":
            return None
        check_admin_token(token.get_secret_value())
        return token

    @field_validator("root", mode="before")
    @classmethod
    def _s3_root(cls, root: Any) -> Any:
        """``s3://bucket/prefix`` is an S3 root (a ValueError when malformed)."""
        return S3Location.parse(root) if isinstance(root, str) and is_s3_url(root) else root

    @model_validator(mode="before")
    @classmethod
    def _default_state_url(cls, data: Any) -> Any:
        """Unset (or empty) ``state_url``: the SQLite file ``.state/events.sqlite`` under
        the root (a local one) or the cache (of an s3:// root)."""
        if isinstance(data, dict) and not data.get("state_url") and data.get("root"):
            root = data["root"]
            home = data.get("cache_dir") if str(root).startswith("s3:") else root
            if home:
                data = {**data, "state_url": sqlite_url(Path(home) / STATE_FILE)}
        return data

    @model_validator(mode="after")
    def _s3_needs_cache(self) -> Settings:
        if isinstance(self.root, S3Location) and self.cache_dir is None:
            raise ValueError("an s3:// root needs RECALL_CACHE_DIR (the download cache)")
        return self

    @field_validator("state_url")
    @classmethod
    def _known_state_url(cls, url: str) -> str:
        if url:  # empty only when root is missing too, which is reported on its own
            check_url(url)  # ValueError naming the URLs that work, never quoting this one
        return url


class SettingsError(ValueError):
    """Invalid ``RECALL_*`` settings; the message names each variable (and its flag)."""


def load_settings(flags: Mapping[str, str] | None = None) -> Settings:
    """``Settings()`` from the environment, or SettingsError naming what to fix.

    ``flags`` maps field names to the command-line flags that set them (``root`` ->
    ``--root``), so the message names both. Values are never quoted (one is a secret).
    """
    return _load(Settings, flags or {})


def load_event_log_settings() -> EventLogSettings:
    """``EventLogSettings()`` from the environment, or SettingsError naming what to fix."""
    return _load(EventLogSettings, {})


_S = TypeVar("_S", bound=BaseSettings)


def _load(model: type[_S], flags: Mapping[str, str]) -> _S:
    try:
        return model()
    except ValidationError as e:
        raise SettingsError(describe_errors(e, flags)) from None


def describe_errors(error: ValidationError, flags: Mapping[str, str]) -> str:
    """One line: ``set --root or RECALL_ROOT; --port or RECALL_PORT: <why>``."""
    parts = []
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else ""
        variable = f"RECALL_{field.upper()}"
        name = f"{flags[field]} or {variable}" if field in flags else variable
        if not field:  # a rule between fields: its message names them
            parts.append(str(item["msg"]).removeprefix("Value error, "))
        elif item["type"] == "missing":
            parts.append(f"set {name}")
        else:
            parts.append(f"{name}: {str(item['msg']).removeprefix('Value error, ')}")
    return "; ".join(parts)


def check_admin_token(token: str) -> None:
    """Raise ValueError (never quoting the token) unless ``token`` may guard the admin API:
    at least 16 characters, no surrounding whitespace, not a placeholder from an example."""
    if token != token.strip():
        raise ValueError("admin token must not be blank or start or end with whitespace")
    if len(token) < MIN_ADMIN_TOKEN_LENGTH:
        raise ValueError(f"admin token must have at least {MIN_ADMIN_TOKEN_LENGTH} chars")
    normalized = token.lower().replace("-", "").replace("_", "")
    if normalized.startswith(PLACEHOLDER_PREFIXES) or len(set(token)) == 1:
        raise ValueError("admin token is a placeholder: generate one, e.g. `openssl rand -hex 24`")
