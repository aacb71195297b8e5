"""The store's connection pool is fixed: it keeps what it opens and opens no more.

SQLAlchemy's default pool keeps 5 connections and opens up to 10 more for a burst,
closing each after use: under load that opened and closed a PostgreSQL connection (a
fork and a handshake on the server) many times a second.
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from stagelr_service.errors import StoreUnavailableError
from stagelr_service.settings import Settings
from stagelr_service.store import Store
from stagelr_service.store import engine as engine_module
from tests.store_fixtures import POSTGRES_ENV, fresh_postgres_database, postgres_admin_url
from tests.tcp_proxy import TcpProxy


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


@pytest.mark.postgres
@pytest.mark.skipif(postgres_admin_url() is None, reason=f"set {POSTGRES_ENV}")
def test_only_a_rested_connection_is_pinged_and_a_lost_one_is_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A connection back from a transaction moments ago goes out again without a ping (a
    round trip per transaction under load); one that rested is pinged, so a server
    that went away meanwhile costs no request. One lost while it had just been used
    fails that one transaction (503), and the pool replaces it."""
    admin = postgres_admin_url()
    assert admin is not None
    with fresh_postgres_database(admin) as url, Store(url, pool_size=1) as store:
        store.migrate()
        pings = []
        real_ping = store.engine.dialect.do_ping

        def counted(dbapi_connection: Any) -> bool:
            pings.append(dbapi_connection)
            return bool(real_ping(dbapi_connection))

        monkeypatch.setattr(store.engine.dialect, "do_ping", counted)

        def backend_pid() -> int:  # through the store's pool, as a transaction takes it
            with store.engine.connect() as connection:
                return int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())

        def terminate(pid: int) -> None:
            with psycopg.connect(admin, autocommit=True) as admin_connection:
                admin_connection.execute("SELECT pg_terminate_backend(%s)", (pid,))

        first = backend_pid()
        assert len(pings) == 1  # a new connection is pinged
        assert backend_pid() == first
        assert len(pings) == 1  # back moments ago: not pinged

        # Rested: pinged, and a lost server is found by the ping, not by a request.
        monkeypatch.setattr(engine_module, "PING_AFTER_IDLE_S", 0.05)
        terminate(first)
        time.sleep(0.2)
        second = backend_pid()
        assert second != first and len(pings) >= 2

        # Just used, then lost: its next transaction fails as one mid-way would (503),
        # and the pool connects anew for the one after.
        monkeypatch.setattr(engine_module, "PING_AFTER_IDLE_S", 60.0)
        terminate(second)
        with pytest.raises(StoreUnavailableError), store.transaction(read_only=True) as repo:
            repo.list_studies(project=None)
        assert backend_pid() not in (first, second)


@pytest.mark.postgres
@pytest.mark.skipif(postgres_admin_url() is None, reason=f"set {POSTGRES_ENV}")
@pytest.mark.parametrize("fault", ["stall", "reset"])
def test_a_connection_lost_mid_statement_is_discarded_without_a_failed_rollback(
    fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A statement waiting on a database that stops answering (cut by the deadline) or
    whose link is reset fails with 503, and the pool discards its connection as lost.

    psycopg reports such a socket as "connection socket closed" while libpq still
    thinks the connection good, so SQLAlchemy took it for a live one, tried to roll it
    back on its way to the pool, and logged that failure with a traceback (an ERROR in
    the server log for an outage the service handled)."""
    admin = postgres_admin_url()
    assert admin is not None
    with fresh_postgres_database(admin) as url:
        with Store(url) as store:
            store.migrate()
        with (
            TcpProxy(url.port or 5432, host=url.host or "127.0.0.1") as proxy,
            Store(url.set(port=proxy.port), pool_size=1, statement_timeout=1.0) as store,
        ):
            with store.transaction(read_only=True) as repo:  # connected through the proxy
                repo.list_studies(project=None)
            caplog.set_level(logging.WARNING)
            with pytest.raises(StoreUnavailableError), store.transaction() as repo:
                repo.list_studies(project=None)  # answered: the connection is in use
                proxy.stall()
                if fault == "reset":
                    proxy.after(0.3, proxy.refuse)  # a reset (RST) before the deadline
                repo.list_studies(project=None)  # no answer: cut, or reset
            failed = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
            assert failed == [], [r.getMessage() for r in failed]
            assert store.engine.pool.checkedout() == 0
            proxy.pass_through()
            with store.transaction(read_only=True) as repo:  # a new connection
                assert repo.list_studies(project=None) == ([], 0)


def test_only_an_error_the_server_never_sent_counts_as_a_lost_link() -> None:
    """psycopg's "connection socket closed" carries no SQLSTATE (the client saw the link
    fail); an error the server reported carries one and leaves the connection usable."""
    assert engine_module.is_lost_link(psycopg.OperationalError("connection socket closed"), psycopg)
    canceled = psycopg.errors.QueryCanceled("canceling statement due to statement timeout")
    assert canceled.sqlstate == "57014"
    assert not engine_module.is_lost_link(canceled, psycopg)
    assert not engine_module.is_lost_link(psycopg.errors.UniqueViolation("dup"), psycopg)
    assert not engine_module.is_lost_link(OSError("not a driver error"), psycopg)


@pytest.mark.postgres
@pytest.mark.skipif(postgres_admin_url() is None, reason=f"set {POSTGRES_ENV}")
def test_a_statement_the_server_cancelled_keeps_its_connection() -> None:
    admin = postgres_admin_url()
    assert admin is not None
    with fresh_postgres_database(admin) as url, Store(url, pool_size=1) as store:
        with store.engine.connect() as connection:
            pid = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
            connection.exec_driver_sql("SET statement_timeout = 50")
            with pytest.raises(OperationalError) as caught:
                connection.exec_driver_sql("SELECT pg_sleep(2)")
            assert not caught.value.connection_invalidated
            connection.rollback()
            connection.exec_driver_sql("SET statement_timeout = 0")
        with store.engine.connect() as connection:
            assert connection.execute(text("SELECT pg_backend_pid()")).scalar_one() == pid
