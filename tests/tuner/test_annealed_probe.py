"""Annealed probes (``probe: anneal``): the window's shape, its score and the stability
edge, with no server and no database."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from stagelr.models import LRShape, Metric, SegmentKind, SegmentStatus, lr_at
from stagelr_service import tuner
from stagelr_service.forecast import forecast
from stagelr_service.testing.simulation import simulate
from stagelr_service.tuner import StudyEnd, Trial
from stagelr_service.tuner._stability import STABILITY_MARGIN, stability_cap, stability_caps
from stagelr_service.tuner.config import PRESETS, ResolvedConfig, resolve


def annealed(**overrides: Any) -> ResolvedConfig:
    """The annealed model with windows of tau/20 and no stability check (test_finalists
    covers the check)."""
    fields: dict[str, Any] = {
        "preset": "default",
        "lr_min": 1e-3,
        "lr_max": 1.0,
        "explore_ratio": 0.05,
        "finalists": 0,
    }
    return resolve({**fields, "tau0": 100, "tau_max": 100, **overrides})


def window(seq: int, lr: float, values: list[float], status: str = "completed") -> Trial:
    """A finished candidate of stage 0 (5 steps, a report each step)."""
    observations = tuple((step, value) for step, value in enumerate(values, start=1))
    return Trial(
        seq, 0, seq, SegmentKind.explore, lr, 5, SegmentStatus(status), len(values),
        Metric.val_loss, observations,
    )  # fmt: skip


# --------------------------------------------------------------------------- the window


def test_a_wsd_segment_holds_its_lr_then_cools_down_over_its_last_fifth() -> None:
    steps = 50
    lrs = [lr_at(1.0, 0.0, LRShape.wsd, s, steps) for s in range(1, steps + 1)]
    assert lrs[:41] == [1.0] * 41  # progress (s - 1) / 50 below 0.8, and 0.8 itself
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))
    assert lrs[-1] == pytest.approx(1.0 - math.sqrt(0.9))  # progress 0.98
    assert lr_at(2.0, 0.5, LRShape.wsd, steps + 1, steps) == pytest.approx(0.5)


def test_the_annealed_preset_trains_each_candidate_as_a_miniature_of_the_run(
    optimizer,
) -> None:
    plans, _, _ = simulate(annealed(k=3), optimizer, max_segments=4)
    explores = [p for p in plans if p.kind is SegmentKind.explore]
    assert len(explores) == 3
    assert all(p.lr_shape is LRShape.wsd and p.lr_end == 0.0 for p in explores)
    exploit = plans[3]
    assert exploit.kind is SegmentKind.exploit and exploit.lr_shape is LRShape.constant
    # The shipped constant-window presets keep their windows.
    old, _, _ = simulate(resolve({"preset": "autolrs", "lr_min": 1e-3, "lr_max": 1.0,
                                  "tau0": 100, "tau_max": 100, "k": 2}), optimizer,
                         max_segments=2)  # fmt: skip
    assert all(p.lr_shape is LRShape.constant and p.lr_end is None for p in old)


# --------------------------------------------------------------------------- the score


def test_window_end_reads_the_last_value_and_recovers_the_reading_noise() -> None:
    """On a synthetic annealed curve with known noise, the score is the last reading and
    its sd the noise level; a linear trend does not change the sd."""
    rng = np.random.default_rng(7)
    steps = np.arange(1, 201, dtype=float)
    sigma = 0.01
    clean = 0.3 + 0.5 * np.exp(-steps / 40.0) - 0.05 * np.clip((steps - 160) / 40, 0, 1)
    noisy = clean + sigma * rng.standard_normal(steps.size)
    fc = forecast(steps, noisy, 1000.0, "window_end")
    assert fc.status == "ok" and fc.model == "window_end"
    assert fc.prediction == noisy[-1]
    assert 0.8 * sigma < fc.std < 1.25 * sigma
    sloped = forecast(steps, noisy - 0.001 * steps, 5.0, "window_end")
    assert sloped.std == pytest.approx(fc.std, rel=1e-9)
    assert sloped.prediction == pytest.approx(noisy[-1] - 0.2)


def test_window_end_of_a_diverged_or_short_window() -> None:
    assert forecast([1, 2, 3], [1.0, math.nan, 2.0], 10, "window_end").status == "diverged"
    short = forecast([1, 2, 3], [1.0, 0.9, 0.8], 10, "window_end")
    assert short.prediction == 0.8 and short.std == pytest.approx(0.05 * 0.8)


def test_an_annealed_candidate_is_scored_by_its_window_end() -> None:
    config = annealed(k=3)
    geometry = tuner.stage_geometry(config, 0, 0, False)
    assert geometry is not None
    trials = [window(0, 0.1, [2.0, 1.5, 1.4, 1.3, 1.0]), window(1, 0.3, [2.0, 1.2, 1.1, 1.0, 0.7])]
    analysis = tuner.analyze_stage(config, geometry, trials)
    assert [c.objective for c in analysis.candidates] == [1.0, 0.7]


# --------------------------------------------------------------------------- the edge


def test_the_edge_is_the_lowest_lr_whose_window_diverged_or_ended_above_its_start() -> None:
    config = annealed(k=4)
    geometry = tuner.stage_geometry(config, 0, 0, False)
    assert geometry is not None
    trials = [
        window(0, 0.05, [2.0, 1.9, 1.8, 1.7, 1.6]),
        window(1, 0.6, [2.0, 3.0, 2.6, 2.4, 2.1]),  # ended above its start
        window(2, 0.9, [2.0, math.nan], status="diverged"),
        window(3, 0.3, [2.0, 9.0, 4.0, 1.5, 1.2]),  # a spike the cooldown undid
    ]
    analysis = tuner.analyze_stage(config, geometry, trials)
    assert stability_cap(config, analysis.candidates) == pytest.approx(STABILITY_MARGIN * 0.6)
    # Constant-LR windows have no edge: their noise floor speaks for itself.
    constant = config.model_copy(update={"probe": "constant"})
    assert stability_cap(constant, analysis.candidates) == config.lr_max
    # Each prefix's edge, as the kept states are replayed candidate by candidate: none,
    # none, the 0.6 window's, and the diverged 0.9 one's does not lower it.
    caps = stability_caps(config, analysis.candidates)
    assert caps == [config.lr_max, config.lr_max] + [STABILITY_MARGIN * 0.6] * 3
    assert caps == [stability_cap(config, analysis.candidates[:i]) for i in range(5)]
    assert stability_caps(constant, analysis.candidates) == [config.lr_max] * 5


def test_no_candidate_is_proposed_or_chosen_above_the_edge(optimizer) -> None:
    config = annealed(k=4)
    trials = [
        window(0, 0.01, [2.0, 1.95, 1.9, 1.9, 1.85]),
        window(1, 0.4, [2.0, 1.0, 0.8, 0.7, 0.5]),  # the lowest score, but above the edge
        window(2, 0.6, [2.0, 2.5, 2.4, 2.3, 2.2]),  # unstable: the edge is 0.3
    ]
    proposal = tuner.next_segment(config, trials, optimizer)
    assert not isinstance(proposal, StudyEnd) and proposal.kind is SegmentKind.explore
    assert proposal.lr <= 0.3 * (1 + 1e-9)
    assert tuner.next_segment(config, trials, optimizer) == proposal  # deterministic
    fourth = window(3, proposal.lr, [2.0, 1.6, 1.5, 1.4, 1.3])
    exploit = tuner.next_segment(config, [*trials, fourth], optimizer)
    assert not isinstance(exploit, StudyEnd) and exploit.kind is SegmentKind.exploit
    assert exploit.lr == proposal.lr  # the best score below the edge


def test_a_dropped_chosen_state_trains_the_stage_short_within_the_planned_charge(
    optimizer,
) -> None:
    """continue_best kept the best candidate so far (0.4); a later window put the edge
    below it, so the chosen one's state is gone: the stage restarts from its start and
    trains tau' steps fewer, as the plan charged for a continued stage."""
    config = annealed(k=3)
    assert config.continue_best and config.selection.value == "min_forecast"
    trials = [
        window(0, 0.1, [2.0, 1.5, 1.3, 1.2, 1.0]),
        window(1, 0.4, [2.0, 1.0, 0.8, 0.7, 0.5]),
        window(2, 0.6, [2.0, 2.5, 2.4, 2.3, 2.2]),
    ]
    exploit = tuner.next_segment(config, trials, optimizer)
    assert not isinstance(exploit, StudyEnd) and exploit.kind is SegmentKind.exploit
    assert exploit.lr == 0.1
    assert exploit.restore == "stage-0" and exploit.why.get("short") == 5
    assert (exploit.start_step, exploit.steps) == (5, 95)
    # Had the chosen state been kept, the stage would continue it.
    kept = tuner.next_segment(config, trials[:2], optimizer)
    assert isinstance(kept, tuner.Decision) and kept.kind is SegmentKind.explore
    alone = annealed(k=2)
    continued = tuner.next_segment(alone, trials[:2], optimizer)
    assert isinstance(continued, tuner.Decision)
    assert continued.restore == "stage-0-candidate-1" and continued.steps == 95


def test_default_is_default_v1_with_the_annealed_model_and_no_tie_rule() -> None:
    """The previous default stays available, and differs in exactly these seven fields
    (docs/tuner.md compares them on the dev split): the annealed model's four, the
    initial design's third stratum, and the half-length windows with their check."""
    changed = {
        key for key, value in PRESETS["default"].items() if PRESETS["default-v1"][key] != value
    }
    assert changed == {
        "probe",
        "forecast",
        "selection",
        "continue_best",
        "initial_design",
        "explore_ratio",
        "finalists",
    }
    assert (PRESETS["default"]["explore_ratio"], PRESETS["default"]["finalists"]) == (0.025, 1)
    assert PRESETS["default-v1"]["selection"].value == "hottest_within_best_noise"
    assert PRESETS["default-v1"]["probe"] == "constant"
