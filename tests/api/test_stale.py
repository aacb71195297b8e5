"""Stale work: an open segment without a sign of life for longer than the lease.

On the study service with a clock the test moves (both backends), and once on a live
server whose lease is set through the environment.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from stagelr.models import (
    CompleteRequest,
    ObservationBatch,
    ObservationIn,
    StudyConfig,
    StudyCreate,
)
from stagelr_service.store import Store
from stagelr_service.studies import StudyService
from tests.live import start_server
from tests.store_fixtures import BACKENDS, migrated_database

LEASE = 60.0


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture(params=BACKENDS)
def service(
    request: pytest.FixtureRequest, tmp_path: Path, optimizer: object
) -> Iterator[tuple[StudyService, Clock]]:
    clock = Clock()
    with migrated_database(request.param, tmp_path) as url, Store(url, clock=clock) as store:
        yield StudyService(store, optimizer, lease_seconds=LEASE), clock  # type: ignore[arg-type]


def new_study(service: StudyService) -> int:
    config = StudyConfig(lr_min=1e-3, lr_max=1.0, tau0=20, k=3, explore_ratio=0.05)
    study, _ = service.create_study(StudyCreate(name="stale", config=config))
    return study.id


def test_an_open_segment_goes_stale_after_the_lease_and_the_study_shows_it(
    service: tuple[StudyService, Clock],
) -> None:
    svc, clock = service
    study_id = new_study(svc)
    segment = svc.next_segment(study_id).segment
    assert segment is not None and segment.heartbeat_at == clock.now

    clock.advance(LEASE - 1)
    assert not svc.get_study(study_id).stalled
    assert not svc.get_segment(segment.id).stale

    clock.advance(2)
    study = svc.get_study(study_id)
    assert study.stalled
    assert study.open_segment is not None and study.open_segment.stale
    assert svc.get_segment(segment.id).stale
    assert [s.stale for s in svc.list_segments(study_id)] == [True]


def test_an_observation_batch_is_a_sign_of_life(service: tuple[StudyService, Clock]) -> None:
    svc, clock = service
    study_id = new_study(svc)
    segment = svc.next_segment(study_id).segment
    assert segment is not None

    clock.advance(LEASE - 1)
    batch = ObservationBatch(observations=[ObservationIn(step=1, value=2.0)])
    svc.add_observations(segment.id, batch)
    clock.advance(LEASE - 1)  # 2 * LEASE - 2 after creation, LEASE - 1 after the batch

    assert not svc.get_study(study_id).stalled
    assert svc.get_segment(segment.id).heartbeat_at == clock.now - timedelta(seconds=LEASE - 1)


def test_next_hands_a_stale_segment_out_again_and_it_is_live(
    service: tuple[StudyService, Clock],
) -> None:
    svc, clock = service
    study_id = new_study(svc)
    first = svc.next_segment(study_id).segment
    assert first is not None
    clock.advance(LEASE * 10)
    assert svc.get_study(study_id).stalled

    again = svc.next_segment(study_id).segment  # a restarted job asks

    assert again is not None and again.id == first.id
    assert not again.stale and again.heartbeat_at == clock.now
    assert not svc.get_study(study_id).stalled


def test_a_closed_segment_is_never_stale(service: tuple[StudyService, Clock]) -> None:
    svc, clock = service
    study_id = new_study(svc)
    segment = svc.next_segment(study_id).segment
    assert segment is not None
    svc.add_observations(
        segment.id, ObservationBatch(observations=[ObservationIn(step=1, value=2.0)])
    )
    svc.complete_segment(segment.id, CompleteRequest(steps_done=1))
    clock.advance(LEASE * 10)

    assert not svc.get_segment(segment.id).stale
    assert not svc.get_study(study_id).stalled  # nothing open: nothing stalled


@pytest.mark.slow
def test_the_lease_is_a_server_setting(tmp_path: Path) -> None:
    server = start_server(
        f"sqlite:///{tmp_path / 'stagelr.db'}",
        tmp_path / "server.log",
        env={"STAGELR_LEASE_SECONDS": "0.5"},
    )
    try:
        with httpx.Client(base_url=server.url, timeout=30) as api:
            body = {
                "name": "lease",
                "config": {"lr_min": 1e-3, "lr_max": 1.0, "tau0": 20, "explore_ratio": 0.1},
            }
            study_id = api.post("/v1/studies", json=body).json()["id"]
            api.post(f"/v1/studies/{study_id}/next").raise_for_status()
            time.sleep(1.0)
            study = api.get(f"/v1/studies/{study_id}").json()
            assert study["stalled"] and study["open_segment"]["stale"]

            again = api.post(f"/v1/studies/{study_id}/next").json()["segment"]
            assert again["id"] == study["open_segment"]["id"] and not again["stale"]
    finally:
        server.stop()
