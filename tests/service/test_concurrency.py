"""Concurrent `next` requests on different studies overlap inside the optimizer.

Checked structurally, not by timing: the GP's hyperparameter fit waits, on its first
call in each request thread, until as many threads are inside it at once as there are
jobs. Behind one lock around the optimizer (the code before) only one thread could ever
be inside, the barrier breaks, and the decisions fail.
"""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from stagelr_service.api import create_app
from stagelr_service.settings import Settings

JOBS = 4
# Two initial candidates of three: the third comes from the GP, whose concurrency the
# first test watches.
CONFIG = {"lr_min": 1e-3, "lr_max": 1.0, "total_steps": 60, "tau0": 20, "k": 3,
          "explore_ratio": 0.5, "seed": 0, "initial_design": 2}  # fmt: skip


def test_next_requests_on_different_studies_run_the_gp_side_by_side(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stagelr_service.optimizer import gp

    fit_map = gp._fit_map
    barrier = threading.Barrier(JOBS, timeout=60)
    waited: set[int] = set()
    inside = 0
    most_inside = 0
    count_lock = threading.Lock()

    def counting_fit_map(data: Any) -> Any:
        nonlocal inside, most_inside
        with count_lock:
            inside += 1
            most_inside = max(most_inside, inside)
        try:
            if threading.get_ident() not in waited:
                waited.add(threading.get_ident())
                barrier.wait()  # every job's thread inside the GP at once
            return fit_map(data)
        finally:
            with count_lock:
                inside -= 1

    settings = Settings(database_url=f"sqlite:///{tmp_path}/c.db", auto_migrate=True)
    with TestClient(create_app(settings)) as client:
        monkeypatch.setattr(gp, "_fit_map", counting_fit_map)

        def job(i: int) -> str:
            made = client.post("/v1/studies", json={"name": f"c-{i}", "config": CONFIG})
            assert made.status_code == 201, made.text
            study_id = made.json()["id"]
            while True:
                answer = client.post(f"/v1/studies/{study_id}/next")
                assert answer.status_code == 200, answer.text
                segment = answer.json()["segment"]
                if segment is None:
                    return str(answer.json()["status"])
                steps = range(
                    segment["report_every"], segment["steps"] + 1, segment["report_every"]
                )
                points = [
                    {
                        "step": s,
                        "value": 0.5 + math.exp(-0.05 * s) * (1 + abs(math.log10(segment["lr"]))),
                    }
                    for s in steps
                ]
                done = client.post(
                    f"/v1/segments/{segment['id']}/complete", json={"observations": points}
                )
                assert done.status_code == 200, done.text

        with ThreadPoolExecutor(JOBS) as pool:
            statuses = list(pool.map(job, range(JOBS)))

    assert statuses == ["completed"] * JOBS
    assert len(waited) == JOBS  # each job's `next` reached the GP in its own thread
    assert most_inside == JOBS  # ... and all were inside it together


@pytest.mark.parametrize("threads", [2, 4])
def test_request_threads_bound_the_requests_that_run_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threads: int
) -> None:
    """``STAGELR_REQUEST_THREADS`` is the thread limiter of the server's event loop: with
    two, no third request is ever inside a decision; with four, more than two are (each
    request waits inside until as many as the limit have arrived, or 5 s)."""
    from stagelr_service import studies

    decide = studies.tuner.next_segment
    arrived = threading.Semaphore(0)
    inside = most_inside = 0
    count_lock = threading.Lock()

    def counting_next_segment(*args: Any, **kwargs: Any) -> Any:
        nonlocal inside, most_inside
        with count_lock:
            inside += 1
            most_inside = max(most_inside, inside)
        arrived.release()
        try:
            # Hold the thread until `threads` requests are inside (a limit of 2 never
            # lets a third in; a limit of 4 lets four in), at most 5 s.
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                with count_lock:
                    if inside >= threads:
                        break
                time.sleep(0.01)
            return decide(*args, **kwargs)
        finally:
            with count_lock:
                inside -= 1

    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/t.db", auto_migrate=True, request_threads=threads
    )
    with TestClient(create_app(settings)) as client:
        ids = [
            client.post("/v1/studies", json={"name": f"t-{i}", "config": CONFIG}).json()["id"]
            for i in range(6)
        ]
        monkeypatch.setattr(studies.tuner, "next_segment", counting_next_segment)
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda i: client.post(f"/v1/studies/{i}/next"), ids))
    assert all(a.status_code == 200 for a in answers)
    assert most_inside == threads, (most_inside, threads)


def test_each_api_request_takes_the_request_thread_pool_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request's service call is its one trip through the thread pool: FastAPI checks a
    sync handler's answer against its response model in the pool as well, a second wait
    in the queue at load, so the handlers are async and hand over only the call."""
    import anyio.to_thread

    run_sync = anyio.to_thread.run_sync
    hops: list[str] = []

    async def counting_run_sync(function: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(function, "__name__", repr(function)))
        return await run_sync(function, *args, **kwargs)

    settings = Settings(database_url=f"sqlite:///{tmp_path}/h.db", auto_migrate=True)
    with TestClient(create_app(settings)) as client:
        monkeypatch.setattr(anyio.to_thread, "run_sync", counting_run_sync)

        def hops_of(method: str, path: str, **body: Any) -> int:
            hops.clear()
            answer = client.request(method, path, **body)
            assert answer.status_code < 300, answer.text
            return len(hops)

        made = {"json": {"name": "hops", "config": CONFIG}}
        assert hops_of("POST", "/v1/studies", **made) == 1
        assert hops_of("POST", "/v1/studies", **made) == 1  # the same study again: 200
        study = client.post("/v1/studies", json=made["json"]).json()
        assert hops_of("POST", f"/v1/studies/{study['id']}/next") == 1
        segment = client.post(f"/v1/studies/{study['id']}/next").json()["segment"]
        points = {"observations": [{"step": segment["report_every"], "value": 1.0}]}
        path = f"/v1/segments/{segment['id']}"
        assert hops_of("POST", f"{path}/observations", json=points) == 1
        assert hops_of("POST", f"{path}/complete-and-next", json={}) == 1
        assert hops_of("GET", f"/v1/studies/{study['id']}/segments") == 1
        assert hops_of("GET", f"/v1/studies/{study['id']}") == 1
        assert hops_of("DELETE", f"/v1/studies/{study['id']}") == 1
