"""Runs side by side, shapes drawn as trained, and housekeeping (name search, archive,
delete) through a live server: the API, the CLI and the dashboard's forms."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from html import unescape
from pathlib import Path

import httpx
import pytest

import stagelr
from stagelr.models import LRShape, lr_at
from stagelr_service.dashboard.charts import lr_path
from stagelr_service.dashboard.compare import MAX_STUDIES, parse_ids
from stagelr_service.errors import InputError
from stagelr_service.store import Store, migrate
from tests.dashboard.test_dashboard import CONFIG, run_synthetic, seed_studies
from tests.dashboard_forms import sign_in
from tests.live import LiveServer, run_cli, start_server
from tests.store_fixtures import BACKENDS, fresh_database

slow = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("compare")
    live = start_server(
        f"sqlite:///{root / 'stagelr.db'}", root / "server.log", env={"STAGELR_LOG_FORMAT": "json"}
    )
    yield live
    live.stop()


@pytest.fixture(scope="module")
def studies(server: LiveServer) -> list[int]:
    """Two finished synthetic studies (search, hold, the final one_minus_sqrt decay)."""
    return [run_synthetic(server.url, f"cmp-{i}", seed=i) for i in range(2)]


def _points(svg_element: str) -> list[tuple[float, float]]:
    raw = re.search(r'points="([^"]+)"', svg_element)
    assert raw is not None
    return [(float(x), float(y)) for x, y in (p.split(",") for p in raw.group(1).split())]


def _elements(html: str, tag: str, cls: str) -> list[str]:
    return re.findall(rf'<{tag} class="{cls}[^"]*"[^>]*>', html)


# --------------------------------------------------------------------------- shapes


def test_lr_path_samples_a_decay_at_the_lrs_the_job_trained() -> None:
    path = lr_path(100, 50, 0.2, 0.0, LRShape.linear, points=11)
    assert path[0] == (100, 0.2)
    for x, y in path[:-1]:
        assert y == lr_at(0.2, 0.0, LRShape.linear, int(x) - 100 + 1, 50)
    assert all(b[1] <= a[1] for a, b in zip(path, path[1:], strict=False))
    assert lr_path(0, 10, 0.1, hold_from=-5) == [(-5, 0.1), (10, 0.1)]


@slow
def test_the_schedule_chart_and_the_sparkline_draw_the_decay_with_its_shape(
    server: LiveServer, studies: list[int]
) -> None:
    with httpx.Client(base_url=server.url) as web:
        page = web.get(f"/dashboard/studies/{studies[0]}").text
        listing = web.get("/dashboard").text
    shaped = _elements(page, "polyline", "shaped one_minus_sqrt")
    assert len(shaped) == 1
    points = _points(shaped[0])
    assert len(points) >= 10
    ys = [y for _, y in points]
    assert all(b >= a for a, b in zip(ys, ys[1:], strict=False)) and ys[-1] > ys[0] + 20
    assert 'data-shapes="one_minus_sqrt"' in listing
    decay = re.search(r'<p class="muted stage-decay">([^<]+)</p>', page)
    assert decay is not None and "one_minus_sqrt decay from lr" in decay.group(1)


# --------------------------------------------------------------------------- compare


def test_compare_ids_are_parsed_in_order_without_repeats() -> None:
    assert parse_ids(["3", "7,3", " 9 "]) == [3, 7, 9]
    for bad in ([], ["x"], ["-1"], [",".join(str(i) for i in range(MAX_STUDIES + 1))]):
        with pytest.raises(InputError):
            parse_ids(bad)


@slow
def test_the_compare_page_overlays_the_studies_and_tabulates_them(
    server: LiveServer, studies: list[int]
) -> None:
    a, b = studies
    with httpx.Client(base_url=server.url) as web, stagelr.Client(server.url) as api:
        response = web.get(f"/dashboard/compare?id={b}&id={a}")
        same = web.get(f"/dashboard/compare?id={b},{a}")
        views = {i: api.get_study(i) for i in studies}
        segments = {i: api.list_segments(i) for i in studies}
        finals = {}
        for i in studies:  # the last finite loss the trajectory reported
            for seg in (s for s in segments[i] if s.kind.value == "exploit"):
                for o in api.list_observations(seg.id):
                    if o.metric == seg.metric and math.isfinite(o.value):
                        finals[i] = o.value
    assert response.status_code == 200 and same.text.count("compare-row") == 2
    assert "default-src 'self'" in response.headers["content-security-policy"]
    html = response.text
    assert re.findall(r'<tr class="compare-row" data-study="(\d+)"', html) == [str(b), str(a)]
    for colour, study_id in (("s0", b), ("s1", a)):
        view = views[study_id]
        row = html.split(f'data-study="{study_id}"', 1)[1].split("</tr>", 1)[0]
        assert f"{view.charged_steps:,}" in row
        assert f"{finals[study_id]:.4g}" in unescape(row)
        chosen = [st.chosen_lr for st in view.stages if st.chosen_lr is not None]
        assert row.count('class="lr-chip"') == len(chosen)
        lr_paths = [
            e for e in _elements(html, "polyline", f"lr-path series {colour}") if str(study_id) in e
        ]
        assert len(lr_paths) == 1
        exploits = [s for s in segments[study_id] if s.kind.value == "exploit"]
        assert len(_elements(html, "polyline", f"lr-charged series {colour}")) == len(exploits)
        assert len(_elements(html, "polyline", f"loss-path series {colour}")) == 1
        assert len(_elements(html, "polyline", f"loss-charged series {colour}")) == 1
    # Against charged steps the same trajectory ends further right: its search cost.
    lr = _points(_elements(html, "polyline", "lr-path series s0")[0])
    charged = _points(_elements(html, "polyline", "lr-charged series s0")[-1])
    assert views[b].charged_steps > views[b].trajectory_steps and charged[-1][0] >= lr[-1][0]


@slow
def test_the_compare_page_answers_bad_selections_with_a_clear_page(
    server: LiveServer, studies: list[int]
) -> None:
    with httpx.Client(base_url=server.url) as web:
        assert web.get("/dashboard/compare").status_code == 400
        assert web.get("/dashboard/compare?id=abc").status_code == 400
        many = "&".join(f"id={i}" for i in range(1, MAX_STUDIES + 2))
        too_many = web.get(f"/dashboard/compare?{many}")
        assert too_many.status_code == 400 and f"at most {MAX_STUDIES}" in too_many.text
        missing = web.get(f"/dashboard/compare?id={studies[0]}&id=999999")
        assert missing.status_code == 404


@slow
def test_the_list_offers_the_selection_as_a_get_form(
    server: LiveServer, studies: list[int]
) -> None:
    with httpx.Client(base_url=server.url) as web:
        html = web.get("/dashboard").text
    assert '<form id="compare" method="get" action="/dashboard/compare">' in html
    for study_id in studies:
        assert f'name="id" value="{study_id}"' in html


@slow
def test_the_schedule_downloads_from_the_study_page(server: LiveServer, studies: list[int]) -> None:
    with httpx.Client(base_url=server.url) as web:
        page = web.get(f"/dashboard/studies/{studies[0]}").text
        assert f"/dashboard/studies/{studies[0]}/schedule.json" in page
        got = web.get(f"/dashboard/studies/{studies[0]}/schedule.json")
        csv = web.get(f"/dashboard/studies/{studies[0]}/schedule.csv")
        assert web.get(f"/dashboard/studies/{studies[0]}/schedule.xml").status_code == 404
    assert got.status_code == 200 and json.loads(got.text)["format"] == "stagelr.schedule"
    assert csv.text.startswith("step,lr,stage,kind\n")
    assert "attachment" in got.headers["content-disposition"]


# --------------------------------------------------------------------------- housekeeping


@slow
def test_the_list_searches_by_name_in_the_api_and_the_dashboard(server: LiveServer) -> None:
    for name in ("Resnet-A", "resnet-b", "vit.1", "vitx1"):
        run_synthetic(server.url, name, segments=1)
    with httpx.Client(base_url=server.url) as web, stagelr.Client(server.url) as api:
        found = {s.name for s in api.list_studies(name="RESNET").studies}
        assert found == {"Resnet-A", "resnet-b"}
        assert {s.name for s in api.list_studies(name="T.1").studies} == {"vit.1"}
        # LIKE's wildcards match only themselves, and no name holds them.
        assert api.list_studies(name="%").studies == []
        assert api.list_studies(name="vit_").studies == []
        html = web.get("/dashboard", params={"q": "resnet"}).text
        names = re.findall(r'class="study-link" href="[^"]+">([^<]+)<', html)
        assert sorted(names) == ["Resnet-A", "resnet-b"]
        assert 'value="resnet"' in html
        assert "no-such" in web.get("/dashboard", params={"q": "no-such"}).text
        assert web.get("/dashboard", params={"q": "x" * 201}).status_code == 400


@slow
def test_an_archived_study_leaves_the_list_and_keeps_its_history(
    server: LiveServer, tmp_path: Path
) -> None:
    study_id = run_synthetic(server.url, "to-archive", seed=5)
    with httpx.Client(base_url=server.url) as web, stagelr.Client(server.url) as api:
        before = api.get_schedule(study_id)
        view = api.archive_study(study_id)
        assert view.archived_at is not None
        assert study_id not in {s.id for s in api.list_studies(limit=500).studies}
        assert study_id in {s.id for s in api.list_studies(archived=True).studies}
        assert f'data-study="{study_id}"' not in web.get("/dashboard").text
        assert f'data-study="{study_id}"' in web.get("/dashboard?archived=1").text
        # Its history stays: the page, the replay, the schedule.
        assert web.get(f"/dashboard/studies/{study_id}").status_code == 200
        assert api.replay(study_id).ok
        assert api.get_schedule(study_id).pieces == before.pieces
        api.archive_study(study_id, archived=False)
        assert study_id in {s.id for s in api.list_studies(limit=500).studies}
    lines = [json.loads(x) for x in server.log().splitlines() if x.startswith("{")]
    audit = [x for x in lines if x.get("logger") == "stagelr.audit" and x["study_id"] == study_id]
    assert [x["action"] for x in audit] == ["archive", "unarchive"]
    assert all(x["request_id"] and x["project"] == "default" for x in audit)


@slow
def test_a_deleted_study_is_gone_with_its_history(server: LiveServer) -> None:
    study_id = run_synthetic(server.url, "to-delete", seed=6)
    with stagelr.Client(server.url) as api:
        segment_ids = [s.id for s in api.list_segments(study_id)]
        api.delete_study(study_id)
        with pytest.raises(stagelr.NotFoundError):
            api.get_study(study_id)
        with pytest.raises(stagelr.NotFoundError):
            api.delete_study(study_id)
    with Store(server.database_url) as store, store.transaction(read_only=True) as repo:
        assert repo.history(study_id) is None
        assert all(repo.get_segment(i) is None for i in segment_ids)
        assert repo.observations_of_study(study_id) == {}
    lines = [json.loads(x) for x in server.log().splitlines() if x.startswith("{")]
    assert any(x.get("action") == "delete" and x.get("study_id") == study_id for x in lines)


@slow
def test_the_cli_asks_before_deleting_and_archiving(server: LiveServer) -> None:
    study_id = run_synthetic(server.url, "cli-house", segments=2)
    db = ["--database-url", server.database_url]
    no = run_cli("delete", str(study_id), *db)  # stdin is not a terminal: no answer
    assert no.returncode == 1 and "nothing done" in no.stderr and "--yes" in no.stderr
    archived = run_cli("archive", "cli-house", "--yes", *db)
    assert archived.returncode == 0, archived.stderr
    with stagelr.Client(server.url) as api:
        assert api.get_study(study_id).archived_at is not None
    gone = run_cli("delete", "cli-house", "-y", *db)
    assert gone.returncode == 0 and "deleted" in gone.stderr
    missing = run_cli("delete", "cli-house", "-y", *db)
    assert missing.returncode == 2 and "no study named 'cli-house'" in missing.stderr


@slow
def test_the_dashboard_archives_and_deletes_only_with_its_csrf_token(
    server: LiveServer,
) -> None:
    study_id = run_synthetic(server.url, "web-house", segments=2)
    with httpx.Client(base_url=server.url) as web:
        page = web.get(f"/dashboard/studies/{study_id}")
        token = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert token is not None and web.cookies.get("stagelr_csrf") == token.group(1)
        cookie = page.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        target = f"/dashboard/studies/{study_id}/archive"
        # No token, a wrong one, another site's origin: refused, nothing changes.
        assert web.post(target, data={"archived": "1"}).status_code == 403
        assert web.post(target, data={"csrf": "x" * 43}).status_code == 403
        evil = web.post(
            target, data={"csrf": token.group(1)}, headers={"Origin": "https://evil.example"}
        )
        assert evil.status_code == 403
        with httpx.Client(base_url=server.url) as stranger:  # no cookie
            assert stranger.post(target, data={"csrf": token.group(1)}).status_code == 403
        with stagelr.Client(server.url) as api:
            assert api.get_study(study_id).archived_at is None
        done = web.post(target, data={"csrf": token.group(1), "archived": "1"})
        assert done.status_code == 303
        with stagelr.Client(server.url) as api:
            assert api.get_study(study_id).archived_at is not None
        confirm = web.get(f"/dashboard/studies/{study_id}/delete")
        assert "Delete for good" in confirm.text and "web-house" in confirm.text
        deleted = web.post(f"/dashboard/studies/{study_id}/delete", data={"csrf": token.group(1)})
        assert deleted.status_code == 303
        assert f"Study {study_id} was deleted" in web.get(deleted.headers["location"]).text
        assert web.get(f"/dashboard/studies/{study_id}").status_code == 404


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, str]]:
    root = tmp_path_factory.mktemp("auth-house")
    url = f"sqlite:///{root / 'stagelr.db'}"
    live = start_server(url, root / "server.log", env={"STAGELR_AUTH": "required"})
    made = run_cli("token", "create", "--project", "vision", env={"STAGELR_DATABASE_URL": url})
    other = run_cli("token", "create", "--project", "audio", env={"STAGELR_DATABASE_URL": url})
    assert made.returncode == 0 and other.returncode == 0
    yield live, made.stdout.strip() + " " + other.stdout.strip()
    live.stop()


@slow
def test_with_auth_on_housekeeping_is_project_scoped(
    auth_server: tuple[LiveServer, str],
) -> None:
    server, tokens = auth_server
    vision, audio = tokens.split()
    theirs = run_synthetic(server.url, "audio-run", token=audio, project="audio", segments=1)
    with stagelr.Client(server.url, token=vision) as api:
        with pytest.raises(stagelr.NotFoundError):
            api.archive_study(theirs)
        with pytest.raises(stagelr.NotFoundError):
            api.delete_study(theirs)
        with pytest.raises(stagelr.NotFoundError):
            api.get_schedule(theirs)
    with (
        stagelr.Client(server.url, token="stg_nope") as api,
        pytest.raises(stagelr.AuthenticationError),
    ):
        api.delete_study(theirs)
    with httpx.Client(base_url=server.url) as web:
        assert sign_in(web, vision).status_code == 303
        assert web.get(f"/dashboard/compare?id={theirs}").status_code == 404
        assert web.get(f"/dashboard/studies/{theirs}/delete").status_code == 404
    with stagelr.Client(server.url, token=audio) as api:
        assert api.get_study(theirs).archived_at is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_store_searches_archives_and_deletes_on_both_backends(
    backend: str, tmp_path: Path
) -> None:
    with fresh_database(backend, tmp_path) as url:
        migrate(url)
        ids = seed_studies(str(url), ["Alpha-1", "alpha-2", "beta"], losses=[0.5, 0.4, 0.3])
        with Store(url) as store:
            with store.transaction() as repo:
                found, total = repo.list_studies(name="ALPHA")
                assert total == 2 and {s.name for s in found} == {"Alpha-1", "alpha-2"}
                archived = repo.set_archived(ids[0], True)
                assert archived.archived_at is not None
            with store.transaction(read_only=True) as repo:
                rows, total = repo.study_summaries(lease_seconds=60, name="alpha")
                assert total == 1 and rows[0].name == "alpha-2"
                rows, total = repo.study_summaries(lease_seconds=60, archived=True)
                assert [r.id for r in rows] == [ids[0]] and rows[0].archived_at is not None
                assert repo.list_studies(archived=None)[1] == 3
                assert repo.history(ids[0]) is not None  # archived keeps its history
            with store.transaction() as repo:
                repo.add_outage(ids[1], "net", 5, 0)
                assert repo.delete_study(ids[1]) is True
                assert repo.delete_study(ids[1]) is False
            with store.transaction(read_only=True) as repo:
                assert repo.history(ids[1]) is None
                assert repo.observations_of_study(ids[1]) == {}
                assert repo.outages_of_study(ids[1]) == []
                assert repo.list_studies(archived=None)[1] == 2


@slow
def test_a_schedule_too_long_for_a_csv_download_says_what_to_take(server: LiveServer) -> None:
    """A CSV is a row per step: past CSV_MAX_STEPS the page refuses it (the JSON stays
    piecewise, one piece here) instead of writing millions of rows in one request."""
    from stagelr.models import Metric, SegmentDecision, SegmentKind
    from stagelr_service.dashboard.routes import CSV_MAX_STEPS

    steps = CSV_MAX_STEPS + 1
    with Store(server.database_url) as store, store.transaction() as repo:
        project_id = repo.get_or_create_project("long").id
        study, _ = repo.create_study(project_id, "very-long", CONFIG)
        stage = repo.get_or_create_stage(study.id, 0, steps, 0, 0)
        segment = repo.insert_segment(
            study.id,
            stage.id,
            0,
            SegmentDecision(
                stage=0,
                index=0,
                kind=SegmentKind.exploit,
                lr=0.05,
                steps=steps,
                start_step=0,
                horizon=steps,
                metric=Metric.val_loss,
                report_every=1000,
                data_seed=0,
            ),
        )
        repo.update_segment_status(segment.id, "completed", steps_done=steps)
    with httpx.Client(base_url=server.url) as web:
        csv = web.get(f"/dashboard/studies/{study.id}/schedule.csv")
        assert csv.status_code == 400 and "schedule.json" in csv.text
        piecewise = web.get(f"/dashboard/studies/{study.id}/schedule.json").json()
    assert piecewise["steps"] == steps and len(piecewise["pieces"]) == 1
