"""/metrics: Prometheus figures of a live server match what was done to it."""

from __future__ import annotations

import re

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.framework_runs import run_example

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live_server(own_live_server):  # type: ignore[no-untyped-def]
    """This module's own server: its test checks /metrics counters and gauges (requests
    by route, decisions, studies by status), which must count only what it did."""
    return own_live_server


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics: (name, sorted labels) -> value."""
    response = httpx.get(f"{url}/metrics", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def requests(samples: dict, method: str, route: str, status: str) -> float:  # type: ignore[type-arg]
    key = (
        "stagelr_http_requests_total",
        (("method", method), ("route", route), ("status", status)),
    )
    return samples.get(key, 0.0)


def test_metrics_count_what_a_training_run_did(live_server) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    stdout = run_example(
        "plain_torch.py",
        f"--url={live_server.url}",
        "--study=metrics-run",
        "--total-steps=60",
        "--tau0=20",
    )
    assert re.search(r"study \d+ completed: 60 training steps", stdout)
    with httpx.Client(base_url=live_server.url, timeout=30) as api:
        # A second study that stays running, and two requests that find nothing.
        api.post(
            "/v1/studies",
            json={"name": "left-running", "config": {"lr_min": 0.001, "lr_max": 1.0}},
        ).raise_for_status()
        assert api.get("/v1/studies/999999").status_code == 404
        assert api.get("/no/such/page").status_code == 404
        (study,) = [
            s for s in api.get("/v1/studies").json()["studies"] if s["name"] == "metrics-run"
        ]
        segments = api.get(f"/v1/studies/{study['id']}/segments").json()
        stored = sum(len(api.get(f"/v1/segments/{s['id']}/observations").json()) for s in segments)
    samples = scrape(live_server.url)

    # Requests by route template and status.
    assert requests(samples, "POST", "/v1/studies", "201") == 2
    # The first segment's `next`; every completion then brought the next answer with it
    # (the last one: the study's end).
    assert requests(samples, "POST", "/v1/studies/{study_id}/next", "200") == 1
    combined = "/v1/segments/{segment_id}/complete-and-next"
    assert requests(samples, "POST", combined, "200") == len(segments)
    assert requests(samples, "POST", "/v1/segments/{segment_id}/complete", "200") == 0
    nexts = len(segments) + 1  # decisions answered: one per segment, and the study's end
    assert requests(samples, "GET", "/v1/studies/{study_id}", "404") == 1
    assert requests(samples, "GET", "<unmatched>", "404") == 1
    # Every `next` answered was timed, and every stored point counted once.
    assert samples[("stagelr_decision_seconds_count", ())] == nexts
    assert samples[("stagelr_decision_seconds_sum", ())] > 0
    assert samples[("stagelr_observations_ingested_total", ())] == stored > 0
    # Gauges read from the store: one study running, the other completed; its segments.
    assert samples[("stagelr_active_studies", ())] == 1
    assert samples[("stagelr_studies", (("status", "completed"),))] == 1
    assert samples[("stagelr_segments", (("status", "completed"),))] == len(segments)
    assert samples[("stagelr_store_up", ())] == 1
    # Start-up froze what it loaded (torch, BoTorch): full collections skip it.
    assert samples[("stagelr_gc_frozen_objects", ())] > 100_000


def test_every_app_keeps_its_own_registry(tmp_path) -> None:
    from stagelr_service.api import create_app
    from stagelr_service.settings import Settings

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'x.db'}")
    first, second = create_app(settings), create_app(settings)
    first.state.metrics.ingested(3, 1)
    assert first.state.metrics.registry is not second.state.metrics.registry
    text = second.state.metrics.exposition().decode()
    assert "stagelr_observations_ingested_total 0.0" in text
