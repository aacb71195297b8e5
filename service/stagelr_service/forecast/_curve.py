"""The fitted curve of a forecast, evaluated anywhere (for plots of a candidate's fit)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from ._result import Forecast
from ._window import FloatArray

_PARAMS = ("a", "beta", "c", "x_scale")


def forecast_curve(
    forecast: Forecast | Mapping[str, float], steps: Sequence[float] | FloatArray
) -> FloatArray:
    """The forecast's fitted curve ``a * exp(-exp(beta) * step / x_scale) + c`` at ``steps``.

    Both models fit this curve and report its parameters in these terms, so one function
    draws either. ``forecast`` is a Forecast or its ``params`` mapping (as stored and
    served). Pure: no fitting happens here.

    Raises:
        ValueError: the forecast has no fitted curve (a "fallback", "diverged" or "empty"
            forecast has no params) or its params are not finite.
    """
    params = forecast.params if isinstance(forecast, Forecast) else forecast
    missing = [name for name in _PARAMS if name not in params]
    if missing:
        raise ValueError(
            f"the forecast has no fitted curve (params lack {', '.join(missing)}): only an "
            '"ok" or "held" forecast has one'
        )
    a, beta, c, scale = (float(params[name]) for name in _PARAMS)
    if not all(math.isfinite(v) for v in (a, beta, c, scale)) or scale == 0:
        raise ValueError(f"the forecast's params are not usable: {dict(params)!r}")
    x = np.asarray(steps, dtype=float) / scale
    with np.errstate(all="ignore"):
        return a * np.exp(-math.exp(beta) * x) + c
