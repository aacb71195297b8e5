"""A lost, stalled or slow database, through a real TCP proxy between a live server and
a real PostgreSQL: answers are 503 ``store-unavailable`` with ``Retry-After`` (an HTML
page on the dashboard), never a 500; they come within the database timeouts; a
keep-alive connection survives them; the service recovers by itself; nothing is lost.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import stagelr
from stagelr_service.store import Store, normalize_url
from stagelr_service.testing.simulation import SyntheticJob, drive_tuner, study_decisions
from tests.live import ServerProcess, start_server
from tests.store_fixtures import POSTGRES_ENV, fresh_postgres_database, postgres_admin_url
from tests.tcp_proxy import TcpProxy

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.skipif(postgres_admin_url() is None, reason=f"set {POSTGRES_ENV}"),
]

#: Short database timeouts, so that the faults below resolve in seconds.
TIMEOUTS = {
    "STAGELR_DB_CONNECT_TIMEOUT": "2",
    "STAGELR_DB_STATEMENT_TIMEOUT": "3",
    "STAGELR_DB_POOL_TIMEOUT": "2",
}
#: The longest any answer may take during a fault: every timeout above in a row, twice
#: (a checkout's ping, a reconnection, the transaction), with room for a loaded machine.
#: It is the clients' read timeout: an answer later than that fails the test.
ANSWER_WITHIN_S = 25.0

STUDY: dict[str, Any] = {
    "planner": "fixed",
    "lr_min": 1e-3,
    "lr_max": 1.0,
    "total_steps": 60,
    "tau0": 20,
    "k": 3,
    "explore_ratio": 0.5,
    "seed": 3,
}

_names = itertools.count()


class Rig:
    def __init__(self, server: ServerProcess, proxy: TcpProxy, direct_url: str) -> None:
        self.server = server
        self.proxy = proxy
        self.url = server.url
        self.direct_url = direct_url


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    admin = postgres_admin_url()
    assert admin is not None
    root: Path = tmp_path_factory.mktemp("dbfaults")
    with fresh_postgres_database(admin) as url:
        with Store(url) as store:
            store.migrate()
        with TcpProxy(url.port or 5432, host=url.host or "127.0.0.1") as proxy:
            proxied = normalize_url(url).set(port=proxy.port)
            server = start_server(
                proxied.render_as_string(hide_password=False),
                root / "server.log",
                migrate=False,
                env=TIMEOUTS,
            )
            try:
                yield Rig(server, proxy, url.render_as_string(hide_password=False))
            finally:
                proxy.pass_through()
                server.stop()


@pytest.fixture()
def healthy(rig: Rig) -> Iterator[Rig]:
    rig.proxy.pass_through()
    wait_ready(rig.url)
    yield rig
    rig.proxy.pass_through()
    wait_ready(rig.url)


def wait_ready(url: str, within: float = 60.0) -> int:
    """Poll /readyz until 200; the number of polls it took."""
    with httpx.Client(base_url=url, timeout=ANSWER_WITHIN_S) as http:
        for polls in itertools.count(1):
            if http.get("/readyz").status_code == 200:
                return polls
            if polls > within / 0.2:
                raise AssertionError("the service did not recover by itself")
            threading.Event().wait(0.2)
    raise AssertionError("unreachable")


def new_study(url: str) -> int:
    with stagelr.Client(url) as client:
        return client.create_study(
            f"dbfault-{next(_names)}", stagelr.models.StudyConfig(**STUDY)
        ).id


def requests_of(study_id: int) -> list[tuple[str, str, dict[str, Any] | None]]:
    """A request of each kind: API reads and writes, the dashboard's pages."""
    return [
        ("GET", "/v1/studies", None),
        ("GET", f"/v1/studies/{study_id}", None),
        ("POST", f"/v1/studies/{study_id}/next", None),
        ("POST", "/v1/studies", {"name": f"dbfault-new-{next(_names)}", "config": STUDY}),
        ("GET", f"/v1/studies/{study_id}/plan", None),
        ("GET", "/dashboard", None),
        ("GET", f"/dashboard/studies/{study_id}", None),
    ]


def assert_unavailable(answer: httpx.Response) -> None:
    assert answer.status_code == 503, (answer.request.url, answer.status_code, answer.text)
    assert int(answer.headers["Retry-After"]) >= 1
    if answer.request.url.path.startswith("/dashboard"):
        assert answer.headers["content-type"].startswith("text/html")
        assert "The store is unavailable" in answer.text
    else:
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert answer.json()["type"] == "urn:stagelr:problem:store-unavailable"


def test_a_refused_database_answers_503_on_a_kept_connection_and_recovers(healthy: Rig) -> None:
    study_id = new_study(healthy.url)
    healthy.proxy.refuse()
    # One keep-alive connection through the outage, as the thin client has: every answer
    # arrives on it; none is a reset (httpx.ReadError would fail the test).
    with httpx.Client(base_url=healthy.url, timeout=ANSWER_WITHIN_S) as http:
        for _ in range(3):
            for method, path, body in requests_of(study_id):
                assert_unavailable(http.request(method, path, json=body))
        ready = http.get("/readyz")
        assert ready.status_code == 503
        # Generic: no host, port or driver message for an unauthenticated caller.
        assert ready.json()["detail"] == "the store does not answer: see the server log"
        assert str(healthy.proxy.port) not in ready.text
        healthy.proxy.pass_through()
        wait_ready(healthy.url)
        for method, path, body in requests_of(study_id):
            assert http.request(method, path, json=body).status_code in (200, 201)
    assert "Traceback" not in healthy.server.log()


@pytest.mark.parametrize("ending", ["pass", "reset"])
def test_a_stalled_database_answers_503_within_the_timeouts(healthy: Rig, ending: str) -> None:
    study_id = new_study(healthy.url)
    answers: list[httpx.Response | BaseException] = []

    def one(method: str, path: str, body: dict[str, Any] | None) -> None:
        try:
            with httpx.Client(base_url=healthy.url, timeout=ANSWER_WITHIN_S) as http:
                answers.append(http.request(method, path, json=body))
        except BaseException as exc:  # a timeout: the answer did not come in time
            answers.append(exc)

    healthy.proxy.stall()
    threads = [
        threading.Thread(target=one, args=request)
        for request in requests_of(study_id) * 3  # more requests than pooled connections
    ]
    for thread in threads:
        thread.start()
    # /readyz answers within a second; a 5 s read timeout leaves room for the machine.
    ready = httpx.get(healthy.url + "/readyz", timeout=5.0)
    assert ready.status_code == 503
    for thread in threads:
        thread.join()
    for answer in answers:
        assert isinstance(answer, httpx.Response), answer
        assert_unavailable(answer)
    if ending == "reset":
        healthy.proxy.drop()
    healthy.proxy.pass_through()
    wait_ready(healthy.url)
    with stagelr.Client(healthy.url) as client:
        assert client.get_study(study_id).id == study_id
    assert "Traceback" not in healthy.server.log()


def test_a_slow_database_still_answers(healthy: Rig) -> None:
    study_id = new_study(healthy.url)
    healthy.proxy.delay(0.01)  # 20 ms a round trip: a slow link, within the timeouts
    with httpx.Client(base_url=healthy.url, timeout=ANSWER_WITHIN_S) as http:
        for method, path, body in requests_of(study_id):
            assert http.request(method, path, json=body).status_code in (200, 201)


def run_job(url: str, on_event: Any = None) -> tuple[int, Any]:
    with stagelr.Tuner(
        url,
        study=f"dbfault-job-{next(_names)}",
        timeout=ANSWER_WITHIN_S,
        flush_timeout=60.0,
        linger=0.01,
        fallback_steps=5,
        transport=stagelr.RetryTransport(max_attempts=8, backoff=0.1, max_delay=3.0),
        **STUDY,
    ) as tuner:
        record = drive_tuner(tuner, SyntheticJob(seed=11), on_event)
        return tuner.study_id, record


@pytest.mark.parametrize(
    ("when", "segment", "fault"),
    [
        pytest.param("report", 2, "refuse", id="refused-mid-stage"),
        pytest.param("next", 3, "stall", id="stalled-at-next"),
        pytest.param("complete", 4, "stall-reset", id="stalled-then-reset-at-complete"),
    ],
)
def test_a_job_rides_out_a_database_outage_and_nothing_is_lost(
    healthy: Rig, when: str, segment: int, fault: str
) -> None:
    baseline_id, _ = run_job(healthy.url)
    proxy = healthy.proxy

    def inject(kind: str, n: int) -> None:
        if (kind, n) != (when, segment):
            return
        if fault == "refuse":
            proxy.refuse()
            proxy.after(2.0, proxy.pass_through)
        elif fault == "stall":
            proxy.stall()
            proxy.after(4.0, proxy.pass_through)
        else:
            proxy.stall()
            proxy.after(3.0, proxy.drop)
            proxy.after(4.0, proxy.pass_through)

    study_id, record = run_job(healthy.url, inject)
    assert record.status is stagelr.models.StudyStatus.completed
    with stagelr.Client(healthy.url) as client:
        for segment_id, reported in record.reported.items():
            stored = [(o.step, o.value) for o in client.list_observations(segment_id)]
            assert stored == sorted(set(reported)), segment_id
        if record.fallback_segments == 0:
            assert study_decisions(client, study_id) == study_decisions(client, baseline_id)
    assert "Traceback" not in healthy.server.log()
