"""/readyz tells a load balancer when the store cannot serve, with a problem document."""

from __future__ import annotations

import httpx
import pytest

from stagelr_service.server import BackgroundServer
from stagelr_service.settings import Settings
from stagelr_service.store import Store, downgrade

pytestmark = pytest.mark.slow


def test_readyz_turns_503_when_the_schema_is_taken_away(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'ready.db'}"
    with Store(url) as store:
        store.migrate()
    with BackgroundServer(Settings(database_url=url, port=0)) as server:
        assert httpx.get(server.url + "/readyz").status_code == 200
        downgrade(url, "base")
        answer = httpx.get(server.url + "/readyz")
        assert answer.status_code == 503
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert answer.json()["type"] == "urn:stagelr:problem:schema-outdated"
        assert "stagelr migrate" in answer.json()["detail"]
        assert httpx.get(server.url + "/healthz").status_code == 200
