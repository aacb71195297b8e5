"""Retries, in one place: an httpx transport that wraps another."""

from __future__ import annotations

import os
import random
import ssl
import threading
import time
from collections.abc import Callable, Collection

import httpx

__all__ = ["RETRY_STATUSES", "RetryTransport", "default_ssl_context"]

#: Status codes worth another try: the server or a proxy in front of it failed.
RETRY_STATUSES: frozenset[int] = frozenset({500, 502, 503, 504})


_SSL_LOCK = threading.Lock()
_SSL_CONTEXTS: dict[tuple[str | None, str | None], ssl.SSLContext] = {}


def default_ssl_context() -> ssl.SSLContext:
    """httpx's default verifying context (``httpx.create_ssl_context()``: certifi's CA
    bundle, or ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` when set), built once per process and
    CA source and shared by every client that does not bring its own transport.

    Building one reads and parses the whole CA bundle: about 20 ms of CPU, which httpx
    spends on every ``HTTPTransport()``, so on every :class:`stagelr.Client` and
    :class:`stagelr.Tuner` made. One context serves any number of connections (the
    ``ssl`` module allows sharing it between threads), so a process that runs many jobs
    pays it once. Connections to ``http://`` URLs never use it.
    """
    key = (os.environ.get("SSL_CERT_FILE") or None, os.environ.get("SSL_CERT_DIR") or None)
    with _SSL_LOCK:
        context = _SSL_CONTEXTS.get(key)
        if context is None:
            context = _SSL_CONTEXTS[key] = httpx.create_ssl_context()
        return context


class RetryTransport(httpx.BaseTransport):
    """Retry failed requests with capped exponential backoff and full jitter.

    A request is sent again when the wrapped transport raises an ``httpx.TransportError``
    (connection refused, timeout...) or answers with a status in ``retry_statuses``. Every
    stagelr endpoint is idempotent, so every retry is safe. Before attempt ``n + 1`` it
    sleeps a uniform random time in ``[0, min(max_delay, backoff * 2**(n - 1))]`` ("full
    jitter", so that many clients do not retry in step), or the server's ``Retry-After``
    when that is longer, still capped at ``max_delay``. After ``max_attempts`` the last
    error is raised, or the last response returned.

    Args:
        transport: The transport to wrap; by default an ``httpx.HTTPTransport`` with the
            process's shared TLS context (:func:`default_ssl_context`).
        max_attempts: Attempts in all, the first included (1 = no retries).
        backoff: Base of the exponential backoff, in seconds.
        max_delay: Longest sleep between two attempts, in seconds.
        retry_statuses: Status codes that are retried.
        sleep: Called with the delay; tests pass a recorder.
        jitter: Returns a float in ``[0, 1)``; tests pass a constant.
    """

    def __init__(
        self,
        transport: httpx.BaseTransport | None = None,
        *,
        max_attempts: int = 5,
        backoff: float = 0.25,
        max_delay: float = 8.0,
        retry_statuses: Collection[int] = RETRY_STATUSES,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._transport = (
            transport
            if transport is not None
            else httpx.HTTPTransport(verify=default_ssl_context())
        )
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_delay = max_delay
        self.retry_statuses = frozenset(retry_statuses)
        self._sleep = sleep
        self._jitter = jitter
        #: Attempts made after a first one failed, over the transport's life (for
        #: monitoring; incremented from any thread that sends).
        self.retries = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        # Buffer the body once so that every attempt can send it again.
        request.read()
        attempt = 1
        while True:
            try:
                response = self._transport.handle_request(request)
            except httpx.TransportError:
                if attempt >= self.max_attempts:
                    raise
                delay = self._delay(attempt)
            else:
                if response.status_code not in self.retry_statuses or (
                    attempt >= self.max_attempts
                ):
                    return response
                delay = max(self._delay(attempt), _retry_after(response))
                response.close()
            self._sleep(min(delay, self.max_delay))
            self.retries += 1
            attempt += 1

    def close(self) -> None:
        self._transport.close()

    def _delay(self, attempt: int) -> float:
        return self._jitter() * min(self.max_delay, self.backoff * 2.0 ** (attempt - 1))


def _retry_after(response: httpx.Response) -> float:
    """The server's ``Retry-After`` in seconds (the delay form only), else 0."""
    try:
        return max(0.0, float(response.headers.get("Retry-After", "0")))
    except ValueError:
        return 0.0
