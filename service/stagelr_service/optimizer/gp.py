"""The GP surrogate and acquisition behind each BO decision (the only torch/BoTorch code).

Model: an exact GP in float64 over normalized log-LR x in [0, 1] with a constant mean, a
Matern 5/2 kernel scaled by an outputscale, and Gaussian observation noise; y is
standardized internally. Priors: BoTorch's defaults for SingleTaskGP (the dimension-scaled
LogNormal(sqrt 2, sqrt 3) lengthscale prior with lengthscale >= 0.025, and a
LogNormal(-4, 1) noise prior with noise >= 1e-4), plus a LogNormal(0, 1) prior on the
outputscale, which BoTorch's default model lacks because it fixes the outputscale at 1.
With per-point ``yvar`` the noise is ``yvar`` plus a learned homoscedastic term with the
same prior and floor, so a near-singular fit cannot happen.

Speed: ``fit_gpytorch_mll`` costs ~100 ms per decision on this stack. Instead the MAP
hyperparameters are chosen by scoring the exact log marginal likelihood plus log priors
for a coarse log-spaced grid of (lengthscale, outputscale, noise) in one batched Cholesky,
then refining twice on finer local grids around the best; the constant mean is profiled
out exactly (its generalized least squares value). The acquisition is evaluated on a
dense grid of x under ``no_grad``, from the posterior computed with one Cholesky (the
SingleTaskGP's algebra; building the BoTorch model and asking it cost 60% of a proposal)
and BoTorch's LogEI numerics. Everything is deterministic: no random restarts, no
use of torch's global RNG, and CPU float64 kernels with one thread are bitwise repeatable.

Threads and process state: the first ``GPOptimizer`` sets ``torch.set_num_threads(1)``
(two threads on a 2-core machine made fits 7-20x slower under contention); also run the
server with ``OMP_NUM_THREADS=1`` and scale with processes. A proposal and a posterior
are plain torch arithmetic under ``torch.no_grad()`` (thread-local): no BoTorch model, no
warning filters, no shared state, so calls from a thread pool run side by side (torch
releases the GIL inside its kernels) and each gives the same bits as alone. Only the
fallback that builds BoTorch's model (a Cholesky that failed) touches process-wide state
(warning filters, GPyTorch settings): it holds one module-level lock.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

with warnings.catch_warnings():
    # linear_operator under torch 2.13 warns at import that torch.jit.script is deprecated.
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=DeprecationWarning)
    import torch
    from botorch.acquisition.analytic import _log_ei_helper
    from botorch.exceptions.warnings import InputDataWarning
    from botorch.models import SingleTaskGP
    from botorch.models.utils.gpytorch_modules import (
        get_covar_module_with_dim_scaled_prior,
        get_gaussian_likelihood_with_lognormal_prior,
    )
    from gpytorch.constraints import GreaterThan
    from gpytorch.kernels import ScaleKernel
    from gpytorch.likelihoods import FixedNoiseGaussianLikelihood
    from gpytorch.priors import LogNormalPrior
    from gpytorch.utils.warnings import GPInputWarning, NumericalWarning

from ._types import Posterior, Proposal

__all__ = ["GPOptimizer", "make_model"]

_DTYPE = torch.float64
_ACQUISITIONS = ("lcb", "log_ei")

# Priors, as (loc, scale) of a LogNormal on the hyperparameter's value (standardized y).
# The lengthscale and noise priors and floors are BoTorch's SingleTaskGP defaults for d=1.
_LENGTHSCALE_PRIOR = (math.sqrt(2.0), math.sqrt(3.0))
_OUTPUTSCALE_PRIOR = (0.0, 1.0)
_NOISE_PRIOR = (-4.0, 1.0)
_LENGTHSCALE_MIN = 0.025
_NOISE_MIN = 1e-4
_OUTPUTSCALE_MIN = 1e-4
# gpytorch rounds fixed noise below this up (with a warning) in float64; do it first.
_FIXED_NOISE_MIN = 1e-6

# Search box for the MAP grid (standardized y). Beyond 20 a Matern 5/2 over [0, 1] is
# indistinguishable from a low-order polynomial; the outputscale and noise bounds lie
# >= 4.5 prior standard deviations out, where the priors dominate any data we see.
_LOG_LENGTHSCALE = (math.log(_LENGTHSCALE_MIN), math.log(20.0))
_LOG_OUTPUTSCALE = (math.log(1e-2), math.log(1e2))
_LOG_NOISE = (math.log(_NOISE_MIN), math.log(4.0))
# Coarse grid sizes (lengthscale, outputscale, noise), then local refinements: each one
# re-grids +-1 previous step with _REFINE_POINTS points per axis, halving the step (final
# lengthscale resolution ~1.5%). Chosen on 455 synthetic stage datasets (n = 2..60, with
# and without yvar) against fit_gpytorch_mll on the same model: median MAP objective gap
# -0.0003 nats, over 99% within 0.01 nats; where they differ more, the likelihood is bimodal
# and the grid usually finds the better mode (up to +4 nats), since L-BFGS starts at the
# prior mode. Denser coarse grids cost more (batched Cholesky is cache-bound here) and did
# not score better.
_COARSE_SHAPE = (8, 5, 6)
_REFINE_ROUNDS = 6
_REFINE_POINTS = 5

_SQRT5 = math.sqrt(5.0)
_LOG_2PI = math.log(2.0 * math.pi)
# BoTorch's analytic acquisitions clamp the posterior variance at this value.
_MIN_VARIANCE = 1e-12

_LOCK = threading.Lock()
_threads_set = False


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence, for one call only, the benign warnings BoTorch's model construction emits.

    The filters are restored on exit; hold the module lock around it: the swap is
    process-wide.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*torch.jit.script.*", category=DeprecationWarning
        )
        warnings.simplefilter("ignore", InputDataWarning)
        warnings.simplefilter("ignore", GPInputWarning)
        warnings.simplefilter("ignore", NumericalWarning)
        yield


@dataclass(frozen=True)
class _Data:
    """Validated training data, standardized."""

    x: torch.Tensor  # (n,)
    y: torch.Tensor  # (n,), standardized
    yvar: torch.Tensor | None  # (n,), standardized, floored
    y_mean: float
    y_std: float


@dataclass(frozen=True)
class _Hyper:
    """MAP hyperparameters in standardized units."""

    lengthscale: float
    outputscale: float
    noise: float
    mean: float


def _floats(name: str, values: Sequence[float]) -> list[float]:
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a sequence of numbers") from exc
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name} must be finite, got {out}")
    return out


def _prepare(x: Sequence[float], y: Sequence[float], yvar: Sequence[float] | None) -> _Data:
    """Validate and standardize the data as BoTorch's Standardize transform would."""
    xs, ys = _floats("x", x), _floats("y", y)
    if not xs:
        raise ValueError("at least one observation is needed")
    if len(xs) != len(ys):
        raise ValueError(f"x and y differ in length: {len(xs)} != {len(ys)}")
    if any(v < 0.0 or v > 1.0 for v in xs):
        raise ValueError("x must lie in [0, 1]")
    vs: list[float] | None = None
    if yvar is not None:
        vs = _floats("yvar", yvar)
        if len(vs) != len(ys):
            raise ValueError(f"yvar and y differ in length: {len(vs)} != {len(ys)}")
        if any(v < 0.0 for v in vs):
            raise ValueError("yvar must be >= 0")
    yt = torch.tensor(ys, dtype=_DTYPE)
    y_mean = float(yt.mean())
    # Unbiased std as in BoTorch's Standardize; one point or a flat y carry no scale, so
    # use 1 rather than divide by ~0.
    y_std = float(yt.std()) if len(ys) > 1 else 1.0
    if not y_std > 1e-8 * max(1.0, abs(y_mean)):
        y_std = 1.0
    ystd_t = (yt - y_mean) / y_std
    vt = None
    if vs is not None:
        vt = (torch.tensor(vs, dtype=_DTYPE) / y_std**2).clamp_min(_FIXED_NOISE_MIN)
    # Finite but astronomically large inputs overflow the standardization.
    if not (math.isfinite(y_mean) and math.isfinite(y_std) and bool(ystd_t.isfinite().all())):
        raise ValueError("y is too large to standardize in float64")
    if vt is not None and not bool(vt.isfinite().all()):
        raise ValueError("yvar is too large relative to the spread of y")
    return _Data(torch.tensor(xs, dtype=_DTYPE), ystd_t, vt, y_mean, y_std)


def _lognormal_logpdf(value: torch.Tensor, loc: float, scale: float) -> torch.Tensor:
    """log density of LogNormal(loc, scale) at value, as gpytorch's LogNormalPrior."""
    log_v = value.log()
    return -log_v - math.log(scale) - 0.5 * _LOG_2PI - (log_v - loc) ** 2 / (2.0 * scale**2)


def _map_scores(
    data: _Data, lengthscales: torch.Tensor, outputscales: torch.Tensor, noises: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log marginal likelihood + log priors on the (L, S, E) product grid.

    Returns the scores (L, S, E) and the profiled constant mean (L, S, E). Settings whose
    Cholesky fails score -inf.
    """
    x, y, n = data.x, data.y, data.x.shape[0]
    dist = (x.unsqueeze(-1) - x.unsqueeze(-2)).abs()
    r = _SQRT5 * dist / lengthscales.view(-1, 1, 1)
    corr = (1.0 + r + r.square() / 3.0) * torch.exp(-r)  # (L, n, n)
    fixed = torch.zeros_like(x) if data.yvar is None else data.yvar
    diag = noises.view(-1, 1) + fixed  # (E, n)
    cov = corr.view(-1, 1, 1, n, n) * outputscales.view(1, -1, 1, 1, 1) + torch.diag_embed(
        diag
    ).view(1, 1, -1, n, n)
    chol, info = torch.linalg.cholesky_ex(cov)
    rhs = torch.stack([y, torch.ones_like(y)], dim=-1).expand(*cov.shape[:-1], 2)
    w = torch.linalg.solve_triangular(chol, rhs, upper=False)
    wy, w1 = w[..., 0], w[..., 1]
    yy, y1, oo = wy.square().sum(-1), (wy * w1).sum(-1), w1.square().sum(-1)
    # Generalized least squares mean: the exact maximizer over the constant mean.
    mean = y1 / oo
    quad = yy - y1 * mean
    logdet = 2.0 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    log_lik = -0.5 * (quad + logdet + n * _LOG_2PI)
    log_prior = (
        _lognormal_logpdf(lengthscales, *_LENGTHSCALE_PRIOR).view(-1, 1, 1)
        + _lognormal_logpdf(outputscales, *_OUTPUTSCALE_PRIOR).view(1, -1, 1)
        + _lognormal_logpdf(noises, *_NOISE_PRIOR).view(1, 1, -1)
    )
    score = log_lik + log_prior
    score = torch.where((info == 0) & torch.isfinite(score), score, -math.inf)
    return score, mean


def _fit_map(data: _Data) -> _Hyper:
    """Choose MAP hyperparameters by a coarse grid, then local refinement grids."""
    bounds = (_LOG_LENGTHSCALE, _LOG_OUTPUTSCALE, _LOG_NOISE)
    axes = [
        torch.linspace(lo, hi, size, dtype=_DTYPE)
        for (lo, hi), size in zip(bounds, _COARSE_SHAPE, strict=True)
    ]
    steps = [(hi - lo) / (size - 1) for (lo, hi), size in zip(bounds, _COARSE_SHAPE, strict=True)]
    best: tuple[float, float, float, float] | None = None  # log l, log s, log e, mean
    for round_ in range(_REFINE_ROUNDS + 1):
        if round_ > 0:
            assert best is not None
            axes = [
                torch.linspace(c - s, c + s, _REFINE_POINTS, dtype=_DTYPE).clamp(lo, hi)
                for c, s, (lo, hi) in zip(best[:3], steps, bounds, strict=True)
            ]
            steps = [2.0 * s / (_REFINE_POINTS - 1) for s in steps]
        score, mean = _map_scores(data, *(a.exp() for a in axes))
        # argmax returns the first maximum: ties resolve the same way every time.
        flat = int(score.argmax())
        if not math.isfinite(float(score.view(-1)[flat])):
            raise RuntimeError("every GP hyperparameter setting failed to factorize")
        # Plain index arithmetic: torch.unravel_index costs milliseconds a call here.
        i, rest = divmod(flat, score.shape[1] * score.shape[2])
        j, k = divmod(rest, score.shape[2])
        # Each refinement grid contains the previous best, so the score never drops.
        best = (float(axes[0][i]), float(axes[1][j]), float(axes[2][k]), float(mean[i, j, k]))
    assert best is not None
    return _Hyper(math.exp(best[0]), math.exp(best[1]), math.exp(best[2]), best[3])


def _build_model(data: _Data) -> SingleTaskGP:
    """The SingleTaskGP (standardized data, default-initialized) with our priors."""
    train_x = data.x.unsqueeze(-1)
    train_y = data.y.unsqueeze(-1)
    base = get_covar_module_with_dim_scaled_prior(ard_num_dims=1, use_rbf_kernel=False)
    outputscale_prior = LogNormalPrior(*_OUTPUTSCALE_PRIOR)
    covar = ScaleKernel(
        base,
        outputscale_prior=outputscale_prior,
        # A bound, not softplus: L-BFGS (reference fits) otherwise drives the outputscale
        # to an exact 0 on flat data, where the prior's log density is undefined.
        outputscale_constraint=GreaterThan(
            _OUTPUTSCALE_MIN, transform=None, initial_value=outputscale_prior.mode
        ),
    )
    if data.yvar is None:
        likelihood = get_gaussian_likelihood_with_lognormal_prior()
        train_yvar = None
    else:
        noise_prior = LogNormalPrior(*_NOISE_PRIOR)
        likelihood = FixedNoiseGaussianLikelihood(
            noise=data.yvar,
            learn_additional_noise=True,
            noise_prior=noise_prior,
            noise_constraint=GreaterThan(
                _NOISE_MIN, transform=None, initial_value=noise_prior.mode
            ),
        )
        train_yvar = data.yvar.unsqueeze(-1)
    return SingleTaskGP(
        train_x,
        train_y,
        train_yvar,
        likelihood=likelihood,
        covar_module=covar,
        outcome_transform=None,
    )


def make_model(
    x: Sequence[float], y: Sequence[float], yvar: Sequence[float] | None
) -> tuple[SingleTaskGP, float, float]:
    """The same GP as GPOptimizer's, default-initialized and unfitted, for reference fits.

    Returns the model on standardized y, and the y mean and std used to standardize. For
    benchmarks and tests.
    """
    with _LOCK, _quiet():
        data = _prepare(x, y, yvar)
        return _build_model(data), data.y_mean, data.y_std


def _fitted_model(data: _Data, hyper: _Hyper | None = None) -> tuple[SingleTaskGP, _Hyper]:
    """The SingleTaskGP with the MAP hyperparameters (``hyper``, or fitted now)."""
    if hyper is None:
        hyper = _fit_map(data)
    model = _build_model(data)
    model.covar_module.base_kernel.lengthscale = hyper.lengthscale
    model.covar_module.outputscale = hyper.outputscale
    if data.yvar is None:
        model.likelihood.noise = hyper.noise
    else:
        model.likelihood.second_noise = hyper.noise
    model.mean_module.constant = hyper.mean
    model.eval()
    return model, hyper


def _matern(a: torch.Tensor, b: torch.Tensor, lengthscale: float) -> torch.Tensor:
    """The Matern 5/2 correlation between the points of ``a`` and ``b``: (len a, len b)."""
    r = _SQRT5 * (a.unsqueeze(-1) - b.unsqueeze(-2)).abs() / lengthscale
    return (1.0 + r + r.square() / 3.0) * torch.exp(-r)


def _grid_mean_std(
    data: _Data, hyper: _Hyper, points: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Marginal posterior mean and latent std at each point, standardized units.

    The same exact-GP algebra as the SingleTaskGP of :func:`_fitted_model` (one Cholesky
    of the training covariance), without building the model: constructing it and its
    priors, and GPyTorch's posterior machinery, cost most of a decision's CPU. Equal to
    ``_mean_std(_fitted_model(data))`` to 1e-7 (tests/optimizer/test_optimizer.py); should the
    Cholesky fail, that model answers instead, with GPyTorch's jitter.
    """
    x = data.x
    noise = torch.full_like(x, hyper.noise)
    if data.yvar is not None:
        noise = noise + data.yvar
    cov = hyper.outputscale * _matern(x, x, hyper.lengthscale) + torch.diag(noise)
    chol, info = torch.linalg.cholesky_ex(cov)
    if int(info) != 0:
        # BoTorch's model, with GPyTorch's jitter: its warnings and settings are
        # process-wide, so this (rare) path runs one call at a time.
        with _LOCK, _quiet():
            model, _ = _fitted_model(data, hyper)
            return _mean_std(model, points)
    cross = hyper.outputscale * _matern(points, x, hyper.lengthscale)  # (G, n)
    alpha = torch.cholesky_solve((data.y - hyper.mean).unsqueeze(-1), chol)  # (n, 1)
    mean = hyper.mean + (cross @ alpha).squeeze(-1)
    v = torch.linalg.solve_triangular(chol, cross.T, upper=False)  # (n, G)
    var = hyper.outputscale - v.square().sum(0)
    return mean, var.clamp_min(_MIN_VARIANCE).sqrt()


def _mean_std(model: SingleTaskGP, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Marginal posterior mean and latent std at each point, standardized units."""
    # A (G, 1, 1) batch of single points: only the marginals are computed, which is
    # cheaper than one joint (G, 1) posterior with its G x G covariance.
    post = model.posterior(points.view(-1, 1, 1))
    mean = post.mean.view(-1)
    std = post.variance.view(-1).clamp_min(_MIN_VARIANCE).sqrt()
    return mean, std


class GPOptimizer:
    """Proposes the next candidate from (x, y) pairs; deterministic and thread-safe.

    One instance may be shared by all studies: it keeps no state between calls apart
    from its x grid.
    """

    def __init__(self, grid_size: int = 512) -> None:
        """Create an optimizer that evaluates acquisitions on ``grid_size`` points."""
        if grid_size < 2:
            raise ValueError("grid_size must be >= 2")
        global _threads_set
        with _LOCK:
            if not _threads_set:
                torch.set_num_threads(1)
                _threads_set = True
        self._grid = torch.linspace(0.0, 1.0, grid_size, dtype=_DTYPE)

    def propose(
        self,
        x: Sequence[float],
        y: Sequence[float],
        yvar: Sequence[float] | None,
        *,
        acquisition: str,
        kappa: float,
        exclude_radius: float = 1 / 256,
        upper: float = 1.0,
    ) -> Proposal:
        """Fit the GP to (x, y) and return the acquisition's best grid point.

        Args:
            x: Observed points, normalized log-LR in [0, 1]; at least one.
            y: Observed objective values to minimize (finite).
            yvar: Per-point observation noise variance in y units, or None to learn a
                homoscedastic noise.
            acquisition: ``"lcb"`` (argmin of ``mean - kappa * std``; a huge kappa is
                pure uncertainty sampling) or ``"log_ei"`` (BoTorch's
                LogExpectedImprovement below the best observed y).
            kappa: The LCB's exploration weight (ignored by ``"log_ei"``), >= 0.
            exclude_radius: Grid points within this distance of an observed x are not
                proposed; if that excludes the whole grid, the best point is proposed
                anyway.
            upper: Grid points above this x are not proposed (a bound the caller knows,
                e.g. a stability edge); if none is left, the lowest grid point is.

        Raises:
            ValueError: On empty, mismatched or non-finite inputs, x outside [0, 1],
                negative yvar, or an unknown acquisition.
        """
        if acquisition not in _ACQUISITIONS:
            raise ValueError(f"acquisition must be one of {_ACQUISITIONS}, got {acquisition!r}")
        if not (math.isfinite(kappa) and kappa >= 0.0):
            raise ValueError(f"kappa must be finite and >= 0, got {kappa}")
        if not (math.isfinite(exclude_radius) and exclude_radius >= 0.0):
            raise ValueError(f"exclude_radius must be finite and >= 0, got {exclude_radius}")
        if math.isnan(upper):
            raise ValueError("upper must be a number, got NaN")
        # No lock: nothing below touches process-wide state (see the module docstring).
        with torch.no_grad():
            data = _prepare(x, y, yvar)
            hyper = _fit_map(data)
            grid = self._grid
            mean, std = _grid_mean_std(data, hyper, grid)
            if acquisition == "log_ei":
                # BoTorch's LogExpectedImprovement (minimizing, below the best observed
                # y) on these marginals; higher is better; shifted to y units, as EI
                # scales linearly with y.
                improvement = (data.y.min() - mean) / std
                values = _log_ei_helper(improvement) + std.log() + math.log(data.y_std)
            else:
                # Lower is better; negate so both acquisitions are maximized below.
                values = -((mean - kappa * std) * data.y_std + data.y_mean)
            near = (grid.unsqueeze(-1) - data.x.unsqueeze(-2)).abs().amin(-1) <= exclude_radius
            below = grid <= upper
            if not bool(below.any()):
                below = grid <= grid[0]
            allowed = ~near & ~torch.isnan(values) & below
            if not bool(allowed.any()):
                allowed = ~torch.isnan(values) & below
            masked = torch.where(allowed, values, -math.inf)
            # argmax returns the first maximum, so ties resolve deterministically.
            best = int(masked.argmax())
            value = float(values[best])
            return Proposal(
                x=float(grid[best]),
                acquisition_value=value if acquisition == "log_ei" else -value,
                acquisition=acquisition,
                hyperparameters={
                    "lengthscale": hyper.lengthscale,
                    "outputscale": hyper.outputscale * data.y_std**2,
                    "noise": hyper.noise * data.y_std**2,
                },
            )

    def posterior(
        self,
        x: Sequence[float],
        y: Sequence[float],
        yvar: Sequence[float] | None,
        grid: Sequence[float],
    ) -> Posterior:
        """Fit the GP as ``propose`` does and return its posterior on ``grid`` (y units).

        Raises:
            ValueError: On invalid data (as ``propose``) or a non-finite grid.
        """
        points = _floats("grid", grid)
        with torch.no_grad():
            data = _prepare(x, y, yvar)
            if not points:
                return Posterior(x=[], mean=[], std=[])
            mean, std = _grid_mean_std(data, _fit_map(data), torch.tensor(points, dtype=_DTYPE))
            return Posterior(
                x=points,
                mean=(mean * data.y_std + data.y_mean).tolist(),
                std=(std * data.y_std).tolist(),
            )

    def warm_up(self) -> None:
        """Run one tiny decision of each kind so first-call costs are paid now."""
        x, y, yvar = [0.2, 0.5, 0.8], [1.0, 0.5, 2.0], [0.01, 0.01, 0.01]
        self.propose(x, y, None, acquisition="log_ei", kappa=0.0)
        self.propose(x, y, yvar, acquisition="lcb", kappa=2.0)
        self.posterior(x, y, None, [0.0, 1.0])
