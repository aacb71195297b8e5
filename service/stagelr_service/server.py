"""Running the server: under uvicorn in the foreground, or in a background thread."""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType

import uvicorn

from .api import create_app
from .settings import Settings


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def serve(settings: Settings) -> None:
    """Serve until interrupted (``stagelr serve``)."""
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
    )


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
