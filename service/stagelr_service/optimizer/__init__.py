"""Bayesian-optimization core: a GP over normalized log-LR and its acquisition.

This is the only package of the project that imports torch, BoTorch and GPyTorch. Those
imports cost seconds, so they happen on first access to ``GPOptimizer``;
``Proposal`` and ``Posterior`` import without them. Call ``GPOptimizer.warm_up()`` at
server start, and run the server with ``OMP_NUM_THREADS=1`` (the optimizer also sets
``torch.set_num_threads(1)``; see ``gp.py`` for why).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._types import Posterior, Proposal

if TYPE_CHECKING:
    from .gp import GPOptimizer

__all__ = ["GPOptimizer", "Posterior", "Proposal"]


def __getattr__(name: str) -> Any:
    # Lazy: importing torch/BoTorch takes 2-2.5 s, which the tuner's tests need not pay.
    if name == "GPOptimizer":
        from .gp import GPOptimizer

        return GPOptimizer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
