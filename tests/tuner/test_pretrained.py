"""A job that starts from a trained model (``pretrained``) and the first stage's
``horizon_scale``: the search's windows judge from a trained state, so only divergence
marks instability, and the stage holds a multiple of their choice. No server, no
database."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from stagelr.models import SegmentKind, StudyConfig
from stagelr_service import tuner
from stagelr_service.testing.simulation import SyntheticJob, simulate
from stagelr_service.tuner import Decision
from stagelr_service.tuner.config import PRETRAINED_HORIZON_SCALE, ResolvedConfig, resolve
from tests.tuner.test_finalists import checked, window
from tests.tuner.test_priors import summary, warm_config

__all__ = ["summary"]  # the priors' module fixture, used here


#: The annealed model, k = 3 windows of 5 steps, one finalist (test_finalists' config).
config = checked


# --------------------------------------------------------------------------- resolving


def test_default_holds_three_times_a_pretrained_jobs_window_choice() -> None:
    assert PRETRAINED_HORIZON_SCALE == {"default": 3.0}
    assert (config(pretrained=True).pretrained, config(pretrained=True).horizon_scale) == (
        True,
        3.0,
    )
    fresh = config()
    assert (fresh.pretrained, fresh.horizon_scale) == (False, 1.0)
    assert config(pretrained=False).horizon_scale == 1.0


@pytest.mark.parametrize("preset", ["autolrs", "default-v1"])
def test_the_other_presets_hold_what_their_windows_chose(preset: str) -> None:
    resolved = resolve({"preset": preset, "lr_min": 1e-3, "lr_max": 1.0, "pretrained": True})
    assert resolved.pretrained is True and resolved.horizon_scale == 1.0


def test_a_given_horizon_scale_is_kept_and_stored() -> None:
    resolved = config(pretrained=True, horizon_scale=1.5)
    assert resolved.horizon_scale == 1.5
    again = ResolvedConfig.stored(resolved.to_stored())
    assert again == resolved and again.request().horizon_scale == 1.5
    assert config(horizon_scale=0.5).horizon_scale == 0.5  # a fresh job may set one too


@pytest.mark.parametrize("bad", [0.0, -1.0, 101.0])
def test_a_horizon_scale_out_of_range_is_refused(bad: float) -> None:
    with pytest.raises(ValidationError, match="horizon_scale"):
        StudyConfig(lr_min=1e-3, lr_max=1.0, horizon_scale=bad)


def test_a_stored_config_must_say_both() -> None:
    stored = config(pretrained=True).to_stored()
    for key in ("pretrained", "horizon_scale"):
        partial = {k: v for k, v in stored.items() if k != key}
        with pytest.raises(ValidationError, match=key):
            ResolvedConfig.stored(partial)


# --------------------------------------------------------------------------- the edge

#: A fine-tune's first round: every window barely moves from the pretrained loss; the
#: hot one (0.3) ends 0.1% above where it started, the cool one (0.01) lowest.
FLAT = [
    window(0, 0.05, [2.591, 2.590, 2.589, 2.589, 2.5888]),
    window(1, 0.3, [2.591, 2.60, 2.61, 2.60, 2.594]),
    window(2, 0.01, [2.591, 2.589, 2.588, 2.588, 2.5880]),
]


def test_from_a_trained_state_a_window_that_rose_is_no_edge(optimizer) -> None:
    """A fresh job's window that ended above its start caps the search at half its LR;
    a pretrained job's does not (only divergence does)."""
    fresh = tuner.analyze_stage(config(), tuner.stage_geometry(config(), 0, 0, False), FLAT)
    trained_cfg = config(pretrained=True)
    geometry = tuner.stage_geometry(trained_cfg, 0, 0, False)
    trained = tuner.analyze_stage(trained_cfg, geometry, FLAT)
    from stagelr_service.tuner._stability import stability_cap

    assert stability_cap(config(), fresh.candidates) == pytest.approx(0.15)
    assert stability_cap(trained_cfg, trained.candidates) == 1.0
    diverged = [*FLAT[:2], window(2, 0.8, [2.591, 9.0, float("nan")], status="diverged")]
    blown = tuner.analyze_stage(trained_cfg, geometry, diverged)
    assert stability_cap(trained_cfg, blown.candidates) == 0.4


def test_the_check_window_trains_at_the_held_lr_and_only_divergence_fails_it(optimizer) -> None:
    """The best window (0.01) is checked at three times its LR from its own end state;
    a check that rose (the transient of a hotter LR on a trained model) passes, and the
    stage holds 0.03 from the check's end."""
    cfg = config(pretrained=True)
    check = tuner.next_segment(cfg, FLAT, optimizer)
    assert isinstance(check, Decision) and check.kind is SegmentKind.explore
    assert check.lr == pytest.approx(0.03)
    assert check.restore == tuner.candidate_checkpoint(0, 2)
    assert check.why == {"source": "finalist", "continues": 2, "window_lr": 0.01}
    # It ends above the first window's end by more than their noise (a fresh job's
    # window has a noise of 5% of its level at five readings).
    rose = window(3, check.lr, [2.590, 2.90, 2.95, 2.90, 2.85])
    exploit = tuner.next_segment(cfg, [*FLAT, rose], optimizer)
    assert isinstance(exploit, Decision) and exploit.kind is SegmentKind.exploit
    assert exploit.lr == pytest.approx(0.03)
    assert exploit.restore == tuner.candidate_checkpoint(0, 3)
    assert exploit.why["source"] == "finalist" and exploit.why["window_lr"] == 0.01
    # The same check fails a fresh job's (it lost ground): the first round decides.
    fresh = config(horizon_scale=3.0)
    assert tuner.next_segment(fresh, FLAT, optimizer).lr == pytest.approx(0.03)
    failed = tuner.next_segment(fresh, [*FLAT, rose], optimizer)
    assert isinstance(failed, Decision) and failed.why.get("finalists_failed") is True


def test_a_diverged_check_puts_the_edge_below_it(optimizer) -> None:
    cfg = config(pretrained=True)
    blew = window(3, 0.03, [2.590, 9.0, float("nan")], status="diverged")
    exploit = tuner.next_segment(cfg, [*FLAT, blew], optimizer)
    assert isinstance(exploit, Decision) and exploit.kind is SegmentKind.exploit
    assert exploit.why["finalists_failed"] is True
    # The first round chooses 0.01 again; three times it is capped at the new edge,
    # half the check's LR.
    assert exploit.lr == pytest.approx(0.015)
    assert exploit.why["window_lr"] == 0.01


# --------------------------------------------------------------------------- the scale


def test_the_held_lr_is_capped_by_the_edge_and_the_range() -> None:
    cfg = config(pretrained=True)
    assert tuner.held_lr(cfg, 0, 0.01, 1.0) == pytest.approx(0.03)
    assert tuner.held_lr(cfg, 0, 0.01, 0.02) == pytest.approx(0.02)  # the edge
    assert tuner.held_lr(cfg, 0, 0.5, 1.0) == 1.0  # lr_max
    assert tuner.held_lr(cfg, 0, 0.01, 0.005) == 0.01  # never below the choice
    assert tuner.held_lr(cfg, 1, 0.01, 1.0) == 0.01  # a later stage holds its choice
    cool = config(horizon_scale=0.5)
    assert tuner.held_lr(cool, 0, 0.01, 0.001) == pytest.approx(0.005)  # no edge cooling
    assert tuner.held_lr(cool, 0, 0.0015, 1.0) == 1e-3  # lr_min
    assert tuner.held_lr(config(), 0, 0.01, 1.0) == 0.01


def test_without_a_check_the_training_segment_holds_the_scaled_choice(optimizer) -> None:
    cfg = config(pretrained=True, finalists=0)
    exploit = tuner.next_segment(cfg, FLAT, optimizer)
    assert isinstance(exploit, Decision) and exploit.kind is SegmentKind.exploit
    assert exploit.lr == pytest.approx(0.03) and exploit.why["window_lr"] == 0.01
    # it continues the chosen window's end state: the window's steps are the run's
    assert exploit.restore == tuner.candidate_checkpoint(0, 2)


def test_a_fresh_jobs_decisions_are_unchanged(optimizer) -> None:
    """horizon_scale 1 and a fresh start: the decisions of a study stored before these
    fields existed (migration 0011 fills exactly these values)."""
    cfg = config()
    check = tuner.next_segment(cfg, FLAT, optimizer)
    assert isinstance(check, Decision) and "window_lr" not in check.why
    stable = window(3, check.lr, [2.5880, 2.5879, 2.5878, 2.5877, 2.5876])
    exploit = tuner.next_segment(cfg, [*FLAT, stable], optimizer)
    assert isinstance(exploit, Decision) and exploit.lr == check.lr
    assert "window_lr" not in exploit.why


def test_the_scale_is_not_applied_around_a_familys_lr(summary, optimizer) -> None:
    """A narrow search around the priors' LR (whole runs measured it) trains what its
    windows pick; the scale is for a cold search's windows."""
    plain = warm_config(summary, optimizer)
    stored = {**plain.to_stored(), "pretrained": True, "horizon_scale": 3.0}
    stored["warm_start"].pop("basis")  # the selection picks among the narrow windows
    cfg = ResolvedConfig.stored(stored)
    plans, trials, end = simulate(cfg, optimizer, SyntheticJob(seed=2, best_lr=0.02))
    assert end is not None
    verdict, _ = tuner.warm_verdict(cfg, trials)
    assert verdict is not None and verdict.fits, verdict
    explores = [p for p in plans if p.stage == 0 and p.kind is SegmentKind.explore]
    exploit = next(p for p in plans if p.stage == 0 and p.kind is SegmentKind.exploit)
    assert exploit.why["priors"] == "used"
    assert exploit.lr == explores[exploit.why["index"]].lr and "window_lr" not in exploit.why
