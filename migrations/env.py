"""Alembic environment for stagelr (shipped as the package ``stagelr_migrations``).

The database URL comes from, in order: a connection handed over by
``stagelr_service.store.migrate`` (``config.attributes["connection"]``), the Config's
``sqlalchemy.url`` main option, or the ``STAGELR_DATABASE_URL`` environment variable.
``render_as_batch`` makes autogenerate write batch operations, so one history runs on
SQLite (which cannot ALTER most things in place) and on PostgreSQL.
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from stagelr_service.store.engine import make_engine, normalize_url
from stagelr_service.store.models import Base

config = context.config
target_metadata = Base.metadata

# Only the alembic CLI (with alembic.ini) configures logging; `stagelr migrate` and tests
# keep the application's logging as it is.
if (
    config.config_file_name is not None
    and "connection" not in config.attributes
    and config.attributes.get("configure_logger", True)
):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("STAGELR_DATABASE_URL")
    if not url:
        raise SystemExit(
            "no database URL: set STAGELR_DATABASE_URL (e.g. sqlite:///stagelr.db) "
            "or sqlalchemy.url in alembic.ini"
        )
    return url


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
        # The store's SQLite engine emits BEGIN itself, so DDL is transactional there too.
        transactional_ddl=True,
    )


def run_migrations_offline() -> None:
    """``alembic upgrade --sql``: write the SQL instead of running it."""
    context.configure(
        url=normalize_url(_url()),
        target_metadata=target_metadata,
        render_as_batch=True,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    # Foreign keys off on SQLite: batch mode copies tables and drops the originals.
    engine = make_engine(_url(), foreign_keys=False)
    try:
        with engine.connect() as connection:
            _configure(connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
