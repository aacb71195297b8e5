"""How the store's rows hold values, and how a row becomes a record: shared by every
part of the repository (:mod:`.live`, :mod:`.token_queries`, :mod:`.summaries`,
:mod:`.bulk`)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from enum import Enum
from types import SimpleNamespace
from typing import Any

from sqlalchemy import (
    Row,
    Select,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite

from stagelr.models import (
    DECISION_FIELDS,
    Metric,
    SegmentDecision,
    StudyStatus,
)
from stagelr_service.errors import (
    InputError,
)

from .models import (
    ForecastRow,
    ProjectRow,
    SegmentRow,
    StageRow,
    StudyRow,
    TokenRow,
)
from .records import (
    ForecastRecord,
    SegmentRecord,
    StageRecord,
    StageStatus,
    StudyRecord,
    TokenRecord,
)

STAGE_STATUSES = ("searching", "training", "completed")


class Keep(Enum):
    """Type of :data:`KEEP`, the default of fields an update leaves as they are."""

    KEEP = "keep"


KEEP = Keep.KEEP

# How a float is stored: finite -> (value, None); non-finite -> (None, 'nan'|'inf'|'-inf').
Encoded = tuple[float | None, str | None]


def encode_float(value: float) -> Encoded:
    value = float(value)
    if math.isfinite(value):
        return value, None
    if math.isnan(value):
        return None, "nan"
    return None, "inf" if value > 0 else "-inf"


def decode_float(value: float | None, special: str | None) -> float:
    if special is not None:
        return float(special)
    if value is None:  # only a row written by hand could be like this
        return math.nan
    return value


def finite_or_none(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


_SPECIAL_FLOATS = {"nan", "inf", "-inf"}


def encode_params(params: Mapping[str, Any]) -> dict[str, Any]:
    # JSON has no NaN/inf (and PostgreSQL rejects them): spell them as strings.
    out: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, float) and not math.isfinite(value):
            out[str(key)] = encode_float(value)[1]
        else:
            out[str(key)] = value
    return out


def decode_params(params: Mapping[str, Any]) -> dict[str, Any]:
    return {
        key: float(value) if isinstance(value, str) and value in _SPECIAL_FLOATS else value
        for key, value in params.items()
    }


def stored_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` as the store gives them back once written: through their JSON column
    (a float's repr round-trips exactly; a numpy float comes back a float)."""
    return decode_params(json.loads(json.dumps(encode_params(params), allow_nan=False)))


def metric_value(metric: Metric | str) -> str:
    try:
        return Metric(metric).value
    except ValueError:
        raise InputError(
            f"unknown metric {metric!r}: use one of {', '.join(m.value for m in Metric)}"
        ) from None


#: A segment's decision fields that are columns of its row: all but ``stage``, which the
#: row holds as its ``stage_id``.
_DECISION_COLUMNS = tuple(name for name in DECISION_FIELDS if name != "stage")
#: The columns a segment's record reads: every field but ``stage``.
_RECORD_COLUMNS = tuple(name for name in SegmentRecord.model_fields if name != "stage")


def decision_columns(decision: SegmentDecision, where: str = "segment ") -> dict[str, Any]:
    """A decision as its row stores it: enums by value, a tuple as a JSON list. A float
    must be finite (the columns keep only finite values)."""
    values: dict[str, Any] = {}
    for name in _DECISION_COLUMNS:
        value = getattr(decision, name)
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"{where}{name} must be finite, not {value!r}")
        if isinstance(value, Enum):
            value = value.value
        elif isinstance(value, (tuple, list)):
            value = list(value)
        values[name] = value
    return values


#: The forecast columns an upsert writes (all but the keys).
FORECAST_VALUES = (
    "model",
    "prediction",
    "std",
    "status",
    "params",
    "n_points",
    "objective",
    "created_at",
)


def dialect_insert(dialect: str, table: Any) -> Any:
    """The INSERT construct with ON CONFLICT of the store's dialect (SQLite or
    PostgreSQL, the two the store supports)."""
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise ValueError(f"the store supports SQLite and PostgreSQL, not {dialect!r}")


def study_query() -> Select[StudyRow, str]:
    return select(StudyRow, ProjectRow.name).join(ProjectRow, StudyRow.project_id == ProjectRow.id)


def study_record(row: StudyRow | Row[Any] | SimpleNamespace, project: str) -> StudyRecord:
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
        family=row.family,
        priors=row.priors,
        archived_at=row.archived_at,
    )


def stage_record(row: StageRow | Row[Any] | SimpleNamespace) -> StageRecord:
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


def segment_record(row: SegmentRow | Row[Any] | SimpleNamespace, stage: int) -> SegmentRecord:
    # Every field but the stage's index is a column of the same name; a JSON list
    # column reads as a tuple (records are immutable).
    values = {name: getattr(row, name) for name in _RECORD_COLUMNS}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return SegmentRecord.model_validate({**values, "stage": stage})


def forecast_record(row: ForecastRow | Row[Any] | SimpleNamespace) -> ForecastRecord:
    return ForecastRecord(
        id=row.id,
        segment_id=row.segment_id,
        model=row.model,
        prediction=row.prediction,
        std=row.std,
        status=row.status,
        params=decode_params(row.params),
        n_points=row.n_points,
        objective=row.objective,
        created_at=row.created_at,
    )


def token_record(row: TokenRow, project: str) -> TokenRecord:
    return TokenRecord(
        id=row.id,
        project=project,
        name=row.name,
        prefix=row.prefix,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )
