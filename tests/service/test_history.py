"""Learning from history: priors named by a family or by id, fixed at creation, used by
the tuner's narrow first search, with a fallback when they do not fit; through a live
server and the real client."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import httpx
import pytest

import stagelr
from stagelr.models import PriorUse, StudyCreate, StudyStatus
from stagelr_service import exchange
from stagelr_service.errors import InputError
from stagelr_service.store import Store, migrate
from stagelr_service.studies import StudyService
from stagelr_service.testing.simulation import SyntheticJob, drive_tuner
from tests.live import LiveServer, run_cli, start_server
from tests.replay.test_replay import CONFIG as REPLAY_CONFIG
from tests.replay.test_replay import record_study
from tests.store_fixtures import BACKENDS, fresh_database

CONFIG = {"lr_min": 1e-3, "lr_max": 1.0, "charged_steps": 3000, "tau0": 1000}


def search_steps(client: stagelr.Client, study_id: int) -> int:
    """Steps charged by the study's candidates (its search)."""
    return sum(
        s.steps_done if s.steps_done is not None else s.steps
        for s in client.list_segments(study_id)
        if s.kind == "explore"
    )


def run_job(url: str, name: str, job: SyntheticJob, **config: object) -> stagelr.models.StudyView:
    with stagelr.Tuner(url, study=name, **{**CONFIG, **config}) as client_tuner:  # type: ignore[arg-type]
        record = drive_tuner(client_tuner, job)
        assert record.status is StudyStatus.completed
        return client_tuner.study()


def test_a_second_job_of_a_family_searches_less_and_records_its_priors(
    live_server: LiveServer,
) -> None:
    first = run_job(live_server.url, "fam-1", SyntheticJob(seed=3), family="mlp", seed=3)
    assert first.config.family == "mlp"
    # the shipped preset: the annealed model (annealed probes, the chosen one continued)
    assert first.config.preset == "default"
    assert first.config.probe == "anneal" and first.config.continue_best
    assert first.priors is not None and first.priors.use is PriorUse.unused
    assert first.priors.reason == "no completed prior study"
    second = run_job(live_server.url, "fam-2", SyntheticJob(seed=2), family="mlp", seed=2)
    client = stagelr.Client(live_server.url)
    cold, warm = search_steps(client, first.id), search_steps(client, second.id)
    # the narrow search: 3 candidates of half a window against 6 full ones
    assert warm * 3 <= cold, (warm, cold)
    assert warm <= 0.03 * CONFIG["charged_steps"]
    priors = second.priors
    assert priors is not None and priors.use is PriorUse.used
    assert [s.id for s in priors.studies] == [first.id] and priors.studies[0].fits
    # one LR measured so far: the second job measures a step cooler, and trains it
    assert priors.basis == "explore"
    assert priors.lr == pytest.approx(first.stages[0].chosen_lr / 10**0.3)  # type: ignore[operator]
    assert second.stages[0].chosen_lr == pytest.approx(priors.lr)
    assert len(priors.candidates) == 3 and priors.summary_hash
    assert "the priors held one LR" in priors.reason
    # what the search saved became trajectory; the whole run still fits the budget
    assert second.config.total_steps > first.config.total_steps  # type: ignore[operator]
    assert second.charged_steps <= CONFIG["charged_steps"]
    # the list filters by family
    listed = client.list_studies(family="mlp")
    assert {s.id for s in listed.studies} == {first.id, second.id}
    assert client.list_studies(family="other").total == 0
    # with the name search and archiving
    assert [s.id for s in client.list_studies(family="mlp", name="FAM-2").studies] == [second.id]
    assert client.list_studies(family="other", name="fam").total == 0
    client.archive_study(first.id)
    assert [s.id for s in client.list_studies(family="mlp").studies] == [second.id]
    assert [s.id for s in client.list_studies(family="mlp", archived=True).studies] == [first.id]
    archived_rows = httpx.get(f"{live_server.url}/dashboard?family=mlp&archived=1").text
    assert "1 archived study" in archived_rows and "family <strong>mlp</strong>" in archived_rows
    client.archive_study(first.id, archived=False)
    # the dashboard shows them
    page = httpx.get(f"{live_server.url}/dashboard/studies/{second.id}").text
    assert "Priors" in page and "fam-1" in page and "used" in page
    rows = httpx.get(f"{live_server.url}/dashboard?family=mlp").text
    assert "fam-1" in rows and "fam-2" in rows and "2 studies" in rows
    assert "family <strong>mlp</strong>" in rows
    # the name search keeps the family filter
    assert '<input type="hidden" name="family" value="mlp">' in rows
    searched = httpx.get(f"{live_server.url}/dashboard?family=mlp&q=fam-1").text
    assert "1 study" in searched and "fam-2" not in searched
    # a repeated create with the same request finds the same study
    again = run_job(live_server.url, "fam-2", SyntheticJob(seed=2), family="mlp", seed=2)
    assert again.id == second.id
    client.close()


def test_priors_that_held_different_lrs_centre_on_their_final_losses(
    live_server: LiveServer,
) -> None:
    # Two earlier jobs held LRs far apart (their own searches found about 0.009 and 0.09).
    cool = run_job(live_server.url, "spread-1", SyntheticJob(seed=1, best_lr=0.002), seed=1)
    hot = run_job(live_server.url, "spread-2", SyntheticJob(seed=4, best_lr=0.2), seed=4)
    lrs = [cool.stages[0].chosen_lr, hot.stages[0].chosen_lr]
    assert max(lrs) / min(lrs) > 1.5, lrs  # type: ignore[type-var, operator]
    study = run_job(
        live_server.url, "spread-3", SyntheticJob(seed=5), prior_studies=[cool.id, hot.id], seed=5
    )
    priors = study.priors
    assert priors is not None and priors.basis == "final_loss" and priors.lr is not None
    assert min(lrs) / 2.1 <= priors.lr <= max(lrs) * 2.1  # type: ignore[type-var, operator]
    finals = {s.id: s.final_loss for s in priors.studies}
    assert set(finals) == {cool.id, hot.id} and all(f is not None for f in finals.values())
    page = httpx.get(f"{live_server.url}/dashboard/studies/{study.id}").text
    assert "final losses is lowest" in page
    # a family whose jobs held one LR measures a step cooler, and says so
    first = run_job(live_server.url, "one-1", SyntheticJob(seed=3), family="one", seed=3)
    second = run_job(live_server.url, "one-2", SyntheticJob(seed=2), family="one", seed=2)
    assert second.priors is not None and second.priors.basis == "explore"
    assert second.priors.lr == pytest.approx(first.stages[0].chosen_lr / 10**0.3)  # type: ignore[operator]
    page = httpx.get(f"{live_server.url}/dashboard/studies/{second.id}").text
    assert "a step cooler than the one LR the priors held" in page


def test_a_prior_that_does_not_fit_falls_back_to_a_full_search_within_the_budget(
    live_server: LiveServer,
) -> None:
    prior = run_job(live_server.url, "misfit-1", SyntheticJob(seed=3), family="misfit", seed=3)
    # another workload: a loss ten times higher from the start
    other = SyntheticJob(seed=4, start_loss=25.0)
    study = run_job(live_server.url, "misfit-2", other, prior_studies=[prior.id], seed=4)
    priors = study.priors
    assert priors is not None and priors.use is PriorUse.fallback
    assert "far from the priors'" in priors.reason
    client = stagelr.Client(live_server.url)
    segments = client.list_segments(study.id)
    explores = [s for s in segments if s.stage == 0 and s.kind == "explore"]
    client.close()
    assert len(explores) == 3 + 6  # the narrow search, then the full one
    assert study.charged_steps <= CONFIG["charged_steps"]


def test_a_fingerprint_that_differs_uses_no_prior(live_server: LiveServer) -> None:
    prior = run_job(live_server.url, "fp-1", SyntheticJob(seed=5), family="fp", seed=5)
    study = run_job(live_server.url, "fp-2", SyntheticJob(seed=6), family="fp", seed=6, lr_max=2.0)
    priors = study.priors
    assert priors is not None and priors.use is PriorUse.unused
    assert [s.id for s in priors.studies] == [prior.id] and not priors.studies[0].fits
    assert "fingerprint" in priors.reason


def test_a_named_prior_must_be_a_completed_study_of_the_project(live_server: LiveServer) -> None:
    with httpx.Client(base_url=live_server.url) as api:
        running = api.post("/v1/studies", json={"name": "still-running", "config": CONFIG}).json()
        r = api.post(
            "/v1/studies",
            json={"name": "names-running", "config": {**CONFIG, "prior_studies": [running["id"]]}},
        )
    assert r.status_code == 422
    assert f"prior study {running['id']} is not a completed study" in r.json()["detail"]


def test_replay_verify_holds_after_the_priors_are_deleted(tmp_path: Path) -> None:
    db = tmp_path / "stagelr.db"
    server = start_server(f"sqlite:///{db}", tmp_path / "server.log")
    try:
        prior = run_job(server.url, "del-1", SyntheticJob(seed=9), family="del", seed=9)
        study = run_job(server.url, "del-2", SyntheticJob(seed=8), family="del", seed=8)
        assert study.priors is not None and study.priors.use is PriorUse.used
    finally:
        server.stop()
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("DELETE FROM studies WHERE id = ?", (prior.id,))
    env = {"STAGELR_DATABASE_URL": f"sqlite:///{db}"}
    report = tmp_path / "verify.json"
    # the CLI selects by family: the prior is gone, the study remains
    done = run_cli("replay", "verify", "--family", "del", "--report", str(report), env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    verified = json.loads(report.read_text())
    assert [s["study_id"] for s in verified["studies"]] == [study.id]
    assert verified["studies"][0]["ok"] and verified["studies"][0]["decisions"] >= 5
    exported = tmp_path / "del.jsonl"
    done = run_cli("export", "--family", "del", "-o", str(exported), env=env)
    assert done.returncode == 0, done.stderr
    header, line = exported.read_text().splitlines()
    assert json.loads(header)["version"] == exchange.VERSION
    record = json.loads(line)
    assert record["config"]["family"] == "del"
    assert [s["id"] for s in record["priors"]["studies"]] == [prior.id]
    what_if = tmp_path / "what-if.json"
    without = run_cli(
        "replay",
        "what-if",
        "--id",
        str(study.id),
        "--without-priors",
        "--report",
        str(what_if),
        env=env,
    )
    assert without.returncode == 0, without.stdout + without.stderr
    replayed = json.loads(what_if.read_text())["studies"][0]
    assert replayed["without_priors"] is True
    # without its priors the first stage searches in full: other candidates
    first = replayed["stages"][0]
    assert len(first["candidates"]) == 6 and len(first["recorded_lrs"]) == 3


def test_another_projects_study_is_never_a_prior(tmp_path: Path) -> None:
    from tests.api.test_auth import bearer, token_for

    server = start_server(
        f"sqlite:///{tmp_path / 'stagelr.db'}",
        tmp_path / "server.log",
        env={"STAGELR_AUTH": "required", "STAGELR_AUTH_CACHE_SECONDS": "0"},
    )
    try:
        vision, speech = token_for(server, "vision"), token_for(server, "speech")
        with stagelr.Tuner(
            server.url, study="theirs", token=speech, family="shared", **CONFIG
        ) as theirs:
            drive_tuner(theirs, SyntheticJob(seed=9))
            their_id = theirs.study_id
        # by family: the other project's completed study of the same family is not read
        with stagelr.Tuner(
            server.url, study="mine", token=vision, family="shared", **CONFIG
        ) as mine:
            view = mine.connect()
        assert view.priors is not None and view.priors.studies == []
        assert view.priors.use is PriorUse.unused
        # by id: refused exactly as a missing study would be
        r = httpx.post(
            server.url + "/v1/studies",
            json={"name": "mine-2", "config": {**CONFIG, "prior_studies": [their_id]}},
            headers=bearer(vision),
        )
        assert r.status_code == 422
        assert (
            f"prior study {their_id} is not a completed study of project 'vision'"
            in (r.json()["detail"])
        )
    finally:
        server.stop()


@pytest.mark.parametrize("backend", BACKENDS)
def test_priors_on_both_stores(backend: str, tmp_path: Path, optimizer) -> None:  # type: ignore[no-untyped-def]
    """The store's prior query (a family's most recent completed studies, named ids of
    the project) and the stored summary, on SQLite and PostgreSQL."""
    config = REPLAY_CONFIG.model_copy(update={"family": "pg"})
    with fresh_database(backend, tmp_path) as url:
        migrate(url)
        with Store(url) as store:
            service = StudyService(store, optimizer, max_priors=2)
            ids = [record_study(service, f"pg-{i}", config, SyntheticJob(seed=i)) for i in range(3)]
            other = record_study(service, "elsewhere", config, SyntheticJob(seed=9), "other")
            warm, _ = service.create_study(StudyCreate(name="pg-next", config=config))
            named, _ = service.create_study(
                StudyCreate(
                    name="pg-named",
                    config=REPLAY_CONFIG.model_copy(update={"prior_studies": [ids[0]]}),
                )
            )
            with pytest.raises(InputError, match=f"prior study {other} is not a completed"):
                service.create_study(
                    StudyCreate(
                        name="pg-other",
                        config=REPLAY_CONFIG.model_copy(update={"prior_studies": [other]}),
                    )
                )
            with pytest.raises(InputError, match="at most 2"):
                service.create_study(
                    StudyCreate(
                        name="pg-many",
                        config=REPLAY_CONFIG.model_copy(update={"prior_studies": ids}),
                    )
                )
            listed = service.list_studies(project="default", family="pg")
    assert warm.priors is not None and named.priors is not None
    # at most max_priors, the most recent first; the other project's study never
    assert [s.id for s in warm.priors.studies] == [ids[2], ids[1]]
    assert [s.id for s in named.priors.studies] == [ids[0]]
    assert {s.id for s in listed.studies} == {*ids, warm.id}
