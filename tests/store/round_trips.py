"""Count a Store's round trips to PostgreSQL, as the wire sees them.

A round trip is one wait of the client for the server: the client sends one or more
protocol messages (a simple query, or a pipeline of Parse/Bind/Execute ... Sync), then
reads the answers. SQLAlchemy's ``before_cursor_execute`` counts statements, which is
not the same thing: psycopg sends BEGIN and COMMIT outside it, and a pipeline sends
several statements in one round trip. This reads libpq's own protocol trace (``PQtrace``)
of every connection the store's pool hands out, and counts each run of client messages
(``F`` lines) that follows the server's answers (``B`` lines).

    with RoundTrips(store) as trips:
        ...                        # anything on the store, in this thread or another
        print(trips.take())        # round trips since the last take()
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy import event

from stagelr_service.store import Store

__all__ = ["RoundTrips"]

_TRACED = "tests_round_trips_traced"


class _Trace:
    """One connection's trace file, read incrementally."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.sending = False  # the last message read was the client's

    def turns(self) -> int:
        """Client turns since the last call (libpq flushes the trace per message)."""
        with self.path.open("rb") as file:
            file.seek(self.offset)
            data = file.read()
        complete = data.rfind(b"\n") + 1
        self.offset += complete
        turns = 0
        for line in data[:complete].splitlines():
            if line.startswith(b"F\t"):
                if not self.sending:
                    turns += 1
                self.sending = True
            elif line.startswith(b"B\t"):
                self.sending = False
        return turns


class RoundTrips:
    """Traces every PostgreSQL connection the store's engine checks out (see the module)."""

    def __init__(self, store: Store) -> None:
        if store.dialect != "postgresql":
            raise ValueError("round trips are counted on PostgreSQL only")
        self._engine = store.engine
        self._folder = Path(tempfile.mkdtemp(prefix="stagelr-trace-"))
        self._traces: list[_Trace] = []

    def _checkout(self, dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if record.info.get(_TRACED):
            return
        from psycopg import pq

        path = self._folder / f"{len(self._traces)}.trace"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        pgconn = dbapi_connection.pgconn
        pgconn.trace(fd)
        pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
        record.info[_TRACED] = True
        self._traces.append(_Trace(path))

    def __enter__(self) -> RoundTrips:
        # Connections pooled before this (not traced) are dropped, so every later
        # checkout is a traced one.
        self._engine.dispose()
        event.listen(self._engine, "checkout", self._checkout)
        return self

    def take(self) -> int:
        """Round trips of every traced connection since the last call."""
        return sum(trace.turns() for trace in self._traces)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        event.remove(self._engine, "checkout", self._checkout)
        self._engine.dispose()
