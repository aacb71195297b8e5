"""Where a server's threads wait: a py-spy raw profile, in categories.

Reads what ``benchmarks/load.py --profile FILE.txt --profile-idle`` wrote (py-spy's raw
format, waiting threads included) and prints, per category, its share of the sampled
thread time: the request handlers waiting for SQLite's write queue or the optimizer's
lock, doing SQL, the GP, the forecast fit; pool threads with no request; the event loop.
A thread that has just been woken from a lock and waits for the GIL still shows the
lock's line, so "waiting for the write queue" includes the wait for the interpreter
that follows it.

    python benchmarks/profile_waits.py /tmp/p-old.txt /tmp/p-new.txt
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

CATEGORIES = (
    "handler: waiting for SQLite's write queue (threads of the process)",
    "handler: waiting for SQLite's write queue (other processes: the file lock)",
    "handler: waiting for the optimizer's lock",
    "handler: SQL (SQLAlchemy, the driver)",
    "handler: GP",
    "handler: forecast fit",
    "handler: other work",
    "pool thread with no request",
    "event loop (HTTP, routing, serialization, idle)",
    "other threads",
)


def category(frames: list[str]) -> str:
    """The category of one sampled stack (frames outermost first, as py-spy writes)."""
    stack = ";".join(frames)
    leaf = frames[-1]
    # A request's work on a pool thread: the service call an async handler hands to the
    # pool (its frames are stagelr's), or a plain `def` endpoint as FastAPI runs it.
    if "_run_sync_endpoint" in stack or (
        "WorkerThread.run" in stack and "(stagelr_service/" in stack
    ):
        if "WriteQueue._flock" in stack:
            return CATEGORIES[1]
        # A C-level lock acquire shows the Python line that called it.
        if leaf.startswith(("WriteQueue.acquire", "Store.transaction")):
            return CATEGORIES[0]
        if leaf.startswith("GPOptimizer.propose") and "_fit_map" not in stack:
            return CATEGORIES[2]
        if "optimizer/gp.py" in stack:
            return CATEGORIES[4]
        if "/forecast/" in stack:
            return CATEGORIES[5]
        if "sqlalchemy" in stack or "sqlite3" in stack or "psycopg" in stack:
            return CATEGORIES[3]
        return CATEGORIES[6]
    if "WorkerThread.run" in stack:
        return CATEGORIES[7]
    if any(name in stack for name in ("uvloop", "asyncio", "uvicorn", "starlette", "fastapi")):
        return CATEGORIES[8]
    return CATEGORIES[9]


def summarize(path: Path) -> Counter[str]:
    counts: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")[1:]  # the first is the process
        if frames:
            counts[category(frames)] += int(count)
    return counts


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profiles", type=Path, nargs="+", help="py-spy raw files (--profile-idle)")
    args = parser.parse_args(argv)
    tables = {path.name: summarize(path) for path in args.profiles}
    width = max(len(c) for c in CATEGORIES)
    print(f"{'share of sampled thread time':<{width}} " + " ".join(f"{n:>14}" for n in tables))
    for name in CATEGORIES:
        shares = []
        for counts in tables.values():
            total = sum(counts.values()) or 1
            shares.append(f"{100 * counts[name] / total:>13.1f}%")
        print(f"{name:<{width}} " + " ".join(shares))
    print(f"{'samples':<{width}} " + " ".join(f"{sum(c.values()):>14}" for c in tables.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
