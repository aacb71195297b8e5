"""`POST /v1/segments/{id}/complete-and-next` over a socket, on SQLite and PostgreSQL.

- Racing combined requests on one segment (two worker processes, each request on its
  own connection): one completion, one decision, every answer the same next segment.
- A whole study through the real client (one combined request per decision point)
  stores the decisions of the same study through a server without that request
  (an older server: the client falls back to complete, then next), and replays exactly.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import stagelr
from stagelr_service.server import free_port
from stagelr_service.testing.simulation import SyntheticJob, drive_tuner, study_decisions
from tests.live import ServerProcess, start_server
from tests.store_fixtures import BACKENDS, fresh_database
from tests.system.test_workers import burst_post

pytestmark = pytest.mark.slow

CONFIG = {"lr_min": 1e-3, "lr_max": 1.0, "total_steps": 60, "tau0": 20, "k": 3,
          "explore_ratio": 0.5, "seed": 3}  # fmt: skip
BURST = 16
ROUTE = "/v1/segments/{segment_id}/complete-and-next"

#: A server of the request shapes before complete-and-next: the app without that route.
OLD_SERVER = """
import sys, uvicorn
from stagelr_service.api.app import create_app
from stagelr_service.settings import Settings
app = create_app(Settings(database_url=sys.argv[1], auth="off"))
app.router.routes[:] = [
    r for r in app.router.routes if not getattr(r, "path", "").endswith("/complete-and-next")
]
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""


@pytest.fixture(params=BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_database(request.param, tmp_path / "db") as url:
        yield url.render_as_string(hide_password=False)


@pytest.fixture
def two_workers(database: str, tmp_path: Path) -> Iterator[ServerProcess]:
    server = start_server(database, tmp_path / "server.log", env={"STAGELR_WORKERS": "2"})
    try:
        yield server
    finally:
        server.stop()


def old_server(database_url: str, log_path: Path) -> ServerProcess:
    """A server on ``database_url`` (migrated) that has no complete-and-next."""
    port = free_port()
    log = log_path.open("ab")
    process = subprocess.Popen(
        [sys.executable, "-c", OLD_SERVER, database_url, str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = ServerProcess(f"http://127.0.0.1:{port}", database_url, process, log_path, log)
    deadline = time.monotonic() + 90
    while True:
        assert process.poll() is None, server.log()
        try:
            if httpx.get(server.url + "/healthz", timeout=1.0).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.1)


def routes_asked(url: str) -> dict[str, float]:
    """POST requests answered by the server (every worker), by route."""
    counts: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith('stagelr_http_requests_total{method="POST"'):
            route = line.split('route="', 1)[1].split('"', 1)[0]
            counts[route] = counts.get(route, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def test_racing_combined_requests_on_one_segment_decide_once(two_workers: ServerProcess) -> None:
    url = two_workers.url
    with httpx.Client(base_url=url, timeout=60) as api:
        study = api.post("/v1/studies", json={"name": "race", "config": CONFIG}).json()
        first = api.post(f"/v1/studies/{study['id']}/next").json()["segment"]
    body = {"observations": [{"step": s, "value": 2.0 / s} for s in range(1, first["steps"] + 1)]}
    answers = burst_post(url, f"/v1/segments/{first['id']}/complete-and-next", body, BURST)
    assert {a["completed"]["id"] for a in answers} == {first["id"]}
    assert {a["completed"]["status"] for a in answers} == {"completed"}
    assert len({a["next"]["segment"]["id"] for a in answers}) == 1  # one decision for all
    with httpx.Client(base_url=url, timeout=60) as api:
        segments = api.get(f"/v1/studies/{study['id']}/segments").json()
        stored = api.get(f"/v1/segments/{first['id']}/observations").json()
    assert [(s["seq"], s["status"]) for s in segments] == [(0, "completed"), (1, "open")]
    assert len(stored) == first["steps"]  # each point once


def test_a_study_decides_alike_through_either_request_shape(
    two_workers: ServerProcess, database: str, tmp_path: Path
) -> None:
    with stagelr.Tuner(two_workers.url, study="new", **CONFIG) as tuner:
        driven = drive_tuner(tuner, SyntheticJob(seed=3))
        assert tuner.status is not None and tuner.status.value == "completed"
        with stagelr.Client(two_workers.url) as client:
            new_shape = study_decisions(client, tuner.study_id)
            assert client.replay(tuner.study_id).ok
    asked = routes_asked(two_workers.url)
    assert asked.get(ROUTE) == len(driven.segments)  # every completion brought the next
    assert asked.get("/v1/studies/{study_id}/next") == 1  # only the first segment's
    assert "/v1/segments/{segment_id}/complete" not in asked

    old = old_server(database, tmp_path / "old.log")
    try:
        with stagelr.Tuner(old.url, study="old", **CONFIG) as tuner:
            drive_tuner(tuner, SyntheticJob(seed=3))
            assert tuner.status is not None and tuner.status.value == "completed"
            with stagelr.Client(old.url) as client:
                old_shape = study_decisions(client, tuner.study_id)
                assert client.replay(tuner.study_id).ok
    finally:
        old.stop()
    assert old_shape == new_shape
