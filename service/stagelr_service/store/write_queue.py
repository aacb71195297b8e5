"""SQLite's one writer, queued: the threads of a process, and the processes of a machine.

SQLite lets one transaction write at a time. A writer that finds the write lock taken
sleeps in SQLite's busy handler, which polls at growing intervals of up to 100 ms: under
many concurrent requests that polling, not the work, made the latency. So write
transactions queue here before their ``BEGIN IMMEDIATE``:

- the threads of one process on a reentrant lock: the next starts the moment the one
  before it commits;
- the processes (``stagelr serve --workers N``, or a CLI command beside a server) on an
  advisory ``flock`` of a file next to the database, ``<database>-writer.lock``: one
  thread per process waits for it, polling at most every 2 ms, and the kernel releases it
  when a process dies, so a killed worker never holds it.

The wait is bounded like SQLite's own (``timeout``, the busy timeout): past it the
transaction fails as SQLite's would ("database is locked"), which the store answers as
503 store-unavailable. SQLite's busy handler stays armed underneath, for a writer that
does not use this queue (an older server on the same file).
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path
from types import TracebackType

from sqlalchemy import exc as sa_exc

__all__ = ["WriteQueue"]

#: Sleeps between two tries of another process's lock, in seconds (then the last, again).
_POLL_S = (0.0002, 0.0005, 0.001, 0.002)


class WriteQueue:
    """A reentrant lock over this process's threads and every process on ``database``."""

    def __init__(self, database: str | Path, timeout: float) -> None:
        self.path = Path(f"{database}-writer.lock")
        self.timeout = timeout
        self._threads = threading.RLock()
        self._depth = 0  # changed only by the thread holding ``_threads``
        self._fd = -1  # opened at the first take, closed by close()

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock (the thread's second take is free); False if ``blocking`` is
        False and another thread or process holds it. Raises OperationalError when the
        wait outlasts ``timeout``."""
        deadline = time.monotonic() + self.timeout
        if not self._threads.acquire(blocking, self.timeout if blocking else -1):
            if not blocking:
                return False
            raise _locked()
        if self._depth == 0:
            try:
                got = self._flock(deadline if blocking else None)
            except BaseException:
                self._threads.release()
                raise
            if not got:
                self._threads.release()
                if not blocking:
                    return False
                raise _locked()
        self._depth += 1
        return True

    def _flock(self, deadline: float | None) -> bool:
        if self._fd < 0:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        tries = 0
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if deadline is None or time.monotonic() >= deadline:
                    return False
            time.sleep(_POLL_S[min(tries, len(_POLL_S) - 1)])
            tries += 1

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._threads.release()

    def close(self) -> None:
        """Close the lock file, unless a thread holds the lock (the next take opens it
        again)."""
        with self._threads:
            if self._depth == 0 and self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> WriteQueue:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _locked() -> sa_exc.OperationalError:
    # The error SQLite's busy timeout gives, so that the store treats it alike (503).
    return sa_exc.OperationalError(
        "BEGIN IMMEDIATE", None, Exception("database is locked (stagelr's write queue)")
    )
