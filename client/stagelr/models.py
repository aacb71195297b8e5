"""Wire models: the one contract between the client and the server.

The server imports these models; nothing else defines the shape of a request or a
response, so the two sides cannot drift apart.

A study's config (:class:`StudyConfig`) carries only what the user set: the presets
and every other policy live in the server, which resolves the config once, when the
study is created, and stores the resolved values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "Acquisition",
    "LRShape",
    "CandidateView",
    "CompleteRequest",
    "CompletedAndNext",
    "DivergedPolicy",
    "FailRequest",
    "ForecastModel",
    "ForecastView",
    "Metric",
    "NextSegment",
    "ObservationBatch",
    "ObservationIn",
    "ObservationView",
    "ObservationsAccepted",
    "PlanStage",
    "PriorStudyView",
    "PriorUse",
    "PriorsView",
    "PosteriorPoint",
    "Problem",
    "ReplayCandidate",
    "ReplayMismatch",
    "ReplayReport",
    "ReplayRequest",
    "DECISION_FIELDS",
    "SegmentDecision",
    "SegmentKind",
    "SegmentStatus",
    "SegmentView",
    "Selection",
    "StageDetail",
    "StageReplay",
    "StageSummary",
    "StudyConfig",
    "StudyCreate",
    "StudyList",
    "StudyPlan",
    "StudyStatus",
    "StudyView",
    "lr_at",
]


class _Wire(BaseModel):
    # NaN and infinities travel as the strings "NaN" / "Infinity": valid JSON both ways.
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="strings")


# --------------------------------------------------------------------------- enums


class StudyStatus(str, Enum):
    running = "running"
    completed = "completed"
    failed = "failed"
    stopped = "stopped"


class PriorUse(str, Enum):
    """What a study did with its priors (:class:`PriorsView`)."""

    #: no priors named
    none = "none"
    #: priors named, but none was read (none completed, or none fitted the config)
    unused = "unused"
    #: the narrow search around the priors' LR is running
    searching = "searching"
    #: the narrow search confirmed the priors: the first stage trains at its choice
    used = "used"
    #: the narrow search found that the priors do not fit: a full search ran instead
    fallback = "fallback"


class SegmentKind(str, Enum):
    explore = "explore"
    exploit = "exploit"
    #: An LR range test (``lr_bounds: range_test``): the LR sweeps up exponentially from
    #: the study's first state, which the stage's candidates then restore.
    range_test = "range_test"


class SegmentStatus(str, Enum):
    open = "open"
    completed = "completed"
    diverged = "diverged"
    failed = "failed"


class Metric(str, Enum):
    val_loss = "val_loss"
    train_loss = "train_loss"


class LRShape(str, Enum):
    """How the LR moves over a segment, from ``lr`` at its first step towards ``lr_end``
    after its last (see :meth:`SegmentView.lr_at`)."""

    constant = "constant"
    linear = "linear"
    # WSD's cooldown: lr_end + (lr - lr_end) * (1 - sqrt(progress))
    one_minus_sqrt = "one_minus_sqrt"
    cosine = "cosine"
    # A range test's sweep: lr * (lr_end / lr) ** progress
    exponential = "exponential"
    # WSD in miniature (an annealed probe): constant for the first 80%, then the 1-sqrt
    # cooldown to lr_end over the last WSD_COOLDOWN of the segment
    wsd = "wsd"


#: The share of a ``wsd`` segment that cools down.
WSD_COOLDOWN = 0.2


def lr_at(lr: float, lr_end: float | None, shape: LRShape, step: int, steps: int) -> float:
    """The LR of step ``step`` (1-based) of a ``steps``-step segment.

    Progress is ``(step - 1) / steps``: the first step trains at ``lr`` and the LR after
    the last step would be ``lr_end``. Steps outside 1..steps are clamped.
    """
    if shape is LRShape.constant or lr_end is None or steps <= 0:
        return lr
    p = min(max((step - 1) / steps, 0.0), 1.0)
    if shape is LRShape.exponential:
        return float(lr * (lr_end / lr) ** p) if lr > 0 and lr_end > 0 else lr
    if shape is LRShape.wsd:
        start = 1.0 - WSD_COOLDOWN
        factor = 1.0 if p < start else 1.0 - math.sqrt((p - start) / WSD_COOLDOWN)
    elif shape is LRShape.linear:
        factor = 1.0 - p
    elif shape is LRShape.one_minus_sqrt:
        factor = 1.0 - math.sqrt(p)
    else:
        factor = 0.5 * (1.0 + math.cos(math.pi * p))
    return lr_end + (lr - lr_end) * factor


class Acquisition(str, Enum):
    lcb = "lcb"
    log_ei = "log_ei"


class ForecastModel(str, Enum):
    # the reference: a*exp(-exp(beta)*x)+c, linear least squares for (a, c), 1-D search on beta
    exp_reference = "exp_reference"
    # bounded, outlier-robust fit with an uncertainty estimate and a fallback
    robust = "robust"
    # an annealed probe's score: the loss at the end of its own window (no extrapolation)
    window_end = "window_end"


class DivergedPolicy(str, Enum):
    # the reference: a large constant in place of the loss
    penalty = "penalty"
    # the worst finite forecast of the stage plus the observed spread
    worst_plus_spread = "worst_plus_spread"


class Selection(str, Enum):
    # the candidate with the lowest forecast (the reference)
    min_forecast = "min_forecast"
    # the lowest forecast plus one sd: a long extrapolation must earn its place
    min_upper_bound = "min_upper_bound"
    # the lowest GP posterior mean at the candidates (smooths noisy forecasts)
    min_posterior_mean = "min_posterior_mean"
    # the highest LR whose forecast is within noise of the lowest: a short window's
    # forecast favours cool LRs (short-horizon bias), so a tie goes to the hotter one
    hottest_within_noise = "hottest_within_noise"
    # as hottest_within_noise, but the tie is judged by the lowest forecast's noise only:
    # a hotter candidate's own uncertainty (a turbulent window, a wild extrapolation)
    # does not count in its favour
    hottest_within_best_noise = "hottest_within_best_noise"


# --------------------------------------------------------------------------- config

#: The widest LR range a study may search (bounds beyond it could never run: segment
#: LRs derived from them stop being finite numbers).
LR_FLOOR = 1e-30
LR_CEILING = 1e30

#: Most stages a study's plan may have: a plan is listed, charged and drawn stage by
#: stage, so this bounds the work of every request on the study.
MAX_STAGES = 1000
#: Most points one segment stores per metric (beyond its report cadence): a longer
#: segment keeps every ``point_stride(steps)``-th step, so that what a request reads,
#: forecasts and draws stays bounded.
MAX_SEGMENT_POINTS = 10_000


def point_stride(steps: int) -> int:
    """The step stride a segment of ``steps`` steps stores points at (1 up to
    :data:`MAX_SEGMENT_POINTS` steps)."""
    return max(1, -(-steps // MAX_SEGMENT_POINTS))


def keeps_step(step: int, steps: int, report_every: int) -> bool:
    """Whether a segment of ``steps`` steps reporting every ``report_every`` stores a point
    at ``step``: its report cadence, its last step, and every :func:`point_stride`-th
    step (every step when the segment has at most :data:`MAX_SEGMENT_POINTS` steps)."""
    return step % point_stride(steps) == 0 or step % report_every == 0 or step == steps


class StudyConfig(_Wire):
    """How a study is tuned: what the user sets. Every field left out (None) is filled by
    the server from ``preset`` (``default`` when none is named) when the study is
    created; the study's view shows the config so resolved, every field set.

    Sizes are in optimizer steps. Stage ``i`` trains ``tau_i = min(tau0 * tau_growth**i,
    tau_max)`` steps with its chosen LR; before that, ``k`` candidate LRs are each tried for
    ``tau'_i = round(tau_i * explore_ratio)`` steps from the stage-start checkpoint, their
    losses forecast to ``tau_i`` steps, and a Gaussian process over log-LR picks where to try
    next.
    """

    preset: Literal["autolrs", "default", "default-v1"] | None = None
    lr_min: float | None = Field(
        default=None,
        gt=0,
        description="Lower bound of the LR search (exclusive of 0). With lr_bounds "
        "'range_test', the low end of the sweep (default 1e-6).",
    )
    lr_max: float | None = Field(
        default=None,
        gt=0,
        description="Upper bound of the LR search. With lr_bounds 'range_test', the high "
        "end of the sweep (default 10).",
    )
    total_steps: int | None = Field(
        default=None,
        ge=1,
        le=10**12,
        description="Training steps the job will run (its trajectory, search excluded). "
        "None: no end; the job stops the study when it is done.",
    )
    charged_steps: int | None = Field(
        default=None,
        ge=1,
        le=10**12,
        description="The job's whole compute budget: every step it trains, search "
        "included (candidates, a range test, training). Without total_steps the service "
        "sets total_steps to the longest trajectory whose plan charges at most this; "
        "with both, the plan must fit in it.",
    )
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1, description="Default 0.")

    # At most 10**8 steps a stage: stage sizes are 32-bit columns in the store.
    tau0: int | None = Field(default=None, ge=2, le=10**8)
    tau_max: int | None = Field(default=None, ge=2, le=10**8)
    tau_growth: float | None = Field(default=None, ge=1.0, le=16.0)
    explore_ratio: float | None = Field(default=None, gt=0.0, le=1.0)
    k: int | None = Field(default=None, ge=1, le=100)
    initial_design: int | None = Field(
        default=None,
        ge=1,
        le=100,
        description="A search with no carried-over LR starts with this many candidates "
        "spread over the range: the log-LR range is cut into this many equal strata and "
        "each gets one uniform draw, in a seeded order (1: one random start). A search of "
        "fewer than this many candidates spreads its k over the range the same way.",
    )
    acquisition: Acquisition | None = None
    kappa: float | None = Field(default=None, ge=0.0, le=1e6)
    forecast: ForecastModel | None = None
    noise_aware: bool | None = None
    diverged_policy: DivergedPolicy | None = None
    divergence_stop: bool | None = None
    divergence_factor: float | None = Field(default=None, gt=1.0, le=1e6)
    carry_over: bool | None = None
    selection: Selection | None = None
    metric_schedule: Literal["reference", "val_loss", "train_loss"] | None = Field(
        default=None,
        description="Which loss the job reports: 'reference' is AutoLRS's (per-step "
        "training loss until tau reaches tau_max, then validation loss every tau'/16 "
        "steps); otherwise that metric throughout at the preset's cadence.",
    )
    reports_per_explore: int | None = Field(default=None, ge=2, le=1000)
    reports_per_exploit: int | None = Field(default=None, ge=1, le=1000)
    planner: Literal["fixed", "budget", "hold"] | None = Field(
        default=None,
        description="'fixed': stages of tau0 * tau_growth**i steps up to tau_max, as "
        "AutoLRS. 'budget' (needs total_steps; without it, as 'fixed'): the training part "
        "of the budget is split into budget_stages stages growing by tau_growth, planned "
        "before training starts (GET /v1/studies/{id}/plan); tau0 and tau_max are unused. "
        "'hold' (needs total_steps and a decay; without them, as 'fixed'): stages as "
        "'fixed', but only the first searches; the later ones train on at its LR until "
        "the final decay (WSD with a searched peak LR).",
    )
    budget_stages: int | None = Field(default=None, ge=1, le=50)
    decay_fraction: float | None = Field(
        default=None,
        ge=0.0,
        le=0.9,
        description="With total_steps: the last fraction of the steps is one decay "
        "segment, from the last chosen LR to 0, with no search. 0: no decay.",
    )
    decay_shape: LRShape | None = None
    continue_best: bool | None = Field(
        default=None,
        description="After a stage's search, train on from the chosen candidate's end "
        "state (its steps count on the trajectory) instead of restarting the stage.",
    )
    same_data: bool | None = Field(
        default=None,
        description="Every candidate of a stage gets the same data_seed (equal batches); "
        "false: each segment its own.",
    )

    lr_bounds: Literal["given", "range_test"] | None = Field(
        default=None,
        description="'given': search between lr_min and lr_max. 'range_test': the study "
        "starts with one range-test segment (the LR sweeps exponentially from lr_min to "
        "lr_max over range_test_steps steps, reporting training loss every step); the "
        "search then spans range_test_decades below the LR of the lowest smoothed loss.",
    )
    range_test_steps: int | None = Field(default=None, ge=10, le=100_000)
    range_test_decades: float | None = Field(default=None, gt=0.0, le=12.0)
    probe: Literal["constant", "anneal"] | None = Field(
        default=None,
        description="How a candidate trains its window: 'constant' at its LR (the "
        "reference); 'anneal' at its LR, then down to 0 over the window's last fifth "
        "(lr_shape 'wsd'), a miniature of the planned run with its final decay, so "
        "that a candidate is judged by the loss it keeps once annealed (forecast "
        "'window_end' reads it) and not by the noise floor of a constant LR.",
    )

    finalists: int | None = Field(
        default=None,
        ge=0,
        le=10,
        description="With continue_best and annealed probes: once the k candidates "
        "have run, the best 'finalists' of them each train one more window from their "
        "own end state (successive halving), and the stage continues the finalist whose "
        "second window ended lowest and stable. 0: the k windows decide.",
    )
    pretrained: bool | None = Field(
        default=None,
        description="Whether the job starts from a trained model (fine-tuning), not "
        "from a fresh initialization; default false. From a trained state a short window "
        "rewards a cooler LR than the whole run wants and a pretrained model's loss may "
        "rise before it falls, so the first search counts only divergence as "
        "instability (its stability check too), and the LR it holds is its choice "
        "times horizon_scale.",
    )
    horizon_scale: float | None = Field(
        default=None,
        gt=0.0,
        le=100.0,
        description="The LR the first stage holds, as a multiple of what its search "
        "windows chose (at most the search's stability edge; within lr_min..lr_max): a "
        "window answers a shorter run's question than the stage's. Preset 'default' "
        "sets 3 for a pretrained job (its windows chose 0.12-0.64 times the whole "
        "run's best LR on the fine-tunes measured) and 1 otherwise; the other presets "
        "1. Not applied to a narrow search around a family's LR, which comes from "
        "whole runs.",
    )

    family: str | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$",
        description="The study's family (e.g. 'resnet50-imagenet'): the most recent "
        "completed studies of the same project and family are its priors, read once, "
        "when the study is created (see docs/history.md).",
    )
    prior_studies: list[int] | None = Field(
        default=None,
        max_length=50,
        description="Ids of earlier studies of the same project to use as priors, "
        "instead of (or besides) a family's; only completed ones are read.",
    )

    @field_validator("prior_studies")
    @classmethod
    def _ids(cls, v: list[int] | None) -> list[int] | None:
        if v is not None:
            if any(i < 1 or i > 2**53 for i in v):
                raise ValueError("prior study ids are positive integers")
            if len(set(v)) != len(v):
                raise ValueError("a prior study is named twice: name each once")
        return v

    @field_validator("lr_min", "lr_max")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("must be a finite positive number")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> StudyConfig:
        """What the given fields alone must satisfy; the server checks the rest once
        the preset has filled in the others."""
        if self.lr_min is not None and self.lr_max is not None:
            if self.lr_min >= self.lr_max:
                raise ValueError(
                    f"lr_min ({self.lr_min:g}) must be below lr_max ({self.lr_max:g}): "
                    "swap them or widen the range"
                )
            if self.lr_max / self.lr_min > 1e12:
                raise ValueError("the LR range spans more than 12 decades: narrow it")
        for bound in (self.lr_min, self.lr_max):
            if bound is not None and not LR_FLOOR <= bound <= LR_CEILING:
                raise ValueError(
                    f"the LR range must lie within [{LR_FLOOR:g}, {LR_CEILING:g}]: no "
                    "optimizer trains at LRs outside it, and the tuner's LR arithmetic "
                    "(range-test sweeps, decays, the search's log scale) would not stay "
                    "finite and exact there"
                )
        if self.tau0 is not None and self.tau_max is not None and self.tau_max < self.tau0:
            raise ValueError(f"tau_max ({self.tau_max}) must be at least tau0 ({self.tau0})")
        if self.decay_shape is LRShape.constant:
            raise ValueError("decay_shape cannot be 'constant': set decay_fraction to 0 instead")
        return self


class StudyCreate(_Wire):
    """Create a study, or get the existing one of the same project and name."""

    project: str | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="The project; by default the token's project, or `default` without auth.",
    )
    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$")
    config: StudyConfig


# --------------------------------------------------------------------------- segments


class SegmentDecision(_Wire):
    """What the tuner decided a segment trains: the one definition of a decision.

    The tuner returns it, the store writes and reads it column by column, and every
    view of a segment (:class:`SegmentView`, the export, replay's comparison) carries
    exactly these fields: a new decision field is declared here once.
    """

    kind: SegmentKind
    stage: int
    index: int = Field(description="Candidate index within the stage (exploit: k).")
    lr: float
    steps: int
    start_step: int = Field(description="Trajectory step at which the segment starts.")
    horizon: int = Field(description="Stage length tau the forecast is made for.")
    metric: Metric
    report_every: int
    restore: str | None = None
    save_start: str | None = None
    save_end: str | None = None
    discard: Sequence[str] = ()
    stop_above: float | None = None
    lr_end: float | None = Field(
        default=None, description="The LR the segment moves towards (None: constant)."
    )
    lr_shape: LRShape = Field(
        default=LRShape.constant,
        description="How the LR moves from lr to lr_end over the segment: set "
        "lr_at(step) before every step when it is not constant.",
    )
    data_seed: int

    def lr_at(self, step: int) -> float:
        """The LR of step ``step`` (1-based within the segment)."""
        return lr_at(self.lr, self.lr_end, self.lr_shape, step, self.steps)

    def decision(self) -> SegmentDecision:
        """The decision alone, from this or any subclass (a view, a stored record)."""
        if type(self) is SegmentDecision:
            return self
        return SegmentDecision.model_validate(
            {name: getattr(self, name) for name in DECISION_FIELDS}
        )


#: The fields of a decision, in their declared order.
DECISION_FIELDS: tuple[str, ...] = tuple(SegmentDecision.model_fields)


class SegmentView(SegmentDecision):
    """One stretch of training the service hands out: a decision and its state.

    Before training: if ``restore`` is set, load that checkpoint; then if ``save_start``
    is set, save the current state under that name; then set the LR to ``lr`` on every
    param group (after the restore, always). Train ``steps`` steps, reporting ``metric``
    every ``report_every`` steps and at the last step, with ``step`` counted from 1 within
    the segment. A report whose value is NaN, infinite or above ``stop_above`` ends an
    explore segment at once (divergence stop). After training, save ``save_end`` if set,
    and drop the checkpoints named in ``discard``.
    """

    id: int
    study_id: int
    seq: int = Field(description="Position of the segment in its study, from 0.")
    status: SegmentStatus
    steps_done: int | None = None
    heartbeat_at: datetime | None = Field(
        default=None,
        description="Last sign of life from the job on this segment (creation, an "
        "observation batch, a repeated next).",
    )
    stale: bool = Field(
        default=False,
        description="Open, with no sign of life for longer than the server's lease: the "
        "job may be gone; `next` hands it out again.",
    )


class ObservationIn(_Wire):
    step: int = Field(ge=0, le=10**9, description="Steps done within the segment.")
    value: float = Field(description="The loss; NaN or inf marks divergence.")
    metric: Metric | None = Field(default=None, description="Defaults to the segment's.")


class ObservationView(_Wire):
    step: int
    metric: Metric
    value: float


class ObservationBatch(_Wire):
    observations: list[ObservationIn] = Field(min_length=1, max_length=10_000)


class ObservationsAccepted(_Wire):
    accepted: int = Field(description="New observations stored.")
    duplicates: int = Field(description="Already stored with the same value (no-ops).")
    stop: bool = Field(description="True when the segment should end now (divergence).")


class CompleteRequest(_Wire):
    steps_done: int | None = Field(
        default=None, ge=0, description="Steps actually trained; less than asked = stopped."
    )
    observations: list[ObservationIn] = Field(
        default_factory=list,
        max_length=10_000,
        description=(
            "The segment's last observations, stored (idempotently) before it is closed: "
            "a job's final reports and its completion in one request."
        ),
    )


class FailRequest(_Wire):
    reason: str = Field(default="", max_length=2000)


# --------------------------------------------------------------------------- studies


class StageSummary(_Wire):
    index: int
    tau: int
    tau_explore: int
    start_step: int
    status: Literal["searching", "training", "completed"]
    chosen_lr: float | None = None
    candidates: int


class PriorStudyView(_Wire):
    """One prior study as its summary was stored when the study was created."""

    id: int
    name: str
    chosen_lr: float | None = Field(description="The LR its first stage trained with.")
    start_loss: float | None = Field(description="Its first stage's first reported loss.")
    final_loss: float | None = Field(description="Its last reported training loss.")
    fits: bool = Field(description="Its config's fingerprint is the study's.")


class PriorsView(_Wire):
    """Which priors a study used, what it took from them and whether it fell back."""

    family: str | None = None
    requested: list[int] = Field(
        default_factory=list, description="The prior_studies the config named."
    )
    summary_hash: str | None = Field(
        default=None, description="sha256 of the prior summary stored at creation."
    )
    studies: list[PriorStudyView] = Field(default_factory=list)
    use: PriorUse
    lr: float | None = Field(
        default=None, description="The priors' LR the narrow first search centred on."
    )
    candidates: list[float] = Field(
        default_factory=list, description="The narrow search's LRs (empty: none planned)."
    )
    basis: Literal["chosen_lr", "final_loss", "explore"] | None = Field(
        default=None,
        description="How the centre was found: where a GP over the priors' final losses is "
        "lowest (final_loss: they held different LRs), a step cooler than the one LR they "
        "held (explore), or the median of their chosen LRs (chosen_lr: studies stored "
        "before the others). With final_loss and explore the first stage trains the centre.",
    )
    reason: str = Field(default="", description="Why the priors were used or not.")


class OutageReport(_Wire):
    """Steps a job trained on fallback segments while the service was unreachable
    (``POST /v1/studies/{id}/outages``). The study's plan is shortened by them."""

    key: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9._:-]+$",
        description="The job's name for this outage: a report sent again with the same key "
        "is a no-op.",
    )
    steps: int = Field(ge=1, le=10**12, description="Steps trained while the service was away.")


class OutageView(_Wire):
    key: str
    steps: int
    after_seq: int | None = Field(
        description="Seq of the last segment handed out before the outage (None: before the first)."
    )
    reported_at: datetime


class StudyView(_Wire):
    id: int
    project: str
    name: str
    status: StudyStatus
    config: StudyConfig
    created_at: datetime
    updated_at: datetime
    trajectory_steps: int = Field(description="Steps trained on the kept trajectory.")
    charged_steps: int = Field(description="Every step trained, search included.")
    best_loss: float | None = None
    stages: list[StageSummary] = Field(default_factory=list)
    schedule: list[tuple[int, float]] = Field(
        default_factory=list, description="(start_step, lr) of each exploit segment."
    )
    open_segment: SegmentView | None = None
    stalled: bool = Field(
        default=False, description="Running, and its open segment is stale (no job alive)."
    )
    archived_at: datetime | None = Field(
        default=None,
        description="When the study was archived: out of the default list, its history kept.",
    )
    outages: list[OutageView] = Field(
        default_factory=list,
        description="Times the job trained on while the service was unreachable, as it "
        "reported them: the plan is shortened by their steps.",
    )
    offline_steps: int = Field(
        default=0, description="Steps trained on fallback segments, over every outage."
    )
    priors: PriorsView | None = Field(
        default=None, description="Its priors (see docs/history.md); None: none named."
    )


class PlanStage(_Wire):
    """One stage of a study's plan, and what happened to it so far."""

    index: int
    start_step: int
    tau: int = Field(description="Training steps of the stage.")
    tau_explore: int = Field(description="Steps per candidate (0: no search).")
    candidates: int = Field(description="Candidates the search tries (0: no search).")
    kind: Literal["search", "train_on", "decay"]
    planned_charge: int = Field(description="Steps this stage charges if run as planned.")
    status: Literal["planned", "searching", "training", "completed"] = "planned"
    actual_charge: int = Field(default=0, description="Steps charged so far in this stage.")
    chosen_lr: float | None = None


class StudyPlan(_Wire):
    """The study's plan (``GET /v1/studies/{id}/plan``): known before training starts
    when the study has a step budget."""

    study_id: int
    planner: Literal["fixed", "budget", "hold"]
    total_steps: int | None
    open_ended: bool = Field(
        description="No budget: the stages listed are the first ones; stages of tau_max "
        "steps follow until the job stops the study."
    )
    planned_charge: int = Field(description="Every step the listed stages charge.")
    actual_charge: int
    range_test_steps: int = Field(
        default=0, description="Steps of the range test (in stage 0's charge); 0: none."
    )
    lr_bounds: tuple[float, float] | None = Field(
        default=None,
        description="The LR range the search uses: the given one, or the range test's "
        "once it has run (null until then).",
    )
    stages: list[PlanStage]


class NextSegment(_Wire):
    """The answer to ``POST /v1/studies/{id}/next``: the segment to train, or none when
    the study has ended (``status`` says how)."""

    status: StudyStatus
    segment: SegmentView | None = None


class CompletedAndNext(_Wire):
    """The answer to ``POST /v1/segments/{id}/complete-and-next``: the segment as its
    completion left it (what ``/complete`` answers), and what ``/next`` answers after it."""

    completed: SegmentView
    next: NextSegment


class StudyList(_Wire):
    studies: list[StudyView]
    total: int


# --------------------------------------------------------------------------- stage detail


class ForecastView(_Wire):
    prediction: float | None = Field(description="Loss predicted at the horizon; None: none.")
    std: float | None
    status: str
    model: str
    params: dict[str, float] = Field(default_factory=dict)
    n_points: int


class CandidateView(_Wire):
    segment_id: int
    index: int
    lr: float
    status: SegmentStatus
    steps_done: int | None
    forecast: ForecastView | None = None
    objective: float | None = Field(
        default=None, description="The value the GP was fitted to (diverged: replaced)."
    )
    observations: list[tuple[int, float]] = Field(default_factory=list)
    checks: int | None = Field(
        default=None,
        description="A finalist's check window (config finalists): the index of the "
        "candidate whose end state it trained on from, at that candidate's LR. None: a "
        "window of the search itself.",
    )


class PosteriorPoint(_Wire):
    lr: float
    mean: float
    std: float


class StageDetail(_Wire):
    study_id: int
    index: int
    tau: int
    tau_explore: int
    start_step: int
    chosen_lr: float | None
    candidates: list[CandidateView]
    posterior: list[PosteriorPoint] = Field(default_factory=list)


# --------------------------------------------------------------------------- replay


class ReplayRequest(_Wire):
    """A what-if replay: the study's stored config with some fields replaced."""

    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description='Config fields to replace, e.g. {"k": 3, "acquisition": "lcb"}; '
        "only the fields that decide within a stage may change (see docs/replay.md).",
    )
    without_priors: bool = Field(
        default=False,
        description="Replay as if the study had named no priors: a full first search.",
    )


class ReplayCandidate(_Wire):
    """One candidate LR of a replayed stage and the forecast the tuner saw for it."""

    index: int
    lr: float
    prediction: float | None = Field(description="Forecast loss at the horizon; None: none.")
    std: float | None
    status: str = Field(description="The forecast's status; `estimated` for an estimate.")
    estimated: bool = Field(
        description="True: this LR never ran; prediction and std are the GP posterior mean "
        "and sd over the stage's recorded candidates, not a forecast of real losses."
    )


class ReplayMismatch(_Wire):
    """A recorded decision (or stored value) that the replay did not reproduce."""

    stage: int
    seq: int | None = Field(description="The segment position; None for a stage's fields.")
    field: str = Field(description="What differs, e.g. `lr`, `forecast.prediction`, `chosen_lr`.")
    recorded: Any
    replayed: Any


class StageReplay(_Wire):
    """One stage: the recorded and the replayed candidates and choice."""

    index: int
    recorded_lrs: list[float] = Field(description="The candidate LRs tried, in order.")
    candidates: list[ReplayCandidate] = Field(description="The replayed candidates, in order.")
    recorded_lr: float | None = Field(description="The LR the stage trained with.")
    replayed_lr: float | None
    chosen_estimated: bool = Field(
        default=False, description="The replayed choice is an LR that never ran."
    )
    lr_decades: float | None = Field(
        default=None, description="|log10(replayed_lr / recorded_lr)|; None unless both exist."
    )
    differs: bool = Field(description="The replayed choice (verify: anything) differs.")


class ReplayReport(_Wire):
    """The replay of one study: ``verify`` (stored config) or ``what-if`` (overrides)."""

    study_id: int
    project: str
    name: str
    study_status: StudyStatus
    mode: Literal["verify", "what-if"]
    overrides: dict[str, Any] = Field(default_factory=dict)
    without_priors: bool = Field(default=False, description="Replayed without its priors.")
    decisions: int = Field(description="Tuner decisions replayed.")
    ok: bool = Field(description="verify: every recorded decision came out the same.")
    mismatches: list[ReplayMismatch] = Field(default_factory=list)
    stages: list[StageReplay] = Field(default_factory=list)
    stages_compared: int = Field(description="Stages with a recorded and a replayed choice.")
    stages_differing: int = Field(description="Of those, stages whose choice differs.")
    max_lr_decades: float | None = None
    mean_lr_decades: float | None = None
    estimates: int = Field(default=0, description="Candidates whose forecast is estimated.")
    error: str | None = Field(default=None, description="Why the study could not be replayed.")


# --------------------------------------------------------------------------- errors


class Problem(BaseModel):
    """An RFC 9457 problem document (``application/problem+json``)."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str = ""
    instance: str | None = None
