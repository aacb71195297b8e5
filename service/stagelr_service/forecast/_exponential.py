"""The AutoLRS reference forecaster, made total.

As in the reference: outliers are removed first, then for each beta the pair (a, c) is
the ordinary least-squares solution on the columns [exp(-exp(beta) x), 1], and beta
minimises the residual sum of squares in a 1-D search; a and c are unconstrained.
Unlike the reference it never raises (the residual is computed here, so a rank-deficient
design no longer yields lstsq's empty residual array), beta is searched in
LOG_RATE_BOUNDS rather than without bounds, and a negative loss forecast falls back to
the window's level instead of winning the stage.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize_scalar

from ._result import Forecast
from ._window import (
    LOG_RATE_BOUNDS,
    MAD_TO_SD,
    FloatArray,
    bounded_std,
    fallback,
    is_fittable,
    mad,
    x_scale,
)

MODEL = "exp_reference"
# Outlier removal needs a few neighbours and differences to judge a point by.
_MIN_POINTS_FOR_OUTLIERS = 5
# Never drop more than this share of the window: a degenerate noise estimate (quantised
# losses, all differences equal) must not empty it.
_MAX_OUTLIER_SHARE = 0.1
# beta this close to the lower bound means the window showed no curvature.
_AT_BOUND = 1e-3


def remove_outliers(steps: FloatArray, y: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Drop points far from a running median.

    The smoother is a running median of 3; at each end, the median of the end point, its
    smoothed neighbour and the straight-line extrapolation of the two smoothed neighbours
    (so a spike at an end is caught too). A point is an outlier when its distance from the
    smoother exceeds both 3 robust sds (1.4826 * MAD) of the window's first differences
    and the smoother's own change over one step there. At most 10 % of the points, the
    farthest first, are dropped.
    """
    n = y.size
    if n < _MIN_POINTS_FOR_OUTLIERS:
        return steps, y
    smooth = np.empty_like(y)
    smooth[1:-1] = np.median(np.stack([y[:-2], y[1:-1], y[2:]]), axis=0)
    smooth[0] = np.median([y[0], smooth[1], 2.0 * smooth[1] - smooth[2]])
    smooth[-1] = np.median([y[-1], smooth[-2], 2.0 * smooth[-2] - smooth[-3]])
    distance = np.abs(y - smooth)
    # Noise-free data has MAD 0; keep rounding-level residuals then.
    noise = max(3.0 * MAD_TO_SD * mad(np.diff(y)), 1e-9 * float(np.ptp(y)))
    # The smoother's change over one step: the curvature of a steep, clean decay makes
    # residuals of about this size, notably at the ends.
    local = np.abs(np.gradient(smooth))
    threshold = np.maximum(noise, local)
    farthest = np.argsort(-distance, kind="stable")[: max(1, int(_MAX_OUTLIER_SHARE * n))]
    drop = farthest[distance[farthest] > threshold[farthest]]
    keep = np.ones(n, dtype=bool)
    keep[drop] = False
    return steps[keep], y[keep]


def _linear_fit(beta: float, x: FloatArray, y: FloatArray) -> tuple[FloatArray, float]:
    """(a, c) by least squares for a given beta, and the residual sum of squares."""
    design = np.stack([np.exp(-math.exp(beta) * x), np.ones_like(x)], axis=1)
    if not np.all(np.isfinite(design)):  # LAPACK rejects (and prints about) inf and NaN
        return np.full(2, math.nan), math.inf
    coef = np.linalg.lstsq(design, y, rcond=None)[0]
    r = design @ coef - y
    return coef, float(r @ r)


def _sse(beta: float, x: FloatArray, y: FloatArray) -> float:
    return _linear_fit(beta, x, y)[1]


def forecast_reference(steps: FloatArray, y: FloatArray, horizon: float) -> Forecast:
    """Forecast the loss at ``horizon`` from a finite, sorted window (see module doc).

    Falls back (see _window.fallback) when fewer than 4 points remain after outlier
    removal, the window is flat, the search ends at the lower rate bound (a near-linear
    window: the asymptote is not identified, any extrapolation is the bound's), or the
    prediction is not finite, or it is negative while every observed value is not.
    """
    # x_scale from the whole window, so what x means does not hinge on outlier removal.
    scale = x_scale(steps)
    steps, y = remove_outliers(steps, y)
    n = y.size
    if not is_fittable(y):
        return fallback(y, MODEL)
    # Fit in units where the window spans [0, 1]: a and c scale back exactly.
    y0, spread = float(np.min(y)), float(np.ptp(y))
    ys = (y - y0) / spread
    x = steps / scale
    res = minimize_scalar(
        _sse, bounds=LOG_RATE_BOUNDS, method="bounded", args=(x, ys), options={"xatol": 1e-6}
    )
    beta = float(res.x)
    (a_s, c_s), sse = _linear_fit(beta, x, ys)
    a, c = float(a_s) * spread, float(c_s) * spread + y0
    prediction = a * float(np.exp(-math.exp(beta) * horizon / scale)) + c
    if (
        beta - LOG_RATE_BOUNDS[0] < _AT_BOUND
        or not (math.isfinite(prediction) and math.isfinite(a) and math.isfinite(c))
        # A loss forecast below zero (and below every observed value) is an artefact of
        # the unconstrained asymptote, e.g. a blown-up candidate falling back from a
        # spike; the reference took it at face value and trained the stage at that LR.
        or (prediction < 0.0 <= float(np.min(y)))
    ):
        return fallback(y, MODEL)
    # The reference has no uncertainty; report the residual sd (3 fitted parameters).
    std = bounded_std(math.sqrt(sse / (n - 3)) * spread, y)
    params = {"a": a, "beta": beta, "c": c, "x_scale": scale}
    return Forecast(prediction, std, "ok", MODEL, params, n)
