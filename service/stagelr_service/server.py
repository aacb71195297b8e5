"""Running the server: in the foreground, in a background thread, or as a child process."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httpx
import uvicorn

from .api import create_app
from .settings import Settings, settings_environment


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


#: The app factory uvicorn imports in each worker process (``--workers N``).
APP_FACTORY = "stagelr_service.api.app:create_app"


def serve(settings: Settings) -> None:
    """Serve until interrupted (``stagelr serve``); with ``settings.workers`` above 1,
    as that many processes on one port (uvicorn's supervisor restarts one that dies).

    The caller has checked (or migrated) the schema: workers only check it, so that N
    processes never run a migration at once. Workers read their settings from the
    environment, so ``settings`` (command-line overrides included) is put there first.
    """
    from .api.observability import log_config

    workers = settings.worker_count
    common: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "log_config": log_config(settings),
        "access_log": False,  # the app's request middleware writes the access log
    }
    if workers == 1:
        uvicorn.run(create_app(settings), **common)
        return
    os.environ.update(settings_environment(settings.model_copy(update={"auto_migrate": False})))
    with _metrics_folder():
        uvicorn.run(APP_FACTORY, factory=True, workers=workers, **common)


@contextmanager
def _metrics_folder() -> Iterator[Path]:
    """The folder where the workers' Prometheus counters meet (PROMETHEUS_MULTIPROC_DIR):
    the one given, emptied (Prometheus' rule: a fresh folder at each start), else a
    temporary one, removed at exit."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        folder = Path(given)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.db"):
            stale.unlink()
        yield folder
        return
    folder = Path(tempfile.mkdtemp(prefix="stagelr-metrics-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    try:
        yield folder
    finally:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        shutil.rmtree(folder, ignore_errors=True)


class BackgroundServer:
    """A real uvicorn server on a loopback port, in a daemon thread (``demo --local``)."""

    def __init__(self, settings: Settings) -> None:
        port = settings.port or free_port(settings.host)
        self.settings = settings.model_copy(update={"port": port})
        config = uvicorn.Config(
            create_app(self.settings),
            host=self.settings.host,
            port=port,
            log_level="warning",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="stagelr-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.port}"

    def start(self, timeout: float = 60.0) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the stagelr server failed to start; see the log above")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the stagelr server did not start within {timeout:.0f} s")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass
class ServerProcess:
    """A `stagelr serve` child process on a loopback port, with its log in a file."""

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
        _children.pop(self.process.pid, None)
        self._close_log()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


#: The `stagelr serve` children this process started and has not stopped, by pid.
_children: dict[int, ServerProcess] = {}


def _stop_children() -> None:
    """Stop every child still running (at exit: a caller that never stopped its own)."""
    for child in list(_children.values()):
        child.stop()


atexit.register(_stop_children)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM ends this process as an exception would, so ``finally`` blocks and the
    exit handler stop its servers; by default it dies at once and orphans them."""
    raise SystemExit(128 + signum)


def _own_children() -> None:
    """Make sure this process stops its `stagelr serve` children when it ends: at exit
    (:func:`_stop_children`), and on SIGTERM (``pkill`` of a benchmark) where the program
    has not set a handler of its own. Only the main thread may set one; elsewhere the
    exit handler has to do."""
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    ):
        signal.signal(signal.SIGTERM, _exit_on_sigterm)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the `stagelr` command (as ``python -m stagelr_service.cli``) to completion."""
    return subprocess.run(
        [sys.executable, "-m", "stagelr_service.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        check=False,
    )


def start_server(
    database_url: str,
    log_path: Path,
    *,
    migrate: bool = True,
    timeout: float = 90.0,
    env: dict[str, str] | None = None,
    port: int | None = None,
) -> ServerProcess:
    """Migrate the database (unless told not to) and start `stagelr serve` on it.

    ``env`` adds or overrides ``STAGELR_*`` settings of the child; auth is off unless
    ``env`` sets ``STAGELR_AUTH``. ``port`` reuses a given port (a restart after a crash).
    """
    env = {"STAGELR_DATABASE_URL": database_url, "STAGELR_AUTH": "off", **(env or {})}
    if migrate:
        done = run_cli("migrate", env=env)
        if done.returncode != 0:
            raise RuntimeError(f"stagelr migrate failed:\n{done.stderr}")
    port = port or free_port()
    log = log_path.open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "stagelr_service.cli", "serve", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
    )
    server = ServerProcess(f"http://127.0.0.1:{port}", database_url, process, log_path, log)
    _own_children()
    _children[process.pid] = server
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
