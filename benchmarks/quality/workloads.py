"""The workloads of the quality benchmark, each a fresh training job per seed.

A job trains one step at a time at a given LR on the batch of a given *trajectory step*:
the data a step sees depends only on the seed and the step's position on the trajectory,
so every method, and every candidate of a stagelr stage, sees the same batches at the
same point of training. A seed fixes the init, the data order and (digits) the label
noise.

- ``nqm``: the noisy quadratic model (Zhang et al. 2019) in numpy. Its "validation loss"
  is the true loss ``1/2 sum h theta^2`` of the current iterate (the expectation of that
  over the gradient noise is the exact recursion's E[L]); the training loss a job reports
  is the same number, since a minibatch of the NQM is only a noisy gradient.
- ``digits``: the MLP of ``stagelr demo`` on scikit-learn's bundled digits.
- ``charlm``: a byte-level 2-layer pre-LN transformer on the Python standard library's
  own top-level ``*.py`` files.

Those three are the *dev split*: the workloads stagelr's ``default`` was developed on. The
*test split* (``Variant.split == "test"``) holds families the dev split lacks, written
and grid-tuned before ``default`` is judged on them (BENCHMARK.md section 1):

- ``cnn``: a small conv net on scikit-learn's digits as 8x8 images, Adam.
- ``regression``: an MLP regressing scikit-learn's Friedman #1 generator (fixed seed),
  MSE, SGD with momentum; ``regression-b512`` is its large-batch variant.
- ``charrnn``: a byte-level GRU language model on the prose that ships with Python and
  scikit-learn (the standard library's ``*.txt``/``*.rst``/``*.html`` documents and
  scikit-learn's dataset descriptions), Adam.
- ``charrnn-ft``: fine-tuning: the same GRU pretrained inside the benchmark on one half of
  that corpus (checkpoint cached on disk, keyed by this file's hash and the corpus), then
  trained from that checkpoint on the other half with a fresh Adam.

The *test2 split* (``Variant.split == "test2"``) is a second held-out set of the same
families, written and grid-tuned once the first test split had been read:

- ``lstm``: an LSTM reading the digits images row by row, Adam.
- ``autoencoder``: an MLP autoencoder of the digits images, MSE, SGD with momentum.
  ``autoencoder-5000`` is its long-horizon variant (T = 5000 against 1000).
- ``charmlp-ft``: fine-tuning: a byte-level MLP language model pretrained inside the
  benchmark on half a of the prose corpus, then trained on half b from its checkpoint
  with a fresh SGD with momentum.

The *test3 split* (``Variant.split == "test3"``) is a third, written and grid-tuned once
test2 had been read:

- ``convlm``: a causal dilated 1-D conv net as a byte-level LM on charlm's corpus, Adam.
- ``convlm-ft``: fine-tuning across domains: that conv LM pretrained inside the
  benchmark on the Python sources, then trained on the prose corpus's half b from its
  checkpoint with a fresh Adam.
- ``imagefit``: regressing a photo's colours (scikit-learn's bundled ``china.jpg``) from
  pixel coordinates through random Fourier features and an MLP, MSE, SGD with momentum;
  ``imagefit-b2048`` is its large-batch variant (batch 2048 against 128, T = 300).
- ``cnn-ft``: fine-tuning to new classes: a conv net pretrained on digits 0-4, a new zero
  head, trained on digits 5-9 with a fresh AdamW.

The *test4 split* (``Variant.split == "test4"``) is a fourth, written and grid-tuned once
test3 had been read:

- ``lorenz``: forecasting the Lorenz system 0.8 time units ahead from a window of its
  past, a GRU, MSE, Adam.
- ``swissroll``: unrolling scikit-learn's swiss roll (the position along the roll from
  the 3-D point), an MLP, MSE, SGD with momentum; ``swissroll-b1024`` is its large-batch
  variant (batch 1024 against 64, T = 300).
- ``patchae-ft``: fine-tuning to another photo: a conv autoencoder of 16x16 patches
  pretrained inside the benchmark on ``china.jpg``, then trained on ``flower.jpg``'s
  patches from its checkpoint with a fresh Adam (scikit-learn's two bundled photos, one
  for each half).

The *test5 split* (``Variant.split == "test5"``) is a fifth, written and grid-tuned once
test4 had been read, with two fine-tunes among its workloads (a job declares that it
starts from a trained model, and that declaration is judged here):

- ``digitvit``: a two-layer attention encoder over the 16 patches (2x2) of the 8x8
  digits images, cross-entropy, Adam.
- ``hastie``: an MLP classifying scikit-learn's Hastie 10.2 generator (fixed seed),
  binary cross-entropy, SGD with momentum; ``hastie-b1024`` is its large-batch variant
  (batch 1024 against 32, T = 300).
- ``lorenz-ft``: fine-tuning to drifted dynamics: the GRU of ``lorenz`` pretrained inside
  the benchmark on the Lorenz system at its classic parameters, then trained from that
  checkpoint on the system at rho 30 (against 28) with a fresh Adam.
- ``roll-ft``: fine-tuning to a changed manifold: the MLP of ``swissroll`` pretrained
  inside the benchmark on the swiss roll, then trained from that checkpoint on another
  draw of it with a hole and twice the noise, with a fresh SGD with momentum.

Nothing here knows about tuners: the methods drive a job through ``train_step`` and
``val_loss`` and checkpoint it through ``checkpointer``.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np

#: Losses above this count as diverged (no workload here starts above 10).
DIVERGED_ABOVE = 1e6


class SegmentPlan(Protocol):
    """What a checkpointer reads from a stagelr segment."""

    @property
    def lr(self) -> float: ...

    @property
    def restore(self) -> str | None: ...

    @property
    def save_start(self) -> str | None: ...

    @property
    def save_end(self) -> str | None: ...

    @property
    def discard(self) -> list[str]: ...


class SegmentCheckpointer(Protocol):
    def begin(self, segment: SegmentPlan) -> None: ...

    def end(self, segment: SegmentPlan) -> None: ...


class Job(Protocol):
    """One training run's state: a model (or iterate) and its optimizer."""

    #: Forward-only cost of one validation evaluation, in training-step equivalents
    #: (a forward pass is taken as a third of a forward+backward).
    eval_cost_steps: float

    def train_step(self, t: int, lr: float) -> float:
        """Train on trajectory step ``t``'s batch at ``lr``; the training loss (NaN: diverged)."""
        ...

    def val_loss(self) -> float:
        """The validation loss now (the harness's and the tuner's metric)."""
        ...

    def snapshot(self) -> Any:
        """A copy of the whole state, for :meth:`load`."""
        ...

    def load(self, state: Any) -> None: ...

    def checkpointer(self) -> SegmentCheckpointer:
        """Carries out a stagelr segment's checkpoint plan and applies its LR."""
        ...


@dataclass(frozen=True)
class Variant:
    """A workload variant: what a results table is about."""

    name: str  # e.g. "nqm-b8"; the tuner never sees it
    workload: str  # nqm | digits | charlm
    family: str  # the optimizer family: sgd | adam | adamw (the grids and defaults follow it)
    steps: int  # T
    warmup: float  # fraction of T warmed up linearly (Tier A and the Tier-B schedules)
    grid: tuple[float, ...]  # Tier A peak LRs
    params: tuple[tuple[str, Any], ...] = ()
    evals: int = 50  # harness evaluations per run (every 2% of T)
    split: str = "dev"  # dev: default was developed on it | test .. test4: held out

    def param(self, key: str, default: Any = None) -> Any:
        return dict(self.params).get(key, default)

    def smoke(self, steps: int) -> Variant:
        """The same variant at a tiny budget: T = ``steps``, 8 harness evaluations and (for
        charlm) a 1-batch validation set. Only the pipeline is checked at that size."""
        params = dict(self.params)
        if self.workload in BYTE_LMS:
            params["val_batches"] = 1
        return Variant(
            self.name,
            self.workload,
            self.family,
            steps,
            self.warmup,
            self.grid,
            tuple(sorted(params.items())),
            evals=8,
            split=self.split,
        )


#: The byte-level language models (validated on batches of held-out text).
BYTE_LMS = ("charlm", "charrnn", "charrnn-ft", "charmlp-ft", "convlm", "convlm-ft")

SGD_GRID = tuple(0.0125 * 2**i for i in range(8))  # 0.0125 .. 1.6
ADAMW_GRID = tuple(2.5e-4 * 2**i for i in range(8))  # 2.5e-4 .. 3.2e-2
NQM_GRID = tuple(2.0**-i for i in range(6, -1, -1)) + (1.9,)  # 2^-6 .. 1, and 1.9
CNN_GRID = tuple(2.5e-4 * 2**i for i in range(8))  # 2.5e-4 .. 3.2e-2
REG_GRID = tuple(0.0025 * 2**i for i in range(8))  # 2.5e-3 .. 0.32
RNN_GRID = tuple(5e-4 * 2**i for i in range(8))  # 5e-4 .. 6.4e-2
FT_GRID = tuple(2.5e-4 * 2**i for i in range(8))  # 2.5e-4 .. 3.2e-2
LSTM_GRID = tuple(1e-3 * 2**i for i in range(8))  # 1e-3 .. 0.128
AE_GRID = tuple(0.08 * 2**i for i in range(8))  # 0.08 .. 10.24 (pixel MSE: small gradients)
MLP_FT_GRID = tuple(0.00125 * 2**i for i in range(8))  # 1.25e-3 .. 0.16
CONV_LM_GRID = tuple(1e-3 * 2**i for i in range(8))  # 1e-3 .. 0.128
CONV_FT_GRID = tuple(5e-4 * 2**i for i in range(8))  # 5e-4 .. 0.064
IMAGE_GRID = tuple(0.08 * 2**i for i in range(8))  # 0.08 .. 10.24
CNN_FT_GRID = tuple(0.002 * 2**i for i in range(8))  # 2e-3 .. 0.256
LORENZ_GRID = tuple(1e-3 * 2**i for i in range(8))  # 1e-3 .. 0.128
ROLL_GRID = tuple(0.01 * 2**i for i in range(8))  # 0.01 .. 1.28
PATCH_FT_GRID = tuple(1e-3 * 2**i for i in range(8))  # 1e-3 .. 0.128
VIT_GRID = tuple(2.5e-4 * 2**i for i in range(8))  # 2.5e-4 .. 3.2e-2
HASTIE_GRID = tuple(0.01 * 2**i for i in range(8))  # 0.01 .. 1.28
ROLL_FT_GRID = tuple(0.005 * 2**i for i in range(8))  # 0.005 .. 0.64

VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("nqm-b8", "nqm", "sgd", 1000, 0.0, NQM_GRID, (("batch", 8),)),
        Variant("nqm-b64", "nqm", "sgd", 1000, 0.0, NQM_GRID, (("batch", 64),)),
        Variant("digits", "digits", "sgd", 1000, 0.05, SGD_GRID, (("label_noise", 0.0),)),
        Variant("digits-noisy", "digits", "sgd", 1000, 0.05, SGD_GRID, (("label_noise", 0.2),)),
        Variant("charlm", "charlm", "adamw", 1500, 0.05, ADAMW_GRID),
        Variant("charlm-3000", "charlm", "adamw", 3000, 0.05, ADAMW_GRID),
        # The test split: never read while default is developed (BENCHMARK.md section 1).
        Variant("cnn", "cnn", "adam", 600, 0.05, CNN_GRID, (("batch", 32),), split="test"),
        Variant(
            "regression",
            "regression",
            "sgd",
            1000,
            0.05,
            REG_GRID,
            (("batch", 32),),
            split="test",
        ),
        Variant(
            "regression-b512",
            "regression",
            "sgd",
            400,
            0.05,
            REG_GRID,
            (("batch", 512),),
            split="test",
        ),
        Variant("charrnn", "charrnn", "adam", 500, 0.05, RNN_GRID, split="test"),
        Variant("charrnn-ft", "charrnn-ft", "adam", 300, 0.05, FT_GRID, split="test"),
        # The test2 split: held out from default, written once the test split was read.
        Variant("lstm", "lstm", "adam", 600, 0.05, LSTM_GRID, (("batch", 32),), split="test2"),
        Variant(
            "autoencoder",
            "autoencoder",
            "sgd",
            1000,
            0.05,
            AE_GRID,
            (("batch", 32),),
            split="test2",
        ),
        Variant(
            "autoencoder-5000",
            "autoencoder",
            "sgd",
            5000,
            0.05,
            AE_GRID,
            (("batch", 32),),
            split="test2",
        ),
        Variant("charmlp-ft", "charmlp-ft", "sgd", 600, 0.05, MLP_FT_GRID, split="test2"),
        # The test3 split: held out from default, written once test2 had been read.
        Variant("convlm", "convlm", "adam", 600, 0.05, CONV_LM_GRID, split="test3"),
        Variant("convlm-ft", "convlm-ft", "adam", 300, 0.05, CONV_FT_GRID, split="test3"),
        Variant(
            "imagefit",
            "imagefit",
            "sgd",
            1000,
            0.05,
            IMAGE_GRID,
            (("batch", 128),),
            split="test3",
        ),
        Variant(
            "imagefit-b2048",
            "imagefit",
            "sgd",
            300,
            0.05,
            IMAGE_GRID,
            (("batch", 2048),),
            split="test3",
        ),
        Variant(
            "cnn-ft", "cnn-ft", "adamw", 300, 0.05, CNN_FT_GRID, (("batch", 32),), split="test3"
        ),
        # The test4 split: held out from default, written once test3 had been read.
        Variant(
            "lorenz", "lorenz", "adam", 800, 0.05, LORENZ_GRID, (("batch", 64),), split="test4"
        ),
        Variant(
            "swissroll", "swissroll", "sgd", 1000, 0.05, ROLL_GRID, (("batch", 64),), split="test4"
        ),
        Variant(
            "swissroll-b1024",
            "swissroll",
            "sgd",
            300,
            0.05,
            ROLL_GRID,
            (("batch", 1024),),
            split="test4",
        ),
        Variant(
            "patchae-ft",
            "patchae-ft",
            "adam",
            300,
            0.05,
            PATCH_FT_GRID,
            (("batch", 32),),
            split="test4",
        ),
        # The test5 split: held out from default, written once test4 had been read.
        Variant(
            "digitvit", "digitvit", "adam", 600, 0.05, VIT_GRID, (("batch", 32),), split="test5"
        ),
        Variant(
            "hastie", "hastie", "sgd", 1000, 0.05, HASTIE_GRID, (("batch", 32),), split="test5"
        ),
        Variant(
            "hastie-b1024",
            "hastie",
            "sgd",
            300,
            0.05,
            HASTIE_GRID,
            (("batch", 1024),),
            split="test5",
        ),
        Variant(
            "lorenz-ft",
            "lorenz-ft",
            "adam",
            300,
            0.05,
            LORENZ_GRID,
            (("batch", 64),),
            split="test5",
        ),
        Variant(
            "roll-ft",
            "roll-ft",
            "sgd",
            300,
            0.05,
            ROLL_FT_GRID,
            (("batch", 64),),
            split="test5",
        ),
    )
}
WORKLOADS = (
    "nqm", "digits", "charlm", "cnn", "regression", "charrnn", "charrnn-ft", "lstm",
    "autoencoder", "charmlp-ft", "convlm", "convlm-ft", "imagefit", "cnn-ft", "lorenz",
    "swissroll", "patchae-ft", "digitvit", "hastie", "lorenz-ft", "roll-ft",
)  # fmt: skip
SPLITS = ("dev", "test", "test2", "test3", "test4", "test5")
#: The held-out splits: default runs there only once its frozen commit is recorded.
HELD_OUT = ("test", "test2", "test3", "test4", "test5")


def make_job(variant: Variant, seed: int, optimizer: str = "standard") -> Job:
    """A fresh job of ``variant`` for ``seed``; ``optimizer="schedulefree"`` swaps in
    the schedule-free optimizer of the variant's family at its published defaults."""
    if variant.workload == "nqm":
        return NQMJob(seed, batch=int(variant.param("batch")), optimizer=optimizer)
    if variant.workload == "digits":
        warmup = round(variant.warmup * variant.steps)
        return DigitsJob(seed, float(variant.param("label_noise")), optimizer, warmup)
    if variant.workload == "charlm":
        warmup = round(variant.warmup * variant.steps)
        return CharLMJob(seed, optimizer, warmup, int(variant.param("val_batches", 16)))
    warmup = round(variant.warmup * variant.steps)
    if variant.workload == "cnn":
        return CNNJob(seed, int(variant.param("batch")), optimizer, warmup)
    if variant.workload == "regression":
        return RegressionJob(seed, int(variant.param("batch")), optimizer, warmup)
    if variant.workload in ("charrnn", "charrnn-ft"):
        return CharRNNJob(
            seed,
            optimizer,
            warmup,
            int(variant.param("val_batches", 8)),
            finetune=variant.workload == "charrnn-ft",
        )
    if variant.workload == "lstm":
        return RowLSTMJob(seed, int(variant.param("batch")), optimizer, warmup)
    if variant.workload == "autoencoder":
        return AutoencoderJob(seed, int(variant.param("batch")), optimizer, warmup)
    if variant.workload == "charmlp-ft":
        return CharMLPJob(seed, optimizer, warmup, int(variant.param("val_batches", 32)))
    if variant.workload in ("convlm", "convlm-ft"):
        return ConvLMJob(
            seed,
            optimizer,
            warmup,
            int(variant.param("val_batches", 8)),
            finetune=variant.workload == "convlm-ft",
        )
    if variant.workload == "imagefit":
        return ImageFitJob(seed, int(variant.param("batch")), optimizer, warmup)
    if variant.workload == "cnn-ft":
        return DigitsFineTuneJob(seed, int(variant.param("batch")), optimizer, warmup)
    if variant.workload == "lorenz":
        return LorenzJob(seed, int(variant.param("batch")), optimizer, warmup)
    if variant.workload == "swissroll":
        return SwissRollJob(seed, int(variant.param("batch")), optimizer, warmup)
    if variant.workload == "patchae-ft":
        return PatchFineTuneJob(seed, int(variant.param("batch")), optimizer, warmup)
    if variant.workload == "digitvit":
        return DigitViTJob(seed, int(variant.param("batch")), optimizer, warmup)
    if variant.workload == "hastie":
        return HastieJob(seed, int(variant.param("batch")), optimizer, warmup)
    if variant.workload == "lorenz-ft":
        return LorenzFineTuneJob(seed, int(variant.param("batch")), optimizer, warmup)
    if variant.workload == "roll-ft":
        return RollFineTuneJob(seed, int(variant.param("batch")), optimizer, warmup)
    raise ValueError(f"unknown workload {variant.workload!r}")


# --------------------------------------------------------------------------- W1 nqm

NQM_DIM = 10_000


def nqm_curvatures(dim: int = NQM_DIM) -> np.ndarray:
    return 1.0 / np.arange(1, dim + 1, dtype=np.float64)


class DictCheckpointer:
    """The stagelr checkpoint protocol over a job's ``snapshot``/``load`` (numpy jobs)."""

    def __init__(self, job: Job, set_lr: Callable[[float], None] | None = None) -> None:
        self._job = job
        self._set_lr = set_lr
        self._saved: dict[str, Any] = {}

    def begin(self, segment: SegmentPlan) -> None:
        if segment.restore:
            self._job.load(copy.deepcopy(self._saved[segment.restore]))
        if segment.save_start:
            self._saved[segment.save_start] = self._job.snapshot()
        if self._set_lr is not None:
            self._set_lr(segment.lr)

    def end(self, segment: SegmentPlan) -> None:
        if segment.save_end:
            self._saved[segment.save_end] = self._job.snapshot()
        for name in segment.discard:
            self._saved.pop(name, None)


class NQMJob:
    """Plain SGD on the noisy quadratic model.

    Gradient at theta: ``H theta + e`` with ``e ~ N(0, H / B)``; the noise of trajectory
    step ``t`` comes from a generator seeded by ``(seed, t)``, so the checkpoint is theta
    alone (the "RNG state" is the step, which every segment names).
    """

    eval_cost_steps = 0.0  # the true loss is free: no data involved

    def __init__(self, seed: int, batch: int, optimizer: str = "standard") -> None:
        self.seed = seed
        self.h = nqm_curvatures()
        self.noise_sd = np.sqrt(self.h / batch)
        self.theta = np.random.default_rng([seed, 2**31]).standard_normal(NQM_DIM)
        self._sf: Any = None
        if optimizer == "schedulefree":
            import schedulefree
            import torch

            self._param = torch.nn.Parameter(torch.from_numpy(self.theta.copy()))
            self._sf = schedulefree.SGDScheduleFree([self._param])  # lr 1.0, momentum 0.9
            self._sf.train()
        elif optimizer != "standard":
            raise ValueError(f"unknown optimizer {optimizer!r}")

    def _noise(self, t: int) -> np.ndarray:
        return self.noise_sd * np.random.default_rng([self.seed, t]).standard_normal(NQM_DIM)

    def train_step(self, t: int, lr: float) -> float:
        if self._sf is not None:
            import torch

            theta = self._param.detach().numpy()
            self._param.grad = torch.from_numpy(self.h * theta + self._noise(t))
            self._sf.step()
            loss = self.loss(self._param.detach().numpy())
        else:
            self.theta -= lr * (self.h * self.theta + self._noise(t))
            loss = self.loss(self.theta)
        return loss if math.isfinite(loss) and loss < DIVERGED_ABOVE else math.nan

    def loss(self, theta: np.ndarray) -> float:
        with np.errstate(over="ignore", invalid="ignore"):
            return float(0.5 * np.sum(self.h * theta * theta))

    def val_loss(self) -> float:
        if self._sf is not None:
            self._sf.eval()  # the averaged iterate x, where schedule-free evaluates
            value = self.loss(self._param.detach().numpy())
            self._sf.train()
            return value
        return self.loss(self.theta)

    def snapshot(self) -> Any:
        return self.theta.copy()

    def load(self, state: Any) -> None:
        self.theta = np.array(state, dtype=np.float64)

    def checkpointer(self) -> SegmentCheckpointer:
        if self._sf is not None:
            raise ValueError("stagelr drives plain SGD on the NQM, not schedule-free")
        return DictCheckpointer(self)


def nqm_expected_losses(lrs: np.ndarray, batch: int, dim: int = NQM_DIM) -> np.ndarray:
    """E[L] after each step of plain SGD at the per-step LRs ``lrs`` (exact recursion).

    ``m_{t+1} = (1 - a h)^2 m_t + a^2 h / B`` from ``m_0 = 1``; ``E[L] = 1/2 sum h m``.
    Returns ``len(lrs) + 1`` values, the first at step 0.
    """
    h = nqm_curvatures(dim)
    m = np.ones(dim)
    out = [0.5 * float(h @ m)]
    for a in lrs:
        m = (1.0 - a * h) ** 2 * m + a * a * h / batch
        out.append(0.5 * float(h @ m))
    return np.asarray(out)


def nqm_oracle(steps: int, batch: int, dim: int = NQM_DIM) -> tuple[np.ndarray, float]:
    """The per-step LR sequence minimizing the exact E[L_T] (L-BFGS-B, adjoint gradient).

    The physical limit for any LR schedule of plain SGD on this NQM. Returns (lrs, E[L_T]).
    """
    from scipy.optimize import minimize

    h = nqm_curvatures(dim)

    def objective(a: np.ndarray) -> tuple[float, np.ndarray]:
        ms = np.empty((steps + 1, dim))
        ms[0] = 1.0
        for t in range(steps):
            ms[t + 1] = (1.0 - a[t] * h) ** 2 * ms[t] + a[t] ** 2 * h / batch
        lam = 0.5 * h  # dL/dm_T
        grad = np.empty(steps)
        for t in range(steps - 1, -1, -1):
            dc = -2.0 * h * (1.0 - a[t] * h)
            grad[t] = float(lam @ (dc * ms[t] + 2.0 * a[t] * h / batch))
            lam = lam * (1.0 - a[t] * h) ** 2
        return 0.5 * float(h @ ms[steps]), grad

    start = np.full(steps, 0.5)
    found = minimize(
        objective,
        start,
        jac=True,
        method="L-BFGS-B",
        bounds=[(0.0, 2.0)] * steps,  # 2 / h_max: beyond it the top direction diverges
        options={"maxiter": 500},
    )
    lrs = np.asarray(found.x)
    return lrs, float(nqm_expected_losses(lrs, batch, dim)[-1])


# --------------------------------------------------------------------------- torch jobs


class TorchJob:
    """A model, its optimizer and its loss; shared by the digits and charlm jobs."""

    eval_cost_steps = 0.0
    model: Any
    optimizer: Any
    clip: float | None = None
    _schedulefree = False

    def _loss(self, t: int) -> Any:
        raise NotImplementedError

    def _val(self) -> float:
        raise NotImplementedError

    def train_step(self, t: int, lr: float) -> float:
        import torch

        for group in self.optimizer.param_groups:
            if not self._schedulefree:
                group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._loss(t)
        value = float(loss.detach())
        if not math.isfinite(value) or value > DIVERGED_ABOVE:
            return math.nan
        loss.backward()
        if self.clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.optimizer.step()
        return value

    def val_loss(self) -> float:
        import torch

        if self._schedulefree:
            self.optimizer.eval()
        self.model.eval()
        with torch.no_grad():
            value = self._val()
        self.model.train()
        if self._schedulefree:
            self.optimizer.train()
        return value if math.isfinite(value) else math.nan

    def snapshot(self) -> Any:
        return copy.deepcopy(
            {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
        )

    def load(self, state: Any) -> None:
        state = copy.deepcopy(state)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])

    def checkpointer(self) -> SegmentCheckpointer:
        from stagelr.torch import Checkpointer

        return Checkpointer(self.model, self.optimizer)


def _torch_setup(seed: int) -> None:
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- W2 digits


@lru_cache(maxsize=1)
def _digits() -> Any:
    from stagelr_service.demo import DigitsData

    return DigitsData.load()


class DigitsJob(TorchJob):
    """MLP 64-256-256-10, SGD Nesterov 0.9, weight decay 5e-4, batch 64."""

    batch = 64

    def __init__(self, seed: int, label_noise: float, optimizer: str, warmup: int) -> None:
        import torch
        from torch import nn

        _torch_setup(seed)
        data = _digits()
        self.seed = seed
        self.x_train, self.x_val, self.y_val = data.x_train, data.x_val, data.y_val
        y = data.y_train.clone()
        if label_noise > 0:
            # A different class for a seeded fraction of the training labels only.
            g = torch.Generator().manual_seed(10_000 + seed)
            flip = torch.rand(len(y), generator=g) < label_noise
            shift = torch.randint(1, 10, (len(y),), generator=g)
            y = torch.where(flip, (y + shift) % 10, y)
        self.y_train = y
        self.model = nn.Sequential(
            nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
        )
        if optimizer == "schedulefree":
            import schedulefree

            self._schedulefree = True
            # Published defaults (lr 1.0, momentum 0.9); the workload's weight decay and
            # the benchmark's 5% warmup.
            self.optimizer = schedulefree.SGDScheduleFree(
                self.model.parameters(), weight_decay=5e-4, warmup_steps=warmup
            )
            self.optimizer.train()
        else:
            self.optimizer = torch.optim.SGD(
                self.model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
            )
        self.loss_fn = nn.CrossEntropyLoss()
        self.per_epoch = len(self.x_train) // self.batch
        self._epoch = -1
        self._order: Any = None
        self.eval_cost_steps = len(self.x_val) / self.batch / 3.0

    def _loss(self, t: int) -> Any:
        import torch

        epoch, position = divmod(t, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._order = torch.randperm(len(self.x_train), generator=g)
            self._epoch = epoch
        idx = self._order[position * self.batch : (position + 1) * self.batch]
        return self.loss_fn(self.model(self.x_train[idx]), self.y_train[idx])

    def _val(self) -> float:
        return float(self.loss_fn(self.model(self.x_val), self.y_val))


# --------------------------------------------------------------------------- W3 charlm


@dataclass(frozen=True)
class Corpus:
    train: bytes
    val: bytes
    sha256: str
    files: int
    root: str


@lru_cache(maxsize=1)
def stdlib_corpus() -> Corpus:
    """The top-level ``*.py`` files of this Python's standard library, by file: every
    10th file (sorted by name) to validation. The SHA-256 covers names and contents."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(root.glob("*.py"))
    digest = hashlib.sha256()
    train, val = bytearray(), bytearray()
    for i, path in enumerate(files):
        content = path.read_bytes()
        digest.update(path.name.encode() + b"\0" + content + b"\0")
        (val if i % 10 == 9 else train).extend(content)
    return Corpus(bytes(train), bytes(val), digest.hexdigest(), len(files), str(root))


class NextByteLMJob(TorchJob):
    """A byte-level language model trained to predict every next byte of a window of
    ``context`` bytes drawn at random from the training bytes (the draw seeded by
    ``(seed, t)``), validated on ``val_batches`` batches of windows of the held-out bytes
    fixed by ``val_seed`` (the same for every seed and method)."""

    context: int
    batch: int
    val_seed = 12345
    #: validate batch by batch (the mean of the batches' losses), not in one pass
    batched_val = True

    def _setup(self, seed: int, train: bytes, val: bytes, val_batches: int) -> None:
        import torch

        self.seed = seed
        self.val_batches = val_batches
        self.train_data = torch.frombuffer(bytearray(train), dtype=torch.uint8).long()
        held = torch.frombuffer(bytearray(val), dtype=torch.uint8).long()
        g = torch.Generator().manual_seed(self.val_seed)
        starts = torch.randint(
            0, len(held) - self.context - 1, (val_batches * self.batch,), generator=g
        ).tolist()
        self.val_x = torch.stack([held[s : s + self.context] for s in starts])
        self.val_y = torch.stack([held[s + 1 : s + 1 + self.context] for s in starts])

    def _loss(self, t: int) -> Any:
        import torch
        import torch.nn.functional as F

        g = torch.Generator().manual_seed(self.seed * 1_000_003 + t)
        starts = torch.randint(
            0, len(self.train_data) - self.context - 1, (self.batch,), generator=g
        ).tolist()
        x = torch.stack([self.train_data[s : s + self.context] for s in starts])
        y = torch.stack([self.train_data[s + 1 : s + 1 + self.context] for s in starts])
        return F.cross_entropy(self.model(x).reshape(-1, 256), y.reshape(-1))

    def _val(self) -> float:
        import torch.nn.functional as F

        if not self.batched_val:
            logits = self.model(self.val_x)
            return float(F.cross_entropy(logits.reshape(-1, 256), self.val_y.reshape(-1)))
        total = 0.0
        for i in range(self.val_batches):
            rows = slice(i * self.batch, (i + 1) * self.batch)
            logits = self.model(self.val_x[rows])
            total += float(F.cross_entropy(logits.reshape(-1, 256), self.val_y[rows].reshape(-1)))
        return total / self.val_batches


class CharLMJob(NextByteLMJob):
    """Byte-level pre-LN transformer (2 layers, d 128, 4 heads, context 64, batch 32),
    AdamW (0.9, 0.95), weight decay 0.1, gradient clipping at 1.0."""

    context = 64
    batch = 32

    def __init__(self, seed: int, optimizer: str, warmup: int, val_batches: int = 16) -> None:
        import torch

        _torch_setup(seed)
        corpus = stdlib_corpus()
        self._setup(seed, corpus.train, corpus.val, val_batches)
        self.model = _char_transformer(self.context)
        self.clip = 1.0
        if optimizer == "schedulefree":
            import schedulefree

            self._schedulefree = True
            # Published defaults (lr 0.0025, betas (0.9, 0.999)); the workload's weight
            # decay and the benchmark's 5% warmup.
            self.optimizer = schedulefree.AdamWScheduleFree(
                self.model.parameters(), weight_decay=0.1, warmup_steps=warmup
            )
            self.optimizer.train()
        else:
            self.optimizer = torch.optim.AdamW(
                self.model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1
            )
        self.eval_cost_steps = self.val_batches / 3.0


def _char_transformer(context: int, d: int = 128, heads: int = 4, layers: int = 2) -> Any:
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, n, _ = x.shape
            q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
            q, k, v = (z.view(b, n, heads, d // heads).transpose(1, 2) for z in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(y.transpose(1, 2).reshape(b, n, d))
            out: torch.Tensor = x + self.mlp(self.ln2(x))
            return out

    class CharTransformer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(256, d)
            self.position = nn.Parameter(torch.zeros(context, d))
            nn.init.normal_(self.position, std=0.02)
            self.blocks = nn.Sequential(*(Block() for _ in range(layers)))
            self.ln = nn.LayerNorm(d)
            self.head = nn.Linear(d, 256)

        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            x = self.embed(idx) + self.position[: idx.shape[1]]
            logits: torch.Tensor = self.head(self.ln(self.blocks(x)))
            return logits

    return CharTransformer()


# --------------------------------------------------------------------------- test split


def _adam_family(model: Any, optimizer: str, warmup: int) -> tuple[Any, bool]:
    """Adam at its framework defaults (lr 1e-3, betas (0.9, 0.999), no weight decay), or
    schedule-free AdamW at its published defaults with no weight decay (that is Adam)
    and the benchmark's warmup. Returns (optimizer, schedule-free?)."""
    import torch

    if optimizer == "schedulefree":
        import schedulefree

        sf = schedulefree.AdamWScheduleFree(model.parameters(), warmup_steps=warmup)
        sf.train()
        return sf, True
    if optimizer != "standard":
        raise ValueError(f"unknown optimizer {optimizer!r}")
    return torch.optim.Adam(model.parameters(), lr=1e-3), False


class ArrayJob(TorchJob):
    """A model trained on in-memory tensors: a fresh permutation of the training set
    every epoch, drawn from ``(seed, epoch)``; the whole validation set evaluated."""

    batch: int
    x_train: Any
    y_train: Any
    x_val: Any
    y_val: Any
    loss_fn: Any

    def _start(self, seed: int) -> None:
        self.seed = seed
        self.per_epoch = len(self.x_train) // self.batch
        self._epoch = -1
        self._order: Any = None
        self.eval_cost_steps = len(self.x_val) / self.batch / 3.0

    def _loss(self, t: int) -> Any:
        import torch

        epoch, position = divmod(t, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._order = torch.randperm(len(self.x_train), generator=g)
            self._epoch = epoch
        idx = self._order[position * self.batch : (position + 1) * self.batch]
        return self.loss_fn(self.model(self.x_train[idx]), self.y_train[idx])

    def _val(self) -> float:
        return float(self.loss_fn(self.model(self.x_val), self.y_val))


class CNNJob(ArrayJob):
    """Conv 3x3 (16) - conv 3x3 (32) - max-pool - 64 - 10 on the 8x8 digits images
    (the digits workload's 70/30 split), Adam, cross-entropy."""

    def __init__(self, seed: int, batch: int, optimizer: str, warmup: int) -> None:
        from torch import nn

        _torch_setup(seed)
        data = _digits()
        self.batch = batch
        self.x_train = data.x_train.reshape(-1, 1, 8, 8)
        self.y_train = data.y_train
        self.x_val = data.x_val.reshape(-1, 1, 8, 8)
        self.y_val = data.y_val
        self.model = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )
        self.optimizer, self._schedulefree = _adam_family(self.model, optimizer, warmup)
        self.loss_fn = nn.CrossEntropyLoss()
        self._start(seed)


@lru_cache(maxsize=1)
def _friedman() -> tuple[Any, Any, Any, Any]:
    """Friedman #1 (10 features, 5 informative, noise SD 1), 4,000 training and 1,000
    validation points from a fixed generator seed; targets standardized on the training
    set (the validation MSE's noise floor is then 1 / var(y), about 0.04)."""
    import torch
    from sklearn.datasets import make_friedman1

    x, y = make_friedman1(n_samples=5000, n_features=10, noise=1.0, random_state=0)
    mean, sd = float(y[:4000].mean()), float(y[:4000].std())
    y = (y - mean) / sd
    xt = torch.tensor(x, dtype=torch.float32)
    yt = torch.tensor(y, dtype=torch.float32)
    return xt[:4000], yt[:4000], xt[4000:], yt[4000:]


class RegressionJob(ArrayJob):
    """MLP 10-128-128-1 regressing Friedman #1, MSE, SGD momentum 0.9 (no weight decay)."""

    def __init__(self, seed: int, batch: int, optimizer: str, warmup: int) -> None:
        import torch
        from torch import nn

        _torch_setup(seed)
        self.batch = batch
        self.x_train, self.y_train, self.x_val, self.y_val = _friedman()
        self.model = nn.Sequential(
            nn.Linear(10, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 1),
            nn.Flatten(0),
        )  # fmt: skip
        if optimizer == "schedulefree":
            import schedulefree

            self._schedulefree = True
            # Published defaults (lr 1.0, momentum 0.9) and the benchmark's warmup.
            self.optimizer = schedulefree.SGDScheduleFree(
                self.model.parameters(), warmup_steps=warmup
            )
            self.optimizer.train()
        elif optimizer == "standard":
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)
        else:
            raise ValueError(f"unknown optimizer {optimizer!r}")
        self.loss_fn = nn.MSELoss()
        self._start(seed)


@dataclass(frozen=True)
class Prose:
    """The prose corpus: each file's first 90% to training, its last 10% to validation;
    the files alternate between half ``a`` (pretraining) and half ``b`` (fine-tuning)."""

    train: bytes
    val: bytes
    train_a: bytes
    train_b: bytes
    val_b: bytes
    sha256: str
    files: int


def prose_files() -> list[Path]:
    """The prose that ships with Python and scikit-learn: the standard library's
    ``*.txt``, ``*.rst`` and ``*.html`` files outside its test folders, and scikit-learn's
    dataset descriptions. Sorted by their path under each root."""
    import sklearn

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    ours = [
        p
        for p in sorted(stdlib.rglob("*"))
        if p.suffix in (".txt", ".rst", ".html")
        and p.is_file()
        and not {"site-packages", "dist-packages"} & set(p.parts)
        and not any("test" in part for part in p.relative_to(stdlib).parts[:-1])
    ]
    descr = sorted((Path(sklearn.__file__).parent / "datasets" / "descr").glob("*.rst"))
    return ours + descr


@lru_cache(maxsize=1)
def prose_corpus() -> Prose:
    digest = hashlib.sha256()
    train, val, halves = bytearray(), bytearray(), (bytearray(), bytearray())
    val_b = bytearray()
    files = prose_files()
    for i, path in enumerate(files):
        content = path.read_bytes()
        digest.update(path.name.encode() + b"\0" + content + b"\0")
        cut = int(len(content) * 0.9)
        train.extend(content[:cut])
        val.extend(content[cut:])
        halves[i % 2].extend(content[:cut])
        if i % 2:
            val_b.extend(content[cut:])
    return Prose(
        bytes(train), bytes(val), bytes(halves[0]), bytes(halves[1]), bytes(val_b),
        digest.hexdigest(), len(files),
    )  # fmt: skip


def corpus_sha256(workload: str) -> str | None:
    """The SHA-256 of the corpus a workload trains on (None: data fixed by the code)."""
    if workload in ("charlm", "convlm"):
        return stdlib_corpus().sha256
    if workload in ("charrnn", "charrnn-ft", "charmlp-ft"):
        return prose_corpus().sha256
    if workload == "convlm-ft":  # pretrained on code, fine-tuned on prose
        pair = stdlib_corpus().sha256 + prose_corpus().sha256
        return hashlib.sha256(pair.encode()).hexdigest()
    return None


def _char_gru() -> Any:
    from torch import nn

    class CharGRU(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(256, 64)
            self.gru = nn.GRU(64, 128, batch_first=True)
            self.head = nn.Linear(128, 256)

        def forward(self, idx: Any) -> Any:
            return self.head(self.gru(self.embed(idx))[0])

    return CharGRU()


#: The pretraining run of ``charrnn-ft``: half a of the prose, Adam cosine from 3e-3
#: with 5% warmup, this many steps, seed 0 (every fine-tuning seed starts from it).
PRETRAIN_STEPS = 1200
PRETRAIN_LR = 3e-3
PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "results" / "tmp" / "pretrained"


def _pretrained(
    name: str, build: Callable[[], Any], steps: int, lr: float, clip: float | None = None
) -> dict[str, Any]:
    """The weights of the job ``build()`` makes (a ``model`` and a ``_loss(t)``) after
    ``steps`` steps of Adam from seed 0, its LR warmed up linearly over 5% of them from
    ``lr``, then cosine to 0 (gradients clipped at ``clip``): trained once and cached on
    disk as ``<name>-<this file's hash>.pt`` (a code change pretrains afresh; ``name``
    carries a corpus's hash where there is one)."""
    import torch

    code = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    stem, _, corpus = name.partition("@")
    path = PRETRAINED_DIR / f"{stem}-{code}{'-' + corpus if corpus else ''}.pt"
    if path.exists():
        state: dict[str, Any] = torch.load(path, weights_only=True)
        return state
    _torch_setup(0)
    job = build()
    opt = torch.optim.Adam(job.model.parameters(), lr=lr)
    warm = steps // 20
    for t in range(steps):
        rate = lr * (
            (t + 1) / warm
            if t < warm
            else 0.5 * (1 + math.cos(math.pi * (t - warm) / (steps - warm)))
        )
        for group in opt.param_groups:
            group["lr"] = rate
        opt.zero_grad(set_to_none=True)
        job._loss(t).backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(job.model.parameters(), clip)
        opt.step()
    state = job.model.state_dict()
    PRETRAINED_DIR.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.part")
    torch.save(state, partial)
    partial.replace(path)  # atomic: a concurrent reader sees all of it or nothing
    return state


def _pretrained_lm(
    cls: Any,
    model: Callable[[Any], Any],
    name: str,
    corpus: tuple[bytes, bytes, str],
    steps: int,
    lr: float,
    clip: float | None = None,
) -> dict[str, Any]:
    """A byte LM job of ``cls`` (its data set up by ``_setup``, its net ``model(job)``)
    pretrained by :func:`_pretrained` on ``corpus`` (train, validation, SHA-256), whose
    hash keys the checkpoint too."""
    train, val, sha = corpus

    def build() -> Any:
        job = cls.__new__(cls)
        job._setup(0, train, val, 1)
        job.model = model(job)
        return job

    return _pretrained(f"{name}@{sha[:16]}", build, steps, lr, clip)


def pretrained_gru() -> dict[str, Any]:
    """The pretrained GRU's weights: half a of the prose."""
    prose = prose_corpus()
    corpus = (prose.train_a, prose.val_b, prose.sha256)
    return _pretrained_lm(
        CharRNNJob, lambda job: _char_gru(), "charrnn", corpus, PRETRAIN_STEPS, PRETRAIN_LR, 1.0
    )


class CharRNNJob(NextByteLMJob):
    """Byte-level GRU LM (embedding 64, one GRU layer of 128, context 32, batch 32), Adam
    (framework defaults), gradient clipping at 1.0, on the prose corpus. ``finetune``:
    start from :func:`pretrained_gru` (trained on half a) and train on half b, validated
    on half b's held-out tails."""

    context = 32
    batch = 32
    batched_val = False

    def __init__(
        self, seed: int, optimizer: str, warmup: int, val_batches: int, finetune: bool = False
    ) -> None:
        corpus = prose_corpus()
        state = pretrained_gru() if finetune else None
        _torch_setup(seed)
        if finetune:
            self._setup(seed, corpus.train_b, corpus.val_b, val_batches)
        else:
            self._setup(seed, corpus.train, corpus.val, val_batches)
        self.model = _char_gru()
        if state is not None:
            self.model.load_state_dict(state)
        self.clip = 1.0
        self.optimizer, self._schedulefree = _adam_family(self.model, optimizer, warmup)
        self.eval_cost_steps = self.val_batches / 3.0


# --------------------------------------------------------------------------- test2 split


class RowLSTMJob(ArrayJob):
    """An LSTM (hidden 64) reading each 8x8 digits image row by row (8 steps of 8
    pixels), a linear head on its last state; Adam at its framework defaults,
    cross-entropy, the digits workload's 70/30 split."""

    def __init__(self, seed: int, batch: int, optimizer: str, warmup: int) -> None:
        from torch import nn

        _torch_setup(seed)
        data = _digits()
        self.batch = batch
        self.x_train = data.x_train.reshape(-1, 8, 8)
        self.y_train = data.y_train
        self.x_val = data.x_val.reshape(-1, 8, 8)
        self.y_val = data.y_val

        class RowLSTM(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.lstm = nn.LSTM(8, 64, batch_first=True)
                self.head = nn.Linear(64, 10)

            def forward(self, x: Any) -> Any:
                return self.head(self.lstm(x)[0][:, -1])

        self.model = RowLSTM()
        self.optimizer, self._schedulefree = _adam_family(self.model, optimizer, warmup)
        self.loss_fn = nn.CrossEntropyLoss()
        self._start(seed)


def _sgd_family(model: Any, optimizer: str, warmup: int) -> tuple[Any, bool]:
    """SGD with momentum 0.9 (no weight decay, no Nesterov), or schedule-free SGD at its
    published defaults (lr 1.0, momentum 0.9) and the benchmark's warmup."""
    import torch

    if optimizer == "schedulefree":
        import schedulefree

        sf = schedulefree.SGDScheduleFree(model.parameters(), warmup_steps=warmup)
        sf.train()
        return sf, True
    if optimizer != "standard":
        raise ValueError(f"unknown optimizer {optimizer!r}")
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), False


class AutoencoderJob(ArrayJob):
    """An MLP autoencoder 64-128-16-128-64 (ReLU, linear output) reconstructing the
    digits images (pixels in [0, 1]), MSE, SGD momentum 0.9; validated on the held-out
    30% of the images."""

    def __init__(self, seed: int, batch: int, optimizer: str, warmup: int) -> None:
        from torch import nn

        _torch_setup(seed)
        data = _digits()
        self.batch = batch
        self.x_train, self.y_train = data.x_train, data.x_train
        self.x_val, self.y_val = data.x_val, data.x_val
        self.model = nn.Sequential(
            nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 16),
            nn.Linear(16, 128), nn.ReLU(), nn.Linear(128, 64),
        )  # fmt: skip
        self.optimizer, self._schedulefree = _sgd_family(self.model, optimizer, warmup)
        self.loss_fn = nn.MSELoss()
        self._start(seed)


def _char_mlp(context: int) -> Any:
    """A Bengio-style byte-level MLP language model: the last ``context`` bytes embedded
    (32 each), concatenated, one hidden layer of 512 (tanh), logits over 256 bytes."""
    from torch import nn

    class CharMLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(256, 32)
            self.hidden = nn.Linear(32 * context, 512)
            self.head = nn.Linear(512, 256)

        def forward(self, idx: Any) -> Any:
            return self.head(self.hidden(self.embed(idx).flatten(1)).tanh())

    return CharMLP()


#: The pretraining run of ``charmlp-ft``: half a of the prose, Adam cosine from 2e-3 with
#: 5% warmup, this many steps, seed 0 (every fine-tuning seed starts from it).
MLP_PRETRAIN_STEPS = 1500
MLP_PRETRAIN_LR = 2e-3


def pretrained_char_mlp() -> dict[str, Any]:
    """The pretrained byte MLP's weights: half a of the prose."""
    prose = prose_corpus()
    corpus = (prose.train_a, prose.val_b, prose.sha256)
    return _pretrained_lm(
        CharMLPJob,
        lambda job: _char_mlp(job.context),
        "charmlp",
        corpus,
        MLP_PRETRAIN_STEPS,
        MLP_PRETRAIN_LR,
    )


class CharMLPJob(TorchJob):
    """Fine-tuning the byte MLP of :func:`_char_mlp` (context 16, batch 64): start from
    :func:`pretrained_char_mlp` (trained on half a of the prose) and train on half b
    with a fresh SGD momentum 0.9, validated on half b's held-out tails."""

    context = 16
    batch = 64

    def __init__(self, seed: int, optimizer: str, warmup: int, val_batches: int) -> None:
        corpus = prose_corpus()
        state = pretrained_char_mlp()
        _torch_setup(seed)
        self._setup(seed, corpus.train_b, corpus.val_b, val_batches)
        self.model = _char_mlp(self.context)
        self.model.load_state_dict(state)
        self.optimizer, self._schedulefree = _sgd_family(self.model, optimizer, warmup)
        self.eval_cost_steps = self.val_batches / 3.0

    def _setup(self, seed: int, train: bytes, val: bytes, val_batches: int) -> None:
        import torch

        self.seed = seed
        self.val_batches = val_batches
        self.train_data = torch.frombuffer(bytearray(train), dtype=torch.uint8).long()
        held = torch.frombuffer(bytearray(val), dtype=torch.uint8).long()
        g = torch.Generator().manual_seed(54321)  # the same validation set for everyone
        starts = torch.randint(
            0, len(held) - self.context - 1, (val_batches * self.batch,), generator=g
        )
        self.val_x = torch.stack([held[s : s + self.context] for s in starts.tolist()])
        self.val_y = held[starts + self.context]

    def _loss(self, t: int) -> Any:
        import torch
        import torch.nn.functional as F

        g = torch.Generator().manual_seed(self.seed * 1_000_003 + t)
        starts = torch.randint(
            0, len(self.train_data) - self.context - 1, (self.batch,), generator=g
        )
        x = torch.stack([self.train_data[s : s + self.context] for s in starts.tolist()])
        return F.cross_entropy(self.model(x), self.train_data[starts + self.context])

    def _val(self) -> float:
        import torch.nn.functional as F

        return float(F.cross_entropy(self.model(self.val_x), self.val_y))


# --------------------------------------------------------------------------- test3 split


class ConvLMJob(NextByteLMJob):
    """A causal dilated 1-D conv net as a byte-level LM on the standard library's
    ``*.py`` (charlm's corpus), or (``finetune``) that net pretrained there by
    :func:`pretrained_conv_lm` and trained on the prose corpus's half b with a fresh
    Adam, validated on half b's held-out tails (a change of domain: code to English).
    The net: embedding 64, four residual blocks of a causal
    convolution (kernel 3, dilations 1, 2, 4, 8; 64 channels; ReLU), a linear head,
    context 64, batch 32, every position predicted; Adam at its framework defaults."""

    context = 64
    batch = 32
    val_seed = 23456

    def __init__(
        self, seed: int, optimizer: str, warmup: int, val_batches: int, finetune: bool = False
    ) -> None:
        if finetune:
            state = pretrained_conv_lm()
            prose = prose_corpus()
            _torch_setup(seed)
            self._setup(seed, prose.train_b, prose.val_b, val_batches)
            self.model = _causal_conv_lm()
            self.model.load_state_dict(state)
        else:
            _torch_setup(seed)
            self._setup(seed, stdlib_corpus().train, stdlib_corpus().val, val_batches)
            self.model = _causal_conv_lm()
        self.optimizer, self._schedulefree = _adam_family(self.model, optimizer, warmup)
        self.eval_cost_steps = self.val_batches / 3.0


#: The pretraining run of ``convlm-ft``: the standard library's ``*.py`` (charlm's
#: training files), Adam cosine from 4e-3 with 5% warmup, this many steps, seed 0.
CONV_PRETRAIN_STEPS = 1500
CONV_PRETRAIN_LR = 4e-3


def pretrained_conv_lm() -> dict[str, Any]:
    """The conv LM's weights after pretraining on code: charlm's training files."""
    code = stdlib_corpus()
    corpus = (code.train, code.val, code.sha256)
    return _pretrained_lm(
        ConvLMJob,
        lambda job: _causal_conv_lm(),
        "convlm",
        corpus,
        CONV_PRETRAIN_STEPS,
        CONV_PRETRAIN_LR,
    )


def _causal_conv_lm(channels: int = 64, dilations: tuple[int, ...] = (1, 2, 4, 8)) -> Any:
    import torch
    import torch.nn.functional as F
    from torch import nn

    class CausalBlock(nn.Module):
        def __init__(self, dilation: int) -> None:
            super().__init__()
            self.pad = 2 * dilation  # kernel 3: two taps into the past
            self.conv = nn.Conv1d(channels, channels, 3, dilation=dilation)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = x + F.relu(self.conv(F.pad(x, (self.pad, 0))))
            return out

    class ConvLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(256, 64)
            self.inp = nn.Conv1d(64, channels, 1)
            self.blocks = nn.Sequential(*(CausalBlock(d) for d in dilations))
            self.head = nn.Linear(channels, 256)

        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            x = self.inp(self.embed(idx).transpose(1, 2))
            logits: torch.Tensor = self.head(self.blocks(x).transpose(1, 2))
            return logits

    return ConvLM()


@dataclass(frozen=True)
class ImagePixels:
    """scikit-learn's bundled ``china.jpg``, every 4th pixel both ways (107 x 160),
    RGB in [0, 1] against (row, column) in [-1, 1]; a fixed 80/20 split of the pixels."""

    x_train: Any
    y_train: Any
    x_val: Any
    y_val: Any


@lru_cache(maxsize=1)
def _image_pixels() -> ImagePixels:
    import torch
    from sklearn.datasets import load_sample_image

    image = torch.from_numpy(load_sample_image("china.jpg")[::4, ::4].copy()).float() / 255.0
    rows, cols = image.shape[:2]
    grid = torch.stack(
        torch.meshgrid(torch.linspace(-1, 1, rows), torch.linspace(-1, 1, cols), indexing="ij"),
        dim=-1,
    ).reshape(-1, 2)
    colours = image.reshape(-1, 3)
    order = torch.randperm(len(grid), generator=torch.Generator().manual_seed(777))
    cut = int(0.8 * len(grid))
    train, val = order[:cut], order[cut:]
    return ImagePixels(grid[train], colours[train], grid[val], colours[val])


def _fourier_mlp(features: int = 128, scale: float = 8.0, width: int = 256) -> Any:
    """An MLP on fixed random Fourier features of the 2-D coordinate (Tancik et al.
    2020): ``features`` frequencies drawn once (seed 4242, the same for every seed),
    sin and cos, two hidden ReLU layers of ``width``, three outputs."""
    import torch
    from torch import nn

    frequencies = scale * torch.randn(2, features, generator=torch.Generator().manual_seed(4242))

    class FourierMLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("frequencies", frequencies)
            self.net = nn.Sequential(
                nn.Linear(2 * features, width), nn.ReLU(),
                nn.Linear(width, width), nn.ReLU(),
                nn.Linear(width, 3),
            )  # fmt: skip

        def forward(self, xy: torch.Tensor) -> torch.Tensor:
            z = 2 * math.pi * xy @ self.frequencies
            out: torch.Tensor = self.net(torch.cat([z.sin(), z.cos()], dim=1))
            return out

    return FourierMLP()


class ImageFitJob(ArrayJob):
    """Regressing a photo's colours from pixel coordinates (:func:`_image_pixels`) with
    the Fourier-feature MLP of :func:`_fourier_mlp`, MSE, SGD momentum 0.9; validated on
    the held-out fifth of the pixels (interpolation)."""

    def __init__(self, seed: int, batch: int, optimizer: str, warmup: int) -> None:
        from torch import nn

        _torch_setup(seed)
        data = _image_pixels()
        self.batch = batch
        self.x_train, self.y_train = data.x_train, data.y_train
        self.x_val, self.y_val = data.x_val, data.y_val
        self.model = _fourier_mlp()
        self.optimizer, self._schedulefree = _sgd_family(self.model, optimizer, warmup)
        self.loss_fn = nn.MSELoss()
        self._start(seed)


def _digit_cnn() -> Any:
    """Conv 3x3 (16) - max-pool - conv 3x3 (32) - max-pool - 64 - 10, for 8x8 images."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 2 * 2, 64), nn.ReLU(), nn.Linear(64, 10),
    )  # fmt: skip


def _digits_of(classes: range, part: str) -> tuple[Any, Any]:
    """The digits images (N, 1, 8, 8) and labels of ``classes`` from the train or val part."""
    data = _digits()
    x, y = (data.x_train, data.y_train) if part == "train" else (data.x_val, data.y_val)
    keep = (y >= classes.start) & (y < classes.stop)
    return x[keep].reshape(-1, 1, 8, 8), y[keep]


#: The pretraining run of ``cnn-ft``: digits 0-4, Adam cosine from 2e-3 with 5% warmup,
#: batch 32, this many steps, seed 0 (every fine-tuning seed starts from it).
CNN_PRETRAIN_STEPS = 600
CNN_PRETRAIN_LR = 2e-3
#: AdamW's weight decay on the fine-tune (the rivals and schedule-free take it too).
CNN_FT_DECAY = 0.01


def pretrained_digit_cnn() -> dict[str, Any]:
    """The conv net of :func:`_digit_cnn` trained on digits 0-4 (:func:`_pretrained`)."""
    from torch import nn

    def build() -> ArrayJob:
        job = ArrayJob.__new__(ArrayJob)
        job.batch = 32
        job.x_train, job.y_train = _digits_of(range(0, 5), "train")
        job.x_val, job.y_val = _digits_of(range(0, 5), "val")
        job.model = _digit_cnn()
        job.loss_fn = nn.CrossEntropyLoss()
        job._start(0)
        return job

    return _pretrained("digitcnn", build, CNN_PRETRAIN_STEPS, CNN_PRETRAIN_LR)


class DigitsFineTuneJob(ArrayJob):
    """Fine-tuning: the conv net of :func:`pretrained_digit_cnn` (digits 0-4), its last
    layer replaced by a zero one (a new head for a new label set: the loss starts at
    ln 10), trained on
    digits 5-9 with a fresh AdamW (framework betas, weight decay
    0.01), batch 32, validated on the held-out images of 5-9."""

    def __init__(self, seed: int, batch: int, optimizer: str, warmup: int) -> None:
        import torch
        from torch import nn

        state = pretrained_digit_cnn()
        _torch_setup(seed)
        self.batch = batch
        self.x_train, self.y_train = _digits_of(range(5, 10), "train")
        self.x_val, self.y_val = _digits_of(range(5, 10), "val")
        self.model = _digit_cnn()
        self.model.load_state_dict(state)
        head = self.model[len(self.model) - 1]
        with torch.no_grad():
            head.weight.zero_()
            head.bias.zero_()
        if optimizer == "schedulefree":
            import schedulefree

            self.optimizer = schedulefree.AdamWScheduleFree(
                self.model.parameters(), weight_decay=CNN_FT_DECAY, warmup_steps=warmup
            )
            self.optimizer.train()
            self._schedulefree = True
        elif optimizer == "standard":
            self.optimizer = torch.optim.AdamW(
                self.model.parameters(), lr=1e-3, weight_decay=CNN_FT_DECAY
            )
        else:
            raise ValueError(f"unknown optimizer {optimizer!r}")
        self.loss_fn = nn.CrossEntropyLoss()
        self._start(seed)


# --------------------------------------------------------------------------- test4 split

#: The Lorenz system's parameters, its integration step and how far ahead ``lorenz``
#: predicts (in samples of two integration steps).
LORENZ = (10.0, 28.0, 8.0 / 3.0)
LORENZ_DT = 0.01
LORENZ_WINDOW = 24
LORENZ_AHEAD = 40


@lru_cache(maxsize=2)
def _lorenz_windows(system: tuple[float, float, float] = LORENZ) -> tuple[Any, Any, Any, Any]:
    """Windows of one trajectory of the Lorenz system at parameters ``system`` (sigma,
    rho, beta; RK4 from (1, 1, 1), 2,000 steps of
    burn-in, then 30,000 steps sampled every second one; each coordinate standardized):
    ``LORENZ_WINDOW`` samples in, the sample ``LORENZ_AHEAD`` after the window's last
    out. The first 80% of the time is training, the rest validation (the same attractor,
    later in time)."""
    import torch

    sigma, rho, beta = system

    def deriv(p: np.ndarray) -> np.ndarray:
        x, y, z = p
        return np.array([sigma * (y - x), x * (rho - z) - y, x * y - beta * z])

    p = np.array([1.0, 1.0, 1.0])
    samples = []
    for i in range(32_000):
        k1 = deriv(p)
        k2 = deriv(p + 0.5 * LORENZ_DT * k1)
        k3 = deriv(p + 0.5 * LORENZ_DT * k2)
        k4 = deriv(p + LORENZ_DT * k3)
        p = p + LORENZ_DT / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        if i >= 2_000 and i % 2 == 0:
            samples.append(p)
    series = np.array(samples)
    series = (series - series.mean(axis=0)) / series.std(axis=0)
    span = LORENZ_WINDOW + LORENZ_AHEAD
    starts = np.arange(len(series) - span)
    x = np.stack([series[s : s + LORENZ_WINDOW] for s in starts])
    y = series[starts + span - 1]
    cut = int(0.8 * len(starts))
    as_t = lambda a: torch.from_numpy(a.astype(np.float32))  # noqa: E731
    return as_t(x[:cut]), as_t(y[:cut]), as_t(x[cut:]), as_t(y[cut:])


def _lorenz_gru(hidden: int = 64) -> Any:
    """A GRU over the window's samples, a linear head on its last state."""
    import torch
    from torch import nn

    class LorenzGRU(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = nn.GRU(3, hidden, batch_first=True)
            self.head = nn.Linear(hidden, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.head(self.gru(x)[0][:, -1])
            return out

    return LorenzGRU()


class LorenzJob(ArrayJob):
    """Forecasting the Lorenz system (:func:`_lorenz_windows`) a fixed time ahead from a
    window of its past with the GRU of :func:`_lorenz_gru`, MSE, Adam at its framework
    defaults; validated on the trajectory's last fifth (every 4th window)."""

    def __init__(self, seed: int, batch: int, optimizer: str, warmup: int) -> None:
        from torch import nn

        _torch_setup(seed)
        x_train, y_train, x_val, y_val = _lorenz_windows()
        self.batch = batch
        self.x_train, self.y_train = x_train, y_train
        self.x_val, self.y_val = x_val[::4], y_val[::4]
        self.model = _lorenz_gru()
        self.optimizer, self._schedulefree = _adam_family(self.model, optimizer, warmup)
        self.loss_fn = nn.MSELoss()
        self._start(seed)


@lru_cache(maxsize=1)
def _swiss_roll() -> tuple[Any, Any, Any, Any]:
    """scikit-learn's swiss-roll generator (12,000 points, noise 0.5, ``random_state``
    0): the 3-D points in, the position along the roll (``t``) out, both standardized;
    the first 10,000 points for training, the rest for validation."""
    import torch
    from sklearn.datasets import make_swiss_roll

    points, position = make_swiss_roll(n_samples=12_000, noise=0.5, random_state=0)
    points = (points - points.mean(axis=0)) / points.std(axis=0)
    position = ((position - position.mean()) / position.std())[:, None]
    x = torch.from_numpy(points.astype(np.float32))
    y = torch.from_numpy(position.astype(np.float32))
    return x[:10_000], y[:10_000], x[10_000:], y[10_000:]


def _roll_mlp() -> Any:
    """The swiss roll's MLP: 3-128-128-1, ReLU."""
    from torch import nn

    return nn.Sequential(
        nn.Linear(3, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 1)
    )


class SwissRollJob(ArrayJob):
    """Unrolling the swiss roll (:func:`_swiss_roll`): an MLP 3-128-128-1 (ReLU)
    regressing the position along the roll from the 3-D point, MSE, SGD momentum 0.9."""

    def __init__(self, seed: int, batch: int, optimizer: str, warmup: int) -> None:
        from torch import nn

        _torch_setup(seed)
        self.batch = batch
        self.x_train, self.y_train, self.x_val, self.y_val = _swiss_roll()
        self.model = _roll_mlp()
        self.optimizer, self._schedulefree = _sgd_family(self.model, optimizer, warmup)
        self.loss_fn = nn.MSELoss()
        self._start(seed)


PATCH = 16


@lru_cache(maxsize=2)
def _photo_patches(photo: str) -> tuple[Any, Any]:
    """6,000 RGB patches of ``PATCH`` x ``PATCH`` pixels (values in [0, 1]) of one of
    scikit-learn's two bundled photos at half its resolution, at corners drawn once
    (seed 99): the first 5,000 for training, the rest for validation."""
    import torch
    from sklearn.datasets import load_sample_image

    image = torch.from_numpy(load_sample_image(photo)[::2, ::2].copy()).float() / 255.0
    image = image.permute(2, 0, 1)  # (3, rows, cols)
    g = torch.Generator().manual_seed(99)
    rows = torch.randint(0, image.shape[1] - PATCH, (6_000,), generator=g).tolist()
    cols = torch.randint(0, image.shape[2] - PATCH, (6_000,), generator=g).tolist()
    patches = torch.stack(
        [image[:, r : r + PATCH, c : c + PATCH] for r, c in zip(rows, cols, strict=True)]
    )
    return patches[:5_000], patches[5_000:]


def _patch_autoencoder() -> Any:
    """Conv 3x3 stride 2 (16) - conv 3x3 stride 2 (8) - transposed conv 4x4 stride 2 (16)
    - transposed conv 4x4 stride 2 (3): 16x16x3 through an 8x4x4 code."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.ConvTranspose2d(8, 16, 4, stride=2, padding=1), nn.ReLU(),
        nn.ConvTranspose2d(16, 3, 4, stride=2, padding=1),
    )  # fmt: skip


#: The pretraining run of ``patchae-ft``: patches of ``china.jpg``, Adam cosine from 2e-3
#: with 5% warmup, batch 32, this many steps, seed 0 (every fine-tuning seed starts there).
PATCH_PRETRAIN_STEPS = 800
PATCH_PRETRAIN_LR = 2e-3


def _patch_job(photo: str, batch: int) -> ArrayJob:
    """An autoencoder job on ``photo``'s patches (no optimizer: the caller's)."""
    from torch import nn

    job = ArrayJob.__new__(ArrayJob)
    job.batch = batch
    train, val = _photo_patches(photo)
    job.x_train, job.y_train, job.x_val, job.y_val = train, train, val, val
    job.model = _patch_autoencoder()
    job.loss_fn = nn.MSELoss()
    return job


def pretrained_patch_autoencoder() -> dict[str, Any]:
    """The patch autoencoder trained on ``china.jpg`` (:func:`_pretrained`)."""

    def build() -> ArrayJob:
        job = _patch_job("china.jpg", 32)
        job._start(0)
        return job

    return _pretrained("patchae", build, PATCH_PRETRAIN_STEPS, PATCH_PRETRAIN_LR)


class PatchFineTuneJob(ArrayJob):
    """Fine-tuning to another photo: the patch autoencoder of
    :func:`pretrained_patch_autoencoder` (trained on ``china.jpg``), trained on
    ``flower.jpg``'s patches with a fresh Adam at its framework defaults, MSE; validated
    on the held-out patches."""

    def __init__(self, seed: int, batch: int, optimizer: str, warmup: int) -> None:
        state = pretrained_patch_autoencoder()
        _torch_setup(seed)
        job = _patch_job("flower.jpg", batch)
        self.batch = batch
        self.x_train, self.y_train = job.x_train, job.y_train
        self.x_val, self.y_val = job.x_val, job.y_val
        self.model = job.model
        self.model.load_state_dict(state)
        self.loss_fn = job.loss_fn
        self.optimizer, self._schedulefree = _adam_family(self.model, optimizer, warmup)
        self._start(seed)


# --------------------------------------------------------------------------- test5 split


def _digit_vit(width: int = 32, heads: int = 4, layers: int = 2) -> Any:
    """A pre-LN attention encoder over an 8x8 image's 16 patches of 2x2 pixels: a linear
    patch embedding and learned positions, ``layers`` blocks of multi-head self-attention
    and an MLP (2 x ``width``, GELU), no dropout; the mean token through a final layer
    norm into a linear head of 10 classes."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm1 = nn.LayerNorm(width)
            self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
            self.norm2 = nn.LayerNorm(width)
            self.mlp = nn.Sequential(
                nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width)
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.norm1(x)
            x = x + self.attn(h, h, h, need_weights=False)[0]
            out: torch.Tensor = x + self.mlp(self.norm2(x))
            return out

    class DigitViT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(4, width)
            self.position = nn.Parameter(0.02 * torch.randn(16, width))
            self.blocks = nn.ModuleList([Block() for _ in range(layers)])
            self.norm = nn.LayerNorm(width)
            self.head = nn.Linear(width, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # (N, 8, 8) -> (N, 16 patches, 4 pixels), row-major over 2x2 blocks
            patches = x.reshape(-1, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(-1, 16, 4)
            h = self.embed(patches) + self.position
            for block in self.blocks:
                h = block(h)
            out: torch.Tensor = self.head(self.norm(h.mean(dim=1)))
            return out

    return DigitViT()


class DigitViTJob(ArrayJob):
    """The attention encoder of :func:`_digit_vit` on the 8x8 digits images (the digits
    workload's 70/30 split), Adam at its framework defaults, cross-entropy."""

    def __init__(self, seed: int, batch: int, optimizer: str, warmup: int) -> None:
        from torch import nn

        _torch_setup(seed)
        data = _digits()
        self.batch = batch
        self.x_train = data.x_train.reshape(-1, 8, 8)
        self.y_train = data.y_train
        self.x_val = data.x_val.reshape(-1, 8, 8)
        self.y_val = data.y_val
        self.model = _digit_vit()
        self.optimizer, self._schedulefree = _adam_family(self.model, optimizer, warmup)
        self.loss_fn = nn.CrossEntropyLoss()
        self._start(seed)


@lru_cache(maxsize=1)
def _hastie() -> tuple[Any, Any, Any, Any]:
    """scikit-learn's Hastie 10.2 generator (12,000 points, ``random_state`` 0): ten
    standard normal features, the class whether their squares sum above 9.34 (as 0/1);
    the first 10,000 for training, the rest for validation."""
    import torch
    from sklearn.datasets import make_hastie_10_2

    x, y = make_hastie_10_2(n_samples=12_000, random_state=0)
    xs = torch.from_numpy(x.astype(np.float32))
    ys = torch.from_numpy(((y + 1) / 2).astype(np.float32))[:, None]
    return xs[:10_000], ys[:10_000], xs[10_000:], ys[10_000:]


class HastieJob(ArrayJob):
    """Classifying the Hastie 10.2 points (:func:`_hastie`): an MLP 10-128-128-1 (ReLU),
    binary cross-entropy on its logit, SGD momentum 0.9."""

    def __init__(self, seed: int, batch: int, optimizer: str, warmup: int) -> None:
        from torch import nn

        _torch_setup(seed)
        self.batch = batch
        self.x_train, self.y_train, self.x_val, self.y_val = _hastie()
        self.model = nn.Sequential(
            nn.Linear(10, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 1)
        )
        self.optimizer, self._schedulefree = _sgd_family(self.model, optimizer, warmup)
        self.loss_fn = nn.BCEWithLogitsLoss()
        self._start(seed)


#: The Lorenz system drifted (rho 30 against 28), the fine-tune's data.
LORENZ_DRIFTED = (10.0, 30.0, 8.0 / 3.0)
#: The pretraining run of ``lorenz-ft``: the classic system's windows, Adam cosine from
#: 2e-3 with 5% warmup, batch 64, this many steps, seed 0.
LORENZ_PRETRAIN_STEPS = 800
LORENZ_PRETRAIN_LR = 2e-3


def _lorenz_job(system: tuple[float, float, float], batch: int) -> ArrayJob:
    """A forecasting job on ``system``'s windows (no optimizer: the caller's)."""
    from torch import nn

    job = ArrayJob.__new__(ArrayJob)
    job.batch = batch
    x_train, y_train, x_val, y_val = _lorenz_windows(system)
    job.x_train, job.y_train = x_train, y_train
    job.x_val, job.y_val = x_val[::4], y_val[::4]
    job.model = _lorenz_gru()
    job.loss_fn = nn.MSELoss()
    return job


def pretrained_lorenz_gru() -> dict[str, Any]:
    """The GRU of :func:`_lorenz_gru` trained on the classic Lorenz system (:func:`_pretrained`)."""

    def build() -> ArrayJob:
        job = _lorenz_job(LORENZ, 64)
        job._start(0)
        return job

    return _pretrained("lorenzgru", build, LORENZ_PRETRAIN_STEPS, LORENZ_PRETRAIN_LR)


class LorenzFineTuneJob(ArrayJob):
    """Fine-tuning to drifted dynamics: the GRU of :func:`pretrained_lorenz_gru` (the
    classic Lorenz system), trained to forecast the system at rho 30 the same time ahead,
    MSE, with a fresh Adam at its framework defaults."""

    def __init__(self, seed: int, batch: int, optimizer: str, warmup: int) -> None:
        state = pretrained_lorenz_gru()
        _torch_setup(seed)
        job = _lorenz_job(LORENZ_DRIFTED, batch)
        self.batch = batch
        self.x_train, self.y_train = job.x_train, job.y_train
        self.x_val, self.y_val = job.x_val, job.y_val
        self.model = job.model
        self.model.load_state_dict(state)
        self.loss_fn = job.loss_fn
        self.optimizer, self._schedulefree = _adam_family(self.model, optimizer, warmup)
        self._start(seed)


@lru_cache(maxsize=1)
def _holed_roll() -> tuple[Any, Any, Any, Any]:
    """A second draw of the swiss roll (:func:`_swiss_roll`), changed: a hole in it
    (``hole=True``), twice the noise (1.0), ``random_state`` 1; standardized and split
    the same way."""
    import torch
    from sklearn.datasets import make_swiss_roll

    points, position = make_swiss_roll(n_samples=12_000, noise=1.0, random_state=1, hole=True)
    points = (points - points.mean(axis=0)) / points.std(axis=0)
    position = ((position - position.mean()) / position.std())[:, None]
    x = torch.from_numpy(points.astype(np.float32))
    y = torch.from_numpy(position.astype(np.float32))
    return x[:10_000], y[:10_000], x[10_000:], y[10_000:]


#: The pretraining run of ``roll-ft``: the swiss roll, Adam cosine from 2e-3 with 5%
#: warmup, batch 64, this many steps, seed 0.
ROLL_PRETRAIN_STEPS = 1000
ROLL_PRETRAIN_LR = 2e-3


def pretrained_roll_mlp() -> dict[str, Any]:
    """The swiss roll's MLP trained on the swiss roll (:func:`_pretrained`)."""
    from torch import nn

    def build() -> ArrayJob:
        job = ArrayJob.__new__(ArrayJob)
        job.batch = 64
        job.x_train, job.y_train, job.x_val, job.y_val = _swiss_roll()
        job.model = _roll_mlp()
        job.loss_fn = nn.MSELoss()
        job._start(0)
        return job

    return _pretrained("rollmlp", build, ROLL_PRETRAIN_STEPS, ROLL_PRETRAIN_LR)


class RollFineTuneJob(ArrayJob):
    """Fine-tuning to a changed manifold: the MLP of :func:`pretrained_roll_mlp` (the
    swiss roll), trained on the holed, noisier roll of :func:`_holed_roll`, MSE, with a
    fresh SGD momentum 0.9."""

    def __init__(self, seed: int, batch: int, optimizer: str, warmup: int) -> None:
        from torch import nn

        state = pretrained_roll_mlp()
        _torch_setup(seed)
        self.batch = batch
        self.x_train, self.y_train, self.x_val, self.y_val = _holed_roll()
        self.model = _roll_mlp()
        self.model.load_state_dict(state)
        self.optimizer, self._schedulefree = _sgd_family(self.model, optimizer, warmup)
        self.loss_fn = nn.MSELoss()
        self._start(seed)
