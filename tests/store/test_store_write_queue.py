"""SQLite write transactions of one process queue on the Store's lock, not in SQLite's
busy handler (which polls at up to 100 ms intervals and made the load benchmark's tail)."""

from __future__ import annotations

import threading
from pathlib import Path

from stagelr_service.store import Store


def test_a_sqlite_write_transaction_holds_the_write_queue(tmp_path: Path) -> None:
    with Store(f"sqlite:///{tmp_path}/queue.db") as store:
        store.migrate()
        lock = store._write_lock
        assert lock is not None
        free_during: list[bool] = []

        def probe() -> None:
            got = lock.acquire(blocking=False)
            free_during.append(got)
            if got:
                lock.release()

        with store.transaction() as repo:
            repo.get_or_create_project("p")
            other = threading.Thread(target=probe)
            other.start()
            other.join()
        probe_after = threading.Thread(target=probe)
        probe_after.start()
        probe_after.join()
        assert free_during == [False, True]


def test_sqlite_reads_do_not_wait_for_the_write_queue(tmp_path: Path) -> None:
    with Store(f"sqlite:///{tmp_path}/queue.db") as store:
        store.migrate()
        lock = store._write_lock
        assert lock is not None
        seen: list[int] = []

        def read() -> None:
            with store.transaction(read_only=True) as repo:
                seen.append(len(repo.list_studies(project=None)[0]))

        with lock:  # another writer is in the queue; a reader still runs
            reader = threading.Thread(target=read)
            reader.start()
            reader.join(timeout=30)
        assert seen == [0]


def test_sqlite_writers_in_many_threads_all_commit(tmp_path: Path) -> None:
    with Store(f"sqlite:///{tmp_path}/queue.db") as store:
        store.migrate()
        errors: list[BaseException] = []

        def write(i: int) -> None:
            try:
                with store.transaction() as repo:
                    repo.get_or_create_project(f"p{i % 4}")
            except BaseException as exc:  # collected, asserted below
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(i,)) for i in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        with store.transaction(read_only=True) as repo:
            assert {repo.get_or_create_project(f"p{i}").name for i in range(4)} == {
                "p0",
                "p1",
                "p2",
                "p3",
            }
