"""Service settings from ``RECALL_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIN_ADMIN_TOKEN_LENGTH = 16


class Settings(BaseSettings):
    """Everything an operator can set; created by the caller, never at import time."""

    model_config = SettingsConfigDict(env_prefix="RECALL_", frozen=True, extra="forbid")

    root: Path = Field(description="bundle root: holds CURRENT and the bundles")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64)
    max_k: int = Field(1000, ge=1, le=100_000, description="largest k a request may ask")
    max_batch: int = Field(256, ge=1, description="most requests in one recall batch")
    max_vector_ids: int = Field(10_000, ge=1, description="most ids in one vector lookup")
    max_history: int = Field(1000, ge=1, description="most items in a request's history")
    max_body_bytes: int = Field(2 << 20, ge=1024, description="larger bodies get 413")
    reload_interval_s: float = Field(5.0, ge=0, description="CURRENT poll period; 0 = off")
    search_threads: int = Field(4, ge=1, le=256, description="threads running FAISS")
    admin_token: SecretStr | None = Field(None, description="unset = admin API disabled")

    @field_validator("admin_token")
    @classmethod
    def _strong_token(cls, token: SecretStr | None) -> SecretStr | None:
        if token is None or token.get_secret_value() == "":
            return None
        if len(token.get_secret_value()) < MIN_ADMIN_TOKEN_LENGTH:
            raise ValueError(f"admin token must have at least {MIN_ADMIN_TOKEN_LENGTH} chars")
        return token
