"""Bad input on every endpoint of a live server: a 4xx problem document that says what to
fix, and nothing stored changes (the whole database is compared before and after).

``tests/api/test_api.py`` covers the common cases one by one; this module sweeps the rest.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, select

from stagelr_service.store import normalize_url
from stagelr_service.store.models import Base
from tests.live import LiveServer, start_server

pytestmark = pytest.mark.slow

MAX_BATCH = 50
PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("bad-input")
    live = start_server(
        f"sqlite:///{root / 'stagelr.db'}",
        root / "server.log",
        env={"STAGELR_MAX_BATCH": str(MAX_BATCH)},
    )
    yield live
    live.stop()


@pytest.fixture(scope="module")
def api(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def ids(api: httpx.Client) -> dict[str, int]:
    """A study with an open segment (two points reported), one whose segment completed,
    one whose segment failed."""
    out: dict[str, int] = {}
    for name in ("open", "completed", "failed"):
        body = {
            "name": f"bad-{name}",
            "config": {"lr_min": 1e-3, "lr_max": 1.0, "tau0": 20, "explore_ratio": 0.1},
        }
        study = api.post("/v1/studies", json=body).json()
        segment = api.post(f"/v1/studies/{study['id']}/next").json()["segment"]
        points = {"observations": [{"step": 1, "value": 2.0}, {"step": 2, "value": 1.9}]}
        api.post(f"/v1/segments/{segment['id']}/observations", json=points).raise_for_status()
        if name == "completed":
            api.post(f"/v1/segments/{segment['id']}/complete", json={}).raise_for_status()
        if name == "failed":
            api.post(f"/v1/segments/{segment['id']}/fail", json={}).raise_for_status()
        out[f"{name}_study"], out[name] = study["id"], segment["id"]
    return out


def snapshot(database_url: str) -> dict[str, list[Any]]:
    """Every row of every table, in key order."""
    engine = create_engine(normalize_url(database_url))
    try:
        with engine.connect() as conn:
            return {
                table.name: [
                    tuple(row)
                    for row in conn.execute(select(table).order_by(*table.primary_key.columns))
                ]
                for table in Base.metadata.sorted_tables
            }
    finally:
        engine.dispose()


def config(**fields: Any) -> dict[str, Any]:
    return {"name": "bad", "config": {"lr_min": 1e-3, "lr_max": 1.0, **fields}}


def points(*steps: Any, value: Any = 1.0) -> dict[str, Any]:
    return {"observations": [{"step": s, "value": value} for s in steps]}


# (method, path with {open}/{completed}/{failed}/{open_study} ids, body, status, slug)
CASES: list[Any] = [
    # ---- creating a study: LR bounds and sizes
    ("POST", "/v1/studies", config(lr_min="NaN"), 422, "validation-error"),
    ("POST", "/v1/studies", config(lr_max="Infinity"), 422, "validation-error"),
    ("POST", "/v1/studies", config(lr_min=-0.1), 422, "validation-error"),
    ("POST", "/v1/studies", config(lr_min=0), 422, "validation-error"),
    ("POST", "/v1/studies", config(lr_min=1.0, lr_max=1e-3), 422, "validation-error"),
    ("POST", "/v1/studies", config(lr_min=1e-20, lr_max=1.0), 422, "validation-error"),
    ("POST", "/v1/studies", config(total_steps=-5), 422, "validation-error"),
    ("POST", "/v1/studies", config(total_steps=10**30), 422, "validation-error"),
    ("POST", "/v1/studies", config(tau0=10**12), 422, "validation-error"),
    ("POST", "/v1/studies", config(tau0=100, tau_max=50), 422, "validation-error"),
    ("POST", "/v1/studies", config(k=0), 422, "validation-error"),
    ("POST", "/v1/studies", config(k=10**6), 422, "validation-error"),
    ("POST", "/v1/studies", config(seed=-1), 422, "validation-error"),
    ("POST", "/v1/studies", config(kappa="NaN"), 422, "validation-error"),
    ("POST", "/v1/studies", config(preset="fast"), 422, "validation-error"),
    ("POST", "/v1/studies", config(learning_rate=0.1), 422, "validation-error"),
    ("POST", "/v1/studies", {"name": "", "config": config()["config"]}, 422, "validation-error"),
    ("POST", "/v1/studies", {"name": "a b", "config": config()["config"]}, 422, "validation-error"),
    (
        "POST",
        "/v1/studies",
        {"name": "x", "project": "p" * 101, "config": config()["config"]},
        422,
        "validation-error",
    ),
    ("POST", "/v1/studies", {"name": "no-config"}, 422, "validation-error"),
    ("POST", "/v1/studies", [1, 2], 422, "validation-error"),
    (
        "POST",
        "/v1/studies",
        {
            "name": "bad-open",
            "config": {"lr_min": 1e-3, "lr_max": 1.0, "tau0": 40, "explore_ratio": 0.1},
        },
        409,
        "config-mismatch",
    ),
    # ---- ids, paging, filters
    ("GET", "/v1/studies/987654321", None, 404, "not-found"),
    ("GET", f"/v1/studies/{2**64}", None, 422, "validation-error"),
    ("GET", "/v1/studies/-1", None, 422, "validation-error"),
    ("GET", "/v1/studies/abc", None, 422, "validation-error"),
    ("POST", "/v1/studies/987654321/next", None, 404, "not-found"),
    ("POST", "/v1/studies/987654321/stop", None, 404, "not-found"),
    ("GET", "/v1/studies/987654321/segments", None, 404, "not-found"),
    ("GET", "/v1/studies/{open_study}/stages/7", None, 404, "not-found"),
    ("GET", "/v1/studies/{open_study}/stages/-1", None, 404, "not-found"),
    ("GET", "/v1/studies?offset=-1", None, 422, "validation-error"),
    ("GET", f"/v1/studies?offset={2**70}", None, 422, "validation-error"),
    ("GET", "/v1/studies?limit=0", None, 422, "validation-error"),
    ("GET", "/v1/studies?limit=100000", None, 422, "validation-error"),
    ("GET", "/v1/studies?status=sleeping", None, 422, "validation-error"),
    ("GET", "/v1/segments/987654321", None, 404, "not-found"),
    ("GET", f"/v1/segments/{2**64}/observations", None, 422, "validation-error"),
    # ---- observations
    ("POST", "/v1/segments/987654321/observations", points(1), 404, "not-found"),
    ("POST", "/v1/segments/{open}/observations", points(-1), 422, "validation-error"),
    ("POST", "/v1/segments/{open}/observations", points(10**12), 422, "validation-error"),
    ("POST", "/v1/segments/{open}/observations", points("NaN"), 422, "validation-error"),
    ("POST", "/v1/segments/{open}/observations", points(2.5), 422, "validation-error"),
    ("POST", "/v1/segments/{open}/observations", points(10_000), 422, "validation-error"),
    ("POST", "/v1/segments/{open}/observations", points(5, 3), 422, "validation-error"),
    ("POST", "/v1/segments/{open}/observations", points(4, 4), 422, "validation-error"),
    ("POST", "/v1/segments/{open}/observations", points(3, value="abc"), 422, "validation-error"),
    ("POST", "/v1/segments/{open}/observations", points(3, value=None), 422, "validation-error"),
    ("POST", "/v1/segments/{open}/observations", {"observations": []}, 422, "validation-error"),
    (
        "POST",
        "/v1/segments/{open}/observations",
        {"observations": [{"step": 3, "value": 1, "metric": "accuracy"}]},
        422,
        "validation-error",
    ),
    (
        "POST",
        "/v1/segments/{open}/observations",
        points(*range(1, MAX_BATCH + 2)),
        422,
        "validation-error",
    ),
    (
        "POST",
        "/v1/segments/{open}/observations",
        points(*range(1, 10_002)),
        422,
        "validation-error",
    ),
    (
        "POST",
        "/v1/segments/{open}/observations",
        points(1, value=5.0),
        409,
        "observation-conflict",
    ),
    ("POST", "/v1/segments/{completed}/observations", points(3), 409, "segment-closed"),
    ("POST", "/v1/segments/{failed}/observations", points(3), 409, "segment-closed"),
    # ---- complete and fail
    ("POST", "/v1/segments/{open}/complete", {"steps_done": -1}, 422, "validation-error"),
    ("POST", "/v1/segments/{open}/complete", {"steps_done": 10**6}, 422, "validation-error"),
    ("POST", "/v1/segments/{open}/complete", {"steps_done": "all"}, 422, "validation-error"),
    ("POST", "/v1/segments/{open}/complete", {"steps": 3}, 422, "validation-error"),
    ("POST", "/v1/segments/987654321/complete", {}, 404, "not-found"),
    ("POST", "/v1/segments/{failed}/complete", {}, 409, "invalid-state"),
    ("POST", "/v1/segments/{completed}/fail", {}, 409, "invalid-state"),
    ("POST", "/v1/segments/{open}/fail", {"reason": "x" * 2001}, 422, "validation-error"),
    # ---- complete-and-next: the completion's refusals, and nothing decided
    ("POST", "/v1/segments/{open}/complete-and-next", {"steps_done": -1}, 422, "validation-error"),
    (
        "POST",
        "/v1/segments/{open}/complete-and-next",
        {"steps_done": 10**6},
        422,
        "validation-error",
    ),
    (
        "POST",
        "/v1/segments/{open}/complete-and-next",
        {"steps_done": "all"},
        422,
        "validation-error",
    ),
    ("POST", "/v1/segments/{open}/complete-and-next", {"steps": 3}, 422, "validation-error"),
    ("POST", "/v1/segments/{open}/complete-and-next", [], 422, "validation-error"),
    (
        "POST",
        "/v1/segments/{open}/complete-and-next",
        {"observations": [{"step": 1, "value": 5.0}]},
        409,
        "observation-conflict",
    ),
    (
        "POST",
        "/v1/segments/{open}/complete-and-next",
        {"observations": [{"step": 10**6, "value": 1.0}]},
        422,
        "validation-error",
    ),
    (
        "POST",
        "/v1/segments/{open}/complete-and-next",
        {"observations": [{"step": 4, "value": 1.0}, {"step": 3, "value": 1.0}]},
        422,
        "validation-error",
    ),
    ("POST", "/v1/segments/987654321/complete-and-next", {}, 404, "not-found"),
    ("POST", "/v1/segments/-1/complete-and-next", {}, 422, "validation-error"),
    ("POST", "/v1/segments/{failed}/complete-and-next", {}, 409, "invalid-state"),
    (
        "POST",
        "/v1/segments/{completed}/complete-and-next",
        points(3),
        409,
        "segment-closed",
    ),
    # ---- housekeeping and the schedule export
    ("GET", "/v1/studies?name=" + "x" * 201, None, 422, "validation-error"),
    ("GET", "/v1/studies?archived=maybe", None, 422, "validation-error"),
    ("GET", "/v1/studies/987654321/schedule", None, 404, "not-found"),
    ("POST", "/v1/studies/987654321/archive", None, 404, "not-found"),
    ("POST", "/v1/studies/987654321/unarchive", None, 404, "not-found"),
    ("DELETE", "/v1/studies/987654321", None, 404, "not-found"),
    ("DELETE", "/v1/studies/-1", None, 422, "validation-error"),
    # ---- methods and routes
    ("PUT", "/v1/studies/{open_study}", None, 405, "method-not-allowed"),
    ("GET", "/v1/nothing-here", None, 404, "not-found"),
]


def case_id(case: Any) -> str:
    method, path, body, status, _ = case
    text = json.dumps(body)[:60] if body is not None else ""
    return f"{method} {path} {text} -> {status}"


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_bad_input_is_a_4xx_problem_and_changes_nothing(
    api: httpx.Client, server: LiveServer, ids: dict[str, int], case: Any
) -> None:
    method, path, body, status, slug = case
    before = snapshot(server.database_url)

    response = api.request(method, path.format(**ids), json=body)

    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    problem = response.json()
    assert problem["type"] == f"urn:stagelr:problem:{slug}"
    assert problem["status"] == status and problem["title"]
    assert len(problem["detail"]) > 10  # says what is wrong (and, mostly, what to do)
    assert snapshot(server.database_url) == before


RAW_BODIES = [
    pytest.param(
        b'{"observations": [{"step": 3, "value": 1.0}', "application/json", id="truncated-json"
    ),
    pytest.param(b"step=3&value=1.0", "application/x-www-form-urlencoded", id="form-body"),
    pytest.param(b'{"observations": [{"step": 3, "value": 1.0}]}', "text/plain", id="text-plain"),  # noqa: E501
    pytest.param(b"", "application/json", id="empty-body"),
    pytest.param(b"\xff\xfe\x00", "application/json", id="not-utf8"),
    pytest.param(
        b'{"observations": [{"step": 3, "value": NaN}]}', "application/json", id="bare-nan-token"
    ),
]


@pytest.mark.parametrize(("content", "content_type"), RAW_BODIES)
def test_malformed_bodies_are_a_422_problem_and_change_nothing(
    api: httpx.Client, server: LiveServer, ids: dict[str, int], content: bytes, content_type: str
) -> None:
    before = snapshot(server.database_url)

    response = api.post(
        f"/v1/segments/{ids['open']}/observations",
        content=content,
        headers={"Content-Type": content_type},
    )

    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    assert response.json()["detail"]
    assert snapshot(server.database_url) == before


def test_the_fixture_segments_are_as_described(api: httpx.Client, ids: dict[str, int]) -> None:
    # The cases above rely on these states; a drift here would make them test nothing.
    states = {
        name: api.get(f"/v1/segments/{ids[name]}").json()["status"]
        for name in ("open", "completed", "failed")
    }  # noqa: E501
    assert states == {"open": "open", "completed": "completed", "failed": "failed"}
    stored = api.get(f"/v1/segments/{ids['open']}/observations").json()
    assert [o["step"] for o in stored] == [1, 2]


def test_nothing_was_written_by_the_sweep(tmp_path: Path) -> None:
    # The sweep compares the whole database around each request (see snapshot); this
    # guards the comparison itself: a write must show up in it.
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    from stagelr_service.store import Store, migrate

    migrate(url)
    before = snapshot(url)
    with Store(url) as store, store.transaction() as repo:
        repo.get_or_create_project("p")
    assert snapshot(url) != before
