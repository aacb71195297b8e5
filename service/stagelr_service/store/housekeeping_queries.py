"""Archive and delete: the writes behind the study list's housekeeping, and the list's
name search and archive filter (shared by the API's and the dashboard's lists)."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import ColumnElement, delete, func, select

from stagelr_service.errors import InputError, NotFoundError

from .live import LiveQueries
from .models import ForecastRow, ObservationRow, OutageRow, SegmentRow, StageRow, StudyRow
from .records import StudyRecord

__all__ = ["HousekeepingQueries", "housekeeping_filters"]


def housekeeping_filters(name: str | None, archived: bool | None) -> list[ColumnElement[bool]]:
    """The study list's name search (a part of the name, any case; ``%`` and ``_`` match
    themselves) and archive filter (False: not archived, True: archived, None: both)."""
    conditions: list[ColumnElement[bool]] = []
    if name:
        if len(name) > 200:
            raise InputError("a name search is at most 200 characters")
        escaped = name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        conditions.append(func.lower(StudyRow.name).like(f"%{escaped.lower()}%", escape="\\"))
    if archived is True:
        conditions.append(StudyRow.archived_at.is_not(None))
    elif archived is False:
        conditions.append(StudyRow.archived_at.is_(None))
    return conditions


class HousekeepingQueries(LiveQueries):
    """Archive, unarchive and delete a study."""

    def set_archived(self, study_id: int, archived: bool) -> StudyRecord:
        """Archive the study (it leaves the default list; nothing of it is removed), or
        bring it back. Archiving an archived study keeps its first time."""
        row = self._s.get(StudyRow, study_id)
        if row is None:
            raise NotFoundError(f"study {study_id} does not exist")
        if archived and row.archived_at is None:
            row.archived_at = self._now()
        elif not archived:
            row.archived_at = None
        self._s.flush()
        study = self.get_study(study_id)
        assert study is not None
        return study

    def delete_study(self, study_id: int) -> bool:
        """Delete the study and its whole history (observations, forecasts, segments,
        stages, outages), child tables first so no backend relies on cascades; False if
        there was no such study."""
        segments = select(SegmentRow.id).where(SegmentRow.study_id == study_id)
        self._s.execute(delete(ObservationRow).where(ObservationRow.segment_id.in_(segments)))
        self._s.execute(delete(ForecastRow).where(ForecastRow.segment_id.in_(segments)))
        self._s.execute(delete(SegmentRow).where(SegmentRow.study_id == study_id))
        self._s.execute(delete(StageRow).where(StageRow.study_id == study_id))
        self._s.execute(delete(OutageRow).where(OutageRow.study_id == study_id))
        deleted = self._s.execute(delete(StudyRow).where(StudyRow.id == study_id))
        self._s.expire_all()
        return bool(cast(Any, deleted).rowcount)
