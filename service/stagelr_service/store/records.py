"""Plain, frozen records the repository returns.

Records carry no session and no lazy loading, so they can cross thread and transaction
boundaries freely. A segment's record is its decision
(:class:`stagelr.models.SegmentDecision`) plus the row's own fields. Enum columns come
back as the wire enums of :mod:`stagelr.models`; datetimes are timezone-aware UTC.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, NamedTuple

from stagelr.models import LRShape, Metric, SegmentDecision, SegmentStatus, StudyStatus

__all__ = [
    "ClosedAndIssued",
    "Closing",
    "ForecastRecord",
    "Issue",
    "NewForecast",
    "NewStage",
    "ObservationRecord",
    "OutageRecord",
    "ProjectRecord",
    "ScheduleSegment",
    "SegmentRecord",
    "StageRecord",
    "StageStatus",
    "StudyEnding",
    "StudyHistory",
    "StudyRecord",
    "StudySummaryRecord",
    "TokenRecord",
]

StageStatus = Literal["searching", "training", "completed"]


@dataclass(frozen=True, slots=True)
class ProjectRecord:
    id: int
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A project's bearer token, without its secret (only the digest is stored)."""

    id: int
    project: str
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class StudyRecord:
    """A study. ``config`` is the resolved StudyConfig as stored (JSON form)."""

    id: int
    project_id: int
    project: str
    name: str
    config: dict[str, Any]
    status: StudyStatus
    status_reason: str | None
    created_at: datetime
    updated_at: datetime
    family: str | None = None
    #: the prior summary stored at creation (``tuner.prior_summary``); None: no priors
    priors: dict[str, Any] | None = None
    #: When the study was archived (None: it is not).
    archived_at: datetime | None = None
    #: The outages its job reported, in the order reported, where the read that made the
    #: record fetched them (the API's study list does); empty otherwise (a history carries
    #: them as :attr:`StudyHistory.outages`).
    outages: tuple[OutageRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class StageRecord:
    id: int
    study_id: int
    index: int
    tau: int
    tau_explore: int
    start_step: int
    status: StageStatus
    chosen_lr: float | None


class SegmentRecord(SegmentDecision):
    """One stored segment: its decision (every field of
    :class:`stagelr.models.SegmentDecision`; ``stage`` is its stage's index) and the row's
    own fields (``stage_id`` is the stage's row id)."""

    id: int
    study_id: int
    stage_id: int
    seq: int
    status: SegmentStatus
    steps_done: int | None
    fail_reason: str | None
    created_at: datetime
    completed_at: datetime | None
    #: Last sign of life from the job (None only for rows written before migration 0002).
    heartbeat_at: datetime | None = None


class ObservationRecord(NamedTuple):
    """(step, metric, value); a tuple, so it compares equal to a plain 3-tuple.

    ``value`` may be NaN or +/-inf: the store round-trips them on every backend.
    """

    step: int
    metric: Metric
    value: float


@dataclass(frozen=True, slots=True)
class ForecastRecord:
    """The forecast of one explore segment.

    ``prediction``, ``std`` and ``objective`` are None where no finite value exists (the
    store keeps only finite floats there). ``params`` may hold NaN/inf; they round-trip.
    """

    id: int
    segment_id: int
    model: str
    prediction: float | None
    std: float | None
    status: str
    params: dict[str, float]
    n_points: int
    objective: float | None
    created_at: datetime


class ScheduleSegment(NamedTuple):
    """A training segment as the study list draws it: where it starts, how long, and its
    LR's shape (``lr`` towards ``lr_end``, :func:`stagelr.models.lr_at`)."""

    start_step: int
    steps: int
    lr: float
    lr_end: float | None = None
    lr_shape: LRShape = LRShape.constant


@dataclass(frozen=True, slots=True)
class OutageRecord:
    """Steps a job trained on fallback segments while the service was unreachable."""

    key: str
    steps: int
    after_seq: int | None
    reported_at: datetime


@dataclass(frozen=True, slots=True)
class StudyHistory:
    """Everything the tuner needs about one study, read in one transaction."""

    study: StudyRecord
    stages: list[StageRecord]
    segments: list[SegmentRecord]
    #: segment id -> its observations sorted by (step, metric); segments without any absent
    observations: dict[int, list[ObservationRecord]] = field(default_factory=dict)
    #: segment id -> its forecast; segments without one absent
    forecasts: dict[int, ForecastRecord] = field(default_factory=dict)
    #: outages the job reported, in the order they were reported
    outages: list[OutageRecord] = field(default_factory=list)

    @property
    def offline_steps(self) -> int:
        """Steps trained on fallback segments, over every reported outage."""
        return sum(o.steps for o in self.outages)


@dataclass(frozen=True, slots=True)
class StudySummaryRecord:
    """One row of the dashboard's study list, computed in SQL for a whole page at once.

    ``stalled``: the study runs but its open segment has shown no sign of life (heartbeat)
    for longer than the lease. ``best_loss``: the lowest finite loss its exploit segments
    reported on their own metric. ``stage``/``stage_status``: its latest stage, if any.
    ``schedule``: each exploit segment, in order.
    """

    id: int
    project: str
    name: str
    status: StudyStatus
    stalled: bool
    config: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    stage: int | None
    stage_status: str | None
    best_loss: float | None
    schedule: tuple[ScheduleSegment, ...] = ()
    archived_at: datetime | None = None
    family: str | None = None


# ---------------------------------------------------------------- a decision's writes
# What the study service hands :meth:`.live.LiveQueries.close_and_issue`: a completion
# and what follows it, written in one transaction, and what the store found.


@dataclass(frozen=True, slots=True)
class NewForecast:
    """A forecast to store, as :meth:`.live.LiveQueries.upsert_forecast` takes it."""

    model: str
    prediction: float | None
    std: float | None
    status: str
    params: dict[str, float]
    n_points: int
    objective: float | None = None


@dataclass(frozen=True, slots=True)
class Closing:
    """A segment's completion: the segment closed with ``status`` and ``steps_done`` if it
    is still open with the ``points`` observations its caller read, the ``observations``
    the completion brings (new ones: the read held ``points``), and what the closing
    writes besides: a ``forecast`` (an explore segment's) and/or the segment's stage
    completed (``completes_stage``: a training segment's closing)."""

    segment: SegmentRecord
    status: SegmentStatus
    steps_done: int | None
    points: int
    observations: Sequence[ObservationRecord]
    forecast: NewForecast | None
    completes_stage: bool


@dataclass(frozen=True, slots=True)
class NewStage:
    """A stage that a decision opens, found or created by its index."""

    index: int
    tau: int
    tau_explore: int
    start_step: int


@dataclass(frozen=True, slots=True)
class Issue:
    """A decision issued as segment ``seq`` in ``stage`` (the stage as read, whose id,
    study and index never change; or a :class:`NewStage` to find or create), and, with
    ``training_lr``, its stage set training at that LR (a stage's training segment)."""

    decision: SegmentDecision
    seq: int
    stage: StageRecord | NewStage
    training_lr: float | None = None


@dataclass(frozen=True, slots=True)
class StudyEnding:
    """The study's end: its status and the reason."""

    status: StudyStatus
    reason: str | None


@dataclass(frozen=True, slots=True)
class ClosedAndIssued:
    """What a completion with its follower found, a check each: the study ran (and, on
    PostgreSQL, its row is locked); the segment, closed (None: it was no longer open
    with the points read); the issued segment (None: another request issued that
    ``seq`` first, or the study ended). A check that fails leaves the later ones None:
    what was written then is the caller's to roll back."""

    running: bool
    closed: SegmentRecord | None = None
    issued: SegmentRecord | None = None
