"""A decision's round trips to PostgreSQL, counted on the wire (:mod:`.round_trips`), and
what sending a write transaction's BEGIN with its first statement must keep: one
transaction, the study's lock before the statement's snapshot, a next transaction that is
one too, a lost connection answered as the store answers one. The same for a decision's
whole write transaction sent at once (``close_and_issue``), and what its checks after the
batch must keep: each failed check leaves nothing written, and the statements behind a
touch that locked nothing take no lock. Stage updates in one statement, on every
backend."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime, timezone

import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import URL

from stagelr.models import (
    CompleteRequest,
    Metric,
    ObservationIn,
    SegmentKind,
    SegmentStatus,
    StudyConfig,
    StudyCreate,
    StudyStatus,
)
from stagelr_service.errors import NotFoundError, StoreUnavailableError
from stagelr_service.store import ObservationRecord, Store
from stagelr_service.store.pipeline import _begin_command
from stagelr_service.store.records import (
    ClosedAndIssued,
    Closing,
    Issue,
    NewForecast,
    SegmentRecord,
    StageRecord,
)
from stagelr_service.studies import StudyService
from stagelr_service.testing.simulation import SyntheticJob
from tests.store.round_trips import RoundTrips
from tests.store.test_store import new_segment, new_stage, new_study, segment_fields
from tests.store_fixtures import BACKENDS, migrated_database

#: Four candidates and the check of the best a stage, three stages: the load benchmark's
#: shape, smaller.
CONFIG = StudyConfig(
    lr_min=1e-4, lr_max=3.0, tau0=100, tau_max=100, total_steps=300, k=4,
    metric_schedule="train_loss",
)  # fmt: skip


@pytest.fixture(scope="module", params=BACKENDS)
def database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[URL]:
    with migrated_database(request.param, tmp_path_factory.mktemp("trips")) as url:
        yield url


@pytest.fixture
def store(database: URL) -> Iterator[Store]:
    # One pooled connection: every transaction runs on it (a connection that a
    # transaction left in autocommit would show in the next), and it never rests long
    # enough to be pinged. No server-side prepared statements: psycopg prepares a
    # statement on its fifth run, in a round trip of its own, once a connection.
    postgresql = database.get_backend_name() == "postgresql"
    options = {"connect_args": {"prepare_threshold": None}} if postgresql else {}
    with Store(database, pool_size=1, **options) as store:
        yield store


def postgres_only(store: Store) -> None:
    if store.dialect != "postgresql":
        pytest.skip("PostgreSQL's round trips")


def test_a_decision_round_trips(store: Store, optimizer) -> None:  # type: ignore[no-untyped-def]
    """complete-and-next as the load benchmark's jobs send it, each decision's round trips
    by what it closes and what it issues."""
    postgres_only(store)
    service = StudyService(store, optimizer)
    study, _ = service.create_study(StudyCreate(name="trips", config=CONFIG))
    job = SyntheticJob(seed=1, noise=0.003)
    trips_of: dict[tuple[str, str | None], list[int]] = defaultdict(list)
    with RoundTrips(store) as trips:
        segment = service.next_segment(study.id).segment
        while segment is not None:
            reports, _ = job.train(
                segment.lr,
                segment.steps,
                segment.report_every,
                explore=segment.kind is SegmentKind.explore,
                stop_above=segment.stop_above,
            )
            points = [ObservationIn(step=s, value=v) for s, v in reports]
            request = CompleteRequest(observations=points)
            trips.take()
            answer = service.complete_and_next(segment.id, request)
            following = answer.next.segment
            kinds = (segment.kind.value, None if following is None else following.kind.value)
            trips_of[kinds].append(trips.take())
            segment = following
    print("round trips a decision (closed, issued):", dict(trips_of))
    # Measured: the history read, then BEGIN with the whole write transaction in one
    # pipeline (the study's touch, the segment's close, its points, the forecast, the
    # new segment; issuing a stage's training segment sets the stage too), then COMMIT:
    # 3 (7, and 8 with the stage, while each statement waited for its answer).
    # (four windows and the best one's check: four explores that issue an explore)
    assert trips_of[("explore", "explore")] == [3, 3, 3, 3]
    assert trips_of[("explore", "exploit")] == [3]
    # A decision that opens a stage, and the study's end, run statement by statement.
    assert trips_of[("exploit", "exploit")] == [12, 12, 12]
    assert trips_of[("exploit", None)] == [9]


def test_the_first_statement_and_its_begin_are_one_transaction(store: Store) -> None:
    postgres_only(store)
    study_id = new_study(store, "one-transaction")
    segment_id = new_segment(store, study_id)
    with store.transaction(read_only=True) as repo:
        before = repo.get_study(study_id)
        segment = repo.get_segment(segment_id)
    assert before is not None and segment is not None
    executed: list[str] = []

    def count(conn, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
        executed.append(statement)

    for _ in range(2):  # the second on the connection the first left behind
        with pytest.raises(RuntimeError, match="abandon"), store.transaction() as repo:
            event.listen(store.engine, "before_cursor_execute", count)
            try:
                assert repo.touch_running_study(study_id)
            finally:
                event.remove(store.engine, "before_cursor_execute", count)
            assert [s.split()[:2] for s in executed] == [["UPDATE", "studies"]]
            executed.clear()
            driver = repo._s.connection().connection.driver_connection
            assert driver.autocommit is False
            assert driver.pgconn.transaction_status == 2  # INTRANS: the BEGIN ran
            assert repo.close_open_segment(segment, SegmentStatus.completed, 100, 0)
            repo.insert_observations(segment_id, study_id, [(1, "val_loss", 1.0)])
            raise RuntimeError("abandon")
    with store.transaction(read_only=True) as repo:
        after = repo.get_study(study_id)
        assert repo.get_segment(segment_id) == segment
        assert repo.observations_of_segment(segment_id) == []
    assert after == before


def test_the_begin_sent_is_psycopgs(store: Store) -> None:
    postgres_only(store)
    with store.transaction() as repo:  # nothing sent yet: what psycopg would begin with
        driver = repo._s.connection().connection.driver_connection
        psycopgs = driver._get_tx_start_command().decode()
        assert _begin_command(driver) == psycopgs
    assert psycopgs.startswith("BEGIN")


def test_a_psycopg_keeping_its_autocommit_elsewhere_gets_the_usual_begin(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the private flag begin_with resets is missing, nothing is sent ahead: the
    statement runs as usual, after psycopg's own BEGIN, in one transaction."""
    postgres_only(store)
    from stagelr_service.store import pipeline

    study_id = new_study(store, "usual-begin")
    monkeypatch.setattr(pipeline, "_settable", lambda driver: False)
    with RoundTrips(store) as trips:
        trips.take()
        with store.transaction() as repo:
            assert repo.touch_running_study(study_id)
            driver = repo._s.connection().connection.driver_connection
            assert driver.autocommit is False and driver.pgconn.transaction_status == 2
        # psycopg's BEGIN alone, then the touch, then COMMIT: three round trips, not two
        assert trips.take() == 3
        monkeypatch.undo()
        with store.transaction() as repo:
            assert repo.touch_running_study(study_id)
        assert trips.take() == 2


def test_the_touch_waits_for_the_lock_and_then_sees_what_landed(store: Store) -> None:
    """The close after a touch that waited for the study's lock counts the points that the
    lock's holder stored meanwhile: its snapshot is taken after the wait."""
    postgres_only(store)
    study_id = new_study(store, "lock")
    segment_id = new_segment(store, study_id)
    with store.transaction(read_only=True) as repo:
        segment = repo.get_segment(segment_id)
    assert segment is not None
    holding = threading.Event()

    def holder() -> None:
        with Store(store.url) as other, other.transaction() as repo:
            repo.touch_study(study_id)
            holding.set()
            time.sleep(0.5)
            repo.add_observations(segment_id, [(1, "val_loss", 1.0)], study_id=study_id)

    thread = threading.Thread(target=holder)
    thread.start()
    assert holding.wait(10)
    started = time.monotonic()
    with store.transaction() as repo:
        assert repo.touch_running_study(study_id)
        waited = time.monotonic() - started
        closed = repo.close_open_segment(segment, SegmentStatus.completed, 100, 0)
    thread.join()
    assert waited > 0.3
    assert closed is None  # a point landed while it waited: not closed


def test_a_lost_connection_at_the_first_statement_is_the_stores_503(store: Store) -> None:
    postgres_only(store)
    study_id = new_study(store, "lost")
    with store.transaction(read_only=True) as repo:
        pid = repo._s.connection().exec_driver_sql("SELECT pg_backend_pid()").scalar()
    with Store(store.url) as admin, admin.engine.connect() as conn:
        conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    time.sleep(0.2)
    with pytest.raises(StoreUnavailableError), store.transaction() as repo:
        repo.touch_running_study(study_id)
    with store.transaction() as repo:  # the pool let the lost connection go
        assert repo.touch_running_study(study_id)


def test_a_timeout_at_the_first_statement_is_the_stores_503(database: URL) -> None:
    """The server gives up on the touch that waits for the study's lock (a lock timeout,
    an error the server sends, the connection good): the driver's error is handled as
    SQLAlchemy's own (the 503 the client retries), and the connection serves the next
    transaction."""
    if database.get_backend_name() != "postgresql":
        pytest.skip("PostgreSQL's lock timeout")
    timeout = {"options": "-c lock_timeout=300"}
    with Store(database, pool_size=1, connect_args=timeout) as store:
        study_id = new_study(store, "timeout")
        holding, release = threading.Event(), threading.Event()

        def holder() -> None:
            with Store(database) as other, other.transaction() as repo:
                repo.touch_study(study_id)
                holding.set()
                release.wait(10)

        thread = threading.Thread(target=holder)
        thread.start()
        try:
            assert holding.wait(10)
            with pytest.raises(StoreUnavailableError), store.transaction() as repo:
                repo.touch_running_study(study_id)
        finally:
            release.set()
            thread.join()
        with store.transaction() as repo:
            assert repo.touch_running_study(study_id)


# --------------------------------------------------------------------------- stages


def test_set_stage_updates_a_stage_this_transaction_did_not_read(store: Store) -> None:
    first, second = new_study(store, "stage-a"), new_study(store, "stage-b")
    with store.transaction() as repo:
        stage_a, stage_b = new_stage(repo, first), new_stage(repo, second)
    with store.transaction() as repo:
        repo.touch_study(first)  # another study locked: its guess misses, then the read
        updated = repo.set_stage(stage_b, status="training", chosen_lr=0.5)
        assert (updated.study_id, updated.status, updated.chosen_lr) == (second, "training", 0.5)
        assert repo.set_stage(stage_a, status="completed").chosen_lr is None
        with pytest.raises(NotFoundError):
            repo.set_stage(10**6, status="completed")
    with store.transaction() as repo:
        assert repo.set_stage(stage_b, chosen_lr=None).status == "training"
        got = repo.get_stage(second, 0)
    assert got is not None and (got.status, got.chosen_lr) == ("training", None)


def test_set_stage_after_creating_it_reads_back_the_new_values(store: Store) -> None:
    study_id = new_study(store, "stage-new")
    with store.transaction() as repo:
        stage_id = new_stage(repo, study_id)  # created in this transaction
        repo.set_stage(stage_id, status="training", chosen_lr=0.25)
        got = repo.get_stage(study_id, 0)
        assert got is not None and (got.status, got.chosen_lr) == ("training", 0.25)


# --------------------------------------------------------------------------- a decision at once


class _Abandon(Exception):
    """Raised to roll a transaction back, as the study service's _Changed does."""


def open_segment_with_points(store: Store, name: str) -> tuple[SegmentRecord, StageRecord]:
    """A running study's open explore segment 0 (stage 0) holding points at steps 10, 20."""
    study_id = new_study(store, name)
    segment_id = new_segment(store, study_id)
    with store.transaction() as repo:
        repo.add_observations(segment_id, [(10, "val_loss", 2.0), (20, "val_loss", 1.5)])
    with store.transaction(read_only=True) as repo:
        segment, stage = repo.get_segment(segment_id), repo.get_stage(study_id, 0)
    assert segment is not None and stage is not None
    return segment, stage


def completion(segment: SegmentRecord, stage: StageRecord, *, lr: float = 0.02):
    """The completion of ``segment`` (two points more, a forecast) and the next candidate
    of its stage, as the study service hands them to ``close_and_issue``."""
    closing = Closing(
        segment,
        SegmentStatus.completed,
        100,
        points=2,
        observations=[
            ObservationRecord(30, Metric.val_loss, 1.25),
            ObservationRecord(40, Metric.val_loss, float("nan")),
        ],
        forecast=NewForecast("exp", 0.5, float("inf"), "ok", {"a": 1.0, "b": float("nan")}, 4),
        completes_stage=False,
    )
    issue = Issue(segment_fields(index=1, lr=lr), segment.seq + 1, stage, training_lr=lr)
    return closing, issue


def snapshot(store: Store, study_id: int) -> object:
    """Everything of the study a decision's write could change, as a comparable repr."""
    with store.transaction(read_only=True) as repo:
        history = repo.history(study_id)
    assert history is not None
    return repr(history)


def race(store: Store, what: str, segment: SegmentRecord, stage: StageRecord) -> None:
    """What another request stores between a decision's read and its write."""
    with store.transaction() as repo:
        if what == "stopped":
            repo.set_study_status(segment.study_id, StudyStatus.stopped, "stopped by request")
        elif what == "closed":
            repo.update_segment_status(segment.id, SegmentStatus.completed, steps_done=100)
        elif what == "landed":  # a point at a step the completion does not bring
            repo.add_observations(segment.id, [(50, "val_loss", 1.0)], study_id=segment.study_id)
        elif what == "landed-same-step":  # the completion's own point: its INSERT hits the key
            repo.add_observations(segment.id, [(30, "val_loss", 1.25)], study_id=segment.study_id)
        elif what == "issued":  # the next seq, issued while the segment is still open
            repo.insert_segment(segment.study_id, stage.id, segment.seq + 1, segment_fields())
        else:
            raise AssertionError(what)


#: Each race, and what close_and_issue's checks find after it.
RACES = {
    "stopped": ClosedAndIssued(running=False),
    "closed": ClosedAndIssued(running=True),
    "landed": ClosedAndIssued(running=True),
    "landed-same-step": ClosedAndIssued(running=True),
}


@pytest.mark.parametrize("what", [*RACES, "issued"])
def test_a_failed_check_of_a_decision_at_once_leaves_nothing_written(
    store: Store, what: str
) -> None:
    """The store moved between the read and the write: the check that fails says so, and
    the transaction rolled back (as the study service rolls it back) leaves the study as
    it was; on PostgreSQL the whole write went out in one round trip, ROLLBACK another,
    and the connection serves the next transaction."""
    segment, stage = open_segment_with_points(store, f"race-{what}")
    race(store, what, segment, stage)
    before = snapshot(store, segment.study_id)
    closing, issue = completion(segment, stage)
    postgresql = store.dialect == "postgresql"
    with RoundTrips(store) if postgresql else contextlib.nullcontext() as trips:
        with pytest.raises(_Abandon), store.transaction() as repo:
            written = repo.close_and_issue(closing, issue)
            if trips is not None:
                assert trips.take() == 1  # BEGIN and every statement
            raise _Abandon
        if trips is not None:
            assert trips.take() == 1  # ROLLBACK
    if what == "issued":
        assert written.running and written.closed is not None and written.issued is None
    else:
        assert written == RACES[what]
    assert snapshot(store, segment.study_id) == before
    with store.transaction() as repo:  # the connection is good for the next one
        assert repo.get_segment(segment.id) is not None


def test_a_decision_at_once_answers_and_stores_what_the_plain_path_does(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pipelined write (PostgreSQL) and the statement-by-statement one answer the same
    records and store the same rows: the closed segment, its points (NaN too), the
    forecast (non-finite values as None), the new segment, the stage set training."""
    postgres_only(store)
    from stagelr_service.store import pipeline

    clock = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc)
    answers, stored = [], []
    with Store(store.url, clock=lambda: clock, pool_size=1) as fixed:
        for plain in (False, True):
            if plain:  # a psycopg begin_pipeline cannot use: the plain path
                monkeypatch.setattr(pipeline, "_settable", lambda driver: False)
            segment, stage = open_segment_with_points(fixed, f"same-{plain}")
            closing, issue = completion(segment, stage)
            with RoundTrips(fixed) as trips:
                trips.take()
                with fixed.transaction() as repo:
                    written = repo.close_and_issue(closing, issue)
                assert trips.take() == (8 if plain else 2)
            assert written.closed is not None and written.issued is not None
            ids = {"id", "study_id", "stage_id"}
            answers.append(
                (written.closed.model_dump(exclude=ids), written.issued.model_dump(exclude=ids))
            )
            stored.append(stored_rows(fixed, segment.study_id))
    assert answers[0] == answers[1]
    assert repr(stored[0]) == repr(stored[1])  # repr: NaN equals itself there


def stored_rows(store: Store, study_id: int) -> object:
    """The study's segments, points, forecasts and stages, and its touch; ids left out."""
    with store.transaction(read_only=True) as repo:
        history = repo.history(study_id)
    assert history is not None
    ids = {"id", "study_id", "stage_id", "segment_id"}

    def without_ids(record: object) -> dict[str, object]:
        return {k: v for k, v in dataclasses.asdict(record).items() if k not in ids}  # type: ignore[call-overload]

    return (
        [s.model_dump(exclude=ids) for s in history.segments],
        [history.observations.get(s.id) for s in history.segments],
        [without_ids(f) for f in history.forecasts.values()],
        [without_ids(st) for st in history.stages],
        history.study.updated_at,
    )


@pytest.mark.parametrize("running", [True, False], ids=["running", "stopped"])
def test_a_decision_at_once_takes_the_studys_lock_first(store: Store, running: bool) -> None:
    """Another transaction holds the study's row (``FOR UPDATE``, as a completion's plain
    path takes it), then writes the segment. A running study: the decision's touch waits
    for the row, then its close counts the point stored meanwhile (its snapshot is taken
    after the wait). A stopped study: the touch locks nothing and answers at once, and
    the statements behind it must take no lock either: a close that locked the segment,
    followed by an INSERT whose foreign key waits on the study's row, would deadlock
    with the holder (PostgreSQL would abort one of the two after a second)."""
    postgres_only(store)
    segment, stage = open_segment_with_points(store, f"order-{running}")
    if not running:
        race(store, "stopped", segment, stage)
    holding, errors = threading.Event(), []
    held = {}

    def holder() -> None:
        try:
            with Store(store.url) as other, other.transaction() as repo:
                repo.lock_study(segment.study_id)
                holding.set()
                started = time.monotonic()
                time.sleep(0.5)
                repo.add_observations(
                    segment.id, [(50, "val_loss", 1.0)], study_id=segment.study_id
                )
                repo.update_segment_status(segment.id, SegmentStatus.open)
                held["waited"] = time.monotonic() - started - 0.5
        except Exception as exc:  # a deadlock's victim
            errors.append(exc)

    thread = threading.Thread(target=holder)
    thread.start()
    assert holding.wait(10)
    closing, issue = completion(segment, stage)
    started = time.monotonic()
    with pytest.raises(_Abandon), store.transaction() as repo:
        written = repo.close_and_issue(closing, issue)
        answered = time.monotonic() - started
        time.sleep(1.0)  # holding whatever the statements locked while the holder writes
        raise _Abandon
    thread.join()
    assert errors == []
    assert written == ClosedAndIssued(running=running)
    if running:
        assert answered > 0.3  # it waited for the study's row
    else:
        assert held["waited"] < 0.3  # the holder did not wait for the segment's row


def test_a_lost_connection_during_a_decision_at_once_is_the_stores_503(store: Store) -> None:
    """The connection is cut while the pipeline waits for the study's lock: the store's
    503, nothing written, and the pool serves the next transaction."""
    postgres_only(store)
    segment, stage = open_segment_with_points(store, "lost-at-once")
    before = snapshot(store, segment.study_id)
    with store.transaction(read_only=True) as repo:
        pid = repo._s.connection().exec_driver_sql("SELECT pg_backend_pid()").scalar()
    holding, release = threading.Event(), threading.Event()

    def holder() -> None:
        with Store(store.url) as other, other.transaction() as repo:
            repo.lock_study(segment.study_id)
            holding.set()
            release.wait(10)

    def cutter() -> None:
        with Store(store.url) as admin, admin.engine.connect() as conn:
            for _ in range(100):  # until the pipeline waits for the lock
                waiting = conn.execute(
                    text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid"),
                    {"pid": pid},
                ).scalar()
                if waiting == "Lock":
                    break
                time.sleep(0.05)
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})

    threads = [threading.Thread(target=holder), threading.Thread(target=cutter)]
    threads[0].start()
    assert holding.wait(10)
    threads[1].start()
    closing, issue = completion(segment, stage)
    try:
        with pytest.raises(StoreUnavailableError), store.transaction() as repo:
            repo.close_and_issue(closing, issue)
    finally:
        release.set()
        for thread in threads:
            thread.join()
    assert snapshot(store, segment.study_id) == before
    with store.transaction() as repo:  # the pool let the lost connection go
        assert repo.touch_running_study(segment.study_id)
