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
