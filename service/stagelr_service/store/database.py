"""The Store: one engine, one transaction helper, the schema check."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy import Engine
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from stagelr_service.errors import StoreUnavailableError

from .engine import (
    DEADLINES,
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_POOL_SIZE,
    DEFAULT_POOL_TIMEOUT_S,
    DEFAULT_STATEMENT_TIMEOUT_S,
    SQLITE_BEGIN_OPTION,
    SQLITE_BUSY_TIMEOUT_S,
    make_engine,
    mask_url,
    normalize_url,
)
from .history_cache import HistoryCache
from .repository import Repository
from .schema import check_schema, migrate
from .write_queue import WriteQueue

__all__ = ["Store", "store_unavailable", "utcnow"]

log = logging.getLogger("stagelr.store")

#: What a driver raises when the database cannot be reached or stops answering: a refused
#: or cut connection, a timeout (connect, statement, or waiting for the pool), a server
#: shutting down, SQLite's lock wait running out. Integrity and programming errors are not
#: among them: those are bugs or domain conflicts, handled where they occur.
_UNAVAILABLE: tuple[type[Exception], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,
    sa_exc.DisconnectionError,
)

_SQLITE_BUGS = ("no such table", "no such column", "syntax error")


def store_unavailable(exc: Exception) -> StoreUnavailableError | None:
    """The domain error for a driver error that means "the database is away", else None.

    The message is generic (what the client should do); the driver's own text, which
    names hosts and ports, goes to the server log.
    """
    if isinstance(exc, sa_exc.OperationalError) and any(
        sign in str(exc.orig) for sign in _SQLITE_BUGS
    ):
        return None  # SQLite's word for a schema or statement error: a bug, not an outage
    if isinstance(exc, _UNAVAILABLE) or (
        isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated
    ):
        first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
        log.warning("the database did not answer: %s", first_line)
        return StoreUnavailableError(
            "the database does not answer right now: send the request again shortly "
            "(see Retry-After; every stagelr request is safe to repeat)"
        )
    return None


def utcnow() -> datetime:
    """The store's clock: the only place stagelr reads the wall clock for stored times."""
    return datetime.now(timezone.utc)


class Store:
    """The SQL store of one database (a SQLite file or PostgreSQL).

    Use one Store per process and share it between threads; each request runs in its own
    transaction::

        store = Store("sqlite:///stagelr.db")
        store.check_schema()                 # refuse an old schema at start
        with store.transaction() as repo:    # commits, or rolls back on error
            study = repo.lock_study(study_id)
            ...

    ``clock`` returns the aware UTC time stamped on created/updated rows (tests pass a
    fake one). The timeouts are those of :func:`.engine.make_engine`; extra keyword
    arguments go to ``sqlalchemy.create_engine``.

    A database that cannot be reached or stops answering raises
    :class:`~stagelr_service.errors.StoreUnavailableError` from :meth:`transaction` and
    :meth:`check_schema` (the API's 503), never a driver error.
    """

    def __init__(
        self,
        url: str | URL,
        *,
        clock: Callable[[], datetime] = utcnow,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
        statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT_S,
        pool_timeout: float = DEFAULT_POOL_TIMEOUT_S,
        pool_size: int = DEFAULT_POOL_SIZE,
        keep_histories: bool = True,
        **engine_options: Any,
    ) -> None:
        self.url: URL = normalize_url(url)
        #: The study histories this process read, each used again only while the
        #: database holds the version it was read at (:mod:`.history_cache`); None with
        #: ``keep_histories=False``: every history read whole.
        self.histories: HistoryCache | None = HistoryCache() if keep_histories else None
        self.engine: Engine = make_engine(
            self.url,
            connect_timeout=connect_timeout,
            statement_timeout=statement_timeout,
            pool_timeout=pool_timeout,
            pool_size=pool_size,
            **engine_options,
        )
        #: Longest one transaction may wait on PostgreSQL before its connection is cut.
        self.statement_timeout = statement_timeout
        # Read-only transactions on SQLite start DEFERRED: in WAL mode they then never
        # wait for (nor block) the writer. On PostgreSQL they run in autocommit: at READ
        # COMMITTED each statement sees its own snapshot inside a transaction as well, so
        # a BEGIN and a COMMIT (two round trips) would add nothing to a pure read.
        if self.url.get_backend_name() == "sqlite":
            self._read_engine = self.engine.execution_options(**{SQLITE_BEGIN_OPTION: "DEFERRED"})
        else:
            self._read_engine = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self._clock = clock
        # SQLite has one writer at a time: write transactions queue on the WriteQueue
        # (this process's threads on a lock, other processes on a file lock beside the
        # database) instead of polling in SQLite's busy handler (see .write_queue).
        # PostgreSQL needs none of this.
        self._write_lock: WriteQueue | None = None
        if self.url.get_backend_name() == "sqlite":
            assert self.url.database is not None
            database = Path(self.url.database).expanduser().resolve()
            self._write_lock = WriteQueue(database, SQLITE_BUSY_TIMEOUT_S)

    def now(self) -> datetime:
        """The store's clock (aware UTC): what row timestamps are compared with."""
        return self._clock()

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self.engine.dialect.name

    @property
    def safe_url(self) -> str:
        """The database URL with any password masked, for logs and messages."""
        return mask_url(self.url)

    def __repr__(self) -> str:
        return f"Store({self.safe_url!r})"

    @contextmanager
    def transaction(self, *, read_only: bool = False) -> Iterator[Repository]:
        """Run one transaction: yields a Repository; commits when the block ends, rolls
        back if it raises.

        Write transactions (the default) take SQLite's write lock at BEGIN, so that
        read-then-write logic never fails halfway on a lock upgrade. ``read_only=True``
        is for pure reads (dashboards, GETs): it must not write.

        A driver error meaning the database is away (refused, cut, timed out) is raised
        as StoreUnavailableError; on PostgreSQL a transaction that waits on the database
        longer than ``statement_timeout`` has its connection cut (:mod:`.deadline`).
        """
        bind = self._read_engine if read_only else self.engine
        lock = self._write_lock if not read_only else None
        try:
            with (
                lock if lock is not None else nullcontext(),
                Session(bind, expire_on_commit=False) as session,
            ):
                transaction = session.begin()
                # The deadline covers the commit too: it is entered before the transaction.
                with self._deadline(session), transaction:
                    repo = Repository(session, self._clock, self.histories)
                    yield repo
                repo.committed()
        except Exception as exc:
            unavailable = store_unavailable(exc)
            if unavailable is None:
                raise
            raise unavailable from exc

    def _deadline(self, session: Session) -> contextlib.AbstractContextManager[None]:
        if self._write_lock is not None:  # SQLite: a local file, its busy timeout bounds it
            return nullcontext()
        dbapi_connection = session.connection().connection.dbapi_connection
        return DEADLINES.guard(dbapi_connection, self.statement_timeout)

    def check_schema(self) -> str:
        """The schema revision, if it is current; else SchemaOutdatedError naming
        ``stagelr migrate``; StoreUnavailableError when the database does not answer."""
        try:
            return check_schema(self.engine)
        except Exception as exc:
            unavailable = store_unavailable(exc)
            if unavailable is None:
                raise
            raise unavailable from exc

    def migrate(self) -> str:
        """Upgrade the schema to the latest revision (what ``stagelr migrate`` does);
        returns that revision."""
        return migrate(self.url)

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
        if self._write_lock is not None:
            self._write_lock.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
