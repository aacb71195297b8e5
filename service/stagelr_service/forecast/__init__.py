"""Loss forecasting for explore trials: where would this LR be at the stage horizon?

An explore trial trains a candidate LR for tau' steps from the stage-start checkpoint;
``forecast`` predicts the loss it would reach after tau steps (the horizon) by fitting

    L(x) = a * exp(-exp(beta) * x) + c,    x = step / x_scale,

where x_scale is the largest |step| of the window (the last step, for the usual steps
1..tau'), so the window spans x in (0, 1], exp(beta) is the decay rate per window length
and the horizon sits at x = horizon / x_scale. ``params`` report a, beta, c and x_scale
in exactly these terms. The rate exp(beta) is searched in [1e-2, 1e2] in both models.
Fits run on values rescaled to [0, 1] and mapped back, so huge or tiny losses fit alike.

Models:
    "exp_reference": the AutoLRS reference. Outliers are removed first: points farther
        from a running median of 3 than both 3 robust sds of the first differences and
        the median's own change over one step (at most 10 % of the points). Then (a, c)
        by ordinary least squares for each beta, and beta by a bounded 1-D search; a and c
        are unconstrained. std is the residual sd.
    "robust": a bounded fit (a >= 0, c >= min(0, lowest value): losses are non-negative)
        under the soft-L1 loss, which tolerates outliers without removing them. The
        prediction is clamped to [min(0, lowest value), highest value + range]. std is
        the delta method at the horizon plus the residual noise, and at least half the
        extrapolated change when a bound holds the fit (e.g. a near-linear window whose
        asymptote sits at the floor 0); capped at the window's range.

Statuses:
    "empty": no points. "diverged": some loss is NaN or +/-inf (prediction and std NaN;
    n_points counts the finite ones). "ok": the fitted curve was used. "fallback": no
    meaningful fit: in either model when fewer than 4 points remain or the window is flat;
    for "exp_reference" also when the rate search ends at its lower bound (a near-linear
    window: the asymptote is not identified) or the fit does not fit in floats; for
    "robust" also when the window is rising (its last third's median above its first
    third's) or the solver fails or does not converge. A fallback predicts the median of
    the last 3 values (the last value when fewer), at least the last value in a rising
    window, so a too-high LR is never forecast to improve; its std is the largest of the
    noise level, half the change across the window, and 5 % of the level below 4 points.

Every std that is not NaN is finite and positive (floored relative to the data), so a
GP can use it as observation noise. Forecasts are pure and deterministic. They never
raise on numeric input except for the ValueErrors that ``forecast`` documents, and emit
no warnings: floating-point ones are silenced by ``np.errstate`` (context-local) and
inputs that scipy or LAPACK would complain about are turned away before the call. (No
``warnings.catch_warnings``: it swaps process-wide filters and is not thread-safe.)
"""

from ._curve import forecast_curve
from ._forecast import forecast
from ._result import Forecast

__all__ = ["Forecast", "forecast", "forecast_curve"]
