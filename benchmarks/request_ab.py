"""Paired A/B of the server's CPU per request, between two code trees.

Two `stagelr serve` processes run side by side, each from its own interpreter (the venv
of a worktree: ``git worktree add /tmp/before <commit>`` and ``make .venv/.installed``
there), each on its own SQLite file. One client drives the same simulated studies
through both, alternating call by call, so that both see the same machine at the same
moment: on a shared VM whose speed drifts by 2x within hours, only a paired comparison
says what a code change did. Figures: the server's CPU (all its threads, from
``/proc/<pid>/task/*/schedstat``, nanoseconds) per ``next``, per ``complete`` carrying
the segment's reports, and per ``GET`` of a segment; medians, and the ratio B/A.

    python benchmarks/request_ab.py /tmp/before/.venv/bin/python .venv/bin/python
    python benchmarks/request_ab.py A_PYTHON B_PYTHON --studies 8 --json out.json

Linux only (schedstat). The servers run with OMP_NUM_THREADS=1, as `stagelr serve` would
under the load benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from stagelr import Client
from stagelr.models import ObservationIn, StudyConfig
from stagelr_service.testing.simulation import SyntheticJob

CALLS = ("next", "complete", "get")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(
    python: str, folder: Path, pythonpath: str | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """`stagelr serve` of ``python``'s install on a fresh SQLite file (``pythonpath``: a
    tree's code first instead, ``trees.tree_pythonpath``); (process, url)."""
    env = {
        **os.environ,
        **({"PYTHONPATH": pythonpath} if pythonpath is not None else {}),
        "STAGELR_DATABASE_URL": f"sqlite:///{folder}/ab.db",
        "STAGELR_AUTH": "off",
        "STAGELR_LOG_LEVEL": "warning",
        "OMP_NUM_THREADS": "1",
    }
    cli = [python, "-m", "stagelr_service.cli"]
    subprocess.run([*cli, "migrate"], env=env, check=True, capture_output=True)
    port = _free_port()
    process = subprocess.Popen(
        [*cli, "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{python}: stagelr serve did not come up")


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid`` so far (ns resolution, unlike psutil's ticks)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as stat:
                total += int(stat.read().split()[0])
        except OSError:  # a thread that ended meanwhile
            continue
    return total / 1e9


def run(pythons: dict[str, str], studies: int, skip: int) -> dict[str, Any]:
    servers = {name: start(python, Path(tempfile.mkdtemp())) for name, python in pythons.items()}
    clients = {name: Client(url) for name, (_, url) in servers.items()}
    cpu: dict[str, dict[str, list[float]]] = {name: {c: [] for c in CALLS} for name in servers}

    def timed(name: str, call: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        pid = servers[name][0].pid
        time.sleep(0.01)  # the previous call's tail (its response, the loop) is done
        before = cpu_seconds(pid)
        answer = fn(*args, **kwargs)
        time.sleep(0.02)
        cpu[name][call].append(cpu_seconds(pid) - before)
        return answer

    try:
        for round_ in range(studies):
            config = StudyConfig(
                lr_min=1e-4,
                lr_max=3.0,
                seed=round_,
                total_steps=1000,
                tau0=1000,
                tau_max=1000,
                k=10,
                metric_schedule="train_loss",
            )
            ids = {n: c.create_study(f"ab-{round_}", config).id for n, c in clients.items()}
            jobs = {name: SyntheticJob(seed=round_, noise=0.003) for name in servers}
            done: set[str] = set()
            # Alternate which tree goes first, so neither always runs on a warmer cache.
            order = list(servers) if round_ % 2 == 0 else list(reversed(servers))
            while len(done) < len(servers):
                for name in order:
                    if name in done:
                        continue
                    client = clients[name]
                    answer = timed(name, "next", client.next_segment, ids[name])
                    segment = answer.segment
                    if segment is None or segment.kind.value != "explore":
                        done.add(name)
                        continue
                    reports, _ = jobs[name].train(
                        segment.lr, segment.steps, segment.report_every, explore=True
                    )
                    points = [ObservationIn(step=s, value=v) for s, v in reports]
                    timed(
                        name, "complete", client.complete_segment, segment.id, observations=points
                    )
                    timed(name, "get", client.get_segment, segment.id)
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(timeout=30)
    a, b = list(servers)
    rows = {}
    for call in CALLS:
        med = {name: statistics.median(cpu[name][call][skip:]) * 1e3 for name in servers}
        rows[call] = {"A_ms": med[a], "B_ms": med[b], "B_over_A": med[b] / med[a]}
    return {"pythons": pythons, "studies": studies, "skipped": skip, "median_cpu": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", help="the interpreter of tree A (e.g. the code before)")
    parser.add_argument("b", help="the interpreter of tree B (e.g. the code after)")
    parser.add_argument("--studies", type=int, default=8, help="studies per tree (10 calls each)")
    parser.add_argument("--skip", type=int, default=10, help="first calls left out (warm-up)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    result = run({"A": args.a, "B": args.b}, args.studies, args.skip)
    print(f"server CPU per request, median (A: {args.a}; B: {args.b})")
    for call, row in result["median_cpu"].items():
        print(
            f"  {call:9s} A {row['A_ms']:6.2f} ms   B {row['B_ms']:6.2f} ms   "
            f"B/A {row['B_over_A']:.3f}"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
