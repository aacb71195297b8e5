"""The tuner, with no server and no database: plans, determinism, search quality."""

from __future__ import annotations

import math
from typing import Any

import pytest

from stagelr.models import (
    Metric,
    SegmentKind,
    SegmentStatus,
    Selection,
    StudyStatus,
)
from stagelr_service import tuner
from stagelr_service.forecast import Forecast
from stagelr_service.testing.simulation import SyntheticJob, simulate
from stagelr_service.tuner import StudyEnd, Trial
from stagelr_service.tuner.config import ResolvedConfig, resolve


def config_of(**fields: Any) -> ResolvedConfig:
    """A config as the server resolves a request of ``fields``."""
    return resolve(fields)


def autolrs(**overrides: object) -> ResolvedConfig:
    return config_of(preset="autolrs", lr_min=1e-3, lr_max=1.0, **overrides)


def default(**overrides: object) -> ResolvedConfig:
    """The default preset's search without the check of its choice: these tests read the
    k windows' decisions (test_finalists covers the check)."""
    fields: dict[str, object] = {"finalists": 0, **overrides}
    return config_of(preset="default", lr_min=1e-3, lr_max=1.0, **fields)  # type: ignore[arg-type]


def default_v1(**overrides: object) -> ResolvedConfig:
    """The previous default: constant-LR windows, robust forecasts, a tie rule."""
    return config_of(preset="default-v1", lr_min=1e-3, lr_max=1.0, **overrides)


def by_stage(plans: list[tuner.Decision]) -> dict[int, list[tuner.Decision]]:
    stages: dict[int, list[tuner.Decision]] = {}
    for plan in plans:
        stages.setdefault(plan.stage, []).append(plan)
    return stages


def test_autolrs_stage_lengths_double_until_tau_max(optimizer) -> None:
    plans, _, end = simulate(autolrs(), optimizer, max_segments=5 * 11)
    assert end is None
    stages = by_stage(plans)
    assert [stages[i][-1].steps for i in range(5)] == [1000, 2000, 4000, 8000, 8000]
    assert [stages[i][0].steps for i in range(5)] == [100, 200, 400, 800, 800]


def test_autolrs_stage_is_ten_explores_then_one_exploit(optimizer) -> None:
    plans, _, _ = simulate(autolrs(), optimizer, max_segments=3 * 11)
    for stage in by_stage(plans).values():
        kinds = [p.kind for p in stage]
        assert kinds == [SegmentKind.explore] * 10 + [SegmentKind.exploit]
        assert [p.index for p in stage] == list(range(11))


def test_candidates_restart_from_the_stage_checkpoint_and_exploit_restores_it(optimizer) -> None:
    plans, _, _ = simulate(autolrs(), optimizer, max_segments=2 * 11)
    for index, stage in by_stage(plans).items():
        name = f"stage-{index}"
        first, *others, exploit = stage
        assert (first.save_start, first.restore) == (name, None)
        assert all(p.restore == name and p.save_start is None for p in others)
        assert exploit.restore == name and exploit.discard == (name,)
        assert all(p.start_step == stage[0].start_step for p in stage)
    assert by_stage(plans)[1][0].start_step == 1000


def test_exploit_trains_the_candidate_with_the_lowest_forecast(optimizer) -> None:
    config = autolrs()
    plans, trials, _ = simulate(config, optimizer, max_segments=11)
    geometry = plans[0].geometry
    analysis = tuner.analyze_stage(config, geometry, trials[:10])
    best = min(analysis.candidates, key=lambda c: c.objective)
    assert plans[10].kind is SegmentKind.exploit
    assert plans[10].lr == best.trial.lr


def test_autolrs_reports_training_loss_per_step_then_validation_loss(optimizer) -> None:
    plans, _, _ = simulate(autolrs(tau0=100, tau_max=400), optimizer, max_segments=4 * 11)
    stages = by_stage(plans)
    assert stages[0][0].metric is Metric.train_loss and stages[0][0].report_every == 1
    assert stages[2][0].metric is Metric.val_loss  # tau reached tau_max = 400
    assert stages[2][0].report_every == max(1, 40 // 16)


def test_all_sizes_are_configurable(optimizer) -> None:
    config = autolrs(tau0=40, tau_max=80, k=4, explore_ratio=0.25)
    plans, _, _ = simulate(config, optimizer, max_segments=3 * 5)
    stages = by_stage(plans)
    assert [len(s) for s in stages.values()] == [5, 5, 5]
    assert [s[-1].steps for s in stages.values()] == [40, 80, 80]
    assert [s[0].steps for s in stages.values()] == [10, 20, 20]


def test_same_inputs_give_identical_decisions(optimizer) -> None:
    config = default(tau0=100, tau_max=200, total_steps=500, k=6)
    first = simulate(config, optimizer, SyntheticJob(seed=3))
    second = simulate(config, optimizer, SyntheticJob(seed=3))
    assert first[0] == second[0]
    assert first[2] == second[2]


def test_a_different_seed_changes_the_first_random_candidate(optimizer) -> None:
    a, _, _ = simulate(default(seed=1, tau0=100, k=2), optimizer, max_segments=1)
    b, _, _ = simulate(default(seed=2, tau0=100, k=2), optimizer, max_segments=1)
    assert a[0].lr != b[0].lr


@pytest.mark.parametrize("preset", ["default", "autolrs"])
def test_bo_finds_the_good_region_of_a_curve_with_a_divergence_cliff(optimizer, preset) -> None:
    config = config_of(preset=preset, lr_min=1e-4, lr_max=3.0, tau0=200, tau_max=200, k=10, seed=5)
    job = SyntheticJob(best_lr=0.05, cliff_lr=0.8, noise=0.002)
    plans, _, _ = simulate(config, optimizer, job, max_segments=11)
    chosen = plans[10].lr

    def truth(lr: float) -> float:
        value = job.expected(lr, job.start_loss, 200)
        return math.inf if math.isnan(value) else value

    grid = [1e-4 * (3.0 / 1e-4) ** (i / 400) for i in range(401)]
    best = min(truth(lr) for lr in grid)
    worst = max(truth(lr) for lr in grid if lr < job.cliff_lr)
    # The chosen LR's true stage-end loss is within 5% of the range from the optimum.
    assert truth(chosen) - best < 0.05 * (worst - best)


def test_default_search_wastes_fewer_candidates_on_the_cliff_than_autolrs(optimizer) -> None:
    job_args = dict(best_lr=0.05, cliff_lr=0.3, noise=0.002)
    wasted = {}
    for preset in ("default", "autolrs"):
        config = config_of(preset=preset, lr_min=1e-4, lr_max=3.0, tau0=200, tau_max=200, seed=7)
        plans, _, _ = simulate(config, optimizer, SyntheticJob(**job_args), max_segments=11)
        wasted[preset] = sum(p.lr >= 0.3 for p in plans[:10])
    assert wasted["default"] <= wasted["autolrs"]


def test_default_carries_the_best_lr_over_as_next_stage_first_candidate(optimizer) -> None:
    plans, _, _ = simulate(default(tau0=100, tau_max=100, k=4), optimizer, max_segments=10)
    stages = by_stage(plans)
    assert stages[1][0].lr == stages[0][-1].lr


def test_default_first_search_starts_with_one_candidate_in_each_stratum_of_the_range(
    optimizer,
) -> None:
    for n in (2, 3):
        for seed in range(5):
            config = default(seed=seed, tau0=100, tau_max=100, k=6, initial_design=n)
            plans, _, _ = simulate(config, optimizer, max_segments=n + 1)
            units = [tuner.to_unit(config, p.lr) for p in plans[:n]]
            assert sorted(int(u * n) for u in units) == list(range(n)), units
            sources = [p.why["source"] for p in plans]
            assert sources == ["initial_design"] * n + ["acquisition"]
            assert units == pytest.approx(tuner.initial_design(config, 0))
    assert default().initial_design == 3
    # The order of the strata is seeded: not always cool to hot.
    orders = {tuple(int(u * 3) for u in tuner.initial_design(default(seed=s), 0)) for s in range(8)}
    assert len(orders) > 2 and all(sorted(o) == [0, 1, 2] for o in orders)


def test_an_initial_design_of_one_is_the_single_random_start_stored_studies_made(
    optimizer,
) -> None:
    import numpy as np

    config = default(seed=4, tau0=100, tau_max=100, k=4, initial_design=1)
    plans, _, _ = simulate(config, optimizer, max_segments=2)
    legacy = float(np.random.default_rng([4, 0, 0]).uniform())
    assert tuner.to_unit(config, plans[0].lr) == pytest.approx(legacy)
    assert [p.why["source"] for p in plans] == ["random", "acquisition"]
    assert autolrs().initial_design == 1


def test_the_initial_design_is_capped_at_k_and_skipped_after_a_carried_lr(optimizer) -> None:
    config = default(tau0=100, tau_max=100, k=2)  # initial_design 3 > k
    assert sorted(int(u * 2) for u in tuner.initial_design(config, 0)) == [0, 1]
    plans, _, _ = simulate(
        default(tau0=100, tau_max=100, k=4, planner="fixed"), optimizer, max_segments=7
    )
    stages = by_stage(plans)
    assert [p.why["source"] for p in stages[1][:2]] == ["carry_over", "acquisition"]


def test_autolrs_first_candidate_of_each_stage_is_random(optimizer) -> None:
    plans, _, _ = simulate(autolrs(tau0=100, tau_max=100, k=4), optimizer, max_segments=10)
    stages = by_stage(plans)
    assert stages[1][0].lr != stages[0][-1].lr


def test_default_sets_a_divergence_threshold_from_the_stage_start_loss(optimizer) -> None:
    config = default(tau0=100, tau_max=100, k=3)
    plans, trials, _ = simulate(config, optimizer, max_segments=5)
    stage_start = trials[3].observations[-1][1]
    assert plans[4].stop_above == pytest.approx(stage_start * config.divergence_factor)


def test_autolrs_never_stops_a_candidate_early(optimizer) -> None:
    plans, _, _ = simulate(autolrs(tau0=100, tau_max=100, k=3), optimizer, max_segments=8)
    assert all(p.stop_above is None for p in plans)


def diverged_trial(seq: int, index: int, lr: float) -> Trial:
    return Trial(
        seq,
        0,
        index,
        SegmentKind.explore,
        lr,
        10,
        SegmentStatus.diverged,
        3,
        Metric.val_loss,
        ((1, 1.0), (2, math.nan)),
    )


def good_trial(seq: int, index: int, lr: float, level: float) -> Trial:
    obs = tuple((s, level + 1.0 * math.exp(-0.3 * s)) for s in range(1, 11))
    return Trial(
        seq,
        0,
        index,
        SegmentKind.explore,
        lr,
        10,
        SegmentStatus.completed,
        10,
        Metric.val_loss,
        obs,
    )


def test_diverged_candidate_gets_worst_plus_spread_in_default() -> None:
    config = default(tau0=100, k=5)
    geometry = tuner.stage_geometry(config, 0, 0, False)
    assert geometry is not None
    trials = [good_trial(0, 0, 0.01, 0.5), good_trial(1, 1, 0.1, 0.3), diverged_trial(2, 2, 0.9)]
    analysis = tuner.analyze_stage(config, geometry, trials)
    a, b, d = analysis.candidates
    assert d.diverged and not a.diverged
    assert d.objective == pytest.approx(a.objective + (a.objective - b.objective))


def test_diverged_candidate_gets_the_reference_penalty_in_autolrs() -> None:
    config = autolrs(tau0=100, k=5)
    geometry = tuner.stage_geometry(config, 0, 0, False)
    assert geometry is not None
    analysis = tuner.analyze_stage(
        config, geometry, [good_trial(0, 0, 0.01, 0.5), diverged_trial(1, 1, 0.9)]
    )
    assert analysis.candidates[1].objective == tuner.REFERENCE_PENALTY


def test_every_candidate_diverging_falls_back_to_the_low_end(optimizer) -> None:
    config = default(tau0=100, k=2)
    trials = [diverged_trial(0, 0, 0.5), diverged_trial(1, 1, 0.9)]
    plan = tuner.next_segment(config, trials, optimizer)
    assert not isinstance(plan, StudyEnd)
    assert plan.kind is SegmentKind.exploit and plan.lr == config.lr_min


def test_study_ends_exactly_at_the_step_budget(optimizer) -> None:
    config = default_v1(tau0=100, tau_max=400, total_steps=1000, k=3, decay_fraction=0.0)
    plans, trials, end = simulate(config, optimizer)
    assert end is not None and end.status is StudyStatus.completed
    trained = sum(t.steps_done for t in trials if t.kind is SegmentKind.exploit)
    assert trained == 1000
    assert [p.steps for p in plans if p.kind is SegmentKind.exploit] == [100, 200, 400, 300]


def test_a_short_last_stage_trains_on_without_searching(optimizer) -> None:
    config = default(tau0=100, tau_max=400, total_steps=750, k=3, decay_fraction=0.0)
    plans, _, _ = simulate(config, optimizer)
    last = plans[-1]
    assert last.kind is SegmentKind.exploit and last.steps == 50
    assert last.restore is None and last.lr == plans[-2].lr


def test_a_failed_training_segment_fails_the_study(optimizer) -> None:
    config = default(tau0=100, k=1)
    trials = [good_trial(0, 0, 0.01, 0.5)]
    plan = tuner.next_segment(config, trials, optimizer)
    assert not isinstance(plan, StudyEnd) and plan.kind is SegmentKind.exploit
    failed = Trial(1, 0, 1, SegmentKind.exploit, plan.lr, 100, SegmentStatus.failed)
    end = tuner.next_segment(config, [*trials, failed], optimizer)
    assert isinstance(end, StudyEnd) and end.status is StudyStatus.failed


def test_an_open_segment_is_not_decided_again(optimizer) -> None:
    open_trial = Trial(0, 0, 0, SegmentKind.explore, 0.1, 10, SegmentStatus.open)
    with pytest.raises(ValueError, match="still open"):
        tuner.next_segment(default(tau0=100), [open_trial], optimizer)


def test_candidates_of_a_stage_share_one_data_seed(optimizer) -> None:
    plans, _, _ = simulate(default(tau0=100, tau_max=100, k=3), optimizer, max_segments=8)
    stages = by_stage(plans)
    assert len({p.data_seed for p in stages[0]}) == 1
    assert stages[0][0].data_seed != stages[1][0].data_seed


def forecast_trial(seq: int, lr: float, prediction: float, std: float) -> Trial:
    """A finished candidate whose forecast is given (stored at completion)."""
    fc = Forecast(prediction, std, "ok", "robust", {}, 10)
    obs = ((1, prediction + 0.1), (10, prediction))
    return Trial(seq, 0, seq, SegmentKind.explore, lr, 10, SegmentStatus.completed, 10,
                 Metric.val_loss, obs, forecast=fc)  # fmt: skip


def choose(config: ResolvedConfig, trials: list[Trial], optimizer) -> float:  # type: ignore[no-untyped-def]
    plan = tuner.next_segment(config, trials, optimizer)
    assert not isinstance(plan, StudyEnd) and plan.kind is SegmentKind.exploit
    return plan.lr


def test_min_forecast_trains_the_lowest_forecast_however_uncertain(optimizer) -> None:
    trials = [forecast_trial(0, 0.01, 0.10, 0.02), forecast_trial(1, 0.1, 0.11, 0.001)]
    assert choose(default(tau0=100, k=2, selection="min_forecast"), trials, optimizer) == 0.01


def test_hottest_within_noise_gives_a_tie_to_the_hotter_lr(optimizer) -> None:
    """A forecast within one combined sd of the lowest counts as a tie, and a tie goes
    to the hotter LR, up to half a decade above the lowest forecast's (the same for
    hottest_within_best_noise, default-v1's, when the hotter sd is no wider)."""
    assert default_v1(tau0=100, k=3).selection is Selection.hottest_within_best_noise
    for selection in ("hottest_within_noise", "hottest_within_best_noise"):
        _hottest_ties(selection, optimizer)


def _hottest_ties(selection: str, optimizer) -> None:  # type: ignore[no-untyped-def]
    def default(**overrides: object) -> ResolvedConfig:
        return config_of(preset="default-v1", lr_min=1e-3, lr_max=1.0, selection=selection,
                           **overrides)  # type: ignore[arg-type]  # fmt: skip

    config = default(tau0=100, k=3)
    tied = [forecast_trial(0, 0.01, 0.100, 0.01), forecast_trial(1, 0.02, 0.105, 0.01)]
    assert choose(default(tau0=100, k=2), tied, optimizer) == 0.02
    apart = [forecast_trial(0, 0.01, 0.100, 0.001), forecast_trial(1, 0.02, 0.105, 0.001)]
    assert choose(default(tau0=100, k=2), apart, optimizer) == 0.01
    # 0.05 ties too, but lies more than half a decade above 0.01: 0.03 is as hot as it goes
    capped = [
        forecast_trial(0, 0.01, 0.100, 0.01),
        forecast_trial(1, 0.05, 0.100, 0.01),
        forecast_trial(2, 0.03, 0.101, 0.01),
    ]
    assert choose(config, capped, optimizer) == 0.03
    # a diverged candidate is never a tie, however hot
    with_diverged = [forecast_trial(0, 0.01, 0.10, 0.01), diverged_trial(1, 1, 0.02)]
    assert choose(default(tau0=100, k=2), with_diverged, optimizer) == 0.01


def test_hottest_within_best_noise_does_not_count_a_candidates_own_noise_for_it(
    optimizer,
) -> None:
    """A hot candidate whose window was turbulent has a wild forecast sd: under
    hottest_within_noise that sd makes it a tie; under hottest_within_best_noise the
    tie is judged by the lowest forecast's noise, so the cooler, steadier LR trains."""
    wild = [forecast_trial(0, 0.3, 0.45, 0.4), forecast_trial(1, 0.85, 2.4, 16.9)]
    noise = default_v1(tau0=100, k=2, selection="hottest_within_noise")
    assert choose(noise, wild, optimizer) == 0.85
    best = default_v1(tau0=100, k=2, selection="hottest_within_best_noise")
    assert choose(best, wild, optimizer) == 0.3
    # within the lowest's own noise a tie still goes to the hotter LR (capped as before)
    tied = [forecast_trial(0, 0.3, 0.45, 0.4), forecast_trial(1, 0.6, 0.9, 16.9)]
    assert choose(best, tied, optimizer) == 0.6
    # a steadier hotter candidate keeps its own, smaller sd in the combined one
    steady = [forecast_trial(0, 0.3, 0.45, 0.4), forecast_trial(1, 0.6, 0.95, 0.1)]
    assert choose(best, steady, optimizer) == 0.3


def test_min_upper_bound_charges_the_forecast_uncertainty(optimizer) -> None:
    trials = [forecast_trial(0, 0.01, 0.10, 0.02), forecast_trial(1, 0.1, 0.11, 0.001)]
    config = default_v1(tau0=100, k=2, selection="min_upper_bound")
    assert choose(config, trials, optimizer) == 0.1


def test_min_posterior_mean_distrusts_a_noisy_forecast_its_neighbours_contradict(
    optimizer,
) -> None:
    trials = [
        forecast_trial(0, 0.0100, 0.10, 0.05),
        forecast_trial(1, 0.0105, 0.13, 0.001),
        forecast_trial(2, 0.0095, 0.13, 0.001),
        forecast_trial(3, 0.5, 0.115, 0.001),
    ]
    assert choose(default(tau0=100, k=4, selection="min_forecast"), trials, optimizer) == 0.01
    config = default(tau0=100, k=4, selection="min_posterior_mean")
    assert choose(config, trials, optimizer) == 0.5


def test_a_stored_forecast_is_used_instead_of_refitting() -> None:
    config = default_v1(tau0=100, k=3)
    geometry = tuner.stage_geometry(config, 0, 0, False)
    assert geometry is not None
    trial = forecast_trial(0, 0.01, 0.123, 0.004)
    (candidate,) = tuner.analyze_stage(config, geometry, [trial]).candidates
    assert candidate.objective == 0.123 and candidate.objective_var == 0.004**2
