"""Runs side by side and housekeeping in the real browser (Debian's chromium, driven by
Playwright, as test_dashboard_browser.py): tick studies in the list, compare them, share
the URL; search by name; archive and delete through the study page's forms."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from tests.dashboard.test_dashboard import run_synthetic
from tests.dashboard.test_dashboard_browser import Watched, browser, own_losses
from tests.live import LiveServer

pytestmark = pytest.mark.slow

__all__ = ["browser"]  # the fixture, shared with test_dashboard_browser


@pytest.fixture()
def watched(browser: Any, live_server: LiveServer) -> Iterator[Watched]:  # noqa: F811
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.set_default_timeout(20_000)
    yield Watched(page, live_server.url)
    context.close()


@pytest.fixture(scope="module")
def pair(live_server: LiveServer) -> list[int]:
    return [run_synthetic(live_server.url, f"side-{i}", seed=10 + i) for i in range(2)]


def test_ticked_studies_open_side_by_side_and_the_url_reopens_them(
    watched: Watched, pair: list[int], live_server: LiveServer
) -> None:
    page = watched.page
    watched.goto("/dashboard")
    for study_id in pair:
        page.locator(f'tr[data-study="{study_id}"] input[type=checkbox]').check()
    page.get_by_role("button", name="Compare selected").click()
    page.wait_for_load_state("networkidle")
    url = urlparse(page.url)
    assert url.path == "/dashboard/compare"
    assert sorted(int(i) for i in parse_qs(url.query)["id"]) == sorted(pair)

    with httpx.Client(base_url=live_server.url) as api:
        losses = 0
        exploits = 0
        for study_id in pair:
            for seg in api.get(f"/v1/studies/{study_id}/segments").json():
                if seg["kind"] == "exploit":
                    exploits += 1
                    losses += len(own_losses(api, seg))
        views = [api.get(f"/v1/studies/{i}").json() for i in pair]

    def check() -> None:
        assert page.locator("tr.compare-row").count() == 2
        assert page.locator("svg.compare-lr polyline.lr-path").count() == 2
        assert page.locator("svg.compare-lr-charged polyline.lr-charged").count() == exploits
        assert page.locator("svg.compare-loss polyline.loss-path").count() == 2
        assert page.locator("svg.compare-loss circle.loss-obs").count() == losses
        assert page.locator("svg.compare-loss-charged polyline.loss-charged").count() == 2
        for view in views:
            row = page.locator(f'tr.compare-row[data-study="{view["id"]}"]')
            assert row.locator("td.charged").inner_text() == f"{view['charged_steps']:,}"
            chosen = [s["chosen_lr"] for s in view["stages"] if s["chosen_lr"] is not None]
            assert row.locator(".lr-chip").count() == len(chosen)
            assert math.isfinite(float(row.locator("td.final-loss").inner_text().split()[0]))

    check()
    shared = page.url
    watched.page.goto(shared)  # the link alone brings the same comparison back
    page.wait_for_load_state("networkidle")
    check()
    # Drop one study: the page of the other alone.
    page.locator(f'tr.compare-row[data-study="{pair[0]}"] a.drop').click()
    page.wait_for_load_state("networkidle")
    assert page.locator("tr.compare-row").count() == 1
    assert watched.problems == []


def test_the_name_search_filters_the_list(watched: Watched, pair: list[int]) -> None:
    page = watched.page
    watched.goto("/dashboard")
    page.get_by_label("Search studies by name").fill("SIDE-")
    page.get_by_role("button", name="Search").click()
    page.wait_for_load_state("networkidle")
    assert "q=SIDE-" in page.url
    shown = {
        int(x)
        for x in page.locator("tr.study-row").evaluate_all("rows => rows.map(r => r.dataset.study)")
    }
    assert shown == set(pair)
    assert watched.problems == []


def test_archive_then_delete_through_the_study_page(
    watched: Watched, live_server: LiveServer
) -> None:
    study_id = run_synthetic(live_server.url, "browser-house", segments=2)
    page = watched.page
    watched.goto(f"/dashboard/studies/{study_id}")
    page.get_by_role("button", name="Archive").click()
    page.wait_for_load_state("networkidle")
    assert page.locator("h1 .badge.archived").count() == 1
    watched.goto("/dashboard")
    assert page.locator(f'tr[data-study="{study_id}"]').count() == 0
    watched.goto("/dashboard?archived=1")
    assert page.locator(f'tr[data-study="{study_id}"]').count() == 1
    watched.goto(f"/dashboard/studies/{study_id}")
    page.get_by_role("link", name="Delete…").click()
    page.get_by_role("button", name="Delete for good").click()
    page.wait_for_load_state("networkidle")
    assert f"Study {study_id} was deleted" in page.locator("p.notice").inner_text()
    with httpx.Client(base_url=live_server.url) as api:
        assert api.get(f"/v1/studies/{study_id}").status_code == 404
    assert watched.problems == []
