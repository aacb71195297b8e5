"""The histories a server process keeps (:mod:`stagelr_service.store.history_cache`): a
kept copy is what the database holds, whoever wrote last (this process, another worker,
another replica), because it is used only while the study's version is the one it was
read at."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import URL

from stagelr.models import (
    CompleteRequest,
    ObservationBatch,
    ObservationIn,
    SegmentKind,
    StudyCreate,
)
from stagelr_service.store import Store
from stagelr_service.store.history_cache import HistoryCache, KeptHistory
from stagelr_service.store.records import StudyHistory
from stagelr_service.studies import StudyService
from stagelr_service.testing.simulation import SyntheticJob
from tests.store.test_round_trips import CONFIG  # four candidates and a check, three stages
from tests.store_fixtures import BACKENDS, migrated_database


@pytest.fixture(params=BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[URL]:
    with migrated_database(request.param, tmp_path) as url:
        yield url


def _plain(value: Any) -> Any:
    """``value`` with NaN made comparable (NaN != NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _comparable(history: StudyHistory | None) -> Any:
    assert history is not None
    return _plain(
        {
            "study": history.study,
            "stages": history.stages,
            "segments": history.segments,
            "observations": history.observations,
            "forecasts": history.forecasts,
            "outages": history.outages,
        }
    )


def assert_current(store: Store, study_id: int) -> None:
    """``store``'s history of the study (a kept copy where it has one) is the database's,
    read whole by another store that keeps nothing; by the study and by its last
    segment."""
    with (
        Store(store.url, keep_histories=False) as plain,
        plain.transaction(read_only=True) as repo,
    ):
        truth = _comparable(repo.history_in_parts(study_id))
    with store.transaction(read_only=True) as repo:
        history = repo.history(study_id)
        assert _comparable(history) == truth
        assert history is not None
        if history.segments:
            by_segment = repo.history_of_segment(history.segments[-1].id)
            assert _comparable(by_segment) == truth


def _request(job: SyntheticJob, segment: Any) -> CompleteRequest:
    reports, _ = job.train(
        segment.lr,
        segment.steps,
        segment.report_every,
        explore=segment.kind is SegmentKind.explore,
        stop_above=segment.stop_above,
    )
    return CompleteRequest(observations=[ObservationIn(step=s, value=v) for s, v in reports])


def test_a_kept_history_is_the_databases_after_every_decision(database: URL, optimizer) -> None:  # type: ignore[no-untyped-def]
    """A whole study through complete-and-next, some of its points sent as reports first
    and its open segment asked for again (a heartbeat): after every request the kept
    history is the one read whole, and a decision reads the study's row only where
    nothing else was written since the last one."""
    with Store(database) as store:
        service = StudyService(store, optimizer)
        study, _ = service.create_study(StudyCreate(name="kept", config=CONFIG))
        job = SyntheticJob(seed=3, noise=0.003)
        segment = service.next_segment(study.id).segment
        decisions = 0
        while segment is not None:
            request = _request(job, segment)
            if decisions % 3 == 1 and len(request.observations) > 1:
                half = len(request.observations) // 2
                service.add_observations(
                    segment.id, ObservationBatch(observations=request.observations[:half])
                )
                assert_current(store, study.id)
                again = service.next_segment(study.id).segment  # a heartbeat
                assert again is not None and again.id == segment.id
                assert_current(store, study.id)
            segment = service.complete_and_next(segment.id, request).next.segment
            decisions += 1
            assert_current(store, study.id)
        assert decisions > 6
        assert store.histories is not None and len(store.histories) == 1


def test_a_decision_after_a_decision_reads_only_the_studys_row(database: URL, optimizer) -> None:  # type: ignore[no-untyped-def]
    with Store(database) as store:
        service = StudyService(store, optimizer)
        study, _ = service.create_study(StudyCreate(name="one-read", config=CONFIG))
        job = SyntheticJob(seed=1, noise=0.003)
        segment = service.next_segment(study.id).segment
        assert segment is not None
        segment = service.complete_and_next(segment.id, _request(job, segment)).next.segment
        assert segment is not None and segment.kind is SegmentKind.explore
        executed: list[str] = []

        def count(conn, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
            executed.append(statement)

        request = _request(job, segment)
        assert store.histories is not None
        used = store.histories.used
        event.listen(store.engine, "before_cursor_execute", count)
        try:
            with store.transaction(read_only=True) as repo:
                history = repo.history_of_segment(segment.id)
        finally:
            event.remove(store.engine, "before_cursor_execute", count)
        assert history is not None and history.segments[-1].id == segment.id
        reads = [s for s in executed if not s.startswith("BEGIN")]
        assert len(reads) == 1, executed  # the study's row (PostgreSQL: and no part)
        assert store.histories.used == used + 1  # the copy was current
        assert service.complete_and_next(segment.id, request).next.segment is not None
        assert_current(store, study.id)


def test_another_process_writes_are_never_missed(database: URL, optimizer) -> None:  # type: ignore[no-untyped-def]
    """Two services on one database (two workers, or two replicas), each keeping its
    histories: whatever one writes, the other's next read of the study has it. Were the
    copy used without checking the study's version, the first service would answer from
    what it read before the second one wrote."""
    with Store(database) as first, Store(database) as second:
        one, two = StudyService(first, optimizer), StudyService(second, optimizer)
        study, _ = one.create_study(StudyCreate(name="shared", config=CONFIG))
        job = SyntheticJob(seed=2, noise=0.003)
        segment = one.next_segment(study.id).segment
        turn = 0
        while segment is not None:
            writer, reader = (one, first) if turn % 2 == 0 else (two, second)
            other = second if reader is first else first
            request = _request(job, segment)
            if len(request.observations) > 1:
                # points reported through the other service, then the completion here
                service = two if writer is one else one
                service.add_observations(
                    segment.id, ObservationBatch(observations=request.observations[:1])
                )
                assert_current(reader, study.id)
            segment = writer.complete_and_next(segment.id, request).next.segment
            assert_current(other, study.id)
            assert_current(reader, study.id)
            turn += 1
        with first.transaction(read_only=True) as repo:
            history = repo.history(study.id)
        assert history is not None and history.study.status.value == "completed"


def test_a_heartbeat_of_another_process_is_seen(database: URL, optimizer) -> None:  # type: ignore[no-untyped-def]
    with Store(database) as first, Store(database) as second:
        one, two = StudyService(first, optimizer), StudyService(second, optimizer)
        study, _ = one.create_study(StudyCreate(name="beat", config=CONFIG))
        segment = one.next_segment(study.id).segment
        assert segment is not None
        assert_current(first, study.id)
        before = one.get_segment(segment.id).heartbeat_at
        two.next_segment(study.id)  # the job asks again, through the other worker
        with first.transaction(read_only=True) as repo:
            history = repo.history(study.id)
        assert history is not None
        assert history.segments[-1].heartbeat_at != before
        assert_current(first, study.id)


def test_a_study_deleted_and_made_again_is_read_whole(database: URL, optimizer) -> None:  # type: ignore[no-untyped-def]
    """A kept copy is of one study: another one that takes its id (SQLite may give a
    deleted row's id again) or its name is read whole."""
    with Store(database) as first, Store(database) as second:
        one, two = StudyService(first, optimizer), StudyService(second, optimizer)
        study, _ = one.create_study(StudyCreate(name="again", config=CONFIG))
        job = SyntheticJob(seed=4, noise=0.003)
        segment = one.next_segment(study.id).segment
        assert segment is not None
        one.complete_and_next(segment.id, _request(job, segment))
        assert_current(first, study.id)
        two.delete_study(study.id)
        made, _ = two.create_study(StudyCreate(name="again", config=CONFIG))
        two.next_segment(made.id)
        assert_current(first, made.id)
        with first.transaction(read_only=True) as repo:
            if made.id != study.id:
                assert repo.history(study.id) is None


def test_the_kept_rows_are_bounded(database: URL, optimizer) -> None:  # type: ignore[no-untyped-def]
    """The least recently used copies go first once the rows kept pass the budget."""
    with Store(database) as store:
        service = StudyService(store, optimizer)
        ids = []
        for name in ("first", "second"):
            study, _ = service.create_study(StudyCreate(name=name, config=CONFIG))
            service.next_segment(study.id)
            ids.append(study.id)
        assert store.histories is not None
        with store.transaction(read_only=True) as repo:
            rows = [KeptHistory.of(repo.history(i), 0).rows for i in ids]  # type: ignore[arg-type]
        store.histories = cache = HistoryCache(rows=max(rows))
        for study_id in ids:
            with store.transaction(read_only=True) as repo:
                repo.history(study_id)
        assert len(cache) == 1 and cache.peek(ids[1]) is not None
        assert_current(store, ids[0])
