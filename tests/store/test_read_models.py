"""The read models: the dashboard's study page and the study lists answer in one
transaction of a bounded number of statements, whatever the number of stages or studies.

Statements are counted on the store's engine (SQLAlchemy's ``before_cursor_execute``,
SQLite's BEGIN included), on a real SQLite file with studies recorded through the study
service.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import event

from stagelr.models import (
    CompleteRequest,
    ObservationBatch,
    ObservationIn,
    SegmentKind,
    StudyConfig,
    StudyCreate,
)
from stagelr_service.dashboard import pages
from stagelr_service.store import Store, migrate
from stagelr_service.studies import StudyService
from stagelr_service.testing.simulation import SyntheticJob

T = TypeVar("T")

#: One stage of three candidates, then the end.
ONE_STAGE = StudyConfig(
    lr_min=1e-3, lr_max=1.0, tau0=60, tau_max=60, total_steps=60, k=3, decay_fraction=0.0
)
#: Five stages of two candidates each.
FIVE_STAGES = StudyConfig(
    lr_min=1e-3,
    lr_max=1.0,
    tau0=40,
    tau_max=40,
    total_steps=200,
    k=2,
    planner="fixed",
    decay_fraction=0.0,
)
LEASE = 900.0


def record(service: StudyService, name: str, config: StudyConfig, segments: int = 10**6) -> int:
    """Drive a study through the service with a synthetic job (``segments`` at most)."""
    study, _ = service.create_study(StudyCreate(name=name, config=config))
    job = SyntheticJob(seed=len(name))
    for _ in range(segments):
        segment = service.next_segment(study.id).segment
        if segment is None:
            break
        reports, diverged = job.train(
            segment.lr,
            segment.steps,
            segment.report_every,
            explore=segment.kind is SegmentKind.explore,
            stop_above=segment.stop_above,
        )
        batch = ObservationBatch(observations=[ObservationIn(step=s, value=v) for s, v in reports])
        service.add_observations(segment.id, batch)
        done = reports[-1][0] if diverged else None
        service.complete_segment(segment.id, CompleteRequest(steps_done=done))
    return study.id


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, optimizer: Any) -> Iterator[StudyService]:
    url = f"sqlite:///{tmp_path_factory.mktemp('reads') / 'store.sqlite3'}"
    migrate(url)
    with Store(url) as store:
        yield StudyService(store, optimizer, lease_seconds=LEASE)


def counted(service: StudyService, read: Callable[[], T]) -> tuple[T, int]:
    """What ``read`` returns, and the SQL statements it ran."""
    executed: list[str] = []

    def count(conn, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
        executed.append(statement)

    event.listen(service.store.engine, "before_cursor_execute", count)
    try:
        result = read()
    finally:
        event.remove(service.store.engine, "before_cursor_execute", count)
    return result, len(executed)


def test_the_study_page_costs_the_same_statements_for_one_stage_and_five(
    service: StudyService,
) -> None:
    one = record(service, "page-one", ONE_STAGE)
    five = record(service, "page-five", FIVE_STAGES)
    small, small_count = counted(service, lambda: pages.load_study(service, LEASE, None, one))
    large, large_count = counted(service, lambda: pages.load_study(service, LEASE, None, five))
    assert len(small.stages) == 1 and len(large.stages) == 5
    print(f"study page statements: 1 stage {small_count}, 5 stages {large_count}")
    # Measured on SQLite: 9 for both (BEGIN, the list row and its schedule, the history's
    # study, stages, segments, observations, forecasts and outages). Before the read
    # model, 21 for one stage and 45 for five (3 + S reads of the whole history, each in
    # a transaction of its own).
    assert small_count == large_count <= 9


def test_the_study_page_shows_what_the_single_reads_show(service: StudyService) -> None:
    study_id = record(service, "page-same", FIVE_STAGES)
    read = service.study_page(study_id, lease_seconds=LEASE)
    assert read.study == service.get_study(study_id)
    assert read.plan == service.get_plan(study_id)
    assert read.stages == [service.stage_detail(study_id, i) for i in range(5)]


def test_the_study_lists_cost_the_same_statements_for_one_study_and_twenty(
    service: StudyService,
) -> None:
    # Finished, half-way and just started studies: stages, open segments, no losses yet.
    for i in range(20):
        record(service, f"list-{i:02d}", FIVE_STAGES if i % 2 else ONE_STAGE, segments=i % 7)
    few, few_count = counted(service, lambda: service.list_studies(limit=1))
    many, many_count = counted(service, lambda: service.list_studies(limit=20))
    assert len(few.studies) == 1 and len(many.studies) == 20
    print(f"API study list statements: 1 study {few_count}, 20 studies {many_count}")
    # Measured on SQLite: 6 (BEGIN, the page with its total as a window count, the page's
    # outages, then stages, segments and best losses of every listed study). Before the
    # read model, 8 for one study and 103 for twenty (a history read per study).
    assert few_count == many_count <= 6

    (summaries, _), one_count = counted(
        service, lambda: service.study_summaries(lease_seconds=LEASE, limit=1)
    )
    (more, _), twenty_count = counted(
        service, lambda: service.study_summaries(lease_seconds=LEASE, limit=20)
    )
    assert len(summaries) == 1 and len(more) == 20
    assert one_count == twenty_count <= 3


def test_the_list_shows_each_study_as_its_own_read_does(service: StudyService) -> None:
    for i in range(3):
        record(service, f"same-{i}", FIVE_STAGES, segments=3 + 4 * i)
    listed = service.list_studies(limit=500)
    assert listed.total == len(listed.studies) >= 3
    for view in listed.studies:
        assert view == service.get_study(view.id)


def test_the_api_list_shows_each_studys_outages_in_constant_statements(
    service: StudyService,
) -> None:
    """The list's views carry the outages the study's own read shows, and listing
    studies with outages costs the same statements for one study and twenty."""
    from stagelr.models import OutageReport

    for i in range(17):  # a full page of twenty whatever ran before
        record(service, f"outage-filler-{i:02d}", ONE_STAGE, segments=1)
    ids = [record(service, f"outage-{i}", FIVE_STAGES, segments=2 + i) for i in range(3)]
    for i, study_id in enumerate(ids):
        for n in range(i + 1):  # 1, 2 and 3 outages
            service.report_outage(study_id, OutageReport(key=f"o{n}", steps=2 + n))
    listed = {v.id: v for v in service.list_studies(limit=500).studies}
    for i, study_id in enumerate(ids):
        own = service.get_study(study_id)
        assert [o.key for o in own.outages] == [f"o{n}" for n in range(i + 1)]
        assert listed[study_id].outages == own.outages
        assert listed[study_id].offline_steps == own.offline_steps > 0
        assert listed[study_id] == own
    few, few_count = counted(service, lambda: service.list_studies(limit=1))
    many, many_count = counted(service, lambda: service.list_studies(limit=20))
    assert len(many.studies) == 20 and sum(bool(v.outages) for v in many.studies) == 3
    assert few.studies[0].outages == many.studies[0].outages != []
    # BEGIN, the page (its total as a window count), the page's outages, then its
    # stages, segments and best losses.
    assert few_count == many_count <= 6
    # Past the end: a count of its own instead of the outages.
    past, past_count = counted(service, lambda: service.list_studies(limit=5, offset=10**6))
    assert past.studies == [] and past.total >= 20 and past_count <= 6


def test_a_scoped_page_of_another_project_is_not_found(service: StudyService) -> None:
    from stagelr_service.errors import NotFoundError

    study_id = record(service, "scoped", ONE_STAGE, segments=1)
    with pytest.raises(NotFoundError):
        service.study_page(study_id, lease_seconds=LEASE, scope="elsewhere")


def test_the_dashboard_reads_only_through_the_service() -> None:
    """No dashboard module opens a store transaction of its own."""
    source = Path(pages.__file__).parent
    for module in source.glob("*.py"):
        assert ".transaction(" not in module.read_text(), module.name
