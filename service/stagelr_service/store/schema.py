"""Schema versions: run the Alembic migrations, and refuse a database that is not at head.

The migrations ship with the package as ``stagelr_migrations`` (the repository's
``migrations/`` folder). The server never migrates by itself: it checks at start and
names the command that does (``stagelr migrate``), as Optuna's storage does.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Engine
from sqlalchemy.engine import URL

from stagelr_service.errors import SchemaOutdatedError

from .engine import SQLITE_BEGIN_OPTION, make_engine, mask_url

__all__ = ["alembic_config", "check_schema", "downgrade", "migrate", "script_location"]

MIGRATE_COMMAND = "stagelr migrate"


def script_location() -> Path:
    """The Alembic script directory: the installed ``stagelr_migrations`` package, or the
    repository's ``migrations/`` folder when running from a checkout."""
    try:
        import stagelr_migrations  # type: ignore[import-not-found]
    except ImportError:
        # From a checkout (PYTHONPATH=client:service:.) the folder imports as
        # ``migrations``, a name too generic to import: find it next to the package.
        here = Path(__file__).resolve().parents[3] / "migrations"
        if (here / "env.py").is_file():
            return here
        raise RuntimeError(
            "the stagelr migrations are missing: reinstall stagelr[server]"
        ) from None
    return Path(stagelr_migrations.__file__).resolve().parent


def alembic_config(location: Path | str | None = None) -> Config:
    """An Alembic Config built in code (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", str(location or script_location()))
    config.set_main_option("path_separator", "os")
    return config


def _run(url: str | URL, location: Path | str | None, action: str, revision: str) -> str:
    # Foreign keys off on SQLite: batch mode copies tables and drops the originals.
    engine = make_engine(url, foreign_keys=False)
    try:
        config = alembic_config(location)
        # One transaction for the whole run (PostgreSQL and SQLite both have
        # transactional DDL here), committed by engine.begin() at the end.
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            if action == "upgrade":
                command.upgrade(config, revision)
            else:
                command.downgrade(config, revision)
            heads = MigrationContext.configure(connection).get_current_heads()
        return ",".join(sorted(heads))
    finally:
        engine.dispose()


def migrate(url: str | URL, revision: str = "head", *, location: Path | str | None = None) -> str:
    """Upgrade the database at ``url`` to ``revision`` (the latest by default) and
    return the revision it is at now.

    This is what ``stagelr migrate`` runs: one transaction, so a failure leaves the
    database as it was. Safe to run again: at head it does nothing.
    """
    return _run(url, location, "upgrade", revision)


def downgrade(url: str | URL, revision: str, *, location: Path | str | None = None) -> str:
    """Downgrade the database at ``url`` to ``revision`` (``"base"``: drop every table)
    and return the revision it is at now ("" at base)."""
    return _run(url, location, "downgrade", revision)


def check_schema(engine: Engine, *, location: Path | str | None = None) -> str:
    """Return the database's schema revision if it is the one this stagelr needs.

    Raises SchemaOutdatedError, naming ``stagelr migrate``, when the schema is missing
    or behind, and naming an upgrade of stagelr when it is from a newer version.
    """
    script = ScriptDirectory.from_config(alembic_config(location))
    heads = set(script.get_heads())
    # A read: no need to take SQLite's write lock.
    with engine.connect().execution_options(**{SQLITE_BEGIN_OPTION: "DEFERRED"}) as conn:
        current = set(MigrationContext.configure(conn).get_current_heads())
    if current == heads:
        return ",".join(sorted(current))
    where = mask_url(engine.url)
    need = ", ".join(sorted(heads))
    if not current:
        raise SchemaOutdatedError(
            f"the database {where} has no stagelr schema: run `{MIGRATE_COMMAND}` "
            "(with STAGELR_DATABASE_URL pointing at it) to create it"
        )
    at = ", ".join(sorted(current))
    for revision in current:
        try:
            script.get_revision(revision)
        except CommandError:
            raise SchemaOutdatedError(
                f"the database {where} is at schema revision {revision}, which this "
                f"version of stagelr does not know (it needs {need}): the database was "
                "migrated by a newer stagelr; upgrade stagelr to use it"
            ) from None
    raise SchemaOutdatedError(
        f"the database {where} is at schema revision {at}, and this version of stagelr "
        f"needs {need}: back it up, then run `{MIGRATE_COMMAND}` to upgrade it"
    )
