"""Whole studies at once: the keys a replay selects, and the multi-row inserts of an
import (``stagelr import``)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    insert,
    select,
)

from stagelr.models import (
    DECISION_FIELDS,
    Metric,
    SegmentDecision,
    SegmentStatus,
    StudyStatus,
)
from stagelr_service.errors import (
    InputError,
)

from .codec import (
    STAGE_STATUSES,
    decision_columns,
    encode_float,
    encode_params,
    finite_or_none,
    metric_value,
)
from .live import LiveQueries
from .models import (
    ForecastRow,
    ObservationRow,
    OutageRow,
    ProjectRow,
    SegmentRow,
    StageRow,
    StudyRow,
)
from .records import (
    StudyRecord,
)

__all__ = ["BulkQueries"]


class BulkQueries(LiveQueries):
    """Bulk reads and writes of replay, export and import, in one transaction."""

    # ------------------------------------------------------------------ replay and import

    def study_keys(
        self,
        project: str | None = None,
        status: StudyStatus | str | None = None,
        family: str | None = None,
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
        if family is not None:
            query = query.where(StudyRow.family == family)
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
        priors: Mapping[str, Any] | None = None,
        archived_at: datetime | None = None,
    ) -> StudyRecord | None:
        """Insert a study exactly as given (an import keeps its status, times, prior
        summary and archiving).

        None when the project already has a study of that name (nothing is written).
        """
        row = StudyRow(
            project_id=project_id,
            name=name,
            config=json.loads(json.dumps(dict(config), allow_nan=False)),
            family=config.get("family"),
            priors=None if priors is None else json.loads(json.dumps(dict(priors))),
            status=StudyStatus(status).value,
            status_reason=status_reason,
            created_at=created_at,
            updated_at=updated_at,
            archived_at=archived_at,
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
            if stage["status"] not in STAGE_STATUSES:
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
            where = f"segment {seg['seq']}: "
            decision = SegmentDecision.model_validate(
                {name: seg[name] for name in DECISION_FIELDS if name in seg} | {"stage": 0}
            )
            rows.append(
                {
                    **seg,
                    **decision_columns(decision, where),
                    "study_id": study_id,
                    "status": SegmentStatus(seg["status"]).value,
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
            encoded, special = encode_float(value)
            rows.append(
                {
                    "segment_id": segment_id,
                    "step": int(step),
                    "metric": metric_value(metric),
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
                "prediction": finite_or_none(fc["prediction"]),
                "std": finite_or_none(fc["std"]),
                "objective": finite_or_none(fc["objective"]),
                "params": encode_params(fc["params"]),
            }
            for fc in forecasts
        ]
        if rows:
            self._s.execute(insert(ForecastRow), rows)
        return len(rows)

    def insert_outage_rows(self, study_id: int, outages: Sequence[Mapping[str, Any]]) -> int:
        """Insert a study's outages as given (keys: key, steps, after_seq, reported_at), in
        the order reported, in one statement. Returns rows written."""
        rows = [
            {
                "study_id": study_id,
                "key": o["key"],
                "steps": int(o["steps"]),
                "after_seq": o["after_seq"],
                "reported_at": o["reported_at"],
            }
            for o in outages
        ]
        if rows:
            self._s.execute(insert(OutageRow), rows)
        return len(rows)
