"""The learning-rate-free rivals of Tier B, each at its published defaults.

- schedule-free SGD / AdamW (``schedulefree``), an anytime method: one run to 3T, read
  at every harness evaluation on its averaged iterate;
- Prodigy + cosine (``prodigyopt==1.1.2``: lr 1.0, ``safeguard_warmup``, bias
  correction) and D-Adapt Adam + cosine (``dadaptation==3.2``), on Adam-family
  workloads: each plans a cosine over its budget, like a Tier A schedule;
- DoG with polynomial-decay averaging (``dog-optimizer==1.0.3``, gamma 8), on SGD-family
  workloads, an anytime method read on its averaged model.

Every package here is optional (the ``bench`` extra, installed with ``pip install
--no-deps`` so torch stays pinned) and imported only when its rival runs. Each keeps the
workload's own weight decay and gradient clipping; the cosine has the workload's warmup.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from .methods import Run, stretched, train_schedule
from .workloads import DIVERGED_ABOVE, NQMJob, TorchJob, Variant, make_job

#: Rivals that plan for a budget (a cosine over it) and the anytime ones (run to 3T).
PLANNED = ("prodigy", "dadapt")
ANYTIME = ("schedulefree", "dog")
ALL = (*ANYTIME, *PLANNED)
#: How far an anytime rival runs, in T.
ANYTIME_BUDGET = 3.0


def applies(method: str, variant: Variant) -> bool:
    """Whether ``method`` is one of ``variant``'s rivals (matched to its optimizer family)."""
    if method in PLANNED:
        return variant.family in ("adam", "adamw")
    if method == "dog":
        return variant.family == "sgd"
    return method == "schedulefree"


def _weight_decay(job: TorchJob) -> float:
    return float(job.optimizer.param_groups[0].get("weight_decay", 0.0))


def _swap(job: TorchJob, optimizer: Any) -> TorchJob:
    """The job with ``optimizer`` in place of its own (the model's init is untouched)."""
    job.optimizer = optimizer
    return job


def run_schedulefree(variant: Variant, seed: int) -> Run:
    """Schedule-free at its published defaults (the workload's weight decay, the
    variant's warmup of 5% of T), one run to 3T evaluated on its averaged iterate."""
    job = make_job(variant, seed, optimizer="schedulefree")
    run = train_schedule(job, stretched(variant, ANYTIME_BUDGET), "constant", 0.0)
    run.lr_path = []  # schedule-free sets its own LR; nothing to plot
    return run


def run_planned(variant: Variant, seed: int, method: str, budget: float) -> Run:
    """Prodigy or D-Adapt Adam, its LR multiplier (1.0, its default) on a cosine with the
    variant's warmup, planned for ``budget`` x T."""
    job = make_job(variant, seed)
    if not isinstance(job, TorchJob):
        raise ValueError(f"{method} runs on the torch workloads, not {variant.workload}")
    decay = _weight_decay(job)
    decoupled = variant.family == "adamw"
    if method == "prodigy":
        from prodigyopt import Prodigy

        optimizer: Any = Prodigy(
            job.model.parameters(),
            lr=1.0,
            weight_decay=decay,
            decouple=decoupled,
            safeguard_warmup=True,
            use_bias_correction=True,
        )
    elif method == "dadapt":
        from dadaptation import DAdaptAdam

        optimizer = DAdaptAdam(
            job.model.parameters(), lr=1.0, weight_decay=decay, decouple=decoupled
        )
    else:
        raise ValueError(f"unknown planned rival {method!r}")
    run = train_schedule(_swap(job, optimizer), stretched(variant, budget), "cosine", 1.0)
    run.extra = {"lr_is": "multiplier of the optimizer's own step size", "budget": budget}
    return run


class _DoGNQM(NQMJob):
    """DoG on the noisy quadratic: theta as a torch parameter, evaluated on the
    polynomial-decay average."""

    def __init__(self, seed: int, batch: int) -> None:
        super().__init__(seed, batch)
        import torch
        from dog import DoG, PolynomialDecayAverager

        class Theta(torch.nn.Module):
            def __init__(self, start: Any) -> None:
                super().__init__()
                self.theta = torch.nn.Parameter(torch.from_numpy(start))

        self._module = Theta(self.theta.copy())
        self._dog = DoG(self._module.parameters())
        self._avg = PolynomialDecayAverager(self._module)

    def train_step(self, t: int, lr: float) -> float:
        import torch

        param: Any = self._module.theta
        theta = param.detach().numpy()
        param.grad = torch.from_numpy(self.h * theta + self._noise(t))
        self._dog.step()
        self._avg.step()
        loss = self.loss(param.detach().numpy())
        return loss if math.isfinite(loss) and loss < DIVERGED_ABOVE else math.nan

    def val_loss(self) -> float:
        averaged: Any = self._avg.averaged_model
        return self.loss(averaged.theta.detach().numpy())


class _DoGTorch:
    """DoG on a torch job, evaluated on the polynomial-decay average of its model."""

    def __init__(self, job: TorchJob) -> None:
        from dog import DoG, PolynomialDecayAverager

        self.job = job
        self.eval_cost_steps = job.eval_cost_steps
        job.optimizer = DoG(job.model.parameters(), weight_decay=_weight_decay(job))
        self._avg = PolynomialDecayAverager(job.model)

    def train_step(self, t: int, lr: float) -> float:
        loss = self.job.train_step(t, 1.0)  # DoG's lr is a multiplier; 1.0 its default
        if math.isfinite(loss):
            self._avg.step()
        return loss

    def val_loss(self) -> float:
        averaged = self._avg.averaged_model
        live = self.job.model
        self.job.model = averaged
        try:
            return self.job.val_loss()
        finally:
            self.job.model = live

    def snapshot(self) -> Any:
        return copy.deepcopy(self.job.model.state_dict())

    def load(self, state: Any) -> None:
        raise TypeError("a DoG run is never rolled back")

    def checkpointer(self) -> Any:
        raise TypeError("DoG runs alone, not under stagelr")


def run_dog(variant: Variant, seed: int) -> Run:
    """DoG (lr 1.0, reps_rel 1e-6; the workload's weight decay) with polynomial-decay
    averaging (gamma 8), one run to 3T, evaluated on the average."""
    job: Any
    if variant.workload == "nqm":
        job = _DoGNQM(seed, int(variant.param("batch")))
    else:
        base = make_job(variant, seed)
        if not isinstance(base, TorchJob):
            raise ValueError(f"DoG has no adapter for {variant.workload}")
        job = _DoGTorch(base)
    run = train_schedule(job, stretched(variant, ANYTIME_BUDGET), "constant", 1.0)
    run.lr_path = []  # DoG sets its own step size
    return run


def run_rival(variant: Variant, seed: int, method: str, config: dict[str, Any]) -> Run:
    """Dispatch one rival run (a worker process calls this)."""
    if not applies(method, variant):
        raise ValueError(f"{method} is not a rival on {variant.name} ({variant.family})")
    if method == "schedulefree":
        return run_schedulefree(variant, seed)
    if method == "dog":
        return run_dog(variant, seed)
    return run_planned(variant, seed, method, float(config.get("budget", 1.0)))
