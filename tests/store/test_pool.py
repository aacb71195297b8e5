"""The store's connection pool is fixed: it keeps what it opens and opens no more.

SQLAlchemy's default pool keeps 5 connections and opens up to 10 more for a burst,
closing each after use: under load that opened and closed a PostgreSQL connection (a
fork and a handshake on the server) many times a second.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import pytest

from stagelr_service.errors import StoreUnavailableError
from stagelr_service.settings import Settings
from stagelr_service.store import Store


def test_a_burst_keeps_its_connections_and_never_opens_more(tmp_path: Path) -> None:
    with Store(f"sqlite:///{tmp_path}/p.db", pool_size=3, pool_timeout=0.2) as store:
        store.migrate()
        with ExitStack() as open_transactions:
            for _ in range(3):
                repo = open_transactions.enter_context(store.transaction(read_only=True))
                repo.list_studies(project=None)  # a session connects at its first statement
            # A fourth waits for one of them, then gives up.
            with pytest.raises(StoreUnavailableError), store.transaction(read_only=True) as repo:
                repo.list_studies(project=None)
        assert store.engine.pool.checkedin() == 3  # all three kept, none closed


def test_the_pool_size_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().db_pool_size == 15
    monkeypatch.setenv("STAGELR_DB_POOL_SIZE", "4")
    assert Settings().db_pool_size == 4
