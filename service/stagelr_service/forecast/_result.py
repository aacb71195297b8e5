"""The result of one forecast."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Forecast:
    """Predicted loss of one explore trial at the stage horizon.

    Attributes:
        prediction: predicted loss at the horizon; NaN only when ``status`` is
            ``"diverged"`` or ``"empty"``.
        std: uncertainty (one standard deviation) of ``prediction``: finite and > 0,
            NaN exactly when ``prediction`` is NaN.
        status: ``"ok"`` (the curve fit was used), ``"held"`` (robust only: the fit is held
            by a bound, so its asymptote is not identified; the prediction is the level of
            the last points and the std spans the declined extrapolation), ``"fallback"``
            (the fit was unusable, or the window rose or spiked: a robust level of the last
            points was used), ``"diverged"`` (the window holds NaN or +/-inf) or
            ``"empty"`` (no points).
        model: the model that was asked for, ``"exp_reference"`` or ``"robust"``.
        params: fitted curve ``a * exp(-exp(beta) * x) + c`` with ``x = step / x_scale``,
            as plain floats ``{"a", "beta", "c", "x_scale"}``; empty unless status is "ok"
            or "held".
        n_points: points used (finite points, after outlier removal where the model has it).
    """

    prediction: float
    std: float
    status: str
    model: str
    params: dict[str, float]
    n_points: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict: NaN and infinities become ``None``."""
        return {
            "prediction": _json_float(self.prediction),
            "std": _json_float(self.std),
            "status": self.status,
            "model": self.model,
            "params": {k: _json_float(v) for k, v in self.params.items()},
            "n_points": self.n_points,
        }


def _json_float(value: float) -> float | None:
    return value if math.isfinite(value) else None
