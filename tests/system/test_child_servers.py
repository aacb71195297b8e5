"""A program that starts `stagelr serve` children (a benchmark, the demo) stops them when
it ends: on SIGTERM (``pkill`` of a benchmark) and at a plain exit that forgot to. Before,
SIGTERM killed the program at once and left its server running, orphaned, on its port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]

#: Starts a server, prints its pid, then (``wait``) sleeps until killed, or returns
#: without stopping it.
PROGRAM = """
import sys, time
from pathlib import Path
from stagelr_service.server import start_server
folder = Path(sys.argv[1])
server = start_server(f"sqlite:///{folder}/s.db", folder / "server.log")
print(server.process.pid, flush=True)
if sys.argv[2] == "wait":
    time.sleep(120)
"""


def _gone(pid: int, timeout: float = 30.0) -> bool:
    """Whether process ``pid`` has exited (reaped, or a zombie) within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state == "Z":
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def _start(tmp_path: Path, mode: str) -> tuple[subprocess.Popen[str], int]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "service"), str(ROOT)])}
    program = subprocess.Popen(
        [sys.executable, "-c", PROGRAM, str(tmp_path), mode],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert program.stdout is not None
    line = program.stdout.readline()
    assert line.strip().isdigit(), f"the program printed {line!r}"
    return program, int(line)


def _end(program: subprocess.Popen[str], server: int) -> None:
    """Whatever the test found, leave no process behind."""
    program.kill()
    program.wait(timeout=30)
    assert program.stdout is not None
    program.stdout.close()
    if not _gone(server, timeout=0):
        os.kill(server, signal.SIGKILL)


def test_sigterm_stops_the_server_child(tmp_path: Path) -> None:
    program, server = _start(tmp_path, "wait")
    try:
        program.send_signal(signal.SIGTERM)
        program.wait(timeout=60)
        assert _gone(server), "SIGTERM of the program left its server running"
        assert program.returncode == 128 + signal.SIGTERM  # a SystemExit, not the signal
    finally:
        _end(program, server)


def test_exit_stops_a_server_never_stopped(tmp_path: Path) -> None:
    program, server = _start(tmp_path, "return")
    try:
        assert program.wait(timeout=60) == 0
        assert _gone(server), "the program exited and left its server running"
    finally:
        _end(program, server)
