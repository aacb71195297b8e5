"""Shared fixtures: the optimizer, live servers, databases."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest


@pytest.fixture(scope="session")
def optimizer():  # type: ignore[no-untyped-def]
    from stagelr_service.optimizer import GPOptimizer

    opt = GPOptimizer()
    opt.warm_up()
    return opt


@pytest.fixture(scope="module")
def live_server(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A migrated SQLite file and a real `stagelr serve` on it, for one test module."""
    from .live import start_server

    root = tmp_path_factory.mktemp("server")
    server = start_server(f"sqlite:///{root / 'stagelr.db'}", root / "server.log")
    yield server
    server.stop()
