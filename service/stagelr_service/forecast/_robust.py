"""Our forecaster: a bounded, outlier-robust fit of the same curve, with an uncertainty.

The curve a * exp(-exp(beta) x) + c is fitted by scipy's trust-region least squares with
bounds a >= 0 (the curve never rises), beta in LOG_RATE_BOUNDS and c >= min(0, lowest
value) (losses are non-negative; a window that is not keeps its own minimum as the floor),
under the soft-L1 loss with f_scale = the window's noise level, so a spike costs roughly
its distance instead of its square and needs no separate removal step. The solver starts
from a grid search over beta with (a, c) solved per beta, which keeps it to a few steps.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import least_squares

from ._result import Forecast
from ._window import (
    LOG_RATE_BOUNDS,
    FloatArray,
    bounded_std,
    fallback,
    finite_or_max,
    is_fittable,
    is_rising,
    is_unstable,
    noise_sd,
    x_scale,
)

MODEL = "robust"
# Grid of rates for the starting point, and reweighting rounds per rate: enough that the
# solver then needs a handful of steps (measured: mean 4, max ~20 function evaluations).
_START_BETAS = np.linspace(*LOG_RATE_BOUNDS, 49)
_IRLS_ITERATIONS = 4
# The solver wants a start strictly inside its bounds.
_STRICT_BOUNDS = (LOG_RATE_BOUNDS[0] + 1e-6, LOG_RATE_BOUNDS[1] - 1e-6)
# Noise floor for f_scale, as a share of the window's range: below it, noise-free windows
# would make soft-L1 treat ordinary fit error as outliers.
_MIN_F_SCALE = 1e-3
# Relative tolerances on values scaled to [0, 1]: a tighter fit moves the prediction by
# under 0.1 std (measured) and costs up to 5x the evaluations. A fit still unconverged
# after _MAX_NFEV evaluations is a failed fit.
_TOL = 1e-6
_MAX_NFEV = 50
# A parameter this close to a bound is held by it (c: share of the window's range;
# beta: log rate). The solver's iterates stay strictly inside, so "on" never happens.
_AT_BOUND = 1e-3


def _residuals(p: FloatArray, x: FloatArray, y: FloatArray) -> FloatArray:
    a, beta, c = p
    result: FloatArray = a * np.exp(-np.exp(beta) * x) + c - y
    return result


def _jacobian(p: FloatArray, x: FloatArray, y: FloatArray) -> FloatArray:
    a, beta, _ = p
    rate = np.exp(beta)
    e = np.exp(-rate * x)
    return np.stack([e, -a * rate * x * e, np.ones_like(x)], axis=1)


def _bounded_pairs(
    e: FloatArray, y: FloatArray, w: FloatArray, c_min: float
) -> tuple[FloatArray, FloatArray]:
    """Per row of ``e`` (exp(-rate x) for one rate), the weighted least-squares (a, c)
    within a >= 0, c >= c_min.

    Closed-form 2x2 solves for all rows at once; where the unconstrained pair violates a
    bound, that bound is active and the pair is re-solved with it held.
    """
    sw, swy = w.sum(axis=1), (w * y).sum(axis=1)
    we = w * e
    se, see, sey = we.sum(axis=1), (we * e).sum(axis=1), (we * y).sum(axis=1)
    det = see * sw - se * se
    ok = det > 1e-12 * see * sw
    a = np.where(ok, (sw * sey - se * swy) / np.where(ok, det, 1.0), 0.0)
    c = np.where(ok, (see * swy - se * sey) / np.where(ok, det, 1.0), swy / sw)
    rising = a < 0.0
    a, c = np.where(rising, 0.0, a), np.where(rising, swy / sw, c)
    low = c < c_min
    a = np.where(low, np.maximum((sey - c_min * se) / np.maximum(see, 1e-300), 0.0), a)
    return a, np.where(low, c_min, c)


def _profile(
    betas: FloatArray, x: FloatArray, y: FloatArray, c_min: float, f_scale: float
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """For each beta, the soft-L1 optimal (a, c) by iteratively reweighted least squares,
    and the soft-L1 cost (up to constants)."""
    e = np.exp(-np.exp(betas)[:, None] * x[None, :])  # (rates, points)
    w = np.ones_like(e)
    for _ in range(_IRLS_ITERATIONS):
        a, c = _bounded_pairs(e, y, w, c_min)
        z = 1.0 + ((a[:, None] * e + c[:, None] - y[None, :]) / f_scale) ** 2
        w = 1.0 / np.sqrt(z)
    return a, c, np.sum(np.sqrt(z), axis=1)


def _start(x: FloatArray, y: FloatArray, c_min: float, f_scale: float) -> FloatArray:
    """An approximate soft-L1 optimum to start the solver from.

    Along a near-linear window (a, beta, c) trade off in a long, flat, curved valley that
    a 3-D solver crawls along for 100+ steps; solving (a, c) exactly per rate crosses it.
    So: the cost profile over a grid of rates, refined by a parabola through the best
    grid point and its neighbours.
    """
    _, _, cost = _profile(_START_BETAS, x, y, c_min, f_scale)
    i = int(np.clip(np.argmin(cost), 1, _START_BETAS.size - 2))
    c0, c1, c2 = cost[i - 1 : i + 2]
    curvature = c0 - 2.0 * c1 + c2
    step = float(_START_BETAS[1] - _START_BETAS[0])
    shift = 0.5 * (c0 - c2) / curvature if curvature > 0.0 else 0.0
    beta = float(_START_BETAS[i]) + step * float(np.clip(shift, -1.0, 1.0))
    beta = float(np.clip(beta, *_STRICT_BOUNDS))
    a, c, _ = _profile(np.array([beta]), x, y, c_min, f_scale)
    return np.array([a[0], beta, c[0]])


def forecast_robust(steps: FloatArray, y: FloatArray, horizon: float) -> Forecast:
    """Forecast the loss at ``horizon`` from a finite, sorted window (see module doc).

    Falls back (see _window.fallback) when there are fewer than 4 points, the window is
    flat or rising (a fitted decay would forecast a drop that the data does not show) or
    unstable (a spike: soft-L1 would discount the very points that matter), or the solver
    fails or does not converge. A fit held by a bound predicts the window's level
    (status "held"), its std spanning the extrapolation it declined to make.

    The prediction is clamped to [min(0, lowest value), highest value + range]. Its std
    is the delta method at the horizon, cov = s^2 (J^T W J)^+ with soft-L1 weights W,
    combined with the residual noise s^2; at least half the extrapolated change from the
    last level when the fit is held by a bound; then floored and capped (bounded_std).
    """
    n = y.size
    if not is_fittable(y) or is_rising(y) or is_unstable(y):
        return fallback(y, MODEL)
    # Fit in units where the window spans [0, 1], so tolerances and f_scale are relative.
    y0, spread = float(np.min(y)), float(np.ptp(y))
    ys = (y - y0) / spread
    floor = min(0.0, y0)
    c_min = (floor - y0) / spread
    scale = x_scale(steps)
    # Internally x starts at the first point, so a is the drop still ahead there: O(1)
    # even for a curve that has nearly finished decaying by then.
    x0 = float(steps[0]) / scale
    x = steps / scale - x0
    f_scale = max(noise_sd(ys), _MIN_F_SCALE)
    lower = np.array([0.0, LOG_RATE_BOUNDS[0], c_min])
    upper = np.array([np.inf, LOG_RATE_BOUNDS[1], np.inf])
    start = np.clip(_start(x, ys, c_min, f_scale), lower, upper)
    if not (np.all(np.isfinite(start)) and np.all(np.isfinite(_residuals(start, x, ys)))):
        return fallback(y, MODEL)  # the solver raises on a non-finite start
    res = least_squares(
        _residuals,
        start,
        jac=_jacobian,
        bounds=(lower, upper),
        method="trf",
        loss="soft_l1",
        f_scale=f_scale,
        ftol=_TOL,
        xtol=_TOL,
        gtol=_TOL,
        max_nfev=_MAX_NFEV,
        args=(x, ys),
    )
    if not res.success or not np.all(np.isfinite(res.x)):
        return fallback(y, MODEL)
    a_s, beta, c_s = (float(v) for v in res.x)

    # Uncertainty: soft-L1's IRLS weights 1/sqrt(1 + (r/f)^2) discount outliers here too.
    r = _residuals(res.x, x, ys)
    w = 1.0 / np.sqrt(1.0 + (r / f_scale) ** 2)
    jw = _jacobian(res.x, x, ys) * np.sqrt(w)[:, None]
    if not np.all(np.isfinite(jw)):  # LAPACK rejects (and prints about) inf and NaN
        return fallback(y, MODEL)
    s2 = float(np.sum(w * r**2)) / (n - 3)
    cov = s2 * np.linalg.pinv(jw.T @ jw)
    xh = horizon / scale - x0
    rate = math.exp(beta)
    e_h = float(np.exp(-rate * xh))
    grad = np.array([e_h, -a_s * rate * xh * e_h, 1.0])
    var = float(grad @ cov @ grad) + s2
    std = math.sqrt(var) * spread if var >= 0.0 else math.nan

    prediction = (a_s * e_h + c_s) * spread + y0
    if math.isnan(prediction):
        return fallback(y, MODEL)
    prediction = min(max(prediction, floor), finite_or_max(float(np.max(y)) + spread))
    # A fit held by a bound (the asymptote at its floor, as in a near-linear window, or the
    # rate at a limit) extrapolates the assumption, not the data, and the delta method
    # cannot see that: allow at least half the extrapolated change from the last level.
    held = c_s <= c_min + _AT_BOUND or not (
        LOG_RATE_BOUNDS[0] + _AT_BOUND < beta < LOG_RATE_BOUNDS[1] - _AT_BOUND
    )
    status = "ok"
    if held:
        # Do not bet on the extrapolation: predict the window's level, and let the
        # uncertainty span the whole extrapolated change. Measured on the digits MLP
        # (benchmarks/digits_variants.py): trusting held extrapolations made the tuner
        # pick slowly-decaying small LRs stage after stage.
        level = float(np.median(y[-3:]))
        std = max(std, abs(prediction - level))
        prediction, status = level, "held"
    std = bounded_std(std, y)
    a = a_s * spread * math.exp(rate * x0)  # back to x = step / x_scale; |rate x0| <= 100
    params = {"a": a, "beta": beta, "c": c_s * spread + y0, "x_scale": scale}
    if not all(math.isfinite(v) for v in params.values()):
        return fallback(y, MODEL)  # a fit that floats cannot write down
    return Forecast(prediction, std, status, MODEL, params, n)
