"""Structured logs: one JSON object per line, every request with its id."""

from __future__ import annotations

import json
import logging
import time

import httpx
import pytest

from stagelr_service.api.observability import JsonFormatter, RequestIdFilter, log_config
from stagelr_service.settings import Settings
from tests.live import start_server


def log_lines(server, count: int) -> list[dict]:  # type: ignore[no-untyped-def,type-arg]
    """The server's log as JSON objects, once at least ``count`` access lines are in."""
    deadline = time.monotonic() + 10
    while True:
        lines = [json.loads(line) for line in server.log().splitlines() if line.strip()]
        if sum(e["logger"] == "stagelr.access" for e in lines) >= count:
            return lines
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)


@pytest.mark.slow
def test_a_json_server_logs_each_request_with_its_id(tmp_path) -> None:
    server = start_server(
        f"sqlite:///{tmp_path / 'stagelr.db'}",
        tmp_path / "server.log",
        env={"STAGELR_LOG_FORMAT": "json"},
    )
    try:
        given = httpx.get(f"{server.url}/v1/studies", headers={"X-Request-ID": "job-7.seg-3"})
        fresh = httpx.post(f"{server.url}/v1/studies/424242/next")
        refused = httpx.get(f"{server.url}/v1/studies", headers={"X-Request-ID": "bad id\t!"})
        entries = log_lines(server, 3)
    finally:
        server.stop()

    # Every line the server wrote is a JSON object (uvicorn's start-up lines included).
    assert {"time", "level", "logger", "message", "request_id"} <= set(entries[0])
    access = [e for e in entries if e["logger"] == "stagelr.access" and e["path"] != "/healthz"]
    by_id = {e["request_id"]: e for e in access}

    # The caller's id is echoed and logged; a missing or unsafe one is replaced.
    assert given.headers["x-request-id"] == "job-7.seg-3"
    line = by_id["job-7.seg-3"]
    assert (line["method"], line["path"], line["status"]) == ("GET", "/v1/studies", 200)
    assert line["duration_ms"] > 0 and line["level"] == "info"
    assert fresh.status_code == 404
    assert len(fresh.headers["x-request-id"]) == 32
    assert by_id[fresh.headers["x-request-id"]]["path"] == "/v1/studies/424242/next"
    assert by_id[fresh.headers["x-request-id"]]["status"] == 404
    assert refused.headers["x-request-id"] != "bad id\t!"
    assert refused.headers["x-request-id"] in by_id


def test_the_text_format_is_the_default_and_names_the_request() -> None:
    config = log_config(Settings())
    assert "%(request_tag)s" in config["formatters"]["stagelr"]["format"]
    record = logging.LogRecord(
        "stagelr.server", logging.WARNING, __file__, 1, "hi %s", ("x",), None
    )
    RequestIdFilter().filter(record)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "hi x" and entry["level"] == "warning"
    assert entry["request_id"] is None
