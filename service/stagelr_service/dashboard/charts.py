"""The dashboard's charts: a study's LR schedule, its loss curves, and each stage's search.

Each function takes plain records or wire models and returns one ``<svg>``. The classes
on the marks are the contract with the CSS file and with the browser tests:

- ``circle.chosen`` (one per exploit segment) and ``circle.candidate`` (one per explore
  segment) in the LR schedule;
- ``circle.obs.exploit`` / ``circle.obs.explore`` (one per finite loss a segment reported
  on its own metric) in the loss chart;
- ``polyline.posterior-mean``, ``polygon.band``, ``circle.cand`` (one per candidate the GP
  saw) and ``line.chosen-lr`` in a stage's BO chart;
- ``circle.cand-obs`` (one per finite loss of a candidate), ``polyline.fit`` (one per
  candidate with a fitted curve) and ``circle.prediction`` in a stage's fits chart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from markupsafe import Markup

from stagelr.models import SegmentKind, SegmentStatus, StageDetail

from ..forecast import forecast_curve
from ..store.records import ObservationRecord, SegmentRecord, StageRecord
from ..tuner import ResolvedConfig
from .plots import Figure, fmt_number, nice_domain

__all__ = ["fits_chart", "loss_chart", "lr_schedule_chart", "posterior_chart", "sparkline"]

#: Colour classes for candidates (c0..c9 in the CSS), reused past ten.
PALETTE_SIZE = 10


def colour(index: int) -> str:
    """The colour class of candidate ``index``."""
    return f"c{index % PALETTE_SIZE}"


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def _loss_axis(focus: Sequence[float], rest: Sequence[float]) -> tuple[tuple[float, float], bool]:
    """A y domain for losses: spanning ``focus`` (and ``rest`` below its top; what is
    above is clipped), on a log axis when the positive values span over a decade."""
    focus = _finite(focus) or _finite(rest)
    if not focus:
        return (0.0, 1.0), False
    top = max(focus)
    values = focus + [v for v in _finite(rest) if v <= top]
    lo, hi = min(values), max(values)
    if lo > 0 and hi / lo >= 10:
        return (lo / 1.15, hi * 1.15), True
    return nice_domain(values), False


def _x_end(
    config: ResolvedConfig, segments: Sequence[SegmentRecord], stages: Sequence[StageRecord]
) -> float:
    ends = [float(config.total_steps or 0)]
    ends += [float(s.start_step + s.tau) for s in stages]
    ends += [float(s.start_step + s.steps) for s in segments if s.kind is SegmentKind.exploit]
    return max(ends + [1.0])


def lr_schedule_chart(
    config: ResolvedConfig,
    segments: Sequence[SegmentRecord],
    stages: Sequence[StageRecord],
    forecasts: Mapping[int, float | None] | None = None,
) -> Markup:
    """The chosen LR per stage over training steps (a step line, a dot per stage) and
    the candidates each stage's search tried (dots spread across the stage, in order)."""
    fig = Figure(
        width=960,
        height=260,
        x_domain=(0.0, _x_end(config, segments, stages)),
        y_domain=(config.lr_min, config.lr_max),
        y_log=True,
        x_label="training step",
        y_label="learning rate",
        label="Learning-rate schedule",
        css_class="lr-schedule",
    )
    by_index = {s.index: s for s in stages}
    for stage in stages:
        fig.vline(stage.start_step, "stage-edge", title=f"stage {stage.index} starts")
    exploits = [s for s in segments if s.kind is SegmentKind.exploit]
    line: list[tuple[float, float]] = []
    for seg in exploits:
        line += [(seg.start_step, seg.lr), (seg.start_step + seg.steps, seg.lr)]
    fig.polyline(line, "schedule")
    k = max(config.k, 1)
    forecasts = forecasts or {}
    for seg in segments:
        if seg.kind is not SegmentKind.explore:
            continue
        own = by_index.get(seg.stage)
        tau = own.tau if own else seg.horizon
        x = seg.start_step + tau * (min(seg.index, k - 1) + 0.5) / k
        predicted = forecasts.get(seg.id)
        note = f", forecast {fmt_number(predicted)}" if predicted is not None else ""
        fig.circle(
            x,
            seg.lr,
            f"candidate {seg.status.value}",
            r=3.2,
            title=f"stage {seg.stage}, candidate {seg.index}: lr {fmt_number(seg.lr)} "
            f"({seg.status.value}{note})",
            data={"segment": seg.id, "stage": seg.stage, "index": seg.index, "lr": seg.lr},
        )
    for seg in exploits:
        fig.circle(
            seg.start_step + seg.steps / 2,
            seg.lr,
            f"chosen {seg.status.value}",
            r=4.5,
            title=f"stage {seg.stage}: trained at lr {fmt_number(seg.lr)} "
            f"for {seg.steps} steps from step {seg.start_step}",
            data={"segment": seg.id, "stage": seg.stage, "lr": seg.lr},
        )
    return fig.render()


def _own_losses(
    seg: SegmentRecord, observations: Mapping[int, Sequence[ObservationRecord]]
) -> list[tuple[int, float]]:
    return [
        (o.step, o.value)
        for o in observations.get(seg.id, ())
        if o.metric is seg.metric and math.isfinite(o.value)
    ]


def loss_chart(
    config: ResolvedConfig,
    segments: Sequence[SegmentRecord],
    stages: Sequence[StageRecord],
    observations: Mapping[int, Sequence[ObservationRecord]],
) -> Markup:
    """Every reported loss over training steps: the kept trajectory (exploit segments)
    as a dark line, each search trial (explore segments) as a faint one."""
    series = [(seg, _own_losses(seg, observations)) for seg in segments]
    focus = [v for seg, pts in series if seg.kind is SegmentKind.exploit for _, v in pts]
    calm = [
        v
        for seg, pts in series
        if seg.kind is SegmentKind.explore and seg.status is not SegmentStatus.diverged
        for _, v in pts
    ]
    every = [v for _, pts in series for _, v in pts]
    domain, log = _loss_axis(focus or calm, every)
    metrics = sorted({seg.metric.value for seg in segments})
    fig = Figure(
        width=960,
        height=300,
        x_domain=(0.0, _x_end(config, segments, stages)),
        y_domain=domain,
        y_log=log,
        x_label="training step",
        y_label=" / ".join(metrics) or "loss",
        label="Loss over training steps",
        css_class="losses",
    )
    for stage in stages:
        fig.vline(stage.start_step, "stage-edge", title=f"stage {stage.index} starts")
    # Search trials first, so the kept trajectory is drawn on top.
    for kind in (SegmentKind.explore, SegmentKind.exploit):
        for seg, pts in series:
            if seg.kind is not kind:
                continue
            status = seg.status.value
            fig.polyline(
                [(seg.start_step + s, v) for s, v in pts],
                f"line {kind.value} {status}",
                data={"segment": seg.id},
            )
            for step, value in pts:
                fig.circle(
                    seg.start_step + step,
                    value,
                    f"obs {kind.value} {status}",
                    r=2.4 if kind is SegmentKind.exploit else 1.8,
                    title=f"{kind.value} (stage {seg.stage}, lr {fmt_number(seg.lr)}) "
                    f"step {seg.start_step + step}: {fmt_number(value, 4)}",
                    data={
                        "segment": seg.id,
                        "stage": seg.stage,
                        "step": seg.start_step + step,
                        "value": value,
                    },
                )
    return fig.render()


def posterior_chart(config: ResolvedConfig, detail: StageDetail) -> Markup:
    """A stage's BO picture over log-LR: the GP posterior mean with a two-sigma band,
    the candidates at the value the GP saw (their forecast, error bar one sd), and the
    chosen LR."""
    means = [p.mean for p in detail.posterior]
    seen = [c.objective for c in detail.candidates if c.objective is not None]
    # What the GP saw sets the axis: a diverged candidate's own forecast (often far off)
    # is in its tooltip and the table, its stand-in value is on the chart.
    core = nice_domain(means + seen, pad=0.1)
    span = core[1] - core[0]
    # The band widens far from the data; show it, but never at the expense of the points.
    band_lo = min([p.mean - 2 * p.std for p in detail.posterior] or [core[0]])
    band_hi = max([p.mean + 2 * p.std for p in detail.posterior] or [core[1]])
    domain = (max(band_lo, core[0] - 0.5 * span), min(band_hi, core[1] + 0.5 * span))
    domain = (min(domain[0], core[0]), max(domain[1], core[1]))
    fig = Figure(
        width=470,
        height=250,
        x_domain=(config.lr_min, config.lr_max),
        y_domain=domain,
        x_log=True,
        x_label="learning rate",
        y_label="forecast loss",
        label=f"Stage {detail.index}: GP posterior over log-LR",
        css_class="posterior",
    )
    if detail.posterior:
        upper = [(p.lr, p.mean + 2 * p.std) for p in detail.posterior]
        lower = [(p.lr, p.mean - 2 * p.std) for p in reversed(detail.posterior)]
        fig.polygon(upper + lower, "band")
        fig.polyline([(p.lr, p.mean) for p in detail.posterior], "posterior-mean")
    if detail.chosen_lr is not None:
        fig.vline(
            detail.chosen_lr,
            "chosen-lr",
            title=f"chosen lr {fmt_number(detail.chosen_lr)}",
            data={"lr": detail.chosen_lr},
        )
    for cand in detail.candidates:
        fc = cand.forecast
        y = cand.objective
        if y is None:
            continue
        stand_in = fc is None or fc.prediction is None or not math.isclose(fc.prediction, y)
        if fc is not None and fc.prediction is not None and fc.std is not None and not stand_in:
            fig.segment(
                cand.lr,
                fc.prediction - fc.std,
                cand.lr,
                fc.prediction + fc.std,
                f"errbar {colour(cand.index)}",
            )
        if fc is not None and fc.prediction is not None:
            note = f"forecast {fmt_number(fc.prediction, 4)} ± {fmt_number(fc.std or 0.0, 2)}"
        else:
            note = "no finite forecast"
        if stand_in:
            note += f"; the GP saw a stand-in value, {fmt_number(y, 4)}"
        fig.circle(
            cand.lr,
            y,
            f"cand {colour(cand.index)} {cand.status.value}",
            r=4.0,
            title=f"candidate {cand.index}: lr {fmt_number(cand.lr)}, {note}",
            data={
                "index": cand.index,
                "lr": cand.lr,
                "objective": y,
                "segment": cand.segment_id,
            },
        )
    return fig.render()


def fits_chart(detail: StageDetail, points: int = 80) -> Markup:
    """Each candidate's observed losses within its trial and its fitted forecast curve
    out to the stage horizon, where the forecast sits (error bar one sd)."""
    calm = [c for c in detail.candidates if c.status is not SegmentStatus.diverged]
    focus = [v for c in calm for _, v in c.observations] + [
        c.forecast.prediction
        for c in calm
        if c.forecast is not None and c.forecast.prediction is not None
    ]
    every = [v for c in detail.candidates for _, v in c.observations]
    domain, log = _loss_axis(focus, every)
    # Log steps: the search window (tau' steps) and the horizon (tau, often ten times
    # further) both get room.
    fig = Figure(
        width=470,
        height=250,
        x_domain=(1.0, float(max(detail.tau, 2))),
        x_log=True,
        y_domain=domain,
        y_log=log,
        x_label="step within the stage (log)",
        y_label="loss",
        label=f"Stage {detail.index}: candidates' losses and fitted curves",
        css_class="fits",
    )
    fig.vline(
        detail.tau_explore,
        "window-edge",
        title=f"end of the search window (tau' = {detail.tau_explore} steps)",
    )
    grid = np.geomspace(1.0, float(max(detail.tau, 2)), points)
    for cand in detail.candidates:
        cls = colour(cand.index)
        fc = cand.forecast
        if fc is not None and {"a", "beta", "c", "x_scale"} <= fc.params.keys():
            curve = forecast_curve(fc.params, grid)
            fig.polyline(
                list(zip(grid.tolist(), curve.tolist(), strict=True)),
                f"fit {cls}",
                data={"index": cand.index, "model": fc.model},
            )
        for step, value in cand.observations:
            fig.circle(
                step,
                value,
                f"cand-obs {cls}",
                r=1.9,
                title=f"candidate {cand.index} (lr {fmt_number(cand.lr)}) step {step}: "
                f"{fmt_number(value, 4)}",
                data={"index": cand.index, "step": step, "value": value},
            )
        if fc is not None and fc.prediction is not None:
            if fc.std is not None:
                fig.segment(
                    detail.tau,
                    fc.prediction - fc.std,
                    detail.tau,
                    fc.prediction + fc.std,
                    f"errbar {cls}",
                )
            fig.circle(
                detail.tau,
                fc.prediction,
                f"prediction {cls}",
                r=3.6,
                title=f"candidate {cand.index}: forecast at step {detail.tau}: "
                f"{fmt_number(fc.prediction, 4)} ({fc.model}, {fc.status})",
                data={"index": cand.index, "value": fc.prediction},
            )
    return fig.render()


def sparkline(schedule: Sequence[tuple[int, int, float]], config: Mapping[str, Any]) -> Markup:
    """A study list's inline LR schedule: the chosen LR per stage as a step line."""
    lr_min = float(config.get("lr_min") or 1e-6)
    lr_max = float(config.get("lr_max") or 1.0)
    end = max([float(config.get("total_steps") or 0)] + [float(s + n) for s, n, _ in schedule])
    fig = Figure(
        width=120,
        height=28,
        x_domain=(0.0, max(end, 1.0)),
        y_domain=(lr_min, lr_max),
        y_log=lr_min > 0 and lr_max > lr_min,
        margin=(3, 4, 3, 2),
        axes=False,
        label="LR schedule",
        css_class="spark",
    )
    line: list[tuple[float, float]] = []
    for start, steps, lr in schedule:
        line += [(start, lr), (start + steps, lr)]
    fig.polyline(line, "spark-line", data={"stages": len(schedule)})
    if schedule:
        start, steps, lr = schedule[-1]
        fig.circle(start + steps, lr, "spark-end", r=1.8, title=f"now: lr {fmt_number(lr)}")
    return fig.render()
