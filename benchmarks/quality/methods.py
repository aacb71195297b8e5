"""The methods that are not stagelr: Tier A schedules and the Tier B single runs.

Every runner trains one job of one variant for one seed and returns a :class:`Run`: the
final validation loss, the charged steps, and the harness's validation curve (every 2%
of T on the kept trajectory, free) against trajectory and charged steps.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .workloads import Job, Variant, make_job

SCHEDULES = ("linear", "cosine", "wsd", "constant")
#: The untuned default: linear decay at these peaks (the frameworks' usual defaults).
UNTUNED_LR = {"sgd": 0.1, "adam": 1e-3, "adamw": 1e-3}
#: The LR range test sweeps these LRs exponentially over T/10 steps (fastai's lr_find).
RANGE_TEST = (1e-7, 10.0)
WSD_COOLDOWN = 0.2


@dataclass
class Run:
    """One training run, as the results cache stores it."""

    final_loss: float
    charged_steps: int
    trajectory_steps: int
    #: (trajectory step, charged steps at that moment, validation loss), every 2% of T.
    curve: list[tuple[int, int, float]] = field(default_factory=list)
    #: The LR of each trajectory step, run-length encoded: (first step, lr).
    lr_path: list[tuple[int, float]] = field(default_factory=list)
    tuner_evals: int = 0
    eval_cost_steps: float = 0.0
    diverged: bool = False
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["final_loss"] = _num(self.final_loss)
        out["curve"] = [(t, c, _num(v)) for t, c, v in self.curve]
        return out


def _num(value: float) -> float | None:
    return value if math.isfinite(value) else None


def stretched(variant: Variant, budget: float) -> Variant:
    """``variant`` planned for ``budget`` x T (warmup and decay stretched to it),
    evaluated as often as at T (every 2% of T): a schedule that knows its budget."""
    if budget == 1:
        return variant
    return dataclasses.replace(
        variant, steps=round(budget * variant.steps), evals=round(budget * variant.evals)
    )


def eval_every(variant: Variant) -> int:
    """The harness evaluates every 2% of T (``variant.evals`` times a run)."""
    return max(1, variant.steps // variant.evals)


def schedule_lr(kind: str, peak: float, t: int, steps: int, warmup: int) -> float:
    """The LR of step ``t`` (0-based) of a ``steps``-long run under schedule ``kind``."""
    if t < warmup:
        return peak * (t + 1) / warmup
    if kind == "constant":
        return peak
    if kind == "linear":
        return peak * (1.0 - (t - warmup) / max(1, steps - warmup))
    if kind == "cosine":
        return peak * 0.5 * (1.0 + math.cos(math.pi * (t - warmup) / max(1, steps - warmup)))
    if kind == "wsd":
        decay_from = steps - round(WSD_COOLDOWN * steps)
        if t < decay_from:
            return peak
        return peak * (1.0 - math.sqrt((t - decay_from) / max(1, steps - decay_from)))
    raise ValueError(f"unknown schedule {kind!r}")


def _rle(lrs: list[float]) -> list[tuple[int, float]]:
    out: list[tuple[int, float]] = []
    for t, lr in enumerate(lrs):
        if not out or out[-1][1] != lr:
            out.append((t, lr))
    return out


def train_schedule(
    job: Job,
    variant: Variant,
    kind: str,
    peak: float,
    *,
    charged_before: int = 0,
) -> Run:
    """Train ``job`` for T steps under a fixed schedule; harness evaluations are free."""
    steps = variant.steps
    warmup = round(variant.warmup * steps)
    every = eval_every(variant)
    started = time.perf_counter()
    curve = [(0, charged_before, job.val_loss())]
    lrs: list[float] = []
    diverged = False
    for t in range(steps):
        lr = schedule_lr(kind, peak, t, steps, warmup)
        lrs.append(lr)
        if not math.isfinite(job.train_step(t, lr)):
            diverged = True
            curve.append((t + 1, charged_before + t + 1, math.nan))
            break
        if (t + 1) % every == 0 or t + 1 == steps:
            curve.append((t + 1, charged_before + t + 1, job.val_loss()))
    return Run(
        final_loss=math.nan if diverged else curve[-1][2],
        charged_steps=charged_before + len(lrs),
        trajectory_steps=len(lrs),
        curve=curve,
        lr_path=_rle(lrs),
        diverged=diverged,
        seconds=time.perf_counter() - started,
    )


def run_grid_point(variant: Variant, seed: int, kind: str, peak: float, budget: float = 1.0) -> Run:
    """Tier A: one schedule at one peak LR, planned for ``budget`` x T."""
    return train_schedule(make_job(variant, seed), stretched(variant, budget), kind, peak)


def run_untuned(variant: Variant, seed: int) -> Run:
    """Tier B: linear decay (with the variant's warmup) at the family's default LR."""
    return train_schedule(make_job(variant, seed), variant, "linear", UNTUNED_LR[variant.family])


def run_range_test(variant: Variant, seed: int) -> Run:
    """Tier B: an LR range test (T/10 steps, LR growing exponentially, stopped once the
    smoothed loss exceeds 4x its minimum), then linear decay from a fresh start at the
    LR of the lowest smoothed loss divided by 10. The range test's steps are charged."""
    job = make_job(variant, seed)
    start = job.snapshot()
    sweep = max(10, variant.steps // 10)
    low, high = RANGE_TEST
    lrs = np.geomspace(low, high, sweep)
    smoothed, best, best_lr, avg = [], math.inf, float(lrs[0]), 0.0
    done = 0
    for t, lr in enumerate(lrs):
        loss = job.train_step(t, float(lr))
        done = t + 1
        if not math.isfinite(loss):
            break
        avg = 0.98 * avg + 0.02 * loss
        value = avg / (1 - 0.98 ** (t + 1))  # bias-corrected EMA, as fastai
        smoothed.append(value)
        if value < best:
            best, best_lr = value, float(lr)
        if t > 5 and value > 4 * best:
            break
    peak = best_lr / 10.0
    job.load(start)
    run = train_schedule(job, variant, "linear", peak, charged_before=done)
    run.extra = {"range_test_steps": done, "chosen_peak": peak}
    return run


def run_method(variant: Variant, seed: int, method: str, config: dict[str, Any]) -> Run:
    """Dispatch one baseline run (a worker process calls this)."""
    if method == "grid":
        return run_grid_point(
            variant,
            seed,
            str(config["schedule"]),
            float(config["peak"]),
            float(config.get("budget", 1.0)),
        )
    if method == "untuned":
        return run_untuned(variant, seed)
    if method == "range_test":
        return run_range_test(variant, seed)
    raise ValueError(f"unknown baseline {method!r}")
