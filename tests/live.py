"""A real `stagelr serve` process on a free loopback port, for API and end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from stagelr_service.server import free_port


@dataclass
class LiveServer:
    url: str
    database_url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    _log_file: IO[bytes] | None = None

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self._close_log()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the `stagelr` command (as ``python -m stagelr_service.cli``)."""
    return subprocess.run(
        [sys.executable, "-m", "stagelr_service.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        check=False,
    )


def start_server(
    database_url: str, log_path: Path, *, migrate: bool = True, timeout: float = 90.0
) -> LiveServer:
    """Migrate the database (unless told not to) and start `stagelr serve` on it."""
    env = {"STAGELR_DATABASE_URL": database_url}
    if migrate:
        done = run_cli("migrate", env=env)
        assert done.returncode == 0, done.stderr
    port = free_port()
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "stagelr_service.cli", "serve", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
    )
    server = LiveServer(f"http://127.0.0.1:{port}", database_url, process, log_path, log)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            server.stop()
            raise RuntimeError(f"stagelr serve exited with {process.returncode}:\n{server.log()}")
        try:
            if httpx.get(server.url + "/healthz", timeout=1.0).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise TimeoutError(f"stagelr serve did not come up:\n{server.log()}")
        time.sleep(0.1)
