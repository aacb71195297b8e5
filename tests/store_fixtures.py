"""Helpers for tests that need a database: a fresh SQLite file or PostgreSQL database.

SQLite always; PostgreSQL when STAGELR_TEST_POSTGRES_URL names a server the tests may
create databases on (e.g. postgresql://postgres@127.0.0.1:5432/postgres). Each fresh
PostgreSQL database is created with a random name and dropped afterwards.

Import what you need in a test module::

    from .store_fixtures import BACKENDS, fresh_database
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, delete, text
from sqlalchemy.engine import URL

from stagelr_service.store import Store, migrate, normalize_url
from stagelr_service.store.models import Base

__all__ = [
    "BACKENDS",
    "POSTGRES_ENV",
    "clear_tables",
    "fresh_database",
    "fresh_postgres_database",
    "postgres_admin_url",
]

POSTGRES_ENV = "STAGELR_TEST_POSTGRES_URL"


def postgres_admin_url() -> str | None:
    """The PostgreSQL server URL the tests may use, or None (PostgreSQL tests skip)."""
    return os.environ.get(POSTGRES_ENV) or None


#: Parametrize a fixture or test with these to run it on every backend.
BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param(
        "postgresql",
        id="postgresql",
        marks=[
            pytest.mark.postgres,
            pytest.mark.skipif(
                postgres_admin_url() is None, reason=f"set {POSTGRES_ENV} to run on PostgreSQL"
            ),
        ],
    ),
]


@contextmanager
def fresh_postgres_database(admin_url: str, *, password: str | None = None) -> Iterator[URL]:
    """Create an empty database on the server of ``admin_url``; drop it afterwards.

    ``password`` replaces the password in the yielded URL (to test that messages mask it;
    a trust-auth server ignores it).
    """
    admin = normalize_url(admin_url)
    name = f"stagelr_test_{uuid.uuid4().hex[:12]}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = admin.set(database=name)
        if password is not None:
            url = url.set(password=password)
        try:
            yield url
        finally:
            with engine.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()


@contextmanager
def fresh_database(backend: str, directory: Path) -> Iterator[URL]:
    """An empty database of ``backend`` ("sqlite" or "postgresql"), as a URL."""
    if backend == "sqlite":
        yield normalize_url(f"sqlite:///{directory / 'stagelr.db'}")
        return
    admin = postgres_admin_url()
    if admin is None:
        pytest.skip(f"set {POSTGRES_ENV} to run on PostgreSQL")
    with fresh_postgres_database(admin) as url:
        yield url


@contextmanager
def migrated_database(backend: str, directory: Path) -> Iterator[URL]:
    """:func:`fresh_database` with the schema migrated to the newest revision."""
    with fresh_database(backend, directory) as url:
        migrate(url)
        yield url


def clear_tables(store: Store) -> None:
    """Delete every row, children first, so the next test starts empty."""
    with store.engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(delete(table))
