"""Error answers on a live uvicorn server: a 500 keeps the keep-alive connection, a 405
names the allowed methods."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from stagelr_service.api import create_app
from stagelr_service.server import free_port
from stagelr_service.settings import Settings
from stagelr_service.store import Store
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.slow


class Served:
    def __init__(self, app: FastAPI) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, FastAPI, Path]]:
    root = tmp_path_factory.mktemp("errors")
    url = f"sqlite:///{root / 'stagelr.db'}"
    with Store(url) as store:
        store.migrate()
    app = create_app(Settings(database_url=url))

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("a bug")

    with Served(app) as server:
        yield server, app, root


def test_a_500_keeps_the_keep_alive_connection(served: tuple[Served, FastAPI, Path]) -> None:
    server, _, _ = served
    with TcpProxy(server.port) as proxy, httpx.Client(base_url=proxy.url, timeout=30) as http:
        for _ in range(5):
            answer = http.get("/boom")
            assert answer.status_code == 500
            assert answer.json()["type"] == "urn:stagelr:problem:internal"
            assert http.get("/healthz").status_code == 200
        # Ten requests, one connection: no answer closed it.
        assert proxy.connections == 1


def test_a_405_names_the_allowed_methods(served: tuple[Served, FastAPI, Path]) -> None:
    server, _, _ = served
    with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=30) as http:
        answer = http.put("/v1/studies/1")
        assert answer.status_code == 405
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert set(answer.headers["Allow"].replace(" ", "").split(",")) == {"GET", "DELETE"}
        answer = http.put("/v1/studies")
        assert answer.status_code == 405
        assert set(answer.headers["Allow"].replace(" ", "").split(",")) == {"GET", "POST"}
