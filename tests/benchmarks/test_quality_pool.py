"""The quality benchmark's pool of training processes: an interrupted benchmark does not
leave its workers training, orphaned (they die with it, by Linux's parent death signal,
however it ends)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: A benchmark's pool of workers, one of them busy, then killed outright.
POOL = """
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from benchmarks.quality import harness
pool = ProcessPoolExecutor(max_workers=2, mp_context=get_context("spawn"),
                           initializer=harness._init_pool_worker, initargs=(None,))
list(pool.map(time.sleep, [0, 0]))
pool.submit(time.sleep, 120)
print(" ".join(str(pid) for pid in pool._processes), flush=True)
time.sleep(120)
"""


def test_a_killed_benchmark_takes_its_pool_workers_with_it() -> None:
    bench = subprocess.Popen(
        [sys.executable, "-c", POOL], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert bench.stdout is not None
    workers = [int(p) for p in bench.stdout.readline().split()]
    assert len(workers) == 2
    bench.send_signal(signal.SIGKILL)
    bench.wait(timeout=30)
    bench.stdout.close()

    def alive(pid: int) -> bool:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] != "Z"

    deadline = time.monotonic() + 30
    while any(alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [p for p in workers if alive(p)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, "the benchmark's workers outlived it"
