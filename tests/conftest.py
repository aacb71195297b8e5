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


def _start_live_server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from .live import start_server

    root = tmp_path_factory.mktemp("server")
    return start_server(f"sqlite:///{root / 'stagelr.db'}", root / "server.log")


@pytest.fixture(scope="session")
def live_server(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A migrated SQLite file and a real `stagelr serve` on it, shared by the whole run
    (a start costs seconds: torch and BoTorch are imported).

    A module on it only adds studies of its own: unique names (and projects, families),
    filters any list it reads by them, and never needs an empty database or a fresh
    process. A module that does uses ``own_live_server`` instead.
    """
    server = _start_live_server(tmp_path_factory)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def own_live_server(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A fresh database and server of one module's own, for a module that cannot share
    ``live_server``: it reads process-wide figures (the /metrics counters), acts on
    whatever ids exist, or needs the whole database to hold only its own studies. Such a
    module overrides ``live_server`` with a module fixture that returns this one, saying
    why."""
    server = _start_live_server(tmp_path_factory)
    yield server
    server.stop()
