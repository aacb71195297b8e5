"""What verify and what-if share: reading a stored study as the tuner saw it, and the
arithmetic of comparing choices."""

from __future__ import annotations

import math
from collections.abc import Sequence

from stagelr.models import ReplayMismatch, StageReplay

from .. import tuner
from ..forecast import Forecast
from ..store.records import StudyHistory

__all__ = [
    "decades",
    "finite",
    "offline_before",
    "recorded_geometries",
    "stage_offline",
    "summarize_stages",
]


def offline_before(history: StudyHistory, seq: int) -> int:
    """Offline steps the decision of segment ``seq`` knew of: the outages its job
    reported before it asked for that segment (``tuner.offline_steps_before``)."""
    return tuner.offline_steps_before([(o.after_seq, o.steps) for o in history.outages], seq)


def stage_offline(history: StudyHistory) -> dict[int, int]:
    """Stage index -> the offline steps its first decision knew of (those that sized
    it), for each stage the history has a segment of."""
    out: dict[int, int] = {}
    for seg in history.segments:
        if seg.stage not in out:
            out[seg.stage] = offline_before(history, seg.seq)
    return out


def recorded_geometries(
    history: StudyHistory, config: tuner.ResolvedConfig, trials: Sequence[tuner.Trial]
) -> list[tuner.StageGeometry]:
    """The geometry of every stage the history reached, each sized as the live service
    sized it: by the plan its first decision saw, shortened by the outages reported by
    then (``tuner.with_offline_steps``). Without outages, ``tuner.stage_geometries``."""
    offline = stage_offline(history)
    cache: dict[int, list[tuner.StageGeometry]] = {}
    out: list[tuner.StageGeometry] = []
    while True:
        steps = offline.get(len(out), history.offline_steps)
        if steps not in cache:
            cache[steps] = tuner.stage_geometries(tuner.with_offline_steps(config, steps), trials)
        geometries = cache[steps]
        if len(out) >= len(geometries):
            return out
        out.append(geometries[len(out)])


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
