"""What verify and what-if share: reading a stored study as the tuner saw it, and the
arithmetic of comparing choices."""

from __future__ import annotations

import math
from collections.abc import Sequence

from stagelr.models import ReplayMismatch, StageReplay

from ..forecast import Forecast

__all__ = ["decades", "finite", "summarize_stages"]


def finite(value: float | None) -> float | None:
    """``value`` where it is a finite float, else None (as the store keeps it)."""
    return value if value is not None and math.isfinite(value) else None


def decades(recorded: float | None, replayed: float | None) -> float | None:
    """How far apart two LRs are, in decades: ``|log10(replayed / recorded)|``."""
    if recorded is None or replayed is None or recorded <= 0 or replayed <= 0:
        return None
    return abs(math.log10(replayed / recorded))


def forecast_fields(fc: Forecast | None) -> dict[str, object] | None:
    """The compared part of a forecast, non-finite numbers as None (the store's form)."""
    if fc is None:
        return None
    return {
        "prediction": finite(fc.prediction),
        "std": finite(fc.std),
        "status": fc.status,
        "model": fc.model,
    }


def summarize_stages(
    stages: Sequence[StageReplay],
) -> tuple[int, int, float | None, float | None]:
    """(stages compared, stages whose choice differs, max and mean LR distance)."""
    distances = [s.lr_decades for s in stages if s.lr_decades is not None]
    compared = len(distances)
    differing = sum(
        1
        for s in stages
        if s.recorded_lr is not None
        and s.replayed_lr is not None
        and s.recorded_lr != s.replayed_lr
    )
    if not distances:
        return compared, differing, None, None
    return compared, differing, max(distances), sum(distances) / len(distances)


def mismatch(
    stage: int, seq: int | None, field: str, recorded: object, replayed: object
) -> ReplayMismatch:
    return ReplayMismatch(stage=stage, seq=seq, field=field, recorded=recorded, replayed=replayed)
