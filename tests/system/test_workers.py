"""`stagelr serve --workers 2`: two processes on one port and one database.

- Bursts of concurrent `next` requests on one study, each on its own connection, until
  both workers have answered in one burst: every answer is the same open segment and the
  store holds that one segment (the guarantee is the database's, not a process's), on
  SQLite and on PostgreSQL.
- A whole study over the socket through the real client: it completes with the
  decisions of the same study on one single-process server.
- /metrics, whichever worker answers, counts both workers' requests.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from prometheus_client.mmap_dict import MmapedDict

import stagelr
from stagelr_service.testing.simulation import SyntheticJob, drive_tuner, study_decisions
from tests.live import ServerProcess, start_server
from tests.store_fixtures import BACKENDS, fresh_database

pytestmark = pytest.mark.slow

CONFIG = {"lr_min": 1e-3, "lr_max": 1.0, "total_steps": 60, "tau0": 20, "k": 3,
          "explore_ratio": 0.5, "seed": 3}  # fmt: skip
BURST = 24
NEXT_ROUTE = "/v1/studies/{study_id}/next"


@pytest.fixture(params=BACKENDS)
def two_workers(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[ServerProcess, Path]]:
    metrics = tmp_path / "metrics"
    with fresh_database(request.param, tmp_path / "db") as url:
        server = start_server(
            url.render_as_string(hide_password=False),
            tmp_path / "server.log",
            env={"STAGELR_WORKERS": "2", "PROMETHEUS_MULTIPROC_DIR": str(metrics)},
        )
        try:
            yield server, metrics
        finally:
            server.stop()


def next_answers_by_worker(metrics: Path) -> dict[int, float]:
    """Each worker's count of answered `next` requests, from its Prometheus file."""
    out: dict[int, float] = {}
    for path in metrics.glob("counter_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
            _, sample, labels, _ = json.loads(key)
            if sample == "stagelr_http_requests_total" and labels["route"] == NEXT_ROUTE:
                out[pid] = out.get(pid, 0.0) + value
    return out


def burst_of_next(url: str, study_id: int) -> list[dict[str, Any]]:
    """BURST `next` requests at once (:func:`burst_post`)."""
    return burst_post(url, f"/v1/studies/{study_id}/next")


def burst_post(url: str, path: str, body: Any = None, size: int = BURST) -> list[dict[str, Any]]:
    """``size`` POST requests of ``path`` at once, each on its own connection, each
    answered 200 (their JSON answers). The connections are opened one by one first (the
    kernel hands each new one to whichever worker accepts it first; a burst of new
    connections tends to go to one), then all ask together."""
    start = threading.Barrier(size)
    answers: list[dict[str, Any]] = [{} for _ in range(size)]
    clients = [httpx.Client(base_url=url, timeout=60) for _ in range(size)]
    try:
        for client in clients:
            assert client.get("/healthz").status_code == 200  # connected

        def ask(i: int) -> None:
            start.wait()
            response = clients[i].post(path, json=body)
            assert response.status_code == 200, response.text
            answers[i] = response.json()

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for client in clients:
            client.close()
    return answers


def counted(metrics: Path, total: float) -> dict[int, float]:
    """The workers' `next` counts once they add up to ``total`` (a worker counts a
    request just after its answer is sent)."""
    deadline = time.monotonic() + 30
    while True:
        found = next_answers_by_worker(metrics)
        if sum(found.values()) >= total or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_two_workers_racing_on_one_study_hand_out_one_open_segment(
    two_workers: tuple[ServerProcess, Path],
) -> None:
    server, metrics = two_workers
    workers = [p for p in psutil.Process(server.process.pid).children() if "python" in p.name()]
    assert len(workers) >= 2
    both = False
    with httpx.Client(base_url=server.url, timeout=60) as api:
        for attempt in range(8):
            made = api.post("/v1/studies", json={"name": f"race-{attempt}", "config": CONFIG})
            assert made.status_code == 201, made.text
            study_id = made.json()["id"]
            before = counted(metrics, BURST * attempt)
            answers = burst_of_next(server.url, study_id)
            after = counted(metrics, BURST * (attempt + 1))

            ids = {a["segment"]["id"] for a in answers}
            assert len(ids) == 1, answers  # one decision, handed to every request
            segments = api.get(f"/v1/studies/{study_id}/segments").json()
            assert [(s["seq"], s["status"]) for s in segments] == [(0, "open")]
            assert sum(after.values()) - sum(before.values()) == BURST
            served = [pid for pid in after if after[pid] > before.get(pid, 0.0)]
            if len(served) >= 2:
                both = True
                break
    assert both, "the kernel never handed one burst's connections to both workers"

    # Whichever worker answers a scrape, it counts both workers' requests.
    total = sum(next_answers_by_worker(metrics).values())
    for _ in range(6):
        text = httpx.get(f"{server.url}/metrics", timeout=30).text
        lines = [
            line
            for line in text.splitlines()
            if line.startswith("stagelr_http_requests_total") and "/next" in line
        ]
        assert [float(line.rsplit(" ", 1)[1]) for line in lines] == [total]


def test_a_study_over_two_workers_decides_as_on_one_process(
    two_workers: tuple[ServerProcess, Path], tmp_path: Path
) -> None:
    server, _ = two_workers
    with stagelr.Tuner(server.url, study="whole", **CONFIG) as tuner:
        drive_tuner(tuner, SyntheticJob(seed=3))
        assert tuner.status is not None and tuner.status.value == "completed"
        with stagelr.Client(server.url) as client:
            on_two = study_decisions(client, tuner.study_id)
    alone = start_server(f"sqlite:///{tmp_path / 'alone.db'}", tmp_path / "alone.log")
    try:
        with stagelr.Tuner(alone.url, study="whole", **CONFIG) as tuner:
            drive_tuner(tuner, SyntheticJob(seed=3))
            with stagelr.Client(alone.url) as client:
                on_one = study_decisions(client, tuner.study_id)
    finally:
        alone.stop()
    assert on_two == on_one
