"""Auth: project tokens, stored hashed, that open one project's studies and nothing else."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

import stagelr
from stagelr_service.errors import InputError, NotFoundError, UnauthorizedError
from stagelr_service.store import Store, migrate
from stagelr_service.testing.simulation import SyntheticJob
from stagelr_service.tokens import Tokens, hash_token
from tests.live import LiveServer, run_cli, start_server

PROBLEM = "application/problem+json"


# --------------------------------------------------------------------------- tokens


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'tokens.db'}"
    migrate(url)
    store = Store(url)
    yield store
    store.close()


def test_a_token_opens_its_project_and_only_its_digest_is_stored(store: Store) -> None:
    tokens = Tokens(store)
    record, secret = tokens.create("vision", "ci")
    assert secret.startswith("stg_") and len(secret) > 40
    assert record.prefix == secret[:12] and record.project == "vision"
    assert tokens.project_of(secret) == "vision"
    with store.transaction(read_only=True) as repo:
        found = repo.token_by_hash(hash_token(secret))
    assert found is not None and found[1] == hash_token(secret) != secret


def test_unknown_missing_and_revoked_tokens_are_refused(store: Store) -> None:
    clock = FakeClock()
    tokens = Tokens(store, cache_seconds=5, clock=clock)
    record, secret = tokens.create("vision")
    for bad in (None, "", "stg_not-a-token", secret + "x"):
        with pytest.raises(UnauthorizedError, match="stagelr token create"):
            tokens.project_of(bad)
    assert tokens.project_of(secret) == "vision"
    tokens.revoke(record.id)
    with pytest.raises(UnauthorizedError, match="revoked"):
        tokens.project_of(secret)
    assert tokens.list_tokens("vision")[0].revoked_at is not None


def test_a_checked_token_is_trusted_for_the_cache_interval_only(store: Store) -> None:
    clock = FakeClock()
    tokens = Tokens(store, cache_seconds=5, clock=clock)
    other = Tokens(store)  # another replica revokes it
    record, secret = tokens.create("vision")
    assert tokens.cached_project(secret) is None  # never checked: the caller asks the store
    assert tokens.project_of(secret) == "vision"
    other.revoke(record.id)
    clock.now = 4.9
    assert tokens.project_of(secret) == "vision"  # cached
    # What the API's dependency answers on the event loop, without the store.
    assert tokens.cached_project(secret) == "vision"
    assert tokens.cached_project(secret + "x") is tokens.cached_project(None) is None
    clock.now = 5.1
    assert tokens.cached_project(secret) is None
    with pytest.raises(UnauthorizedError):
        tokens.project_of(secret)


def test_token_use_is_recorded(store: Store) -> None:
    tokens = Tokens(store, cache_seconds=0)
    record, secret = tokens.create("nlp")
    assert tokens.list_tokens()[0].last_used_at is None
    before = datetime.now(timezone.utc)
    tokens.project_of(secret)
    used = tokens.list_tokens("nlp")[0].last_used_at
    assert used is not None and used >= before.replace(microsecond=0)


def test_bad_project_names_and_unknown_ids_are_clear_errors(store: Store) -> None:
    tokens = Tokens(store)
    with pytest.raises(InputError, match="project name"):
        tokens.create("no spaces please")
    with pytest.raises(NotFoundError, match="stagelr token list"):
        tokens.revoke(999)


# --------------------------------------------------------------------------- CLI


def test_the_cli_creates_lists_and_revokes_tokens_and_keeps_no_secret(tmp_path: Path) -> None:
    env = {"STAGELR_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}"}
    assert run_cli("migrate", env=env).returncode == 0
    made = run_cli("token", "create", "--project", "vision", "--name", "ci", env=env)
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert secret.startswith("stg_")
    assert "shown only now" in made.stderr

    listed = run_cli("token", "list", env=env)
    assert listed.returncode == 0
    assert "vision" in listed.stdout and secret[:12] in listed.stdout
    assert secret not in listed.stdout
    # The database file holds the digest, never the token.
    raw = (tmp_path / "cli.db").read_bytes()
    assert secret.encode() not in raw
    with sqlite3.connect(tmp_path / "cli.db") as db:
        assert db.execute("SELECT token_hash FROM tokens").fetchone()[0] == hash_token(secret)

    token_id = listed.stdout.split("\t")[0]
    assert run_cli("token", "revoke", token_id, env=env).returncode == 0
    assert "revoked" in run_cli("token", "list", env=env).stdout
    missing = run_cli("token", "revoke", "4242", env=env)
    assert missing.returncode == 2 and "stagelr token list" in missing.stderr


def test_the_cli_refuses_an_unmigrated_database_with_the_fix(tmp_path: Path) -> None:
    env = {"STAGELR_DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}"}
    done = run_cli("token", "create", "--project", "vision", env=env)
    assert done.returncode == 2 and "stagelr migrate" in done.stderr


# --------------------------------------------------------------------------- live server


@pytest.fixture(scope="module")
def secure_server(tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("auth")
    url = f"sqlite:///{root / 'stagelr.db'}"
    server = start_server(
        url,
        root / "server.log",
        env={"STAGELR_AUTH": "required", "STAGELR_AUTH_CACHE_SECONDS": "0"},
    )
    yield server
    server.stop()


def token_for(server: LiveServer, project: str) -> str:
    done = run_cli(
        "token", "create", "--project", project, env={"STAGELR_DATABASE_URL": server.database_url}
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


STUDY = {"name": "resnet", "config": {"lr_min": 1e-3, "lr_max": 1.0, "total_steps": 400}}


def test_without_a_token_every_v1_request_is_a_401_problem(secure_server: LiveServer) -> None:
    for method, path in (
        ("GET", "/v1/studies"),
        ("POST", "/v1/studies"),
        ("GET", "/v1/studies/1"),
        ("POST", "/v1/studies/1/next"),
        ("POST", "/v1/segments/1/observations"),
    ):
        r = httpx.request(method, secure_server.url + path, json={})
        assert r.status_code == 401, (method, path, r.text)
        assert r.headers["content-type"].startswith(PROBLEM)
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert r.json()["type"] == "urn:stagelr:problem:unauthorized"
        assert "stagelr token create" in r.json()["detail"]
    bad = httpx.get(secure_server.url + "/v1/studies", headers=bearer("stg_forged"))
    assert bad.status_code == 401 and "not valid" in bad.json()["detail"]
    basic = httpx.get(secure_server.url + "/v1/studies", auth=("user", "pw"))
    assert basic.status_code == 401


def test_health_probes_need_no_token(secure_server: LiveServer) -> None:
    assert httpx.get(secure_server.url + "/healthz").status_code == 200
    assert httpx.get(secure_server.url + "/readyz").status_code == 200


def test_a_study_is_visible_only_with_its_projects_token(secure_server: LiveServer) -> None:
    mine, theirs = token_for(secure_server, "vision"), token_for(secure_server, "speech")
    created = httpx.post(secure_server.url + "/v1/studies", json=STUDY, headers=bearer(mine))
    assert created.status_code == 201, created.text
    study = created.json()
    assert study["project"] == "vision"  # the token's project, since none was named
    sid = study["id"]
    segment = httpx.post(f"{secure_server.url}/v1/studies/{sid}/next", headers=bearer(mine)).json()[
        "segment"
    ]

    base = secure_server.url
    point = {"step": 1, "value": 1.0}
    for method, path, body in (
        ("GET", f"/v1/studies/{sid}", None),
        ("POST", f"/v1/studies/{sid}/next", None),
        ("POST", f"/v1/studies/{sid}/stop", None),
        ("GET", f"/v1/studies/{sid}/segments", None),
        ("GET", f"/v1/studies/{sid}/stages/0", None),
        ("GET", f"/v1/segments/{segment['id']}", None),
        ("GET", f"/v1/segments/{segment['id']}/observations", None),
        (
            "POST",
            f"/v1/segments/{segment['id']}/observations",
            {"observations": [point]},
        ),
        ("POST", f"/v1/segments/{segment['id']}/complete", {}),
        ("POST", f"/v1/segments/{segment['id']}/complete-and-next", {}),
        ("POST", f"/v1/segments/{segment['id']}/fail", {}),
    ):
        r = httpx.request(method, base + path, json=body, headers=bearer(theirs))
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["type"] == "urn:stagelr:problem:not-found"

    # Nothing the other project tried changed the study.
    again = httpx.get(f"{base}/v1/studies/{sid}", headers=bearer(mine)).json()
    assert again["status"] == "running"
    seg = httpx.get(f"{base}/v1/segments/{segment['id']}", headers=bearer(mine)).json()
    assert seg["status"] == "open"

    listed = httpx.get(base + "/v1/studies", headers=bearer(theirs)).json()
    assert all(s["project"] == "speech" for s in listed["studies"])
    asked = httpx.get(base + "/v1/studies?project=vision", headers=bearer(theirs)).json()
    assert asked == {"studies": [], "total": 0}
    assert sid in [
        s["id"] for s in httpx.get(base + "/v1/studies", headers=bearer(mine)).json()["studies"]
    ]


def test_a_token_cannot_create_studies_in_another_project(secure_server: LiveServer) -> None:
    mine = token_for(secure_server, "vision")
    body = {**STUDY, "project": "speech"}
    r = httpx.post(secure_server.url + "/v1/studies", json=body, headers=bearer(mine))
    assert r.status_code == 403
    assert r.json()["type"] == "urn:stagelr:problem:forbidden"
    assert "'vision'" in r.json()["detail"]


def test_a_revoked_token_stops_working(secure_server: LiveServer) -> None:
    token = token_for(secure_server, "audio")
    assert httpx.get(secure_server.url + "/v1/studies", headers=bearer(token)).status_code == 200
    env = {"STAGELR_DATABASE_URL": secure_server.database_url}
    listed = run_cli("token", "list", "--project", "audio", env=env).stdout
    assert run_cli("token", "revoke", listed.split("\t")[0], env=env).returncode == 0
    assert httpx.get(secure_server.url + "/v1/studies", headers=bearer(token)).status_code == 401


def test_a_training_job_runs_with_its_token_and_the_client_maps_a_401(
    secure_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (
        stagelr.Client(secure_server.url, token="stg_wrong") as client,
        pytest.raises(stagelr.AuthenticationError, match="token"),
    ):
        client.list_studies()

    monkeypatch.setenv("STAGELR_TOKEN", token_for(secure_server, "jobs"))
    job = SyntheticJob(seed=5)
    with stagelr.Tuner(
        secure_server.url,
        study="synthetic",
        lr_min=1e-3,
        lr_max=1.0,
        total_steps=120,
        tau0=40,
        tau_max=40,
        k=2,
    ) as tuner:
        for segment in tuner:
            reports, diverged = job.train(
                segment.lr,
                segment.planned_steps,
                segment.report_every,
                explore=segment.kind == "explore",
                stop_above=segment.stop_above,
            )
            for step, value in reports:
                segment.report(step, value)
            segment.complete(reports[-1][0] if diverged else None)
        study = tuner.study()
    assert study.project == "jobs" and study.status.value == "completed"


def test_with_auth_off_the_server_says_so_loudly(live_server: LiveServer) -> None:
    log = live_server.log()
    assert "AUTH IS OFF" in log and "STAGELR_AUTH=required" in log
