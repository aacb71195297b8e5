"""Reads of many studies at once, each a fixed number of statements whatever the
number of studies: the API's and the dashboard's study lists, and the counts /metrics
shows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    and_,
    case,
    func,
    literal,
    select,
)

from stagelr.models import (
    LRShape,
    SegmentKind,
    SegmentStatus,
    StudyStatus,
)
from stagelr_service.errors import (
    InputError,
)

from .codec import (
    finite_or_none,
    segment_record,
    stage_record,
    study_query,
    study_record,
)
from .housekeeping_queries import housekeeping_filters
from .live import LiveQueries
from .models import (
    ObservationRow,
    OutageRow,
    ProjectRow,
    SegmentRow,
    StageRow,
    StudyRow,
)
from .records import (
    OutageRecord,
    ScheduleSegment,
    SegmentRecord,
    StageRecord,
    StudyRecord,
    StudySummaryRecord,
)

__all__ = ["SummaryQueries"]


class SummaryQueries(LiveQueries):
    """Study lists and counts, read in one transaction."""

    def list_studies(
        self,
        project: str | None = None,
        status: StudyStatus | str | None = None,
        limit: int = 100,
        offset: int = 0,
        *,
        name: str | None = None,
        archived: bool | None = False,
        family: str | None = None,
    ) -> tuple[list[StudyRecord], int]:
        """Studies newest first, filtered by project name, status, a part of the name
        (any case), archiving (False: not archived, True: archived, None: both) and
        family; and the total count of studies that match the filters (for pagination).
        Each record carries its outages."""
        if limit < 0 or offset < 0:
            raise InputError("limit and offset must not be negative")
        conditions = housekeeping_filters(name, archived)
        if project is not None:
            conditions.append(ProjectRow.name == project)
        if family is not None:
            conditions.append(StudyRow.family == family)
        if status is not None:
            try:
                conditions.append(StudyRow.status == StudyStatus(status).value)
            except ValueError:
                raise InputError(
                    f"unknown study status {status!r}: use one of "
                    + ", ".join(s.value for s in StudyStatus)
                ) from None
        # The page with its total as a window count, then the page's outages: two
        # statements whatever the page size (a count of its own only past the end).
        rows = self._s.execute(
            study_query()
            .add_columns(func.count().over().label("total"))
            .where(*conditions)
            .order_by(StudyRow.id.desc())
            .limit(limit)
            .offset(offset)
        ).all()
        if rows:
            total = int(rows[0].total)
        else:
            total = int(
                self._s.scalar(
                    select(func.count())
                    .select_from(StudyRow)
                    .join(ProjectRow, StudyRow.project_id == ProjectRow.id)
                    .where(*conditions)
                )
                or 0
            )
        outages: dict[int, list[OutageRecord]] = {}
        if rows:
            for o in self._s.execute(
                select(OutageRow)
                .where(OutageRow.study_id.in_([row[0].id for row in rows]))
                .order_by(OutageRow.study_id, OutageRow.id)
            ).scalars():
                outages.setdefault(o.study_id, []).append(
                    OutageRecord(o.key, o.steps, o.after_seq, o.reported_at)
                )
        return [
            replace(study_record(row[0], row[1]), outages=tuple(outages.get(row[0].id, ())))
            for row in rows
        ], total

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
        name: str | None = None,
        archived: bool | None = False,
        family: str | None = None,
    ) -> tuple[list[StudySummaryRecord], int]:
        """One page of the study list with everything its rows show, and how many studies
        match the filters.

        Two queries whatever the page size (the page, with its total as a window count;
        then the page's LR schedules), so a list of thousands of studies costs what a
        list of ten does. ``status`` filters on the status shown: a StudyStatus value, or
        ``"stalled"`` (running, and the open segment's heartbeat is older than
        ``lease_seconds``; a running study that is not stalled shows as ``"running"``).
        ``study_id`` picks one study (its page's header). ``sort`` is one of
        :attr:`SUMMARY_SORTS`; studies without a loss sort last. ``name``: a part of the
        name, any case; ``archived``: False (the default list), True (the archived only),
        None (both).
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
        conditions = housekeeping_filters(name, archived)
        if project is not None:
            conditions.append(ProjectRow.name == project)
        if status is not None:
            conditions.append(shown == status)
        if study_id is not None:
            conditions.append(StudyRow.id == study_id)
        if family is not None:
            conditions.append(StudyRow.family == family)
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
        schedules: dict[int, list[ScheduleSegment]] = {}
        if rows:
            for study_id, start, steps, lr, lr_end, shape in self._s.execute(
                select(
                    SegmentRow.study_id,
                    SegmentRow.start_step,
                    SegmentRow.steps,
                    SegmentRow.lr,
                    SegmentRow.lr_end,
                    SegmentRow.lr_shape,
                )
                .where(
                    SegmentRow.study_id.in_([row[0].id for row in rows]),
                    SegmentRow.kind == SegmentKind.exploit.value,
                )
                .order_by(SegmentRow.study_id, SegmentRow.seq)
            ):
                schedules.setdefault(study_id, []).append(
                    ScheduleSegment(start, steps, lr, lr_end, LRShape(shape or "constant"))
                )
        return [
            StudySummaryRecord(
                id=row[0].id,
                project=row[1],
                name=row[0].name,
                status=StudyStatus(row[0].status),
                stalled=bool(row.stalled),
                config=row[0].config,
                family=row[0].family,
                created_at=row[0].created_at,
                updated_at=row[0].updated_at,
                stage=row.stage,
                stage_status=row.stage_status,
                best_loss=finite_or_none(row.best),
                schedule=tuple(schedules.get(row[0].id, ())),
                archived_at=row[0].archived_at,
            )
            for row in rows
        ], total

    def studies_children(
        self, study_ids: Sequence[int]
    ) -> tuple[
        dict[int, list[StageRecord]], dict[int, list[SegmentRecord]], dict[int, float | None]
    ]:
        """Of each study: its stages, its segments (by ``seq``) and its best loss (the
        lowest finite loss its exploit segments reported on their own metric). Three
        statements however many studies (a page of a list)."""
        stages: dict[int, list[StageRecord]] = {i: [] for i in study_ids}
        segments: dict[int, list[SegmentRecord]] = {i: [] for i in study_ids}
        best: dict[int, float | None] = dict.fromkeys(study_ids)
        if not study_ids:
            return stages, segments, best
        stage_table, segment_table = StageRow.__table__, SegmentRow.__table__
        for row in self._s.execute(
            select(*stage_table.c)
            .where(stage_table.c.study_id.in_(study_ids))
            .order_by(stage_table.c.study_id, stage_table.c.index)
        ):
            stages[row.study_id].append(stage_record(row))
        for row in self._s.execute(
            select(*segment_table.c, stage_table.c.index.label("stage_index"))
            .join(stage_table, segment_table.c.stage_id == stage_table.c.id)
            .where(segment_table.c.study_id.in_(study_ids))
            .order_by(segment_table.c.study_id, segment_table.c.seq)
        ):
            segments[row.study_id].append(segment_record(row, row.stage_index))
        for study_id, value in self._s.execute(
            select(SegmentRow.study_id, func.min(ObservationRow.value))
            .join(SegmentRow, ObservationRow.segment_id == SegmentRow.id)
            .where(
                SegmentRow.study_id.in_(study_ids),
                SegmentRow.kind == SegmentKind.exploit.value,
                ObservationRow.metric == SegmentRow.metric,
                ObservationRow.special.is_(None),
            )
            .group_by(SegmentRow.study_id)
        ):
            best[study_id] = finite_or_none(value)
        return stages, segments, best
