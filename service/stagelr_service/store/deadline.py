"""Deadlines on database connections: cut a connection that stops answering.

A PostgreSQL connection whose network path stalls (a hung server, a black-holed link, a
proxy that accepts and forwards nothing) never fails by itself: the kernel acknowledges
what is sent, the driver waits for an answer that does not come, and the request holds
its thread and its pooled connection for as long as the stall lasts. The server-side
``statement_timeout`` cannot help, since the server never sees the statement.

:class:`Deadlines` runs one daemon thread that watches armed connections; when one
passes its deadline, it shuts the connection's socket down. The driver's wait then
returns at once ("server closed the connection unexpectedly", or "connection socket
closed", which the engine's lost-link rule marks as a disconnect), SQLAlchemy discards
the connection, and the store answers :class:`~stagelr_service.errors.StoreUnavailableError`
(503). Arming and disarming cost a lock and a heap push: no thread per request.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["Deadlines"]

log = logging.getLogger("stagelr.store")


def shutdown_socket(fileno: int) -> None:
    """Shut the socket behind ``fileno`` down both ways (the fd stays open: its owner
    closes it once it sees the error)."""
    dup = os.dup(fileno)
    try:
        sock = socket.socket(fileno=dup)
    except OSError:
        os.close(dup)
        return
    try:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    finally:
        sock.close()


class Deadlines:
    """Cut connections that pass their deadline (see the module docstring)."""

    def __init__(self, cut: Callable[[Any], None]) -> None:
        self._cut = cut
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int]] = []
        self._armed: dict[int, Any] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        #: Connections cut so far (for tests and logs).
        self.cut_count = 0

    @contextlib.contextmanager
    def guard(self, connection: Any, seconds: float) -> Iterator[None]:
        """Within the block, cut ``connection`` if the block lasts over ``seconds``."""
        key = next(self._ids)
        with self._cond:
            self._armed[key] = connection
            heapq.heappush(self._heap, (time.monotonic() + seconds, key))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._watch, name="stagelr-db-deadlines", daemon=True
                )
                self._thread.start()
            self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._armed.pop(key, None)

    def _watch(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    self._cond.wait()
                deadline, key = self._heap[0]
                if key not in self._armed:
                    heapq.heappop(self._heap)  # disarmed in time
                    continue
                wait = deadline - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                connection = self._armed.pop(key)
                # Cut under the lock: the guarded block cannot return (and its connection
                # go back to the pool, or be closed and its fd reused) meanwhile.
                try:
                    self._cut(connection)
                    self.cut_count += 1
                except Exception:  # never let the watcher die
                    log.exception("could not cut a database connection past its deadline")
                else:
                    log.warning("cut a database connection that did not answer in time")
