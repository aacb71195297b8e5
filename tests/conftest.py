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
