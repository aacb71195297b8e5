"""Result types of the optimizer, importable without torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Proposal:
    """The optimizer's next candidate.

    Attributes:
        x: The next point, normalized log-LR in [0, 1].
        acquisition_value: The acquisition at ``x``: for ``"lcb"`` the lower confidence
            bound ``mean - kappa * std`` in y units (lower is better); for ``"log_ei"``
            the log expected improvement in y units, i.e. BoTorch's LogEI on the
            standardized model plus ``log(y_std)`` (higher is better).
        acquisition: ``"lcb"`` or ``"log_ei"``.
        hyperparameters: The chosen GP hyperparameters as plain floats: ``lengthscale``
            (x units), ``outputscale`` (signal variance, y units squared) and ``noise``
            (the learned homoscedastic noise variance, y units squared; with ``yvar``
            given, the learned noise added on top of it).
    """

    x: float
    acquisition_value: float
    acquisition: str
    hyperparameters: dict[str, float]


@dataclass(frozen=True)
class Posterior:
    """The GP posterior of the latent function on a grid, in y units.

    Attributes:
        x: The grid points, as given.
        mean: Posterior mean at each grid point.
        std: Posterior standard deviation of the latent function (no observation noise).
    """

    x: list[float]
    mean: list[float]
    std: list[float]
