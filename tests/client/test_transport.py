"""The client's default transport shares one TLS context per process and CA source, and
that context still verifies: against a real HTTPS server on a socket, with a self-signed
certificate made by the ``openssl`` command."""

from __future__ import annotations

import http.server
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import stagelr
from stagelr import _transport


@pytest.fixture
def fresh_contexts(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """An empty context cache, and the calls that built a verifying context."""
    monkeypatch.setattr(_transport, "_SSL_CONTEXTS", {}, raising=False)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    built: list[Any] = []
    real = ssl.create_default_context

    def counting(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        built.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(ssl, "create_default_context", counting)
    return built


def test_clients_of_one_process_build_the_tls_context_once(fresh_contexts: list[Any]) -> None:
    clients = [stagelr.Client("http://127.0.0.1:1") for _ in range(4)]
    transports = [stagelr.RetryTransport() for _ in range(2)]
    assert len(fresh_contexts) == 1
    context = _transport.default_ssl_context()
    # httpx's default: the hostname checked, the certificate required
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    for client in clients:
        client.close()
    for transport in transports:
        transport.close()


def test_another_ca_source_gets_its_own_context(
    fresh_contexts: list[Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    default = _transport.default_ssl_context()
    bundle = tmp_path / "ca.pem"
    bundle.write_text(Path(__import__("certifi").where()).read_text())
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    mine = _transport.default_ssl_context()
    assert mine is not default and _transport.default_ssl_context() is mine
    assert [call.get("cafile") for call in fresh_contexts][-1] == str(bundle)


@pytest.fixture
def https_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTPS server on 127.0.0.1 answering /healthz, with a self-signed
    certificate for that address; its URL and the certificate's file."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"status": "ok"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", cert
    finally:
        server.shutdown()
        server.server_close()


def test_the_shared_context_verifies_the_server(
    fresh_contexts: list[Any], monkeypatch: pytest.MonkeyPatch, https_server: tuple[str, Path]
) -> None:
    url, cert = https_server
    one_try = stagelr.RetryTransport(max_attempts=1)
    with pytest.raises(stagelr.TransportError) as caught:
        stagelr.Client(url, transport=one_try).health()
    assert "CERTIFICATE_VERIFY_FAILED" in repr(caught.value.__cause__)
    # trusting the server's own certificate (SSL_CERT_FILE, as httpx reads it) passes
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    assert stagelr.Client(url).health() == {"status": "ok"}
    # and the first context, without that trust, is still shared as it was
    monkeypatch.delenv("SSL_CERT_FILE")
    with pytest.raises(stagelr.TransportError):
        stagelr.Client(url, transport=stagelr.RetryTransport(max_attempts=1)).health()
    assert len(fresh_contexts) == 2
