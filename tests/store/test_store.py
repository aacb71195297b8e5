"""The store's behaviour, one suite run on every backend (SQLite always, PostgreSQL when
STAGELR_TEST_POSTGRES_URL is set)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import URL

from stagelr.models import (
    Metric,
    SegmentDecision,
    SegmentKind,
    SegmentStatus,
    StudyConfig,
    StudyStatus,
)
from stagelr_service.errors import (
    DuplicateSegmentError,
    InputError,
    NotFoundError,
    ObservationConflictError,
)
from stagelr_service.store import (
    ObservationRecord,
    Repository,
    SegmentRecord,
    Store,
    StudyHistory,
    mask_url,
    migrate,
    normalize_url,
)
from stagelr_service.tuner import resolve
from tests.store_fixtures import BACKENDS, clear_tables, migrated_database

CONFIG = resolve(StudyConfig(lr_min=1e-4, lr_max=1.0)).to_stored()


class TickingClock:
    """A fake clock: each reading is one second after the previous one."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture(scope="module", params=BACKENDS)
def database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[URL]:
    """A migrated database of each backend, shared by the module's tests."""
    with migrated_database(request.param, tmp_path_factory.mktemp("store")) as url:
        yield url


@pytest.fixture
def store(database: URL) -> Iterator[Store]:
    with Store(database, clock=TickingClock()) as store:
        store.check_schema()
        yield store
        clear_tables(store)


def new_study(store: Store, name: str = "s", project: str = "p") -> int:
    with store.transaction() as repo:
        project_id = repo.get_or_create_project(project).id
        study, _ = repo.create_study(project_id, name, CONFIG)
        return study.id


def new_stage(repo: Repository, study_id: int, index: int = 0) -> int:
    return repo.get_or_create_stage(study_id, index, 1000, 100, index * 1000).id


def segment_fields(**overrides: Any) -> SegmentDecision:
    fields: dict[str, Any] = {
        "stage": 0,
        "index": 0,
        "kind": SegmentKind.explore,
        "lr": 0.01,
        "steps": 100,
        "start_step": 0,
        "horizon": 1000,
        "metric": Metric.val_loss,
        "report_every": 10,
        "data_seed": 7,
    }
    fields.update(overrides)
    return SegmentDecision(**fields)


def new_segment(store: Store, study_id: int, seq: int = 0) -> int:
    with store.transaction() as repo:
        stage_id = new_stage(repo, study_id)
        return repo.insert_segment(study_id, stage_id, seq, segment_fields(index=seq)).id


def run_threads(n: int, work: Callable[[int], Any]) -> list[Any]:
    """Run ``work(i)`` in ``n`` threads released together; results or exceptions."""
    barrier = threading.Barrier(n)

    def task(i: int) -> Any:
        barrier.wait()
        try:
            return work(i)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(task, range(n)))


# --------------------------------------------------------------------------- projects, studies


def test_get_or_create_project_returns_the_same_project(store: Store) -> None:
    with store.transaction() as repo:
        first = repo.get_or_create_project("team")
    with store.transaction() as repo:
        again = repo.get_or_create_project("team")
        assert repo.get_project("team") == first
        assert repo.get_project("other") is None
    assert again == first


def test_create_study_twice_returns_the_stored_study(store: Store) -> None:
    with store.transaction() as repo:
        project_id = repo.get_or_create_project("p").id
        created, was_created = repo.create_study(project_id, "run-1", CONFIG)
    other_config = {**CONFIG, "k": 3}
    with store.transaction() as repo:
        again, was_created_again = repo.create_study(project_id, "run-1", other_config)
    assert (was_created, was_created_again) == (True, False)
    assert again == created
    assert again.config == CONFIG  # the caller compares configs; the store keeps the first


def test_new_study_is_running_with_aware_utc_times(store: Store) -> None:
    study_id = new_study(store)
    with store.transaction(read_only=True) as repo:
        study = repo.get_study(study_id)
    assert study is not None
    assert study.status is StudyStatus.running
    assert study.status_reason is None
    assert study.project == "p"
    assert study.created_at.tzinfo is not None
    assert study.created_at.utcoffset() == timedelta(0)
    assert study.updated_at == study.created_at


def test_find_study_by_project_and_name(store: Store) -> None:
    first = new_study(store, "run", project="a")
    second = new_study(store, "run", project="b")
    with store.transaction(read_only=True) as repo:
        found_a = repo.find_study("a", "run")
        found_b = repo.find_study("b", "run")
        assert repo.find_study("a", "missing") is None
        assert repo.get_study(10**9) is None
    assert first != second
    assert found_a is not None and found_a.id == first
    assert found_b is not None and found_b.id == second


def test_create_study_in_a_missing_project_is_not_found(store: Store) -> None:
    with pytest.raises(NotFoundError), store.transaction() as repo:
        repo.create_study(10**9, "orphan", CONFIG)


def test_list_studies_filters_paginates_and_counts(store: Store) -> None:
    ids = [new_study(store, f"s{i}", project="a" if i < 3 else "b") for i in range(5)]
    with store.transaction() as repo:
        repo.set_study_status(ids[1], StudyStatus.completed)
        repo.set_study_status(ids[4], StudyStatus.completed)
    with store.transaction(read_only=True) as repo:
        everything, total = repo.list_studies()
        page, page_total = repo.list_studies(limit=2, offset=1)
        in_a, total_a = repo.list_studies(project="a")
        done, total_done = repo.list_studies(status=StudyStatus.completed)
        done_in_a, _ = repo.list_studies(project="a", status="completed")
        none, zero = repo.list_studies(project="nobody")
    assert [s.id for s in everything] == ids[::-1]  # newest first
    assert total == 5
    assert [s.id for s in page] == [ids[3], ids[2]]
    assert page_total == 5  # the total counts every match, not the page
    assert ({s.id for s in in_a}, total_a) == (set(ids[:3]), 3)
    assert ({s.id for s in done}, total_done) == ({ids[1], ids[4]}, 2)
    assert [s.id for s in done_in_a] == [ids[1]]
    assert (none, zero) == ([], 0)


def test_list_studies_rejects_an_unknown_status(store: Store) -> None:
    with pytest.raises(InputError, match="unknown study status"), store.transaction() as repo:
        repo.list_studies(status="sleeping")


def test_set_study_status_records_the_reason_and_touches_the_study(store: Store) -> None:
    study_id = new_study(store)
    with store.transaction() as repo:
        before = repo.get_study(study_id)
        after = repo.set_study_status(study_id, StudyStatus.failed, "job crashed")
    assert before is not None
    assert after.status is StudyStatus.failed
    assert after.status_reason == "job crashed"
    assert after.updated_at > before.updated_at
    with pytest.raises(NotFoundError), store.transaction() as repo:
        repo.set_study_status(10**9, StudyStatus.stopped)


def test_writes_to_children_touch_the_study(store: Store) -> None:
    study_id = new_study(store)

    def updated_at() -> datetime:
        with store.transaction(read_only=True) as repo:
            study = repo.get_study(study_id)
            assert study is not None
            return study.updated_at

    stamps = [updated_at()]
    segment_id = new_segment(store, study_id)
    stamps.append(updated_at())
    with store.transaction() as repo:
        repo.add_observations(segment_id, [(1, Metric.val_loss, 1.0)])
    stamps.append(updated_at())
    with store.transaction() as repo:
        repo.update_segment_status(segment_id, SegmentStatus.completed, steps_done=100)
    stamps.append(updated_at())
    with store.transaction() as repo:
        repo.upsert_forecast(
            segment_id,
            model="robust",
            prediction=0.5,
            std=0.1,
            status="ok",
            params={},
            n_points=1,
            objective=0.5,
        )
    stamps.append(updated_at())
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)


def test_transaction_rolls_back_when_the_block_raises(store: Store) -> None:
    with pytest.raises(RuntimeError), store.transaction() as repo:
        repo.get_or_create_project("ghost")
        raise RuntimeError("boom")
    with store.transaction(read_only=True) as repo:
        assert repo.get_project("ghost") is None


def test_lock_study_returns_the_study_or_none(store: Store) -> None:
    study_id = new_study(store)
    with store.transaction() as repo:
        locked = repo.lock_study(study_id)
        assert repo.lock_study(10**9) is None
    assert locked is not None and locked.id == study_id


# --------------------------------------------------------------------------- stages


def test_get_or_create_stage_is_idempotent_and_set_stage_updates(store: Store) -> None:
    study_id = new_study(store)
    with store.transaction() as repo:
        stage = repo.get_or_create_stage(study_id, 0, 1000, 100, 0)
        again = repo.get_or_create_stage(study_id, 0, 1000, 100, 0)
        chosen = repo.set_stage(stage.id, status="training", chosen_lr=0.03)
        next_stage = repo.get_or_create_stage(study_id, 1, 2000, 200, 1000)
    assert again == stage
    assert (stage.status, stage.chosen_lr) == ("searching", None)
    assert (chosen.status, chosen.chosen_lr) == ("training", 0.03)
    with store.transaction() as repo:
        completed = repo.set_stage(stage.id, status="completed")  # the LR stays
    assert (completed.status, completed.chosen_lr) == ("completed", 0.03)
    with store.transaction(read_only=True) as repo:
        assert repo.stages_of_study(study_id) == [completed, next_stage]
        assert repo.get_stage(study_id, 1) == next_stage
        assert repo.get_stage(study_id, 2) is None


# --------------------------------------------------------------------------- segments


def test_insert_segment_round_trips_every_field(store: Store) -> None:
    study_id = new_study(store)
    fields = segment_fields(
        stage=1,
        index=3,
        kind=SegmentKind.exploit,
        lr=0.0123,
        steps=900,
        start_step=1100,
        horizon=1000,
        metric=Metric.train_loss,
        report_every=1,
        data_seed=2**32 - 1,
        restore="stage-0",
        save_start="stage-1",
        save_end="end",
        discard=["cand-1", "cand-2"],
        stop_above=12.5,
    )
    with store.transaction() as repo:
        stage_id = new_stage(repo, study_id, index=1)
        inserted = repo.insert_segment(study_id, stage_id, 0, fields)
    with store.transaction(read_only=True) as repo:
        read = repo.get_segment(inserted.id)
    assert read == inserted
    assert isinstance(read, SegmentRecord)
    assert read.stage == 1 and read.stage_id == stage_id and read.seq == 0
    assert read.status is SegmentStatus.open
    assert read.kind is SegmentKind.exploit and read.metric is Metric.train_loss
    assert read.data_seed == 2**32 - 1
    assert read.discard == ("cand-1", "cand-2")
    assert (read.restore, read.save_start, read.save_end) == ("stage-0", "stage-1", "end")
    assert (read.lr, read.stop_above) == (0.0123, 12.5)
    assert (read.steps_done, read.fail_reason, read.completed_at) == (None, None, None)


def test_duplicate_seq_raises_and_the_transaction_goes_on(store: Store) -> None:
    study_id = new_study(store)
    with store.transaction() as repo:
        stage_id = new_stage(repo, study_id)
        first = repo.insert_segment(study_id, stage_id, 0, segment_fields())
        with pytest.raises(DuplicateSegmentError, match="segment 0 of study"):
            repo.insert_segment(study_id, stage_id, 0, segment_fields(lr=0.5))
        second = repo.insert_segment(study_id, stage_id, 1, segment_fields(index=1))
    with store.transaction(read_only=True) as repo:
        assert repo.segments_of_study(study_id) == [first, second]


def test_duplicate_seq_issued_by_another_transaction_is_detected(store: Store) -> None:
    study_id = new_study(store)
    new_segment(store, study_id, seq=0)
    with pytest.raises(DuplicateSegmentError), store.transaction() as repo:
        stage = repo.get_stage(study_id, 0)
        assert stage is not None
        repo.insert_segment(study_id, stage.id, 0, segment_fields())


def test_insert_segment_needs_a_stage_of_the_same_study(store: Store) -> None:
    one, other = new_study(store, "one"), new_study(store, "other")
    with pytest.raises(NotFoundError), store.transaction() as repo:
        stage_id = new_stage(repo, other)
        repo.insert_segment(one, stage_id, 0, segment_fields())


def test_open_segment_until_it_completes(store: Store) -> None:
    study_id = new_study(store)
    with store.transaction(read_only=True) as repo:
        assert repo.open_segment(study_id) is None
    segment_id = new_segment(store, study_id)
    with store.transaction() as repo:
        opened = repo.open_segment(study_id)
        done = repo.update_segment_status(segment_id, SegmentStatus.completed, steps_done=60)
        assert repo.open_segment(study_id) is None
    assert opened is not None and opened.id == segment_id
    assert done.status is SegmentStatus.completed and done.steps_done == 60
    assert done.completed_at is not None and done.completed_at.tzinfo is not None


def test_failed_segment_keeps_its_reason(store: Store) -> None:
    segment_id = new_segment(store, new_study(store))
    with store.transaction() as repo:
        failed = repo.update_segment_status(segment_id, "failed", fail_reason="CUDA OOM")
    assert (failed.status, failed.fail_reason) == (SegmentStatus.failed, "CUDA OOM")
    with pytest.raises(NotFoundError), store.transaction() as repo:
        repo.update_segment_status(10**9, SegmentStatus.completed)


def test_segments_of_study_come_in_seq_order(store: Store) -> None:
    study_id = new_study(store)
    with store.transaction() as repo:
        stage_id = new_stage(repo, study_id)
        for seq in (2, 0, 1):
            repo.insert_segment(study_id, stage_id, seq, segment_fields(index=seq))
    with store.transaction(read_only=True) as repo:
        assert [s.seq for s in repo.segments_of_study(study_id)] == [0, 1, 2]


# --------------------------------------------------------------------------- observations


def test_a_resent_batch_is_all_duplicates(store: Store) -> None:
    segment_id = new_segment(store, new_study(store))
    batch = [(10, Metric.val_loss, 2.5), (20, "val_loss", 2.0), (20, Metric.train_loss, 2.1)]
    with store.transaction() as repo:
        first = repo.add_observations(segment_id, batch)
    with store.transaction() as repo:
        again = repo.add_observations(segment_id, batch)
        more = repo.add_observations(segment_id, [*batch, (30, Metric.val_loss, 1.9)])
        stored = repo.observations_of_segment(segment_id)
    assert (first, again, more) == ((3, 0), (0, 3), (1, 3))
    assert stored == [
        (10, "val_loss", 2.5),
        (20, "train_loss", 2.1),
        (20, "val_loss", 2.0),
        (30, "val_loss", 1.9),
    ]


def test_a_repeat_inside_one_batch_is_a_duplicate(store: Store) -> None:
    segment_id = new_segment(store, new_study(store))
    with store.transaction() as repo:
        counts = repo.add_observations(segment_id, [(1, "val_loss", 1.0), (1, "val_loss", 1.0)])
    assert counts == (1, 1)


def test_a_changed_value_conflicts_and_writes_nothing_of_the_batch(store: Store) -> None:
    segment_id = new_segment(store, new_study(store))
    with store.transaction() as repo:
        repo.add_observations(segment_id, [(10, Metric.val_loss, 2.5)])
    with store.transaction() as repo:
        with pytest.raises(ObservationConflictError, match="step 10"):
            repo.add_observations(
                segment_id, [(5, Metric.val_loss, 3.0), (10, Metric.val_loss, 2.4)]
            )
        # Caught inside the transaction: still nothing of the batch was written.
        assert repo.observations_of_segment(segment_id) == [(10, "val_loss", 2.5)]


def test_two_values_for_one_step_in_a_batch_conflict(store: Store) -> None:
    segment_id = new_segment(store, new_study(store))
    with pytest.raises(ObservationConflictError, match="twice"), store.transaction() as repo:
        repo.add_observations(segment_id, [(1, "val_loss", 1.0), (1, "val_loss", 1.5)])
    with store.transaction(read_only=True) as repo:
        assert repo.observations_of_segment(segment_id) == []


def test_nan_and_infinities_round_trip_and_nan_equals_nan(store: Store) -> None:
    segment_id = new_segment(store, new_study(store))
    batch = [
        (1, Metric.val_loss, 1.5),
        (2, Metric.val_loss, math.inf),
        (3, Metric.val_loss, -math.inf),
        (4, Metric.val_loss, math.nan),
        (5, Metric.val_loss, -0.0),
    ]
    with store.transaction() as repo:
        repo.add_observations(segment_id, batch)
    with store.transaction() as repo:
        assert repo.add_observations(segment_id, [(4, Metric.val_loss, math.nan)]) == (0, 1)
        with pytest.raises(ObservationConflictError):
            repo.add_observations(segment_id, [(2, Metric.val_loss, math.nan)])
    with store.transaction(read_only=True) as repo:
        values = [o.value for o in repo.observations_of_segment(segment_id)]
    assert values[:3] == [1.5, math.inf, -math.inf]
    assert math.isnan(values[3])
    assert values[4] == 0.0


def test_observations_of_study_are_grouped_by_segment_and_sorted(store: Store) -> None:
    study_id = new_study(store)
    first, second = new_segment(store, study_id, 0), new_segment(store, study_id, 1)
    empty = new_segment(store, study_id, 2)
    with store.transaction() as repo:
        repo.add_observations(second, [(20, "val_loss", 1.0), (10, "val_loss", 2.0)])
        repo.add_observations(first, [(5, "val_loss", 3.0)])
    with store.transaction(read_only=True) as repo:
        grouped = repo.observations_of_study(study_id)
    assert grouped == {
        first: [(5, "val_loss", 3.0)],
        second: [(10, "val_loss", 2.0), (20, "val_loss", 1.0)],
    }
    assert empty not in grouped


def test_a_large_batch_is_stored_in_one_go(store: Store) -> None:
    segment_id = new_segment(store, new_study(store))
    batch = [(step, Metric.train_loss, 1.0 / step) for step in range(1, 2001)]
    with store.transaction() as repo:
        assert repo.add_observations(segment_id, batch) == (2000, 0)
    with store.transaction() as repo:
        assert repo.add_observations(segment_id, batch[::-1]) == (0, 2000)
        assert len(repo.observations_of_segment(segment_id)) == 2000


def test_count_existing_classifies_a_batch_without_writing(store: Store) -> None:
    segment_id = new_segment(store, new_study(store))
    with store.transaction() as repo:
        repo.add_observations(segment_id, [(10, "val_loss", 2.5)])
    with store.transaction() as repo:
        counts = repo.count_existing(segment_id, [(10, "val_loss", 2.5), (20, "val_loss", 2.0)])
        with pytest.raises(ObservationConflictError):
            repo.count_existing(segment_id, [(10, "val_loss", 9.9)])
        assert repo.observations_of_segment(segment_id) == [(10, "val_loss", 2.5)]
    assert counts == (1, 1)


def test_observations_of_a_missing_segment_are_not_found(store: Store) -> None:
    with pytest.raises(NotFoundError), store.transaction() as repo:
        repo.add_observations(10**9, [(1, "val_loss", 1.0)])


def test_an_unknown_metric_is_an_input_error(store: Store) -> None:
    segment_id = new_segment(store, new_study(store))
    with pytest.raises(InputError, match="unknown metric"), store.transaction() as repo:
        repo.add_observations(segment_id, [(1, "accuracy", 1.0)])


# --------------------------------------------------------------------------- forecasts, history


def test_a_touch_shows_in_the_study_read_before_it_in_one_transaction(store: Store) -> None:
    study_id = new_study(store)
    with store.transaction() as repo:
        before = repo.lock_study(study_id)  # now held by the session
        repo.touch_study(study_id)  # a Core UPDATE: the held row must follow it
        after = repo.get_study(study_id)
    with store.transaction(read_only=True) as repo:
        stored = repo.get_study(study_id)
    assert before is not None and after is not None and stored is not None
    assert after.updated_at == stored.updated_at > before.updated_at


def test_a_forecast_read_then_replaced_in_one_transaction_reads_back_replaced(
    store: Store,
) -> None:
    segment_id = new_segment(store, new_study(store))
    values = dict(model="robust", std=0.1, status="ok", params={"a": 1.0}, n_points=4)
    with store.transaction() as repo:
        repo.upsert_forecast(segment_id, prediction=0.9, objective=0.9, **values)
    with store.transaction() as repo:
        before = repo.get_forecast(segment_id)  # now held by the session
        replaced = repo.upsert_forecast(segment_id, prediction=0.5, objective=None, **values)
        after = repo.get_forecast(segment_id)
        study_id = repo.get_segment(segment_id).study_id  # type: ignore[union-attr]
        by_study = repo.forecasts_of_study(study_id)
    assert before is not None and before.prediction == 0.9
    assert replaced.id == before.id and replaced.prediction == 0.5
    assert after is not None and (after.prediction, after.objective) == (0.5, None)
    assert by_study[segment_id].prediction == 0.5


def test_upsert_forecast_replaces_the_previous_one(store: Store) -> None:
    segment_id = new_segment(store, new_study(store))
    with store.transaction() as repo:
        first = repo.upsert_forecast(
            segment_id,
            model="robust",
            prediction=0.8,
            std=0.05,
            status="ok",
            params={"a": 1.0, "beta": -2.0, "c": 0.7},
            n_points=10,
            objective=0.8,
        )
    with store.transaction() as repo:
        second = repo.upsert_forecast(
            segment_id,
            model="robust",
            prediction=math.inf,
            std=math.nan,
            status="diverged",
            params={"a": math.nan, "c": math.inf},
            n_points=3,
            objective=4.2,
        )
        stored = repo.get_forecast(segment_id)
    assert first.prediction == 0.8 and first.params == {"a": 1.0, "beta": -2.0, "c": 0.7}
    assert second.id == first.id
    assert stored is not None
    assert replace(stored, params={}) == replace(second, params={})  # NaN != NaN
    assert (stored.prediction, stored.std, stored.objective) == (None, None, 4.2)
    assert stored.status == "diverged" and stored.n_points == 3
    assert math.isnan(stored.params["a"]) and stored.params["c"] == math.inf


def test_history_holds_everything_of_one_study(store: Store) -> None:
    study_id = new_study(store)
    other = new_study(store, "other")
    first, second = new_segment(store, study_id, 0), new_segment(store, study_id, 1)
    new_segment(store, other, 0)
    with store.transaction() as repo:
        repo.add_observations(first, [(1, "val_loss", 1.0)])
        forecast = repo.upsert_forecast(
            first,
            model="exp_reference",
            prediction=0.9,
            std=None,
            status="ok",
            params={},
            n_points=1,
            objective=0.9,
        )
    with store.transaction(read_only=True) as repo:
        history = repo.history(study_id)
        assert repo.history(10**9) is None
        assert repo.forecasts_of_study(study_id) == {first: forecast}
    assert history is not None
    assert history.study.id == study_id
    assert [s.index for s in history.stages] == [0]
    assert [s.id for s in history.segments] == [first, second]
    assert history.observations == {first: [(1, "val_loss", 1.0)]}
    assert history.forecasts == {first: forecast}


def _history_in_six_reads(repo: Repository, study_id: int) -> StudyHistory:
    history = repo.history_in_parts(study_id)
    assert history is not None
    return history


def _bits(history: StudyHistory) -> str:
    """A history's every value, bit for bit (repr: NaN equal to NaN, -0.0 apart from
    0.0), forecasts in segment order."""
    return repr(replace(history, forecasts=dict(sorted(history.forecasts.items()))))


def test_history_reads_every_value_as_the_reads_of_its_parts(store: Store) -> None:
    """history() (one statement on PostgreSQL: JSON aggregates) and history_of_segment()
    give the records the six plain reads give: floats bit for bit, whole-numbered ones
    as floats, non-finite points, timestamps, JSON columns, outages."""
    with store.transaction() as repo:
        project_id = repo.get_or_create_project("p").id
        study, _ = repo.create_study(
            project_id, "rich", CONFIG, priors={"studies": [3, 4], "lr": 0.1 + 0.2}
        )
        first_stage = new_stage(repo, study.id, 0)
        second_stage = new_stage(repo, study.id, 1)
        values = [2.0, 0.1, 1e-300, -0.0, 1 / 3, math.nan, math.inf, -math.inf]
        segments = []
        for seq, stage_id in enumerate([first_stage, first_stage, second_stage]):
            decision = segment_fields(stage=0 if stage_id == first_stage else 1, index=seq)
            segment = repo.insert_segment(study.id, stage_id, seq, decision)
            segments.append(segment.id)
            repo.add_observations(
                segment.id,
                [(step, "val_loss", value) for step, value in enumerate(values, 1)]
                + [(2, "train_loss", 7.0)],
            )
        repo.update_segment_status(segments[0], SegmentStatus.completed, steps_done=100)
        repo.update_segment_status(segments[1], SegmentStatus.failed, fail_reason="OOM")
        repo.upsert_forecast(
            segments[0],
            model="window_end",
            prediction=1.0,
            std=1e-17,
            status="ok",
            params={"a": math.nan, "b": 3.0},
            n_points=8,
            objective=None,
        )
        repo.set_stage(first_stage, status="training", chosen_lr=3.0)
        repo.add_outage(study.id, "k1", 40, 0)
        repo.add_outage(study.id, "k0", 5, None)
        repo.set_study_status(study.id, "stopped", "by request")
    bare = new_study(store, "bare")
    executed: list[str] = []

    def count(conn, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
        executed.append(statement)

    with store.transaction(read_only=True) as repo:
        parts = _history_in_six_reads(repo, study.id)
        event.listen(store.engine, "before_cursor_execute", count)
        try:
            whole = repo.history(study.id)
            by_segment = repo.history_of_segment(segments[1])
        finally:
            event.remove(store.engine, "before_cursor_execute", count)
        assert whole is not None and by_segment is not None
        assert _bits(whole) == _bits(parts)
        assert _bits(by_segment) == _bits(parts)
        empty = repo.history_of_segment(10**9)
        assert empty is None and repo.history(10**9) is None
        assert _bits(repo.history(bare)) == _bits(_history_in_six_reads(repo, bare))  # type: ignore[arg-type]
    assert [o.key for o in whole.outages] == ["k1", "k0"]
    assert whole.study.priors == {"studies": [3, 4], "lr": 0.1 + 0.2}
    assert whole.stages[0].chosen_lr == 3.0 and isinstance(whole.stages[0].chosen_lr, float)
    assert [o.value for o in whole.observations[segments[0]] if o.step == 1] == [2.0]
    if store.dialect == "postgresql":
        assert len(executed) == 2, executed  # one statement a history


def test_close_open_segment_closes_only_an_open_segment_with_the_points_read(
    store: Store,
) -> None:
    study_id = new_study(store)
    segment_id = new_segment(store, study_id, 0)
    with store.transaction() as repo:
        repo.add_observations(segment_id, [(1, "val_loss", 1.0), (2, "val_loss", 0.5)])
        segment = repo.get_segment(segment_id)
    assert segment is not None
    with store.transaction() as repo:
        assert repo.touch_running_study(study_id)
        # A point landed since the caller read one: nothing is written.
        assert repo.close_open_segment(segment, SegmentStatus.completed, 100, 1) is None
        closed = repo.close_open_segment(segment, SegmentStatus.diverged, 40, 2)
    assert closed is not None
    assert (closed.status, closed.steps_done, closed.stage) == (SegmentStatus.diverged, 40, 0)
    with store.transaction(read_only=True) as repo:
        stored = repo.get_segment(segment_id)
    assert stored == closed and stored.completed_at is not None  # type: ignore[union-attr]
    with store.transaction() as repo:
        # Closed already: nothing is written.
        assert repo.close_open_segment(segment, SegmentStatus.completed, 100, 2) is None
    with store.transaction(read_only=True) as repo:
        assert repo.get_segment(segment_id) == closed


def test_a_read_only_transaction_on_postgresql_runs_in_autocommit(store: Store) -> None:
    """A pure read sends no BEGIN and no COMMIT on PostgreSQL (at READ COMMITTED each
    statement has its own snapshot inside a transaction too): every statement is then a
    transaction of its own, started when the statement is. A write transaction is one."""
    if store.dialect != "postgresql":
        pytest.skip("SQLite's read transactions start DEFERRED, for WAL's snapshot")
    study_id = new_study(store)
    started = text("SELECT now() = statement_timestamp()")
    with store.transaction(read_only=True) as repo:
        assert repo.get_study(study_id) is not None
        time.sleep(0.01)
        own = repo._s.execute(started).scalar()
    with store.transaction() as repo:
        assert repo.get_study(study_id) is not None
        time.sleep(0.01)
        shared = repo._s.execute(started).scalar()
    assert (own, shared) == (True, False)


def test_floats_read_back_exact_where_the_database_would_round_them(
    store: Store, database: URL
) -> None:
    """A database set to round floats (extra_float_digits = 0: 15 digits) still gives the
    store every float bit for bit, in a history read as in a row read."""
    if store.dialect != "postgresql":
        pytest.skip("SQLite keeps doubles as doubles")
    from sqlalchemy import create_engine

    admin = create_engine(database, isolation_level="AUTOCOMMIT")
    name = database.database
    try:
        with admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{name}" SET extra_float_digits = 0'))
        with Store(database) as rounding:
            study_id = new_study(rounding)
            segment_id = new_segment(rounding, study_id)
            value = 0.1 + 0.2  # 0.30000000000000004: 17 digits
            with rounding.transaction() as repo:
                repo.add_observations(segment_id, [(1, "val_loss", value)])
            with rounding.transaction(read_only=True) as repo:
                assert repo._s.execute(text("SHOW extra_float_digits")).scalar() == "3"
                history = repo.history(study_id)
                points = repo.observations_of_segment(segment_id)
            assert history is not None
            assert [o.value for o in history.observations[segment_id]] == [value]
            assert [o.value for o in points] == [value]
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{name}" RESET extra_float_digits'))
        admin.dispose()


# --------------------------------------------------------------------------- engines


def test_urls_pick_the_store_drivers_and_reject_memory_sqlite() -> None:
    assert normalize_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("sqlite:///x.db").drivername == "sqlite+pysqlite"
    for bad in ("sqlite://", "sqlite:///:memory:", "mysql://u@h/db", "not a url"):
        with pytest.raises(InputError):
            normalize_url(bad)


def test_mask_url_hides_the_password() -> None:
    masked = mask_url("postgresql://stagelr:s3cret@db:5432/stagelr")
    assert "s3cret" not in masked and "***" in masked


def test_sqlite_file_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nested' / 'dir' / 'stagelr.db'}"  # parents are created
    migrate(url)
    with Store(url) as store, store.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 30_000


# --------------------------------------------------------------------------- concurrency


def test_concurrent_create_study_makes_one_row(store: Store) -> None:
    def create(_: int) -> tuple[int, bool]:
        with store.transaction() as repo:
            project_id = repo.get_or_create_project("race").id
            study, created = repo.create_study(project_id, "same-name", CONFIG)
            return study.id, created

    results = run_threads(8, create)
    assert not [r for r in results if isinstance(r, Exception)], results
    assert len({study_id for study_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    with store.transaction(read_only=True) as repo:
        assert repo.list_studies(project="race")[1] == 1


def test_concurrent_inserts_of_one_seq_let_exactly_one_win(store: Store) -> None:
    study_id = new_study(store)
    with store.transaction() as repo:
        stage_id = new_stage(repo, study_id)

    def insert(i: int) -> int:
        with store.transaction() as repo:
            return repo.insert_segment(study_id, stage_id, 0, segment_fields(lr=0.01 * (i + 1))).id

    results = run_threads(6, insert)
    assert sum(isinstance(r, int) for r in results) == 1
    assert sum(isinstance(r, DuplicateSegmentError) for r in results) == 5


def test_locked_read_then_write_serializes_requests_on_one_study(store: Store) -> None:
    study_id = new_study(store)
    with store.transaction() as repo:
        stage_id = new_stage(repo, study_id)

    def next_segment(i: int) -> int:
        with store.transaction() as repo:
            assert repo.lock_study(study_id) is not None
            segments = repo.segments_of_study(study_id)
            seq = segments[-1].seq + 1 if segments else 0
            time.sleep(0.02)  # widen the window a missing lock would let others into
            return repo.insert_segment(study_id, stage_id, seq, segment_fields(index=i)).seq

    results = run_threads(6, next_segment)
    assert not [r for r in results if isinstance(r, Exception)], results
    assert sorted(results) == list(range(6))


def test_concurrent_identical_batches_store_each_observation_once(store: Store) -> None:
    segment_id = new_segment(store, new_study(store))
    batch = [(step, Metric.val_loss, 1.0 + step) for step in range(1, 51)]

    def report(_: int) -> tuple[int, int]:
        with store.transaction() as repo:
            return repo.add_observations(segment_id, batch)

    results = run_threads(6, report)
    assert not [r for r in results if isinstance(r, Exception)], results
    assert sum(accepted for accepted, _ in results) == 50
    assert all(accepted + duplicates == 50 for accepted, duplicates in results)


def test_touch_running_study_touches_and_tells_only_a_running_study(store: Store) -> None:
    running, stopped = new_study(store, "running"), new_study(store, "stopped")
    with store.transaction() as repo:
        repo.set_study_status(stopped, "stopped", "by request")
        before = {s: repo.get_study(s).updated_at for s in (running, stopped)}  # type: ignore[union-attr]
    with store.transaction() as repo:
        assert repo.touch_running_study(running) is True
        assert repo.touch_running_study(stopped) is False
        assert repo.touch_running_study(10**9) is False
    with store.transaction(read_only=True) as repo:
        assert repo.get_study(running).updated_at > before[running]  # type: ignore[union-attr]
        assert repo.get_study(stopped).updated_at == before[stopped]  # type: ignore[union-attr]


def test_insert_observations_stores_what_add_observations_stores(store: Store) -> None:
    study_id = new_study(store)
    inserted, added = new_segment(store, study_id, 0), new_segment(store, study_id, 1)
    points = [
        ObservationRecord(1, Metric.val_loss, 2.5),
        ObservationRecord(2, Metric.val_loss, math.nan),
        ObservationRecord(2, Metric.train_loss, math.inf),
        ObservationRecord(3, Metric.val_loss, -math.inf),
    ]
    with store.transaction() as repo:
        repo.insert_observations(inserted, study_id, points)
        repo.insert_observations(inserted, study_id, [])
        repo.add_observations(added, points)
    with store.transaction(read_only=True) as repo:
        a, b = repo.observations_of_segment(inserted), repo.observations_of_segment(added)
    assert repr(a) == repr(b) and len(a) == 4
