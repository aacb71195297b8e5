"""A decision's round trips to PostgreSQL, counted on the wire (:mod:`.round_trips`), and
what sending a write transaction's BEGIN with its first statement must keep: one
transaction, the study's lock before the statement's snapshot, a next transaction that is
one too, a lost connection answered as the store answers one. Stage updates in one
statement, on every backend."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator

import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import URL

from stagelr.models import (
    CompleteRequest,
    ObservationIn,
    SegmentKind,
    SegmentStatus,
    StudyConfig,
    StudyCreate,
)
from stagelr_service.errors import NotFoundError, StoreUnavailableError
from stagelr_service.store import Store
from stagelr_service.store.pipeline import _begin_command
from stagelr_service.studies import StudyService
from stagelr_service.testing.simulation import SyntheticJob
from tests.store.round_trips import RoundTrips
from tests.store.test_store import new_segment, new_stage, new_study
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
