"""Server settings, read once from the environment (``STAGELR_*``) by pydantic-settings.

Bad values fail at start with a message naming the variable, not at the first request.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Literal

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
    db_connect_timeout: float = Field(
        default=5.0,
        ge=1,
        le=600,
        description=(
            "Seconds to open a database connection (PostgreSQL's connect_timeout), and the "
            "longest the liveness check of a pooled connection may take: an unreachable or "
            "hung database then answers 503 `store-unavailable` instead of hanging."
        ),
    )
    db_statement_timeout: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description=(
            "Longest one transaction (the database work of one request) may take. "
            "PostgreSQL gets it as statement_timeout; a connection that does not answer "
            "within it (a stalled network) is cut, and the request answers 503."
        ),
    )
    db_pool_timeout: float = Field(
        default=5.0,
        gt=0,
        le=600,
        description=(
            "Seconds a request waits for a free pooled connection before it answers 503 "
            "(all connections busy, e.g. while the database stalls)."
        ),
    )
    workers: int | Literal["auto"] = Field(
        default=1,
        description=(
            "Server processes of `stagelr serve` (`--workers`): each runs its own event "
            "loop and thread pool and takes decisions on its own core; `auto`: one per "
            "CPU the process may use. Each costs about 350 MB. Several workers share one "
            "port and one database (SQLite or PostgreSQL); see docs/operations.md."
        ),
    )
    request_threads: int = Field(
        default=4,
        ge=1,
        le=1000,
        description=(
            "Threads each server process runs requests on (the event loop hands every "
            "API request to one; a request waits for a free one). They share the process's "
            "GIL, and a thread back from the database waits for it against the others: "
            "at 300 jobs on 2 cores, 4 threads gave decisions a p50 13 times lower than "
            "40 on SQLite and 4 times lower on PostgreSQL (docs/operations.md). Raise it "
            "for many slow requests at once (replays, exports) on a larger machine."
        ),
    )
    db_pool_size: int = Field(
        default=15,
        ge=1,
        le=1000,
        description=(
            "Database connections each server process keeps open (and the most it opens): "
            "with N workers and R replicas, N x R x this must stay within the database's "
            "connection limit (PostgreSQL's max_connections, 100 by default)."
        ),
    )
    host: str = Field(default="127.0.0.1", description="Address `stagelr serve` binds.")
    port: int = Field(default=8321, ge=0, le=65535, description="Port `stagelr serve` binds.")
    auto_migrate: bool = Field(
        default=False,
        description="Upgrade the schema at start instead of refusing an old one.",
    )
    log_level: str = Field(default="info", description="Log level of the server.")
    log_format: Literal["text", "json"] = Field(
        default="text",
        description=(
            "`json`: one JSON object per log line (time, level, logger, message, and for "
            "requests request_id, method, path, status, duration_ms), for log collectors; "
            "`text`: plain lines for a terminal."
        ),
    )
    max_batch: int = Field(
        default=10_000, ge=1, description="Most observations accepted in one request."
    )

    max_priors: int = Field(
        default=5,
        ge=1,
        le=50,
        description=(
            "Most prior studies a new study reads when it is created (its family's most "
            "recent completed ones, or the ones it names): each costs one history read."
        ),
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

    session_seconds: float = Field(
        default=28_800.0,
        gt=0,
        le=30 * 86_400,
        description=(
            "How long a dashboard sign-in lasts (a server-side session; sign-out ends it at once)."
        ),
    )
    metrics_token: str | None = Field(
        default=None,
        description=(
            "When set, `GET /metrics` needs `Authorization: Bearer <this value>` (give it "
            "to the Prometheus scraper); unset, anyone who reaches the port may scrape "
            "it. The metrics hold request counts and study and segment counts of every "
            "project, no names or data."
        ),
    )

    @field_validator("auth")
    @classmethod
    def _auth(cls, v: str) -> str:
        v = v.lower()
        if v not in {"required", "off"}:
            raise ValueError("use `required` or `off`")
        return v

    @field_validator("workers")
    @classmethod
    def _workers(cls, v: int | str) -> int | str:
        if v != "auto" and not (1 <= int(v) <= 256):
            raise ValueError("use a number of processes from 1 to 256, or `auto`")
        return v

    @property
    def worker_count(self) -> int:
        """The number of server processes: ``workers``, with `auto` made the number of
        CPUs this process may run on."""
        if self.workers == "auto":
            return usable_cpus()
        return int(self.workers)

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


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def settings_environment(settings: Settings) -> dict[str, str]:
    """``settings`` as the ``STAGELR_*`` variables that give them back: how `stagelr
    serve --workers N` hands its settings (command-line overrides included) to the
    worker processes, which read the environment."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    out = {}
    for name, value in settings.model_dump(mode="json").items():
        if value is not None:
            out[f"{prefix}{name.upper()}"] = (
                str(value).lower() if isinstance(value, bool) else str(value)
            )
    return out


# --------------------------------------------------------------------------- docs

#: docs/settings.md holds the generated table between these two lines.
TABLE_START = (
    "<!-- settings table: generated, do not edit; "
    "python -m stagelr_service.settings --update docs/settings.md -->"
)
TABLE_END = "<!-- end of settings table -->"


def _default_text(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def settings_table() -> str:
    """The Markdown table of every setting: variable, default, meaning (from the class)."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        meaning = " ".join((field.description or "").split())
        # Markdown would take <data_dir> for an HTML tag and | for a column.
        meaning = meaning.replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
        lines.append(f"| `{prefix}{name.upper()}` | {_default_text(field.default)} | {meaning} |")
    return "\n".join(lines) + "\n"


def update_doc(path: Path) -> bool:
    """Put the current table between the markers of ``path``; True if it changed."""
    text = path.read_text()
    head, start, rest = text.partition(TABLE_START)
    _, end, tail = rest.partition(TABLE_END)
    if not start or not end:
        raise ValueError(f"{path} lacks the settings-table markers")
    new = f"{head}{TABLE_START}\n{settings_table()}{TABLE_END}{tail}"
    if new == text:
        return False
    path.write_text(new)
    return True


def _main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m stagelr_service.settings", description="The settings table."
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--markdown", action="store_true", help="print the Markdown table")
    group.add_argument("--update", type=Path, metavar="FILE", help="rewrite it in FILE")
    args = parser.parse_args(argv)
    if args.markdown:
        print(settings_table(), end="")
    else:
        print(f"{args.update}: {'updated' if update_doc(args.update) else 'up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
