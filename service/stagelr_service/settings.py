"""Server settings, read once from the environment (``STAGELR_*``) by pydantic-settings.

Bad values fail at start with a message naming the variable, not at the first request.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every setting of the server. Environment variable = ``STAGELR_`` + upper-case name."""

    model_config = SettingsConfigDict(env_prefix="STAGELR_", extra="ignore")

    data_dir: Path = Field(
        default=Path("~/.stagelr"),
        description="Where the default SQLite database lives.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the store; default: sqlite:///<data_dir>/stagelr.db.",
    )
    host: str = Field(default="127.0.0.1", description="Address `stagelr serve` binds.")
    port: int = Field(default=8321, ge=0, le=65535, description="Port `stagelr serve` binds.")
    auto_migrate: bool = Field(
        default=False,
        description="Upgrade the schema at start instead of refusing an old one.",
    )
    log_level: str = Field(default="info", description="Log level of the server.")
    max_batch: int = Field(
        default=10_000, ge=1, description="Most observations accepted in one request."
    )

    lease_seconds: float = Field(
        default=900.0,
        gt=0,
        description=(
            "An open segment with no sign of life from its job (no observation batch, no "
            "repeated `next`) for this many seconds is stale: the study shows it stalled."
        ),
    )
    auth: str = Field(
        default="off",
        description=(
            "`required`: every /v1 request and the dashboard need a project's bearer token "
            "(`stagelr token create --project NAME`); `off`: no auth, for a local "
            "single-user run only (the server warns at start)."
        ),
    )

    auth_cache_seconds: float = Field(
        default=10.0,
        ge=0,
        description=(
            "How long a checked token is trusted without asking the store again (a revoked "
            "token stops working within this time on every replica)."
        ),
    )

    @field_validator("auth")
    @classmethod
    def _auth(cls, v: str) -> str:
        v = v.lower()
        if v not in {"required", "off"}:
            raise ValueError("use `required` or `off`")
        return v

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        v = v.lower()
        if v not in {"critical", "error", "warning", "info", "debug", "trace"}:
            raise ValueError("use one of critical, error, warning, info, debug, trace")
        return v

    @property
    def resolved_database_url(self) -> str:
        """The store's URL, with the default SQLite file filled in."""
        if self.database_url:
            return self.database_url
        path = self.data_dir.expanduser() / "stagelr.db"
        return f"sqlite:///{path}"
