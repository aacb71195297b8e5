"""Plain data the tuner reads and writes. No ORM objects, no HTTP models with ids."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic import Field, InstanceOf

from stagelr.models import Metric, SegmentDecision, SegmentKind, SegmentStatus, StudyStatus

from ..forecast import Forecast


@dataclass(frozen=True)
class Trial:
    """One segment of a study's history, as the tuner needs it.

    ``observations`` holds ``(step, value)`` of the segment's own metric, sorted by step,
    ``step`` counted from 1 within the segment.
    """

    seq: int
    stage: int
    index: int
    kind: SegmentKind
    lr: float
    steps: int
    status: SegmentStatus
    steps_done: int | None = None
    metric: Metric = Metric.val_loss
    observations: tuple[tuple[int, float], ...] = ()
    #: The forecast made when the segment completed, if the caller kept it. It is a pure
    #: function of ``observations``; passing it only saves recomputing it.
    forecast: Forecast | None = None

    @property
    def trained(self) -> int:
        """Steps this segment actually trained (its charge)."""
        if self.status is SegmentStatus.open:
            return 0
        return self.steps if self.steps_done is None else min(self.steps_done, self.steps)


@dataclass(frozen=True)
class StageGeometry:
    """The size of one stage: tau steps of training, tau' steps per candidate."""

    index: int
    start_step: int
    tau: int
    tau_explore: int
    search: bool
    explore_metric: Metric
    explore_report_every: int
    exploit_metric: Metric
    exploit_report_every: int
    #: The final decay segment of a budget: trains on from the last LR down to 0.
    decay: bool = False


@dataclass(frozen=True)
class PlannedStage:
    """A stage as the plan foresees it, before anything is trained."""

    geometry: StageGeometry
    candidates: int
    charge: int

    @property
    def kind(self) -> Literal["search", "train_on", "decay"]:
        if self.geometry.decay:
            return "decay"
        return "search" if self.geometry.search else "train_on"


class Decision(SegmentDecision):
    """What the tuner returns for the next segment: the decision the store keeps (every
    field of :class:`stagelr.models.SegmentDecision`), the geometry of the stage it was
    made for, and why (logged, never stored). The service gives it an id and a seq."""

    geometry: InstanceOf[StageGeometry]
    why: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True)
class StudyEnd:
    """The study is over: nothing more to train."""

    status: StudyStatus
    reason: str


@dataclass(frozen=True)
class CandidateAnalysis:
    """A candidate of a stage: its forecast and the value the GP sees."""

    trial: Trial
    x: float
    forecast: Forecast
    objective: float
    objective_var: float | None
    diverged: bool


@dataclass(frozen=True)
class StageAnalysis:
    """Everything the tuner knows about one stage's search."""

    geometry: StageGeometry
    candidates: tuple[CandidateAnalysis, ...]
    chosen_lr: float | None


class Optimizer(Protocol):
    """The Bayesian optimizer the tuner asks (``stagelr_service.optimizer.GPOptimizer``).

    x is the normalized log-LR in [0, 1]; y is minimized.
    """

    def propose(
        self,
        x: Sequence[float],
        y: Sequence[float],
        yvar: Sequence[float] | None,
        *,
        acquisition: str,
        kappa: float,
        exclude_radius: float = ...,
        upper: float = ...,
    ) -> Any: ...

    def posterior(
        self,
        x: Sequence[float],
        y: Sequence[float],
        yvar: Sequence[float] | None,
        grid: Sequence[float],
    ) -> Any: ...
