"""The AutoLRS state machine: given a study's config and history, the next segment.

Everything here is a pure function of its arguments. The same config and history give the
same plan, bit for bit, which is what makes replay and crash recovery exact. Randomness
comes only from generators seeded by ``(config.seed, stage)``; the optimizer is
deterministic too.

A stage ``s`` of length ``tau`` runs like this (``k`` candidates, ``tau'`` steps each):

    explore 0   save_start="stage-s"          lr = random (or last stage's best)
    explore 1   restore="stage-s"             lr = argmax of the acquisition
    ...
    explore k-1 restore="stage-s"
    exploit     restore="stage-s", discard    lr = the best forecast, tau steps

then the next stage starts where the exploit ended.

With ``lr_bounds: range_test`` the study starts with one more segment, in stage 0:

    range_test  save_start="stage-0"          lr sweeps lr_min -> lr_max exponentially

and the search range of every stage is then derived from its losses
(:func:`range_test_bounds`); stage 0's first candidate restores "stage-0" like the rest.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from stagelr.models import (
    DivergedPolicy,
    LRShape,
    Metric,
    SegmentKind,
    SegmentStatus,
    Selection,
    StudyStatus,
    lr_at,
)

from ..forecast import Forecast, forecast
from ._priors import Verdict, assess, fallback_skip, is_warm, warm_window
from ._stability import STABILITY_MARGIN, stability_cap, stability_caps, unit_cap
from ._types import (
    CandidateAnalysis,
    Decision,
    Optimizer,
    PlannedStage,
    StageAnalysis,
    StageGeometry,
    StudyEnd,
    Trial,
)
from .config import ResolvedConfig, budget_taus, check_stage_count, decay_steps

#: The reference's replacement for a diverged candidate's loss.
REFERENCE_PENALTY = 1e6
#: A short last stage (below this fraction of its nominal length) does not search; it
#: trains on with the previous stage's LR.
TAIL_FRACTION = 0.5
#: ``hottest_within_noise`` goes at most this many decades above the lowest forecast's
#: LR: a hotter LR that looks as good over tau' may still diverge later in the stage.
HOTTEST_SPAN_DECADES = 0.5
#: The selections that give a tie within noise to the hotter LR.
HOTTEST_SELECTIONS = (Selection.hottest_within_noise, Selection.hottest_within_best_noise)
#: A range test's loss above this multiple of its lowest so far has blown up: the sweep
#: is read only up to there.
RANGE_TEST_BLOWUP = 4.0
#: Fewer finite range-test losses than this: the sweep says nothing; the given bounds stay.
RANGE_TEST_MIN_POINTS = 5


# --------------------------------------------------------------------------- geometry


def nominal_tau(config: ResolvedConfig, index: int) -> int:
    """Stage length before the budget clips it: tau0 * growth**index, capped at tau_max."""
    tau = float(config.tau0)
    if config.tau_growth == 1.0:  # the loop below would multiply by 1, index times
        return min(config.tau0, config.tau_max)
    for _ in range(index):
        tau *= config.tau_growth
        if tau >= config.tau_max:
            return config.tau_max
    return min(round(tau), config.tau_max)


def stage_geometry(
    config: ResolvedConfig, index: int, start_step: int, has_previous_lr: bool
) -> StageGeometry | None:
    """The size and reporting cadence of stage ``index``; None when the budget is spent.

    With a step budget, the last ``decay_steps`` steps are a decay stage (no search).
    The ``fixed`` planner grows stages from tau0 and clips the last one to the budget (a
    clipped stage under half its nominal length trains on without a search); ``hold``
    has the same stages but, with a decay, searches only the first; the
    ``budget`` planner splits the steps before the decay into ``budget_stages`` stages
    (:func:`budget_taus`), each with a search.
    """
    total = config.total_steps
    train_end = None if total is None else total - decay_steps(total, config.decay_fraction)
    if total is not None and start_step >= total:
        return None
    decay = train_end is not None and start_step >= train_end
    is_tail = False
    if decay:
        assert total is not None
        nominal = tau = total - start_step
    elif config.planner == "budget" and train_end is not None:
        assert total is not None
        taus = budget_taus(
            total,
            config.budget_stages,
            config.tau_growth,
            config.decay_fraction,
            config.explore_ratio,
        )
        remaining = train_end - start_step
        if index < len(taus) - 1:
            nominal = tau = min(taus[index], remaining)
        else:
            # The last planned stage takes what is left (more than planned only when an
            # earlier stage's training was cut short); beyond the plan, train on.
            nominal = tau = remaining
            is_tail = index >= len(taus) and has_previous_lr
    else:
        nominal = nominal_tau(config, index)
        tau = nominal
        if train_end is not None:
            tau = min(nominal, train_end - start_step)
        is_tail = has_previous_lr and tau < TAIL_FRACTION * nominal
        if (
            config.planner == "hold"
            and total is not None
            and train_end is not None
            and train_end < total
        ):
            # Search once, then hold its LR to the decay: a later window's forecast
            # favours a cooler LR, whose gain the final decay delivers anyway.
            is_tail = is_tail or has_previous_lr
    tau_explore = round(tau * config.explore_ratio)
    search = tau_explore >= 1 and not is_tail and not decay

    if config.metric_schedule == "reference":
        # AutoLRS: per-step training loss while tau grows, validation loss every tau'/16
        # steps once tau has reached tau_max.
        if nominal < config.tau_max:
            metric, explore_every = Metric.train_loss, 1
        else:
            metric, explore_every = Metric.val_loss, max(1, tau_explore // 16)
    else:
        metric = Metric(config.metric_schedule)
        explore_every = max(1, tau_explore // config.reports_per_explore)
    return StageGeometry(
        index=index,
        start_step=start_step,
        tau=tau,
        tau_explore=tau_explore if search else 0,
        search=search,
        explore_metric=metric,
        explore_report_every=explore_every,
        exploit_metric=metric,
        exploit_report_every=max(1, tau // config.reports_per_exploit),
        decay=decay,
    )


def to_unit(config: ResolvedConfig, lr: float) -> float:
    """LR -> normalized log-LR in [0, 1]."""
    span = math.log(config.lr_max / config.lr_min)
    return min(1.0, max(0.0, math.log(lr / config.lr_min) / span))


def from_unit(config: ResolvedConfig, x: float) -> float:
    """Normalized log-LR in [0, 1] -> LR."""
    return float(config.lr_min * (config.lr_max / config.lr_min) ** min(1.0, max(0.0, x)))


def data_seed(config: ResolvedConfig, stage: int, index: int = 0) -> int:
    """The data-order seed of a segment. With ``same_data`` every segment of a stage
    gets the stage's seed, so its candidates see the same batches; without, candidate
    ``index`` gets its own."""
    if config.same_data is False:
        key = [config.seed, stage, 1, index + 1]
    else:
        key = [config.seed, stage, 1]
    return int(np.random.SeedSequence(key).generate_state(1)[0])


def checkpoint_name(stage: int) -> str:
    return f"stage-{stage}"


def candidate_checkpoint(stage: int, index: int) -> str:
    """Where ``continue_best`` keeps a candidate's end state."""
    return f"stage-{stage}-candidate-{index}"


# --------------------------------------------------------------------------- range test


def _range_test_plan(config: ResolvedConfig, geometry: StageGeometry) -> Decision:
    """The study's first segment when its bounds come from a range test: the LR sweeps
    from lr_min to lr_max, the training loss reported every step; it saves the study's
    first state, which stage 0 then restores."""
    steps = config.range_test_steps
    return Decision(
        geometry=geometry,
        stage=geometry.index,
        index=0,
        kind=SegmentKind.range_test,
        lr=config.lr_min,
        steps=steps,
        start_step=0,
        horizon=steps,
        metric=Metric.train_loss,
        report_every=1,
        data_seed=data_seed(config, 0),
        save_start=checkpoint_name(0),
        lr_end=config.lr_max,
        lr_shape=LRShape.exponential,
        why={"source": "range_test"},
    )


def _smoothed(values: np.ndarray) -> np.ndarray:
    """A centred moving average (half-width 1/20 of the points, at least 1): unlike an
    exponential average it does not lag, so its minimum sits where the loss's does."""
    half = max(1, len(values) // 20)
    kernel = np.ones(2 * half + 1)
    sums = np.convolve(values, kernel, mode="same")
    counts = np.convolve(np.ones_like(values), kernel, mode="same")
    return np.asarray(sums / counts)


def range_test_bounds(
    config: ResolvedConfig, trial: Trial
) -> tuple[float, float, dict[str, object]]:
    """The search range a range test gives: ``(lr_min, lr_max, why)``.

    The losses are read up to the first non-finite one or the first above
    ``RANGE_TEST_BLOWUP`` times the lowest so far, smoothed, and the LR at the lowest
    smoothed loss is the top of the range (beyond it, the loss rises: too hot); the
    range reaches ``range_test_decades`` below it, not below the sweep's start. A sweep
    with too few points keeps the given bounds; one whose loss never fell searches the
    lowest decades of the sweep.
    """
    steps: list[int] = []
    values: list[float] = []
    lowest = math.inf
    for step, value in trial.observations:
        if not math.isfinite(value) or (lowest > 0 and value > RANGE_TEST_BLOWUP * lowest):
            break
        lowest = min(lowest, value)
        steps.append(step)
        values.append(value)
    span = 10.0**config.range_test_decades
    if len(values) < RANGE_TEST_MIN_POINTS:
        return (
            config.lr_min,
            config.lr_max,
            {"source": "range_test_failed", "points": len(values)},
        )
    best = int(np.argmin(_smoothed(np.asarray(values, dtype=float))))
    top = lr_at(
        config.lr_min, config.lr_max, LRShape.exponential, steps[best], config.range_test_steps
    )
    why: dict[str, object] = {"source": "range_test", "step": steps[best], "points": len(values)}
    if best == 0:
        top = min(config.lr_max, config.lr_min * span)
        why["source"] = "range_test_no_descent"
    bottom = max(config.lr_min, top / span)
    if top <= bottom:
        top = min(config.lr_max, bottom * span)
    return bottom, top, why


def search_config(config: ResolvedConfig, trials: Sequence[Trial]) -> ResolvedConfig:
    """The config the search runs with: ``config`` itself, or with ``lr_bounds:
    range_test`` and the range test done, its bounds in lr_min / lr_max."""
    if config.lr_bounds != "range_test":
        return config
    test = next(
        (
            t
            for t in trials
            if t.kind is SegmentKind.range_test and t.status is not SegmentStatus.open
        ),
        None,
    )
    if test is None:
        return config
    low, high, _ = range_test_bounds(config, test)
    return config.model_copy(update={"lr_min": low, "lr_max": high})


# --------------------------------------------------------------------------- analysis


def _forecast_trial(config: ResolvedConfig, trial: Trial, horizon: int) -> Forecast:
    steps = [float(s) for s, _ in trial.observations]
    values = [v for _, v in trial.observations]
    return forecast(steps, values, float(horizon), config.forecast.value)


def forecast_trial(config: ResolvedConfig, trial: Trial, horizon: int) -> Forecast:
    """The forecast of one explore trial's loss at the stage horizon."""
    return _forecast_trial(config, trial, horizon)


def _is_diverged(trial: Trial, fc: Forecast) -> bool:
    if trial.status in (SegmentStatus.diverged, SegmentStatus.failed):
        return True
    return fc.status in ("diverged", "empty") or not math.isfinite(fc.prediction)


def analyze_stage(
    config: ResolvedConfig, geometry: StageGeometry, trials: Sequence[Trial]
) -> StageAnalysis:
    """Forecast every finished candidate of a stage and derive the GP's training data.

    A diverged or failed candidate has no usable forecast; what the GP sees instead is
    the study's ``diverged_policy``: the reference's large constant, or the worst finite
    forecast of the stage plus the spread of the finite ones (DESIGN 4.4: 5x lower regret
    than the constant).
    """
    explores = [
        t for t in trials if t.kind is SegmentKind.explore and t.status is not SegmentStatus.open
    ]
    forecasts = [
        t.forecast
        if t.forecast is not None and t.forecast.model == config.forecast
        else _forecast_trial(config, t, geometry.tau)
        for t in explores
    ]
    diverged = [_is_diverged(t, fc) for t, fc in zip(explores, forecasts, strict=True)]
    finite = [fc.prediction for fc, d in zip(forecasts, diverged, strict=True) if not d]
    variances = [fc.std**2 for fc, d in zip(forecasts, diverged, strict=True) if not d]

    if config.diverged_policy is DivergedPolicy.penalty:
        replacement = REFERENCE_PENALTY
    elif finite:
        worst, best = max(finite), min(finite)
        spread = worst - best
        if spread <= 0:
            spread = abs(worst) * 0.5 if worst != 0 else 1.0
        replacement = worst + spread
    else:
        replacement = 1.0
    replacement_var = max(variances) if variances else 1.0

    candidates = []
    for trial, fc, d in zip(explores, forecasts, diverged, strict=True):
        objective = replacement if d else fc.prediction
        var = replacement_var if d else fc.std**2
        candidates.append(
            CandidateAnalysis(
                trial=trial,
                x=to_unit(config, trial.lr),
                forecast=fc,
                objective=float(objective),
                objective_var=float(var) if config.noise_aware else None,
                diverged=d,
            )
        )
    exploit = next((t for t in trials if t.kind is SegmentKind.exploit), None)
    return StageAnalysis(
        geometry=geometry,
        candidates=tuple(candidates),
        chosen_lr=exploit.lr if exploit is not None else None,
    )


def _gp_data(
    analysis: StageAnalysis,
) -> tuple[list[float], list[float], list[float] | None]:
    xs = [c.x for c in analysis.candidates]
    ys = [c.objective for c in analysis.candidates]
    if any(c.objective_var is None for c in analysis.candidates):
        return xs, ys, None
    # Observation noise must be positive for a fixed-noise GP.
    yvar = [max(float(c.objective_var or 0.0), 1e-12) for c in analysis.candidates]
    return xs, ys, yvar


def stage_posterior(
    config: ResolvedConfig, analysis: StageAnalysis, optimizer: Optimizer, points: int = 101
) -> list[tuple[float, float, float]]:
    """(lr, mean, std) of the stage's GP on a grid of log-LR, for the stage view."""
    if not analysis.candidates:
        return []
    xs, ys, yvar = _gp_data(analysis)
    grid = [i / (points - 1) for i in range(points)]
    post = optimizer.posterior(xs, ys, yvar, grid)
    return [
        (from_unit(config, x), float(m), float(s))
        for x, m, s in zip(post.x, post.mean, post.std, strict=True)
    ]


# --------------------------------------------------------------------------- decisions


def _group_by_stage(trials: Sequence[Trial]) -> list[list[Trial]]:
    stages: list[list[Trial]] = []
    for trial in sorted(trials, key=lambda t: t.seq):
        if trial.stage == len(stages):
            stages.append([])
        elif trial.stage != len(stages) - 1:
            raise ValueError(
                f"history out of order: segment {trial.seq} is in stage {trial.stage} "
                f"after stage {len(stages) - 1}"
            )
        stages[-1].append(trial)
    return stages


def _reference_loss(
    trials: Sequence[Trial], current: Sequence[Trial], metric: Metric
) -> float | None:
    """The loss a diverging candidate is measured against.

    The stage-start loss (the previous exploit's last report) when there is one; in the
    first stage, the lowest first report of the stage's finished candidates.
    """
    for trial in reversed(trials):
        if trial.kind is SegmentKind.exploit and trial.metric is metric and trial.observations:
            value = trial.observations[-1][1]
            return value if math.isfinite(value) and value > 0 else None
    firsts = [
        t.observations[0][1]
        for t in current
        if t.kind is SegmentKind.explore and t.metric is metric and t.observations
    ]
    finite = [v for v in firsts if math.isfinite(v) and v > 0]
    return min(finite) if finite else None


def _choose(
    config: ResolvedConfig, analysis: StageAnalysis, optimizer: Optimizer, cold: bool = True
) -> tuple[float, CandidateAnalysis | None, dict[str, object]]:
    """The stage's LR, the candidate it comes from (None: no usable one) and why.

    With ``finalists``: the best-ranked finalist (by its first window) whose second window
    kept it below the stability edge (every window counts for the edge), continued from
    its second window's end (which trained at the held LR already); when none did, the
    first round decides under that edge. ``cold``: a search of the windows alone (not
    around a family's LR), whose first-stage choice is held at ``horizon_scale`` times
    (:func:`held_lr`)."""
    second = _second_round(config, analysis.candidates)
    if second:
        first = _first_round(config, analysis.candidates)
        failed = [c.trial.lr for c in second if _check_failed(config, first, c)]
        edge = stability_cap(config, first)
        if failed:
            edge = min(edge, STABILITY_MARGIN * min(failed))
        passed = [c for c in second if not _check_failed(config, first, c) and c.trial.lr <= edge]
        if passed:
            # The second windows check stability only: from a trained state a short
            # window rewards a cooler LR, so the first round's ranking still decides.
            rank = {j: i for i, j in enumerate(_kept_so_far(config, first) or [])}
            best = min(
                passed,
                key=lambda c: (rank.get(_parent(config, first, c), len(rank)), c.trial.index),
            )
            why: dict[str, object] = {"source": "finalist", "index": best.trial.index}
            parent = next(c for c in first if c.trial.index == _parent(config, first, best))
            if parent.trial.lr != best.trial.lr:
                why["window_lr"] = parent.trial.lr
            return best.trial.lr, best, why
        analysis = dataclasses.replace(analysis, candidates=tuple(first))
        lr, chosen, why = _choose_first(config, analysis, optimizer, edge, cold)
        return lr, chosen, {**why, "finalists_failed": True}
    return _choose_first(config, analysis, optimizer, cold=cold)


def held_lr(config: ResolvedConfig, stage: int, lr: float, edge: float) -> float:
    """The LR the stage holds for its search's choice ``lr``: in the first stage,
    ``horizon_scale`` times it (a window answers a shorter run's question: from a trained
    state it rewards a cooler LR than the whole run wants), at most the stability edge
    ``edge`` where that scales up, within lr_min..lr_max; in a later stage ``lr``."""
    scale = config.horizon_scale
    if stage != 0 or scale == 1.0:
        return lr
    held = lr * scale
    if scale > 1.0:
        held = min(held, max(edge, lr))
    return min(config.lr_max, max(config.lr_min, held))


def _choose_first(
    config: ResolvedConfig,
    analysis: StageAnalysis,
    optimizer: Optimizer,
    edge_cap: float | None = None,
    cold: bool = True,
) -> tuple[float, CandidateAnalysis | None, dict[str, object]]:
    lr, chosen, why = _choose_window(config, analysis, optimizer, edge_cap)
    if not cold or chosen is None or why["source"] == "stability_edge":
        return lr, chosen, why
    edge = stability_cap(config, analysis.candidates)
    if edge_cap is not None:
        edge = min(edge, edge_cap)
    held = held_lr(config, analysis.geometry.index, lr, edge)
    return held, chosen, why if held == lr else {**why, "window_lr": lr}


def _choose_window(
    config: ResolvedConfig,
    analysis: StageAnalysis,
    optimizer: Optimizer,
    edge_cap: float | None = None,
) -> tuple[float, CandidateAnalysis | None, dict[str, object]]:
    """The first round's choice (the LR of a window), with its candidate and why."""
    usable = [c for c in analysis.candidates if not c.diverged]
    if not usable:
        # Every candidate diverged: the range is too hot; fall back to its cool end.
        return config.lr_min, None, {"source": "all_diverged"}
    edge = stability_cap(config, analysis.candidates)
    if edge_cap is not None:
        edge = min(edge, edge_cap)
    stable = [c for c in usable if c.trial.lr <= edge]
    if not stable:
        # Every usable candidate sits within the margin of an unstable one: the coolest.
        coolest = min(usable, key=lambda c: (c.trial.lr, c.trial.index))
        why: dict[str, object] = {"source": "stability_edge", "index": coolest.trial.index}
        return coolest.trial.lr, coolest, why
    usable = stable
    if config.selection is Selection.min_posterior_mean:
        xs, ys, yvar = _gp_data(analysis)
        post = optimizer.posterior(xs, ys, yvar, [c.x for c in usable])
        best = min(range(len(usable)), key=lambda i: (post.mean[i], i))
        chosen = usable[best]
        source = "min_posterior_mean"
    elif config.selection in HOTTEST_SELECTIONS:
        lowest = min(usable, key=lambda c: (c.objective, c.trial.index))
        cap = lowest.trial.lr * 10**HOTTEST_SPAN_DECADES
        own = config.selection is Selection.hottest_within_noise
        tied = [c for c in usable if _within_noise(c, lowest, own) and c.trial.lr <= cap]
        chosen = max(tied, key=lambda c: (c.trial.lr, -c.trial.index))
        source = config.selection.value
    else:
        chosen = min(usable, key=lambda c: (_keep_key(config, c), c.trial.index))
        source = config.selection.value if config.selection else "min_forecast"
    return chosen.trial.lr, chosen, {"source": source, "index": chosen.trial.index}


def _within_noise(candidate: CandidateAnalysis, lowest: CandidateAnalysis, own: bool) -> bool:
    """Whether ``candidate``'s forecast is within one combined sd of the lowest one's.

    ``own``: the candidate's own sd counts in full (``hottest_within_noise``); otherwise
    (``hottest_within_best_noise``) at most the lowest one's, so that a turbulent window
    or a wild extrapolation is not what makes a hotter LR look as good."""

    def sd(c: CandidateAnalysis) -> float:
        return c.forecast.std if math.isfinite(c.forecast.std) else 0.0

    best = sd(lowest)
    mine = sd(candidate) if own else min(sd(candidate), best)
    return candidate.objective - lowest.objective <= math.sqrt(best**2 + mine**2)


def _keep_key(config: ResolvedConfig, candidate: CandidateAnalysis) -> float:
    """What ranks candidates when one is chosen without the GP (lower is better)."""
    if config.selection is Selection.min_upper_bound:
        return candidate.objective + candidate.forecast.std
    return candidate.objective


def _first_round(
    config: ResolvedConfig, candidates: Sequence[CandidateAnalysis]
) -> list[CandidateAnalysis]:
    """The candidates of the search proper: with ``finalists``, the k before the
    finalists' second windows."""
    if not config.checks_choice:
        return list(candidates)
    return [c for c in candidates if c.trial.index < config.k]


def _second_round(
    config: ResolvedConfig, candidates: Sequence[CandidateAnalysis]
) -> list[CandidateAnalysis]:
    """The finalists' second windows (none without ``finalists``)."""
    if not config.checks_choice:
        return []
    return [c for c in candidates if c.trial.index >= config.k]


def _kept_so_far(
    config: ResolvedConfig, candidates: Sequence[CandidateAnalysis]
) -> list[int] | None:
    """The candidates whose end states ``continue_best`` keeps, best first: None keeps
    every one (selection by GP posterior mean or within noise ranks candidates only once
    the search is over), [] keeps none (no candidate is usable). The best one, or with
    ``finalists`` the best that many. With annealed probes, a candidate above the
    stability edge so far is never kept (it cannot be chosen)."""
    return _kept_under(config, candidates, stability_cap(config, candidates))


def _kept_under(
    config: ResolvedConfig, candidates: Sequence[CandidateAnalysis], edge: float
) -> list[int] | None:
    """:func:`_kept_so_far` with the candidates' stability edge given."""
    if config.selection is Selection.min_posterior_mean or config.selection in HOTTEST_SELECTIONS:
        return None
    usable = [c for c in candidates if not c.diverged and c.trial.lr <= edge]
    ranked = sorted(usable, key=lambda c: (_keep_key(config, c), c.trial.index))
    keep = max(1, config.finalists) if config.checks_choice else 1
    return [c.trial.index for c in ranked[:keep]]


def _held_checkpoints(config: ResolvedConfig, candidates: Sequence[CandidateAnalysis]) -> list[int]:
    """``continue_best``: the candidates whose end states the job holds once the
    segments planned so far have ended, before the next plan's discards.

    Each candidate saves its end state; each later plan drops every held state but the
    best so far, so the job holds at most the stage start, the best candidate and the
    newest one (every candidate when selecting by posterior mean). With ``finalists``,
    the best that many are held, then every finalist's second window.
    """
    held: list[int] = []
    first = _first_round(config, candidates)
    edges = stability_caps(config, first)
    for i, candidate in enumerate(first):
        keep = _kept_under(config, first[:i], edges[i])
        held = [j for j in held if keep is None or j in keep]
        held.append(candidate.trial.index)
    if len(first) == config.k:
        second = _second_round(config, candidates)
        if second:
            keep = _kept_under(config, first, edges[-1])
            held = [j for j in held if keep is None or j in keep]
        held += [c.trial.index for c in second]
    return held


def _candidate_discards(config: ResolvedConfig, analysis: StageAnalysis) -> tuple[str, ...]:
    """The candidate end states the next explore segment drops after it ends. A
    finalist's second window drops the first round's states that are not finalists
    (the first second window only; the later ones drop nothing)."""
    if not config.continue_best:
        return ()
    if _second_round(config, analysis.candidates):
        return ()
    first = _first_round(config, analysis.candidates)
    keep = _kept_so_far(config, first)
    held = _held_checkpoints(config, first)
    stage = analysis.geometry.index
    return tuple(candidate_checkpoint(stage, j) for j in held if keep is not None and j not in keep)


def initial_design(config: ResolvedConfig, stage: int) -> list[float]:
    """The unit-interval points a search with no carried-over LR starts from: the
    interval cut into ``initial_design`` (at most k) equal strata, one uniform draw in
    each, in a seeded order (a one-dimensional Latin hypercube). With one stratum it is
    the single uniform draw stagelr has always made, so stored studies keep their
    decisions."""
    n = min(config.initial_design, config.k)
    rng = np.random.default_rng([config.seed, stage, 0])
    draws = rng.uniform(size=n)
    order = rng.permutation(n)
    return [(int(order[i]) + float(draws[i])) / n for i in range(n)]


def _explore(
    config: ResolvedConfig,
    geometry: StageGeometry,
    analysis: StageAnalysis,
    previous_lr: float | None,
    stop_reference: float | None,
    optimizer: Optimizer,
    saved: bool = False,
    given: tuple[float, dict[str, object]] | None = None,
) -> Decision:
    """A candidate of the stage. ``saved``: the stage-start state is saved already (a
    range test did), so the first candidate restores it too. ``given``: its LR and why,
    decided by the caller (the priors' narrow search)."""
    index = len(analysis.candidates)
    why: dict[str, object]
    carried = config.carry_over and previous_lr is not None
    if given is not None:
        lr, why = given
    elif index == 0 and carried:
        assert previous_lr is not None
        lr, why = previous_lr, {"source": "carry_over"}
    elif not carried and index < len(design := initial_design(config, geometry.index)):
        lr = from_unit(config, design[index])
        why = {"source": "initial_design" if len(design) > 1 else "random"}
    else:
        xs, ys, yvar = _gp_data(analysis)
        cap = stability_cap(config, analysis.candidates)
        bound = {} if cap >= config.lr_max else {"upper": unit_cap(config, cap)}
        proposal = optimizer.propose(
            xs, ys, yvar, acquisition=config.acquisition.value, kappa=config.kappa, **bound
        )
        lr = from_unit(config, proposal.x)
        why = {
            "source": "acquisition",
            "acquisition": proposal.acquisition,
            "acquisition_value": proposal.acquisition_value,
            "hyperparameters": dict(proposal.hyperparameters),
        }
    stop_above = None
    if config.divergence_stop and stop_reference is not None:
        stop_above = stop_reference * config.divergence_factor
    name = checkpoint_name(geometry.index)
    lr_end, shape = None, LRShape.constant
    if config.probe == "anneal":
        # A miniature of the planned run: the window ends in a cooldown to 0.
        lr_end, shape = 0.0, LRShape.wsd
    return Decision(
        geometry=geometry,
        stage=geometry.index,
        index=index,
        kind=SegmentKind.explore,
        lr=lr,
        steps=geometry.tau_explore,
        start_step=geometry.start_step,
        horizon=geometry.tau,
        metric=geometry.explore_metric,
        report_every=geometry.explore_report_every,
        data_seed=data_seed(config, geometry.index, index),
        restore=name if index > 0 or saved else None,
        save_start=name if index == 0 and not saved else None,
        save_end=candidate_checkpoint(geometry.index, index) if config.continue_best else None,
        discard=_candidate_discards(config, analysis),
        stop_above=stop_above,
        lr_end=lr_end,
        lr_shape=shape,
        why=why,
    )


def _exploit(
    config: ResolvedConfig,
    geometry: StageGeometry,
    lr: float,
    index: int,
    why: dict[str, object],
    analysis: StageAnalysis | None = None,
    chosen: CandidateAnalysis | None = None,
    saved: bool = False,
) -> Decision:
    """The stage's training segment. After a search (or a range test: ``saved``) it
    restores the stage start, or with ``continue_best`` the chosen candidate's end state
    and trains the rest of the stage; the decay stage moves the LR to 0."""
    name = checkpoint_name(geometry.index)
    saved = saved or geometry.search
    restore = name if saved else None
    discard: tuple[str, ...] = (name,) if saved else ()
    offset = 0
    if config.continue_best and analysis is not None:
        held = _held_checkpoints(config, analysis.candidates)
        discard += tuple(candidate_checkpoint(geometry.index, j) for j in held)
        if (
            chosen is not None
            and chosen.trial.status is SegmentStatus.completed
            and chosen.trial.trained == chosen.trial.steps
            and _path_steps(config, geometry, analysis) < geometry.tau
        ):
            # After the finalists' second windows, the plan counted two windows of
            # trajectory: a first-round choice (every finalist failed) trains on one
            # window short, so the stage still charges what the plan counted.
            offset = _path_steps(config, geometry, analysis)
            if chosen.trial.index in held:
                restore = candidate_checkpoint(geometry.index, chosen.trial.index)
                why = {**why, "continues": chosen.trial.index}
            else:
                # The chosen state was dropped (a later candidate moved the stability
                # edge below the one kept): train from the stage start, tau' steps
                # short, so the stage still charges what the plan counted.
                why = {**why, "short": offset}
    lr_end, shape = None, LRShape.constant
    if geometry.decay:
        lr_end, shape = 0.0, config.decay_shape
    return Decision(
        geometry=geometry,
        stage=geometry.index,
        index=index,
        kind=SegmentKind.exploit,
        lr=lr,
        steps=geometry.tau - offset,
        start_step=geometry.start_step + offset,
        horizon=geometry.tau,
        metric=geometry.exploit_metric,
        report_every=geometry.exploit_report_every,
        data_seed=data_seed(config, geometry.index, index),
        restore=restore,
        discard=discard,
        lr_end=lr_end,
        lr_shape=shape,
        why=why,
    )


def _path_steps(config: ResolvedConfig, geometry: StageGeometry, analysis: StageAnalysis) -> int:
    """Steps of the stage the training segment starts after: the chosen candidate's
    window, or with the finalists' second windows, two."""
    if _second_round(config, analysis.candidates):
        return geometry.tau_explore + second_window_steps(config, geometry)
    return geometry.tau_explore


def _stage_checks(config: ResolvedConfig, geometry: StageGeometry) -> bool:
    """Whether a stage's search ends in the finalists' second windows: with
    ``finalists``, where the chosen path's two windows leave the stage steps to train
    (with windows of half a stage or more, the check would be the whole stage)."""
    return (
        config.checks_choice
        and geometry.search
        and geometry.tau_explore + second_window_steps(config, geometry) < geometry.tau
    )


def second_window_steps(config: ResolvedConfig, geometry: StageGeometry) -> int:
    """The length of a finalist's second window: one window (2 and 4 windows caught no
    instability that one missed on the dev split, and cost the NQM its steps)."""
    del config
    return geometry.tau_explore


def _second_window(
    config: ResolvedConfig,
    geometry: StageGeometry,
    analysis: StageAnalysis,
    parent: CandidateAnalysis,
    stop_reference: float | None,
) -> Decision:
    """A finalist's second window: from its first window's end state, at the LR the
    stage would hold for it (:func:`held_lr`), one more annealed window; its end state
    is saved for the stage to continue."""
    index = len(analysis.candidates)
    edge = stability_cap(config, _first_round(config, analysis.candidates))
    lr = held_lr(config, geometry.index, parent.trial.lr, edge)
    why: dict[str, object] = {"source": "finalist", "continues": parent.trial.index}
    if lr != parent.trial.lr:
        why["window_lr"] = parent.trial.lr
    steps = second_window_steps(config, geometry)
    stop_above = None
    if config.divergence_stop and stop_reference is not None:
        stop_above = stop_reference * config.divergence_factor
    return Decision(
        geometry=geometry,
        stage=geometry.index,
        index=index,
        kind=SegmentKind.explore,
        lr=lr,
        steps=steps,
        start_step=geometry.start_step + geometry.tau_explore,
        horizon=geometry.tau,
        metric=geometry.explore_metric,
        report_every=max(1, steps // config.reports_per_explore),
        data_seed=data_seed(config, geometry.index, index),
        restore=candidate_checkpoint(geometry.index, parent.trial.index),
        save_end=candidate_checkpoint(geometry.index, index),
        discard=_candidate_discards(config, analysis),
        stop_above=stop_above,
        lr_end=0.0,
        lr_shape=LRShape.wsd,
        why=why,
    )


def _parent(
    config: ResolvedConfig, first: Sequence[CandidateAnalysis], second: CandidateAnalysis
) -> int:
    """The first-round candidate a second window continued: the finalists in the order
    their second windows ran."""
    held = _held_checkpoints(config, first)
    finalists = [j for j in _kept_so_far(config, first) or [] if j in held]
    return finalists[second.trial.index - config.k]


def _check_failed(
    config: ResolvedConfig, first: Sequence[CandidateAnalysis], second: CandidateAnalysis
) -> bool:
    """Whether a finalist's second window says its LR is unstable: it diverged, or (from
    a fresh model) it ended higher than its first window (both annealed, the second after
    more training) by more than their combined noise: the LR lost what the first window
    had made. From a trained model (``pretrained``) only divergence counts, as for the
    first round's windows: the second window holds a hotter LR than the first
    (``horizon_scale``), whose transient a pretrained model's loss shows first."""
    if second.diverged:
        return True
    if config.pretrained:
        return False
    parent = next(c for c in first if c.trial.index == _parent(config, first, second))

    def sd(c: CandidateAnalysis) -> float:
        return c.forecast.std if math.isfinite(c.forecast.std) else 0.0

    noise = math.hypot(sd(parent), sd(second))
    return second.forecast.prediction > parent.forecast.prediction + noise


def _next_finalist(config: ResolvedConfig, analysis: StageAnalysis) -> CandidateAnalysis | None:
    """The first-round candidate whose second window runs next (None: none left)."""
    if not _stage_checks(config, analysis.geometry):
        return None
    first = _first_round(config, analysis.candidates)
    if len(first) < config.k:
        return None
    # A later candidate that moved the stability edge down may make a state dropped
    # earlier one of the best: only the states still held run a second window.
    held = _held_checkpoints(config, first)
    finalists = [j for j in _kept_so_far(config, first) or [] if j in held]
    done = len(_second_round(config, analysis.candidates))
    if done >= len(finalists):
        return None
    return next(c for c in first if c.trial.index == finalists[done])


def _stage_end(geometry: StageGeometry, exploit: Trial) -> int:
    """The trajectory step where a stage ended: a training segment that continues a
    candidate starts ``tau - steps`` into the stage."""
    return geometry.start_step + geometry.tau - exploit.steps + exploit.trained


def _no_search(
    config: ResolvedConfig, geometry: StageGeometry, previous_lr: float, saved: bool = False
) -> Decision:
    source = "decay" if geometry.decay else "tail"
    return _exploit(config, geometry, previous_lr, 0, {"source": source}, saved=saved)


def next_segment(
    config: ResolvedConfig, trials: Sequence[Trial], optimizer: Optimizer
) -> Decision | StudyEnd:
    """Decide what the job trains next, from the study's whole history.

    ``trials`` must hold no open segment: an open one is handed out again, not decided.
    """
    if any(t.status is SegmentStatus.open for t in trials):
        raise ValueError("a segment is still open: hand it out again instead of deciding")
    tested = False
    if config.lr_bounds == "range_test":
        if not any(t.kind is SegmentKind.range_test for t in trials):
            first = stage_geometry(config, 0, 0, False)
            assert first is not None  # total_steps >= 1
            return _range_test_plan(config, first)
        config = search_config(config, trials)
        tested = True

    start_step = 0
    previous_lr: float | None = None
    stages = _group_by_stage(trials)
    for index, stage_trials in enumerate(stages[:-1]):
        trained = next((t for t in stage_trials if t.kind is SegmentKind.exploit), None)
        if trained is None:
            raise ValueError(
                f"history out of order: stage {stage_trials[0].stage} has no training "
                "segment but a later stage exists"
            )
        past = stage_geometry(config, index, start_step, previous_lr is not None)
        if past is None:
            raise ValueError(f"history out of order: stage {index} is beyond the budget")
        start_step = _stage_end(past, trained)
        previous_lr = trained.lr

    current = stages[-1] if stages else []
    index = len(stages) - 1 if stages else 0
    geometry = stage_geometry(config, index, start_step, previous_lr is not None)
    if geometry is None:  # cannot happen for a history this tuner wrote
        return StudyEnd(StudyStatus.completed, "the step budget is spent")

    exploit = next((t for t in current if t.kind is SegmentKind.exploit), None)
    if exploit is not None:
        if exploit.status is SegmentStatus.failed:
            return StudyEnd(StudyStatus.failed, f"stage {index} training segment failed")
        start_step = _stage_end(geometry, exploit)
        geometry = stage_geometry(config, index + 1, start_step, True)
        if geometry is None:
            return StudyEnd(StudyStatus.completed, f"trained {start_step} steps")
        if not geometry.search:
            return _no_search(config, geometry, exploit.lr)
        return _explore(
            config,
            geometry,
            analyze_stage(config, geometry, []),
            exploit.lr,
            _reference_loss(trials, [], geometry.explore_metric),
            optimizer,
        )

    # Stage 0 after a range test: its start state is saved already.
    saved = tested and index == 0
    if not geometry.search:
        if previous_lr is None:  # a budget too small to search: train at the range's centre
            previous_lr = math.sqrt(config.lr_min * config.lr_max)
        return _no_search(config, geometry, previous_lr, saved)
    if index == 0 and config.warm_start is not None:
        return _warm_first_stage(config, geometry, trials, current, optimizer)
    analysis = analyze_stage(config, geometry, current)
    if len(analysis.candidates) < config.k:
        reference = _reference_loss(trials, current, geometry.explore_metric)
        return _explore(config, geometry, analysis, previous_lr, reference, optimizer, saved)
    finalist = _next_finalist(config, analysis)
    if finalist is not None:
        reference = _reference_loss(trials, current, geometry.explore_metric)
        return _second_window(config, geometry, analysis, finalist, reference)
    lr, chosen, why = _choose(config, analysis, optimizer)
    return _exploit(config, geometry, lr, len(analysis.candidates), why, analysis, chosen, saved)


# --------------------------------------------------------------------------- priors


def _narrow_geometry(config: ResolvedConfig, geometry: StageGeometry) -> StageGeometry:
    """The first stage as the priors' narrow search sees it: shorter windows."""
    assert config.warm_start is not None
    window = warm_window(config.warm_start, geometry)
    every = max(1, geometry.explore_report_every * window // max(1, geometry.tau_explore))
    return dataclasses.replace(geometry, tau_explore=window, explore_report_every=every)


def _warm_split(
    config: ResolvedConfig, geometry: StageGeometry, current: Sequence[Trial]
) -> tuple[StageAnalysis, list[Trial]]:
    """The narrow search's analysis, and the stage's other trials (a fallback's full
    search), re-indexed from 0 as a search without priors would number them."""
    warm = config.warm_start
    assert warm is not None
    narrow = [t for t in current if is_warm(warm, t)]
    n = len(warm.candidates)
    rest = [
        dataclasses.replace(t, index=t.index - n)
        for t in current
        if t.kind is SegmentKind.explore and not is_warm(warm, t)
    ]
    return analyze_stage(config, _narrow_geometry(config, geometry), narrow), rest


def warm_verdict(config: ResolvedConfig, trials: Sequence[Trial]) -> tuple[Verdict | None, int]:
    """The priors' verdict on a study's history (None: the narrow search has not ended
    or there is none) and how many narrow candidates have finished."""
    warm = config.warm_start
    geometries = stage_geometries(config, trials)
    if warm is None or not geometries or not geometries[0].search:
        return None, 0
    current = [t for t in trials if t.stage == 0]
    analysis, _ = _warm_split(config, geometries[0], current)
    if len(analysis.candidates) < len(warm.candidates):
        return None, len(analysis.candidates)
    narrow = [c.trial for c in analysis.candidates]
    start = _reference_loss([], narrow, geometries[0].explore_metric)
    return assess(warm, analysis, start, config), len(analysis.candidates)


def _warm_first_stage(
    config: ResolvedConfig,
    geometry: StageGeometry,
    trials: Sequence[Trial],
    current: Sequence[Trial],
    optimizer: Optimizer,
) -> Decision:
    """The first stage of a study with priors: the narrow search around the priors' LR
    (``tuner/_priors.py``), then its training segment, or, when the priors do not fit,
    the full search a study without priors runs, its cost taken from the stage's
    training (:func:`._priors.fallback_skip`)."""
    warm = config.warm_start
    assert warm is not None
    n = len(warm.candidates)
    analysis, rest = _warm_split(config, geometry, current)
    narrow = _narrow_geometry(config, geometry)
    reference = _reference_loss(trials, current, geometry.explore_metric)
    if len(analysis.candidates) < n:
        index = len(analysis.candidates)
        why: dict[str, object] = {"source": "priors", "priors": list(warm.priors)}
        given = (warm.candidates[index], why)
        plan = _explore(config, narrow, analysis, None, reference, optimizer, given=given)
        return plan.model_copy(update={"geometry": geometry})
    verdict, _ = warm_verdict(config, trials)
    assert verdict is not None
    if verdict.fits:
        centre = next((c for c in analysis.candidates if c.trial.index == 0), None)
        chosen: CandidateAnalysis | None
        if warm.holds_centre and centre is not None:
            # The family's runs chose the centre; the narrow search only checked it.
            lr, chosen, why = centre.trial.lr, centre, {"source": "priors_centre", "index": 0}
        else:
            lr, chosen, why = _choose(config, analysis, optimizer, cold=False)
        why = {**why, "priors": "used", "reason": verdict.reason}
        # The narrow geometry: with continue_best the training continues the chosen
        # candidate's end state, its shorter window counted as kept steps.
        plan = _exploit(config, narrow, lr, n, why, analysis, chosen)
        return plan.model_copy(update={"geometry": geometry})
    full = analyze_stage(config, geometry, rest)
    note = {"priors": "fallback", "reason": verdict.reason}
    # The full search's candidates are numbered after the narrow ones: so are the end
    # states continue_best keeps of them.
    shifted = {
        candidate_checkpoint(geometry.index, j): candidate_checkpoint(geometry.index, j + n)
        for j in range(config.k + 1)
    }

    def shift(name: str | None) -> str | None:
        return shifted.get(name, name) if name is not None else None

    if len(full.candidates) < config.k:
        plan = _explore(config, geometry, full, None, reference, optimizer, saved=True)
        discard = tuple(shift(d) or d for d in plan.discard)
        if not full.candidates and config.continue_best:
            # The fallback's first candidate drops the narrow candidates' end states.
            held = _held_checkpoints(config, analysis.candidates)
            discard += tuple(candidate_checkpoint(geometry.index, j) for j in held)
        return plan.model_copy(
            update={
                "index": plan.index + n,
                "data_seed": data_seed(config, geometry.index, plan.index + n),
                "save_end": shift(plan.save_end),
                "discard": discard,
                "why": {**plan.why, **note},
            }
        )
    lr, chosen, why = _choose(config, full, optimizer)
    plan = _exploit(config, geometry, lr, n + len(full.candidates), {**why, **note}, full, chosen)
    window = warm_window(warm, geometry)
    skip = min(fallback_skip(config, geometry, window), plan.steps - 1)
    return plan.model_copy(
        update={
            "start_step": plan.start_step + skip,
            "steps": plan.steps - skip,
            "restore": shift(plan.restore),
            "discard": tuple(shift(d) or d for d in plan.discard),
            "why": (
                {**plan.why, "continues": plan.why["continues"] + n}
                if "continues" in plan.why
                else plan.why
            ),
        }
    )


def stage_geometries(config: ResolvedConfig, trials: Sequence[Trial]) -> list[StageGeometry]:
    """The geometry of every stage the history has reached."""
    result: list[StageGeometry] = []
    start_step = 0
    previous_lr: float | None = None
    for index, stage_trials in enumerate(_group_by_stage(trials)):
        geometry = stage_geometry(config, index, start_step, previous_lr is not None)
        if geometry is None:
            break
        result.append(geometry)
        exploit = next((t for t in stage_trials if t.kind is SegmentKind.exploit), None)
        if exploit is None:
            break
        start_step = _stage_end(geometry, exploit)
        previous_lr = exploit.lr
    return result


def range_test_charge(config: ResolvedConfig) -> int:
    """Steps the study's range test charges (0 without one)."""
    if config.lr_bounds != "range_test":
        return 0
    return config.range_test_steps


#: Stages an open-ended plan lists: enough to reach tau_max for any sane growth.
OPEN_ENDED_STAGES = 12


def plan_stages(config: ResolvedConfig) -> tuple[list[PlannedStage], bool]:
    """The study's plan from its config alone: every stage if it runs as planned (each
    stage's training ends at its planned length), and whether the plan is open-ended
    (no budget: the first stages, up to the first of tau_max steps)."""
    stages: list[PlannedStage] = []
    start_step = 0
    open_ended = config.total_steps is None
    while True:
        geometry = stage_geometry(config, len(stages), start_step, bool(stages))
        if geometry is None:
            break
        candidates = config.k if geometry.search else 0
        continued = geometry.tau_explore if config.continue_best and geometry.search else 0
        if _stage_checks(config, geometry):
            # The finalists' second windows; the chosen one's steps are trajectory too.
            second = second_window_steps(config, geometry)
            charge = (
                candidates * geometry.tau_explore
                + config.finalists * second
                + geometry.tau
                - continued
                - second
            )
            candidates += config.finalists
        else:
            charge = candidates * geometry.tau_explore + geometry.tau - continued
        if not stages and geometry.search and config.warm_start is not None:
            # The priors' narrow search (a fallback's full search comes out of the
            # stage's training: fallback_skip).
            candidates = len(config.warm_start.candidates)
            geometry = _narrow_geometry(config, geometry)
            continued = geometry.tau_explore if config.continue_best else 0
            charge = candidates * geometry.tau_explore + geometry.tau - continued
        if not stages:
            charge += range_test_charge(config)
        stages.append(PlannedStage(geometry, candidates, charge))
        start_step += geometry.tau
        if open_ended and (geometry.tau >= config.tau_max or len(stages) >= OPEN_ENDED_STAGES):
            break
    return stages, open_ended


def planned_charge(config: ResolvedConfig) -> int:
    """Steps the study charges if it runs as planned: every candidate, the range test
    and the training (a finite plan needs ``total_steps``)."""
    stages, open_ended = plan_stages(config)
    if open_ended:
        raise ValueError("an open-ended study (no total_steps) has no planned charge")
    return sum(stage.charge for stage in stages)


def with_offline_steps(config: ResolvedConfig, offline_steps: int) -> ResolvedConfig:
    """The plan left after ``offline_steps`` trained on fallback segments (the job could
    not reach the service): ``total_steps`` and ``charged_steps`` shortened by them, so
    that the job still ends on its budget. The stages decided before keep their sizes;
    the later ones, the decay included, fit in what is left. A study without a budget is
    unchanged."""
    if offline_steps <= 0 or config.total_steps is None:
        return config
    update: dict[str, int] = {"total_steps": max(1, config.total_steps - offline_steps)}
    if config.charged_steps is not None:
        update["charged_steps"] = max(1, config.charged_steps - offline_steps)
    return config.model_copy(update=update)


def offline_steps_before(outage_after_seqs: Sequence[tuple[int | None, int]], seq: int) -> int:
    """Offline steps the decision of segment ``seq`` knew of: those of the outages
    reported after segment ``after_seq`` (``(after_seq, steps)`` pairs; None: before the
    first segment), which the job reports before it asks for the next one."""
    return sum(
        steps for after, steps in outage_after_seqs if (-1 if after is None else after) < seq
    )


def fit_charged_budget(config: ResolvedConfig) -> ResolvedConfig:
    """The config with ``total_steps`` fitted to ``charged_steps``, the job's whole budget.

    Without ``charged_steps``: ``config`` itself. With ``total_steps`` too: ``config``, if
    its plan charges at most the budget. Otherwise ``total_steps`` becomes the longest
    trajectory (found by bisection) whose plan fits the budget: the search's candidates
    and a range test come out of it, so the study ends, decay included, within the
    compute the job has. Raises ValueError when nothing fits.
    """
    budget = config.charged_steps
    if budget is None:
        return config
    if config.total_steps is not None:
        charge = planned_charge(config)
        if charge > budget:
            raise ValueError(
                f"total_steps = {config.total_steps} plans {charge} charged steps, more "
                f"than charged_steps = {budget}: lower total_steps, or leave it out and "
                "the service fits it to the budget"
            )
        return config
    base = config.model_dump(mode="json")
    # The trajectory is at most the budget: a config whose plan could have too many
    # stages there is refused as such, not shrunk to fewer stages without a word.
    check_stage_count(config, budget)

    def fitted(steps: int) -> ResolvedConfig | None:
        try:
            candidate = ResolvedConfig.model_validate({**base, "total_steps": steps})
        except ValueError:  # e.g. too few steps for the budget planner's first window
            return None
        return candidate if planned_charge(candidate) <= budget else None

    # A plan charges at least its trajectory, so total_steps <= budget.
    low, high, best = 0, budget + 1, None
    while high - low > 1:
        middle = (low + high) // 2
        candidate = fitted(middle)
        if candidate is None:
            high = middle
        else:
            low, best = middle, candidate
    if best is None:
        raise ValueError(
            f"charged_steps = {budget} is too small for any plan of this config: raise "
            "it, or make the search cheaper (fewer candidates k, a lower explore_ratio)"
        )
    return best
