"""``what-if``: a stored study under another tuner config, without training anything.

A replay cannot train, so it keeps what only training could change, and replays what the
config decides within each stage:

- The stages keep their recorded sizes and start steps (so the config fields that shape
  stages cannot be changed: see :data:`WHAT_IF_KEYS`), and each stage's evidence is the
  recorded stage's candidates: their losses, from the stage-start checkpoint the recorded
  run reached.
- Stage by stage, the tuner (``tuner.next_segment``, the live code path) is asked for the
  stage's candidates under the new config, one after the other. A candidate LR that the
  recorded stage ran (the same float) gets its recorded losses, forecast with the new
  config's forecaster. An LR that never ran gets an *estimate*: the posterior mean and sd,
  at that LR, of the GP (the optimizer's) fitted to the recorded candidates' objectives
  under the new config, flagged ``estimated``; the tuner then treats it as a forecast.
- After ``k`` candidates the tuner chooses the stage's LR by the new selection rule; that
  choice is compared with the recorded one and carried into the next stage (carry-over),
  whose evidence is again the recorded stage's.

Outages are replayed as they happened: each stage keeps the size the live plan gave it
(shortened by the outages its job had reported by then), and each decision sees the
offline steps the recorded decision at the same place in its stage saw.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from pydantic import ValidationError

from stagelr.models import (
    ReplayCandidate,
    ReplayReport,
    SegmentKind,
    SegmentStatus,
    StageReplay,
)

from .. import tuner
from ..errors import InputError, InvalidStateError
from ..forecast import Forecast
from ..history import trials_of
from ..store.records import StudyHistory
from ._common import (
    decades,
    finite,
    offline_before,
    recorded_geometries,
    stage_offline,
    summarize_stages,
)

__all__ = [
    "ESTIMATED",
    "WHAT_IF_KEYS",
    "WITHOUT_PRIORS",
    "parse_overrides",
    "what_if_config",
    "what_if_history",
]

#: The forecast status of an estimate (an LR that never ran).
ESTIMATED = "estimated"

#: Config fields a what-if may change: the ones that decide within a stage. The others
#: (tau0, tau_max, tau_growth, explore_ratio, total_steps, metric_schedule, reports_per_*,
#: divergence_stop/factor) change what would have been trained, which no replay knows.
WHAT_IF_KEYS = (
    "acquisition",
    "carry_over",
    "diverged_policy",
    "forecast",
    "k",
    "kappa",
    "lr_max",
    "lr_min",
    "noise_aware",
    "seed",
    "selection",
)


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``["k=3", "acquisition=lcb"]`` -> ``{"k": 3, "acquisition": "lcb"}``.

    A value is read as JSON where it parses (numbers, true/false, null), else as a string.
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError(f"--set {pair!r}: write key=value, e.g. --set k=3")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        out[key] = value
    return out


#: The override that replays a study as if it had named no priors (``--without-priors``):
#: its first stage searches in full. The only value it takes is null.
WITHOUT_PRIORS = {"warm_start": None}


def what_if_config(stored: Mapping[str, Any], overrides: Mapping[str, Any]) -> tuner.ResolvedConfig:
    """The stored config with ``overrides``, validated; InputError naming the fix."""
    fields = set(tuner.ResolvedConfig.model_fields)
    warm = stored.get("warm_start")
    if "warm_start" in overrides:
        if overrides["warm_start"] is not None:
            raise InputError(
                "warm_start can only be replaced by null (--without-priors): what a study "
                "took from its priors was fixed when it was created"
            )
        warm = None
    for key in overrides:
        if key == "warm_start":
            continue
        if key not in fields:
            raise InputError(
                f"{key!r} is not a config field: a what-if may set {', '.join(WHAT_IF_KEYS)}"
            )
        if key not in WHAT_IF_KEYS:
            raise InputError(
                f"{key!r} changes what would have been trained, which a replay cannot know: "
                f"a what-if may set {', '.join(WHAT_IF_KEYS)}"
            )
    given = {k: v for k, v in {**stored, **overrides}.items() if k != "warm_start"}
    try:
        return tuner.resolve(given).model_copy(
            update={"warm_start": None if warm is None else tuner.WarmStart.model_validate(warm)}
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors()
        )
        raise InputError(f"the what-if config is invalid: {problems}") from None


class _Estimator:
    """The GP over a recorded stage's candidates, asked at LRs that never ran."""

    def __init__(
        self,
        config: tuner.ResolvedConfig,
        geometry: tuner.StageGeometry,
        recorded: Sequence[tuner.Trial],
        optimizer: tuner.Optimizer,
    ) -> None:
        self._config = config
        self._optimizer = optimizer
        analysis = tuner.analyze_stage(config, geometry, recorded)
        self._x = [c.x for c in analysis.candidates]
        self._y = [c.objective for c in analysis.candidates]
        variances = [c.objective_var for c in analysis.candidates]
        self._yvar = (
            None
            if any(v is None for v in variances)
            else [max(float(v or 0.0), 1e-12) for v in variances]
        )

    def __call__(self, lr: float) -> Forecast:
        model = self._config.forecast.value
        if not self._x:  # nothing ran in this stage: nothing to estimate from
            return Forecast(math.nan, math.nan, ESTIMATED, model, {}, 0)
        x = tuner.to_unit(self._config, lr)
        post = self._optimizer.posterior(self._x, self._y, self._yvar, [x])
        mean, std = float(post.mean[0]), float(post.std[0])
        return Forecast(mean, max(std, 1e-12), ESTIMATED, model, {}, len(self._x))


def what_if_history(
    history: StudyHistory, overrides: Mapping[str, Any], optimizer: tuner.Optimizer
) -> ReplayReport:
    """Replay one stored study under its config with ``overrides``; see the module."""
    study = history.study
    stored_config = tuner.ResolvedConfig.stored(study.config)
    config = what_if_config(study.config, overrides)
    recorded_trials = trials_of(history)
    geometries = recorded_geometries(history, stored_config, recorded_trials)
    offline_at_start = stage_offline(history)
    chosen_by_stage = {s.index: s.chosen_lr for s in history.stages}

    replayed: list[tuner.Trial] = []
    stages: list[StageReplay] = []
    decisions = estimates = 0
    for geometry in geometries:
        index = geometry.index
        recorded = [t for t in recorded_trials if t.stage == index]
        closed_explores = [
            t
            for t in recorded
            if t.kind is SegmentKind.explore and t.status is not SegmentStatus.open
        ]
        recorded_exploit = next((t for t in recorded if t.kind is SegmentKind.exploit), None)
        stage_config = tuner.with_offline_steps(config, offline_at_start.get(index, 0))
        estimator: _Estimator | None = None
        used: set[int] = set()
        estimated_lrs: set[float] = set()
        chosen: float | None = None
        # A range test, k explore decisions and one exploit decision at most; the bound
        # guards a bug.
        for position in range((config.k or 0) + 3):
            # The outages known to the recorded decision at this place of the stage (past
            # its last one: all those reported after it).
            if position < len(recorded):
                offline = offline_before(history, recorded[position].seq)
            elif recorded:
                offline = offline_before(history, recorded[-1].seq + 1)
            else:
                offline = offline_at_start.get(index, history.offline_steps)
            plan = tuner.next_segment(
                tuner.with_offline_steps(config, offline), replayed, optimizer
            )
            decisions += 1
            if isinstance(plan, tuner.StudyEnd) or plan.stage != index:
                break
            seq = len(replayed)
            if plan.kind is SegmentKind.range_test:
                # Its losses do not depend on the what-if's keys: replayed as recorded.
                test = next((t for t in recorded if t.kind is SegmentKind.range_test), None)
                if test is None:
                    break
                if test.status is SegmentStatus.open:
                    raise InvalidStateError(
                        f"study {study.id}'s range test is still running: a what-if replay "
                        "starts from its losses; replay once it has completed"
                    )
                replayed.append(replace(test, seq=seq))
                continue
            if plan.kind is SegmentKind.exploit:
                chosen = plan.lr
                trained = recorded_exploit.trained if recorded_exploit else plan.steps
                replayed.append(
                    tuner.Trial(
                        seq=seq,
                        stage=index,
                        index=plan.index,
                        kind=SegmentKind.exploit,
                        lr=plan.lr,
                        steps=plan.steps,
                        status=SegmentStatus.completed,
                        steps_done=min(trained, plan.steps),
                        metric=plan.metric,
                        observations=recorded_exploit.observations if recorded_exploit else (),
                    )
                )
                break
            match = next(
                (t for t in closed_explores if t.lr == plan.lr and t.seq not in used), None
            )
            if match is not None:
                used.add(match.seq)
                fc = match.forecast
                if fc is None or fc.model != config.forecast:
                    fc = tuner.forecast_trial(config, replace(match, forecast=None), plan.horizon)
                trial = replace(match, seq=seq, index=plan.index, forecast=fc)
            else:
                if estimator is None:
                    searched = tuner.search_config(stage_config, replayed)
                    estimator = _Estimator(searched, geometry, closed_explores, optimizer)
                estimates += 1
                estimated_lrs.add(plan.lr)
                trial = tuner.Trial(
                    seq=seq,
                    stage=index,
                    index=plan.index,
                    kind=SegmentKind.explore,
                    lr=plan.lr,
                    steps=plan.steps,
                    status=SegmentStatus.completed,
                    steps_done=plan.steps,
                    metric=plan.metric,
                    forecast=estimator(plan.lr),
                )
            replayed.append(trial)

        stage_trials = [t for t in replayed if t.stage == index]
        analysis = tuner.analyze_stage(
            tuner.search_config(stage_config, replayed), geometry, stage_trials
        )
        candidates = [
            ReplayCandidate(
                index=c.trial.index,
                lr=c.trial.lr,
                prediction=finite(c.forecast.prediction),
                std=finite(c.forecast.std),
                status=c.forecast.status,
                estimated=c.forecast.status == ESTIMATED,
            )
            for c in analysis.candidates
        ]
        recorded_lr = chosen_by_stage.get(index)
        recorded_lrs = [t.lr for t in recorded if t.kind is SegmentKind.explore]
        stages.append(
            StageReplay(
                index=index,
                recorded_lrs=recorded_lrs,
                candidates=candidates,
                recorded_lr=recorded_lr,
                replayed_lr=chosen,
                chosen_estimated=chosen is not None and chosen in estimated_lrs,
                lr_decades=decades(recorded_lr, chosen),
                differs=recorded_lr is not None and chosen is not None and recorded_lr != chosen,
            )
        )
        if recorded_exploit is None or chosen is None:
            break  # the recorded study went no further: no evidence for later stages

    compared, differing, max_d, mean_d = summarize_stages(stages)
    return ReplayReport(
        study_id=study.id,
        project=study.project,
        name=study.name,
        study_status=study.status,
        mode="what-if",
        overrides={k: v for k, v in overrides.items() if k != "warm_start"},
        without_priors="warm_start" in overrides,
        decisions=decisions,
        ok=differing == 0,
        stages=stages,
        stages_compared=compared,
        stages_differing=differing,
        max_lr_decades=max_d,
        mean_lr_decades=mean_d,
        estimates=estimates,
    )
