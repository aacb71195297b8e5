"""The HTTP API against a live `stagelr serve`: every endpoint's success and error paths."""

from __future__ import annotations

import itertools
import math

import httpx
import pytest

pytestmark = pytest.mark.slow

_names = itertools.count()
PROBLEM = "application/problem+json"


def study_body(**config: object) -> dict[str, object]:
    base: dict[str, object] = {
        "lr_min": 1e-3,
        "lr_max": 1.0,
        "tau0": 20,
        "k": 3,
        "explore_ratio": 0.1,
    }
    base.update(config)
    return {"name": f"api-{next(_names)}", "config": base}


@pytest.fixture()
def api(live_server):  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=live_server.url, timeout=30) as client:
        yield client


def create(api: httpx.Client, **config: object) -> dict:
    response = api.post("/v1/studies", json=study_body(**config))
    assert response.status_code == 201, response.text
    return response.json()


def next_segment(api: httpx.Client, study_id: int) -> dict:
    response = api.post(f"/v1/studies/{study_id}/next")
    assert response.status_code == 200, response.text
    return response.json()


def report(api: httpx.Client, segment: dict, values: list[tuple[int, float]]) -> httpx.Response:
    return api.post(
        f"/v1/segments/{segment['id']}/observations",
        json={"observations": [{"step": s, "value": v} for s, v in values]},
    )


def train(api: httpx.Client, segment: dict, level: float = 0.5) -> None:
    steps = range(segment["report_every"], segment["steps"] + 1, segment["report_every"])
    values = [(s, level + math.exp(-0.1 * s)) for s in steps]
    assert report(api, segment, values).status_code == 200
    assert api.post(f"/v1/segments/{segment['id']}/complete", json={}).status_code == 200


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["type"] == f"urn:stagelr:problem:{slug}"
    assert body["status"] == status and body["title"] and body["detail"]
    return body


# ------------------------------------------------------------------ studies


def test_create_returns_201_and_the_resolved_config(api) -> None:
    study = create(api, preset="autolrs")
    assert study["status"] == "running"
    assert study["config"]["tau_max"] == 8000 and study["config"]["acquisition"] == "lcb"


def test_create_again_with_the_same_config_returns_the_same_study(api) -> None:
    body = study_body()
    first = api.post("/v1/studies", json=body)
    second = api.post("/v1/studies", json=body)
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"]


def test_create_again_with_another_config_is_a_409(api) -> None:
    body = study_body()
    api.post("/v1/studies", json=body)
    body["config"]["k"] = 5  # type: ignore[index]
    problem = assert_problem(api.post("/v1/studies", json=body), 409, "config-mismatch")
    assert "k" in problem["detail"]


def test_create_with_reversed_lr_bounds_is_a_422_saying_so(api) -> None:
    response = api.post("/v1/studies", json=study_body(lr_min=1.0, lr_max=0.1))
    problem = assert_problem(response, 422, "validation-error")
    assert "lr_min" in problem["detail"] and "below lr_max" in problem["detail"]


def test_malformed_json_is_a_422_problem(api) -> None:
    response = api.post(
        "/v1/studies", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_problem(response, 422, "validation-error")


def test_get_study_and_unknown_study(api) -> None:
    study = create(api)
    assert api.get(f"/v1/studies/{study['id']}").json()["name"] == study["name"]
    assert_problem(api.get("/v1/studies/999999"), 404, "not-found")


def test_list_filters_by_project_and_status_and_pages(api) -> None:
    body = study_body()
    body["project"] = "listing"
    for i in range(3):
        api.post("/v1/studies", json={**body, "name": f"list-{i}"})
    page = api.get("/v1/studies", params={"project": "listing", "limit": 2}).json()
    assert page["total"] == 3 and len(page["studies"]) == 2
    rest = api.get("/v1/studies", params={"project": "listing", "limit": 2, "offset": 2}).json()
    assert len(rest["studies"]) == 1
    stopped = api.get("/v1/studies", params={"project": "listing", "status": "stopped"}).json()
    assert stopped["total"] == 0
    assert_problem(api.get("/v1/studies", params={"limit": 0}), 422, "validation-error")


def test_stop_ends_the_study(api) -> None:
    study = create(api)
    stopped = api.post(f"/v1/studies/{study['id']}/stop").json()
    assert stopped["status"] == "stopped"
    assert next_segment(api, study["id"]) == {"status": "stopped", "segment": None}


# ------------------------------------------------------------------ segments


def test_next_gives_the_first_candidate_with_its_instructions(api) -> None:
    study = create(api)
    answer = next_segment(api, study["id"])
    segment = answer["segment"]
    assert answer["status"] == "running"
    assert segment["kind"] == "explore" and segment["stage"] == 0 and segment["index"] == 0
    assert segment["steps"] == 2 and segment["save_start"] == "stage-0"
    assert 1e-3 <= segment["lr"] <= 1.0


def test_next_returns_the_open_segment_again(api) -> None:
    study = create(api)
    first = next_segment(api, study["id"])["segment"]
    again = next_segment(api, study["id"])["segment"]
    # The same segment; only its heartbeat moved (asking again is a sign of life).
    assert again.pop("heartbeat_at") >= first.pop("heartbeat_at")
    assert again == first


def test_next_on_unknown_study_is_404(api) -> None:
    assert_problem(api.post("/v1/studies/999999/next"), 404, "not-found")


def test_observations_are_accepted_and_a_retry_is_a_no_op(api) -> None:
    segment = next_segment(api, create(api)["id"])["segment"]
    first = report(api, segment, [(1, 2.0), (2, 1.5)]).json()
    retry = report(api, segment, [(1, 2.0), (2, 1.5)]).json()
    assert first == {"accepted": 2, "duplicates": 0, "stop": False}
    assert retry == {"accepted": 0, "duplicates": 2, "stop": False}


def test_a_different_value_for_a_stored_step_is_a_409_and_stores_nothing(api) -> None:
    segment = next_segment(api, create(api)["id"])["segment"]
    report(api, segment, [(1, 2.0)])
    assert_problem(report(api, segment, [(1, 3.0), (2, 1.0)]), 409, "observation-conflict")
    assert report(api, segment, [(2, 1.0)]).json()["accepted"] == 1


def test_observations_are_listed_by_step_with_nan_kept(api) -> None:
    segment = next_segment(api, create(api)["id"])["segment"]
    report(api, segment, [(1, 2.0), (2, 1.5)])
    api.post(
        f"/v1/segments/{segment['id']}/observations",
        json={"observations": [{"step": 2, "value": 9.0, "metric": "train_loss"}]},
    )
    listed = api.get(f"/v1/segments/{segment['id']}/observations").json()
    assert [(o["step"], o["metric"], o["value"]) for o in listed] == [
        (1, "val_loss", 2.0),
        (2, "train_loss", 9.0),
        (2, "val_loss", 1.5),
    ]
    assert_problem(api.get("/v1/segments/999999/observations"), 404, "not-found")


def test_a_nan_observation_reads_back_as_nan(api) -> None:
    segment = next_segment(api, create(api)["id"])["segment"]
    api.post(
        f"/v1/segments/{segment['id']}/observations",
        json={"observations": [{"step": 1, "value": "NaN"}, {"step": 2, "value": "Infinity"}]},
    )
    listed = api.get(f"/v1/segments/{segment['id']}/observations").json()
    assert [o["value"] for o in listed] == ["NaN", "Infinity"]


def test_a_step_beyond_the_segment_is_a_422(api) -> None:
    segment = next_segment(api, create(api)["id"])["segment"]
    problem = assert_problem(report(api, segment, [(99, 1.0)]), 422, "validation-error")
    assert "beyond" in problem["detail"]


def test_observations_for_unknown_segment_are_404(api) -> None:
    response = api.post(
        "/v1/segments/999999/observations", json={"observations": [{"step": 1, "value": 1.0}]}
    )
    assert_problem(response, 404, "not-found")


def test_empty_observation_batch_is_a_422(api) -> None:
    segment = next_segment(api, create(api)["id"])["segment"]
    response = api.post(f"/v1/segments/{segment['id']}/observations", json={"observations": []})
    assert_problem(response, 422, "validation-error")


def test_nan_on_a_default_candidate_asks_to_stop_and_marks_it_diverged(api) -> None:
    segment = next_segment(api, create(api)["id"])["segment"]
    response = api.post(
        f"/v1/segments/{segment['id']}/observations",
        json={"observations": [{"step": 1, "value": "NaN"}]},
    )
    assert response.json()["stop"] is True
    done = api.post(f"/v1/segments/{segment['id']}/complete", json={"steps_done": 1}).json()
    assert done["status"] == "diverged" and done["steps_done"] == 1


def test_complete_is_idempotent(api) -> None:
    segment = next_segment(api, create(api)["id"])["segment"]
    report(api, segment, [(1, 2.0), (2, 1.5)])
    first = api.post(f"/v1/segments/{segment['id']}/complete", json={})
    second = api.post(f"/v1/segments/{segment['id']}/complete", json={})
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert first.json()["status"] == "completed" and first.json()["steps_done"] == 2


def test_complete_with_more_steps_than_asked_is_a_422(api) -> None:
    segment = next_segment(api, create(api)["id"])["segment"]
    response = api.post(f"/v1/segments/{segment['id']}/complete", json={"steps_done": 50})
    assert_problem(response, 422, "validation-error")


def test_new_points_on_a_completed_segment_are_a_409_but_retries_are_fine(api) -> None:
    segment = next_segment(api, create(api)["id"])["segment"]
    report(api, segment, [(2, 1.5)])
    api.post(f"/v1/segments/{segment['id']}/complete", json={})
    assert report(api, segment, [(2, 1.5)]).json()["duplicates"] == 1
    assert_problem(report(api, segment, [(1, 2.0), (2, 1.5)]), 409, "segment-closed")


def test_fail_is_idempotent_and_a_failed_segment_cannot_complete(api) -> None:
    segment = next_segment(api, create(api)["id"])["segment"]
    url = f"/v1/segments/{segment['id']}"
    first = api.post(url + "/fail", json={"reason": "out of memory"})
    assert first.status_code == 200 and first.json()["status"] == "failed"
    assert api.post(url + "/fail", json={}).json() == first.json()
    assert_problem(api.post(url + "/complete", json={}), 409, "invalid-state")


def test_a_completed_segment_cannot_fail(api) -> None:
    segment = next_segment(api, create(api)["id"])["segment"]
    api.post(f"/v1/segments/{segment['id']}/complete", json={})
    assert_problem(api.post(f"/v1/segments/{segment['id']}/fail", json={}), 409, "invalid-state")


def test_get_segment_and_unknown_segment(api) -> None:
    segment = next_segment(api, create(api)["id"])["segment"]
    assert api.get(f"/v1/segments/{segment['id']}").json() == segment
    assert_problem(api.get("/v1/segments/999999"), 404, "not-found")
    assert_problem(api.post("/v1/segments/999999/complete", json={}), 404, "not-found")
    assert_problem(api.post("/v1/segments/999999/fail", json={}), 404, "not-found")


# ------------------------------------------------------------------ a whole stage


def test_a_stage_runs_k_candidates_then_trains_the_best(api) -> None:
    # constant-LR windows restored to the stage start (the annealed default continues
    # its winner instead: tests/tuner/test_annealed_probe.py)
    study = create(api, preset="default-v1")
    explores = []
    for _ in range(3):
        segment = next_segment(api, study["id"])["segment"]
        assert segment["kind"] == "explore"
        train(api, segment, level=abs(math.log10(segment["lr"] / 0.05)))
        explores.append(segment)
    exploit = next_segment(api, study["id"])["segment"]
    assert exploit["kind"] == "exploit" and exploit["steps"] == 20
    assert exploit["restore"] == "stage-0" and exploit["discard"] == ["stage-0"]
    best = min(explores, key=lambda s: abs(math.log10(s["lr"] / 0.05)))
    assert exploit["lr"] == best["lr"]

    detail = api.get(f"/v1/studies/{study['id']}/stages/0").json()
    assert [c["lr"] for c in detail["candidates"]] == [s["lr"] for s in explores]
    assert all(c["forecast"]["prediction"] is not None for c in detail["candidates"])
    assert all(len(c["observations"]) == 2 for c in detail["candidates"])
    assert detail["chosen_lr"] == exploit["lr"]
    assert len(detail["posterior"]) == 101
    assert all(p["std"] >= 0 for p in detail["posterior"])

    train(api, exploit)
    view = api.get(f"/v1/studies/{study['id']}").json()
    assert view["trajectory_steps"] == 20 and view["charged_steps"] == 3 * 2 + 20
    assert view["schedule"] == [[0, exploit["lr"]]]
    assert view["stages"][0]["status"] == "completed"


def test_segments_of_a_study_are_listed_in_order(api) -> None:
    study = create(api)
    first = next_segment(api, study["id"])["segment"]
    train(api, first)
    second = next_segment(api, study["id"])["segment"]
    listed = api.get(f"/v1/studies/{study['id']}/segments").json()
    assert [s["id"] for s in listed] == [first["id"], second["id"]]
    assert [s["status"] for s in listed] == ["completed", "open"]
    assert_problem(api.get("/v1/studies/999999/segments"), 404, "not-found")


def test_stage_detail_of_a_stage_not_reached_is_404(api) -> None:
    study = create(api)
    assert_problem(api.get(f"/v1/studies/{study['id']}/stages/3"), 404, "not-found")


def test_a_study_with_a_budget_completes(api) -> None:
    study = create(api, total_steps=20, k=1, decay_fraction=0.0)
    for _ in range(3):  # the window, its check, the training segment
        train(api, next_segment(api, study["id"])["segment"])
    assert next_segment(api, study["id"]) == {"status": "completed", "segment": None}
    assert api.get(f"/v1/studies/{study['id']}").json()["status"] == "completed"


# ------------------------------------------------------------------ ops


def test_healthz(api) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}


def test_readyz_names_the_schema_revision(api) -> None:
    answer = api.get("/readyz")
    assert answer.status_code == 200
    assert answer.json()["status"] == "ready" and answer.json()["schema"]


def test_openapi_schema_and_docs_are_served(api) -> None:
    schema = api.get("/openapi.json").json()
    assert "/v1/studies/{study_id}/next" in schema["paths"]
    assert api.get("/docs").status_code == 200


def test_unknown_route_is_a_404_problem(api) -> None:
    assert_problem(api.get("/v1/nothing-here"), 404, "not-found")


def test_a_completion_stores_the_observations_it_carries_first(api) -> None:
    study = create(api)
    segment = next_segment(api, study["id"])["segment"]
    steps = segment["steps"]
    points = [{"step": s, "value": 1.0 / s} for s in range(1, steps + 1)]
    assert report(api, segment, [(1, 1.0)]).status_code == 200  # one already stored
    url = f"/v1/segments/{segment['id']}/complete"
    done = api.post(url, json={"observations": points})
    assert done.status_code == 200 and done.json()["status"] == "completed"
    stored = api.get(f"/v1/segments/{segment['id']}/observations").json()
    assert [(o["step"], o["value"]) for o in stored] == [(p["step"], p["value"]) for p in points]
    # The forecast saw every point: it was fitted on all of them.
    stage = api.get(f"/v1/studies/{study['id']}/stages/0").json()
    (candidate,) = [c for c in stage["candidates"] if c["segment_id"] == segment["id"]]
    assert candidate["forecast"]["n_points"] == steps
    # A retry of the same completion changes nothing.
    again = api.post(url, json={"observations": points})
    assert again.status_code == 200 and again.json() == done.json()


def test_a_completion_carrying_a_conflicting_point_is_a_409_and_closes_nothing(api) -> None:
    study = create(api)
    segment = next_segment(api, study["id"])["segment"]
    assert report(api, segment, [(1, 1.0)]).status_code == 200
    url = f"/v1/segments/{segment['id']}/complete"
    refused = api.post(url, json={"observations": [{"step": 1, "value": 2.0}]})
    assert_problem(refused, 409, "observation-conflict")
    assert api.get(f"/v1/segments/{segment['id']}").json()["status"] == "open"


# ------------------------------------------------------------------ the plan (issue 7)


def test_the_plan_is_shown_before_training_and_tracks_what_ran(api) -> None:
    study = create(
        api, total_steps=1000, k=3, planner="budget", decay_fraction=0.2, continue_best=True
    )
    plan = api.get(f"/v1/studies/{study['id']}/plan")
    assert plan.status_code == 200, plan.text
    body = plan.json()
    assert body["planner"] == "budget" and body["total_steps"] == 1000 and not body["open_ended"]
    kinds = [st["kind"] for st in body["stages"]]
    assert kinds == ["search", "search", "search", "decay"]
    assert sum(st["tau"] for st in body["stages"]) == 1000
    assert all(st["status"] == "planned" and st["actual_charge"] == 0 for st in body["stages"])
    assert body["planned_charge"] == sum(st["planned_charge"] for st in body["stages"])

    segment = next_segment(api, study["id"])["segment"]
    train(api, segment)
    after = api.get(f"/v1/studies/{study['id']}/plan").json()
    first = after["stages"][0]
    assert first["status"] == "searching" and first["actual_charge"] == segment["steps"]
    assert after["actual_charge"] == segment["steps"]


def test_a_decay_segment_carries_its_lr_shape(api) -> None:
    study = create(
        api,
        total_steps=200,
        k=1,
        planner="budget",
        budget_stages=1,
        decay_fraction=0.5,
        continue_best=True,
        probe="constant",  # a constant-LR window (an annealed one is shaped wsd)
    )
    explore = next_segment(api, study["id"])["segment"]
    assert explore["lr_shape"] == "constant" and explore["lr_end"] is None
    train(api, explore)
    exploit = next_segment(api, study["id"])["segment"]
    assert exploit["kind"] == "exploit" and exploit["restore"] == "stage-0-candidate-0"
    train(api, exploit)
    decay = next_segment(api, study["id"])["segment"]
    assert decay["lr_shape"] == "one_minus_sqrt" and decay["lr_end"] == 0.0
    assert decay["steps"] == 100 and decay["start_step"] == 100
    assert decay["lr"] == exploit["lr"]


def test_the_plan_of_an_unknown_study_is_404(api) -> None:
    assert_problem(api.get("/v1/studies/999999/plan"), 404, "not-found")


def test_a_constant_decay_shape_is_refused_naming_the_fix(api) -> None:
    response = api.post("/v1/studies", json=study_body(decay_shape="constant"))
    body = assert_problem(response, 422, "validation-error")
    assert "decay_fraction" in body["detail"]
