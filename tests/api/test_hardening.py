"""Bad input that used to reach a 500, and the auth surface: the API takes bearer tokens
only, the dashboard keeps a server-side session (not the token) that sign-out revokes,
its forms refuse other sites, /metrics can be closed to all but the scraper."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from stagelr_service.errors import UnauthorizedError
from stagelr_service.store import Store
from stagelr_service.tokens import Tokens
from tests.dashboard_forms import sign_in as dashboard_sign_in
from tests.live import LiveServer, run_cli, start_server

pytestmark = pytest.mark.slow

_names = itertools.count()
CONFIG: dict[str, Any] = {"lr_min": 1e-3, "lr_max": 1.0, "tau0": 20, "k": 3, "explore_ratio": 0.05}


def body(**config: Any) -> dict[str, Any]:
    return {"name": f"hard-{next(_names)}", "config": {**CONFIG, **config}}


@pytest.fixture()
def api(live_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.url, timeout=60) as client:
        yield client


def assert_problem(answer: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    problem: dict[str, Any] = answer.json()
    assert problem["type"] == f"urn:stagelr:problem:{slug}"
    return problem


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("preset", [[], {}, 3])
def test_a_preset_that_is_no_string_is_a_422(api: httpx.Client, preset: Any) -> None:
    problem = assert_problem(
        api.post("/v1/studies", json=body(preset=preset)), 422, "validation-error"
    )
    assert "preset" in problem["detail"]


@pytest.mark.parametrize(
    "path",
    [
        "/dashboard/studies/9223372036854775808",
        "/dashboard/studies/9223372036854775808/live",
        "/dashboard/studies/-1",
    ],
)
def test_a_dashboard_id_beyond_64_bits_is_a_404_page(api: httpx.Client, path: str) -> None:
    answer = api.get(path)
    assert answer.status_code == 404
    assert answer.headers["content-type"].startswith("text/html")


def test_a_dashboard_page_beyond_64_bits_is_a_400_page(api: httpx.Client) -> None:
    for page in (4611686018427387904, 2**64):
        answer = api.get(f"/dashboard?page={page}")
        assert answer.status_code == 400, page
        assert answer.headers["content-type"].startswith("text/html")
        assert "does not exist" in answer.text


def test_what_if_on_an_open_range_test_is_a_409(api: httpx.Client) -> None:
    created = api.post("/v1/studies", json=body(lr_bounds="range_test", lr_min=None, lr_max=None))
    assert created.status_code == 201, created.text
    study = created.json()["id"]
    segment = api.post(f"/v1/studies/{study}/next").json()["segment"]
    assert segment["kind"] == "range_test" and segment["status"] == "open"
    problem = assert_problem(
        api.post(f"/v1/studies/{study}/replay", json={"overrides": {}}), 409, "invalid-state"
    )
    assert "range test is still running" in problem["detail"]
    assert api.get(f"/v1/studies/{study}/replay").status_code == 200


@pytest.mark.parametrize(
    "bounds",
    [
        {"lr_min": 1.1e308, "lr_max": 1.3e308},
        {"lr_min": 1e-300, "lr_max": 1e-295},
        {"lr_min": 1e29, "lr_max": 1e31},
    ],
)
def test_lr_bounds_that_can_never_run_are_refused_at_creation(
    api: httpx.Client, bounds: dict[str, float]
) -> None:
    problem = assert_problem(api.post("/v1/studies", json=body(**bounds)), 422, "validation-error")
    assert "LR range must lie within" in problem["detail"]


# --------------------------------------------------------------------------- auth


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, str]]:
    root: Path = tmp_path_factory.mktemp("hardening")
    url = f"sqlite:///{root / 'stagelr.db'}"
    server = start_server(
        url,
        root / "server.log",
        env={"STAGELR_AUTH": "required", "STAGELR_METRICS_TOKEN": "scrape-secret"},
    )
    made = run_cli("token", "create", "--project", "vision", env={"STAGELR_DATABASE_URL": url})
    assert made.returncode == 0, made.stderr
    yield server, made.stdout.strip()
    server.stop()


def sign_in(web: httpx.Client, token: str) -> str:
    answer = dashboard_sign_in(web, token)
    assert answer.status_code == 303, answer.text
    session = web.cookies["stagelr_session"]
    return session


def test_the_api_takes_no_cookie_as_a_credential(secured: tuple[LiveServer, str]) -> None:
    server, token = secured
    bearer = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=server.url, timeout=60) as http:
        study = http.post("/v1/studies", json=body(), headers=bearer).json()["id"]
        session = sign_in(http, token)
        http.cookies.clear()
        hostile = {"Origin": "http://other.localhost:8080"}
        for cookie in (f"stagelr_token={token}", f"stagelr_session={session}"):
            headers = {**hostile, "Cookie": cookie}
            for path in (f"/v1/studies/{study}/stop", f"/v1/studies/{study}/next"):
                assert_problem(http.post(path, headers=headers), 401, "unauthorized")
            assert_problem(http.get(f"/v1/studies/{study}", headers=headers), 401, "unauthorized")
        # The session's secret is no bearer token either.
        answer = http.get(f"/v1/studies/{study}", headers={"Authorization": f"Bearer {session}"})
        assert_problem(answer, 401, "unauthorized")
        assert http.get(f"/v1/studies/{study}", headers=bearer).json()["status"] == "running"


def test_the_dashboard_cookie_is_a_session_that_sign_out_revokes(
    secured: tuple[LiveServer, str],
) -> None:
    server, token = secured
    with httpx.Client(base_url=server.url, timeout=60) as web:
        answer = dashboard_sign_in(web, token)
        cookie = answer.headers["set-cookie"]
        session = web.cookies["stagelr_session"]
        assert token not in cookie and session.startswith("sess_")
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Max-Age=28800" in cookie
        page = web.get("/dashboard")
        assert page.status_code == 200
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
        assert csrf is not None
        # Sign-out without the form's token, or from another site, is refused.
        assert web.post("/dashboard/logout").status_code == 403
        other = web.post(
            "/dashboard/logout",
            data={"csrf": csrf.group(1)},
            headers={"Origin": "http://other.localhost:8080"},
        )
        assert other.status_code == 403
        assert web.get("/dashboard").status_code == 200  # still signed in
        out = web.post("/dashboard/logout", data={"csrf": csrf.group(1)})
        assert out.status_code == 303 and 'stagelr_session=""' in out.headers["set-cookie"]
    # A copy of the cookie kept after sign-out opens nothing: the session is revoked.
    with httpx.Client(base_url=server.url, timeout=60, cookies={"stagelr_session": session}) as web:
        assert web.get("/dashboard").status_code == 303
    # Neither does the raw token in the old cookie.
    with httpx.Client(base_url=server.url, timeout=60, cookies={"stagelr_token": token}) as web:
        assert web.get("/dashboard").status_code == 303


def test_sign_in_from_another_site_is_refused(secured: tuple[LiveServer, str]) -> None:
    server, token = secured
    with httpx.Client(base_url=server.url, timeout=60) as web:
        for headers in ({"Origin": "http://evil.test"}, {"Sec-Fetch-Site": "cross-site"}):
            answer = dashboard_sign_in(web, token, **headers)
            assert answer.status_code == 403
            assert "stagelr_session" not in web.cookies


def test_a_session_expires(tmp_path: Path) -> None:
    now = [0.0]
    with Store(f"sqlite:///{tmp_path / 's.db'}") as store:
        store.migrate()
        start = store.now()
        store._clock = lambda: start + timedelta(seconds=now[0])
        tokens = Tokens(store)
        secret = tokens.open_session("vision")
        assert tokens.session_project(secret, 60) == "vision"
        now[0] = 61
        with pytest.raises(UnauthorizedError):
            tokens.session_project(secret, 60)
        with pytest.raises(UnauthorizedError):
            tokens.project_of(secret)


def test_metrics_can_be_closed_to_all_but_the_scraper(secured: tuple[LiveServer, str]) -> None:
    server, token = secured
    with httpx.Client(base_url=server.url, timeout=60) as http:
        assert_problem(http.get("/metrics"), 401, "unauthorized")
        wrong = http.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert wrong.status_code == 401
        scraped = http.get("/metrics", headers={"Authorization": "Bearer scrape-secret"})
        assert scraped.status_code == 200 and "stagelr_http_requests" in scraped.text
