"""Engines for SQLite and PostgreSQL, set up the one way the store needs them.

SQLite: a file in WAL mode (readers never block the writer), foreign keys enforced, a
busy timeout so that concurrent writers wait instead of failing, and BEGIN emitted by
SQLAlchemy rather than by the ``sqlite3`` module (whose legacy mode defers BEGIN past
SELECTs and SAVEPOINTs). Write transactions start with ``BEGIN IMMEDIATE``: they take the
write lock up front, so two read-then-write transactions on one study run one after the
other instead of one failing with "database is locked" when it tries to upgrade its lock.
This is SQLAlchemy's documented pysqlite recipe for serializable isolation and
transactional DDL.

PostgreSQL: psycopg 3; ``postgresql://`` and ``postgres://`` URLs are rewritten to it.
Three timeouts keep a lost or hung database from holding requests: ``connect_timeout``
(opening a connection, and the liveness check each pooled connection gets when it is
checked out), ``statement_timeout`` (PostgreSQL's, and the deadline after which a
connection that does not answer is cut, see :mod:`.deadline`) and ``pool_timeout`` (the
wait for a free pooled connection). A driver error the server never sent (no SQLSTATE:
the link failed under the driver) discards its connection at once (:func:`is_lost_link`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DisconnectionError

from stagelr_service.errors import InputError

from .deadline import Deadlines, shutdown_socket

__all__ = [
    "DEADLINES",
    "DEFAULT_CONNECT_TIMEOUT_S",
    "DEFAULT_POOL_SIZE",
    "DEFAULT_POOL_TIMEOUT_S",
    "DEFAULT_STATEMENT_TIMEOUT_S",
    "SQLITE_BEGIN_OPTION",
    "make_engine",
    "mask_url",
    "normalize_url",
]

#: Execution option read by the SQLite ``begin`` hook: "IMMEDIATE" (default) or "DEFERRED".
SQLITE_BEGIN_OPTION = "stagelr_sqlite_begin"

SQLITE_BUSY_TIMEOUT_S = 30.0

#: Defaults of the database timeouts (the STAGELR_DB_* settings).
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_STATEMENT_TIMEOUT_S = 10.0
DEFAULT_POOL_TIMEOUT_S = 5.0
#: Connections each engine keeps (the STAGELR_DB_POOL_SIZE setting).
DEFAULT_POOL_SIZE = 15
#: A pooled PostgreSQL connection that rested longer than this is pinged when taken out.
PING_AFTER_IDLE_S = 1.0
_CHECKED_IN = "stagelr_checked_in"


def _cut_connection(dbapi_connection: Any) -> None:
    if not getattr(dbapi_connection, "closed", True):
        shutdown_socket(dbapi_connection.fileno())


#: The process's watcher of PostgreSQL connections (one thread, started on first use).
DEADLINES = Deadlines(_cut_connection)


def normalize_url(url: str | URL) -> URL:
    """Parse ``url`` and pick the driver the store uses for its backend.

    Raises InputError for anything but a SQLite file or a PostgreSQL URL.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise InputError(
            f"cannot parse database URL {str(url)!r}: use sqlite:///path/to/stagelr.db "
            "or postgresql://user:password@host/dbname"
        ) from exc
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:") or parsed.database.startswith("file:"):
            raise InputError(
                f"{mask_url(parsed)} is not a SQLite file: use a file URL such as "
                "sqlite:///stagelr.db (relative) or sqlite:////var/lib/stagelr/stagelr.db"
            )
        return parsed.set(drivername="sqlite+pysqlite")
    raise InputError(
        f"unsupported database {backend!r} in {mask_url(parsed)}: stagelr runs on SQLite "
        "(sqlite:///stagelr.db) or PostgreSQL (postgresql://user:password@host/dbname)"
    )


def mask_url(url: str | URL) -> str:
    """The URL as text with any password replaced by ``***``, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparsable database URL>"


def _json_default(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _dumps(value: Any) -> str:
    # Strict JSON on both backends: PostgreSQL rejects NaN in json columns, so SQLite
    # must too, or a store that works on one would fail on the other.
    return json.dumps(value, allow_nan=False, default=_json_default)


def make_engine(
    url: str | URL,
    *,
    foreign_keys: bool = True,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
    statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT_S,
    pool_timeout: float = DEFAULT_POOL_TIMEOUT_S,
    pool_size: int = DEFAULT_POOL_SIZE,
    **kwargs: Any,
) -> Engine:
    """Create the engine for ``url`` (see the module docstring for what is set up).

    ``foreign_keys=False`` is for migrations only: Alembic's batch mode on SQLite copies a
    table and drops the old one, and with foreign keys on, that drop would cascade.
    """
    parsed = normalize_url(url)
    # A fixed pool: connections are kept, never opened for a burst and closed after it
    # (SQLAlchemy's default, 5 kept plus 10 "overflow" ones, opened and closed a
    # PostgreSQL connection many times a second under load: a fork and a handshake each).
    # A request that finds every connection busy waits up to pool_timeout.
    kwargs.setdefault("pool_size", pool_size)
    kwargs.setdefault("max_overflow", 0)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(
            parsed, foreign_keys=foreign_keys, pool_timeout=pool_timeout, **kwargs
        )
    connect_args = {
        # libpq counts whole seconds, and takes anything under 2 as 2.
        "connect_timeout": max(2, round(connect_timeout)),
        # A transaction whose client went away mid-way (a connection cut by a deadline,
        # a network that dropped it unseen) must not hold its locks, e.g. on a study row,
        # until TCP gives up: the server ends it after the same time.
        # Floats come back as text, a study's history as JSON text too: with
        # extra_float_digits above 0, PostgreSQL 12+ writes each double's shortest exact
        # form. A server, database or role set to 0 would round them to 15 digits, and
        # the decisions made from them would differ from those the store was given.
        "options": (
            f"-c statement_timeout={round(statement_timeout * 1000)} "
            f"-c idle_in_transaction_session_timeout={round(statement_timeout * 1000)} "
            "-c extra_float_digits=3"
        ),
    }
    engine = create_engine(
        parsed,
        json_serializer=_dumps,
        pool_timeout=pool_timeout,
        connect_args={**connect_args, **kwargs.pop("connect_args", {})},
        **kwargs,
    )

    @event.listens_for(engine, "handle_error")
    def _lost_link(context: Any) -> None:
        # psycopg words a link that failed under it while it waited ("connection socket
        # closed": a reset, or a socket the deadline shut down) without libpq marking the
        # connection bad, so SQLAlchemy's own test took it for a live one: it went back
        # towards the pool, its rollback failed there, and the pool logged that with a
        # traceback. An OperationalError with no SQLSTATE is one the server never sent:
        # the link is gone, and the connection is discarded at once.
        dbapi = context.dialect.loaded_dbapi
        if is_lost_link(context.original_exception, dbapi):
            context.is_disconnect = True

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        if record is not None:  # None: a connection the pool has already let go
            record.info[_CHECKED_IN] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        # SQLAlchemy's pool_pre_ping, with a deadline: a connection whose server stopped
        # answering is cut and replaced (DisconnectionError makes the pool connect anew).
        # Only for a connection that has rested in the pool: one that finished a
        # transaction moments ago was answering then, and a server lost since fails its
        # next statement as it would fail mid-transaction (503, and the client retries;
        # the pool then drops it). Under load every connection is in use all the time,
        # and the ping was a round trip of every transaction. A connection's info is
        # emptied when the pool invalidates it, so a new one is pinged.
        checked_in = record.info.get(_CHECKED_IN)
        if checked_in is not None and time.monotonic() - checked_in < PING_AFTER_IDLE_S:
            return
        try:
            with DEADLINES.guard(dbapi_connection, connect_timeout):
                engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError(f"the pooled connection did not answer: {exc}") from exc

    return engine


def is_lost_link(exc: BaseException, dbapi: Any) -> bool:
    """Whether a psycopg error means the connection's link failed (no SQLSTATE: the
    client saw it, the server sent nothing), not an error the server reported."""
    operational = getattr(dbapi, "OperationalError", None)
    return (
        operational is not None
        and isinstance(exc, operational)
        and getattr(exc, "sqlstate", "") is None
    )


def _sqlite_engine(url: URL, *, foreign_keys: bool, **kwargs: Any) -> Engine:
    assert url.database is not None
    Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        # The server calls the store from a thread pool; each connection is still used
        # by one thread at a time (the pool hands it out).
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S},
        json_serializer=_dumps,
        **kwargs,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take BEGIN away from the sqlite3 module; the "begin" hook below emits it.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            # In WAL mode NORMAL is durable against application crashes and much faster.
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
            cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        mode = connection.get_execution_options().get(SQLITE_BEGIN_OPTION, "IMMEDIATE")
        if mode not in ("IMMEDIATE", "DEFERRED"):
            raise ValueError(f"{SQLITE_BEGIN_OPTION} must be IMMEDIATE or DEFERRED, not {mode!r}")
        connection.exec_driver_sql(f"BEGIN {mode}")

    return engine
