"""The live path's reads and writes: projects, studies, stages, segments, observations,
forecasts and a study's history, as the study service uses them on every request.

Writes that two requests may race on are made idempotent with the unique keys, as
Optuna's storage does: the insert runs in a SAVEPOINT, and a unique-key violation means
"already written" (read it back) or, for segments, "someone else issued it first"
(:class:`DuplicateSegmentError`). The outer transaction survives either way.

Every write to a study's children also touches the study's ``updated_at``, and does it
first, so that on PostgreSQL the study row is always the first row a transaction locks
(one lock order, no deadlocks), and writers of one study queue on that row.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import replace
from datetime import datetime, timezone
from functools import cache
from types import SimpleNamespace
from typing import Any, cast

from sqlalchemy import (
    Float,
    Select,
    Table,
    bindparam,
    exists,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from stagelr.models import (
    Metric,
    SegmentDecision,
    SegmentStatus,
    StudyStatus,
)
from stagelr_service.errors import (
    DuplicateSegmentError,
    InputError,
    NotFoundError,
    ObservationConflictError,
)

from .codec import (
    FORECAST_VALUES,
    KEEP,
    STAGE_STATUSES,
    Encoded,
    Keep,
    decision_columns,
    decode_float,
    dialect_insert,
    encode_float,
    encode_params,
    finite_or_none,
    forecast_record,
    metric_value,
    segment_record,
    stage_record,
    stored_params,
    study_query,
    study_record,
)
from .history_cache import HistoryCache, KeptHistory, study_identity
from .models import (
    ForecastRow,
    ObservationRow,
    OutageRow,
    ProjectRow,
    SegmentRow,
    StageRow,
    StudyRow,
    UTCDateTime,
)
from .pipeline import begin_pipeline
from .records import (
    ClosedAndIssued,
    Closing,
    ForecastRecord,
    Issue,
    NewForecast,
    NewStage,
    ObservationRecord,
    OutageRecord,
    ProjectRecord,
    SegmentRecord,
    StageRecord,
    StageStatus,
    StudyEnding,
    StudyHistory,
    StudyRecord,
)

__all__ = ["LiveQueries"]


class _Hot:
    """The statements of the decision path, each built once.

    A statement built per call costs SQLAlchemy its construction and its cache key, about
    three times what running it on SQLite costs (measured: 404 us against 171 us a
    study read); these take their values as bound parameters.
    """

    @staticmethod
    @cache
    def study() -> Any:
        # Plain columns (the study's, and its project's name), not an ORM entity: a read
        # then always sees what the database holds, also after waiting for a lock.
        studies, projects = cast(Table, StudyRow.__table__), cast(Table, ProjectRow.__table__)
        return (
            select(*studies.c, projects.c.name.label("project_name"))
            .join(projects, studies.c.project_id == projects.c.id)
            .where(studies.c.id == bindparam("study_id"))
        )

    @staticmethod
    @cache
    def locked_study() -> Any:
        return _Hot.study().with_for_update(of=cast(Table, StudyRow.__table__))

    @staticmethod
    @cache
    def touch() -> Any:
        # A Core UPDATE on the table: the ORM-enabled one takes SQLAlchemy's bulk-update
        # path, whose session synchronization cost more than the statement (8% of the
        # server's CPU under load, the statement's execution included).
        # RETURNING the version it set: the writes of the transaction are that version.
        table = cast(Table, StudyRow.__table__)
        return (
            update(table)
            .where(table.c.id == bindparam("study_id"))
            .values(updated_at=bindparam("now"), version=table.c.version + 1)
            .returning(table.c.version)
        )

    @staticmethod
    @cache
    def touch_running() -> Any:
        table = cast(Table, StudyRow.__table__)
        return (
            update(table)
            .where(
                table.c.id == bindparam("study_id"),
                table.c.status == StudyStatus.running.value,
            )
            .values(updated_at=bindparam("now"), version=table.c.version + 1)
            .returning(table.c.version)
        )

    @staticmethod
    @cache
    def insert_segment(dialect: str) -> Any:
        """INSERT a segment unless its (study, seq) is taken; RETURNING its id (no row:
        taken). One statement, no SAVEPOINT: ON CONFLICT leaves the transaction usable
        on PostgreSQL, where a failed INSERT would abort it."""
        table = SegmentRow.__table__
        return (
            dialect_insert(dialect, table)
            .on_conflict_do_nothing(index_elements=[table.c.study_id, table.c.seq])
            .returning(table.c.id)
        )

    @staticmethod
    @cache
    def upsert_forecast(dialect: str) -> Any:
        """INSERT a segment's forecast or replace the one stored; RETURNING its id."""
        table = ForecastRow.__table__
        statement = dialect_insert(dialect, table)
        replaced = {name: statement.excluded[name] for name in FORECAST_VALUES}
        return statement.on_conflict_do_update(
            index_elements=[table.c.segment_id], set_=replaced
        ).returning(table.c.id)

    @staticmethod
    @cache
    def stage() -> Any:
        table = StageRow.__table__
        return select(*table.c).where(
            table.c.study_id == bindparam("study_id"), table.c.index == bindparam("index")
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
    def segment_columns() -> Any:
        """A segment's columns and its stage's index: rows, not ORM entities (a read then
        always sees what the database holds, and costs no identity-map bookkeeping)."""
        segments, stages = SegmentRow.__table__, StageRow.__table__
        return select(*segments.c, stages.c.index.label("stage_index")).join(
            stages, segments.c.stage_id == stages.c.id
        )

    @staticmethod
    @cache
    def segment() -> Any:
        table = SegmentRow.__table__
        return _Hot.segment_columns().where(table.c.id == bindparam("segment_id"))

    @staticmethod
    @cache
    def segments() -> Any:
        table = SegmentRow.__table__
        return (
            _Hot.segment_columns()
            .where(table.c.study_id == bindparam("study_id"))
            .order_by(table.c.seq)
        )

    @staticmethod
    @cache
    def close_segment() -> Any:
        """Set a segment's status fields; RETURNING the row (no row: no such segment)."""
        table = cast(Table, SegmentRow.__table__)
        return (
            update(table)
            .where(table.c.id == bindparam("segment_id"))
            .values(
                status=bindparam("status"),
                steps_done=bindparam("steps_done"),
                fail_reason=bindparam("fail_reason"),
                completed_at=bindparam("completed_at"),
            )
            .returning(*table.c)
        )

    @staticmethod
    @cache
    def close_open_segment() -> Any:
        """Close a segment that is open and holds ``points`` observations; RETURNING the
        row (no row: it is not open, or holds another number of points)."""
        table = cast(Table, SegmentRow.__table__)
        observations = cast(Table, ObservationRow.__table__)
        points = (
            select(func.count())
            .select_from(observations)
            .where(observations.c.segment_id == bindparam("segment_id"))
            .scalar_subquery()
        )
        return (
            update(table)
            .where(
                table.c.id == bindparam("segment_id"),
                table.c.status == SegmentStatus.open.value,
                points == bindparam("points"),
            )
            .values(
                status=bindparam("status"),
                steps_done=bindparam("steps_done"),
                fail_reason=None,
                completed_at=bindparam("completed_at"),
            )
            .returning(*table.c)
        )

    @staticmethod
    @cache
    def set_stage(status: bool, keep_lr: bool, of_study: bool) -> Any:
        """Set a stage's status (``status``) and its chosen LR (unless ``keep_lr``);
        RETURNING the row (no row: no such stage, or, ``of_study``, not of that study)."""
        table = cast(Table, StageRow.__table__)
        values: dict[str, Any] = {}
        if status:
            values["status"] = bindparam("status")
        if not keep_lr:
            values["chosen_lr"] = bindparam("chosen_lr")
        where = [table.c.id == bindparam("stage_id")]
        if of_study:
            where.append(table.c.study_id == bindparam("locked_study"))
        if not values:  # nothing to set: the row as it is
            return select(*table.c).where(*where)
        return update(table).where(*where).values(**values).returning(*table.c)

    @staticmethod
    @cache
    def stage_by_id() -> Any:
        table = StageRow.__table__
        return select(*table.c).where(table.c.id == bindparam("stage_id"))

    @staticmethod
    @cache
    def insert_observations() -> Any:
        # A Core INSERT on the table (executemany): the ORM-enabled one takes the bulk
        # persistence path, which costs more than the statement here.
        return insert(cast(Table, ObservationRow.__table__))

    @staticmethod
    @cache
    def insert_observation_arrays() -> Any:
        # PostgreSQL: a batch as one array per column, unnested into rows. An executemany
        # runs its INSERT once per row there (a Bind and an Execute each, in one round
        # trip); this runs one statement whatever the batch's size, and its text never
        # changes, so the connection prepares it once.
        return text(_OBSERVATION_ARRAYS_SQL)

    # A decision's write transaction sent at once (:meth:`LiveQueries.close_and_issue`):
    # every statement after the touch carries the guard, so that none writes, nor locks,
    # nor waits for a lock, unless the touch found the study running and locked it.

    @staticmethod
    @cache
    def guard() -> Any:
        """The study runs and carries this transaction's touch: ``updated_at`` is the
        touch's ``now``. Once the touch has locked the row, only this transaction can
        change it, and it sees its own touch. A touch that found the study not running
        (stopped, ended, deleted) locked nothing, and a study never runs again once it
        stopped: the guard is false then, whatever the statement's snapshot."""
        table = cast(Table, StudyRow.__table__)
        return exists().where(
            table.c.id == bindparam("guard_study"),
            table.c.status == StudyStatus.running.value,
            table.c.updated_at == bindparam("guard_now"),
        )

    @staticmethod
    @cache
    def guarded_close() -> Any:
        return _Hot.close_open_segment().where(_Hot.guard())

    @staticmethod
    @cache
    def guarded_set_stage(keep_lr: bool) -> Any:
        return _Hot.set_stage(True, keep_lr, False).where(_Hot.guard())

    @staticmethod
    @cache
    def guarded_observation_arrays() -> Any:
        # The guard of _Hot.guard in SQL text, as the arrays' INSERT is.
        table = cast(Table, StudyRow.__table__)
        return text(
            f"{_OBSERVATION_ARRAYS_SQL} WHERE EXISTS (SELECT 1 FROM studies WHERE "
            f"id = :guard_study AND status = '{StudyStatus.running.value}' "
            "AND updated_at = :guard_now)"
        ).bindparams(
            bindparam("guard_study", type_=table.c.id.type),
            bindparam("guard_now", type_=table.c.updated_at.type),
        )

    @staticmethod
    @cache
    def guarded_insert_segment(columns: tuple[str, ...]) -> Any:
        """:meth:`insert_segment` (PostgreSQL) as ``INSERT .. SELECT`` of the values,
        guarded (an INSERT of VALUES has no WHERE); ``columns``: the values given."""
        table = cast(Table, SegmentRow.__table__)
        return (
            dialect_insert("postgresql", table)
            .from_select(columns, _Hot._guarded_values(table, columns))
            .on_conflict_do_nothing(index_elements=[table.c.study_id, table.c.seq])
            .returning(table.c.id)
        )

    @staticmethod
    @cache
    def guarded_upsert_forecast(columns: tuple[str, ...]) -> Any:
        """:meth:`upsert_forecast` (PostgreSQL) as ``INSERT .. SELECT``, guarded."""
        table = cast(Table, ForecastRow.__table__)
        statement = dialect_insert("postgresql", table).from_select(
            columns, _Hot._guarded_values(table, columns)
        )
        replaced = {name: statement.excluded[name] for name in FORECAST_VALUES}
        return statement.on_conflict_do_update(
            index_elements=[table.c.segment_id], set_=replaced
        ).returning(table.c.id)

    @staticmethod
    def _guarded_values(table: Table, columns: tuple[str, ...]) -> Any:
        return select(*(bindparam(name, type_=table.c[name].type) for name in columns)).where(
            _Hot.guard()
        )

    @staticmethod
    @cache
    def outages() -> Any:
        table = OutageRow.__table__
        return (
            select(table.c.key, table.c.steps, table.c.after_seq, table.c.reported_at)
            .where(table.c.study_id == bindparam("study_id"))
            .order_by(table.c.id)
        )

    @staticmethod
    @cache
    def study_of_segment() -> Any:
        return select(SegmentRow.study_id).where(SegmentRow.id == bindparam("segment_id"))

    @staticmethod
    @cache
    def bump_of_open_segment() -> Any:
        """Raise the version of the study of an open segment (a heartbeat's: the segment
        row changes). The study's row first, as every writer locks it."""
        studies, segments = cast(Table, StudyRow.__table__), cast(Table, SegmentRow.__table__)
        owner = (
            select(segments.c.study_id)
            .where(
                segments.c.id == bindparam("segment_id"),
                segments.c.status == SegmentStatus.open.value,
            )
            .scalar_subquery()
        )
        return (
            update(studies)
            .where(studies.c.id == owner)
            .values(version=studies.c.version + 1)
            .returning(studies.c.id, studies.c.version)
        )

    @staticmethod
    @cache
    def study_of_segment_row() -> Any:
        """The study's row (:meth:`study`) of a segment."""
        studies, segments = cast(Table, StudyRow.__table__), cast(Table, SegmentRow.__table__)
        owner = select(segments.c.study_id).where(segments.c.id == bindparam("segment_id"))
        projects = cast(Table, ProjectRow.__table__)
        return (
            select(*studies.c, projects.c.name.label("project_name"))
            .join(projects, studies.c.project_id == projects.c.id)
            .where(studies.c.id == owner.scalar_subquery())
        )

    @staticmethod
    @cache
    def segments_from() -> Any:
        table = SegmentRow.__table__
        return (
            _Hot.segment_columns()
            .where(table.c.study_id == bindparam("study_id"), table.c.seq >= bindparam("seq"))
            .order_by(table.c.seq)
        )

    @staticmethod
    @cache
    def observations_from() -> Any:
        return (
            select(
                ObservationRow.segment_id,
                ObservationRow.step,
                ObservationRow.metric,
                ObservationRow.value,
                ObservationRow.special,
            )
            .join(SegmentRow, ObservationRow.segment_id == SegmentRow.id)
            .where(SegmentRow.study_id == bindparam("study_id"), SegmentRow.seq >= bindparam("seq"))
            .order_by(ObservationRow.segment_id, ObservationRow.step, ObservationRow.metric)
        )

    @staticmethod
    @cache
    def forecasts_from() -> Any:
        forecasts, segments = ForecastRow.__table__, SegmentRow.__table__
        return (
            select(*forecasts.c)
            .join(segments, forecasts.c.segment_id == segments.c.id)
            .where(segments.c.study_id == bindparam("study_id"), segments.c.seq >= bindparam("seq"))
        )

    @staticmethod
    @cache
    def heartbeat() -> Any:
        table = cast(Table, SegmentRow.__table__)
        return (
            update(table)
            .where(
                table.c.id == bindparam("segment_id"),
                table.c.status == SegmentStatus.open.value,
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


#: A segment's observations as one array per column, unnested into rows (PostgreSQL).
_OBSERVATION_ARRAYS_SQL = (
    "INSERT INTO observations (segment_id, step, metric, value, special) "
    "SELECT * FROM unnest(CAST(:segment_id AS INTEGER[]), CAST(:step AS INTEGER[]), "
    "CAST(:metric AS VARCHAR[]), CAST(:value AS DOUBLE PRECISION[]), "
    "CAST(:special AS VARCHAR[]))"
)


def _json_row(table: Table, obj: dict[str, Any], **extra: str) -> SimpleNamespace:
    """A row of ``table`` that PostgreSQL gave as a JSON object (``row_to_json``), with
    the Python values the row read would give: timestamps aware UTC, a float column
    a float even where JSON wrote it as an integer, JSON columns as they were stored.
    ``extra`` names the labelled columns that are not the table's (kept as they are)."""
    out: dict[str, Any] = {}
    for column in table.c:
        value = obj[column.name]
        if value is not None:
            if isinstance(column.type, UTCDateTime):
                value = datetime.fromisoformat(value).astimezone(timezone.utc)
            elif isinstance(column.type, Float):
                value = float(value)
        out[column.name] = value
    for name in extra.values():
        out[name] = obj[name]
    return SimpleNamespace(**out)


#: A study's history, each part aggregated to JSON, as text (parsed by :func:`_loads`);
#: ``{study}`` is the study's id. The parts come only where the study's version is not
#: ``:known`` (the version of a kept copy; -1: none), and the segments, their points and
#: forecasts only from segment ``:from_seq`` on (0: all).
_HISTORY_SQL = """
WITH s AS (
  SELECT studies.*, projects.name AS project_name
  FROM studies JOIN projects ON studies.project_id = projects.id
  WHERE studies.id = {study}),
f AS (SELECT s.id FROM s WHERE s.version <> :known)
SELECT
  CAST((SELECT row_to_json(s) FROM s) AS TEXT) AS study,
  CAST((SELECT coalesce(json_agg(t ORDER BY t.index), '[]')
     FROM stages AS t WHERE t.study_id = (SELECT id FROM f)) AS TEXT) AS stages,
  CAST((SELECT coalesce(json_agg(g ORDER BY g.seq), '[]') FROM (
     SELECT segments.*, stages.index AS stage_index
     FROM segments JOIN stages ON segments.stage_id = stages.id
     WHERE segments.study_id = (SELECT id FROM f) AND segments.seq >= :from_seq) AS g)
     AS TEXT) AS segments,
  CAST((SELECT coalesce(json_agg(json_build_array(o.segment_id, o.step, o.metric, o.value,
                                             o.special)
                            ORDER BY o.segment_id, o.step, o.metric), '[]')
     FROM observations AS o JOIN segments AS g ON o.segment_id = g.id
     WHERE g.study_id = (SELECT id FROM f) AND g.seq >= :from_seq) AS TEXT) AS observations,
  CAST((SELECT coalesce(json_agg(c ORDER BY c.id), '[]')
     FROM forecasts AS c JOIN segments AS g ON c.segment_id = g.id
     WHERE g.study_id = (SELECT id FROM f) AND g.seq >= :from_seq) AS TEXT) AS forecasts,
  CAST((SELECT coalesce(json_agg(json_build_array(u.key, u.steps, u.after_seq, u.reported_at)
                            ORDER BY u.id), '[]')
     FROM outages AS u WHERE u.study_id = (SELECT id FROM f)) AS TEXT) AS outages
"""


@cache
def _history_in_one_statement(by_segment: bool) -> Any:
    """PostgreSQL: a study's whole history in one statement instead of six (each a round
    trip, and a statement's own cost in the server: a decision's read was 6 of its 15
    statements). One statement is one snapshot too. Each part keeps the order of its
    own query. The study is ``:study_id``, or (``by_segment``) the study of segment
    ``:segment_id``; ``:known`` and ``:from_seq`` say which parts (:data:`_HISTORY_SQL`)."""
    study = "(SELECT study_id FROM segments WHERE id = :segment_id)" if by_segment else ":study_id"
    return text(_HISTORY_SQL.format(study=study))


def _as_read(forecast: ForecastRecord) -> ForecastRecord:
    """A forecast just written as a read gives it back: its params through their JSON
    column."""
    return replace(forecast, params=stored_params(forecast.params))


def _written_on(
    kept: KeptHistory,
    version: int,
    closed: SegmentRecord,
    points: Sequence[ObservationRecord],
    forecasts: Mapping[int, ForecastRecord],
    stages: Mapping[int, StageRecord],
    issued: SegmentRecord | None,
) -> KeptHistory | None:
    """``kept`` with a stored decision's writes (:meth:`LiveQueries.close_and_issue`):
    the segment closed with its new points and forecast, the stages it set, the segment
    it issued; as ``version``. None where the copy does not hold the closed segment
    open."""
    segments = list(kept.segments)
    at = next((i for i, s in enumerate(segments) if s.id == closed.id), None)
    if at is None or segments[at].status is not SegmentStatus.open:
        return None
    segments[at] = closed
    if issued is not None:
        segments.append(issued)
    observations = dict(kept.observations)
    if points:
        merged = [*observations.get(closed.id, ()), *points]
        merged.sort(key=lambda o: (o.step, o.metric.value))
        observations[closed.id] = tuple(merged)
    by_id = {stage.id: stage for stage in kept.stages}
    by_id.update(stages)
    return KeptHistory(
        identity=kept.identity,
        version=version,
        stages=tuple(sorted(by_id.values(), key=lambda stage: stage.index)),
        segments=tuple(segments),
        observations=observations,
        forecasts={**kept.forecasts, **forecasts},
        outages=kept.outages,
    )


#: What :meth:`LiveQueries._read_at_once` answers when the study read is not the kept one.
_OTHER_STUDY = object()


def _on_top(
    kept: KeptHistory | None,
    from_seq: int,
    study: StudyRecord,
    *,
    stages: list[StageRecord],
    segments: list[SegmentRecord],
    observations: dict[int, list[ObservationRecord]],
    forecasts: dict[int, ForecastRecord],
    outages: list[OutageRecord],
) -> StudyHistory:
    """The history of ``study`` from parts read now (the segments from ``from_seq`` on,
    their points and forecasts; all stages and outages) on top of the kept copy's
    segments before ``from_seq``, which were closed when it was read and so have not
    changed since (a closed segment takes no point, forecast, status or heartbeat)."""
    if kept is None or from_seq == 0:
        return StudyHistory(study, stages, segments, observations, forecasts, outages)
    prefix = [segment for segment in kept.segments if segment.seq < from_seq]
    points: dict[int, list[ObservationRecord]] = {}
    predicted: dict[int, ForecastRecord] = {}
    for segment in prefix:
        if segment.id in kept.observations:
            points[segment.id] = list(kept.observations[segment.id])
        if segment.id in kept.forecasts:
            predicted[segment.id] = kept.forecasts[segment.id]
    points.update(observations)
    predicted.update(forecasts)
    return StudyHistory(study, stages, prefix + segments, points, predicted, outages)


def _json_int(literal: str) -> int | float:
    # PostgreSQL writes a float column's -0.0 as -0, which JSON would read as the integer
    # 0, its sign lost; no integer column is ever written so.
    return -0.0 if literal == "-0" else int(literal)


def _loads(document: str) -> Any:
    """JSON as PostgreSQL's aggregates write it, every float bit for bit."""
    return json.loads(document, parse_int=_json_int)


def _check_stage(
    stage: StageRecord | None, stage_id: int, study_id: int, decision: SegmentDecision
) -> None:
    """Refuse to issue ``decision`` in ``stage`` (read as ``stage_id``) unless it is the
    study's stage of the decision's index."""
    if stage is None or stage.study_id != study_id:
        raise NotFoundError(f"stage {stage_id} of study {study_id} does not exist")
    if stage.index != decision.stage:
        raise InputError(
            f"stage {stage_id} is stage {stage.index} of study {study_id}, not the "
            f"decision's stage {decision.stage}"
        )


def _observation_rows(
    observations: Iterable[tuple[int, Metric | str, float]],
) -> Iterator[tuple[int, str, float | None, str | None]]:
    """Observations as their rows store them: ``(step, metric, value, special)``."""
    return (
        (int(step), metric_value(metric), *encode_float(value))
        for step, metric, value in observations
    )


def _observation_arrays(
    segment_id: int, rows: Sequence[tuple[int, str, float | None, str | None]]
) -> dict[str, list[Any]]:
    """A segment's rows as the arrays :meth:`_Hot.insert_observation_arrays` unnests."""
    steps, metrics, values, specials = (list(c) for c in zip(*rows, strict=True))
    return {
        "segment_id": [segment_id] * len(steps),
        "step": steps,
        "metric": metrics,
        "value": values,
        "special": specials,
    }


def _forecast_values(segment_id: int, forecast: NewForecast, now: datetime) -> dict[str, Any]:
    """A forecast's row: non-finite prediction, std and objective stored as None."""
    return {
        "segment_id": segment_id,
        "model": forecast.model,
        "prediction": finite_or_none(forecast.prediction),
        "std": finite_or_none(forecast.std),
        "status": forecast.status,
        "params": encode_params(forecast.params),
        "n_points": forecast.n_points,
        "objective": finite_or_none(forecast.objective),
        "created_at": now,
    }


class LiveQueries:
    """The live path's reads and writes of one transaction (see the module)."""

    def __init__(
        self,
        session: Session,
        clock: Callable[[], datetime],
        histories: HistoryCache | None = None,
    ) -> None:
        self._s = session
        self._clock = clock
        #: The process's kept histories (:mod:`.history_cache`); None: none kept.
        self._histories = histories
        #: Studies whose ``updated_at`` (and version) this transaction has set already.
        self._touched: set[int] = set()
        #: Study id -> the version this transaction's touch set.
        self._versions: dict[int, int] = {}
        #: What to do to the kept histories once the transaction has committed.
        self._on_commit: list[Callable[[HistoryCache], None]] = []
        #: While :meth:`close_and_issue` runs: the stages and forecasts it wrote.
        self._closing: tuple[dict[int, StageRecord], dict[int, ForecastRecord]] | None = None
        #: Segment id -> (its study, its stage's index), for the segments this
        #: transaction read or wrote.
        self._segment_of: dict[int, tuple[int, int]] = {}
        #: Stage id -> the stage, for the stages this transaction read or created.
        self._stages: dict[int, StageRecord] = {}
        self._dialect_name: str | None = None
        self._connection: Connection | None = None

    def _run(self, statement: Any, params: Any = None) -> Any:
        """Execute a Core statement on the transaction's connection: what
        ``Session.execute`` does for it, without the ORM's execution layer (a third of a
        statement's cost on the decision path). Pending ORM changes are flushed first,
        as the session's autoflush would."""
        session = self._s
        if self._on_commit and self._closing is None and not getattr(statement, "is_select", 0):
            # A write after a stored decision: its kept history is not brought forward.
            self._on_commit.clear()
        if session.new or session.dirty or session.deleted:
            session.flush()
        if self._connection is None:
            self._connection = session.connection()
        return self._connection.execute(statement, params)

    def _touch(self, statement: Any, study_id: int) -> bool:
        """Run a touch of the study (an UPDATE .. RETURNING its version): whether it
        matched the study; the version it set is remembered. On PostgreSQL, when it is
        the transaction's first statement, its BEGIN goes in the same round trip
        (:func:`.pipeline.begin_pipeline`)."""
        params = {"study_id": study_id, "now": self._now()}
        rows: list[Any] | None = None
        if self._dialect() == "postgresql" and not (
            self._s.new or self._s.dirty or self._s.deleted
        ):
            if self._connection is None:
                self._connection = self._s.connection()
            answers = begin_pipeline(self._connection, [(statement, params)])
            if answers is not None:
                rows = answers[0].rows
        if rows is None:
            rows = list(self._run(statement, params))
        if not rows:
            return False
        self._touched.add(study_id)
        self._versions[study_id] = int(rows[0].version)
        return True

    def committed(self) -> None:
        """The transaction committed: bring the kept histories forward by its writes."""
        if self._histories is not None:
            for change in self._on_commit:
                change(self._histories)

    def _run_scalar(self, statement: Any, params: Any = None) -> Any:
        return self._run(statement, params).scalar()

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

    # ------------------------------------------------------------------ studies

    def _one_study(self, query: Select[StudyRow, str]) -> StudyRecord | None:
        found = self._s.execute(query).one_or_none()
        return None if found is None else study_record(*found)

    def create_study(
        self,
        project_id: int,
        name: str,
        config: Mapping[str, Any],
        *,
        priors: Mapping[str, Any] | None = None,
    ) -> tuple[StudyRecord, bool]:
        """Create the study, or get the existing one of that project and name.

        Returns ``(study, created)``. An existing study is returned as stored, whatever
        its config: comparing configs is the caller's decision. Race-safe: of several
        concurrent creators exactly one inserts, the others read its row.
        """
        # Round-trip through JSON now so the record holds what a later read returns.
        stored_config = json.loads(json.dumps(dict(config), allow_nan=False))
        query = study_query().where(StudyRow.project_id == project_id, StudyRow.name == name)
        existing = self._one_study(query)
        if existing is not None:
            return existing, False
        now = self._now()
        row = StudyRow(
            project_id=project_id,
            name=name,
            config=stored_config,
            family=stored_config.get("family"),
            priors=None if priors is None else json.loads(json.dumps(dict(priors))),
            status=StudyStatus.running.value,
            status_reason=None,
            created_at=now,
            updated_at=now,
        )
        error = self._insert(row)
        if error is None:
            study = self._one_study(study_query().where(StudyRow.id == row.id))
            assert study is not None
            return study, True
        existing = self._one_study(query)
        if existing is not None:
            return existing, False
        if self._s.get(ProjectRow, project_id) is None:
            raise NotFoundError(f"project {project_id} does not exist: create it first")
        raise error

    def get_study(self, study_id: int) -> StudyRecord | None:
        found = self._run(_Hot.study(), {"study_id": study_id}).first()
        return None if found is None else study_record(found, found.project_name)

    def find_study(self, project: str, name: str) -> StudyRecord | None:
        """The study ``name`` of the project named ``project``, if any."""
        return self._one_study(
            study_query().where(ProjectRow.name == project, StudyRow.name == name)
        )

    def prior_study_ids(
        self, project: str, family: str | None, named: Sequence[int], limit: int
    ) -> list[int]:
        """The completed studies of ``project`` a new study takes as priors, newest
        first: those of ``named`` that are, then the family's most recently updated
        ones, at most ``limit`` in all (two statements at most)."""
        base = (
            select(StudyRow.id)
            .join(ProjectRow, StudyRow.project_id == ProjectRow.id)
            .where(ProjectRow.name == project, StudyRow.status == StudyStatus.completed.value)
        )
        ids: list[int] = []
        if named:
            ids = list(self._s.scalars(base.where(StudyRow.id.in_(list(named)))))
        if family is not None and len(ids) < limit:
            found = self._s.scalars(
                base.where(StudyRow.family == family, StudyRow.id.not_in(ids or [-1]))
                .order_by(StudyRow.updated_at.desc(), StudyRow.id.desc())
                .limit(limit - len(ids))
            )
            ids.extend(found)
        return sorted(ids, reverse=True)[:limit]

    def lock_study(self, study_id: int) -> StudyRecord | None:
        """Read the study and hold it until the transaction ends.

        PostgreSQL: ``SELECT ... FOR UPDATE`` of the study row, so concurrent requests on
        one study (on any replica) run one after the other. SQLite: a plain read; the
        write transaction already holds the database's write lock (BEGIN IMMEDIATE).
        """
        found = self._run(_Hot.locked_study(), {"study_id": study_id}).first()
        return None if found is None else study_record(found, found.project_name)

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
        self._touch(_Hot.touch(), study_id)
        self._touched.add(study_id)

    def touch_running_study(self, study_id: int) -> bool:
        """Touch the study (:meth:`touch_study`) if it is running: True if it was.

        One statement that locks the study row on PostgreSQL and tells its status: what
        :meth:`lock_study` and a touch do in two, for a writer that needs no more of the
        study than that it runs.
        """
        return self._touch(_Hot.touch_running(), study_id)

    # ------------------------------------------------------------------ stages

    def get_or_create_stage(
        self, study_id: int, index: int, tau: int, tau_explore: int, start_step: int
    ) -> StageRecord:
        """Stage ``index`` of the study; created (status ``searching``) if missing.

        An existing stage is returned as stored: the tuner is deterministic, so it asks
        for the same sizes every time.
        """
        query = _Hot.stage()
        params = {"study_id": study_id, "index": index}
        found = self._run(query, params).first()
        if found is not None:
            return self._keep_stage(stage_record(found))
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
            found = self._run(query, params).first()
            if found is None:
                raise error
            return self._keep_stage(stage_record(found))
        return self._wrote_stage(stage_record(row))

    def _keep_stage(self, stage: StageRecord) -> StageRecord:
        self._stages[stage.id] = stage
        return stage

    def _wrote_stage(self, stage: StageRecord) -> StageRecord:
        if self._closing is not None:
            self._closing[0][stage.id] = stage
        return self._keep_stage(stage)

    def know_stage(self, stage: StageRecord) -> None:
        """Tell this transaction of a stage an earlier one read: what it uses of it (its
        id, study and index) never changes, so :meth:`insert_segment` need not read it
        again."""
        self._stages.setdefault(stage.id, stage)

    def _stage_by_id(self, stage_id: int) -> StageRecord | None:
        """The stage (as this transaction read or created it: a stage's study and index
        never change), or None if there is none."""
        stage = self._stages.get(stage_id)
        if stage is None:
            found = self._run(_Hot.stage_by_id(), {"stage_id": stage_id}).first()
            stage = None if found is None else self._keep_stage(stage_record(found))
        return stage

    def get_stage(self, study_id: int, index: int) -> StageRecord | None:
        row = self._s.scalar(
            select(StageRow).where(StageRow.study_id == study_id, StageRow.index == index)
        )
        return None if row is None else stage_record(row)

    def stages_of_study(self, study_id: int) -> list[StageRecord]:
        rows = self._run(_Hot.stages(), {"study_id": study_id})
        return [stage_record(row) for row in rows]

    def set_stage(
        self,
        stage_id: int,
        *,
        status: StageStatus | None = None,
        chosen_lr: float | None | Keep = KEEP,
    ) -> StageRecord:
        """Set the stage's status and/or chosen LR; a field not given keeps its value
        (``chosen_lr=None`` clears the LR)."""
        if status is not None and status not in STAGE_STATUSES:
            raise InputError(f"unknown stage status {status!r}: use one of {STAGE_STATUSES}")
        keep_lr = isinstance(chosen_lr, Keep)
        # Only the values set: SQLAlchemy would SET a column named by any other.
        values: dict[str, Any] = {"stage_id": stage_id}
        if status is not None:
            values["status"] = status
        if not keep_lr:
            values["chosen_lr"] = chosen_lr
        # The study is locked first (the lock order), so its id is needed before the
        # UPDATE: known where this transaction read or created the stage; else a study
        # it has locked is tried (the UPDATE then changes the stage only if it is that
        # study's), and only then is the stage read.
        known = self._stages.get(stage_id)
        if known is None:
            for study_id in sorted(self._touched):
                row = self._run(
                    _Hot.set_stage(status is not None, keep_lr, True),
                    {**values, "locked_study": study_id},
                ).first()
                if row is not None:
                    return self._stage_set(row)
            known = self._stage_by_id(stage_id)
            if known is None:
                raise NotFoundError(f"stage {stage_id} does not exist")
        self.touch_study(known.study_id)
        row = self._run(_Hot.set_stage(status is not None, keep_lr, False), values).first()
        if row is None:
            raise NotFoundError(f"stage {stage_id} does not exist")
        return self._stage_set(row)

    def _stage_set(self, row: Any) -> StageRecord:
        # Stage rows are not kept by the session (readers keep records; the ORM row of a
        # stage created here is dropped once its record is made), so no loaded copy can
        # go stale under the Core UPDATE.
        return self._wrote_stage(stage_record(row))

    # ------------------------------------------------------------------ segments

    def _one_segment(
        self, query: Any, params: Mapping[str, Any] | None = None
    ) -> SegmentRecord | None:
        found = self._run(query, params).first()
        return None if found is None else self._segment_row(found)

    def _segment_row(self, row: Any) -> SegmentRecord:
        """The record of a row of ``_Hot.segment_columns`` (or of a segment's columns,
        whose stage this transaction knows), remembered as this transaction's."""
        stage = getattr(row, "stage_index", None)
        if stage is None:
            stage = self._segment_of[row.id][1]
        self._segment_of[row.id] = (row.study_id, stage)
        return segment_record(row, stage)

    def insert_segment(
        self, study_id: int, stage_id: int, seq: int, decision: SegmentDecision
    ) -> SegmentRecord:
        """Issue segment ``seq`` of the study (status ``open``): ``decision`` in stage
        ``stage_id``, which must be the study's stage of index ``decision.stage``.

        Raises DuplicateSegmentError when segment ``seq`` of the study exists already:
        another request or replica computed and stored it first. The transaction stays
        usable (the INSERT .. ON CONFLICT DO NOTHING wrote nothing); re-read the study
        and answer from it.
        """
        stage = self._stage_by_id(stage_id)
        _check_stage(stage, stage_id, study_id, decision)
        assert stage is not None
        self.touch_study(study_id)
        values = self._segment_values(study_id, stage_id, seq, decision)
        segment_id = self._run_scalar(_Hot.insert_segment(self._dialect()), values)
        if segment_id is None:
            raise DuplicateSegmentError(
                f"segment {seq} of study {study_id} was issued concurrently by another "
                "request: read the study again and use the stored segment"
            )
        self._segment_of[segment_id] = (study_id, stage.index)
        return segment_record(SimpleNamespace(id=segment_id, **values), stage.index)

    def _segment_values(
        self, study_id: int, stage_id: int, seq: int, decision: SegmentDecision
    ) -> dict[str, Any]:
        """The row of a segment issued now: ``decision`` as segment ``seq``, open."""
        values = decision_columns(decision)
        now = self._now()
        values.update(
            study_id=study_id,
            stage_id=stage_id,
            seq=seq,
            status=SegmentStatus.open.value,
            steps_done=None,
            fail_reason=None,
            created_at=now,
            completed_at=None,
            heartbeat_at=now,
        )
        return values

    def heartbeat_segment(self, segment_id: int) -> SegmentRecord | None:
        """Set an open segment's ``heartbeat_at`` to now (its job is alive).

        Returns the segment, or None when it is not open any more (a racing request
        closed it). The segment's row changes, so the study's version is raised too
        (where this transaction has not touched the study already): the study's row
        first, then the segment's, the order every writer locks them in. On PostgreSQL
        the two go out with the transaction's BEGIN in one round trip.
        """
        params = {"segment_id": segment_id, "now": self._now()}
        known = self._segment_of.get(segment_id)
        if known is None or known[0] not in self._touched:
            statements = [(_Hot.bump_of_open_segment(), params), (_Hot.heartbeat(), params)]
            answers = None
            if self._dialect() == "postgresql" and not (
                self._s.new or self._s.dirty or self._s.deleted
            ):
                if self._connection is None:
                    self._connection = self._s.connection()
                answers = begin_pipeline(self._connection, statements)
            bumped = answers[0].rows if answers is not None else list(self._run(*statements[0]))
            for row in bumped:
                self._versions[row.id] = int(row.version)
            if answers is None:
                self._run(*statements[1])
        else:
            self._run(_Hot.heartbeat(), params)
        segment = self.get_segment(segment_id)
        return segment if segment is not None and segment.status is SegmentStatus.open else None

    def get_segment(self, segment_id: int) -> SegmentRecord | None:
        return self._one_segment(_Hot.segment(), {"segment_id": segment_id})

    def segment_by_seq(self, study_id: int, seq: int) -> SegmentRecord | None:
        """Segment ``seq`` of the study (e.g. the one a racing request issued first)."""
        table = SegmentRow.__table__
        return self._one_segment(
            _Hot.segment_columns().where(table.c.study_id == study_id, table.c.seq == seq)
        )

    def open_segment(self, study_id: int) -> SegmentRecord | None:
        """The study's open segment (the latest, should there be several), or None."""
        table = SegmentRow.__table__
        return self._one_segment(
            _Hot.segment_columns()
            .where(table.c.study_id == study_id, table.c.status == SegmentStatus.open.value)
            .order_by(table.c.seq.desc())
        )

    def segments_of_study(self, study_id: int) -> list[SegmentRecord]:
        """All segments of the study, in issue order (by ``seq``)."""
        rows = self._run(_Hot.segments(), {"study_id": study_id})
        return [self._segment_row(row) for row in rows]

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
        if segment_id not in self._segment_of and self.get_segment(segment_id) is None:
            raise NotFoundError(f"segment {segment_id} does not exist")
        # The study first (the lock order), then one UPDATE that returns the row.
        self.touch_study(self._segment_of[segment_id][0])
        new_status = SegmentStatus(status)
        values = {
            "segment_id": segment_id,
            "status": new_status.value,
            "steps_done": steps_done,
            "fail_reason": fail_reason,
            "completed_at": None if new_status is SegmentStatus.open else self._now(),
        }
        row = self._run(_Hot.close_segment(), values).first()
        if row is None:
            raise NotFoundError(f"segment {segment_id} does not exist")
        return self._segment_row(row)

    def close_open_segment(
        self,
        segment: SegmentRecord,
        status: SegmentStatus,
        steps_done: int | None,
        points: int,
    ) -> SegmentRecord | None:
        """Close ``segment`` (``status``, ``steps_done``) if it is still open and holds
        exactly ``points`` observations, the ones its caller read: one UPDATE. None when
        it does not: it was closed meanwhile, or points landed since the caller's read.
        Stored points never change, only grow, so an equal count means the same points.
        Call it with the study locked (:meth:`touch_running_study`)."""
        self.touch_study(segment.study_id)
        values = {
            "segment_id": segment.id,
            "status": status.value,
            "steps_done": steps_done,
            "points": points,
            "completed_at": self._now(),
        }
        row = self._run(_Hot.close_open_segment(), values).first()
        if row is None:
            return None
        self._segment_of[segment.id] = (segment.study_id, segment.stage)
        return segment_record(row, segment.stage)

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
                        self._insert_observation_rows(
                            segment_id,
                            (
                                (step, metric, value, special)
                                for (step, metric), (value, special) in new.items()
                            ),
                        )
            except IntegrityError:
                if attempt == 1:
                    raise
                continue
            return len(new), repeats + len(batch) - len(new)
        raise AssertionError("unreachable")

    def _insert_observation_rows(
        self, segment_id: int, rows: Iterable[tuple[int, str, float | None, str | None]]
    ) -> None:
        """INSERT a segment's ``(step, metric, value, special)`` rows in one statement:
        the rows as arrays on PostgreSQL, an executemany on SQLite (in process, where a
        row costs no round trip)."""
        rows = list(rows)
        if not rows:
            return
        if self._dialect() == "postgresql":
            self._run(_Hot.insert_observation_arrays(), _observation_arrays(segment_id, rows))
            return
        self._run(
            _Hot.insert_observations(),
            [
                {
                    "segment_id": segment_id,
                    "step": step,
                    "metric": metric,
                    "value": value,
                    "special": special,
                }
                for step, metric, value, special in rows
            ],
        )

    def insert_observations(
        self, segment_id: int, study_id: int, observations: Sequence[ObservationRecord]
    ) -> None:
        """Insert observations the caller knows are new: it read the segment's stored ones
        with the study locked (or SQLite's write lock held), so no writer can add any
        before this INSERT. One statement, no SELECT and no SAVEPOINT
        (:meth:`add_observations` checks for itself)."""
        if not observations:
            return
        self.touch_study(study_id)
        self._insert_observation_rows(segment_id, _observation_rows(observations))

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
        study_id = self._run_scalar(_Hot.study_of_segment(), {"segment_id": segment_id})
        if study_id is None:
            raise NotFoundError(f"segment {segment_id} does not exist")
        return int(study_id)

    @staticmethod
    def _batch(
        observations: Iterable[tuple[int, Metric | str, float]],
    ) -> tuple[dict[tuple[int, str], Encoded], int]:
        """The batch keyed by (step, metric), and how many reports repeat one exactly."""
        batch: dict[tuple[int, str], Encoded] = {}
        repeats = 0
        for step, metric, value in observations:
            key = (int(step), metric_value(metric))
            encoded = encode_float(value)
            previous = batch.get(key)
            if previous is None:
                batch[key] = encoded
            elif previous == encoded:
                repeats += 1
            else:
                raise ObservationConflictError(
                    f"the batch reports {key[1]} at step {key[0]} twice, as "
                    f"{decode_float(*previous)!r} and {decode_float(*encoded)!r}: send one value "
                    "per step"
                )
        return batch, repeats

    def _new_observations(
        self, segment_id: int, batch: dict[tuple[int, str], Encoded]
    ) -> dict[tuple[int, str], Encoded]:
        """The part of ``batch`` not stored yet; ObservationConflictError if a stored value
        differs. One SELECT over the batch's step range (no parameter-count limits)."""
        steps = [step for step, _ in batch]
        stored: dict[tuple[int, str], Encoded] = {
            (step, metric): (value, special)
            for step, metric, value, special in self._run(
                _Hot.observations_between(),
                {"segment_id": segment_id, "low": min(steps), "high": max(steps)},
            )
        }
        new: dict[tuple[int, str], Encoded] = {}
        for key, encoded in batch.items():
            existing = stored.get(key)
            if existing is None:
                new[key] = encoded
            elif existing != encoded:
                step, metric = key
                raise ObservationConflictError(
                    f"segment {segment_id} already has {metric} = {decode_float(*existing)!r} "
                    f"at step {step}, and this batch says {decode_float(*encoded)!r}: a step's "
                    "value cannot change (a retry must resend the same value)"
                )
        return new

    def observations_of_segment(self, segment_id: int) -> list[ObservationRecord]:
        """The segment's observations sorted by (step, metric)."""
        rows = self._run(_Hot.observations_of_segment(), {"segment_id": segment_id})
        return [
            ObservationRecord(step, Metric(metric), decode_float(value, special))
            for step, metric, value, special in rows
        ]

    def observations_of_study(self, study_id: int) -> dict[int, list[ObservationRecord]]:
        """segment id -> observations sorted by (step, metric), for the whole study in one
        query; segments without observations are absent."""
        rows = self._run(_Hot.observations_of_study(), {"study_id": study_id})
        out: dict[int, list[ObservationRecord]] = {}
        for segment_id, step, metric, value, special in rows:
            out.setdefault(segment_id, []).append(
                ObservationRecord(step, Metric(metric), decode_float(value, special))
            )
        return out

    # ------------------------------------------------------------------ forecasts

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
        forecast = NewForecast(model, prediction, std, status, dict(params), n_points, objective)
        values = _forecast_values(segment_id, forecast, self._now())
        # Forecast rows are never held by the session (no reader keeps them), so no
        # loaded copy can go stale under this Core statement.
        forecast_id = self._run_scalar(_Hot.upsert_forecast(self._dialect()), values)
        record = forecast_record(SimpleNamespace(id=forecast_id, **values))
        if self._closing is not None:
            self._closing[1][segment_id] = _as_read(record)
        return record

    def get_forecast(self, segment_id: int) -> ForecastRecord | None:
        row = self._s.scalar(select(ForecastRow).where(ForecastRow.segment_id == segment_id))
        return None if row is None else forecast_record(row)

    def forecasts_of_study(self, study_id: int) -> dict[int, ForecastRecord]:
        """segment id -> forecast, for every segment of the study that has one."""
        rows = self._run(_Hot.forecasts(), {"study_id": study_id})
        return {row.segment_id: forecast_record(row) for row in rows}

    # ------------------------------------------------------------------ a decision

    def close_and_issue(self, closing: Closing, following: Issue | StudyEnding) -> ClosedAndIssued:
        """Store a completion and what follows it (:meth:`_close_and_issue`). Where it
        all held, the transaction's only write, once committed, brings the kept history
        of the study at the version before forward to the version its touch set
        (:mod:`.history_cache`)."""
        study_id = closing.segment.study_id
        written: tuple[dict[int, StageRecord], dict[int, ForecastRecord]] = ({}, {})
        alone = not self._touched and not self._versions and not self._on_commit
        self._closing = written
        try:
            answer = self._close_and_issue(closing, following)
        finally:
            self._closing = None
        version = self._versions.get(study_id)
        ended = isinstance(following, StudyEnding)
        if (
            self._histories is None
            or not alone
            or version is None
            or self._touched != {study_id}
            or answer.closed is None
            or (answer.issued is None and not ended)
        ):
            return answer
        closed, issued = answer.closed, answer.issued
        stages, forecasts = written
        points = [
            ObservationRecord(step, Metric(metric), decode_float(value, special))
            for step, metric, value, special in _observation_rows(closing.observations)
        ]

        def change(kept: KeptHistory) -> KeptHistory | None:
            return _written_on(kept, version, closed, points, forecasts, stages, issued)

        self._on_commit.append(lambda cache: cache.advance(study_id, version - 1, change))
        return answer

    def _close_and_issue(self, closing: Closing, following: Issue | StudyEnding) -> ClosedAndIssued:
        """Store a completion and what follows it (the next segment, or the study's end)
        as the transaction's first writes; what each of its checks found.

        In order: the study touched if it runs (:meth:`touch_running_study`; on
        PostgreSQL this locks its row, the first row the transaction locks), the segment
        closed if it is still open with the points read (:meth:`close_open_segment`),
        the completion's points stored (:meth:`insert_observations`), its forecast
        and/or its stage's completion, then ``following``: the segment issued
        (:meth:`insert_segment`, its stage set training where ``training_lr`` says so)
        or the study's status set. The first check that fails (the study not running,
        the segment not open with those points, the segment's ``seq`` issued already)
        ends it; what was written is then the caller's to roll back.

        On PostgreSQL, a decision in a stage the caller read goes out in one pipeline
        with the transaction's BEGIN (:meth:`_close_and_issue_at_once`): one round trip
        for all of it, the checks made on the answers. A decision that opens a stage runs
        statement by statement, as everywhere else: its segment's INSERT needs the id
        of a stage that only the stage's own INSERT tells. So does the study's end.
        """
        if isinstance(following, Issue):
            answer = self._close_and_issue_at_once(closing, following)
            if answer is not None:
                return answer
        segment = closing.segment
        if not self.touch_running_study(segment.study_id):
            return ClosedAndIssued(running=False)
        closed = self.close_open_segment(
            segment, closing.status, closing.steps_done, closing.points
        )
        if closed is None:
            return ClosedAndIssued(running=True)
        self.insert_observations(segment.id, segment.study_id, closing.observations)
        forecast = closing.forecast
        if forecast is not None:
            self.upsert_forecast(
                segment.id,
                model=forecast.model,
                prediction=forecast.prediction,
                std=forecast.std,
                status=forecast.status,
                params=forecast.params,
                n_points=forecast.n_points,
                objective=forecast.objective,
                study_id=segment.study_id,
            )
        if closing.completes_stage:
            self.set_stage(segment.stage_id, status="completed")
        if isinstance(following, StudyEnding):
            self.set_study_status(segment.study_id, following.status, following.reason)
            return ClosedAndIssued(running=True, closed=closed)
        if isinstance(following.stage, NewStage):
            new = following.stage
            stage = self.get_or_create_stage(
                segment.study_id, new.index, new.tau, new.tau_explore, new.start_step
            )
        else:
            stage = following.stage
            self.know_stage(stage)
        try:
            issued = self.insert_segment(
                segment.study_id, stage.id, following.seq, following.decision
            )
        except DuplicateSegmentError:
            return ClosedAndIssued(running=True, closed=closed)
        if following.training_lr is not None:
            self.set_stage(stage.id, status="training", chosen_lr=following.training_lr)
        return ClosedAndIssued(running=True, closed=closed, issued=issued)

    def _close_and_issue_at_once(self, closing: Closing, issue: Issue) -> ClosedAndIssued | None:
        """:meth:`close_and_issue` in one round trip (PostgreSQL, psycopg): BEGIN and every
        statement in one pipeline (:func:`.pipeline.begin_pipeline`), then the checks on
        their answers. None, and nothing sent, where it cannot be: another backend, a
        stage to create, a transaction that has begun, a driver that cannot.

        The statements are those of the plain path, in its order, and the server runs
        them in that order, each with its own snapshot: the touch waits for the study's
        lock, and the close, taken after it, counts any point stored during the wait.
        What differs is that the statements after a failed check are sent too. Behind a
        touch that locked the study, they take row locks only under that lock, as the
        plain path's do, and are rolled back with the transaction. Behind a touch that
        found the study not running, which locked nothing, a statement that locked a
        segment or a stage, or waited on the study's row (an INSERT's foreign key
        check), would take locks out of the one order (the study's row first) while
        another transaction that holds the study's row waits for that segment: a
        deadlock. So every statement after the touch carries a guard in SQL
        (:meth:`_Hot.guard`: the study runs and carries this transaction's touch), which
        is false then: it matches no row and inserts none, and takes no lock. A key that
        refuses a write (points stored meanwhile at the steps this one brings) aborts
        the rest; that too is a store that moved.
        """
        stage = issue.stage
        if (
            self._dialect() != "postgresql"
            or not isinstance(stage, StageRecord)
            or self._touched
            or self._s.new
            or self._s.dirty
            or self._s.deleted
        ):
            return None
        segment = closing.segment
        study_id = segment.study_id
        _check_stage(stage, stage.id, study_id, issue.decision)
        now = self._now()
        guard = {"guard_study": study_id, "guard_now": now}
        close = {
            "segment_id": segment.id,
            "status": closing.status.value,
            "steps_done": closing.steps_done,
            "points": closing.points,
            "completed_at": self._now(),
        }
        statements: list[tuple[Any, dict[str, Any]]] = [
            (_Hot.touch_running(), {"study_id": study_id, "now": now}),
            (_Hot.guarded_close(), {**close, **guard}),
        ]
        if closing.observations:
            rows = list(_observation_rows(closing.observations))
            arrays = _observation_arrays(segment.id, rows)
            statements.append((_Hot.guarded_observation_arrays(), {**arrays, **guard}))
        forecast_at = None  # where its answer will be
        if closing.forecast is not None:
            forecast = _forecast_values(segment.id, closing.forecast, self._now())
            forecast_at = len(statements)
            statements.append(
                (_Hot.guarded_upsert_forecast(tuple(forecast)), {**forecast, **guard})
            )
        stage_completed = stage_trained = None  # where their answers will be
        if closing.completes_stage:
            stage_completed = len(statements)
            completion = {"stage_id": segment.stage_id, "status": "completed"}
            statements.append((_Hot.guarded_set_stage(True), {**completion, **guard}))
        values = self._segment_values(study_id, stage.id, issue.seq, issue.decision)
        issued = len(statements)
        statements.append((_Hot.guarded_insert_segment(tuple(values)), {**values, **guard}))
        if issue.training_lr is not None:
            stage_trained = len(statements)
            training = {"stage_id": stage.id, "status": "training", "chosen_lr": issue.training_lr}
            statements.append((_Hot.guarded_set_stage(False), {**training, **guard}))
        if self._connection is None:
            self._connection = self._s.connection()
        try:
            answers = begin_pipeline(self._connection, statements)
        except IntegrityError:
            # A key refused a write: points stored meanwhile at this completion's steps,
            # so the segment no longer holds the points read. Only a locked, running
            # study's statements write anything (the guard): the study ran.
            return ClosedAndIssued(running=True)
        if answers is None:
            return None
        # The checks, in the plain path's order.
        if not answers[0].rows:
            return ClosedAndIssued(running=False)
        self._touched.add(study_id)
        self._versions[study_id] = int(answers[0].rows[0].version)
        if not answers[1].rows:
            return ClosedAndIssued(running=True)
        self._segment_of[segment.id] = (study_id, segment.stage)
        closed = segment_record(answers[1].rows[0], segment.stage)
        self.know_stage(stage)
        if stage_completed is not None:
            self._stage_answer(answers[stage_completed].rows, segment.stage_id)
        if forecast_at is not None and self._closing is not None and closing.forecast is not None:
            written = forecast_record(
                SimpleNamespace(id=answers[forecast_at].rows[0].id, **forecast)
            )
            self._closing[1][segment.id] = _as_read(written)
        inserted = answers[issued].rows
        if not inserted:
            return ClosedAndIssued(running=True, closed=closed)
        segment_id = inserted[0].id
        self._segment_of[segment_id] = (study_id, stage.index)
        if stage_trained is not None:
            self._stage_answer(answers[stage_trained].rows, stage.id)
        return ClosedAndIssued(
            running=True,
            closed=closed,
            issued=segment_record(SimpleNamespace(id=segment_id, **values), stage.index),
        )

    def _stage_answer(self, rows: list[Any], stage_id: int) -> None:
        """A pipelined stage UPDATE's answer, as :meth:`set_stage` takes its own."""
        if not rows:
            raise NotFoundError(f"stage {stage_id} does not exist")
        self._stage_set(rows[0])

    # ------------------------------------------------------------------ history

    def history(self, study_id: int) -> StudyHistory | None:
        """The study with its stages, segments, observations, forecasts and outages, or
        None if there is no such study. One statement on PostgreSQL; on SQLite the
        study's row, then (unless the process keeps a copy of its history at the
        version the row holds: :mod:`.history_cache`) five reads of the parts that may
        have changed."""
        if self._dialect() == "postgresql":
            return self._history_at_once(False, {"study_id": study_id})
        row = self._run(_Hot.study(), {"study_id": study_id}).first()
        return None if row is None else self._history_after(row)

    def history_in_parts(self, study_id: int) -> StudyHistory | None:
        """:meth:`history` as six reads, one a part, on every backend, no copy used
        (SQLite's way without one; on PostgreSQL, what the one statement must agree
        with)."""
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

    def history_of_segment(self, segment_id: int) -> StudyHistory | None:
        """The history (:meth:`history`) of the study segment ``segment_id`` belongs to,
        or None if there is no such segment: one statement on PostgreSQL; on SQLite the
        study's row, found from the segment, and the parts that may have changed."""
        if self._dialect() == "postgresql":
            return self._history_at_once(True, {"segment_id": segment_id})
        row = self._run(_Hot.study_of_segment_row(), {"segment_id": segment_id}).first()
        return None if row is None else self._history_after(row)

    def _kept_copy(self, study: StudyRecord) -> KeptHistory | None:
        if self._histories is None:
            return None
        return self._histories.get(study.id, study_identity(study))

    def _history_after(self, row: Any) -> StudyHistory:
        """SQLite: the history of the study of ``row`` (its row, read first in this
        transaction's snapshot): the kept copy if it is of the row's version, else the
        parts that may have changed read on top of it."""
        study = study_record(row, row.project_name)
        version = int(row.version)
        kept = self._kept_copy(study)
        if kept is not None and kept.version == version:
            return self._from_copy(kept, study)
        from_seq = 0 if kept is None else kept.tail_seq()
        params = {"study_id": study.id, "seq": from_seq}
        observations: dict[int, list[ObservationRecord]] = {}
        for segment_id, step, metric, value, special in self._run(_Hot.observations_from(), params):
            observations.setdefault(segment_id, []).append(
                ObservationRecord(step, Metric(metric), decode_float(value, special))
            )
        history = _on_top(
            kept,
            from_seq,
            study,
            stages=self.stages_of_study(study.id),
            segments=[self._segment_row(r) for r in self._run(_Hot.segments_from(), params)],
            observations=observations,
            forecasts={
                r.segment_id: forecast_record(r) for r in self._run(_Hot.forecasts_from(), params)
            },
            outages=self.outages_of_study(study.id),
        )
        self._keep(history, version)
        return history

    def _from_copy(self, kept: KeptHistory, study: StudyRecord) -> StudyHistory:
        assert self._histories is not None
        self._histories.used += 1
        for segment in kept.segments:
            self._segment_of[segment.id] = (segment.study_id, segment.stage)
        return kept.history(study)

    def _keep(self, history: StudyHistory, version: int) -> None:
        """Keep a history read at ``version``: only what the database committed (this
        transaction has written nothing, so its reads see no write of its own)."""
        if self._histories is not None and not self._touched and not self._versions:
            self._histories.put(history.study.id, KeptHistory.of(history, version))

    def _history_at_once(self, by_segment: bool, key: dict[str, int]) -> StudyHistory | None:
        """:meth:`history` in one statement (PostgreSQL), the same records: the parts
        that may have changed since the kept copy of the study (if any) only."""
        kept: KeptHistory | None = None
        if self._histories is not None:
            study_id = (
                self._histories.study_of(key["segment_id"]) if by_segment else key["study_id"]
            )
            kept = None if study_id is None else self._histories.peek(study_id)
        history = self._read_at_once(by_segment, key, kept)
        if history is _OTHER_STUDY:
            history = self._read_at_once(by_segment, key, None)
        assert history is not _OTHER_STUDY
        return cast(StudyHistory | None, history)

    def _read_at_once(
        self, by_segment: bool, key: dict[str, int], kept: KeptHistory | None
    ) -> StudyHistory | None | object:
        """One read of :meth:`_history_at_once` on top of ``kept``; :data:`_OTHER_STUDY`
        when the study read is not the one kept."""
        params = {
            **key,
            "known": -1 if kept is None else kept.version,
            "from_seq": 0 if kept is None else kept.tail_seq(),
        }
        found = self._run(_history_in_one_statement(by_segment), params).one()
        if found.study is None:
            return None
        row = SimpleNamespace(**{name: _loads(part) for name, part in found._mapping.items()})
        study_row = _json_row(cast(Table, StudyRow.__table__), row.study, project="project_name")
        study = study_record(study_row, study_row.project_name)
        version = int(study_row.version)
        if kept is not None:
            if study_identity(study) != kept.identity:
                return _OTHER_STUDY
            if kept.version == version:
                return self._from_copy(kept, study)
        stages = cast(Table, StageRow.__table__)
        segments = cast(Table, SegmentRow.__table__)
        forecasts = cast(Table, ForecastRow.__table__)
        observations: dict[int, list[ObservationRecord]] = {}
        for segment_id, step, metric, value, special in row.observations:
            observations.setdefault(segment_id, []).append(
                ObservationRecord(
                    step, Metric(metric), decode_float(finite_or_none(value), special)
                )
            )
        history = _on_top(
            kept,
            params["from_seq"],
            study,
            stages=[stage_record(_json_row(stages, obj)) for obj in row.stages],
            segments=[
                self._segment_row(_json_row(segments, obj, stage="stage_index"))
                for obj in row.segments
            ],
            observations=observations,
            forecasts={
                obj["segment_id"]: forecast_record(_json_row(forecasts, obj))
                for obj in row.forecasts
            },
            outages=[
                OutageRecord(
                    key,
                    steps,
                    after_seq,
                    datetime.fromisoformat(at).astimezone(timezone.utc),
                )  # fmt: skip
                for key, steps, after_seq, at in row.outages
            ],
        )
        self._keep(history, version)
        return history

    # ------------------------------------------------------------------ outages

    def outages_of_study(self, study_id: int) -> list[OutageRecord]:
        """The outages a job reported for the study, in the order reported."""
        rows = self._run(_Hot.outages(), {"study_id": study_id})
        return [OutageRecord(key, steps, after_seq, at) for key, steps, after_seq, at in rows]

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
