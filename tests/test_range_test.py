"""Automatic LR bounds from a range test (``lr_bounds: range_test``): the config, the
tuner's sweep segment and the bounds it reads off, the checkpoints around it, the plan's
charge, replay of a study that ran one, and the whole loop over a live server."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

import stagelr
from stagelr.models import (
    CompleteRequest,
    LRShape,
    Metric,
    ObservationBatch,
    ObservationIn,
    SegmentKind,
    SegmentStatus,
    StudyCreate,
    StudyStatus,
    lr_at,
)
from stagelr_service import tuner
from stagelr_service.replay import replay_study
from stagelr_service.store import Store, migrate
from stagelr_service.studies import StudyService
from stagelr_service.testing.simulation import SyntheticJob, drive_tuner, simulate
from stagelr_service.tuner import Trial
from stagelr_service.tuner.config import (
    LEGACY_CONFIG,
    PRESETS,
    RANGE_TEST_SWEEP,
    ResolvedConfig,
    resolve,
)


def config_of(**fields: Any) -> ResolvedConfig:
    """A config as the server resolves a request of ``fields``."""
    return resolve(fields)


def ranged(**overrides: object) -> ResolvedConfig:
    base: dict[str, object] = {
        "lr_bounds": "range_test",
        "total_steps": 600,
        "tau0": 100,
        "tau_max": 200,
        "k": 4,
    }
    return config_of(**{**base, **overrides})  # type: ignore[arg-type]


def sweep_trial(config: ResolvedConfig, values: list[float]) -> Trial:
    return Trial(
        seq=0,
        stage=0,
        index=0,
        kind=SegmentKind.range_test,
        lr=config.lr_min,
        steps=config.range_test_steps or 0,
        status=SegmentStatus.completed,
        steps_done=len(values),
        metric=Metric.train_loss,
        observations=tuple((i + 1, v) for i, v in enumerate(values)),
    )


def sweep_lr(config: ResolvedConfig, step: int) -> float:
    assert config.range_test_steps is not None
    return lr_at(config.lr_min, config.lr_max, LRShape.exponential, step, config.range_test_steps)


# ------------------------------------------------------------------ config


def test_without_bounds_the_range_test_sweeps_the_wide_default_range() -> None:
    config = config_of(lr_bounds="range_test")
    assert (config.lr_min, config.lr_max) == RANGE_TEST_SWEEP
    assert config.range_test_steps == 100 and config.range_test_decades == 3.0
    given = config_of(lr_bounds="range_test", lr_min=1e-5, lr_max=1.0)
    assert (given.lr_min, given.lr_max) == (1e-5, 1.0)


def test_without_bounds_and_without_a_range_test_the_error_names_both_fixes() -> None:
    with pytest.raises(ValidationError, match="lr_min and lr_max are required") as caught:
        config_of(total_steps=100)  # type: ignore[call-arg]
    assert "range_test" in str(caught.value)


def test_no_preset_and_no_old_study_runs_a_range_test() -> None:
    assert all(p["lr_bounds"] == "given" for p in PRESETS.values())
    assert LEGACY_CONFIG["lr_bounds"] == "given"
    plan = tuner.next_segment(config_of(lr_min=1e-3, lr_max=1.0), [], _NoOptimizer())
    assert isinstance(plan, tuner.Decision) and plan.kind is SegmentKind.explore


def test_lr_at_sweeps_exponentially() -> None:
    values = [lr_at(1e-4, 1.0, LRShape.exponential, s, 4) for s in (1, 2, 3, 4, 5)]
    assert values == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0])


class _NoOptimizer:
    """The tuner must not need the GP to hand out a study's first segment."""

    def propose(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("the GP was asked")

    def posterior(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("the GP was asked")


# ------------------------------------------------------------------ the tuner


def test_the_study_starts_with_the_sweep_which_saves_the_first_state() -> None:
    config = ranged()
    plan = tuner.next_segment(config, [], _NoOptimizer())
    assert isinstance(plan, tuner.Decision)
    assert plan.kind is SegmentKind.range_test and plan.stage == 0
    assert (plan.lr, plan.lr_end, plan.lr_shape) == (1e-6, 10.0, LRShape.exponential)
    assert plan.steps == 100 and plan.start_step == 0
    assert plan.metric is Metric.train_loss and plan.report_every == 1
    assert plan.save_start == "stage-0" and plan.restore is None


def test_the_bounds_top_out_at_the_lowest_smoothed_loss() -> None:
    config = ranged()
    # Loss falls until step 60, then rises: a bowl in log-LR.
    values = [1.0 + 0.001 * (s - 60) ** 2 for s in range(1, 101)]
    low, high, why = tuner.range_test_bounds(config, sweep_trial(config, values))
    assert high == pytest.approx(sweep_lr(config, 60))
    assert low == pytest.approx(high / 1e3)
    assert why["source"] == "range_test" and why["step"] == 60


def test_the_sweep_is_read_only_until_it_blows_up() -> None:
    config = ranged()
    falling = [2.0 - 0.01 * s for s in range(1, 51)]  # lowest at step 50
    # then far above the lowest: a blow-up, after which a lower NaN-free value is noise
    blown = [*falling, 10.0, 0.1, 0.1]
    low, high, why = tuner.range_test_bounds(config, sweep_trial(config, blown))
    assert high == pytest.approx(sweep_lr(config, 50)) and why["points"] == 50
    with_nan = [*falling, math.nan, 0.1]
    assert tuner.range_test_bounds(config, sweep_trial(config, with_nan))[1] == high


def test_a_sweep_with_too_few_points_keeps_the_given_range() -> None:
    config = ranged(lr_min=1e-4, lr_max=1.0)
    low, high, why = tuner.range_test_bounds(config, sweep_trial(config, [1.0, math.nan]))
    assert (low, high) == (1e-4, 1.0) and why["source"] == "range_test_failed"


def test_a_loss_that_never_falls_searches_the_lowest_decades() -> None:
    config = ranged(range_test_decades=2.0)
    rising = [1.0 + 0.01 * s for s in range(1, 101)]
    low, high, why = tuner.range_test_bounds(config, sweep_trial(config, rising))
    assert (low, high) == pytest.approx((1e-6, 1e-4))
    assert why["source"] == "range_test_no_descent"


def test_the_search_stays_within_the_bounds_found_and_finds_the_good_lr(optimizer) -> None:
    config = ranged()
    job = SyntheticJob(best_lr=0.05, cliff_lr=0.5, seed=3)
    plans, trials, end = simulate(config, optimizer, job)
    assert end is not None and end.status is StudyStatus.completed
    assert plans[0].kind is SegmentKind.range_test
    assert sum(p.kind is SegmentKind.range_test for p in plans) == 1
    searched = tuner.search_config(config, trials)
    low, high = searched.lr_min, searched.lr_max
    assert 0.05 < high <= 0.5 and low == pytest.approx(high / 1e3)
    explores = [p for p in plans if p.kind is SegmentKind.explore]
    assert all(low * (1 - 1e-9) <= p.lr <= high * (1 + 1e-9) for p in explores)
    first_exploit = next(p for p in plans if p.kind is SegmentKind.exploit)
    assert abs(math.log10(first_exploit.lr / 0.05)) < 1.0


def test_the_first_state_is_restored_for_every_candidate_and_dropped_once(optimizer) -> None:
    """Replay the checkpoint traffic as a job would: stage 0's candidates and its
    training start from the state before the sweep; nothing is left at the end."""
    for overrides in ({}, {"continue_best": True}, {"total_steps": 30, "tau0": 40}):
        plans, _, _ = simulate(ranged(**overrides), optimizer)
        held: set[str] = set()
        for plan in plans:
            if plan.restore is not None:
                assert plan.restore in held, f"{plan.restore} restored after it was dropped"
            if plan.save_start:
                held.add(plan.save_start)
            if plan.save_end:
                held.add(plan.save_end)
            held -= set(plan.discard)
        assert held == set(), overrides
        stage0 = [p for p in plans if p.stage == 0 and p.kind is not SegmentKind.range_test]
        assert stage0[0].restore == "stage-0" and stage0[0].save_start is None


def test_the_plan_charges_the_sweep_and_the_study_charges_what_was_planned(optimizer) -> None:
    config = ranged()
    stages, _ = tuner.plan_stages(config)
    without, _ = tuner.plan_stages(config.model_copy(update={"lr_bounds": "given"}))
    assert stages[0].charge == without[0].charge + 100
    _, trials, _ = simulate(config, optimizer, SyntheticJob(cliff_lr=100.0))
    assert sum(t.trained for t in trials) == sum(s.charge for s in stages)


def test_the_decisions_after_the_sweep_are_deterministic(optimizer) -> None:
    first = simulate(ranged(), optimizer, SyntheticJob(seed=5))[0]
    again = simulate(ranged(), optimizer, SyntheticJob(seed=5))[0]
    assert [(p.kind, p.lr, p.steps) for p in first] == [(p.kind, p.lr, p.steps) for p in again]


# ------------------------------------------------------------------ stored studies


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, optimizer) -> Iterator[Store]:  # type: ignore[no-untyped-def]
    """A SQLite store with one study that ran a range test, recorded through the study
    service with a synthetic job."""
    url = f"sqlite:///{tmp_path_factory.mktemp('range') / 'stagelr.db'}"
    migrate(url)
    with Store(url) as store:
        service = StudyService(store, optimizer)
        study, _ = service.create_study(StudyCreate(name="ranged", config=ranged().request()))
        job = SyntheticJob(seed=4)
        while (segment := service.next_segment(study.id).segment) is not None:
            reports, diverged = job.segment(segment)
            service.add_observations(
                segment.id,
                ObservationBatch(observations=[ObservationIn(step=s, value=v) for s, v in reports]),
            )
            done = reports[-1][0] if diverged or segment.kind is SegmentKind.range_test else None
            service.complete_segment(segment.id, CompleteRequest(steps_done=done))
        yield store


def test_a_study_with_a_range_test_verifies_and_replays_what_if(store, optimizer) -> None:
    with store.transaction(read_only=True) as repo:
        found = repo.find_study("default", "ranged")
    assert found is not None
    report = replay_study(store, found.id, optimizer)
    assert report.ok, report.mismatches
    what_if = replay_study(store, found.id, optimizer, {"kappa": 0.5, "acquisition": "lcb"})
    assert what_if.error is None and what_if.stages_compared == len(what_if.stages) > 0
    # the plan shows the bounds the sweep found, and charges it to stage 0
    service = StudyService(store, optimizer)
    plan = service.get_plan(found.id)
    assert plan.range_test_steps == 100 and plan.lr_bounds is not None
    low, high = plan.lr_bounds
    assert high / low == pytest.approx(1e3)
    assert plan.stages[0].actual_charge >= 100
    # the stage view's posterior spans the bounds found, not the sweep
    detail = service.stage_detail(found.id, 0)
    assert detail.posterior[0].lr == pytest.approx(low)
    assert detail.posterior[-1].lr == pytest.approx(high)


# ------------------------------------------------------------------ over a live server


@pytest.mark.slow
def test_a_job_that_gives_no_bounds_gets_them_from_the_range_test(live_server) -> None:
    """The real client against the live server: no lr_min / lr_max given; the job
    trains the sweep (its LR read per step from the segment), then the search."""
    with stagelr.Tuner(
        live_server.url,
        study="range-test-live",
        lr_bounds="range_test",
        total_steps=300,
        tau0=100,
        tau_max=200,
        k=3,
    ) as client_tuner:
        client_tuner.connect()  # the service resolves the config: the sweep's range
        assert client_tuner.config.lr_min == RANGE_TEST_SWEEP[0]
        record = drive_tuner(client_tuner, SyntheticJob(best_lr=0.02, cliff_lr=0.3, seed=6))
        assert record.status is StudyStatus.completed
        study = client_tuner.study()
        segments = client_tuner.client.list_segments(study.id)
        plan = client_tuner.client.get_plan(study.id)
    assert segments[0].kind is SegmentKind.range_test
    assert segments[0].lr_at(segments[0].steps + 1) == pytest.approx(RANGE_TEST_SWEEP[1])
    assert plan.lr_bounds is not None and 0.02 < plan.lr_bounds[1] <= 0.3
    # the sweep ended at the cliff's NaN: fewer steps charged than planned
    assert plan.actual_charge == study.charged_steps < plan.planned_charge
    assert segments[0].steps_done is not None and segments[0].steps_done < 100
    with httpx.Client(base_url=live_server.url) as api:
        page = api.get(f"/dashboard/studies/{study.id}")
    assert page.status_code == 200 and "range test" in page.text


def test_export_format_3_round_trips_a_range_test(store, tmp_path: Path) -> None:
    from io import StringIO

    from stagelr_service.exchange import export_studies, import_studies

    with store.transaction(read_only=True) as repo:
        found = repo.find_study("default", "ranged")
    assert found is not None
    buffer = StringIO()
    export_studies(store, [found.id], buffer)
    assert '"kind":"range_test"' in buffer.getvalue()
    url = f"sqlite:///{tmp_path / 'copy.db'}"
    migrate(url)
    with Store(url) as copy:
        import_studies(copy, buffer.getvalue().splitlines())
        with copy.transaction(read_only=True) as repo:
            again = repo.find_study("default", "ranged")
            assert again is not None
            segments = repo.segments_of_study(again.id)
    assert segments[0].kind is SegmentKind.range_test
    assert segments[0].lr_shape is LRShape.exponential
