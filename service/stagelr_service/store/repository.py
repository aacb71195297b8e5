"""The repository: every read and write of the store, inside one transaction.

A :class:`Repository` is bound to the session of one transaction (``Store.transaction``)
and returns frozen records, never ORM rows. Writes that two requests may race on are
made idempotent with the unique keys, as Optuna's storage does: the insert runs in a
SAVEPOINT, and a unique-key violation means "already written" (read it back) or, for
segments, "someone else issued it first" (:class:`DuplicateSegmentError`). The outer
transaction survives either way.

Every write to a study's children also touches the study's ``updated_at``, and does it
first, so that on PostgreSQL the study row is always the first row a transaction locks
(one lock order, no deadlocks), and writers of one study queue on that row.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from datetime import datetime, timedelta
from enum import Enum
from functools import cache
from types import SimpleNamespace
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Row,
    Select,
    Table,
    and_,
    bindparam,
    case,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from stagelr.models import LRShape, Metric, SegmentKind, SegmentStatus, StudyStatus
from stagelr_service.errors import (
    DuplicateSegmentError,
    InputError,
    NotFoundError,
    ObservationConflictError,
)

from .models import (
    ForecastRow,
    ObservationRow,
    OutageRow,
    ProjectRow,
    SegmentRow,
    StageRow,
    StudyRow,
    TokenRow,
)
from .records import (
    ForecastRecord,
    ObservationRecord,
    OutageRecord,
    ProjectRecord,
    SegmentRecord,
    StageRecord,
    StageStatus,
    StudyHistory,
    StudyRecord,
    StudySummaryRecord,
    TokenRecord,
)

__all__ = ["KEEP", "Keep", "Repository"]

_STAGE_STATUSES = ("searching", "training", "completed")


class Keep(Enum):
    """Type of :data:`KEEP`, the default of fields an update leaves as they are."""

    KEEP = "keep"


KEEP = Keep.KEEP

# How a float is stored: finite -> (value, None); non-finite -> (None, 'nan'|'inf'|'-inf').
_Encoded = tuple[float | None, str | None]


def _encode(value: float) -> _Encoded:
    value = float(value)
    if math.isfinite(value):
        return value, None
    if math.isnan(value):
        return None, "nan"
    return None, "inf" if value > 0 else "-inf"


def _decode(value: float | None, special: str | None) -> float:
    if special is not None:
        return float(special)
    if value is None:  # only a row written by hand could be like this
        return math.nan
    return value


def _finite_or_none(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


_SPECIAL_FLOATS = {"nan", "inf", "-inf"}


def _encode_params(params: Mapping[str, Any]) -> dict[str, Any]:
    # JSON has no NaN/inf (and PostgreSQL rejects them): spell them as strings.
    out: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, float) and not math.isfinite(value):
            out[str(key)] = _encode(value)[1]
        else:
            out[str(key)] = value
    return out


def _decode_params(params: Mapping[str, Any]) -> dict[str, Any]:
    return {
        key: float(value) if isinstance(value, str) and value in _SPECIAL_FLOATS else value
        for key, value in params.items()
    }


def _metric(metric: Metric | str) -> str:
    try:
        return Metric(metric).value
    except ValueError:
        raise InputError(
            f"unknown metric {metric!r}: use one of {', '.join(m.value for m in Metric)}"
        ) from None


#: The forecast columns an upsert writes (all but the keys).
_FORECAST_VALUES = (
    "model",
    "prediction",
    "std",
    "status",
    "params",
    "n_points",
    "objective",
    "created_at",
)


def _dialect_insert(dialect: str, table: Any) -> Any:
    """The INSERT construct with ON CONFLICT of the store's dialect (SQLite or
    PostgreSQL, the two the store supports)."""
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise ValueError(f"the store supports SQLite and PostgreSQL, not {dialect!r}")


class _Hot:
    """The statements of the decision path, each built once.

    A statement built per call costs SQLAlchemy its construction and its cache key, about
    three times what running it on SQLite costs (measured: 404 us against 171 us a
    study read); these take their values as bound parameters.
    """

    @staticmethod
    @cache
    def study() -> Any:
        return Repository._study_query().where(StudyRow.id == bindparam("study_id"))

    @staticmethod
    @cache
    def locked_study() -> Any:
        return (
            _Hot.study()
            .with_for_update(of=StudyRow)
            # The row may have changed while we waited for the lock: refresh it.
            .execution_options(populate_existing=True)
        )

    @staticmethod
    @cache
    def touch() -> Any:
        # A Core UPDATE on the table: the ORM-enabled one takes SQLAlchemy's bulk-update
        # path, whose session synchronization cost more than the statement (8% of the
        # server's CPU under load, the statement's execution included).
        table = cast(Table, StudyRow.__table__)
        return (
            update(table)
            .where(table.c.id == bindparam("study_id"))
            .values(updated_at=bindparam("now"))
        )

    @staticmethod
    @cache
    def insert_segment(dialect: str) -> Any:
        """INSERT a segment unless its (study, seq) is taken; RETURNING its id (no row:
        taken). One statement, no SAVEPOINT: ON CONFLICT leaves the transaction usable
        on PostgreSQL, where a failed INSERT would abort it."""
        table = SegmentRow.__table__
        return (
            _dialect_insert(dialect, table)
            .on_conflict_do_nothing(index_elements=[table.c.study_id, table.c.seq])
            .returning(table.c.id)
        )

    @staticmethod
    @cache
    def upsert_forecast(dialect: str) -> Any:
        """INSERT a segment's forecast or replace the one stored; RETURNING its id."""
        table = ForecastRow.__table__
        statement = _dialect_insert(dialect, table)
        replaced = {name: statement.excluded[name] for name in _FORECAST_VALUES}
        return statement.on_conflict_do_update(
            index_elements=[table.c.segment_id], set_=replaced
        ).returning(table.c.id)

    @staticmethod
    @cache
    def stage() -> Any:
        return (
            select(StageRow)
            .where(StageRow.study_id == bindparam("study_id"), StageRow.index == bindparam("index"))
            .execution_options(populate_existing=True)
        )

    @staticmethod
    @cache
    def stages() -> Any:
        # Plain columns, not entities: a list read needs records, and an ORM instance per
        # row (its state, the identity map) costs more than the row itself.
        table = StageRow.__table__
        return (
            select(*table.c)
            .where(table.c.study_id == bindparam("study_id"))
            .order_by(table.c.index)
        )

    @staticmethod
    @cache
    def segment() -> Any:
        return Repository._segment_query().where(SegmentRow.id == bindparam("segment_id"))

    @staticmethod
    @cache
    def segments() -> Any:
        segments, stages = SegmentRow.__table__, StageRow.__table__
        return (
            select(*segments.c, stages.c.index.label("stage_index"))
            .join(stages, segments.c.stage_id == stages.c.id)
            .where(segments.c.study_id == bindparam("study_id"))
            .order_by(segments.c.seq)
        )

    @staticmethod
    @cache
    def study_of_segment() -> Any:
        return select(SegmentRow.study_id).where(SegmentRow.id == bindparam("segment_id"))

    @staticmethod
    @cache
    def heartbeat() -> Any:
        return (
            update(SegmentRow)
            .where(
                SegmentRow.id == bindparam("segment_id"),
                SegmentRow.status == SegmentStatus.open.value,
            )
            .values(heartbeat_at=bindparam("now"))
        )

    @staticmethod
    @cache
    def observations_between() -> Any:
        return select(
            ObservationRow.step, ObservationRow.metric, ObservationRow.value, ObservationRow.special
        ).where(
            ObservationRow.segment_id == bindparam("segment_id"),
            ObservationRow.step.between(bindparam("low"), bindparam("high")),
        )

    @staticmethod
    @cache
    def observations_of_segment() -> Any:
        return (
            select(
                ObservationRow.step,
                ObservationRow.metric,
                ObservationRow.value,
                ObservationRow.special,
            )
            .where(ObservationRow.segment_id == bindparam("segment_id"))
            .order_by(ObservationRow.step, ObservationRow.metric)
        )

    @staticmethod
    @cache
    def observations_of_study() -> Any:
        return (
            select(
                ObservationRow.segment_id,
                ObservationRow.step,
                ObservationRow.metric,
                ObservationRow.value,
                ObservationRow.special,
            )
            .join(SegmentRow, ObservationRow.segment_id == SegmentRow.id)
            .where(SegmentRow.study_id == bindparam("study_id"))
            .order_by(ObservationRow.segment_id, ObservationRow.step, ObservationRow.metric)
        )

    @staticmethod
    @cache
    def forecast() -> Any:
        return select(ForecastRow).where(ForecastRow.segment_id == bindparam("segment_id"))

    @staticmethod
    @cache
    def forecasts() -> Any:
        forecasts, segments = ForecastRow.__table__, SegmentRow.__table__
        return (
            select(*forecasts.c)
            .join(segments, forecasts.c.segment_id == segments.c.id)
            .where(segments.c.study_id == bindparam("study_id"))
        )


class Repository:
    """Reads and writes of one transaction. Get one from ``Store.transaction()``."""

    def __init__(self, session: Session, clock: Callable[[], datetime]) -> None:
        self._s = session
        self._clock = clock
        #: Studies whose ``updated_at`` this transaction has set already.
        self._touched: set[int] = set()
        #: Rows read in this transaction, held so that the session's (weak) identity map
        #: keeps them: a later ``Session.get`` of one is then answered without a query.
        self._held: list[Any] = []
        #: Segment id -> its stage's index, for the segments read in this transaction.
        self._stage_index: dict[int, int] = {}
        self._dialect_name: str | None = None

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the store's clock must return an aware datetime")
        return now

    def _dialect(self) -> str:
        """The store's SQL dialect: ``sqlite`` or ``postgresql``."""
        if self._dialect_name is None:
            self._dialect_name = self._s.get_bind().dialect.name
        return self._dialect_name

    def _insert(self, row: Any) -> IntegrityError | None:
        """Insert ``row`` in a SAVEPOINT; the IntegrityError if a constraint refused it."""
        try:
            with self._s.begin_nested():
                self._s.add(row)
        except IntegrityError as exc:
            return exc
        return None

    # ------------------------------------------------------------------ projects

    def get_or_create_project(self, name: str) -> ProjectRecord:
        """The project called ``name``, created if it does not exist (race-safe)."""
        query = select(ProjectRow).where(ProjectRow.name == name)
        row = self._s.scalar(query)
        if row is None:
            row = ProjectRow(name=name, created_at=self._now())
            error = self._insert(row)
            if error is not None:
                row = self._s.scalar(query)
                if row is None:
                    raise error
        return ProjectRecord(id=row.id, name=row.name, created_at=row.created_at)

    def get_project(self, name: str) -> ProjectRecord | None:
        row = self._s.scalar(select(ProjectRow).where(ProjectRow.name == name))
        return None if row is None else ProjectRecord(row.id, row.name, row.created_at)

    # ------------------------------------------------------------------ tokens

    @staticmethod
    def _token(row: TokenRow, project: str) -> TokenRecord:
        return TokenRecord(
            id=row.id,
            project=project,
            name=row.name,
            prefix=row.prefix,
            created_at=row.created_at,
            last_used_at=row.last_used_at,
            revoked_at=row.revoked_at,
        )

    def create_token(self, project: str, name: str, prefix: str, token_hash: str) -> TokenRecord:
        """Store a token's digest for ``project`` (created if new)."""
        owner = self.get_or_create_project(project)
        row = TokenRow(
            project_id=owner.id,
            name=name,
            prefix=prefix,
            token_hash=token_hash,
            created_at=self._now(),
            last_used_at=None,
            revoked_at=None,
        )
        self._s.add(row)
        self._s.flush()
        return self._token(row, owner.name)

    def token_by_hash(self, token_hash: str) -> tuple[TokenRecord, str] | None:
        """The live (not revoked) token with this digest, and the stored digest."""
        found = self._s.execute(
            select(TokenRow, ProjectRow.name)
            .join(ProjectRow, TokenRow.project_id == ProjectRow.id)
            .where(TokenRow.token_hash == token_hash, TokenRow.revoked_at.is_(None))
        ).first()
        if found is None:
            return None
        row, project = found
        return self._token(row, project), row.token_hash

    def mark_token_used(self, token_id: int) -> None:
        self._s.execute(
            update(TokenRow).where(TokenRow.id == token_id).values(last_used_at=self._now())
        )

    def list_tokens(self, project: str | None = None) -> list[TokenRecord]:
        query = (
            select(TokenRow, ProjectRow.name)
            .join(ProjectRow, TokenRow.project_id == ProjectRow.id)
            .order_by(TokenRow.id)
        )
        if project is not None:
            query = query.where(ProjectRow.name == project)
        return [self._token(row, name) for row, name in self._s.execute(query).all()]

    def revoke_token(self, token_id: int) -> TokenRecord | None:
        """Revoke a token (idempotent); None if there is no such token."""
        found = self._s.execute(
            select(TokenRow, ProjectRow.name)
            .join(ProjectRow, TokenRow.project_id == ProjectRow.id)
            .where(TokenRow.id == token_id)
        ).first()
        if found is None:
            return None
        row, project = found
        if row.revoked_at is None:
            row.revoked_at = self._now()
            self._s.flush()
        return self._token(row, project)

    # ------------------------------------------------------------------ studies

    @staticmethod
    def _study_query() -> Select[StudyRow, str]:
        return select(StudyRow, ProjectRow.name).join(
            ProjectRow, StudyRow.project_id == ProjectRow.id
        )

    @staticmethod
    def _study(row: StudyRow, project: str) -> StudyRecord:
        return StudyRecord(
            id=row.id,
            project_id=row.project_id,
            project=project,
            name=row.name,
            config=row.config,
            status=StudyStatus(row.status),
            status_reason=row.status_reason,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )

    def _one_study(self, query: Select[StudyRow, str]) -> StudyRecord | None:
        found = self._s.execute(query).one_or_none()
        return None if found is None else self._study(*found)

    def create_study(
        self, project_id: int, name: str, config: Mapping[str, Any]
    ) -> tuple[StudyRecord, bool]:
        """Create the study, or get the existing one of that project and name.

        Returns ``(study, created)``. An existing study is returned as stored, whatever
        its config: comparing configs is the caller's decision. Race-safe: of several
        concurrent creators exactly one inserts, the others read its row.
        """
        # Round-trip through JSON now so the record holds what a later read returns.
        stored_config = json.loads(json.dumps(dict(config), allow_nan=False))
        query = self._study_query().where(StudyRow.project_id == project_id, StudyRow.name == name)
        existing = self._one_study(query)
        if existing is not None:
            return existing, False
        now = self._now()
        row = StudyRow(
            project_id=project_id,
            name=name,
            config=stored_config,
            status=StudyStatus.running.value,
            status_reason=None,
            created_at=now,
            updated_at=now,
        )
        error = self._insert(row)
        if error is None:
            study = self._one_study(self._study_query().where(StudyRow.id == row.id))
            assert study is not None
            return study, True
        existing = self._one_study(query)
        if existing is not None:
            return existing, False
        if self._s.get(ProjectRow, project_id) is None:
            raise NotFoundError(f"project {project_id} does not exist: create it first")
        raise error

    def get_study(self, study_id: int) -> StudyRecord | None:
        found = self._s.execute(_Hot.study(), {"study_id": study_id}).one_or_none()
        return None if found is None else self._study(*found)

    def find_study(self, project: str, name: str) -> StudyRecord | None:
        """The study ``name`` of the project named ``project``, if any."""
        return self._one_study(
            self._study_query().where(ProjectRow.name == project, StudyRow.name == name)
        )

    def lock_study(self, study_id: int) -> StudyRecord | None:
        """Read the study and hold it until the transaction ends.

        PostgreSQL: ``SELECT ... FOR UPDATE`` of the study row, so concurrent requests on
        one study (on any replica) run one after the other. SQLite: a plain read; the
        write transaction already holds the database's write lock (BEGIN IMMEDIATE).
        """
        found = self._s.execute(_Hot.locked_study(), {"study_id": study_id}).one_or_none()
        return None if found is None else self._study(*found)

    def list_studies(
        self,
        project: str | None = None,
        status: StudyStatus | str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[StudyRecord], int]:
        """Studies newest first, filtered by project name and status; and the total count
        of studies that match the filters (for pagination)."""
        if limit < 0 or offset < 0:
            raise InputError("limit and offset must not be negative")
        conditions = []
        if project is not None:
            conditions.append(ProjectRow.name == project)
        if status is not None:
            try:
                conditions.append(StudyRow.status == StudyStatus(status).value)
            except ValueError:
                raise InputError(
                    f"unknown study status {status!r}: use one of "
                    + ", ".join(s.value for s in StudyStatus)
                ) from None
        total = self._s.scalar(
            select(func.count())
            .select_from(StudyRow)
            .join(ProjectRow, StudyRow.project_id == ProjectRow.id)
            .where(*conditions)
        )
        rows = self._s.execute(
            self._study_query()
            .where(*conditions)
            .order_by(StudyRow.id.desc())
            .limit(limit)
            .offset(offset)
        ).all()
        return [self._study(row, project_name) for row, project_name in rows], int(total or 0)

    def count_by_status(self) -> tuple[dict[str, int], dict[str, int]]:
        """How many studies and how many segments are in each status (for /metrics):
        two GROUP BY counts, no rows loaded."""
        studies = self._s.execute(
            select(StudyRow.status, func.count()).group_by(StudyRow.status)
        ).all()
        segments = self._s.execute(
            select(SegmentRow.status, func.count()).group_by(SegmentRow.status)
        ).all()
        return (
            {str(status): int(n) for status, n in studies},
            {str(status): int(n) for status, n in segments},
        )

    def set_study_status(
        self, study_id: int, status: StudyStatus | str, reason: str | None = None
    ) -> StudyRecord:
        """Set the study's status (and the reason, or clear it)."""
        row = self._s.get(StudyRow, study_id)
        if row is None:
            raise NotFoundError(f"study {study_id} does not exist")
        row.status = StudyStatus(status).value
        row.status_reason = reason
        row.updated_at = self._now()
        self._s.flush()
        study = self.get_study(study_id)
        assert study is not None
        return study

    def touch_study(self, study_id: int) -> None:
        """Set the study's ``updated_at`` to now (every write below does it already); once
        a transaction, as its writes commit together.

        On PostgreSQL this also locks the study row until the transaction ends.
        """
        if study_id in self._touched:
            return
        # Study rows are never held by the session (readers keep records, not rows), so
        # no loaded copy can go stale under this Core statement.
        self._s.execute(_Hot.touch(), {"study_id": study_id, "now": self._now()})
        self._touched.add(study_id)

    # ------------------------------------------------------------------ stages

    @staticmethod
    def _stage(row: StageRow | Row[Any]) -> StageRecord:
        status: StageStatus = row.status  # type: ignore[assignment]
        return StageRecord(
            id=row.id,
            study_id=row.study_id,
            # The column: a Row gives its columns precedence over tuple.index.
            index=row.index,  # type: ignore[arg-type]
            tau=row.tau,
            tau_explore=row.tau_explore,
            start_step=row.start_step,
            status=status,
            chosen_lr=row.chosen_lr,
        )

    def get_or_create_stage(
        self, study_id: int, index: int, tau: int, tau_explore: int, start_step: int
    ) -> StageRecord:
        """Stage ``index`` of the study; created (status ``searching``) if missing.

        An existing stage is returned as stored: the tuner is deterministic, so it asks
        for the same sizes every time.
        """
        query = _Hot.stage()
        params = {"study_id": study_id, "index": index}
        row = self._s.scalar(query, params)
        if row is not None:
            self._held.append(row)
            return self._stage(row)
        self.touch_study(study_id)
        row = StageRow(
            study_id=study_id,
            index=index,
            tau=tau,
            tau_explore=tau_explore,
            start_step=start_step,
            status="searching",
            chosen_lr=None,
        )
        error = self._insert(row)
        if error is not None:
            found = self._s.scalar(query, params)
            if found is None:
                raise error
            row = found
        return self._stage(row)

    def get_stage(self, study_id: int, index: int) -> StageRecord | None:
        row = self._s.scalar(
            select(StageRow).where(StageRow.study_id == study_id, StageRow.index == index)
        )
        return None if row is None else self._stage(row)

    def stages_of_study(self, study_id: int) -> list[StageRecord]:
        rows = self._s.execute(_Hot.stages(), {"study_id": study_id})
        return [self._stage(row) for row in rows]

    def set_stage(
        self,
        stage_id: int,
        *,
        status: StageStatus | None = None,
        chosen_lr: float | None | Keep = KEEP,
    ) -> StageRecord:
        """Set the stage's status and/or chosen LR; a field not given keeps its value
        (``chosen_lr=None`` clears the LR)."""
        if status is not None and status not in _STAGE_STATUSES:
            raise InputError(f"unknown stage status {status!r}: use one of {_STAGE_STATUSES}")
        row = self._s.get(StageRow, stage_id)
        if row is None:
            raise NotFoundError(f"stage {stage_id} does not exist")
        self.touch_study(row.study_id)
        if status is not None:
            row.status = status
        if not isinstance(chosen_lr, Keep):
            row.chosen_lr = chosen_lr
        self._s.flush()
        return self._stage(row)

    # ------------------------------------------------------------------ segments

    @staticmethod
    def _segment_query() -> Select[SegmentRow, int]:
        # populate_existing: a row this transaction holds is refreshed by a new read (the
        # read after a lock must see what a concurrent writer committed meanwhile).
        return (
            select(SegmentRow, StageRow.index)
            .join(StageRow, SegmentRow.stage_id == StageRow.id)
            .execution_options(populate_existing=True)
        )

    @staticmethod
    def _segment(row: SegmentRow | Row[Any] | SimpleNamespace, stage: int) -> SegmentRecord:
        return SegmentRecord(
            id=row.id,
            study_id=row.study_id,
            stage_id=row.stage_id,
            stage=stage,
            seq=row.seq,
            index=row.index,  # type: ignore[arg-type]  # the column, as above
            kind=SegmentKind(row.kind),
            status=SegmentStatus(row.status),
            lr=row.lr,
            steps=row.steps,
            start_step=row.start_step,
            horizon=row.horizon,
            metric=Metric(row.metric),
            report_every=row.report_every,
            restore=row.restore,
            save_start=row.save_start,
            save_end=row.save_end,
            discard=tuple(row.discard),
            stop_above=row.stop_above,
            data_seed=row.data_seed,
            steps_done=row.steps_done,
            fail_reason=row.fail_reason,
            created_at=row.created_at,
            completed_at=row.completed_at,
            heartbeat_at=row.heartbeat_at,
            lr_end=row.lr_end,
            lr_shape=LRShape(row.lr_shape),
        )

    def _one_segment(
        self, query: Select[SegmentRow, int], params: Mapping[str, Any] | None = None
    ) -> SegmentRecord | None:
        found = self._s.execute(query, params).first()
        if found is None:
            return None
        row, stage = found
        self._held.append(row)
        self._stage_index[row.id] = stage
        return self._segment(row, stage)

    def insert_segment(
        self,
        study_id: int,
        stage_id: int,
        seq: int,
        *,
        index: int,
        kind: SegmentKind | str,
        lr: float,
        steps: int,
        start_step: int,
        horizon: int,
        metric: Metric | str,
        report_every: int,
        data_seed: int,
        restore: str | None = None,
        save_start: str | None = None,
        save_end: str | None = None,
        discard: Sequence[str] = (),
        stop_above: float | None = None,
        lr_end: float | None = None,
        lr_shape: LRShape | str = LRShape.constant,
    ) -> SegmentRecord:
        """Issue segment ``seq`` of the study (status ``open``).

        Raises DuplicateSegmentError when segment ``seq`` of the study exists already:
        another request or replica computed and stored it first. The transaction stays
        usable (the INSERT .. ON CONFLICT DO NOTHING wrote nothing); re-read the study
        and answer from it.
        """
        stage = self._s.get(StageRow, stage_id)
        if stage is None or stage.study_id != study_id:
            raise NotFoundError(f"stage {stage_id} of study {study_id} does not exist")
        for name, value in (("lr", lr), ("stop_above", stop_above), ("lr_end", lr_end)):
            if value is not None and not math.isfinite(value):
                raise InputError(f"segment {name} must be finite, not {value!r}")
        self.touch_study(study_id)
        now = self._now()
        values: dict[str, Any] = {
            "study_id": study_id,
            "stage_id": stage_id,
            "seq": seq,
            "index": index,
            "kind": SegmentKind(kind).value,
            "status": SegmentStatus.open.value,
            "lr": float(lr),
            "steps": steps,
            "start_step": start_step,
            "horizon": horizon,
            "metric": _metric(metric),
            "report_every": report_every,
            "restore": restore,
            "save_start": save_start,
            "save_end": save_end,
            "discard": list(discard),
            "stop_above": None if stop_above is None else float(stop_above),
            "data_seed": data_seed,
            "lr_end": None if lr_end is None else float(lr_end),
            "lr_shape": LRShape(lr_shape).value,
            "steps_done": None,
            "fail_reason": None,
            "created_at": now,
            "completed_at": None,
            "heartbeat_at": now,
        }
        segment_id = self._s.scalar(_Hot.insert_segment(self._dialect()), values)
        if segment_id is None:
            raise DuplicateSegmentError(
                f"segment {seq} of study {study_id} was issued concurrently by another "
                "request: read the study again and use the stored segment"
            )
        self._stage_index[segment_id] = stage.index
        return self._segment(SimpleNamespace(id=segment_id, **values), stage.index)

    def heartbeat_segment(self, segment_id: int) -> SegmentRecord | None:
        """Set an open segment's ``heartbeat_at`` to now (its job is alive).

        Returns the segment, or None when it is not open any more (a racing request
        closed it). Locks only the segment row, so it cannot deadlock with writers that
        lock the study first.
        """
        self._s.execute(_Hot.heartbeat(), {"segment_id": segment_id, "now": self._now()})
        segment = self.get_segment(segment_id)
        return segment if segment is not None and segment.status is SegmentStatus.open else None

    def get_segment(self, segment_id: int) -> SegmentRecord | None:
        return self._one_segment(_Hot.segment(), {"segment_id": segment_id})

    def segment_by_seq(self, study_id: int, seq: int) -> SegmentRecord | None:
        """Segment ``seq`` of the study (e.g. the one a racing request issued first)."""
        return self._one_segment(
            self._segment_query().where(SegmentRow.study_id == study_id, SegmentRow.seq == seq)
        )

    def open_segment(self, study_id: int) -> SegmentRecord | None:
        """The study's open segment (the latest, should there be several), or None."""
        return self._one_segment(
            self._segment_query()
            .where(SegmentRow.study_id == study_id, SegmentRow.status == SegmentStatus.open.value)
            .order_by(SegmentRow.seq.desc())
        )

    def segments_of_study(self, study_id: int) -> list[SegmentRecord]:
        """All segments of the study, in issue order (by ``seq``)."""
        rows = self._s.execute(_Hot.segments(), {"study_id": study_id})
        return [self._segment(row, row.stage_index) for row in rows]

    def update_segment_status(
        self,
        segment_id: int,
        status: SegmentStatus | str,
        *,
        steps_done: int | None = None,
        fail_reason: str | None = None,
    ) -> SegmentRecord:
        """Set the segment's status, steps done and failure reason.

        ``completed_at`` is set when the segment leaves ``open`` (cleared if it returns).
        Whether the transition is allowed is the caller's decision.
        """
        row = self._s.get(SegmentRow, segment_id)
        if row is None:
            raise NotFoundError(f"segment {segment_id} does not exist")
        self.touch_study(row.study_id)
        new_status = SegmentStatus(status)
        row.status = new_status.value
        row.steps_done = steps_done
        row.fail_reason = fail_reason
        row.completed_at = None if new_status is SegmentStatus.open else self._now()
        self._s.flush()
        stage = self._stage_index.get(segment_id)
        if stage is not None:  # the row is current after the flush
            return self._segment(row, stage)
        segment = self.get_segment(segment_id)
        assert segment is not None
        return segment

    # ------------------------------------------------------------------ observations

    def add_observations(
        self,
        segment_id: int,
        observations: Iterable[tuple[int, Metric | str, float]],
        *,
        study_id: int | None = None,
    ) -> tuple[int, int]:
        """Store ``(step, metric, value)`` observations of a segment, idempotently.

        Returns ``(accepted, duplicates)``: new rows written, and reports identical to a
        stored one (or repeated within the batch), which are no-ops. NaN equals NaN here.
        A report that differs from a stored value raises ObservationConflictError and
        nothing of the batch is written. One SELECT and one bulk INSERT per batch.
        ``study_id`` (the segment's study), when the caller knows it, saves a query.
        """
        if study_id is None:
            study_id = self._study_of_segment(segment_id)
        batch, repeats = self._batch(observations)
        if not batch:
            return 0, repeats
        # First, so concurrent writers of this study queue here and then see each
        # other's rows (PostgreSQL); on SQLite the write lock is already held.
        self.touch_study(study_id)
        # A second pass only if a concurrent writer slipped in between our SELECT and
        # INSERT (the unique key caught it): its rows are then visible to the SELECT.
        # That takes PostgreSQL, where the INSERT runs in a SAVEPOINT (a failed statement
        # would abort the transaction); a SQLite write transaction holds the database's
        # write lock from its BEGIN IMMEDIATE, so no writer slips in there.
        for attempt in range(2):
            new = self._new_observations(segment_id, batch)
            guard = self._s.begin_nested() if self._dialect() != "sqlite" else nullcontext()
            try:
                with guard:
                    if new:
                        self._s.execute(
                            insert(ObservationRow),
                            [
                                {
                                    "segment_id": segment_id,
                                    "step": step,
                                    "metric": metric,
                                    "value": value,
                                    "special": special,
                                }
                                for (step, metric), (value, special) in new.items()
                            ],
                        )
            except IntegrityError:
                if attempt == 1:
                    raise
                continue
            return len(new), repeats + len(batch) - len(new)
        raise AssertionError("unreachable")

    def count_existing(
        self, segment_id: int, observations: Iterable[tuple[int, Metric | str, float]]
    ) -> tuple[int, int]:
        """What :meth:`add_observations` would do, without writing: ``(new, duplicates)``.

        Raises ObservationConflictError as it would. For a closed segment, where a
        retried batch is fine but a new value is not.
        """
        self._study_of_segment(segment_id)
        batch, repeats = self._batch(observations)
        if not batch:
            return 0, repeats
        new = self._new_observations(segment_id, batch)
        return len(new), repeats + len(batch) - len(new)

    def _study_of_segment(self, segment_id: int) -> int:
        study_id = self._s.scalar(_Hot.study_of_segment(), {"segment_id": segment_id})
        if study_id is None:
            raise NotFoundError(f"segment {segment_id} does not exist")
        return int(study_id)

    @staticmethod
    def _batch(
        observations: Iterable[tuple[int, Metric | str, float]],
    ) -> tuple[dict[tuple[int, str], _Encoded], int]:
        """The batch keyed by (step, metric), and how many reports repeat one exactly."""
        batch: dict[tuple[int, str], _Encoded] = {}
        repeats = 0
        for step, metric, value in observations:
            key = (int(step), _metric(metric))
            encoded = _encode(value)
            previous = batch.get(key)
            if previous is None:
                batch[key] = encoded
            elif previous == encoded:
                repeats += 1
            else:
                raise ObservationConflictError(
                    f"the batch reports {key[1]} at step {key[0]} twice, as "
                    f"{_decode(*previous)!r} and {_decode(*encoded)!r}: send one value per step"
                )
        return batch, repeats

    def _new_observations(
        self, segment_id: int, batch: dict[tuple[int, str], _Encoded]
    ) -> dict[tuple[int, str], _Encoded]:
        """The part of ``batch`` not stored yet; ObservationConflictError if a stored value
        differs. One SELECT over the batch's step range (no parameter-count limits)."""
        steps = [step for step, _ in batch]
        stored: dict[tuple[int, str], _Encoded] = {
            (step, metric): (value, special)
            for step, metric, value, special in self._s.execute(
                _Hot.observations_between(),
                {"segment_id": segment_id, "low": min(steps), "high": max(steps)},
            )
        }
        new: dict[tuple[int, str], _Encoded] = {}
        for key, encoded in batch.items():
            existing = stored.get(key)
            if existing is None:
                new[key] = encoded
            elif existing != encoded:
                step, metric = key
                raise ObservationConflictError(
                    f"segment {segment_id} already has {metric} = {_decode(*existing)!r} "
                    f"at step {step}, and this batch says {_decode(*encoded)!r}: a step's "
                    "value cannot change (a retry must resend the same value)"
                )
        return new

    def observations_of_segment(self, segment_id: int) -> list[ObservationRecord]:
        """The segment's observations sorted by (step, metric)."""
        rows = self._s.execute(_Hot.observations_of_segment(), {"segment_id": segment_id})
        return [
            ObservationRecord(step, Metric(metric), _decode(value, special))
            for step, metric, value, special in rows
        ]

    def observations_of_study(self, study_id: int) -> dict[int, list[ObservationRecord]]:
        """segment id -> observations sorted by (step, metric), for the whole study in one
        query; segments without observations are absent."""
        rows = self._s.execute(_Hot.observations_of_study(), {"study_id": study_id})
        out: dict[int, list[ObservationRecord]] = {}
        for segment_id, step, metric, value, special in rows:
            out.setdefault(segment_id, []).append(
                ObservationRecord(step, Metric(metric), _decode(value, special))
            )
        return out

    # ------------------------------------------------------------------ forecasts

    @staticmethod
    def _forecast(row: ForecastRow | Row[Any] | SimpleNamespace) -> ForecastRecord:
        return ForecastRecord(
            id=row.id,
            segment_id=row.segment_id,
            model=row.model,
            prediction=row.prediction,
            std=row.std,
            status=row.status,
            params=_decode_params(row.params),
            n_points=row.n_points,
            objective=row.objective,
            created_at=row.created_at,
        )

    def upsert_forecast(
        self,
        segment_id: int,
        *,
        model: str,
        prediction: float | None,
        std: float | None,
        status: str,
        params: Mapping[str, float],
        n_points: int,
        objective: float | None,
        study_id: int | None = None,
    ) -> ForecastRecord:
        """Write the segment's forecast, replacing any earlier one.

        Non-finite ``prediction``, ``std`` and ``objective`` are stored as None (the
        ``status`` says why); NaN/inf in ``params`` round-trip. ``study_id`` (the
        segment's study), when the caller knows it, saves a query.
        """
        self.touch_study(self._study_of_segment(segment_id) if study_id is None else study_id)
        values = {
            "segment_id": segment_id,
            "model": model,
            "prediction": _finite_or_none(prediction),
            "std": _finite_or_none(std),
            "status": status,
            "params": _encode_params(params),
            "n_points": n_points,
            "objective": _finite_or_none(objective),
            "created_at": self._now(),
        }
        # Forecast rows are never held by the session (no reader keeps them), so no
        # loaded copy can go stale under this Core statement.
        forecast_id = self._s.scalar(_Hot.upsert_forecast(self._dialect()), values)
        return self._forecast(SimpleNamespace(id=forecast_id, **values))

    def get_forecast(self, segment_id: int) -> ForecastRecord | None:
        row = self._s.scalar(select(ForecastRow).where(ForecastRow.segment_id == segment_id))
        return None if row is None else self._forecast(row)

    def forecasts_of_study(self, study_id: int) -> dict[int, ForecastRecord]:
        """segment id -> forecast, for every segment of the study that has one."""
        rows = self._s.execute(_Hot.forecasts(), {"study_id": study_id})
        return {row.segment_id: self._forecast(row) for row in rows}

    # ------------------------------------------------------------------ history

    def history(self, study_id: int) -> StudyHistory | None:
        """The study with its stages, segments, observations and forecasts (five
        queries), or None if there is no such study."""
        study = self.get_study(study_id)
        if study is None:
            return None
        return StudyHistory(
            study=study,
            stages=self.stages_of_study(study_id),
            segments=self.segments_of_study(study_id),
            observations=self.observations_of_study(study_id),
            forecasts=self.forecasts_of_study(study_id),
            outages=self.outages_of_study(study_id),
        )

    # ------------------------------------------------------------------ outages

    def outages_of_study(self, study_id: int) -> list[OutageRecord]:
        """The outages a job reported for the study, in the order reported."""
        rows = self._s.scalars(
            select(OutageRow).where(OutageRow.study_id == study_id).order_by(OutageRow.id)
        ).all()
        return [OutageRecord(r.key, r.steps, r.after_seq, r.reported_at) for r in rows]

    def add_outage(
        self, study_id: int, key: str, steps: int, after_seq: int | None
    ) -> tuple[OutageRecord, bool]:
        """Record an outage (call with the study locked): ``(record, created)``; the
        stored one, unchanged, when ``key`` was reported before."""
        row = self._s.scalars(
            select(OutageRow).where(OutageRow.study_id == study_id, OutageRow.key == key)
        ).first()
        created = row is None
        if row is None:
            row = OutageRow(
                study_id=study_id,
                key=key,
                steps=steps,
                after_seq=after_seq,
                reported_at=self._now(),
            )
            self._s.add(row)
            self._s.flush()
            self.touch_study(study_id)
        return OutageRecord(row.key, row.steps, row.after_seq, row.reported_at), created

    # ------------------------------------------------------------------ study list

    #: Sort keys of :meth:`study_summaries`.
    SUMMARY_SORTS = ("name", "updated", "best_loss", "status")

    def study_summaries(
        self,
        *,
        lease_seconds: float,
        project: str | None = None,
        status: str | None = None,
        study_id: int | None = None,
        sort: str = "updated",
        descending: bool = True,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[StudySummaryRecord], int]:
        """One page of the study list with everything its rows show, and how many studies
        match the filters.

        Two queries whatever the page size (the page, with its total as a window count;
        then the page's LR schedules), so a list of thousands of studies costs what a
        list of ten does. ``status`` filters on the status shown: a StudyStatus value, or
        ``"stalled"`` (running, and the open segment's heartbeat is older than
        ``lease_seconds``; a running study that is not stalled shows as ``"running"``).
        ``study_id`` picks one study (its page's header). ``sort`` is one of
        :attr:`SUMMARY_SORTS`; studies without a loss sort last.
        """
        if limit < 0 or offset < 0:
            raise InputError("limit and offset must not be negative")
        if sort not in self.SUMMARY_SORTS:
            raise InputError(f"unknown sort {sort!r}: use one of {', '.join(self.SUMMARY_SORTS)}")
        statuses = [s.value for s in StudyStatus] + ["stalled"]
        if status is not None and status not in statuses:
            raise InputError(f"unknown study status {status!r}: use one of {', '.join(statuses)}")
        stale_before = self._now() - timedelta(seconds=lease_seconds)
        # A segment written before heartbeats existed counts from its creation.
        stalled = and_(
            StudyRow.status == StudyStatus.running.value,
            select(SegmentRow.id)
            .where(
                SegmentRow.study_id == StudyRow.id,
                SegmentRow.status == SegmentStatus.open.value,
                func.coalesce(SegmentRow.heartbeat_at, SegmentRow.created_at) < stale_before,
            )
            .exists(),
        )
        shown = case((stalled, literal("stalled")), else_=StudyRow.status)
        best = (
            select(func.min(ObservationRow.value))
            .join(SegmentRow, ObservationRow.segment_id == SegmentRow.id)
            .where(
                SegmentRow.study_id == StudyRow.id,
                SegmentRow.kind == SegmentKind.exploit.value,
                ObservationRow.metric == SegmentRow.metric,
                ObservationRow.special.is_(None),
            )
            .scalar_subquery()
        )
        latest_stage = (
            select(StageRow.index, StageRow.status)
            .where(StageRow.study_id == StudyRow.id)
            .order_by(StageRow.index.desc())
            .limit(1)
        )
        stage = latest_stage.with_only_columns(StageRow.index).scalar_subquery()
        stage_status = latest_stage.with_only_columns(StageRow.status).scalar_subquery()
        conditions = []
        if project is not None:
            conditions.append(ProjectRow.name == project)
        if status is not None:
            conditions.append(shown == status)
        if study_id is not None:
            conditions.append(StudyRow.id == study_id)
        key = {
            "name": StudyRow.name,
            "updated": StudyRow.updated_at,
            "best_loss": best,
            "status": shown,
        }[sort]
        order: list[ColumnElement[Any]] = [
            key.desc() if descending else key.asc(),
            StudyRow.id.desc(),
        ]
        if sort == "best_loss":
            order.insert(0, best.is_(None))
        rows = self._s.execute(
            select(
                StudyRow,
                ProjectRow.name,
                stalled.label("stalled"),
                stage.label("stage"),
                stage_status.label("stage_status"),
                best.label("best"),
                func.count().over().label("total"),
            )
            .join(ProjectRow, StudyRow.project_id == ProjectRow.id)
            .where(*conditions)
            .order_by(*order)
            .limit(limit)
            .offset(offset)
        ).all()
        if rows:
            total = int(rows[0].total)
        else:  # past the end (or nothing matches): the window count has no row to ride on
            total = int(
                self._s.scalar(
                    select(func.count())
                    .select_from(StudyRow)
                    .join(ProjectRow, StudyRow.project_id == ProjectRow.id)
                    .where(*conditions)
                )
                or 0
            )
        schedules: dict[int, list[tuple[int, int, float]]] = {}
        if rows:
            for study_id, start, steps, lr in self._s.execute(
                select(SegmentRow.study_id, SegmentRow.start_step, SegmentRow.steps, SegmentRow.lr)
                .where(
                    SegmentRow.study_id.in_([row[0].id for row in rows]),
                    SegmentRow.kind == SegmentKind.exploit.value,
                )
                .order_by(SegmentRow.study_id, SegmentRow.seq)
            ):
                schedules.setdefault(study_id, []).append((start, steps, lr))
        return [
            StudySummaryRecord(
                id=row[0].id,
                project=row[1],
                name=row[0].name,
                status=StudyStatus(row[0].status),
                stalled=bool(row.stalled),
                config=row[0].config,
                created_at=row[0].created_at,
                updated_at=row[0].updated_at,
                stage=row.stage,
                stage_status=row.stage_status,
                best_loss=_finite_or_none(row.best),
                schedule=tuple(schedules.get(row[0].id, ())),
            )
            for row in rows
        ], total

    # ------------------------------------------------------------------ replay and import

    def study_keys(
        self, project: str | None = None, status: StudyStatus | str | None = None
    ) -> list[tuple[int, str, str, StudyStatus]]:
        """``(id, project, name, status)`` of every study matching the filters, by id:
        the cheap listing replay and export select from (no configs, no paging)."""
        query = (
            select(StudyRow.id, ProjectRow.name, StudyRow.name, StudyRow.status)
            .join(ProjectRow, StudyRow.project_id == ProjectRow.id)
            .order_by(StudyRow.id)
        )
        if project is not None:
            query = query.where(ProjectRow.name == project)
        if status is not None:
            query = query.where(StudyRow.status == StudyStatus(status).value)
        return [
            (study_id, project_name, name, StudyStatus(state))
            for study_id, project_name, name, state in self._s.execute(query).all()
        ]

    def insert_study_row(
        self,
        project_id: int,
        name: str,
        *,
        config: Mapping[str, Any],
        status: StudyStatus | str,
        status_reason: str | None,
        created_at: datetime,
        updated_at: datetime,
    ) -> StudyRecord | None:
        """Insert a study exactly as given (an import keeps its status and times).

        None when the project already has a study of that name (nothing is written).
        """
        row = StudyRow(
            project_id=project_id,
            name=name,
            config=json.loads(json.dumps(dict(config), allow_nan=False)),
            status=StudyStatus(status).value,
            status_reason=status_reason,
            created_at=created_at,
            updated_at=updated_at,
        )
        if self._insert(row) is not None:
            return None
        return self.get_study(row.id)

    def insert_stage_rows(
        self, study_id: int, stages: Sequence[Mapping[str, Any]]
    ) -> dict[int, int]:
        """Insert a study's stages as given (keys: index, tau, tau_explore, start_step,
        status, chosen_lr) in one statement; returns stage index -> row id."""
        for stage in stages:
            if stage["status"] not in _STAGE_STATUSES:
                raise InputError(f"unknown stage status {stage['status']!r}")
        if stages:
            self._s.execute(insert(StageRow), [{**s, "study_id": study_id} for s in stages])
        rows = self._s.execute(
            select(StageRow.index, StageRow.id).where(StageRow.study_id == study_id)
        )
        return {index: row_id for index, row_id in rows}

    def insert_segment_rows(
        self, study_id: int, segments: Sequence[Mapping[str, Any]]
    ) -> dict[int, int]:
        """Insert a study's segments as given (the columns of ``segments``, ``stage_id``
        included) in one statement; returns seq -> row id."""
        rows = []
        for seg in segments:
            for name in ("lr", "stop_above", "lr_end"):
                value = seg.get(name)
                if value is not None and not math.isfinite(value):
                    raise InputError(f"segment {seg['seq']}: {name} must be finite, not {value!r}")
            rows.append(
                {
                    **seg,
                    "study_id": study_id,
                    "kind": SegmentKind(seg["kind"]).value,
                    "status": SegmentStatus(seg["status"]).value,
                    "metric": _metric(seg["metric"]),
                    "discard": list(seg["discard"]),
                    "lr_shape": LRShape(seg.get("lr_shape", LRShape.constant)).value,
                }
            )
        if rows:
            self._s.execute(insert(SegmentRow), rows)
        found = self._s.execute(
            select(SegmentRow.seq, SegmentRow.id).where(SegmentRow.study_id == study_id)
        )
        return {seq: row_id for seq, row_id in found}

    def insert_observation_rows(
        self, observations: Iterable[tuple[int, int, Metric | str, float]]
    ) -> int:
        """Bulk-insert ``(segment_id, step, metric, value)`` rows (NaN/inf kept as the
        store keeps them); the unique key refuses a repeated step. Returns rows written."""
        rows = []
        for segment_id, step, metric, value in observations:
            encoded, special = _encode(value)
            rows.append(
                {
                    "segment_id": segment_id,
                    "step": int(step),
                    "metric": _metric(metric),
                    "value": encoded,
                    "special": special,
                }
            )
        if rows:
            self._s.execute(insert(ObservationRow), rows)
        return len(rows)

    def insert_forecast_rows(self, forecasts: Sequence[Mapping[str, Any]]) -> int:
        """Bulk-insert forecasts as given (keys: segment_id, model, prediction, std,
        status, params, n_points, objective, created_at). Returns rows written."""
        rows = [
            {
                **fc,
                "prediction": _finite_or_none(fc["prediction"]),
                "std": _finite_or_none(fc["std"]),
                "objective": _finite_or_none(fc["objective"]),
                "params": _encode_params(fc["params"]),
            }
            for fc in forecasts
        ]
        if rows:
            self._s.execute(insert(ForecastRow), rows)
        return len(rows)
