"""The Store: one engine, one transaction helper, the schema check."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from types import TracebackType
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from .engine import SQLITE_BEGIN_OPTION, make_engine, mask_url, normalize_url
from .repository import Repository
from .schema import check_schema, migrate

__all__ = ["Store", "utcnow"]


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
    fake one). Extra keyword arguments go to ``sqlalchemy.create_engine``.
    """

    def __init__(
        self,
        url: str | URL,
        *,
        clock: Callable[[], datetime] = utcnow,
        **engine_options: Any,
    ) -> None:
        self.url: URL = normalize_url(url)
        self.engine: Engine = make_engine(self.url, **engine_options)
        # Read-only transactions on SQLite start DEFERRED: in WAL mode they then never
        # wait for (nor block) the writer. The option is ignored on PostgreSQL.
        self._read_engine = self.engine.execution_options(**{SQLITE_BEGIN_OPTION: "DEFERRED"})
        self._clock = clock
        # SQLite has one writer at a time, and a writer that finds the lock taken sleeps in
        # SQLite's busy handler, polling at up to 100 ms intervals: under many concurrent
        # requests that polling, not the work, made the latency (a third of the server's
        # samples in the load benchmark sat in BEGIN IMMEDIATE). The threads of this process
        # queue on a lock instead and start the moment the writer before them commits.
        # Other processes still meet the busy timeout; PostgreSQL needs none of this.
        self._write_lock: threading.RLock | None = (
            threading.RLock() if self.url.get_backend_name() == "sqlite" else None
        )

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
        """
        bind = self._read_engine if read_only else self.engine
        lock = self._write_lock if not read_only else None
        with (
            lock if lock is not None else nullcontext(),
            Session(bind, expire_on_commit=False) as session,
            session.begin(),
        ):
            yield Repository(session, self._clock)

    def check_schema(self) -> str:
        """The schema revision, if it is current; else SchemaOutdatedError naming
        ``stagelr migrate``."""
        return check_schema(self.engine)

    def migrate(self) -> str:
        """Upgrade the schema to the latest revision (what ``stagelr migrate`` does);
        returns that revision."""
        return migrate(self.url)

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
