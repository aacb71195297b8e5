"""The finalists' second windows (``finalists``): a stability check of the search's
choice whose steps the run keeps, with no server and no database."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from stagelr.models import LRShape, Metric, SegmentKind, SegmentStatus
from stagelr_service import tuner
from stagelr_service.testing.simulation import SyntheticJob, simulate
from stagelr_service.tuner import Decision, StudyEnd, Trial
from stagelr_service.tuner.config import ResolvedConfig, resolve


def checked(**overrides: Any) -> ResolvedConfig:
    """The annealed model, k = 3 windows of 5 steps, one finalist."""
    fields: dict[str, Any] = {
        "preset": "default",
        "lr_min": 1e-3,
        "lr_max": 1.0,
        "tau0": 100,
        "tau_max": 100,
        "k": 3,
        "explore_ratio": 0.05,
        "finalists": 1,
    }
    return resolve({**fields, **overrides})


def window(seq: int, lr: float, values: list[float], steps: int = 5, status: str = "completed"
           ) -> Trial:  # fmt: skip
    """A finished window of stage 0, a report each step."""
    observations = tuple((step, value) for step, value in enumerate(values, start=1))
    return Trial(
        seq, 0, seq, SegmentKind.explore, lr, steps, SegmentStatus(status), len(values),
        Metric.val_loss, observations,
    )  # fmt: skip


#: the first round: 0.4 ends lowest, then 0.1; 0.02 is slow
FIRST = [
    window(0, 0.1, [2.0, 1.5, 1.3, 1.2, 1.0]),
    window(1, 0.4, [2.0, 1.0, 0.8, 0.7, 0.5]),
    window(2, 0.02, [2.0, 1.9, 1.8, 1.7, 1.6]),
]


def test_the_best_candidate_trains_a_second_window_from_its_own_end_state(optimizer) -> None:
    config = checked()
    second = tuner.next_segment(config, FIRST, optimizer)
    assert isinstance(second, Decision) and second.kind is SegmentKind.explore
    assert (second.index, second.lr) == (3, 0.4)
    assert second.restore == tuner.candidate_checkpoint(0, 1)
    assert second.save_end == tuner.candidate_checkpoint(0, 3)
    assert (second.start_step, second.steps) == (5, 5)
    assert second.lr_shape is LRShape.wsd and second.lr_end == 0.0
    # the newest state is dropped (not a finalist; 0.1's went when 0.4 beat it)
    assert set(second.discard) == {tuner.candidate_checkpoint(0, 2)}
    assert second.why == {"source": "finalist", "continues": 1}


@pytest.mark.parametrize(
    "stable",
    [
        window(3, 0.4, [0.7, 0.6, 0.5, 0.4, 0.3]),
        # from the annealed state the loss rises at the LR, and the window ends above its
        # first reading, but below where the first window ended: no ground lost
        window(3, 0.4, [0.3, 0.8, 0.7, 0.6, 0.45]),
    ],
)
def test_a_stable_second_window_is_continued_and_its_steps_are_the_runs(
    optimizer, stable: Trial
) -> None:
    config = checked()
    exploit = tuner.next_segment(config, [*FIRST, stable], optimizer)
    assert isinstance(exploit, Decision) and exploit.kind is SegmentKind.exploit
    assert exploit.lr == 0.4 and exploit.why["source"] == "finalist"
    assert exploit.restore == tuner.candidate_checkpoint(0, 3)
    # 5 steps of the first window and 5 of the second are the stage's first 10
    assert (exploit.start_step, exploit.steps) == (10, 90)
    assert set(exploit.discard) == {
        "stage-0",
        tuner.candidate_checkpoint(0, 1),
        tuner.candidate_checkpoint(0, 3),
    }


@pytest.mark.parametrize(
    "unstable",
    [
        window(3, 0.4, [0.7, 1.4, 2.1, 2.3, 1.9]),  # ended above
        window(3, 0.4, [0.7, 4.0, float("nan")], status="diverged"),
    ],
)
def test_an_unstable_second_window_puts_the_edge_below_it_and_the_first_round_decides(
    optimizer, unstable: Trial
) -> None:
    """The finalist failed its check: the stage trains the best first-round LR below the
    new edge (0.1 <= 0.5 x 0.4), from the stage start (its state was dropped), as many
    steps short as the plan counted for the two windows."""
    config = checked()
    exploit = tuner.next_segment(config, [*FIRST, unstable], optimizer)
    assert isinstance(exploit, Decision) and exploit.kind is SegmentKind.exploit
    assert exploit.lr == 0.1 and exploit.why["finalists_failed"] is True
    assert exploit.restore == "stage-0" and exploit.why["short"] == 10
    assert (exploit.start_step, exploit.steps) == (10, 90)


def test_with_two_finalists_the_first_rounds_ranking_decides_among_those_that_pass(
    optimizer,
) -> None:
    config = checked(finalists=2)
    first = tuner.next_segment(config, FIRST, optimizer)
    assert isinstance(first, Decision) and first.lr == 0.4
    assert first.discard == (tuner.candidate_checkpoint(0, 2),)  # 0.1's state is kept
    passed = window(3, 0.4, [0.7, 0.6, 0.5, 0.4, 0.34])
    second = tuner.next_segment(config, [*FIRST, passed], optimizer)
    assert isinstance(second, Decision) and second.kind is SegmentKind.explore
    assert (second.lr, second.restore) == (0.1, tuner.candidate_checkpoint(0, 0))
    assert second.discard == ()  # the first finalist's states stay held
    # 0.1's second window ends lower, but a short window from a trained state rewards a
    # cooler LR: the first round's best (0.4) is continued
    lower = window(4, 0.1, [0.9, 0.6, 0.4, 0.2, 0.1])
    exploit = tuner.next_segment(config, [*FIRST, passed, lower], optimizer)
    assert isinstance(exploit, Decision) and exploit.kind is SegmentKind.exploit
    assert (exploit.lr, exploit.restore) == (0.4, tuner.candidate_checkpoint(0, 3))


def test_a_finalists_study_charges_exactly_its_plan_and_holds_few_states(optimizer) -> None:
    config = checked(tau0=200, tau_max=200, total_steps=1000, k=5, finalists=2)
    stages, _ = tuner.plan_stages(config)
    te = stages[0].geometry.tau_explore
    second = tuner.second_window_steps(config, stages[0].geometry)
    assert stages[0].candidates == 7
    assert stages[0].charge == 5 * te + 2 * second + stages[0].geometry.tau - te - second
    for seed in range(4):
        plans, trials, end = simulate(config, optimizer, SyntheticJob(seed=seed))
        assert end is not None and not isinstance(end, Decision)
        unspent = sum(t.steps - t.trained for t in trials if t.status is SegmentStatus.diverged)
        assert sum(t.trained for t in trials) + unspent == sum(s.charge for s in stages)
        assert plans[-1].start_step + plans[-1].steps == 1000
        held: set[str] = set()
        for plan in plans:
            if plan.restore is not None:
                assert plan.restore in held, f"{plan.restore} restored after it was dropped"
            held |= {name for name in (plan.save_start, plan.save_end) if name}
            assert len(held) <= 5  # stage start, two finalists, their second windows
            held -= set(plan.discard)
        assert held == set()


def test_finalists_leave_a_study_without_them_unchanged(optimizer) -> None:
    """0 finalists (every preset's but default's, and what LEGACY_CONFIG fills into a
    stored config without the field) is the search as it was: the k-th window's decision
    is the training segment. A stored config must say it: it never takes a preset's."""
    config = checked(finalists=0)
    exploit = tuner.next_segment(config, FIRST, optimizer)
    assert isinstance(exploit, Decision) and exploit.kind is SegmentKind.exploit
    assert exploit.restore == tuner.candidate_checkpoint(0, 1) and exploit.start_step == 5
    stored = config.to_stored()
    stored.pop("finalists")
    with pytest.raises(ValueError, match="finalists"):
        tuner.ResolvedConfig.stored(stored)
    assert tuner.ResolvedConfig.stored({**tuner.LEGACY_CONFIG, **stored}) == config
    assert tuner.PRESETS["autolrs"]["finalists"] == tuner.PRESETS["default-v1"]["finalists"] == 0


def test_finalists_need_the_annealed_search_that_continues_its_choice() -> None:
    with pytest.raises(ValueError, match="continue_best"):
        checked(continue_best=False)
    with pytest.raises(ValueError, match="probe"):
        checked(probe="constant")
    with pytest.raises(ValueError, match="at most k"):
        checked(finalists=4)
    assert not isinstance(checked(), StudyEnd)


@pytest.mark.parametrize(("end", "passes"), [(0.52, True), (0.56, False)])
def test_a_second_window_fails_its_check_only_beyond_the_windows_noise(
    optimizer, end: float, passes: bool
) -> None:
    """Two windows of five readings each have a noise of 5% of their level: a second
    window ending 0.02 above the first's 0.5 is within their combined noise, 0.06 not."""
    second = window(3, 0.4, [0.3, 0.7, 0.7 - (0.7 - end) / 3, 0.7 - 2 * (0.7 - end) / 3, end])
    exploit = tuner.next_segment(checked(), [*FIRST, second], optimizer)
    assert isinstance(exploit, Decision) and exploit.kind is SegmentKind.exploit
    assert (exploit.lr == 0.4) is passes
    assert ("finalists_failed" in exploit.why) is not passes


def test_a_finalist_whose_state_was_dropped_runs_no_second_window(optimizer) -> None:
    """continue_best dropped 0.1's state when 0.4 beat it; the third window (0.6) is
    unstable and puts the edge at 0.3, below 0.4. The only finalist under the edge is
    0.1, whose state is gone: no second window can continue it, and the first round
    decides, training from the stage start."""
    unstable = window(2, 0.6, [2.0, 2.5, 2.4, 2.3, 2.2])
    trials = [*FIRST[:2], unstable]
    decision = tuner.next_segment(checked(), trials, optimizer)
    assert isinstance(decision, Decision) and decision.kind is SegmentKind.exploit
    assert decision.lr == 0.1 and decision.restore == "stage-0"
    assert decision.why.get("short") == 5


def test_a_request_that_turns_off_what_the_check_needs_has_no_check() -> None:
    """The default preset's finalist needs continue_best and annealed windows: a request
    that turns either off resolves without one, one that asks for it is told why not."""
    assert tuner.PRESETS["default"]["finalists"] == 1
    plain = resolve({"lr_min": 1e-3, "lr_max": 1.0})
    assert plain.finalists == 1 and plain.checks_choice
    assert resolve({"lr_min": 1e-3, "lr_max": 1.0, "continue_best": False}).finalists == 0
    assert resolve({"lr_min": 1e-3, "lr_max": 1.0, "probe": "constant"}).finalists == 0
    with pytest.raises(ValueError, match="continue_best"):
        resolve({"lr_min": 1e-3, "lr_max": 1.0, "continue_best": False, "finalists": 1})


def test_a_checked_studys_prior_summary_reads_the_search_windows_only(optimizer) -> None:
    """A finalist's second window starts from a trained state: its first reading and its
    score would pass for a better start and a better window. The summary a later study's
    priors read holds the k windows only."""
    config = checked(tau0=200, tau_max=200, total_steps=1000, k=4)
    plans, trials, end = simulate(config, optimizer, SyntheticJob(seed=1))
    assert end is not None
    stage0 = [t for t in trials if t.stage == 0 and t.kind is SegmentKind.explore]
    assert [t.index for t in stage0] == [0, 1, 2, 3, 4]  # 4 windows, then the check
    horizon = {p.stage: p.horizon for p in plans}
    stored = [
        dataclasses.replace(t, forecast=tuner.forecast_trial(config, t, horizon[t.stage]))
        if t.kind is SegmentKind.explore
        else t
        for t in trials
    ]
    entry = tuner.summarize_prior(3, "checked", config.to_stored(), stored)
    search = stage0[:4]
    assert len(entry["candidates"]) == 4
    assert entry["start_loss"] == min(t.observations[0][1] for t in search)
    # the check's first reading is lower still: it would have set the start loss
    assert stage0[4].observations[0][1] < entry["start_loss"]


def test_windows_of_half_a_stage_leave_no_room_for_a_check(optimizer) -> None:
    """Two windows of half a stage would be the whole stage: such a stage searches as
    without finalists, and the study charges no more than its plan."""
    config = checked(tau0=20, tau_max=20, total_steps=60, k=3, explore_ratio=0.5, planner="fixed")
    stages, _ = tuner.plan_stages(config)
    assert [s.candidates for s in stages if s.geometry.search] == [3, 3]
    plans, trials, end = simulate(config, optimizer, SyntheticJob(seed=5))
    assert end is not None
    assert not any(p.why.get("source") == "finalist" for p in plans)
    unspent = sum(t.steps - t.trained for t in trials if t.status is SegmentStatus.diverged)
    assert sum(t.trained for t in trials) + unspent == sum(s.charge for s in stages)
    # a quarter-stage window leaves half the stage to train after the check
    quarter = checked(tau0=20, tau_max=20, total_steps=60, k=3, explore_ratio=0.25)
    assert tuner.plan_stages(quarter)[0][0].candidates == 4
