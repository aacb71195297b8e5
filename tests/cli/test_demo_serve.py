"""`stagelr demo --local --serve`: after training, the server stays up on the given port
and the study's dashboard page answers there until the demo is interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from stagelr_service.server import free_port
from tests.live import run_cli


@pytest.mark.slow
def test_serve_keeps_the_demo_server_up_with_the_study_page(tmp_path: Path) -> None:
    port = free_port("127.0.0.1")
    out = tmp_path / "demo.out"
    with out.open("wb") as sink:
        demo = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "stagelr_service.cli",
                "demo",
                "--local",
                "--serve",
                "--port",
                str(port),
                "--total-steps",
                "120",
                "--tau0",
                "40",
                "--tau-max",
                "40",
                "--k",
                "2",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1", "STAGELR_DATA_DIR": str(tmp_path)},
            # A shell's background job inherits SIGINT ignored (POSIX); the test stands in
            # for a user pressing Ctrl-C at a terminal, where it is not.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            deadline = time.monotonic() + 240
            while "Ctrl-C stops it" not in out.read_text():
                assert demo.poll() is None, out.read_text()
                assert time.monotonic() < deadline, out.read_text()
                time.sleep(0.5)
            text = out.read_text()
            url = f"http://127.0.0.1:{port}/dashboard/studies/1"
            assert f"the study's dashboard: {url}" in text
            page = httpx.get(url)
            assert page.status_code == 200 and "demo-digits-" in page.text
            assert demo.poll() is None  # still serving after the page was read
        finally:
            demo.send_signal(signal.SIGINT)
            try:
                # generous: a shared 2-core machine under load can be slow to wind down
                demo.wait(timeout=120)
            except subprocess.TimeoutExpired:
                demo.kill()
                demo.wait()
                pytest.fail("the demo server did not stop within 120 s of Ctrl-C")
    assert demo.returncode == 0, out.read_text()


def test_serve_without_local_says_what_to_give() -> None:
    done = run_cli("demo", "--url", "http://127.0.0.1:9", "--serve")
    assert done.returncode == 2 and "give --local" in done.stderr
