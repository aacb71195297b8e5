"""Dispatch: validate the input, prepare the window, handle empty and diverged windows."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from ._exponential import forecast_reference
from ._result import Forecast
from ._robust import forecast_robust
from ._window import FloatArray, prepare
from ._window_end import forecast_window_end

_MODELS: dict[str, Callable[[FloatArray, FloatArray, float], Forecast]] = {
    "exp_reference": forecast_reference,
    "robust": forecast_robust,
    "window_end": forecast_window_end,
}


def forecast(
    steps: Sequence[float] | FloatArray,
    values: Sequence[float] | FloatArray,
    horizon: float,
    model: str,
) -> Forecast:
    """Predict the loss of one explore trial at the stage horizon.

    Args:
        steps: step within the trial at which each loss was measured; any order, a
            repeated step keeps its last value, points with a non-finite step are ignored.
        values: the losses; NaN or +/-inf anywhere makes the forecast "diverged".
        horizon: the step (same units as ``steps``) to predict at, usually the stage
            length; earlier than the last step is allowed.
        model: "exp_reference" (the AutoLRS reference fit), "robust" or "window_end"
            (an annealed probe's last value: ``horizon`` unused).

    Returns:
        A Forecast; see the package docstring for the statuses and fallback rules.

    Raises:
        ValueError: unknown model, steps and values not 1-D of equal length, or a horizon
            that is not a finite number.
    """
    fit = _MODELS.get(model)
    if fit is None:
        raise ValueError(f"unknown forecast model {model!r}; expected one of {sorted(_MODELS)}")
    horizon = float(horizon)
    if not math.isfinite(horizon):
        raise ValueError(f"horizon must be finite, got {horizon}")
    with np.errstate(all="ignore"):
        s, y = prepare(steps, values)
        finite = np.isfinite(y)
        n_finite = int(np.count_nonzero(finite))
        if y.size == 0:
            return Forecast(math.nan, math.nan, "empty", model, {}, 0)
        if n_finite < y.size:
            return Forecast(math.nan, math.nan, "diverged", model, {}, n_finite)
        return fit(s, y, horizon)
