"""Every state-changing request of the dashboard refuses a forged or missing CSRF token,
and one from another site, with auth off (double-submit token) and on (session-bound
token).

The routes are enumerated from the app itself: every route outside the bearer-token API
(``/v1``) that takes a state-changing method. A new such route that forgets
``csrf.verify`` fails here; one with a path parameter this test does not know fails too,
until the test says what to post to it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from markupsafe import escape

from stagelr.models import StudyConfig, StudyCreate
from stagelr_service.api.app import create_app
from stagelr_service.dashboard import csrf
from stagelr_service.settings import Settings
from tests.dashboard_forms import form_token

STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}
#: The routes the dashboard has today (the enumeration must find at least these).
KNOWN = {
    ("POST", "/dashboard/login"),
    ("POST", "/dashboard/logout"),
    ("POST", "/dashboard/studies/{study_id}/archive"),
    ("POST", "/dashboard/studies/{study_id}/delete"),
}
CONFIG = StudyConfig(lr_min=1e-3, lr_max=1.0, total_steps=60, tau0=20, k=2, explore_ratio=0.05)
#: Another site, as a browser names it.
FOREIGN = ({"Origin": "https://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"})


def _routes(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, APIRoute]]:
    """(full path, route) of every route, into included routers (which FastAPI keeps
    as wrappers around the router they include)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            context = getattr(route, "include_context", None)
            yield from _routes(included.routes, prefix + getattr(context, "prefix", ""))
        elif isinstance(route, APIRoute):
            yield prefix + route.path, route


def state_changing_routes(app: Any) -> list[tuple[str, str]]:
    """(method, path) of every cookie-authenticated route that changes state: every one
    outside the bearer-token API (``/v1``)."""
    out = []
    for path, route in _routes(app.routes):
        if path.startswith("/v1/"):
            continue
        out += [(method, path) for method in sorted(route.methods & STATE_CHANGING)]
    return out


@dataclass
class Dashboard:
    web: TestClient
    auth: str
    token: str  # a project token (auth on)
    keep: int  # a study whose page gives the forms' token
    target: int  # the study the forms act on

    def page_token(self) -> str:
        page = self.web.get(f"/dashboard/studies/{self.keep}")
        assert page.status_code == 200, page.text
        return form_token(page.text)

    def archived(self) -> bool:
        return self.web.app.state.studies.get_study(self.target).archived_at is not None


@pytest.fixture(params=["off", "required"])
def dashboard(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Dashboard]:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'csrf.db'}",
        auto_migrate=True,
        auth=request.param,
        data_dir=tmp_path,
    )
    app = create_app(settings)
    with TestClient(app, follow_redirects=False) as web:
        service = app.state.studies
        project = "vision"
        keep, _ = service.create_study(StudyCreate(project=project, name="keep", config=CONFIG))
        target, _ = service.create_study(StudyCreate(project=project, name="gone", config=CONFIG))
        token = ""
        if request.param != "off":
            _, token = app.state.tokens.create(project)
            form = web.get("/dashboard/login")
            signed = web.post(
                "/dashboard/login",
                data={"token": token, "next": "/dashboard", "csrf": form_token(form.text)},
            )
            assert signed.status_code == 303, signed.text
        yield Dashboard(web, request.param, token, keep.id, target.id)


def form_for(path: str, dash: Dashboard) -> tuple[str, dict[str, str]]:
    """The URL and the honest fields of a form to ``path`` (the CSRF token aside)."""
    params = {"study_id": dash.target}
    route = path
    for name in [part[1:-1] for part in path.split("/") if part.startswith("{")]:
        assert name in params, f"{path}: say here what the test posts to {{{name}}}"
        route = route.replace(f"{{{name}}}", str(params[name]))
    fields = {"token": dash.token, "next": "/dashboard", "archived": "1"}
    return route, fields


def test_the_enumeration_finds_the_dashboards_forms() -> None:
    app = create_app(Settings(database_url="sqlite://", auth="off"))
    found = set(state_changing_routes(app))
    assert found >= KNOWN
    # The walk sees the API's routes too (and leaves them to the bearer token).
    api = {(m, p) for p, r in _routes(app.routes) for m in r.methods if p.startswith("/v1/")}
    assert ("POST", "/v1/studies/{study_id}/archive") in api


def test_every_state_changing_route_refuses_a_forged_missing_or_foreign_token(
    dashboard: Dashboard,
) -> None:
    web = dashboard.web
    routes = state_changing_routes(web.app)
    assert set(routes) >= KNOWN
    good = dashboard.page_token()
    cookies_before = dict(web.cookies)
    for method, path in routes:
        url, fields = form_for(path, dashboard)
        attempts: list[tuple[str, dict[str, str], dict[str, str]]] = [
            ("missing", fields, {}),
            ("empty", {**fields, "csrf": ""}, {}),
            ("forged", {**fields, "csrf": "x" * 43}, {}),
            ("forged hex", {**fields, "csrf": "0" * 32}, {}),
        ]
        attempts += [("foreign", {**fields, "csrf": good}, h) for h in FOREIGN]
        for why, data, headers in attempts:
            answer = web.request(method, url, data=data, headers=headers)
            where = f"{method} {path} ({why}, auth {dashboard.auth})"
            assert answer.status_code == 403, where
            assert answer.headers["content-type"].startswith("text/html"), where
            assert "<h1>Refused</h1>" in answer.text, where
            if why != "foreign":
                assert str(escape(csrf.STALE)) in answer.text, where
            assert "stagelr_session" not in answer.headers.get("set-cookie", ""), where
    # Nothing changed: the study is there and not archived, the session still open.
    assert not dashboard.archived()
    assert dict(web.cookies) == cookies_before
    assert web.get("/dashboard").status_code == 200
    assert web.get(f"/dashboard/studies/{dashboard.target}").status_code == 200


def test_a_token_from_another_browser_is_refused(dashboard: Dashboard) -> None:
    """A token is bound to its browser's cookie (its session with auth on): another
    browser's valid token does not open this one's forms."""
    theirs = dashboard.page_token()
    web = dashboard.web
    web.cookies.clear()
    if dashboard.auth != "off":  # a session of its own
        form = web.get("/dashboard/login")
        signed = web.post(
            "/dashboard/login",
            data={"token": dashboard.token, "next": "/dashboard", "csrf": form_token(form.text)},
        )
        assert signed.status_code == 303
    else:
        web.get(f"/dashboard/studies/{dashboard.keep}")  # a cookie of its own
    assert dashboard.page_token() != theirs
    url, fields = form_for("/dashboard/studies/{study_id}/archive", dashboard)
    refused = web.post(url, data={**fields, "csrf": theirs})
    assert refused.status_code == 403 and not dashboard.archived()


def test_the_right_token_from_the_dashboards_own_page_is_taken(dashboard: Dashboard) -> None:
    """The refusals above are the token's doing: with it, each form does its work."""
    web = dashboard.web
    url, fields = form_for("/dashboard/studies/{study_id}/archive", dashboard)
    same_origin = {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}
    done = web.post(url, data={**fields, "csrf": dashboard.page_token()}, headers=same_origin)
    assert done.status_code == 303 and dashboard.archived()
    login = web.post(
        "/dashboard/login", data={**fields, "csrf": dashboard.page_token()}, headers=same_origin
    )
    assert login.status_code == 303
    url, fields = form_for("/dashboard/studies/{study_id}/delete", dashboard)
    gone = web.post(url, data={**fields, "csrf": dashboard.page_token()})
    assert gone.status_code == 303
    assert web.get(f"/dashboard/studies/{dashboard.target}").status_code == 404
    token = dashboard.page_token()
    out = web.post("/dashboard/logout", data={"csrf": token})
    assert out.status_code == 303
    if dashboard.auth != "off":  # signed out: the pages ask for a token again
        assert web.get("/dashboard").status_code == 303


def test_only_a_page_with_a_form_sets_the_double_submit_cookie(dashboard: Dashboard) -> None:
    web = dashboard.web
    if dashboard.auth != "off":
        pytest.skip("signed in, the forms carry the session's token: no cookie of their own")
    web.cookies.clear()
    listed = web.get("/dashboard")
    assert listed.status_code == 200 and "set-cookie" not in listed.headers
    assert 'name="csrf"' not in listed.text  # no form that changes state
    page = web.get(f"/dashboard/studies/{dashboard.keep}")
    cookie = page.headers["set-cookie"]
    assert cookie.startswith(f"{csrf.COOKIE}=") and "HttpOnly" in cookie
    assert "SameSite=strict" in cookie and "Path=/dashboard" in cookie
    assert web.cookies[csrf.COOKIE] == form_token(page.text)
    again = web.get(f"/dashboard/studies/{dashboard.keep}")
    assert "set-cookie" not in again.headers and form_token(again.text) == form_token(page.text)
