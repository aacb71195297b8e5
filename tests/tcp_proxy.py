"""A real TCP proxy for fault injection: pass through, drop, delay, stall, refuse.

It sits between a client and a live server on a loopback port and can, at any moment:

- ``pass_through()``: forward bytes both ways;
- ``drop()``: accept connections and close them at once (the client sees a reset or an
  empty answer), and cut the ones open now;
- ``delay(seconds)``: hold every chunk of bytes that long before forwarding it;
- ``stall()``: accept connections and forward nothing, either way, on new or open
  connections (a hung server or a black-holed network: nothing fails, nothing answers);
  ``drop()`` after it is a stall that ends in resets, ``pass_through()`` one that ends
  well (the held bytes then flow);
- ``refuse()``: stop listening, so connecting fails with "connection refused" (and cut
  the open connections); ``pass_through()`` listens again on the same port.

``retarget(port)`` sends new connections to another server (a restarted one, or the
other replica). Threads, plain sockets: no event loop to share with the code under test.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable
from types import TracebackType

__all__ = ["TcpProxy"]


class TcpProxy:
    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.target_port = target_port
        self.mode = "pass"
        self.delay_s = 0.0
        #: Connections accepted, and connections cut by a fault (for the figures).
        self.connections = 0
        self.cut = 0
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._state = threading.Lock()  # listener changes (a timer may race a test)
        self._timers: list[threading.Timer] = []
        self._closed = False
        self.port = 0
        self.port = self._listen()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ------------------------------------------------------------------ faults

    def pass_through(self) -> None:
        self.mode, self.delay_s = "pass", 0.0
        self._listen()

    def delay(self, seconds: float) -> None:
        self.mode, self.delay_s = "pass", seconds
        self._listen()

    def stall(self) -> None:
        self.mode = "stall"
        self._listen()

    def drop(self) -> None:
        self.mode = "drop"
        self._listen()
        self._cut_all()

    def refuse(self) -> None:
        with self._state:
            self.mode = "refuse"
            listener, self._listener = self._listener, None
            if listener is not None:
                # shutdown first: a thread blocked in accept() keeps a closed socket
                # listening on Linux; shutdown wakes it and stops the listening.
                with contextlib.suppress(OSError):
                    listener.shutdown(socket.SHUT_RDWR)
                listener.close()
        self._cut_all()

    def after(self, seconds: float, action: Callable[[], None]) -> None:
        """Run ``action`` (e.g. ``pass_through``) in ``seconds``, unless closed first."""
        timer = threading.Timer(seconds, action)
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def retarget(self, port: int) -> None:
        self.target_port = port

    def close(self) -> None:
        self._closed = True
        for timer in self._timers:
            timer.cancel()
        self.refuse()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing

    def _listen(self) -> int:
        with self._state:
            if self._listener is not None or self._closed:
                return self.port
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self.port))
            listener.listen(128)
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return int(listener.getsockname()[1])

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the listener was closed: refuse()
            self.connections += 1
            while self.mode == "stall" and not self._closed:
                time.sleep(0.02)  # hold the new connection unanswered
            if self.mode != "pass":
                self._abort(client)
                continue
            try:
                upstream = socket.create_connection((self.host, self.target_port), timeout=5)
            except OSError:
                self._abort(client)  # the server is down: the client sees a reset
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                if self.delay_s:
                    time.sleep(self.delay_s)
                while self.mode == "stall" and not self._closed:
                    time.sleep(0.02)  # hold the bytes until the stall ends
                if self.mode != "pass":
                    break
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                self._forget(sock)

    def _abort(self, sock: socket.socket) -> None:
        # SO_LINGER 0: close with a RST, as a crashed peer or a dropping middlebox does.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    def _forget(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def _cut_all(self) -> None:
        with self._lock:
            victims, self._open = list(self._open), set()
        self.cut += len(victims)
        for sock in victims:
            self._abort(sock)
