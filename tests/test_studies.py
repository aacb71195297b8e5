"""The study service over a real store (SQLite and PostgreSQL), without HTTP.

What a crash recovery or a replay relies on: the stored history alone reproduces every
decision, and a forecast stored at completion is the one the tuner would recompute.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy.engine import URL

from stagelr.models import (
    CompleteRequest,
    ObservationBatch,
    ObservationIn,
    SegmentKind,
    StudyConfig,
    StudyCreate,
)
from stagelr_service import tuner
from stagelr_service.simulation import SyntheticJob
from stagelr_service.store import Store, migrate
from stagelr_service.studies import StudyService, trials_of

from .store_fixtures import BACKENDS, clear_tables, fresh_database


@pytest.fixture(scope="module", params=BACKENDS)
def database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[URL]:
    with fresh_database(request.param, tmp_path_factory.mktemp("studies")) as url:
        migrate(url)
        yield url


@pytest.fixture
def service(database: URL, optimizer) -> Iterator[StudyService]:  # type: ignore[no-untyped-def]
    with Store(database) as store:
        yield StudyService(store, optimizer)
        clear_tables(store)


CONFIG = StudyConfig(lr_min=1e-4, lr_max=3.0, tau0=60, tau_max=120, total_steps=300, k=4)


def run_study(service: StudyService, name: str, config: StudyConfig = CONFIG, seed: int = 0) -> int:
    """Drive one study to its end with the synthetic job; returns its id."""
    study, _ = service.create_study(StudyCreate(name=name, config=config))
    job = SyntheticJob(seed=seed)
    while (segment := service.next_segment(study.id).segment) is not None:
        reports, diverged = job.train(
            segment.lr,
            segment.steps,
            segment.report_every,
            explore=segment.kind is SegmentKind.explore,
            stop_above=segment.stop_above,
        )
        service.add_observations(
            segment.id,
            ObservationBatch(observations=[ObservationIn(step=s, value=v) for s, v in reports]),
        )
        done = reports[-1][0] if diverged else None
        service.complete_segment(segment.id, CompleteRequest(steps_done=done))
    return study.id


def test_a_study_runs_to_its_budget(service) -> None:
    study_id = run_study(service, "budget")
    view = service.get_study(study_id)
    assert view.status.value == "completed" and view.trajectory_steps == 300


def test_stored_forecasts_equal_recomputed_ones(service) -> None:
    study_id = run_study(service, "forecasts")
    with service.store.transaction(read_only=True) as repo:
        history = repo.history(study_id)
    assert history is not None
    geometries = tuner.stage_geometries(CONFIG, trials_of(history))
    checked = 0
    for trial in trials_of(history):
        if trial.kind is SegmentKind.explore:
            assert trial.forecast is not None
            recomputed = tuner.forecast_trial(CONFIG, trial, geometries[trial.stage].tau)
            for field in ("prediction", "std"):
                a, b = getattr(trial.forecast, field), getattr(recomputed, field)
                assert a == b or (math.isnan(a) and math.isnan(b))
            assert trial.forecast.status == recomputed.status
            assert trial.forecast.params == recomputed.params
            checked += 1
    assert checked > 0


def test_the_stored_history_reproduces_every_decision(service, optimizer) -> None:
    study_id = run_study(service, "replay")
    with service.store.transaction(read_only=True) as repo:
        history = repo.history(study_id)
    assert history is not None
    trials = trials_of(history)
    for cut in range(len(trials)):
        # Without the stored forecasts: the tuner recomputes them from the losses.
        past = [tuner.Trial(**{**t.__dict__, "forecast": None}) for t in trials[:cut]]
        plan = tuner.next_segment(CONFIG, past, optimizer)
        assert not isinstance(plan, tuner.StudyEnd)
        recorded = history.segments[cut]
        assert (plan.kind, plan.index, plan.lr, plan.steps) == (
            recorded.kind,
            recorded.index,
            recorded.lr,
            recorded.steps,
        )
        assert (plan.restore, plan.save_start, plan.stop_above) == (
            recorded.restore,
            recorded.save_start,
            recorded.stop_above,
        )


def test_concurrent_next_calls_hand_out_one_segment(service) -> None:
    study, _ = service.create_study(StudyCreate(name="race", config=CONFIG))
    answers = []

    def ask() -> None:
        answers.append(service.next_segment(study.id).segment)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({a.id for a in answers if a is not None}) == 1
    assert len(service.list_segments(study.id)) == 1


def test_two_runs_of_the_same_study_make_the_same_decisions(service) -> None:
    first = service.list_segments(run_study(service, "twin-a", seed=4))
    second = service.list_segments(run_study(service, "twin-b", seed=4))
    assert [(s.kind, s.lr, s.steps) for s in first] == [(s.kind, s.lr, s.steps) for s in second]
