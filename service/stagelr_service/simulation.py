"""A cheap synthetic training job: loss curves as a function of LR, no torch.

Used by the tests, the benchmarks and load tests to drive the tuner (directly, or
through the server and the client) thousands of times faster than real training.

The loss after ``s`` steps at learning rate ``lr`` from a state with loss ``L0`` decays
towards a floor that is lowest at ``best_lr`` (a bowl in log-LR), at a rate that grows
with the LR; above ``cliff_lr`` the run diverges (NaN).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from stagelr.models import SegmentKind, SegmentStatus, StudyConfig

from . import tuner
from .tuner import SegmentPlan, StudyEnd, Trial


@dataclass
class SyntheticJob:
    best_lr: float = 0.1
    cliff_lr: float = 0.8
    start_loss: float = 2.5
    noise: float = 0.005
    seed: int = 0
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
        rate = min(1.0, 20.0 * lr) / 20.0
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

    def run(self, plan: SegmentPlan, seq: int) -> Trial:
        """Train one planned segment and return it as the tuner's history records it."""
        explore = plan.kind is SegmentKind.explore
        reports, diverged = self.train(
            plan.lr, plan.steps, plan.report_every, explore=explore, stop_above=plan.stop_above
        )
        return Trial(
            seq=seq,
            stage=plan.stage.index,
            index=plan.index,
            kind=plan.kind,
            lr=plan.lr,
            steps=plan.steps,
            status=SegmentStatus.diverged if diverged else SegmentStatus.completed,
            steps_done=reports[-1][0] if diverged else plan.steps,
            metric=plan.metric,
            observations=tuple(reports),
        )


def simulate(
    config: StudyConfig,
    optimizer: tuner.Optimizer,
    job: SyntheticJob | None = None,
    max_segments: int = 1000,
) -> tuple[list[SegmentPlan], list[Trial], StudyEnd | None]:
    """Drive the tuner with a synthetic job until the study ends (or max_segments)."""
    job = job or SyntheticJob()
    plans: list[SegmentPlan] = []
    trials: list[Trial] = []
    for seq in range(max_segments):
        decision = tuner.next_segment(config, trials, optimizer)
        if isinstance(decision, StudyEnd):
            return plans, trials, decision
        plans.append(decision)
        trials.append(job.run(decision, seq))
    return plans, trials, None
