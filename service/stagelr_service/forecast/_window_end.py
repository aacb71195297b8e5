"""The score of an annealed probe: the loss at the end of its own window.

An annealed probe trains its candidate LR down to 0 over the window (a miniature of the
planned run, final decay included), so the end of the window is the state the run would
keep: there is nothing to extrapolate, and the constant-LR noise floor that makes a hot
LR look bad early is annealed away. The prediction is the last value. Its std is the
noise of a single reading, from the window's last half: the robust sd of its second
differences divided by sqrt(6) (second differences remove a linear trend; for white
noise their variance is 6 sigma^2), floored as every std is (``std_floor``). Fewer than 4
points in that half: 5 % of the level, the fallback's rule.
"""

from __future__ import annotations

import math

import numpy as np

from ._result import Forecast
from ._window import (
    FEW_POINTS_REL_STD,
    MAD_TO_SD,
    FloatArray,
    finite_or_max,
    mad,
    std_floor,
)

MODEL = "window_end"


def forecast_window_end(steps: FloatArray, y: FloatArray, horizon: float) -> Forecast:
    """The last value of the window and the noise of one reading (``horizon`` unused:
    an annealed window's end is already the end of its miniature run)."""
    del steps, horizon
    n = y.size
    level = float(y[-1])
    tail = y[n // 2 :]
    if tail.size >= 4:
        std = MAD_TO_SD * mad(np.diff(tail, n=2)) / math.sqrt(6.0)
    else:
        std = FEW_POINTS_REL_STD * abs(level)
    std = max(finite_or_max(std), std_floor(y))
    return Forecast(level, std, "ok", MODEL, {}, n)
