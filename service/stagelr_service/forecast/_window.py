"""The loss window of one trial, and the rules both models share.

Preparation, noise level, fittable and rising windows, bounds on the uncertainty and
the fallback forecast. Callers run these under ``np.errstate(all="ignore")``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from ._result import Forecast

FloatArray = NDArray[np.float64]

# Three curve parameters need at least one more point to leave a residual.
MIN_FIT_POINTS = 4
# Rate exp(beta) per unit of x = step / x_scale: from barely curved over the window
# (1e-2, practically a straight line) to decayed within about one percent of it (1e2).
LOG_RATE_BOUNDS = (math.log(1e-2), math.log(1e2))
# A median absolute deviation times this estimates a normal standard deviation.
MAD_TO_SD = 1.4826
# A fallback from fewer than MIN_FIT_POINTS points has no noise estimate: assume this
# fraction of the level.
FEW_POINTS_REL_STD = 0.05
_FLOAT_MAX = float(np.finfo(np.float64).max)


def prepare(
    steps: Sequence[float] | FloatArray, values: Sequence[float] | FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Sort by step and keep the last value of a repeated step.

    Points whose step is not finite are dropped: they have no place on the curve.
    """
    s = np.asarray(steps, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if s.ndim != 1 or v.ndim != 1 or s.shape != v.shape:
        raise ValueError(
            f"steps and values must be 1-D and of equal length, got shapes {s.shape} and {v.shape}"
        )
    placed = np.isfinite(s)
    s, v = s[placed], v[placed]
    # A stable sort keeps repeats in input order, so the last of a run is the newest.
    order = np.argsort(s, kind="stable")
    s, v = s[order], v[order]
    newest = np.ones(s.size, dtype=bool)
    newest[:-1] = s[1:] != s[:-1]
    return s[newest], v[newest]


def x_scale(steps: FloatArray) -> float:
    """The step that maps to x = 1: the largest |step| of the window (the last step, for
    the usual steps 1..tau'), so x stays within [-1, 1]; 1.0 if all steps are 0."""
    largest = float(np.max(np.abs(steps)))
    return largest if largest > 0.0 else 1.0


def mad(a: FloatArray) -> float:
    """Median absolute deviation from the median."""
    return float(np.median(np.abs(a - np.median(a)))) if a.size else 0.0


def noise_sd(y: FloatArray) -> float:
    """Noise level of the window: robust sd of its first differences, divided by sqrt(2).

    Differencing removes most of the trend; the MAD ignores the jumps an outlier makes.
    """
    return MAD_TO_SD * mad(np.diff(y)) / math.sqrt(2.0) if y.size >= 3 else 0.0


def is_fittable(y: FloatArray) -> bool:
    """Enough points, and a range that is neither flat (no variation beyond rounding: the
    rate would be undetermined) nor beyond the largest float."""
    spread = float(np.ptp(y)) if y.size else 0.0
    flat = spread <= 1e-12 * float(np.max(np.abs(y))) if y.size else True
    return y.size >= MIN_FIT_POINTS and math.isfinite(spread) and not flat


def is_rising(y: FloatArray) -> bool:
    """The median of the last third of the window exceeds that of the first third."""
    k = math.ceil(y.size / 3)
    return y.size >= 2 and bool(np.median(y[-k:]) > np.median(y[:k]))


#: A single upward move larger than this share of the window's level (and well above its
#: noise) is a blow-up, not noise: the candidate is unstable at this LR.
UNSTABLE_JUMP = 0.2


def is_unstable(y: FloatArray) -> bool:
    """Some value rises above the highest of the (up to) 3 values before it by more than
    both UNSTABLE_JUMP of the window's median level and 4 noise sds (see noise_sd): the
    loss spiked, whatever it did afterwards. Values from the third on are judged, so that
    the return from a low first reading does not count as a spike."""
    if y.size < 3:
        return False
    threshold = max(UNSTABLE_JUMP * abs(float(np.median(y))), 4.0 * noise_sd(y))
    # For each value from the third on, the highest of the (up to) 3 values before it.
    before = np.maximum(y[1:-1], y[:-2])
    before[1:] = np.maximum(before[1:], y[:-3])
    return bool(np.max(y[2:] - before) > threshold)


def std_floor(y: FloatArray) -> float:
    """Smallest std we report, relative to the data, so a GP can use it as noise."""
    return finite_or_max(max(1e-3 * float(np.ptp(y)), 1e-6 * float(np.max(np.abs(y))), 1e-12))


def bounded_std(std: float, y: FloatArray) -> float:
    """A fit's std, floored (see std_floor) and capped at the range of the observed values."""
    floor = std_floor(y)
    cap = max(finite_or_max(float(np.ptp(y))), floor)
    # An undefined std (a degenerate covariance) claims nothing: report the cap.
    return cap if math.isnan(std) else min(max(std, floor), cap)


def fallback(y: FloatArray, model: str) -> Forecast:
    """Forecast without a curve: the level of the last points.

    prediction: median of the last 3 finite values (the last value when fewer than 3);
        if the window is rising or unstable (see is_rising, is_unstable) at least the last
        value, so a too-high LR is never forecast to improve.
    std: the largest of the noise level (noise_sd), half the change between the medians of
        the first and last thirds of the window (the trend we did not extrapolate), and
        5 % of the level when there are fewer than 4 points; floored as in std_floor.
    """
    n = y.size
    level = float(y[-1]) if n < 3 else float(np.median(y[-3:]))
    if is_rising(y) or is_unstable(y):
        level = max(level, float(y[-1]))
    k = math.ceil(n / 3)
    drift = 0.5 * abs(float(np.median(y[-k:])) - float(np.median(y[:k])))
    few = FEW_POINTS_REL_STD * abs(level) if n < MIN_FIT_POINTS else 0.0
    std = max(noise_sd(y), finite_or_max(drift), few, std_floor(y))
    return Forecast(level, finite_or_max(std), "fallback", model, {}, n)


def finite_or_max(v: float) -> float:
    """``v``, or the largest float where a sum near the float limit overflowed."""
    return v if math.isfinite(v) else _FLOAT_MAX
