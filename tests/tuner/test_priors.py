"""The priors module (tuner/_priors.py) and its hook in the tuner, with no server: a
prior that fits gives a narrow first search; one that does not falls back to the full
search within the budget; both are deterministic."""

from __future__ import annotations

import dataclasses
import math

import pytest

from stagelr.models import SegmentKind
from stagelr_service import tuner
from stagelr_service.testing.simulation import SyntheticJob, simulate
from stagelr_service.tuner._priors import WARM_SPAN_DECADES

REQUEST = {"lr_min": 1e-3, "lr_max": 1.0, "charged_steps": 4000}


def with_forecasts(config: tuner.ResolvedConfig, plans, trials):  # type: ignore[no-untyped-def]
    """The trials as the store keeps them: each candidate with its forecast."""
    horizon = {p.stage: p.horizon for p in plans}
    return [
        dataclasses.replace(t, forecast=tuner.forecast_trial(config, t, horizon[t.stage]))
        if t.kind is SegmentKind.explore
        else t
        for t in trials
    ]


@pytest.fixture(scope="module")
def summary(optimizer):  # type: ignore[no-untyped-def]
    config = tuner.fit_charged_budget(tuner.resolve({**REQUEST, "seed": 3}))
    plans, trials, end = simulate(config, optimizer, SyntheticJob(seed=3))
    assert end is not None
    entry = tuner.summarize_prior(
        7, "prior", config.to_stored(), with_forecasts(config, plans, trials)
    )
    return tuner.prior_summary([entry], "fam", [])


def warm_config(summary, optimizer, **request):  # type: ignore[no-untyped-def]
    resolved = tuner.resolve({**REQUEST, "seed": 2, "family": "fam", **request})
    warm = tuner.warm_start(resolved, summary, optimizer)
    return tuner.fit_charged_budget(resolved.model_copy(update={"warm_start": warm}))


def stage0(plans):  # type: ignore[no-untyped-def]
    return [p for p in plans if p.stage == 0]


def test_the_summary_is_compact_and_content_hashed(summary) -> None:
    (entry,) = summary["studies"]
    assert entry["id"] == 7 and entry["chosen_lr"] is not None
    assert entry["fingerprint"]["charged_steps"] == 4000 and "seed" not in entry["fingerprint"]
    assert entry["start_loss"] > 0 and entry["final_loss"] < entry["start_loss"]
    assert len(summary["hash"]) == 64
    again = tuner.prior_summary(summary["studies"], "fam", [])
    assert again["hash"] == summary["hash"]
    changed = [{**entry, "chosen_lr": entry["chosen_lr"] * 2}]
    assert tuner.prior_summary(changed, "fam", [])["hash"] != summary["hash"]


def test_a_fitting_prior_gives_a_narrow_cheap_first_search(summary, optimizer) -> None:
    config = warm_config(summary, optimizer)
    warm = config.warm_start
    assert warm is not None and warm.priors == (7,)
    # one LR measured: the next job measures a step cooler
    step = 10**WARM_SPAN_DECADES
    assert warm.basis == "explore" and warm.holds_centre
    assert warm.lr == pytest.approx(summary["studies"][0]["chosen_lr"] / step)
    plans, trials, end = simulate(config, optimizer, SyntheticJob(seed=2))
    assert end is not None
    first = stage0(plans)
    explores = [p for p in first if p.kind is SegmentKind.explore]
    assert [p.lr for p in explores] == list(warm.candidates)
    cold = tuner.fit_charged_budget(tuner.resolve({**REQUEST, "seed": 2}))
    geometry = tuner.plan_stages(cold)[0][0].geometry
    assert all(p.steps * 2 <= geometry.tau_explore + 1 for p in explores)
    search = sum(t.trained for t in trials if t.kind is SegmentKind.explore)
    assert search <= 0.03 * REQUEST["charged_steps"]
    # the steps saved became trajectory, and the study charged what it planned
    assert config.total_steps > cold.total_steps  # type: ignore[operator]
    assert sum(t.trained for t in trials) == tuner.planned_charge(config)
    exploit = next(p for p in first if p.kind is SegmentKind.exploit)
    assert exploit.why["priors"] == "used" and exploit.index == len(warm.candidates)
    # the centre is trained, whichever narrow window ended lowest
    assert exploit.lr == warm.lr and exploit.why["source"] == "priors_centre"
    verdict, finished = tuner.warm_verdict(config, trials)
    assert verdict is not None and verdict.fits and finished == 3
    assert "held one LR" in verdict.reason


@pytest.mark.parametrize(
    "job, reason",
    [
        (SyntheticJob(seed=2, start_loss=25.0), "far from the priors'"),
        (SyntheticJob(seed=2, best_lr=0.003, cliff_lr=0.02), "diverged"),
        # the hotter neighbour blows up: the priors' LR sits above the stability edge
        (SyntheticJob(seed=2, cliff_lr=0.07), "above the stability edge"),
    ],
)
def test_a_prior_that_does_not_fit_falls_back_to_the_full_search(
    summary, optimizer, job, reason
) -> None:
    config = warm_config(summary, optimizer)
    plans, trials, end = simulate(config, optimizer, job)
    assert end is not None
    verdict, _ = tuner.warm_verdict(config, trials)
    assert verdict is not None and not verdict.fits
    assert __import__("re").search(reason, verdict.reason), verdict.reason
    first = stage0(plans)
    explores = [p for p in first if p.kind is SegmentKind.explore]
    assert len(explores) == 3 + config.k
    # the full search is the one a study without priors runs
    cold_plans, _, _ = simulate(config.model_copy(update={"warm_start": None}), optimizer, job)
    assert explores[3].lr == stage0(cold_plans)[0].lr
    exploit = next(p for p in first if p.kind is SegmentKind.exploit)
    assert exploit.why["priors"] == "fallback"
    # its cost came out of the stage's training: the budget holds
    assert sum(t.trained for t in trials) <= REQUEST["charged_steps"]


def test_priors_of_another_fingerprint_are_not_used(summary, optimizer) -> None:
    assert warm_config(summary, optimizer, lr_max=2.0).warm_start is None
    assert warm_config(summary, optimizer, charged_steps=5000).warm_start is None
    assert warm_config(summary, optimizer, continue_best=False).warm_start is None
    # the seed is no part of the fingerprint
    assert warm_config(summary, optimizer, seed=99).warm_start is not None


def test_a_prior_held_at_a_range_end_by_a_rounding_hair_fits(summary, optimizer) -> None:
    """A family whose LR sits at the bottom of its range stores it as computed in log
    space (0.07999999999999999 for an lr_min of 0.08): the next job still takes it."""
    (entry,) = summary["studies"]
    lr_min = REQUEST["lr_min"]
    assert entry["chosen_lr"] > lr_min
    at_bottom = math.nextafter(lr_min, 0.0)
    for held, fits in ((at_bottom, True), (lr_min * 0.99, False)):
        moved = tuner.prior_summary([{**entry, "chosen_lr": held}], "fam", [])
        warm = warm_config(moved, optimizer).warm_start
        assert (warm is not None) == fits, held
        if warm is not None:
            assert min(warm.candidates) >= lr_min


def test_decisions_with_priors_are_deterministic(summary, optimizer) -> None:
    config = warm_config(summary, optimizer)
    for job in (SyntheticJob(seed=2), SyntheticJob(seed=2, start_loss=25.0)):
        runs = [simulate(config, optimizer, dataclasses.replace(job))[0] for _ in range(2)]
        assert [p.decision() for p in runs[0]] == [p.decision() for p in runs[1]]
    assert warm_config(summary, optimizer) == config


def held_states(plans) -> set[str]:  # type: ignore[no-untyped-def]
    """Walk the plans as a job keeps its states: every restore names a state saved and
    not yet dropped; what is left held at the end is returned."""
    held: set[str] = set()
    for p in plans:
        assert p.restore is None or p.restore in held, (p.index, p.restore, held)
        if p.save_start is not None:
            held.add(p.save_start)
        if p.save_end is not None:
            assert p.save_end not in held, (p.index, p.save_end)
            held.add(p.save_end)
        held -= set(p.discard)
    return held


def test_the_narrow_search_under_continue_best_keeps_the_chosen_state(summary, optimizer) -> None:
    config = warm_config(summary, optimizer)
    warm = config.warm_start
    assert config.continue_best and config.probe == "anneal" and warm is not None
    plans, trials, end = simulate(config, optimizer, SyntheticJob(seed=2))
    assert end is not None
    first = stage0(plans)
    explores = [p for p in first if p.kind is SegmentKind.explore]
    window = explores[0].steps
    # each narrow candidate is an annealed probe that keeps its end state
    assert all(p.lr_shape == "wsd" and p.lr_end == 0.0 for p in explores)
    assert [p.save_end for p in explores] == [
        tuner.candidate_checkpoint(0, i) for i in range(len(warm.candidates))
    ]
    exploit = next(p for p in first if p.kind is SegmentKind.exploit)
    chosen = exploit.why["continues"]
    assert exploit.why["priors"] == "used" and exploit.lr == explores[chosen].lr
    # the training continues the chosen candidate: its window counts as kept steps
    assert exploit.restore == tuner.candidate_checkpoint(0, chosen)
    assert exploit.start_step == window and exploit.steps == exploit.geometry.tau - window
    assert held_states(plans) == set()
    charged = sum(t.trained for t in trials)
    assert charged == tuner.planned_charge(config) <= REQUEST["charged_steps"]


def test_a_fallback_under_continue_best_keeps_its_own_states_within_budget(
    summary, optimizer
) -> None:
    config = warm_config(summary, optimizer)
    plans, trials, end = simulate(config, optimizer, SyntheticJob(seed=2, start_loss=25.0))
    assert end is not None
    explores = [p for p in stage0(plans) if p.kind is SegmentKind.explore]
    assert len(explores) == 3 + config.k
    # the full search's states are named after the narrow ones, and none is lost
    assert [p.save_end for p in explores] == [
        tuner.candidate_checkpoint(0, i) for i in range(3 + config.k)
    ]
    exploit = next(p for p in stage0(plans) if p.kind is SegmentKind.exploit)
    assert exploit.why["priors"] == "fallback"
    assert exploit.restore == tuner.candidate_checkpoint(0, exploit.why["continues"])
    assert explores[exploit.why["continues"]].lr == exploit.lr
    assert held_states(plans) == set()
    assert sum(t.trained for t in trials) <= REQUEST["charged_steps"]


def family_summary(summary, points):  # type: ignore[no-untyped-def]
    """Priors of one fingerprint that held the given LRs and ended at the given losses."""
    (entry,) = summary["studies"]
    studies = [
        {**entry, "id": 10 + i, "chosen_lr": lr, "final_loss": loss}
        for i, (lr, loss) in enumerate(points)
    ]
    return tuner.prior_summary(studies, "fam", [])


def test_priors_at_one_lr_measure_a_step_cooler(summary, optimizer) -> None:
    same = family_summary(summary, [(0.05, 0.40), (0.06, 0.30)])
    warm = warm_config(same, optimizer).warm_start
    assert warm is not None and warm.basis == "explore"
    assert warm.lr == pytest.approx(math.sqrt(0.05 * 0.06) / 10**WARM_SPAN_DECADES)
    # three or more at one LR: the family has settled there, and stays
    settled = family_summary(summary, [(0.05, 0.40), (0.06, 0.30), (0.055, 0.35)])
    warm = warm_config(settled, optimizer).warm_start
    assert warm is not None and warm.basis == "final_loss"
    assert warm.lr == pytest.approx(0.055, rel=0.01)
    # never below the range
    low = family_summary(summary, [(0.0012, 0.4)])
    edge = warm_config(low, optimizer).warm_start
    assert edge is not None and edge.lr == pytest.approx(REQUEST["lr_min"])


def test_a_chosen_lr_centre_of_a_stored_study_keeps_its_selection(summary, optimizer) -> None:
    # Studies stored before the centre was trained name basis chosen_lr (the field's
    # default): their fitting narrow search still trains the selection's pick.
    config = warm_config(summary, optimizer)
    assert config.warm_start is not None
    stored = config.to_stored()
    stored["warm_start"].pop("basis")
    old = tuner.ResolvedConfig.stored(stored)
    assert old.warm_start is not None and old.warm_start.basis == "chosen_lr"
    assert not old.warm_start.holds_centre
    plans, trials, end = simulate(old, optimizer, SyntheticJob(seed=2, best_lr=0.02))
    assert end is not None
    explores = [p for p in stage0(plans) if p.kind is SegmentKind.explore]
    exploit = next(p for p in stage0(plans) if p.kind is SegmentKind.exploit)
    verdict, _ = tuner.warm_verdict(old, trials)
    assert verdict is not None
    if verdict.fits:
        assert exploit.why["source"] == "min_forecast"
        assert exploit.lr == explores[exploit.why["index"]].lr
    else:
        assert "beat the priors' LR" in verdict.reason


@pytest.mark.parametrize("better", ["hotter", "cooler"])
def test_priors_that_held_different_lrs_centre_where_their_runs_ended_lowest(
    summary, optimizer, better
) -> None:
    # Three jobs held 0.02, 0.04 and 0.08; their final losses fall towards one side.
    losses = [0.50, 0.40, 0.30] if better == "hotter" else [0.30, 0.40, 0.50]
    fam = family_summary(summary, list(zip([0.02, 0.04, 0.08], losses, strict=True)))
    warm = warm_config(fam, optimizer).warm_start
    assert warm is not None and warm.basis == "final_loss"
    step = 10**WARM_SPAN_DECADES
    # the best run is the family's edge: the next job measures a whole step beyond it
    if better == "hotter":
        assert warm.lr == pytest.approx(0.08 * step)
    else:
        assert warm.lr == pytest.approx(0.02 / step)
    # the narrow search is centred there
    assert warm.candidates[0] == warm.lr
    # a valley between them: the centre stays inside
    valley = family_summary(summary, [(0.02, 0.5), (0.04, 0.3), (0.08, 0.5)])
    inner = warm_config(valley, optimizer).warm_start
    assert inner is not None and 0.02 < inner.lr < 0.08


def test_a_family_whose_best_run_is_its_edge_measures_a_step_beyond_it(summary, optimizer) -> None:
    # Job 1 held 0.0043 (final 0.40), job 2 a step cooler (0.78): the hotter run is
    # better, and a constant-mean GP puts its minimum next to it. The family must measure
    # beyond it, or it stays there for good: each further job a step hotter while the
    # hottest run is the best, until a run ends worse and the minimum is inside.
    step = 10**WARM_SPAN_DECADES
    points = [(0.0043, 0.40), (0.0043 / step, 0.78)]
    expected = [0.0043 * step, 0.0043 * step**2, 0.0043 * step**3]
    for lr, loss in zip(expected, [0.25, 0.15, 0.13], strict=True):
        warm = warm_config(family_summary(summary, points), optimizer).warm_start
        assert warm is not None and warm.basis == "final_loss"
        assert warm.lr == pytest.approx(lr)
        points.append((lr, loss))
    # the step beyond the last best ended worse: the centre is inside what was measured
    points.append((0.0043 * step**4, 0.16))
    inner = warm_config(family_summary(summary, points), optimizer).warm_start
    assert inner is not None
    assert 0.0043 * step**2 < inner.lr < 0.0043 * step**4
    # at the top of the range it stays there
    top = family_summary(summary, [(0.5, 0.5), (1.0, 0.3)])
    edge = warm_config(top, optimizer).warm_start
    assert edge is not None and edge.lr == pytest.approx(REQUEST["lr_max"])


@pytest.mark.parametrize("side", ["cooler", "hotter"])
def test_a_family_steps_past_its_edge_only_when_the_edge_leads_beyond_noise(
    summary, optimizer, side
) -> None:
    # Five jobs of a family near its optimum (the large-batch Hastie MLP's partner
    # family): 0.0805 held twice ended 0.1746 and 0.1658, so the seeds' spread is about
    # 0.009, and the edge's 0.1688 leads the best inside by less than that. A step beyond
    # it ended at 0.51 there. The centre stays inside what the family measured.
    step = 10**WARM_SPAN_DECADES
    noisy = [
        (0.0805, 0.1746),
        (0.0904, 0.1747),
        (0.0702, 0.1743),
        (0.0404, 0.1688),
        (0.0805, 0.1658),
    ]
    mirror = 0.0805**2  # hotter: the same losses reflected about 0.0805 in log-LR
    points = noisy if side == "cooler" else [(mirror / lr, loss) for lr, loss in noisy]
    lrs = [lr for lr, _ in points]
    warm = warm_config(family_summary(summary, points), optimizer).warm_start
    assert warm is not None and warm.basis == "final_loss"
    assert min(lrs) / step < warm.lr < max(lrs) * step
    assert warm.lr not in (pytest.approx(min(lrs) / step), pytest.approx(max(lrs) * step))
    # the same LRs, the edge leading by ten times the repeats' spread: a step beyond it
    edge = min(lrs) if side == "cooler" else max(lrs)
    clear = [(lr, loss - 0.09 if lr == edge else loss) for lr, loss in points]
    warm = warm_config(family_summary(summary, clear), optimizer).warm_start
    assert warm is not None
    assert warm.lr == pytest.approx(edge / step if side == "cooler" else edge * step)


def test_with_a_final_loss_centre_a_neighbour_winning_its_window_is_no_misfit(
    summary, optimizer
) -> None:
    # The family's runs ended lowest at a cool LR; this job's short windows favour a
    # hotter one (best_lr 0.3): the narrow search still uses the priors.
    fam = family_summary(summary, [(0.01, 0.30), (0.02, 0.35), (0.04, 0.45)])
    config = warm_config(fam, optimizer)
    assert config.warm_start is not None and config.warm_start.basis == "final_loss"
    plans, trials, end = simulate(
        config, optimizer, SyntheticJob(seed=2, best_lr=0.3, cliff_lr=3.0)
    )
    assert end is not None
    verdict, _ = tuner.warm_verdict(config, trials)
    assert verdict is not None and verdict.fits, verdict.reason
    assert "final losses" in verdict.reason
    exploit = next(p for p in stage0(plans) if p.kind is SegmentKind.exploit)
    assert exploit.why["priors"] == "used"
    # a start loss far from the priors' is still a misfit
    _, far, _ = simulate(config, optimizer, SyntheticJob(seed=2, start_loss=25.0))
    verdict, _ = tuner.warm_verdict(config, far)
    assert verdict is not None and not verdict.fits and "far from" in verdict.reason


def leaning(summary, lean_lr):  # type: ignore[no-untyped-def]
    """A family whose jobs held 0.01..0.04 (lowest final loss at the cool end) and whose
    own search windows ended lowest at ``lean_lr``."""
    (entry,) = summary["studies"]
    studies = [
        {**entry, "id": 20 + i, "chosen_lr": lr, "final_loss": loss,
         "candidates": [[lean_lr, 0.5], [lr, 0.9]]}
        for i, (lr, loss) in enumerate([(0.01, 0.30), (0.02, 0.35), (0.04, 0.45)])
    ]  # fmt: skip
    return tuner.prior_summary(studies, "fam", [])


@pytest.mark.parametrize(
    "lean_lr, fits, reason",
    [
        # the priors' windows also ended lowest hotter: the job's hotter win is horizon
        (0.2, True, "final losses put the centre"),
        # their windows leaned cooler: a hotter win says another workload
        (0.001, False, "a hotter LR .* beyond noise, where the priors' windows leaned cooler"),
        # their windows ended lowest at the centre: no lean to explain a win away
        (None, False, "leaned nowhere"),
    ],
)  # fmt: skip
def test_a_neighbour_winning_its_window_is_a_misfit_only_against_the_priors_lean(
    summary, optimizer, lean_lr, fits, reason
) -> None:
    config = warm_config(leaning(summary, 0.2), optimizer)
    warm = config.warm_start
    assert warm is not None and warm.basis == "final_loss" and warm.window_lr == pytest.approx(0.2)
    lean = warm.lr if lean_lr is None else lean_lr
    config = config.model_copy(update={"warm_start": warm.model_copy(update={"window_lr": lean})})
    # this job's short windows favour a far hotter LR than the centre
    job = SyntheticJob(seed=2, best_lr=0.3, cliff_lr=3.0)
    plans, trials, end = simulate(config, optimizer, job)
    assert end is not None
    verdict, _ = tuner.warm_verdict(config, trials)
    assert verdict is not None and verdict.fits is fits
    assert __import__("re").search(reason, verdict.reason), verdict.reason
    exploit = next(p for p in stage0(plans) if p.kind is SegmentKind.exploit)
    assert exploit.why["priors"] == ("used" if fits else "fallback")


def test_the_start_is_compared_like_with_like_where_the_first_steps_are_fast(optimizer) -> None:
    # A workload whose first steps are fast: the prior's hottest candidate has already
    # fallen far by its first report, and the narrow search's half windows report after
    # fewer steps. The lowest first report of each differs by more than START_LOSS_RATIO
    # on the same workload; the loss after the same steps at the priors' LR does not.
    from stagelr_service.tuner._priors import START_LOSS_RATIO

    fast = {"start_loss": 2.5, "speed": 6.0}
    # windows of tau/20: the narrow search's half windows report far earlier
    tau20 = {"explore_ratio": 0.05, "finalists": 0}
    config = tuner.fit_charged_budget(tuner.resolve({**REQUEST, "seed": 3, **tau20}))
    plans, trials, end = simulate(config, optimizer, SyntheticJob(seed=3, **fast))
    assert end is not None
    entry = tuner.summarize_prior(
        7, "prior", config.to_stored(), with_forecasts(config, plans, trials)
    )
    step, loss, lr = entry["first_reading"]
    chosen = next(t for t in trials if t.kind is SegmentKind.explore and t.lr == lr)
    assert lr == entry["chosen_lr"] and (step, loss) == chosen.observations[0]
    summary = tuner.prior_summary([entry], "fam", [])
    warm_cfg = warm_config(summary, optimizer, **tau20)
    assert warm_cfg.warm_start is not None
    assert warm_cfg.warm_start.start_reading == (step, loss)

    _, same, _ = simulate(warm_cfg, optimizer, SyntheticJob(seed=2, **fast))
    verdict, _ = tuner.warm_verdict(warm_cfg, same)
    assert verdict is not None and verdict.fits, verdict.reason
    # What the earlier check compared: the lowest first reports, off by more than its
    # tolerance here (so it would have fallen back on the family's own workload).
    narrow = [t.observations[0][1] for t in same if t.stage == 0 and t.index < 3]
    assert min(narrow) / entry["start_loss"] > START_LOSS_RATIO

    # Another workload, its loss three times the family's: it does not fit.
    _, other, _ = simulate(warm_cfg, optimizer, SyntheticJob(seed=2, start_loss=7.5, speed=6.0))
    verdict, _ = tuner.warm_verdict(warm_cfg, other)
    assert verdict is not None and not verdict.fits
    assert f"the loss after {step} steps at the priors' LR" in verdict.reason


def test_a_study_warm_started_before_start_readings_keeps_its_check(summary, optimizer) -> None:
    # Summaries stored before the first reading was kept: the lowest first report judges.
    (entry,) = summary["studies"]
    old = tuner.prior_summary([{k: v for k, v in entry.items() if k != "first_reading"}], "fam", [])
    config = warm_config(old, optimizer)
    assert config.warm_start is not None and config.warm_start.start_reading is None
    assert config.warm_start.start_loss == entry["start_loss"]
    _, trials, _ = simulate(config, optimizer, SyntheticJob(seed=2, start_loss=25.0))
    verdict, _ = tuner.warm_verdict(config, trials)
    assert verdict is not None and not verdict.fits
    assert verdict.reason.startswith("the first loss")
