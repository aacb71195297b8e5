"""The dashboard in a real headless browser: Debian's chromium, driven by Playwright.

Playwright's pip wheel carries only its driver; the browser is the system's
(/usr/bin/chromium, installed by .ci/run from the distribution's packages). Every page is
watched for console errors, uncaught exceptions, failed requests and requests that leave
the server.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.dashboard.test_dashboard import bulk_studies, run_synthetic
from tests.live import LiveServer, run_cli, start_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live_server(own_live_server):  # type: ignore[no-untyped-def]
    """This module's own server: it bulk-loads a thousand studies and pages and sorts
    the whole unfiltered list (its totals, first and last pages), which would also
    push every other module's studies down the shared server's lists."""
    return own_live_server


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

playwright_api = pytest.importorskip("playwright.sync_api")
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium", allow_module_level=True)


class Watched:
    """A page whose console errors, failed and off-site requests are collected."""

    def __init__(self, page: Any, base_url: str) -> None:
        self.page = page
        self.base_url = base_url
        self.problems: list[str] = []
        self.navigations = 0
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        page.on("requestfailed", self._failed)
        page.on("request", self._request)
        page.on("response", self._response)
        page.on("framenavigated", self._navigated)

    def _console(self, message: Any) -> None:
        if message.type in ("error", "warning"):
            self.problems.append(f"console {message.type}: {message.text}")

    def _request(self, request: Any) -> None:
        if not request.url.startswith(self.base_url + "/"):
            self.problems.append(f"off-site request: {request.url}")

    def _response(self, response: Any) -> None:
        if response.status >= 400:
            self.problems.append(f"HTTP {response.status}: {response.url}")

    def _navigated(self, frame: Any) -> None:
        if frame == self.page.main_frame:
            self.navigations += 1

    def _failed(self, request: Any) -> None:
        # A request the browser cancels because the page navigated away (a favicon still
        # loading when the next page is asked for) is no fault of the dashboard's.
        if request.failure and "ERR_ABORTED" in request.failure:
            return
        self.problems.append(f"failed: {request.url} {request.failure}")

    def goto(self, path: str) -> Any:
        return self.page.goto(self.base_url + path)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture()
def watched(browser: Any, live_server: LiveServer) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.set_default_timeout(20_000)
    yield Watched(page, live_server.url)
    context.close()


@pytest.fixture(scope="module")
def finished(live_server: LiveServer) -> int:
    return run_synthetic(live_server.url, "browser-finished", seed=4)


def own_losses(api: httpx.Client, segment: dict[str, Any]) -> list[tuple[int, float]]:
    observations = api.get(f"/v1/segments/{segment['id']}/observations").json()
    # A non-finite loss comes as a string ("NaN", "Infinity"): float() reads both forms.
    return [
        (o["step"], float(o["value"]))
        for o in observations
        if o["metric"] == segment["metric"] and math.isfinite(float(o["value"]))
    ]


def test_the_pages_load_with_no_console_error_and_nothing_from_elsewhere(
    watched: Watched, finished: int
) -> None:
    for path in ("/", f"/dashboard/studies/{finished}", "/dashboard?sort=best_loss&order=asc"):
        response = watched.goto(path)
        assert response.status == 200, path
        csp = response.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "unsafe-inline" not in csp
        watched.page.wait_for_load_state("networkidle")
    assert watched.page.locator("tr.study-row").count() >= 1
    assert watched.problems == []


def test_the_study_plots_hold_one_element_per_point_of_the_study(
    watched: Watched, finished: int, live_server: LiveServer
) -> None:
    watched.goto(f"/dashboard/studies/{finished}")
    page = watched.page
    with httpx.Client(base_url=live_server.url) as api:
        study = api.get(f"/v1/studies/{finished}").json()
        segments = api.get(f"/v1/studies/{finished}/segments").json()
        losses = {s["id"]: own_losses(api, s) for s in segments}
        stages = [
            api.get(f"/v1/studies/{finished}/stages/{st['index']}").json() for st in study["stages"]
        ]
    explores = [s for s in segments if s["kind"] == "explore"]
    exploits = [s for s in segments if s["kind"] == "exploit"]
    assert explores and exploits and len(stages) >= 3

    # The LR schedule: a dot per stage's training, a dot per candidate, at their LRs.
    chosen = page.locator("svg.lr-schedule circle.chosen")
    assert chosen.count() == len(exploits)
    assert [float(v) for v in chosen.evaluate_all("es => es.map(e => e.dataset.lr)")] == [
        pytest.approx(s["lr"], rel=1e-5) for s in exploits
    ]
    assert page.locator("svg.lr-schedule circle.candidate").count() == len(explores)
    assert page.locator("svg.lr-schedule circle.candidate.diverged").count() == sum(
        s["status"] == "diverged" for s in explores
    )

    # The losses: a dot per finite reported loss, explore and exploit told apart.
    for kind, group in (("exploit", exploits), ("explore", explores)):
        dots = page.locator(f"svg.losses circle.obs.{kind}")
        assert dots.count() == sum(len(losses[s["id"]]) for s in group), kind
    for seg in segments:
        steps = page.locator(f'svg.losses circle.obs[data-segment="{seg["id"]}"]').evaluate_all(
            "es => es.map(e => Number(e.dataset.step))"
        )
        assert steps == [seg["start_step"] + s for s, _ in losses[seg["id"]]]

    # Each stage: the GP posterior on its grid, the candidates the GP saw, the chosen LR,
    # and every candidate's losses and fitted curve.
    for detail in stages:
        section = page.locator(f'section.stage[data-stage="{detail["index"]}"]')
        candidates = detail["candidates"]
        if not candidates:
            assert section.locator("svg").count() == 0
            continue
        mean = section.locator("svg.posterior polyline.posterior-mean")
        assert mean.get_attribute("data-points") == str(len(detail["posterior"]))
        assert section.locator("svg.posterior polygon.band").count() == 1
        assert section.locator("svg.posterior circle.cand").count() == sum(
            c["objective"] is not None for c in candidates
        )
        chosen_line = section.locator("svg.posterior line.chosen-lr")
        assert float(chosen_line.get_attribute("data-lr")) == pytest.approx(detail["chosen_lr"])
        assert section.locator("svg.fits circle.cand-obs").count() == sum(
            len(c["observations"]) for c in candidates
        )
        assert section.locator("svg.fits polyline.fit").count() == sum(
            c["forecast"] is not None and "beta" in c["forecast"]["params"] for c in candidates
        )
        assert section.locator("svg.fits circle.prediction").count() == sum(
            c["forecast"] is not None and c["forecast"]["prediction"] is not None
            for c in candidates
        )
        assert section.locator("tr.candidate-row").count() == len(candidates)
    assert watched.problems == []


def test_a_running_study_shows_a_new_observation_without_a_reload(
    watched: Watched, live_server: LiveServer
) -> None:
    study_id = run_synthetic(live_server.url, "browser-live", segments=4, seed=5)
    with httpx.Client(base_url=live_server.url) as api:
        segment = api.get(f"/v1/studies/{study_id}").json()["open_segment"]
        watched.goto(f"/dashboard/studies/{study_id}")
        page = watched.page
        assert page.locator("#live").get_attribute("data-live") == "on"
        page.evaluate("window.__loadedOnce = 'still here'")
        navigations = watched.navigations
        new_point = (
            f'svg.losses circle.obs[data-segment="{segment["id"]}"]'
            f'[data-step="{segment["start_step"] + segment["report_every"]}"]'
        )
        assert page.locator(new_point).count() == 0

        posted = api.post(
            f"/v1/segments/{segment['id']}/observations",
            json={"observations": [{"step": segment["report_every"], "value": 0.75}]},
        )
        assert posted.status_code == 200
        page.wait_for_selector(new_point, state="attached", timeout=20_000)
        assert page.locator(new_point).get_attribute("data-value") == "0.75"
        # The same document: the script swapped the fragment in, nothing reloaded.
        assert page.evaluate("window.__loadedOnce") == "still here"
        assert watched.navigations == navigations

        # Once the study ends, the page says so and stops asking.
        assert api.post(f"/v1/studies/{study_id}/stop").status_code == 200
        page.wait_for_selector('#live[data-live="off"]', state="attached", timeout=20_000)
        assert page.locator("#live .badge").inner_text() == "stopped"
    assert watched.problems == []


def test_the_list_of_a_thousand_studies_pages_and_sorts(
    watched: Watched, live_server: LiveServer
) -> None:
    bulk_studies(live_server.database_url, 1000, project="thousand")
    with httpx.Client(base_url=live_server.url) as api:
        total = api.get("/v1/studies", params={"limit": 1}).json()["total"]
    page = watched.page
    watched.goto("/dashboard?sort=name&order=asc")
    rows = page.locator("tr.study-row")
    assert rows.count() == 50
    pages = math.ceil(total / 50)
    assert page.locator(".pager .where").inner_text() == f"1–50 of {total} · page 1 of {pages}"
    first_page = rows.locator("a.study-link").all_inner_texts()
    assert first_page == sorted(first_page)

    page.click("a[rel=next]")
    page.wait_for_url("**page=2**")
    second_page = rows.locator("a.study-link").all_inner_texts()
    assert len(second_page) == 50 and first_page[-1] < second_page[0]

    watched.goto(f"/dashboard?sort=name&order=asc&page={pages}")
    assert rows.count() == total - 50 * (pages - 1)
    assert page.locator("a[rel=next]").count() == 0

    # Sorting by best loss, lowest first: the column reads in order, the blanks last.
    watched.goto("/dashboard")
    page.click("th a[data-sort=best_loss]")
    page.wait_for_url("**sort=best_loss**")
    cells = page.locator("tr.study-row td.num").all_inner_texts()
    values = [float(c) for c in cells if c != "–"]
    assert values == sorted(values) and len(values) == 50
    assert watched.problems == []


# --------------------------------------------------------------------------- auth


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, str]]:
    root: Path = tmp_path_factory.mktemp("browser-auth")
    url = f"sqlite:///{root / 'stagelr.db'}"
    server = start_server(url, root / "server.log", env={"STAGELR_AUTH": "required"})
    made = run_cli("token", "create", "--project", "vision", env={"STAGELR_DATABASE_URL": url})
    assert made.returncode == 0, made.stderr
    yield server, made.stdout.strip()
    server.stop()


def test_with_auth_on_a_token_signs_in_and_only_its_project_shows(
    browser: Any, auth_server: tuple[LiveServer, str]
) -> None:
    server, token = auth_server
    mine = run_synthetic(server.url, "browser-vision", segments=3, project="vision", token=token)
    audio = run_cli(
        "token", "create", "--project", "audio", env={"STAGELR_DATABASE_URL": server.database_url}
    ).stdout.strip()
    theirs = run_synthetic(server.url, "browser-audio", segments=3, project="audio", token=audio)

    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(20_000)
        watched = Watched(page, server.url)
        watched.goto(f"/dashboard/studies/{mine}")
        assert page.url.startswith(f"{server.url}/dashboard/login?next=")

        page.fill("input[name=token]", "stg_not-a-token")
        page.click("button[type=submit]")
        assert "not valid" in page.locator("p.error").inner_text()
        watched.problems.clear()  # the refused login is a 401, as it should be

        page.fill("input[name=token]", token)
        page.click("button[type=submit]")
        page.wait_for_url(f"{server.url}/dashboard/studies/{mine}")
        assert page.locator("h1").inner_text().startswith("browser-vision")
        (cookie,) = [c for c in context.cookies() if c["name"] == "stagelr_session"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert cookie["value"].startswith("sess_") and cookie["value"] != token
        assert "stagelr_session" not in page.evaluate("document.cookie")

        watched.goto("/dashboard")
        assert page.locator("tr.study-row a.study-link").all_inner_texts() == ["browser-vision"]
        assert watched.problems == []
        assert watched.goto(f"/dashboard/studies/{theirs}").status == 404
        watched.problems.clear()  # another project's study does not exist here

        watched.goto("/dashboard")
        page.click("text=Sign out")
        page.wait_for_url(f"{server.url}/dashboard/login")
        assert watched.goto("/dashboard").url.startswith(f"{server.url}/dashboard/login")
        assert watched.problems == []
    finally:
        context.close()
