"""Priors: what a study takes from earlier studies of its family, and whether it fits.

Pure functions, in three steps:

1. :func:`summarize_prior` turns one earlier study (its stored config and history) into a
   compact entry: its config's fingerprint, its first stage's chosen LR, start loss and
   candidates' forecasts, its final loss. :func:`prior_summary` puts the entries into the
   summary the service stores with a new study, content-hashed.
2. :func:`warm_start` decides, from that summary and the new study's config, the narrow
   first search (a :class:`WarmStart` the resolved config keeps): three candidates around
   the matching priors' LR, each over a shorter window. Priors whose fingerprint differs
   from the study's are not used; with none left, the study searches as without priors.
3. :func:`assess` judges the narrow search once it has run: the priors fit when the
   centre LR trained without diverging, the stage started near the priors' start loss,
   the centre's forecast is near the priors' and no neighbour beat the centre beyond the
   forecasts' noise. A misfit falls back to the full search (:func:`fallback_skip` is what
   that costs the trajectory, so that the study still ends within its budget).

The tuner calls these from one hook in its first stage; nothing here reads a clock, a
store or another study.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from stagelr.models import SegmentKind, SegmentStatus

from ._stability import stability_cap, window_unstable
from ._types import Optimizer, StageAnalysis, StageGeometry, Trial
from .config import ResolvedConfig, WarmStart

__all__ = [
    "FINGERPRINT_FIELDS",
    "SUMMARY_VERSION",
    "Verdict",
    "assess",
    "fallback_skip",
    "fingerprint",
    "is_warm",
    "prior_summary",
    "summarize_prior",
    "warm_start",
    "warm_window",
]

#: The version of the stored summary's layout (2: an entry's ``first_reading``).
SUMMARY_VERSION = 2
#: The config fields that must be equal for a prior to fit: what the search and its
#: forecasts mean (the LR range, the budget, the stage geometry, the reports). The seed
#: and the names are not among them; with a charged budget, total_steps (fitted to it,
#: and so different with and without a warm start) is not either.
FINGERPRINT_FIELDS = (
    "preset",
    "lr_min",
    "lr_max",
    "charged_steps",
    "tau0",
    "tau_max",
    "tau_growth",
    "explore_ratio",
    "k",
    "forecast",
    "selection",
    "metric_schedule",
    "reports_per_explore",
    "planner",
    "budget_stages",
    "decay_fraction",
    "decay_shape",
    "continue_best",
    "lr_bounds",
)
#: The narrow search's neighbours sit this many decades either side of the centre.
WARM_SPAN_DECADES = 0.3
#: Each narrow candidate trains this fraction of the stage's tau' steps.
WARM_WINDOW = 0.5
#: A stage-start loss beyond this factor of the priors' (either way) does not fit.
START_LOSS_RATIO = 2.0
#: A centre forecast further than this fraction from the priors' (plus twice its sd)
#: does not fit.
FORECAST_TOLERANCE = 0.5
#: Priors whose chosen LRs span at least this factor have measured how the whole run's
#: final loss depends on the LR: the centre is where a GP over those final losses is
#: lowest. Half the narrow search's step: a family whose jobs trained different narrow
#: candidates spans it.
FINAL_LOSS_SPREAD = 10 ** (WARM_SPAN_DECADES / 2)
#: Points of the grid the final-loss GP is minimized on.
FINAL_LOSS_GRID = 61
#: Priors that all held one LR, at least this many, are a family settled there: it is
#: the centre (no step away to measure).
SETTLED_PRIORS = 3


def fingerprint(config: ResolvedConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The workload-independent facts of a config two studies must share for one to be
    the other's prior (JSON values)."""
    stored = config.to_stored() if isinstance(config, ResolvedConfig) else dict(config)
    found = {name: stored.get(name) for name in FINGERPRINT_FIELDS}
    if stored.get("charged_steps") is None:
        found["total_steps"] = stored.get("total_steps")
    return found


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def summarize_prior(
    study_id: int, name: str, config: Mapping[str, Any], trials: Sequence[Trial]
) -> dict[str, Any]:
    """One prior study's entry in a summary: what the tuner needs of it, JSON values."""
    stage0 = [t for t in trials if t.stage == 0]
    # The search's own windows: a finalist's second window starts from a trained state,
    # so neither its first reading nor its score compares with a window from the start.
    checked = ResolvedConfig.stored(config).checks_choice
    explores = [
        t
        for t in stage0
        if t.kind is SegmentKind.explore
        and t.status is not SegmentStatus.open
        and not (checked and t.index >= config["k"])
    ]
    exploit = next((t for t in stage0 if t.kind is SegmentKind.exploit), None)
    firsts = [
        t.observations[0][1]
        for t in explores
        if t.observations and math.isfinite(t.observations[0][1]) and t.observations[0][1] > 0
    ]
    candidates = [
        [t.lr, _finite(t.forecast.prediction)] for t in explores if t.forecast is not None
    ]
    exploits = [t for t in trials if t.kind is SegmentKind.exploit and t.observations]
    final = exploits[-1].observations[-1][1] if exploits else None
    return {
        "id": study_id,
        "name": name,
        "fingerprint": fingerprint(config),
        "chosen_lr": exploit.lr if exploit is not None else None,
        "start_loss": min(firsts) if firsts else None,
        "first_reading": _first_reading(explores, exploit.lr) if exploit is not None else None,
        "candidates": candidates,
        "final_loss": _finite(final),
    }


def _first_reading(explores: Sequence[Trial], lr: float) -> list[float] | None:
    """``[step, loss, lr]`` of the first report of the candidate nearest ``lr`` (in
    log-LR; the chosen one itself under ``continue_best``), None: none reported."""
    reported = [
        t
        for t in explores
        if t.observations and math.isfinite(t.observations[0][1]) and t.observations[0][1] > 0
    ]
    if not reported or lr <= 0:
        return None
    nearest = min(reported, key=lambda t: (abs(math.log(t.lr / lr)), t.index))
    step, loss = nearest.observations[0]
    return [step, loss, nearest.lr]


def _start_reading(fitting: Sequence[Mapping[str, Any]]) -> tuple[int, float] | None:
    """The priors' first readings at the step most of them reported first (the earlier
    step on a tie), as ``(step, median loss)``; None: no prior holds one (summaries
    stored before readings were kept)."""
    readings = [s["first_reading"] for s in fitting if s.get("first_reading")]
    if not readings:
        return None
    steps = [int(r[0]) for r in readings]
    step = min(set(steps), key=lambda s: (-steps.count(s), s))
    return step, statistics.median(float(r[1]) for r in readings if int(r[0]) == step)


def prior_summary(
    entries: Sequence[Mapping[str, Any]], family: str | None, requested: Sequence[int]
) -> dict[str, Any]:
    """The summary stored with a new study: its priors' entries (newest first) and the
    sha256 of their canonical JSON."""
    studies = [dict(e) for e in entries]
    canonical = json.dumps(studies, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return {
        "version": SUMMARY_VERSION,
        "family": family,
        "requested": list(requested),
        "hash": hashlib.sha256(canonical.encode()).hexdigest(),
        "studies": studies,
    }


def _median_log(values: Sequence[float]) -> float:
    return math.exp(statistics.median(math.log(v) for v in values))


def _unit(config: ResolvedConfig, lr: float) -> float:
    return math.log(lr / config.lr_min) / math.log(config.lr_max / config.lr_min)


def _from_unit(config: ResolvedConfig, x: float) -> float:
    return float(config.lr_min * (config.lr_max / config.lr_min) ** min(1.0, max(0.0, x)))


def final_loss_centre(
    config: ResolvedConfig, fitting: Sequence[Mapping[str, Any]], optimizer: Optimizer
) -> float | None:
    """The LR where a GP over the priors' (chosen LR, final loss) pairs predicts the
    lowest final loss, or None when the priors do not span :data:`FINAL_LOSS_SPREAD`.

    A search window, however it is scored, answers a shorter run's question: the best
    peak LR moves with the run's length, by up to five times either way between 4% and
    all of a run on the benchmark's workloads (docs/tuner.md). A prior's final loss is
    the answer for the whole run at the LR it held. The GP learns the seed noise; the
    minimum is taken within one narrow-search step of the LRs the priors held, so a
    family moves at most that far beyond what it has measured.

    Where the LR held nearest that minimum is the hottest (coolest) the priors held, and
    the GP puts that edge below the best LR inside it beyond noise
    (:func:`_edge_beats_inside`), the best the family has measured is its edge, and the
    centre is a whole step beyond it: a line search that expands while its best point is
    at the edge of what it measured. A GP with a constant mean reverts to it away from
    the data, so its minimum alone stays next to the best LR held and a family would
    never measure past it. An edge that leads by no more than noise keeps the GP's
    minimum."""
    points = [
        (float(s["chosen_lr"]), float(s["final_loss"]))
        for s in fitting
        if s.get("final_loss") is not None and math.isfinite(s["final_loss"])
    ]
    lrs = [lr for lr, _ in points]
    if len(points) >= SETTLED_PRIORS and max(lrs) / min(lrs) < FINAL_LOSS_SPREAD:
        # The family has settled: its recent jobs all held this LR (a step it tried
        # away from it is older than the priors read).
        return _median_log(lrs)
    if len(points) < 2 or max(lrs) / min(lrs) < FINAL_LOSS_SPREAD:
        return None
    step = 10**WARM_SPAN_DECADES
    low = _unit(config, max(config.lr_min, min(lrs) / step))
    high = _unit(config, min(config.lr_max, max(lrs) * step))
    grid = [low + (high - low) * i / (FINAL_LOSS_GRID - 1) for i in range(FINAL_LOSS_GRID)]
    post = optimizer.posterior(
        [_unit(config, lr) for lr in lrs], [loss for _, loss in points], None, grid
    )
    best = min(range(len(grid)), key=lambda i: (post.mean[i], i))
    centre = _from_unit(config, grid[best])
    # The measured LR nearest the minimum; LRs within FINAL_LOSS_SPREAD of the hottest
    # (coolest) held count as that edge (jobs centred there hold LRs a rounding apart).
    nearest = min(lrs, key=lambda lr: (abs(math.log(lr / centre)), lr))
    if nearest * FINAL_LOSS_SPREAD > max(lrs):
        edge = [lr for lr in lrs if lr * FINAL_LOSS_SPREAD > max(lrs)]
        if _edge_beats_inside(config, points, edge, optimizer):
            return min(config.lr_max, max(lrs) * step)
    elif nearest / FINAL_LOSS_SPREAD < min(lrs):
        edge = [lr for lr in lrs if lr / FINAL_LOSS_SPREAD < min(lrs)]
        if _edge_beats_inside(config, points, edge, optimizer):
            return max(config.lr_min, min(lrs) / step)
    return centre


def _edge_beats_inside(
    config: ResolvedConfig,
    points: Sequence[tuple[float, float]],
    edge: Sequence[float],
    optimizer: Optimizer,
) -> bool:
    """Whether the GP over the priors' final losses puts the best LR of the family's
    ``edge`` below the best LR inside it by more than the two values' combined sd.

    Where the family has repeated an LR, the GP's noise is the seeds' spread, and an
    edge that leads by less is as likely luck as a slope: a further step beyond it then
    costs a run, and a control that reads a partner's priors steps further still. The
    first jobs, each at its own LR, are the GP's only data, so a clear slope leads."""
    inside = sorted({lr for lr, _ in points if lr not in edge})
    held = sorted(set(edge)) + inside
    post = optimizer.posterior(
        [_unit(config, lr) for lr, _ in points],
        [loss for _, loss in points],
        None,
        [_unit(config, lr) for lr in held],
    )
    at = dict(zip(held, zip(post.mean, post.std, strict=True), strict=True))
    best_edge = min((at[lr] for lr in sorted(set(edge))), key=lambda ms: ms[0])
    best_inside = min((at[lr] for lr in inside), key=lambda ms: ms[0])
    return bool(best_inside[0] - best_edge[0] > math.hypot(best_edge[1], best_inside[1]))


#: How far outside its range (relative) an LR a study held may lie and still be in it: a
#: centre computed in log space and stepped back lands on a range end by rounding alone
#: (0.07999999999999999 held against ``lr_min`` 0.08).
RANGE_ROUNDING = 1e-9


def _in_range(config: ResolvedConfig, lr: float) -> bool:
    return config.lr_min * (1 - RANGE_ROUNDING) <= lr <= config.lr_max * (1 + RANGE_ROUNDING)


def warm_start(
    config: ResolvedConfig, summary: Mapping[str, Any], optimizer: Optimizer
) -> WarmStart | None:
    """The narrow first search the priors allow, or None (a full search): no prior of
    the same fingerprint with a chosen LR inside the study's range, or a search that
    a range test makes different. Its centre is :func:`final_loss_centre` where the
    priors held LRs far enough apart, else the median of their chosen LRs. Under
    ``continue_best`` the training segment continues the chosen narrow candidate's end
    state (its shorter window counts as kept steps)."""
    if config.lr_bounds == "range_test":
        return None
    mine = fingerprint(config)
    fitting = [
        s
        for s in summary.get("studies", [])
        if s.get("fingerprint") == mine
        and s.get("chosen_lr") is not None
        and _in_range(config, s["chosen_lr"])
    ]
    if not fitting:
        return None
    fitted = final_loss_centre(config, fitting, optimizer)
    step = 10**WARM_SPAN_DECADES
    basis: Literal["final_loss", "explore"]
    if fitted is not None:
        centre, basis = fitted, "final_loss"
    else:
        # One LR measured: the next job measures a step cooler (the flat side of a
        # run's loss against its LR; the hot side is steep), and the GP then has two.
        centre = max(config.lr_min, _median_log([s["chosen_lr"] for s in fitting]) / step)
        basis = "explore"
    candidates = (
        centre,
        max(config.lr_min, centre / step),
        min(config.lr_max, centre * step),
    )
    starts = [s["start_loss"] for s in fitting if s.get("start_loss") is not None]
    winners = [w for w in (_window_winner(s) for s in fitting) if w is not None]
    predictions: list[float] = []
    # A window-end score is the loss where a window ended: the narrow search's shorter
    # windows end higher than the priors' full ones, so there is no forecast to compare
    # (the start loss, the neighbours and the stability edge still judge the fit).
    for s in fitting if config.forecast != "window_end" else ():
        chosen = [p for lr, p in s.get("candidates", []) if lr == s["chosen_lr"] and p is not None]
        predictions.extend(chosen[:1])
    return WarmStart(
        summary_hash=str(summary["hash"]),
        priors=tuple(int(s["id"]) for s in fitting),
        lr=centre,
        candidates=tuple(dict.fromkeys(candidates)),  # an edge of the range: no duplicate
        window=WARM_WINDOW,
        start_loss=statistics.median(starts) if starts else None,
        start_reading=_start_reading(fitting),
        prediction=statistics.median(predictions) if predictions else None,
        basis=basis,
        window_lr=_median_log(winners) if winners else None,
    )


def _window_winner(prior: Mapping[str, Any]) -> float | None:
    """The LR of a prior's first-stage candidate whose window scored lowest."""
    scored = [(p, lr) for lr, p in prior.get("candidates", []) if p is not None and lr > 0]
    return min(scored)[1] if scored else None


def warm_window(warm: WarmStart, geometry: StageGeometry) -> int:
    """Steps of one narrow candidate."""
    return max(1, round(geometry.tau_explore * warm.window))


def is_warm(warm: WarmStart, trial: Trial) -> bool:
    """Whether a stage-0 trial is one of the narrow search's candidates."""
    return trial.kind is SegmentKind.explore and trial.index < len(warm.candidates)


def _reading_at(trial: Trial, step: int) -> float | None:
    """The trial's report at ``step``, or at the nearest step it reported (the earlier on
    a tie); None: no finite positive report."""
    usable = [(s, v) for s, v in trial.observations if math.isfinite(v) and v > 0]
    if not usable:
        return None
    return min(usable, key=lambda sv: (abs(sv[0] - step), sv[0]))[1]


@dataclass(frozen=True)
class Verdict:
    """The narrow search judged: whether the priors fit, and why."""

    fits: bool
    reason: str


def assess(
    warm: WarmStart,
    analysis: StageAnalysis,
    start_loss: float | None,
    config: ResolvedConfig | None = None,
) -> Verdict:
    """Whether the priors fit the study, from its narrow search (``analysis``: the
    finished narrow candidates, the centre first) and its stage-start loss. With
    annealed probes the stability edge (``tuner/_stability.py``) holds here too: a centre
    whose window was unstable, or that sits above the edge its neighbours mark, does not
    fit."""
    centre = next((c for c in analysis.candidates if c.trial.index == 0), None)
    if centre is None or centre.diverged:
        return Verdict(False, f"the priors' LR {warm.lr:.3g} diverged")
    if config is not None and config.probe == "anneal":
        if window_unstable(config, centre):
            return Verdict(False, f"the priors' LR {warm.lr:.3g} was unstable")
        edge = stability_cap(config, analysis.candidates)
        if centre.trial.lr > edge:
            return Verdict(
                False, f"the priors' LR {warm.lr:.3g} is above the stability edge {edge:.3g}"
            )
    if warm.start_reading is not None:
        # Like with like: the loss after the same steps from the job's start, at about
        # the same LR. The lowest first report of any candidate (what start_loss holds)
        # is the hottest one's where the first steps are fast, and the narrow search's
        # windows report at other steps: compared with each other, those differ by more
        # than a workload's scale on the same workload.
        step, theirs = warm.start_reading
        ours = _reading_at(centre.trial, step)
        if ours is not None and not 1 / START_LOSS_RATIO <= ours / theirs <= START_LOSS_RATIO:
            return Verdict(
                False,
                f"the loss after {step} steps at the priors' LR, {ours:.4g}, is far from "
                f"the priors' {theirs:.4g}",
            )
    elif warm.start_loss is not None and start_loss is not None:
        ratio = start_loss / warm.start_loss
        if not 1 / START_LOSS_RATIO <= ratio <= START_LOSS_RATIO:
            return Verdict(
                False,
                f"the first loss {start_loss:.4g} is far from the priors' {warm.start_loss:.4g}",
            )
    sd = centre.forecast.std if math.isfinite(centre.forecast.std) else 0.0
    if warm.prediction is not None:
        gap = abs(centre.objective - warm.prediction)
        allowed = FORECAST_TOLERANCE * max(abs(warm.prediction), abs(centre.objective)) + 2 * sd
        if gap > allowed:
            return Verdict(
                False,
                f"the forecast at the priors' LR, {centre.objective:.4g}, disagrees with "
                f"theirs, {warm.prediction:.4g}",
            )
    usable = [c for c in analysis.candidates if not c.diverged]
    lowest = min(usable, key=lambda c: (c.objective, c.trial.index))
    if warm.holds_centre:
        # The centre is where the family's whole runs point. A neighbour that wins its
        # short window beyond noise is the window's horizon speaking when it sits on the
        # side where the priors' own windows ended lowest; on the other side, or where
        # theirs leaned nowhere, the workload is not theirs.
        beaten = _beaten_by(centre, usable)
        if beaten is not None:
            side = "hotter" if beaten.trial.lr > centre.trial.lr else "cooler"
            lean = _lean(warm, centre.trial.lr)
            if lean != side:
                where = "nowhere" if lean is None else f"{lean}, to {warm.window_lr:.3g}"
                return Verdict(
                    False,
                    f"a {side} LR ({beaten.trial.lr:.3g}) beat the centre beyond noise, where "
                    f"the priors' windows leaned {where}",
                )
        why = (
            "the priors' final losses put the centre at"
            if warm.basis == "final_loss"
            else "the priors held one LR; the centre, a step cooler, is"
        )
        return Verdict(
            True,
            f"{why} {warm.lr:.3g}; its window was stable and the stage started near "
            "their start loss",
        )
    if lowest is not centre:
        other = lowest.forecast.std if math.isfinite(lowest.forecast.std) else 0.0
        if centre.objective - lowest.objective > math.sqrt(sd**2 + other**2):
            side = "hotter" if lowest.trial.lr > centre.trial.lr else "cooler"
            return Verdict(
                False,
                f"a {side} LR ({lowest.trial.lr:.3g}) beat the priors' LR beyond noise",
            )
    return Verdict(
        True, f"no LR of the narrow search beat the priors' LR {warm.lr:.3g} beyond noise"
    )


def _beaten_by(centre: Any, usable: Sequence[Any]) -> Any:
    """The candidate whose score beat the centre's by more than their combined sd (the
    lowest such), or None."""
    lowest = min(usable, key=lambda c: (c.objective, c.trial.index))
    if lowest is centre:
        return None
    sd = centre.forecast.std if math.isfinite(centre.forecast.std) else 0.0
    other = lowest.forecast.std if math.isfinite(lowest.forecast.std) else 0.0
    return lowest if centre.objective - lowest.objective > math.sqrt(sd**2 + other**2) else None


def _lean(warm: WarmStart, centre_lr: float) -> str | None:
    """Which side of the centre the priors' windows ended lowest on (None: within half a
    narrow step of it, or unknown)."""
    if warm.window_lr is None:
        return None
    ratio = warm.window_lr / centre_lr
    half = 10 ** (WARM_SPAN_DECADES / 2)
    if ratio >= half:
        return "hotter"
    if ratio <= 1 / half:
        return "cooler"
    return None


def fallback_skip(config: ResolvedConfig, geometry: StageGeometry, window: int = 0) -> int:
    """Trajectory steps a fallback's full search takes from the first stage's training:
    the plan charged only the narrow search, so the full one comes out of the stage
    (the training starts this many steps into it) and the study ends within its budget.
    Under ``continue_best`` the plan counted a narrow window (``window`` steps) as kept
    and the training continues a full window instead, so the difference is already
    paid. At most half the stage; without a charged budget the search comes on top, as
    always: nothing."""
    if config.charged_steps is None:
        return 0
    cost = config.k * geometry.tau_explore
    if config.continue_best:
        cost -= geometry.tau_explore - window
    return max(0, min(cost, geometry.tau // 2))
