"""SQLite write transactions queue on the Store's write queue (threads on a lock, processes
on a file lock beside the database), not in SQLite's busy handler (which polls at up to
100 ms intervals and made the load benchmark's tail)."""

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


def test_sqlite_writers_of_two_stores_queue_on_one_file_lock(tmp_path: Path) -> None:
    # Two Stores on one file stand for two processes (two `--workers`, a CLI command
    # beside a server): their write transactions queue on the file lock beside the
    # database, not in SQLite's busy handler.
    url = f"sqlite:///{tmp_path}/queue.db"
    with Store(url) as first, Store(url) as second:
        first.migrate()
        queue = second._write_lock
        assert queue is not None
        assert queue.path == tmp_path / "queue.db-writer.lock"
        taken: list[bool] = []

        def probe() -> None:
            got = queue.acquire(blocking=False)
            taken.append(got)
            if got:
                queue.release()

        with first.transaction() as repo:
            repo.get_or_create_project("p")
            other = threading.Thread(target=probe)
            other.start()
            other.join()
        probe()
        assert taken == [False, True]


def test_a_write_queue_wait_past_the_busy_timeout_is_store_unavailable(tmp_path: Path) -> None:
    from stagelr_service.errors import StoreUnavailableError

    url = f"sqlite:///{tmp_path}/queue.db"
    with Store(url) as first, Store(url) as second:
        first.migrate()
        assert second._write_lock is not None
        second._write_lock.timeout = 0.05
        failed: list[BaseException] = []

        def write() -> None:
            try:
                with second.transaction() as repo:
                    repo.get_or_create_project("q")
            except BaseException as exc:  # collected, asserted below
                failed.append(exc)

        with first.transaction() as repo:
            repo.get_or_create_project("p")
            other = threading.Thread(target=write)
            other.start()
            other.join()
        assert len(failed) == 1 and isinstance(failed[0], StoreUnavailableError)
        with second.transaction() as repo:  # free again: it writes
            assert repo.get_or_create_project("q").name == "q"
