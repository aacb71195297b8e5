"""A study's stored history as the tuner and the API see it: pure converters.

Below both the study service (:mod:`stagelr_service.studies`) and replay
(:mod:`stagelr_service.replay`), which read the same history: segments become the
tuner's :class:`~stagelr_service.tuner.Trial`, a stored forecast the tuner's
:class:`~stagelr_service.forecast.Forecast`, and a history the wire's views of a
study, its stages and its plan. Nothing here reads the store or the clock: the caller
passes the history and the time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from stagelr.models import (
    CandidateView,
    ForecastView,
    OutageView,
    PlanStage,
    PosteriorPoint,
    PriorStudyView,
    PriorsView,
    PriorUse,
    SegmentKind,
    SegmentStatus,
    SegmentView,
    StageDetail,
    StageSummary,
    StudyPlan,
    StudyStatus,
    StudyView,
)

from . import tuner
from .errors import NotFoundError
from .forecast import Forecast
from .store.records import (
    ForecastRecord,
    ObservationRecord,
    OutageRecord,
    SegmentRecord,
    StageRecord,
    StudyHistory,
    StudyRecord,
)

__all__ = [
    "finite",
    "forecast_view",
    "is_stale",
    "priors_view",
    "segment_view",
    "stage_detail",
    "stored_forecast",
    "study_plan",
    "study_view",
    "trained_steps",
    "trial_of",
    "trials_of",
    "value_diverged",
]


def finite(value: float | None) -> float | None:
    """``value``, or None where it is not a finite number."""
    return value if value is not None and math.isfinite(value) else None


def value_diverged(value: float, stop_above: float | None) -> bool:
    """A reported loss that ends an explore segment or a range test: NaN, inf, or above
    its threshold."""
    if not math.isfinite(value):
        return True
    return stop_above is not None and value > stop_above


def is_stale(seg: SegmentRecord, now: datetime | None, lease_seconds: float | None) -> bool:
    """An open segment whose job has shown no sign of life for longer than the lease."""
    if now is None or lease_seconds is None or seg.status is not SegmentStatus.open:
        return False
    last = seg.heartbeat_at or seg.created_at
    return (now - last).total_seconds() > lease_seconds


#: What a segment's view shows of its record: its decision and the row's state.
_VIEW_FIELDS = tuple(name for name in SegmentView.model_fields if name != "stale")


def segment_view(
    seg: SegmentRecord, *, now: datetime | None = None, lease_seconds: float | None = None
) -> SegmentView:
    """The wire view of a segment; ``stale`` is computed when ``now`` and a lease are given."""
    return SegmentView.model_validate(
        {name: getattr(seg, name) for name in _VIEW_FIELDS}
        | {"stale": is_stale(seg, now, lease_seconds)}
    )


def trained_steps(seg: SegmentRecord) -> int:
    """Steps a segment charged: none while open; all of them when closed without a
    count (a completion never reports more than the segment's steps)."""
    if seg.status is SegmentStatus.open:
        return 0
    return seg.steps if seg.steps_done is None else seg.steps_done


def stored_forecast(record: ForecastRecord | None) -> Forecast | None:
    """A forecast as it was computed at completion (the store keeps non-finite as None)."""
    if record is None:
        return None
    return Forecast(
        prediction=math.nan if record.prediction is None else record.prediction,
        std=math.nan if record.std is None else record.std,
        status=record.status,
        model=record.model,
        params=dict(record.params),
        n_points=record.n_points,
    )


def forecast_view(fc: Forecast) -> ForecastView:
    return ForecastView(
        prediction=finite(fc.prediction),
        std=finite(fc.std),
        status=fc.status,
        model=fc.model,
        params={k: float(v) for k, v in fc.params.items() if math.isfinite(v)},
        n_points=fc.n_points,
    )


def trial_of(
    seg: SegmentRecord,
    observations: Iterable[ObservationRecord],
    forecast: Forecast | None = None,
) -> tuner.Trial:
    """One segment as the tuner sees it: its own metric's losses, by step."""
    return tuner.Trial(
        seq=seg.seq,
        stage=seg.stage,
        index=seg.index,
        kind=seg.kind,
        lr=seg.lr,
        steps=seg.steps,
        status=seg.status,
        steps_done=seg.steps_done,
        metric=seg.metric,
        observations=tuple((o.step, o.value) for o in observations if o.metric is seg.metric),
        forecast=forecast,
    )


def trials_of(history: StudyHistory) -> list[tuner.Trial]:
    """The study's segments as the tuner sees them, with the forecasts stored for them."""
    return [
        trial_of(
            seg,
            history.observations.get(seg.id, ()),
            stored_forecast(history.forecasts.get(seg.id)),
        )
        for seg in history.segments
    ]


def best_loss(history: StudyHistory) -> float | None:
    """The lowest finite loss the study's training segments reported on their metric."""
    best: float | None = None
    for seg in history.segments:
        if seg.kind is SegmentKind.exploit:
            for o in history.observations.get(seg.id, ()):
                if o.metric is seg.metric and math.isfinite(o.value):
                    best = o.value if best is None else min(best, o.value)
    return best


def study_view(
    study: StudyRecord,
    stages: Sequence[StageRecord],
    segments: Sequence[SegmentRecord],
    best: float | None,
    *,
    now: datetime | None,
    lease_seconds: float | None,
    config: tuner.ResolvedConfig | None = None,
    trials: Sequence[tuner.Trial] | None = None,
    outages: Sequence[OutageRecord] | None = None,
) -> StudyView:
    """The wire view of a study from its rows; ``best`` is its :func:`best_loss`,
    ``config`` its stored config, when the caller has read it already; ``outages`` the
    ones its job reported (None: those the study record carries, as the study list's
    records do). ``trials``: its history's, for why it fell back from its priors (a list
    has none)."""
    outages = study.outages if outages is None else outages
    config = config or tuner.ResolvedConfig.stored(study.config)
    trajectory = charged = 0
    schedule: list[tuple[int, float]] = []
    # A training segment that continues a candidate starts after the candidate's
    # steps; its LR holds from the stage's start.
    stage_start = {st.index: st.start_step for st in stages}
    counts: dict[int, int] = {}
    for seg in segments:
        done = trained_steps(seg)
        charged += done
        if seg.kind is SegmentKind.explore:
            counts[seg.stage] = counts.get(seg.stage, 0) + 1
        if seg.kind is SegmentKind.exploit:
            schedule.append((stage_start.get(seg.stage, seg.start_step), seg.lr))
            if seg.status is SegmentStatus.completed:
                # A training segment may continue a candidate (continue_best): the
                # trajectory ends where the last one ended.
                trajectory = max(trajectory, seg.start_step + done)
    summaries = [
        StageSummary(
            index=st.index,
            tau=st.tau,
            tau_explore=st.tau_explore,
            start_step=st.start_step,
            status=st.status,
            chosen_lr=st.chosen_lr,
            candidates=counts.get(st.index, 0),
        )
        for st in stages
    ]
    open_seg = next((s for s in segments if s.status is SegmentStatus.open), None)
    open_view = segment_view(open_seg, now=now, lease_seconds=lease_seconds) if open_seg else None
    return StudyView(
        id=study.id,
        project=study.project,
        name=study.name,
        status=study.status,
        config=config.request(),
        created_at=study.created_at,
        updated_at=study.updated_at,
        trajectory_steps=trajectory,
        charged_steps=charged,
        best_loss=best,
        stages=summaries,
        schedule=schedule,
        open_segment=open_view,
        stalled=study.status is StudyStatus.running and open_view is not None and open_view.stale,
        archived_at=study.archived_at,
        outages=[
            OutageView(key=o.key, steps=o.steps, after_seq=o.after_seq, reported_at=o.reported_at)
            for o in outages
        ],
        offline_steps=sum(o.steps for o in outages),
        priors=priors_view(study, segments, trials, config),
    )


def priors_view(
    study: StudyRecord,
    segments: Sequence[SegmentRecord],
    trials: Sequence[tuner.Trial] | None = None,
    config: tuner.ResolvedConfig | None = None,
) -> PriorsView | None:
    """Which priors the study used, what it took and whether it fell back (None: it
    named none). What it did is read from its decisions: the first stage trains after
    the narrow search (used) or after more candidates (fallback); with ``trials``, the
    tuner's verdict says why."""
    config = config or tuner.ResolvedConfig.stored(study.config)
    if config.family is None and not config.prior_studies:
        return None
    summary = study.priors or {}
    warm = config.warm_start
    used = set(warm.priors) if warm is not None else set()
    studies = [
        PriorStudyView(
            id=s["id"],
            name=s["name"],
            chosen_lr=s.get("chosen_lr"),
            start_loss=s.get("start_loss"),
            final_loss=s.get("final_loss"),
            fits=s["id"] in used,
        )
        for s in summary.get("studies", [])
    ]
    base: dict[str, Any] = {
        "family": config.family,
        "requested": list(config.prior_studies),
        "summary_hash": summary.get("hash"),
        "studies": studies,
    }
    if warm is None:
        reason = (
            "no completed prior study"
            if not studies
            else "no prior's config fingerprint matched (LR range, budget, stages, search)"
        )
        return PriorsView(**base, use=PriorUse.unused, reason=reason)
    n = len(warm.candidates)
    first = [s for s in segments if s.stage == 0]
    explores = sum(1 for s in first if s.kind is SegmentKind.explore)
    trained = any(s.kind is SegmentKind.exploit for s in first)
    if explores > n:
        use = PriorUse.fallback
    elif trained:
        use = PriorUse.used
    else:
        use = PriorUse.searching
    reason = ""
    if trials is not None and use is not PriorUse.searching:
        verdict, _ = tuner.warm_verdict(config, trials)
        reason = verdict.reason if verdict is not None else ""
    return PriorsView(
        **base,
        use=use,
        lr=warm.lr,
        candidates=list(warm.candidates),
        basis=warm.basis,
        reason=reason,
    )


def history_view(
    history: StudyHistory,
    *,
    now: datetime | None,
    lease_seconds: float | None,
    config: tuner.ResolvedConfig | None = None,
) -> StudyView:
    """:func:`study_view` of a whole history."""
    config = config or tuner.ResolvedConfig.stored(history.study.config)
    named = config.family is not None or bool(config.prior_studies)
    return study_view(
        history.study,
        history.stages,
        history.segments,
        best_loss(history),
        now=now,
        lease_seconds=lease_seconds,
        config=config,
        trials=trials_of(history) if named else None,
        outages=history.outages,
    )


def stage_detail(
    history: StudyHistory,
    index: int,
    optimizer: tuner.Optimizer,
    trials: Sequence[tuner.Trial] | None = None,
    config: tuner.ResolvedConfig | None = None,
) -> StageDetail:
    """A stage's search: each candidate's losses and forecast, and the GP posterior.
    ``trials`` (:func:`trials_of` the history) and ``config`` (its stored config): when
    the caller has them already."""
    study_id = history.study.id
    trials = trials_of(history) if trials is None else trials
    stored = config or tuner.ResolvedConfig.stored(history.study.config)
    config = tuner.search_config(stored, trials)
    geometries = tuner.stage_geometries(config, trials)
    if not 0 <= index < len(geometries):
        raise NotFoundError(f"study {study_id} has no stage {index} yet (it has {len(geometries)})")
    geometry = geometries[index]
    stage_trials = [t for t in trials if t.stage == index]
    analysis = tuner.analyze_stage(config, geometry, stage_trials)
    posterior = tuner.stage_posterior(config, analysis, optimizer) if geometry.search else []
    segments = {s.seq: s for s in history.segments}
    candidates = []
    analysed = {c.trial.seq: c for c in analysis.candidates}
    saved_by: dict[str, int] = {}  # a window's saved end state -> its index
    for trial in stage_trials:
        if trial.kind is not SegmentKind.explore:
            continue
        seg = segments[trial.seq]
        cand = analysed.get(trial.seq)
        if seg.save_end:
            saved_by[seg.save_end] = trial.index
        candidates.append(
            CandidateView(
                segment_id=seg.id,
                index=trial.index,
                lr=trial.lr,
                status=trial.status,
                steps_done=trial.steps_done,
                forecast=forecast_view(cand.forecast) if cand else None,
                objective=finite(cand.objective) if cand else None,
                observations=[(s, v) for s, v in trial.observations if math.isfinite(v)],
                checks=saved_by.get(seg.restore) if seg.restore else None,
            )
        )
    return StageDetail(
        study_id=study_id,
        index=index,
        tau=geometry.tau,
        tau_explore=geometry.tau_explore,
        start_step=geometry.start_step,
        chosen_lr=analysis.chosen_lr,
        candidates=candidates,
        posterior=[PosteriorPoint(lr=lr, mean=m, std=s) for lr, m, s in posterior],
    )


def study_plan(
    history: StudyHistory,
    trials: Sequence[tuner.Trial] | None = None,
    config: tuner.ResolvedConfig | None = None,
) -> StudyPlan:
    """The plan (:func:`tuner.plan_stages`) with each stage's actual charge, status and
    chosen LR from the history (``trials`` and ``config`` as for :func:`stage_detail`); its
    budget is shortened by the outages' offline steps."""
    config = tuner.with_offline_steps(
        config or tuner.ResolvedConfig.stored(history.study.config), history.offline_steps
    )
    planned, open_ended = tuner.plan_stages(config)
    charge: dict[int, int] = {}
    for seg in history.segments:
        charge[seg.stage] = charge.get(seg.stage, 0) + trained_steps(seg)
    actual = {st.index: st for st in history.stages}
    stages = []
    for p in planned:
        g = p.geometry
        record = actual.get(g.index)
        stages.append(
            PlanStage(
                index=g.index,
                start_step=g.start_step,
                tau=g.tau,
                tau_explore=g.tau_explore,
                candidates=p.candidates,
                kind=p.kind,
                planned_charge=p.charge,
                status=record.status if record is not None else "planned",
                actual_charge=charge.get(g.index, 0),
                chosen_lr=record.chosen_lr if record is not None else None,
            )
        )
    bounds: tuple[float, float] | None = (config.lr_min, config.lr_max)
    if config.lr_bounds == "range_test":
        searched = tuner.search_config(config, trials_of(history) if trials is None else trials)
        tested = searched is not config
        bounds = (searched.lr_min, searched.lr_max) if tested else None
    return StudyPlan(
        study_id=history.study.id,
        planner=config.planner,
        total_steps=config.total_steps,
        open_ended=open_ended,
        planned_charge=sum(p.charge for p in planned),
        actual_charge=sum(charge.values()),
        range_test_steps=tuner.range_test_charge(config),
        lr_bounds=bounds,
        stages=stages,
    )
