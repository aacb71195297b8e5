"""``verify``: run the tuner over a stored study with its stored config, decision by
decision, and check that every recorded decision and stored forecast comes out the same.

The tuner sees, at each decision, exactly what the live service saw: the segments before
it (all closed, else the service would have handed the open one out again) with their
observations and the forecasts stored when they completed. Forecasts are checked on their
own against a recomputation from the segment's losses, so a stored forecast that was
altered is named where it is, and again at each later decision it changed.
"""

from __future__ import annotations

import math
from dataclasses import replace
from enum import Enum
from typing import Any

from stagelr.models import (
    DECISION_FIELDS,
    ReplayCandidate,
    ReplayMismatch,
    ReplayReport,
    SegmentKind,
    SegmentStatus,
    StageReplay,
    StudyStatus,
)

from .. import tuner
from ..forecast import Forecast
from ..history import trials_of
from ..store.records import SegmentRecord, StudyHistory
from ._common import decades, finite, forecast_fields, mismatch, summarize_stages

__all__ = ["verify_history"]


def _plain(value: Any) -> Any:
    """A JSON-friendly form of a decision field."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (tuple, list)):
        return list(value)
    return value


#: Forecast numbers within this relative distance count as the same. The fit is an
#: iterative least-squares solve in numpy and scipy, whose float kernels (OpenBLAS picks
#: them by CPU) and versions move its inputs' last bits between machines, and the solve
#: can amplify that: the quality benchmark's 243 studies, replayed in a later session's
#: fresh install on a machine of the same kind, differed in 6,298 forecast numbers
#: (median 3e-15, at most 2.1e-5 relative) and in no decision. A forecast's own spread
#: is about a hundred times the tolerance (std/prediction ~1e-2); the decisions
#: themselves are compared exactly.
FORECAST_RTOL = 1e-4


def _same(recorded: object, replayed: object) -> bool:
    if isinstance(recorded, float) and isinstance(replayed, float):
        return math.isclose(recorded, replayed, rel_tol=FORECAST_RTOL, abs_tol=0.0)
    return recorded == replayed


def _compare_decision(
    seg: SegmentRecord, plan: tuner.Decision | tuner.StudyEnd
) -> list[ReplayMismatch]:
    if isinstance(plan, tuner.StudyEnd):
        return [
            mismatch(
                seg.stage, seg.seq, "kind", seg.kind.value, f"end of study ({plan.status.value})"
            )
        ]
    out = []
    for field in DECISION_FIELDS:
        recorded, replayed = _plain(getattr(seg, field)), _plain(getattr(plan, field))
        if recorded != replayed:
            out.append(mismatch(seg.stage, seg.seq, field, recorded, replayed))
    return out


def verify_history(history: StudyHistory, optimizer: tuner.Optimizer) -> ReplayReport:
    """Replay every decision of one stored study with its stored config; see the module."""
    study = history.study
    config = tuner.ResolvedConfig.stored(study.config)
    trials = trials_of(history)
    segments = history.segments
    mismatches: list[ReplayMismatch] = []
    plans: dict[int, tuner.Decision] = {}
    decisions = 0

    for cut, seg in enumerate(segments):
        if any(t.status is SegmentStatus.open for t in trials[:cut]):
            mismatches.append(
                mismatch(seg.stage, seg.seq, "history", "an open segment before it", seg.kind.value)
            )
            break
        plan = tuner.next_segment(config, trials[:cut], optimizer)
        decisions += 1
        mismatches.extend(_compare_decision(seg, plan))
        if isinstance(plan, tuner.Decision):
            plans[seg.seq] = plan

    ended = study.status in (StudyStatus.completed, StudyStatus.failed)
    if ended and not any(t.status is SegmentStatus.open for t in trials):
        end = tuner.next_segment(config, trials, optimizer)
        decisions += 1
        replayed_end = (
            end.status.value if isinstance(end, tuner.StudyEnd) else f"a new {end.kind.value}"
        )
        if replayed_end != study.status.value:
            last = segments[-1].stage if segments else 0
            mismatches.append(
                mismatch(last, None, "study_status", study.status.value, replayed_end)
            )

    # Forecasts: each closed explore segment's stored forecast against a recomputation.
    recomputed: dict[int, Forecast] = {}
    for seg, trial in zip(segments, trials, strict=True):
        if seg.kind is not SegmentKind.explore or seg.status is SegmentStatus.open:
            continue
        fc = tuner.forecast_trial(config, replace(trial, forecast=None), seg.horizon)
        recomputed[seg.seq] = fc
        if seg.status is SegmentStatus.failed and seg.id not in history.forecasts:
            continue  # a failed segment gets no forecast stored; the tuner computes it
        stored = forecast_fields(trial.forecast)
        fresh = forecast_fields(fc)
        if stored is None:
            mismatches.append(mismatch(seg.stage, seg.seq, "forecast", None, fresh))
            continue
        assert fresh is not None
        for key in ("prediction", "std", "status", "model"):
            if not _same(stored[key], fresh[key]):
                mismatches.append(
                    mismatch(seg.stage, seg.seq, f"forecast.{key}", stored[key], fresh[key])
                )

    stages = _stage_replays(history, config, trials, plans, recomputed, mismatches)
    compared, differing, max_d, mean_d = summarize_stages(stages)
    mismatches.sort(key=lambda m: (m.stage, -1 if m.seq is None else m.seq))
    return ReplayReport(
        study_id=study.id,
        project=study.project,
        name=study.name,
        study_status=study.status,
        mode="verify",
        decisions=decisions,
        ok=not mismatches,
        mismatches=mismatches,
        stages=stages,
        stages_compared=compared,
        stages_differing=differing,
        max_lr_decades=max_d,
        mean_lr_decades=mean_d,
    )


def _stage_replays(
    history: StudyHistory,
    config: tuner.ResolvedConfig,
    trials: list[tuner.Trial],
    plans: dict[int, tuner.Decision],
    recomputed: dict[int, Forecast],
    mismatches: list[ReplayMismatch],
) -> list[StageReplay]:
    """Per stage: the recorded against the replayed candidates and choice; and the stored
    stage rows (sizes, chosen LR) against the tuner's geometry and decision."""
    geometries = tuner.stage_geometries(config, trials)
    out = []
    for stage in history.stages:
        segs = [s for s in history.segments if s.stage == stage.index]
        explores = [s for s in segs if s.kind is SegmentKind.explore]
        exploit = next((s for s in segs if s.kind is SegmentKind.exploit), None)
        exploit_plan = plans.get(exploit.seq) if exploit is not None else None
        replayed_lr = exploit_plan.lr if exploit_plan is not None else None

        if stage.index < len(geometries):
            geometry = geometries[stage.index]
            for field in ("tau", "tau_explore", "start_step"):
                if getattr(stage, field) != getattr(geometry, field):
                    mismatches.append(
                        mismatch(
                            stage.index,
                            None,
                            f"stage.{field}",
                            getattr(stage, field),
                            getattr(geometry, field),
                        )
                    )
        else:
            mismatches.append(mismatch(stage.index, None, "stage", "stored", "not reached"))
        if stage.chosen_lr != replayed_lr:
            mismatches.append(
                mismatch(stage.index, None, "chosen_lr", stage.chosen_lr, replayed_lr)
            )

        candidates = []
        for seg in explores:
            plan = plans.get(seg.seq)
            fc = recomputed.get(seg.seq)
            candidates.append(
                ReplayCandidate(
                    index=seg.index,
                    lr=plan.lr if plan is not None else seg.lr,
                    prediction=finite(fc.prediction) if fc else None,
                    std=finite(fc.std) if fc else None,
                    status=fc.status if fc else seg.status.value,
                    estimated=False,
                )
            )
        differs = any(m.stage == stage.index for m in mismatches)
        out.append(
            StageReplay(
                index=stage.index,
                recorded_lrs=[s.lr for s in explores],
                candidates=candidates,
                recorded_lr=stage.chosen_lr,
                replayed_lr=replayed_lr,
                lr_decades=decades(stage.chosen_lr, replayed_lr),
                differs=differs,
            )
        )
    return out
