"""A job's plan through an outage: fallback steps count against its planned length, a
job that never reaches the service trains that length on a decay and ends, and when the
service is back it learns the steps trained meanwhile, shrinks the plan and shows the
outage (``POST /v1/studies/{id}/outages``, idempotent)."""

from __future__ import annotations

import itertools
from typing import Any

import httpx
import pytest

import stagelr
from stagelr_service.testing.simulation import SyntheticJob, drive_tuner, study_decisions
from tests.live import LiveServer
from tests.outage_checks import STUDY, check_outage_accounted
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.slow

_names = itertools.count()


def tuner_at(url: str, **kwargs: Any) -> stagelr.Tuner:
    options: dict[str, Any] = {
        "study": f"outage-{next(_names)}",
        "timeout": 5.0,
        "flush_timeout": 10.0,
        "linger": 0.01,
        "transport": stagelr.RetryTransport(max_attempts=2, backoff=0.01, max_delay=0.05),
        **STUDY,
        **kwargs,
    }
    return stagelr.Tuner(url, **options)


def test_a_job_that_never_reaches_the_service_trains_its_planned_length_and_ends(
    proxy: TcpProxy,
) -> None:
    proxy.refuse()
    with tuner_at(proxy.url, total_steps=600, fallback_steps=100) as tuner:
        segments = []
        for segment in itertools.islice(tuner, 50):  # a job that never ends would take 50
            assert segment.fallback
            segments.append(segment)
            for _ in segment.steps():
                pass
            segment.complete()
        assert tuner.next_segment() is None
        assert tuner.offline_steps == 600
    assert [s.planned_steps for s in segments] == [100] * 6
    # The default schedule: one linear decay from the bounds' geometric mean to 0 at the
    # planned end, each fallback segment a piece of it.
    lrs = [s.lr_at(step) for s in segments for step in range(1, 101)]
    assert lrs[0] == pytest.approx((1e-3 * 1.0) ** 0.5)
    assert all(a > b > 0 for a, b in itertools.pairwise(lrs))
    assert segments[-1].lr_end == pytest.approx(0.0, abs=1e-12)


def test_fallback_segments_are_cut_to_what_is_left_of_the_charged_budget(
    proxy: TcpProxy,
) -> None:
    proxy.refuse()
    with tuner_at(proxy.url, total_steps=None, charged_steps=250, fallback_steps=100) as tuner:
        steps = [s.planned_steps for s in itertools.islice(tuner, 50)]
    assert steps == [100, 100, 50]


def test_after_an_outage_the_plan_shrinks_and_the_study_shows_it(
    live_server: LiveServer, proxy: TcpProxy
) -> None:
    with tuner_at(live_server.url) as tuner:
        drive_tuner(tuner, SyntheticJob(seed=11))
        baseline_id = tuner.study_id
    with stagelr.Client(live_server.url) as client:
        baseline = study_decisions(client, baseline_id)

    calls = itertools.count()

    def inject(kind: str, n: int) -> None:
        # As the second segment completes (the request that brings the third decision),
        # the service goes away for two fallback segments; the completion goes through
        # after them, after the outage's report, and the third decision knows its steps.
        if (kind, n) == ("complete", 2):
            proxy.refuse()
        if (kind, n) == ("next", 3) and next(calls) == 2:
            proxy.pass_through()

    with tuner_at(proxy.url, fallback_steps=5) as tuner:
        record = drive_tuner(tuner, SyntheticJob(seed=11), inject)
        study_id = tuner.study_id
    assert record.status is stagelr.models.StudyStatus.completed
    assert (record.fallback_segments, record.fallback_steps) == (2, 10)
    with stagelr.Client(live_server.url) as client:
        check_outage_accounted(client, study_id, record, baseline, STUDY["total_steps"])
        (outage,) = client.get_study(study_id).outages
        assert outage.after_seq == 1  # reported before the third decision
    page = httpx.get(f"{live_server.url}/dashboard/studies/{study_id}", timeout=60)
    assert "Trained without the service: 10 steps in 1 outage" in page.text


def test_an_outage_report_is_idempotent_and_checked(live_server) -> None:  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=live_server.url, timeout=60) as http:
        study = http.post(
            "/v1/studies", json={"name": f"outage-{next(_names)}", "config": STUDY}
        ).json()["id"]
        path = f"/v1/studies/{study}/outages"
        for _ in range(2):
            answer = http.post(path, json={"key": "job-1:outage-1", "steps": 7})
            assert answer.status_code == 200, answer.text
            assert answer.json()["offline_steps"] == 7
            assert [o["steps"] for o in answer.json()["outages"]] == [7]
            assert answer.json()["outages"][0]["after_seq"] is None
        conflict = http.post(path, json={"key": "job-1:outage-1", "steps": 8})
        assert conflict.status_code == 409
        assert conflict.json()["type"] == "urn:stagelr:problem:config-mismatch"
        assert http.post(path, json={"key": "k", "steps": 0}).status_code == 422
        assert http.post(path, json={"key": "no spaces", "steps": 1}).status_code == 422
        assert (
            http.post("/v1/studies/999999/outages", json={"key": "k", "steps": 1}).status_code
            == 404
        )
        plan = http.get(f"/v1/studies/{study}/plan").json()
        assert plan["total_steps"] == STUDY["total_steps"] - 7
