"""A cheap synthetic training job: loss curves as a function of LR, no torch.

Used by the tests, the benchmarks and load tests to drive the tuner (directly, or
through the server and the client) thousands of times faster than real training.

The loss after ``s`` steps at learning rate ``lr`` from a state with loss ``L0`` decays
towards a floor that is lowest at ``best_lr`` (a bowl in log-LR), at a rate that grows
with the LR; above ``cliff_lr`` the run diverges (NaN).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import stagelr
from stagelr.models import LRShape, SegmentKind, SegmentStatus, StudyStatus, lr_at

from .. import tuner
from ..tuner import Decision, StudyEnd, Trial


@dataclass
class SyntheticJob:
    best_lr: float = 0.1
    cliff_lr: float = 0.8
    start_loss: float = 2.5
    noise: float = 0.005
    seed: int = 0
    #: How fast the loss falls at a given LR (a fast first stretch: above 1)
    speed: float = 1.0
    loss: float = field(init=False)

    def __post_init__(self) -> None:
        self.loss = self.start_loss
        self.rng = np.random.default_rng(self.seed)

    def floor(self, lr: float) -> float:
        return 0.05 + 0.3 * (math.log10(lr) - math.log10(self.best_lr)) ** 2

    def expected(self, lr: float, start: float, step: int) -> float:
        """The noise-free loss after ``step`` steps at ``lr`` from loss ``start``."""
        if lr >= self.cliff_lr and step >= 3:
            return math.nan
        rate = self.speed * min(1.0, 20.0 * lr) / 20.0
        floor = self.floor(lr)
        return floor + (start - floor) * math.exp(-rate * step)

    def curve(self, lr: float, start: float, steps: list[int]) -> list[float]:
        return [
            self.expected(lr, start, s) + self.noise * float(self.rng.standard_normal())
            for s in steps
        ]

    def train(
        self,
        lr: float,
        steps: int,
        report_every: int,
        *,
        explore: bool,
        stop_above: float | None = None,
    ) -> tuple[list[tuple[int, float]], bool]:
        """Train a segment: the reports ``(step, loss)`` and whether it diverged.

        An explore segment starts from the stage checkpoint and leaves no trace; an
        exploit segment moves the job's state to where it ended.
        """
        steps_at = list(range(report_every, steps + 1, report_every))
        if not steps_at or steps_at[-1] != steps:
            steps_at.append(steps)
        values = self.curve(lr, self.loss, steps_at)
        reports: list[tuple[int, float]] = []
        for s, v in zip(steps_at, values, strict=True):
            reports.append((s, v))
            if explore and (not math.isfinite(v) or (stop_above is not None and v > stop_above)):
                return reports, True
        if not explore and reports and math.isfinite(reports[-1][1]):
            self.loss = reports[-1][1]
        return reports, False

    def sweep(self, lr: float, lr_end: float, steps: int) -> list[tuple[int, float]]:
        """A range test: every step at the next LR of an exponential sweep from ``lr``
        to ``lr_end``, the loss reported each step until it is NaN; it leaves no trace
        (the stage then restores the state before it)."""
        loss = self.loss
        reports: list[tuple[int, float]] = []
        for step in range(1, steps + 1):
            rate = lr_at(lr, lr_end, LRShape.exponential, step, steps)
            loss = self.expected(rate, loss, 3 if rate >= self.cliff_lr else 1)
            reports.append((step, loss + self.noise * float(self.rng.standard_normal())))
            if not math.isfinite(loss):
                break
        return reports

    def segment(self, plan: Decision | Any) -> tuple[list[tuple[int, float]], bool]:
        """Train a segment, planned (:class:`Decision`) or handed out (a
        ``SegmentView``): its reports and whether it diverged."""
        if plan.kind is SegmentKind.range_test:
            assert plan.lr_end is not None
            return self.sweep(plan.lr, plan.lr_end, plan.steps), False
        explore = plan.kind is SegmentKind.explore
        return self.train(
            plan.lr, plan.steps, plan.report_every, explore=explore, stop_above=plan.stop_above
        )

    def run(self, plan: Decision, seq: int) -> Trial:
        """Train one planned segment and return it as the tuner's history records it."""
        reports, diverged = self.segment(plan)
        return Trial(
            seq=seq,
            stage=plan.stage,
            index=plan.index,
            kind=plan.kind,
            lr=plan.lr,
            steps=plan.steps,
            status=SegmentStatus.diverged if diverged else SegmentStatus.completed,
            steps_done=reports[-1][0]
            if diverged or plan.kind is SegmentKind.range_test
            else (plan.steps),
            metric=plan.metric,
            observations=tuple(reports),
        )


def simulate(
    config: tuner.ResolvedConfig,
    optimizer: tuner.Optimizer,
    job: SyntheticJob | None = None,
    max_segments: int = 1000,
) -> tuple[list[Decision], list[Trial], StudyEnd | None]:
    """Drive the tuner with a synthetic job until the study ends (or max_segments)."""
    job = job or SyntheticJob()
    plans: list[Decision] = []
    trials: list[Trial] = []
    for seq in range(max_segments):
        decision = tuner.next_segment(config, trials, optimizer)
        if isinstance(decision, StudyEnd):
            return plans, trials, decision
        plans.append(decision)
        trials.append(job.run(decision, seq))
    return plans, trials, None


@dataclass
class DrivenJob:
    """What a synthetic job driven through the real client did (see :func:`drive_tuner`)."""

    #: segment id -> the (step, value) points the job reported for it, in order
    reported: dict[int, list[tuple[int, float]]] = field(default_factory=dict)
    #: ids of the service's segments the job trained, in order
    segments: list[int] = field(default_factory=list)
    #: fallback segments trained while the service was unreachable, and their steps
    fallback_segments: int = 0
    fallback_steps: int = 0
    status: StudyStatus | None = None


def drive_tuner(
    client_tuner: stagelr.Tuner,
    job: SyntheticJob,
    on_event: Callable[[str, int], None] | None = None,
) -> DrivenJob:
    """Run a whole study with ``job`` as the training, through the real client.

    ``on_event(kind, n)`` is called before the ``n``-th ``next`` (kind ``"next"``), after
    the first report of segment ``n`` (``"report"``), and before its completion
    (``"complete"``): where a test injects its faults. Fallback segments (the service
    unreachable) are trained as steps without reports and leave the job's state alone,
    so the service's decisions are those of an uninterrupted run.
    """
    record = DrivenJob()
    event = on_event or (lambda kind, n: None)
    n = 0
    while True:
        event("next", n + 1)
        segment = client_tuner.next_segment()
        if segment is None:
            break
        if segment.fallback:
            for _ in segment.steps():
                pass
            record.fallback_segments += 1
            record.fallback_steps += segment.planned_steps
            segment.complete()
            continue
        n += 1
        record.segments.append(segment.id)
        reports, _ = job.segment(segment.view)
        points = record.reported.setdefault(segment.id, [])
        for i, (step, value) in enumerate(reports):
            segment.report(step, value)
            points.append((step, value))
            if i == 0:
                event("report", n)
        event("complete", n)
        segment.complete(steps_done=reports[-1][0])
    record.status = client_tuner.status
    return record


def study_decisions(client: stagelr.Client, study_id: int) -> list[tuple[Any, ...]]:
    """A study's decisions as the service stored them: each segment's (seq, stage, index,
    kind, lr, status, steps_done) in order, then each stage's chosen LR."""
    segments = [
        (s.seq, s.stage, s.index, s.kind.value, s.lr, s.status.value, s.steps_done)
        for s in client.list_segments(study_id)
    ]
    chosen = [("stage", st.index, st.chosen_lr) for st in client.get_study(study_id).stages]
    return segments + chosen


def drive_service(
    service: Any,
    study_id: int,
    job: SyntheticJob,
    after: Callable[[Any], None] | None = None,
) -> None:
    """Train a study to its end through the study service (``StudyService``: no HTTP),
    ``job`` giving each segment's reports; ``after(segment)`` runs once each segment is
    complete (where a test reports an outage, say)."""
    from stagelr.models import CompleteRequest, ObservationBatch, ObservationIn

    while (segment := service.next_segment(study_id).segment) is not None:
        reports, diverged = job.train(
            segment.lr,
            segment.steps,
            segment.report_every,
            explore=segment.kind is SegmentKind.explore,
            stop_above=segment.stop_above,
        )
        service.add_observations(
            segment.id,
            ObservationBatch(observations=[ObservationIn(step=s, value=v) for s, v in reports]),
        )
        service.complete_segment(
            segment.id, CompleteRequest(steps_done=reports[-1][0] if diverged else None)
        )
        if after is not None:
            after(segment)
