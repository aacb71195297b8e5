"""Several replicas on one database.

- Two study services (two engines, as two replicas have) hammered by many threads on one
  study: one segment per slot, no decision lost (both backends).
- Two `stagelr serve` processes on one PostgreSQL database driving 50 concurrent jobs, each
  request of a job going to the other server: nothing lost or duplicated, every study
  complete, and each study's decisions those of the same study run alone on one server.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

import stagelr
from stagelr.models import (
    CompleteRequest,
    ObservationBatch,
    ObservationIn,
    SegmentKind,
    SegmentView,
    StudyConfig,
    StudyCreate,
    StudyStatus,
)
from stagelr_service.errors import InvalidStateError
from stagelr_service.store import Store, migrate
from stagelr_service.studies import StudyService
from stagelr_service.testing.simulation import SyntheticJob, drive_tuner, study_decisions
from tests.live import start_server
from tests.store_fixtures import (
    BACKENDS,
    fresh_database,
    fresh_postgres_database,
    migrated_database,
    postgres_admin_url,
)

CONFIG = StudyConfig(lr_min=1e-3, lr_max=1.0, total_steps=60, tau0=20, k=3, explore_ratio=0.5)


def losses(segment: SegmentView) -> list[ObservationIn]:
    """What any job reports for this segment: a pure function of the segment, so that two
    threads training the same segment report the same values."""
    job = SyntheticJob(noise=0.0)
    start = 2.5 / (1 + segment.stage)
    steps = range(segment.report_every, segment.steps + 1, segment.report_every)
    return [ObservationIn(step=s, value=job.expected(segment.lr, start, s)) for s in steps]


def drive(service: StudyService, study_id: int) -> bool:
    """One round of a job: next, report, complete. False once the study has ended."""
    try:
        segment = service.next_segment(study_id).segment
    except InvalidStateError:
        return True  # lost five races in a row: ask again
    if segment is None:
        return False
    service.add_observations(segment.id, ObservationBatch(observations=losses(segment)))
    service.complete_segment(segment.id, CompleteRequest())
    return True


def decisions(service: StudyService, study_id: int) -> list[Any]:
    segments = [
        (s.seq, s.stage, s.index, s.kind.value, s.lr, s.status.value, s.steps_done)
        for s in service.list_segments(study_id)
    ]
    return segments + [(st.index, st.chosen_lr) for st in service.get_study(study_id).stages]


def run_alone(optimizer: Any, tmp_path: Path) -> list[Any]:
    with fresh_database("sqlite", tmp_path) as url:
        migrate(url)
        with Store(url) as store:
            service = StudyService(store, optimizer)
            study, _ = service.create_study(StudyCreate(name="alone", config=CONFIG))
            while drive(service, study.id):
                pass
            return decisions(service, study.id)


@pytest.fixture(params=BACKENDS)
def two_services(
    request: pytest.FixtureRequest, tmp_path: Path, optimizer: Any
) -> Iterator[tuple[StudyService, StudyService]]:
    with (
        migrated_database(request.param, tmp_path / "shared") as url,
        Store(url) as first,
        Store(url) as second,
    ):
        yield StudyService(first, optimizer), StudyService(second, optimizer)


@pytest.mark.slow
def test_threads_on_two_services_hand_out_one_segment_per_slot_and_lose_nothing(
    two_services: tuple[StudyService, StudyService], tmp_path: Path, optimizer: Any
) -> None:
    study, _ = two_services[0].create_study(StudyCreate(name="hammered", config=CONFIG))

    def job(i: int) -> int:
        rounds = 0
        while drive(two_services[i % 2], study.id):
            rounds += 1
        return rounds

    with ThreadPoolExecutor(8) as pool:
        rounds = list(pool.map(job, range(8)))

    segments = two_services[1].list_segments(study.id)
    assert [s.seq for s in segments] == list(range(len(segments)))  # one per slot, no gap
    assert sum(rounds) >= len(segments)  # the threads did race for the slots
    assert all(s.status.value != "open" for s in segments)
    assert two_services[0].get_study(study.id).status is StudyStatus.completed
    for segment in segments:  # each point stored once, with the value every thread sent
        stored = [(o.step, o.value) for o in two_services[0].list_observations(segment.id)]
        expected = [(o.step, o.value) for o in losses(segment)]
        if segment.kind is SegmentKind.explore and any(math.isnan(v) for _, v in expected):
            assert len(stored) == len(expected)
        else:
            assert stored == expected
    assert decisions(two_services[0], study.id) == run_alone(optimizer, tmp_path)


# ------------------------------------------------------------------ two live replicas

JOBS = 50
_names = itertools.count()


class Alternating(httpx.BaseTransport):
    """Sends each request to a server picked at random (seeded): a load balancer that
    does not keep a job on one replica, whatever the job's pattern of requests."""

    def __init__(self, ports: list[int], seed: int) -> None:
        self._ports = ports
        self._rng = random.Random(seed)
        self._inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.url = request.url.copy_with(port=self._rng.choice(self._ports))
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


def job_config(i: int) -> dict[str, Any]:
    return {"seed": i % 7, "lr_min": 1e-3, "lr_max": 1.0, "total_steps": 60, "tau0": 20,
            "k": 3, "explore_ratio": 0.5}  # fmt: skip


def run_job(url: str, i: int, ports: list[int] | None, prefix: str) -> tuple[int, Any]:
    transport = stagelr.RetryTransport(Alternating(ports, i) if ports else None)
    with stagelr.Tuner(url, study=f"{prefix}-{i}", transport=transport, **job_config(i)) as tuner:
        record = drive_tuner(tuner, SyntheticJob(seed=i))
        return tuner.study_id, record


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.skipif(postgres_admin_url() is None, reason="set STAGELR_TEST_POSTGRES_URL")
def test_two_replicas_on_postgresql_serve_50_concurrent_jobs(tmp_path: Path) -> None:
    admin = postgres_admin_url()
    assert admin is not None
    with fresh_postgres_database(admin) as url:
        database = url.render_as_string(hide_password=False)
        replicas = [
            start_server(database, tmp_path / "a.log"),
            start_server(database, tmp_path / "b.log", migrate=False),
        ]
        alone = start_server(f"sqlite:///{tmp_path / 'alone.db'}", tmp_path / "alone.log")
        try:
            ports = [int(r.url.rsplit(":", 1)[1]) for r in replicas]
            with ThreadPoolExecutor(JOBS) as pool:
                results = list(
                    pool.map(lambda i: run_job(replicas[0].url, i, ports, "r"), range(JOBS))
                )
            # The same studies on one server of a fresh database, no replica beside it.
            with ThreadPoolExecutor(8) as pool:
                reference = list(
                    pool.map(lambda i: run_job(alone.url, i, None, "alone"), range(JOBS))
                )

            with stagelr.Client(replicas[1].url) as client, stagelr.Client(alone.url) as solo:
                sent = stored = 0
                for (study_id, record), (solo_id, _) in zip(results, reference, strict=True):
                    assert record.status is StudyStatus.completed
                    assert client.get_study(study_id).status is StudyStatus.completed
                    for segment_id, reported in record.reported.items():
                        points = [
                            (o.step, repr(o.value)) for o in client.list_observations(segment_id)
                        ]  # noqa: E501
                        assert points == sorted({(s, repr(v)) for s, v in reported})
                        sent, stored = sent + len(reported), stored + len(points)
                    assert study_decisions(client, study_id) == study_decisions(solo, solo_id)
                assert sent == stored
                # Both replicas made decisions and closed segments.
                assert all("/next" in r.log() and "/complete" in r.log() for r in replicas)
        finally:
            for server in (*replicas, alone):
                server.stop()
