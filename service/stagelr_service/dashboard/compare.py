"""Runs side by side: several studies' LR paths and loss curves on one page.

The page is ``/dashboard/compare?id=3&id=7``: the selection is the URL, so it can be
shared and reloaded. For each study it shows the trajectory's LR (a decay with its shape)
and its losses, once against training steps and once against charged steps (every step
trained, search included: what the LR found cost), and a table of each one's final loss,
charged steps and chosen LRs.

Chart marks (the contract with the CSS and the browser tests), one series per study with
its colour class ``s<i>`` and ``data-study``:

- ``polyline.lr-path`` (one per study) in ``svg.compare-lr``, ``polyline.lr-charged``
  (one per training segment) in ``svg.compare-lr-charged``;
- ``polyline.loss-path`` (one per study) and ``circle.loss-obs`` (one per finite loss on
  the trajectory) in ``svg.compare-loss``, ``polyline.loss-charged`` (one per study) in
  ``svg.compare-loss-charged``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from urllib.parse import urlencode

from markupsafe import Markup

from stagelr.models import LRShape, SegmentKind, SegmentStatus, StudyView

from ..errors import InputError
from ..history import trained_steps
from ..store.records import SegmentRecord, StudyHistory
from ..studies import StudyService
from .charts import loss_axis, lr_path
from .plots import Figure, fmt_number

__all__ = [
    "MAX_STUDIES",
    "CompareRow",
    "ComparePage",
    "compare_url",
    "load_compare",
    "parse_ids",
]

#: Studies one comparison shows at most (bounded work per request).
MAX_STUDIES = 8


def compare_url(ids: list[int]) -> str:
    """The comparison page of ``ids`` (the study list when there are none)."""
    if not ids:
        return "/dashboard"
    return "/dashboard/compare?" + urlencode([("id", i) for i in ids])


def parse_ids(values: list[str]) -> list[int]:
    """The study ids of a comparison URL (``?id=3&id=7`` or ``?id=3,7``), in order,
    without repeats; InputError naming the fix for anything else."""
    ids: list[int] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            if not part.isdigit() or len(part) > 18:
                raise InputError(f"study id {part!r} is not a number: use ?id=3&id=7")
            if int(part) not in ids:
                ids.append(int(part))
    if not ids:
        raise InputError("no study selected: tick studies in the list, then Compare")
    if len(ids) > MAX_STUDIES:
        raise InputError(f"{len(ids)} studies selected: compare at most {MAX_STUDIES} at once")
    return ids


@dataclass(frozen=True)
class CompareRow:
    """One study of the comparison (its table row)."""

    colour: str
    study: StudyView
    final_loss: float | None
    final_step: int | None
    metric: str
    search_steps: int
    chosen: list[tuple[int, float]]  # (stage, LR) of each stage that chose one
    decay: str | None


@dataclass(frozen=True)
class ComparePage:
    rows: list[CompareRow]
    ids: list[int]
    lr_chart: Markup
    lr_charged_chart: Markup
    loss_chart: Markup
    loss_charged_chart: Markup


@dataclass(frozen=True)
class _Series:
    colour: str
    study_id: int
    name: str
    lr: list[tuple[float, float]]  # (trajectory step, LR)
    lr_charged: list[list[tuple[float, float]]]  # per training segment: (charged step, LR)
    loss: list[tuple[float, float]]  # (trajectory step, loss)
    loss_charged: list[tuple[float, float]]  # (charged step, loss)


def _series(index: int, history: StudyHistory) -> _Series:
    """A study's trajectory in both step measures. The charged step of a point is every
    step trained before its segment (in the order they were handed out) plus its own."""
    stage_start = {st.index: st.start_step for st in history.stages}
    charged_before = 0
    lr: list[tuple[float, float]] = []
    lr_charged: list[list[tuple[float, float]]] = []
    loss: list[tuple[float, float]] = []
    loss_charged: list[tuple[float, float]] = []
    for seg in history.segments:
        done = trained_steps(seg)
        if seg.kind is SegmentKind.exploit and seg.status is not SegmentStatus.failed:
            steps = done if seg.status is not SegmentStatus.open else seg.steps
            path = _segment_path(seg, steps, stage_start.get(seg.stage))
            lr += path
            offset = charged_before - seg.start_step
            lr_charged.append([(x + offset, y) for x, y in _segment_path(seg, steps, None)])
            for o in history.observations.get(seg.id, ()):
                if o.metric is seg.metric and math.isfinite(o.value):
                    loss.append((seg.start_step + o.step, o.value))
                    loss_charged.append((charged_before + o.step, o.value))
        charged_before += done
    return _Series(
        colour=f"s{index}",
        study_id=history.study.id,
        name=history.study.name,
        lr=lr,
        lr_charged=lr_charged,
        loss=loss,
        loss_charged=loss_charged,
    )


def _segment_path(
    seg: SegmentRecord, steps: int, hold_from: int | None
) -> list[tuple[float, float]]:
    if steps <= 0:
        return []
    if seg.lr_shape is LRShape.constant or seg.lr_end is None:
        return lr_path(seg.start_step, steps, seg.lr, hold_from=hold_from)
    # A decay stopped early: its shape over the planned steps, cut where it stopped.
    full = lr_path(seg.start_step, seg.steps, seg.lr, seg.lr_end, seg.lr_shape)
    return [(x, y) for x, y in full if x <= seg.start_step + steps]


def _row(index: int, study: StudyView, history: StudyHistory) -> CompareRow:
    final: tuple[int, float] | None = None
    metric = ""
    for seg in history.segments:
        if seg.kind is not SegmentKind.exploit:
            continue
        for o in history.observations.get(seg.id, ()):
            if o.metric is seg.metric and math.isfinite(o.value):
                step = seg.start_step + o.step
                if final is None or step >= final[0]:
                    final, metric = (step, o.value), seg.metric.value
    decays = [
        s
        for s in history.segments
        if s.kind is SegmentKind.exploit
        and s.lr_shape is not LRShape.constant
        and s.lr_end is not None
    ]
    decay = None
    if decays:
        d = decays[-1]
        decay = (
            f"{d.lr_shape.value} over {d.steps:,} steps, "
            f"{fmt_number(d.lr)} → {fmt_number(d.lr_end or 0.0)}"
        )
    return CompareRow(
        colour=f"s{index}",
        study=study,
        final_loss=None if final is None else final[1],
        final_step=None if final is None else final[0],
        metric=metric,
        search_steps=study.charged_steps - study.trajectory_steps,
        chosen=[(st.index, st.chosen_lr) for st in history.stages if st.chosen_lr is not None],
        decay=decay,
    )


def _lr_domain(series: list[_Series]) -> tuple[float, float]:
    values = [y for s in series for _, y in s.lr if y > 0]
    if not values:
        return 1e-4, 1.0
    lo, hi = min(values), max(values)
    # A decay runs down to (almost) zero: show two decades below the lowest held LR.
    held = [y for s in series for _, y in s.lr if y > 0 and y >= hi * 1e-2]
    lo = max(lo, min(held) / 100)
    return lo / 1.3, hi * 1.3


def _lr_chart(series: list[_Series], charged: bool) -> Markup:
    if charged:
        xs = [x for s in series for part in s.lr_charged for x, _ in part]
    else:
        xs = [x for s in series for x, _ in s.lr]
    x_end = max([1.0, *xs])
    fig = Figure(
        width=960,
        height=260,
        x_domain=(0.0, x_end),
        y_domain=_lr_domain(series),
        y_log=True,
        x_label="charged step (search included)" if charged else "training step",
        y_label="learning rate",
        label="Learning rate against " + ("charged steps" if charged else "training steps"),
        css_class="compare-lr-charged" if charged else "compare-lr",
    )
    for s in series:
        if charged:
            for part in s.lr_charged:
                fig.polyline(part, f"lr-charged series {s.colour}", data={"study": s.study_id})
        else:
            fig.polyline(s.lr, f"lr-path series {s.colour}", data={"study": s.study_id})
    return fig.render()


def _loss_chart(series: list[_Series], charged: bool) -> Markup:
    values = [v for s in series for _, v in (s.loss_charged if charged else s.loss)]
    domain, log = loss_axis(values, values)
    x_end = max([1.0] + [x for s in series for x, _ in (s.loss_charged if charged else s.loss)])
    fig = Figure(
        width=960,
        height=300,
        x_domain=(0.0, x_end),
        y_domain=domain,
        y_log=log,
        x_label="charged step (search included)" if charged else "training step",
        y_label="loss",
        label="Loss against " + ("charged steps" if charged else "training steps"),
        css_class="compare-loss-charged" if charged else "compare-loss",
    )
    for s in series:
        points = s.loss_charged if charged else s.loss
        kind = "loss-charged" if charged else "loss-path"
        fig.polyline(points, f"{kind} series {s.colour}", data={"study": s.study_id})
        if not charged:
            for step, value in points:
                fig.circle(
                    step,
                    value,
                    f"loss-obs {s.colour}",
                    r=1.8,
                    title=f"{s.name} step {int(step)}: {fmt_number(value, 4)}",
                    data={"study": s.study_id, "step": int(step), "value": value},
                )
    return fig.render()


def load_compare(service: StudyService, scope: str | None, ids: list[int]) -> ComparePage:
    """The comparison of studies ``ids`` (NotFoundError if one is outside the scope)."""
    rows: list[CompareRow] = []
    series: list[_Series] = []
    for index, (study, history) in enumerate(service.study_histories(ids, scope=scope)):
        rows.append(_row(index, study, history))
        series.append(_series(index, history))
    return ComparePage(
        rows=rows,
        ids=ids,
        lr_chart=_lr_chart(series, charged=False),
        lr_charged_chart=_lr_chart(series, charged=True),
        loss_chart=_loss_chart(series, charged=False),
        loss_charged_chart=_loss_chart(series, charged=True),
    )
