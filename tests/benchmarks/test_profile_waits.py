"""benchmarks/profile_waits.py sorts a py-spy raw profile's stacks into what they wait on."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import profile_waits  # noqa: E402

HANDLER = "WorkerThread.run (anyio/_backends/_asyncio.py:1);_run_sync_endpoint (fastapi/x.py:2)"


def test_stacks_fall_into_their_categories(tmp_path: Path) -> None:
    lines = [
        f"process 1:serve;{HANDLER};Store.transaction (stagelr_service/store/database.py:3) 5",
        f"process 1:serve;{HANDLER};WriteQueue.acquire (store/write_queue.py:4);"
        "WriteQueue._flock (store/write_queue.py:5) 2",
        f"process 1:serve;{HANDLER};GPOptimizer.propose (stagelr_service/optimizer/gp.py:6) 3",
        f"process 1:serve;{HANDLER};GPOptimizer.propose (stagelr_service/optimizer/gp.py:6);"
        "_fit_map (stagelr_service/optimizer/gp.py:7) 4",
        f"process 1:serve;{HANDLER};Session.execute (sqlalchemy/orm/session.py:8) 6",
        "process 1:serve;WorkerThread.run (anyio/_backends/_asyncio.py:1);get (queue.py:9) 7",
        "process 1:serve;run (uvloop/__init__.py:10) 8",
    ]
    path = tmp_path / "p.txt"
    path.write_text("\n".join(lines) + "\n")
    counts = profile_waits.summarize(path)
    c = profile_waits.CATEGORIES
    assert counts == {c[0]: 5, c[1]: 2, c[2]: 3, c[4]: 4, c[3]: 6, c[7]: 7, c[8]: 8}


def test_an_async_handlers_service_call_on_a_pool_thread_is_the_handlers_work(
    tmp_path: Path,
) -> None:
    pool = "WorkerThread.run (anyio/_backends/_asyncio.py:1);run (contextvars:2)"
    service = "StudyService.complete_and_next (stagelr_service/studies.py:3)"
    lines = [
        f"process 1:serve;{pool};{service};Store.transaction (store/database.py:4) 5",
        f"process 1:serve;{pool};{service};Connection.execute (sqlalchemy/engine/base.py:5) 6",
        f"process 1:serve;{pool};{service};_fit_map (stagelr_service/optimizer/gp.py:6) 4",
        f"process 1:serve;{pool};{service};history (stagelr_service/history.py:7) 2",
        f"process 1:serve;{pool};get (queue.py:9) 7",  # waiting for a request
    ]
    path = tmp_path / "p.txt"
    path.write_text("\n".join(lines) + "\n")
    c = profile_waits.CATEGORIES
    assert profile_waits.summarize(path) == {c[0]: 5, c[3]: 6, c[4]: 4, c[6]: 2, c[7]: 7}
