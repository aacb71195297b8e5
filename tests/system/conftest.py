"""Fixtures of the whole-system tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.tcp_proxy import TcpProxy


@pytest.fixture()
def proxy(live_server) -> Iterator[TcpProxy]:  # type: ignore[no-untyped-def]
    """A TCP proxy in front of the module's live server, for cutting the job's link."""
    port = int(live_server.url.rsplit(":", 1)[1])
    with TcpProxy(port) as p:
        yield p
