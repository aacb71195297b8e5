"""The dashboard's server side: its pages' HTML and headers from a live `stagelr serve`,
the study-list query on both backends, and the pure pieces (fitted curves, the plotting
kit). The browser drives the pages in test_dashboard_browser.py."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import event, insert, select

import stagelr
from stagelr.models import LRShape, Metric, SegmentDecision, SegmentKind, StudyConfig
from stagelr_service.dashboard.plots import Figure, LogScale
from stagelr_service.forecast import forecast, forecast_curve
from stagelr_service.store import Store, migrate
from stagelr_service.store.models import ObservationRow, SegmentRow, StageRow, StudyRow
from stagelr_service.testing.simulation import SyntheticJob
from stagelr_service.tuner import resolve
from tests.dashboard_forms import sign_in
from tests.live import LiveServer, run_cli, start_server
from tests.store_fixtures import BACKENDS, fresh_database

slow = pytest.mark.slow

CONFIG = resolve(StudyConfig(lr_min=1e-3, lr_max=1.0, total_steps=1000)).to_stored()


# --------------------------------------------------------------------------- helpers


def run_synthetic(
    url: str,
    name: str,
    *,
    segments: int | None = None,
    project: str = "default",
    token: str | None = None,
    seed: int = 0,
) -> int:
    """Tune a synthetic job through the real client (all of it, or its first
    ``segments`` segments: the study then runs on, its next segment open); the study id."""
    job = SyntheticJob(seed=seed)
    with stagelr.Tuner(
        url,
        study=name,
        project=project,
        token=token,
        lr_min=1e-3,
        lr_max=1.0,
        total_steps=160,
        tau0=40,
        tau_max=80,
        k=3,
        seed=seed,
    ) as tuner:
        for done, segment in enumerate(tuner):
            if segments is not None and done >= segments:
                break
            reports, _ = job.train(
                segment.lr,
                segment.planned_steps,
                segment.report_every,
                explore=segment.kind is SegmentKind.explore,
                stop_above=segment.stop_above,
            )
            for step, value in reports:
                segment.report(step, value)
            segment.complete()
        return tuner.study_id


def seed_studies(
    database_url: str,
    names: list[str],
    *,
    project: str = "seeded",
    losses: list[float | None] | None = None,
    open_segment: bool = False,
    clock: Callable[[], datetime] | None = None,
) -> list[int]:
    """Studies written straight into the store (fast, for big lists): each with one
    stage and one exploit segment reporting ``losses[i]`` (none where None)."""
    ids = []
    options: dict[str, Any] = {"clock": clock} if clock else {}
    with Store(database_url, **options) as store, store.transaction() as repo:
        project_id = repo.get_or_create_project(project).id
        for i, name in enumerate(names):
            study, _ = repo.create_study(project_id, name, CONFIG)
            ids.append(study.id)
            loss = losses[i] if losses else None
            if loss is None and not open_segment:
                continue
            stage = repo.get_or_create_stage(study.id, 0, 100, 10, 0)
            segment = repo.insert_segment(
                study.id,
                stage.id,
                0,
                SegmentDecision(
                    stage=0,
                    index=0,
                    kind=SegmentKind.exploit,
                    lr=0.01 * (1 + i % 50),
                    steps=100,
                    start_step=0,
                    horizon=100,
                    metric=Metric.val_loss,
                    report_every=10,
                    data_seed=0,
                ),
            )
            if loss is not None:
                repo.add_observations(segment.id, [(10, "val_loss", loss)])
            if not open_segment:
                repo.update_segment_status(segment.id, "completed", steps_done=100)
    return ids


def bulk_studies(database_url: str, count: int, *, project: str = "bulk") -> list[str]:
    """``count`` studies in a few multi-row INSERTs through the store's tables (a thousand
    in well under a second); study i has a completed exploit segment at lr 0.01*(1+i%50)
    that reported loss 1 + i/1000, except every seventh, which has no stage yet. Returns
    the names, in order."""
    names = [f"{project}-{i:04d}" for i in range(count)]
    with Store(database_url) as store:
        with store.transaction() as repo:
            project_id = repo.get_or_create_project(project).id
        now = store.now()
        with store.engine.begin() as conn:
            conn.execute(
                insert(StudyRow),
                [
                    {
                        "project_id": project_id,
                        "name": name,
                        "config": CONFIG,
                        "status": "running",
                        "created_at": now,
                        "updated_at": now + timedelta(milliseconds=i),
                    }
                    for i, name in enumerate(names)
                ],
            )
            ids = dict(
                conn.execute(
                    select(StudyRow.name, StudyRow.id).where(StudyRow.project_id == project_id)
                ).all()
            )
            trained = [i for i in range(count) if i % 7]
            conn.execute(
                insert(StageRow),
                [
                    {
                        "study_id": ids[names[i]],
                        "index": 0,
                        "tau": 100,
                        "tau_explore": 10,
                        "start_step": 0,
                        "status": "completed",
                        "chosen_lr": 0.01 * (1 + i % 50),
                    }
                    for i in trained
                ],
            )
            stages = dict(
                conn.execute(
                    select(StageRow.study_id, StageRow.id).where(
                        StageRow.study_id.in_(list(ids.values()))
                    )
                ).all()
            )
            conn.execute(
                insert(SegmentRow),
                [
                    {
                        "study_id": ids[names[i]],
                        "stage_id": stages[ids[names[i]]],
                        "seq": 0,
                        "index": 3,
                        "kind": "exploit",
                        "status": "completed",
                        "lr": 0.01 * (1 + i % 50),
                        "steps": 100,
                        "start_step": 0,
                        "horizon": 100,
                        "metric": "val_loss",
                        "report_every": 10,
                        "discard": [],
                        "data_seed": 0,
                        "steps_done": 100,
                        "created_at": now,
                        "completed_at": now,
                        "heartbeat_at": now,
                    }
                    for i in trained
                ],
            )
            segments = dict(
                conn.execute(
                    select(SegmentRow.study_id, SegmentRow.id).where(
                        SegmentRow.study_id.in_(list(ids.values()))
                    )
                ).all()
            )
            conn.execute(
                insert(ObservationRow),
                [
                    {
                        "segment_id": segments[ids[names[i]]],
                        "step": 10,
                        "metric": "val_loss",
                        "value": 1 + i / 1000,
                    }
                    for i in trained
                ],
            )
    return names


class Elements(HTMLParser):
    """Every start tag of a page: (tag, attributes)."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def find(self, tag: str, css_class: str | None = None) -> list[dict[str, str]]:
        return [
            a
            for t, a in self.tags
            if t == tag and (css_class is None or css_class in a.get("class", "").split())
        ]


def study_rows(html: str) -> list[dict[str, str]]:
    return Elements(html).find("tr", "study-row")


@pytest.fixture(scope="module")
def web(live_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def finished_study(live_server: LiveServer) -> int:
    return run_synthetic(live_server.url, "dash-finished")


# --------------------------------------------------------------------------- pages


@slow
def test_the_root_redirects_to_the_dashboard(web: httpx.Client) -> None:
    response = web.get("/")
    assert response.status_code == 307
    assert response.headers["location"] == "/dashboard"


@slow
def test_every_dashboard_response_carries_the_security_headers(
    web: httpx.Client, finished_study: int
) -> None:
    paths = [
        "/dashboard",
        f"/dashboard/studies/{finished_study}",
        f"/dashboard/studies/{finished_study}/live",
        "/dashboard/studies/999999",
        "/dashboard?sort=nonsense",
        "/dashboard/static/dashboard.js",
        "/dashboard/login",
    ]
    for path in paths:
        response = web.get(path)
        csp = response.headers.get("content-security-policy", "")
        assert "default-src 'self'" in csp and "script-src 'self'" in csp, path
        assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp, path
        assert response.headers["x-content-type-options"] == "nosniff", path
        assert response.headers["x-frame-options"] == "DENY", path


@slow
def test_pages_load_only_hashed_assets_of_their_own(web: httpx.Client, finished_study: int) -> None:
    for path in ("/dashboard", f"/dashboard/studies/{finished_study}"):
        page = Elements(web.get(path).text)
        urls = [a["src"] for _, a in page.tags if "src" in a]
        urls += [a["href"] for t, a in page.tags if t == "link"]
        assert urls and all(u.startswith("/dashboard/static/") for u in urls), urls
        # No inline script, no inline style: the CSP would refuse them.
        assert all("src" in a for t, a in page.tags if t == "script")
        assert not [a for _, a in page.tags if "style" in a or any(k.startswith("on") for k in a)]
        for url in urls:
            asset = web.get(url)
            assert asset.status_code == 200
            digest = hashlib.sha256(asset.content).hexdigest()[:12]
            assert url.endswith(f"?v={digest}")
            assert "immutable" in asset.headers["cache-control"]


@slow
def test_the_study_page_shows_config_totals_and_one_section_per_stage(
    web: httpx.Client, finished_study: int
) -> None:
    study = web.get(f"/v1/studies/{finished_study}").json()
    html = web.get(f"/dashboard/studies/{finished_study}").text
    page = Elements(html)
    assert [int(a["data-stage"]) for a in page.find("section", "stage")] == sorted(
        (s["index"] for s in study["stages"]), reverse=True
    )
    searched = study["charged_steps"] - study["trajectory_steps"]
    assert f"<dt>Steps trained</dt><dd>{study['trajectory_steps']:,}</dd>" in html
    assert f"<dt>Steps spent searching</dt><dd>{searched:,}</dd>" in html
    assert "<th>tau0</th><td>40</td>" in html and "<th>k</th><td>3</td>" in html
    # The first stage's three candidates, then the best one's check (finalists), which
    # held: the row says which candidate it checked, and it is no fourth candidate.
    stage0 = web.get(f"/v1/studies/{finished_study}/stages/0").json()
    (check,) = [c for c in stage0["candidates"] if c["checks"] is not None]
    assert f"check of #{check['checks']}: held, continued" in html
    assert "<dt>Candidates tried</dt><dd>3 (0 diverged), 1 checked again</dd>" in html
    # A finished study's page does not poll.
    (live,) = [a for a in page.find("div") if a.get("id") == "live"]
    assert live["data-live"] == "off"


@slow
def test_an_unknown_study_is_a_404_page_and_bad_parameters_a_400_page(web: httpx.Client) -> None:
    missing = web.get("/dashboard/studies/424242")
    assert missing.status_code == 404 and "text/html" in missing.headers["content-type"]
    assert "no study 424242" in missing.text
    for query, says in (
        ("sort=colour", "unknown sort 'colour'"),
        ("order=sideways", "use asc or desc"),
        ("status=sleepy", "unknown status 'sleepy'"),
        ("page=0", "pages count from 1"),
        ("page=two", "page"),
    ):
        response = web.get(f"/dashboard?{query}")
        assert response.status_code == 400, query
        assert says in unescape(response.text), query


@slow
def test_the_live_fragment_answers_204_until_the_study_changes(
    web: httpx.Client, live_server: LiveServer
) -> None:
    study_id = run_synthetic(live_server.url, "dash-live-fragment", segments=2)
    url = f"/dashboard/studies/{study_id}/live"
    first = web.get(url)
    assert first.status_code == 200 and first.headers["x-stagelr-live"] == "on"
    version = first.headers["x-stagelr-version"]
    assert web.get(url, params={"since": version}).status_code == 204

    segment = web.get(f"/v1/studies/{study_id}").json()["open_segment"]
    posted = web.post(
        f"/v1/segments/{segment['id']}/observations",
        json={"observations": [{"step": 1, "value": 1.25}]},
    )
    assert posted.status_code == 200
    changed = web.get(url, params={"since": version})
    assert changed.status_code == 200
    assert changed.headers["x-stagelr-version"] != version
    points = [
        a
        for a in Elements(changed.text).find("circle", "obs")
        if a["data-segment"] == str(segment["id"])
    ]
    assert [(p["data-step"], p["data-value"]) for p in points] == [
        (str(segment["start_step"] + 1), "1.25")
    ]

    assert web.post(f"/v1/studies/{study_id}/stop").status_code == 200
    assert web.get(url, params={"since": version}).headers["x-stagelr-live"] == "off"


@slow
def test_the_list_sorts_by_name_best_loss_status_and_update(
    web: httpx.Client, live_server: LiveServer
) -> None:
    names = ["sort-c", "sort-a", "sort-d", "sort-b"]
    losses: list[float | None] = [0.3, None, 0.1, 0.2]
    ids = dict(
        zip(names, seed_studies(live_server.database_url, names, losses=losses), strict=True)
    )
    order = {v: k for k, v in ids.items()}

    def shown(**params: str) -> list[str]:
        # Only these four (the server is shared: other modules' studies are listed too).
        query = {"q": "sort-", "per_page": "200", **params}
        rows = study_rows(web.get("/dashboard", params=query).text)
        return [order[int(r["data-study"])] for r in rows if int(r["data-study"]) in order]

    assert shown(sort="name", order="asc") == ["sort-a", "sort-b", "sort-c", "sort-d"]
    assert shown(sort="name", order="desc") == ["sort-d", "sort-c", "sort-b", "sort-a"]
    # Without a loss, last either way.
    assert shown(sort="best_loss", order="asc") == ["sort-d", "sort-b", "sort-c", "sort-a"]
    assert shown(sort="best_loss", order="desc") == ["sort-c", "sort-b", "sort-d", "sort-a"]
    assert shown(sort="updated", order="desc") == ["sort-b", "sort-d", "sort-a", "sort-c"]
    web.post(f"/v1/studies/{ids['sort-a']}/stop")
    assert shown(sort="status", order="asc")[-1] == "sort-a"  # "stopped" sorts last
    assert shown(sort="updated", order="desc")[0] == "sort-a"


@slow
def test_a_running_study_whose_job_went_quiet_shows_stalled(
    web: httpx.Client, live_server: LiveServer
) -> None:
    # Written an hour ago: the open segment's heartbeat is far older than the lease.
    an_hour_ago = datetime.now(timezone.utc) - timedelta(hours=1)
    (quiet,) = seed_studies(
        live_server.database_url, ["dash-quiet"], open_segment=True, clock=lambda: an_hour_ago
    )
    (fresh,) = seed_studies(live_server.database_url, ["dash-fresh"], open_segment=True)
    # This module's studies only: on the shared server, an hour-old one would be pages down.
    mine = {"q": "dash-"}
    listed = study_rows(web.get("/dashboard", params=mine).text)
    rows = {int(r["data-study"]): r["data-status"] for r in listed}
    assert rows[quiet] == "stalled" and rows[fresh] == "running"
    stalled = study_rows(web.get("/dashboard", params={**mine, "status": "stalled"}).text)
    assert quiet in [int(r["data-study"]) for r in stalled]
    assert fresh not in [int(r["data-study"]) for r in stalled]
    assert (
        '<span class="badge status-stalled">stalled</span>'
        in web.get(f"/dashboard/studies/{quiet}").text
    )


# --------------------------------------------------------------------------- the list query


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_page_of_a_thousand_studies_costs_two_queries(backend: str, tmp_path: Path) -> None:
    with fresh_database(backend, tmp_path) as url:
        migrate(url)
        names = bulk_studies(url, 1000)
        with Store(url) as store:
            selects: list[str] = []

            def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
                if statement.lstrip().upper().startswith("SELECT"):
                    selects.append(statement)

            event.listen(store.engine, "before_cursor_execute", count)
            seen: list[str] = []
            for page in range(20):
                selects.clear()
                with store.transaction(read_only=True) as repo:
                    rows, total = repo.study_summaries(
                        lease_seconds=900, sort="name", descending=False, limit=50, offset=page * 50
                    )
                assert total == 1000 and len(rows) == 50
                assert len(selects) == 2, selects
                seen += [r.name for r in rows]
                if page == 0:
                    first, second = rows[0], rows[1]
            assert seen == names  # every study once, in order
            assert first.best_loss is None and first.schedule == () and first.stage is None
            assert second.best_loss == pytest.approx(1.001) and second.stage == 0
            assert second.schedule == ((0, 100, pytest.approx(0.02), None, LRShape.constant),)
            with store.transaction(read_only=True) as repo:
                low, _ = repo.study_summaries(
                    lease_seconds=900, sort="best_loss", descending=False, limit=1
                )
                high, total = repo.study_summaries(
                    lease_seconds=900, sort="best_loss", limit=5, offset=995
                )
            assert low[0].name == "bulk-0001"
            # Either way, the studies without a loss come at the very end.
            assert total == 1000 and all(r.best_loss is None for r in high)


# --------------------------------------------------------------------------- auth


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, str]]:
    root = tmp_path_factory.mktemp("auth-dashboard")
    url = f"sqlite:///{root / 'stagelr.db'}"
    server = start_server(url, root / "server.log", env={"STAGELR_AUTH": "required"})
    made = run_cli("token", "create", "--project", "vision", env={"STAGELR_DATABASE_URL": url})
    assert made.returncode == 0, made.stderr
    yield server, made.stdout.strip()
    server.stop()


@slow
def test_with_auth_on_the_dashboard_asks_for_a_token_first(
    auth_server: tuple[LiveServer, str],
) -> None:
    server, _ = auth_server
    with httpx.Client(base_url=server.url) as web:
        page = web.get("/dashboard/studies/1?x=1")
        assert page.status_code == 303
        assert (
            page.headers["location"] == "/dashboard/login?next=%2Fdashboard%2Fstudies%2F1%3Fx%3D1"
        )
        assert web.get("/dashboard/studies/1/live").status_code == 401
        form = web.get("/dashboard/login")
        assert form.status_code == 200 and 'name="token"' in form.text
        wrong = sign_in(web, "stg_wrong")
        assert wrong.status_code == 401 and "not valid" in wrong.text
        assert "set-cookie" not in wrong.headers


@slow
def test_a_token_logs_in_with_a_strict_http_only_cookie_and_shows_its_project_only(
    auth_server: tuple[LiveServer, str],
) -> None:
    server, token = auth_server
    mine = run_synthetic(server.url, "dash-vision", segments=3, project="vision", token=token)
    other_made = run_cli(
        "token", "create", "--project", "audio", env={"STAGELR_DATABASE_URL": server.database_url}
    )
    other = run_synthetic(
        server.url, "dash-audio", segments=3, project="audio", token=other_made.stdout.strip()
    )
    with httpx.Client(base_url=server.url) as web:
        login = sign_in(web, token, next=f"/dashboard/studies/{mine}")
        assert login.status_code == 303
        assert login.headers["location"] == f"/dashboard/studies/{mine}"
        cookie = login.headers["set-cookie"]
        assert cookie.startswith("stagelr_session=sess_") and token not in cookie
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
        listed = [int(r["data-study"]) for r in study_rows(web.get("/dashboard").text)]
        assert listed == [mine]
        assert web.get(f"/dashboard/studies/{mine}").status_code == 200
        assert web.get(f"/dashboard/studies/{other}").status_code == 404
        assert web.get(f"/dashboard/studies/{other}/live").status_code == 404
        # An off-site "next" is ignored: no open redirect.
        bounced = sign_in(web, token, next="https://evil.test/")
        assert bounced.headers["location"] == "/dashboard"
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', web.get("/dashboard").text)
        assert csrf is not None
        out = web.post("/dashboard/logout", data={"csrf": csrf.group(1)})
        assert out.status_code == 303 and 'stagelr_session=""' in out.headers["set-cookie"]


# --------------------------------------------------------------------------- pure parts


def test_a_fitted_curve_passes_through_its_forecast_at_the_horizon() -> None:
    steps = np.arange(1, 21)
    values = 0.4 + 1.5 * np.exp(-steps / 6.0)
    for model in ("exp_reference", "robust"):
        fc = forecast(steps, values, 200, model)
        assert fc.status == "ok"
        curve = forecast_curve(fc, [1.0, 10.0, 200.0])
        assert curve[2] == pytest.approx(fc.prediction, rel=1e-6)
        assert np.allclose(forecast_curve(fc.params, steps), values, atol=0.02)


def test_a_forecast_without_a_fitted_curve_says_so() -> None:
    fallback = forecast([1, 2, 3], [1.0, 0.9, 0.8], 100, "robust")
    assert fallback.status == "fallback"
    with pytest.raises(ValueError, match="no fitted curve"):
        forecast_curve(fallback, [1.0])


def test_every_plotted_point_is_an_element_and_points_outside_are_clipped() -> None:
    fig = Figure(width=400, height=200, x_domain=(0.0, 10.0), y_domain=(0.1, 10.0), y_log=True)
    fig.circle(5.0, 1.0, "obs", data={"step": 5, "value": 1.0})
    fig.circle(5.0, 1e6, "obs", data={"step": 6, "value": 1e6})
    fig.polyline([(0.0, 1.0), (math.nan, 2.0), (10.0, 3.0)], "line")
    svg = str(fig.render())
    circles = re.findall(r'<circle class="([^"]+)"', svg)
    assert circles == ["obs", "obs clipped"]
    assert 'data-points="2"' in svg and 'data-step="5"' in svg
    assert "style=" not in svg


def test_a_log_axis_ticks_its_decades() -> None:
    labels = [label for _, label in LogScale(1e-4, 1.0, 0.0, 100.0).ticks()]
    assert labels == ["0.0001", "0.001", "0.01", "0.1", "1"]
    narrow = [label for _, label in LogScale(0.02, 0.5, 0.0, 100.0).ticks()]
    assert narrow == ["0.02", "0.05", "0.1", "0.2", "0.5"]
