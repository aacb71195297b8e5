"""The SQL tables, as SQLAlchemy 2.0 typed declarative models.

These classes never leave the store: the repository turns rows into frozen records.
Enum-like columns (status, kind, metric) are plain strings, not database enums, so that a
new segment kind or status needs no migration; the repository converts them to the wire
enums. Every constraint has a deterministic name (``NAMING_CONVENTION``) because Alembic's
batch mode on SQLite can only alter constraints it can name.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "NAMING_CONVENTION",
    "Base",
    "ForecastRow",
    "ObservationRow",
    "OutageRow",
    "ProjectRow",
    "SegmentRow",
    "StageRow",
    "StudyRow",
    "TokenRow",
    "UTCDateTime",
]

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_N_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    PostgreSQL stores ``timestamptz``; SQLite has no time zones, so the value is stored as
    naive UTC and made aware again on the way out. Callers always get aware UTC datetimes.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store: pass an aware UTC datetime")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


# Observations are the one table that grows with training steps: a 64-bit key on
# PostgreSQL. SQLite's INTEGER PRIMARY KEY is already 64-bit and must stay INTEGER to be
# the rowid alias (BIGINT would lose autoincrement there).
_BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON(), list[str]: JSON()}


class ProjectRow(Base):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime]


class TokenRow(Base):
    """A project's bearer token. Only its SHA-256 digest is stored."""

    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class StudyRow(Base):
    __tablename__ = "studies"
    __table_args__ = (
        UniqueConstraint("project_id", "name"),
        Index(None, "status"),
        Index(None, "updated_at"),
        Index(None, "project_id", "family"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    # The resolved StudyConfig (every preset default filled in), so a later change of a
    # preset never changes a stored study.
    config: Mapped[dict[str, Any]]
    # The family its config names (the study list filters on it; priors are read by it).
    family: Mapped[str | None] = mapped_column(String(100))
    # The prior summary read when the study was created (tuner/_priors.py); None: none.
    priors: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    status_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    # Archived: out of the default study list, history kept (migration 0006).
    archived_at: Mapped[datetime | None]
    # Raised by one in every transaction that writes to the study's children (its
    # touch): what a process's kept copy of the history is checked against (0012).
    version: Mapped[int] = mapped_column(BigInteger, server_default="0")


class StageRow(Base):
    __tablename__ = "stages"
    __table_args__ = (UniqueConstraint("study_id", "index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    tau: Mapped[int] = mapped_column(Integer)
    tau_explore: Mapped[int] = mapped_column(Integer)
    start_step: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    chosen_lr: Mapped[float | None] = mapped_column(Float)


class SegmentRow(Base):
    __tablename__ = "segments"
    # UNIQUE(study_id, seq) is the concurrency guard: the service computes the next segment
    # optimistically and inserts seq = last + 1; a violation means someone else did first.
    __table_args__ = (UniqueConstraint("study_id", "seq"), Index(None, "stage_id"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    stage_id: Mapped[int] = mapped_column(ForeignKey("stages.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    index: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    lr: Mapped[float] = mapped_column(Float)
    steps: Mapped[int] = mapped_column(Integer)
    start_step: Mapped[int] = mapped_column(BigInteger)
    horizon: Mapped[int] = mapped_column(Integer)
    metric: Mapped[str] = mapped_column(String(32))
    report_every: Mapped[int] = mapped_column(Integer)
    restore: Mapped[str | None] = mapped_column(String(200))
    save_start: Mapped[str | None] = mapped_column(String(200))
    save_end: Mapped[str | None] = mapped_column(String(200))
    discard: Mapped[list[str]]
    stop_above: Mapped[float | None] = mapped_column(Float)
    # The LR moves from ``lr`` towards ``lr_end`` over the segment (migration 0003).
    lr_end: Mapped[float | None] = mapped_column(Float)
    lr_shape: Mapped[str] = mapped_column(String(32), server_default="constant")
    # Up to 2**32 - 1: does not fit a signed 32-bit INTEGER on PostgreSQL.
    data_seed: Mapped[int] = mapped_column(BigInteger)
    steps_done: Mapped[int | None] = mapped_column(Integer)
    fail_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    completed_at: Mapped[datetime | None]
    # Last sign of life from the job on an open segment (creation, a repeated ``next``,
    # an observation batch); older than the study's lease means stale.
    heartbeat_at: Mapped[datetime | None]


class ObservationRow(Base):
    __tablename__ = "observations"
    # A retried report is a no-op, never a duplicate row.
    __table_args__ = (UniqueConstraint("segment_id", "step", "metric"),)

    id: Mapped[int] = mapped_column(_BigId, primary_key=True)
    segment_id: Mapped[int] = mapped_column(ForeignKey("segments.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    metric: Mapped[str] = mapped_column(String(32))
    # SQLite stores NaN as NULL, so non-finite values live in ``special`` ('nan', 'inf',
    # '-inf') with ``value`` NULL; the repository maps them back to floats.
    value: Mapped[float | None] = mapped_column(Float)
    special: Mapped[str | None] = mapped_column(String(4))


class ForecastRow(Base):
    __tablename__ = "forecasts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    segment_id: Mapped[int] = mapped_column(
        ForeignKey("segments.id", ondelete="CASCADE"), unique=True
    )
    model: Mapped[str] = mapped_column(String(32))
    # NULL when the forecast has no finite value (a diverged or failed fit).
    prediction: Mapped[float | None] = mapped_column(Float)
    std: Mapped[float | None] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict[str, Any]]
    n_points: Mapped[int] = mapped_column(Integer)
    # The value the GP was fitted to (a diverged candidate's is replaced by policy).
    objective: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime]


class OutageRow(Base):
    """Steps a job trained on fallback segments while the service was unreachable, as it
    reported them once the service was back (migration 0006)."""

    __tablename__ = "outages"
    # The job's key for the outage: a retried report is a no-op, never a second row.
    __table_args__ = (UniqueConstraint("study_id", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(64))
    steps: Mapped[int] = mapped_column(BigInteger)
    # The seq of the last segment handed out before the outage (None: before the first).
    after_seq: Mapped[int | None] = mapped_column(Integer)
    reported_at: Mapped[datetime]
