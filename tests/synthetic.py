"""A cheap synthetic training job: loss curves as a function of LR, no torch.

The loss after ``s`` steps at learning rate ``lr`` from a state with loss ``L0`` decays
towards a floor that is lowest at ``best_lr`` (a bowl in log-LR), at a rate that grows
with the LR; above ``cliff_lr`` the run diverges (NaN).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from stagelr.models import SegmentKind, SegmentStatus, StudyConfig
from stagelr_service import tuner
from stagelr_service.tuner import SegmentPlan, StudyEnd, Trial


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

    def run(self, plan: SegmentPlan, seq: int) -> Trial:
        steps = list(range(plan.report_every, plan.steps + 1, plan.report_every))
        if not steps or steps[-1] != plan.steps:
            steps.append(plan.steps)
        values = self.curve(plan.lr, self.loss, steps)
        observations: list[tuple[int, float]] = []
        status = SegmentStatus.completed
        done = plan.steps
        for s, v in zip(steps, values, strict=True):
            observations.append((s, v))
            if plan.kind is SegmentKind.explore and (
                not math.isfinite(v) or (plan.stop_above is not None and v > plan.stop_above)
            ):
                status, done = SegmentStatus.diverged, s
                break
        if plan.kind is SegmentKind.exploit and observations:
            self.loss = observations[-1][1]
        return Trial(
            seq=seq,
            stage=plan.stage.index,
            index=plan.index,
            kind=plan.kind,
            lr=plan.lr,
            steps=plan.steps,
            status=status,
            steps_done=done,
            metric=plan.metric,
            observations=tuple(observations),
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
