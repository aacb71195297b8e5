"""Issue 7's switches, in the pure tuner: the budget planner and its final decay,
``continue_best``, ``same_data`` (the noise-aware GP, the robust forecast, divergence
stop and carry-over have their own tests in test_tuner.py and test_forecast.py)."""

from __future__ import annotations

from typing import Any

import pytest

from stagelr.models import (
    LRShape,
    SegmentKind,
    SegmentStatus,
    StudyStatus,
    lr_at,
)
from stagelr_service import tuner
from stagelr_service.testing.simulation import simulate
from stagelr_service.tuner import Decision
from stagelr_service.tuner.config import ResolvedConfig, budget_taus, resolve


def config_of(**fields: Any) -> ResolvedConfig:
    """A config as the server resolves a request of ``fields``."""
    return resolve(fields)


def budget(**overrides: object) -> ResolvedConfig:
    base: dict[str, object] = {
        "lr_min": 1e-3,
        "lr_max": 1.0,
        "total_steps": 1000,
        "k": 4,
        "explore_ratio": 0.1,
        "planner": "budget",
        "decay_fraction": 0.2,
        "continue_best": True,
        "selection": "min_forecast",
        # the search without the check of its choice (test_finalists covers the check)
        "finalists": 0,
    }
    return config_of(preset="default", **{**base, **overrides})  # type: ignore[arg-type]


def stages_of(plans: list[Decision]) -> dict[int, list[Decision]]:
    out: dict[int, list[Decision]] = {}
    for p in plans:
        out.setdefault(p.stage, []).append(p)
    return out


# ------------------------------------------------------------------ the plan


def test_budget_taus_split_the_steps_before_the_decay_growing_by_the_factor() -> None:
    assert budget_taus(1000, 3, 2.0, 0.2) == [114, 229, 457]
    assert sum(budget_taus(1000, 3, 2.0, 0.2)) == 800
    assert budget_taus(1000, 1, 2.0, 0.0) == [1000]
    assert budget_taus(999, 4, 1.0, 0.1) == [225, 225, 225, 224]


def test_the_plan_is_known_before_training_and_ends_with_the_decay() -> None:
    stages, open_ended = tuner.plan_stages(budget())
    assert not open_ended
    assert [s.kind for s in stages] == ["search", "search", "search", "decay"]
    assert [s.geometry.tau for s in stages] == [114, 229, 457, 200]
    assert [s.geometry.start_step for s in stages] == [0, 114, 343, 800]
    # k candidates of tau' each, then the stage minus the continued candidate's steps
    assert stages[0].charge == 4 * 11 + 114 - 11
    assert stages[-1].charge == 200 and stages[-1].candidates == 0


def test_a_study_without_a_budget_has_an_open_ended_plan() -> None:
    stages, open_ended = tuner.plan_stages(budget(total_steps=None))
    assert open_ended
    assert [s.geometry.tau for s in stages] == [1000, 2000, 4000, 8000]


def test_the_fixed_planner_can_end_with_a_decay_too() -> None:
    config = budget(planner="fixed", tau0=100, tau_max=400, decay_fraction=0.1)
    stages, _ = tuner.plan_stages(config)
    assert [s.geometry.tau for s in stages] == [100, 200, 400, 200, 100]
    assert stages[-1].kind == "decay"


def test_a_small_budget_gets_fewer_stages_and_a_tiny_one_is_refused_with_the_fix() -> None:
    assert budget_taus(40, 6, 2.0, 0.2, explore_ratio=0.1) == [11, 21]
    stages, _ = tuner.plan_stages(budget(total_steps=40, budget_stages=6))
    assert [s.kind for s in stages] == ["search", "search", "decay"]
    assert all(s.geometry.tau_explore >= 1 for s in stages if s.kind == "search")
    with pytest.raises(ValueError, match="raise total_steps"):
        budget(total_steps=5)


# ------------------------------------------------------------------ running it


def test_a_budget_study_trains_exactly_its_steps_and_charges_what_was_planned(optimizer) -> None:
    config = budget()
    plans, trials, end = simulate(config, optimizer)
    assert end is not None and end.status is StudyStatus.completed
    last_exploit = [p for p in plans if p.kind is SegmentKind.exploit][-1]
    assert last_exploit.start_step + last_exploit.steps == 1000
    charged = sum(t.trained for t in trials)
    stages, _ = tuner.plan_stages(config)
    # A candidate stopped by its divergence check trains less than its window: the plan
    # charged the whole window, and nothing else goes unspent.
    unspent = sum(t.steps - t.trained for t in trials if t.status is SegmentStatus.diverged)
    assert charged + unspent == sum(s.charge for s in stages)


def test_the_plan_never_ends_in_the_middle_of_a_search(optimizer) -> None:
    for total in (300, 517, 1000, 2049):
        plans, _, end = simulate(budget(total_steps=total), optimizer)
        assert end is not None and end.status is StudyStatus.completed
        by_stage = stages_of(plans)
        for stage in by_stage.values():
            assert stage[-1].kind is SegmentKind.exploit  # every search was finished


def test_the_decay_segment_moves_the_last_lr_to_zero(optimizer) -> None:
    plans, _, _ = simulate(budget(), optimizer)
    decay = plans[-1]
    assert decay.geometry.decay and decay.kind is SegmentKind.exploit
    assert decay.lr_shape is LRShape.one_minus_sqrt and decay.lr_end == 0.0
    assert decay.lr == [p for p in plans if p.kind is SegmentKind.exploit][-2].lr
    assert decay.restore is None and decay.why["source"] == "decay"
    # no decay: the last segment keeps a constant LR
    plans, _, _ = simulate(budget(decay_fraction=0.0), optimizer)
    assert plans[-1].lr_shape is LRShape.constant and not plans[-1].geometry.decay


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        (LRShape.linear, [1.0, 0.75, 0.5, 0.25]),
        (LRShape.one_minus_sqrt, [1.0, 0.5, 1 - 0.5**0.5, 1 - 0.75**0.5]),
        (LRShape.cosine, [1.0, 0.8535533905932737, 0.5, 0.1464466094067262]),
    ],
)
def test_lr_at_follows_the_shape_from_lr_towards_lr_end(
    shape: LRShape, expected: list[float]
) -> None:
    got = [lr_at(1.0, 0.0, shape, step, 4) for step in range(1, 5)]
    assert got == pytest.approx(expected)
    assert lr_at(2.0, None, shape, 3, 4) == 2.0  # no lr_end: constant
    assert lr_at(1.0, 0.0, LRShape.constant, 3, 4) == 1.0


# ------------------------------------------------------------------ continue_best


def test_continue_best_trains_on_from_the_chosen_candidate(optimizer) -> None:
    plans, trials, _ = simulate(budget(), optimizer)
    for index, stage in stages_of(plans).items():
        if not stage[0].geometry.search:
            continue
        *explores, exploit = stage
        assert all(p.save_end == tuner.candidate_checkpoint(index, p.index) for p in explores)
        chosen = exploit.why["index"]
        assert exploit.why["continues"] == chosen
        assert exploit.restore == tuner.candidate_checkpoint(index, chosen)
        tau, tau_explore = exploit.geometry.tau, exploit.geometry.tau_explore
        assert exploit.steps == tau - tau_explore
        assert exploit.start_step == exploit.geometry.start_step + tau_explore
        assert exploit.lr == explores[chosen].lr


def test_continue_best_holds_few_checkpoints_and_drops_every_one(optimizer) -> None:
    """Replay the plans' save/restore/discard as a job would: at no time more than the
    stage start, the best and the newest candidate; nothing is left at the end."""
    plans, _, _ = simulate(budget(k=8), optimizer)
    held: set[str] = set()
    most = 0
    for plan in plans:
        if plan.restore is not None:
            assert plan.restore in held, f"{plan.restore} restored after it was dropped"
        if plan.save_start:
            held.add(plan.save_start)
        if plan.save_end:
            held.add(plan.save_end)
        most = max(most, len(held))
        held -= set(plan.discard)
    assert held == set()
    assert most <= 4  # stage start + best + previous newest + this one, before the drop


def test_without_continue_best_the_stage_restarts_from_its_start(optimizer) -> None:
    plans, _, _ = simulate(budget(continue_best=False), optimizer)
    for index, stage in stages_of(plans).items():
        if not stage[0].geometry.search:
            continue
        *explores, exploit = stage
        assert all(p.save_end is None for p in explores)
        assert exploit.restore == f"stage-{index}" and exploit.steps == exploit.geometry.tau
        assert "continues" not in exploit.why


def test_a_diverged_best_is_not_continued(optimizer) -> None:
    config = budget(k=2, budget_stages=1, decay_fraction=0.0)
    geometry = tuner.stage_geometry(config, 0, 0, False)
    assert geometry is not None
    good = tuner.Trial(
        0,
        0,
        0,
        SegmentKind.explore,
        0.01,
        geometry.tau_explore,
        SegmentStatus.completed,
        observations=tuple((s, 2.0 - s / 1000) for s in range(10, 101, 10)),
    )
    bad = tuner.Trial(
        1,
        0,
        1,
        SegmentKind.explore,
        0.9,
        geometry.tau_explore,
        SegmentStatus.diverged,
        steps_done=20,
        observations=((10, 5.0), (20, float("nan"))),
    )
    plan = tuner.next_segment(config, [good, bad], optimizer)
    assert isinstance(plan, Decision)
    assert plan.restore == tuner.candidate_checkpoint(0, 0) and plan.lr == 0.01
    assert set(plan.discard) == {
        "stage-0",
        tuner.candidate_checkpoint(0, 0),
        tuner.candidate_checkpoint(0, 1),
    }


def test_a_budget_study_trajectory_continues_across_stages(optimizer) -> None:
    """The next stage starts where the continued training segment ended."""
    plans, _, _ = simulate(budget(), optimizer)
    exploits = [p for p in plans if p.kind is SegmentKind.exploit]
    for before, after in zip(exploits, exploits[1:], strict=False):
        assert after.geometry.start_step == before.start_step + before.steps


# ------------------------------------------------------------------ same_data


def test_same_data_gives_every_candidate_of_a_stage_one_seed(optimizer) -> None:
    plans, _, _ = simulate(budget(), optimizer)
    for stage in stages_of(plans).values():
        assert len({p.data_seed for p in stage}) == 1


def test_without_same_data_every_candidate_draws_its_own_batches(optimizer) -> None:
    plans, _, _ = simulate(budget(same_data=False), optimizer)
    first = stages_of(plans)[0]
    assert len({p.data_seed for p in first}) == len(first)


def test_the_autolrs_preset_keeps_the_reference_behaviour() -> None:
    config = config_of(preset="autolrs", lr_min=1e-3, lr_max=1.0, total_steps=1000)
    assert (config.planner, config.decay_fraction, config.continue_best, config.same_data) == (
        "fixed",
        0.0,
        False,
        False,
    )


# ------------------------------------------------------------------ the hold planner


def hold(**overrides: object) -> ResolvedConfig:
    return budget(**{"planner": "hold", "tau0": 100, "tau_max": 400, "decay_fraction": 0.1,
                     **overrides})  # fmt: skip


def test_the_hold_planner_searches_only_the_first_stage_then_trains_on_to_the_decay() -> None:
    stages, _ = tuner.plan_stages(hold())
    # the fixed planner's stages, but only the first one searches
    assert [s.geometry.tau for s in stages] == [100, 200, 400, 200, 100]
    assert [s.kind for s in stages] == ["search", "train_on", "train_on", "train_on", "decay"]
    assert [s.candidates for s in stages] == [4, 0, 0, 0, 0]


def test_the_hold_planner_without_a_decay_or_a_budget_is_the_fixed_planner() -> None:
    for overrides in ({"decay_fraction": 0.0}, {"total_steps": None}):
        held, _ = tuner.plan_stages(hold(**overrides))
        fixed, _ = tuner.plan_stages(hold(**{**overrides, "planner": "fixed"}))
        assert [(s.kind, s.geometry.tau) for s in held] == [(s.kind, s.geometry.tau) for s in fixed]
        assert sum(s.candidates for s in held) > 4  # later stages search as well


def test_a_hold_study_holds_the_first_stages_lr_and_charges_what_was_planned(optimizer) -> None:
    config = hold(continue_best=False)
    plans, trials, end = simulate(config, optimizer)
    assert end is not None and end.status is StudyStatus.completed
    exploits = [p for p in plans if p.kind is SegmentKind.exploit]
    assert [p.stage for p in plans if p.kind is SegmentKind.explore] == [0] * 4
    assert len({p.lr for p in exploits}) == 1
    assert exploits[-1].lr_shape is LRShape.one_minus_sqrt and exploits[-1].lr_end == 0.0
    assert exploits[-1].start_step + exploits[-1].steps == 1000
    stages, _ = tuner.plan_stages(config)
    # a candidate the divergence stop cut short charges less than planned, never more
    assert sum(t.trained for t in trials) <= sum(s.charge for s in stages)
    assert sum(t.trained for t in trials if t.kind is SegmentKind.exploit) == 1000


def test_under_a_charged_budget_hold_fits_a_longer_trajectory_than_fixed() -> None:
    """What a later search would have cost goes to training instead."""
    base = {"total_steps": None, "charged_steps": 3000, "tau0": 1000, "tau_max": 8000}
    held = tuner.fit_charged_budget(budget(planner="hold", **base))
    fixed = tuner.fit_charged_budget(budget(planner="fixed", **base))
    assert held.total_steps is not None and fixed.total_steps is not None
    assert held.total_steps > fixed.total_steps
    assert tuner.planned_charge(held) <= 3000
