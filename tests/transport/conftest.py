"""Fixtures for the transport tests: the peer subprocess, TLS material, and waiting helpers.

Every wait in these tests goes through ``scaled``: set LOADGEN_TEST_TIMEOUT_SCALE (default
1) to stretch them all on a slow machine.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
import gevent.event
import pytest
import trustme
from gevent.monkey import get_original

from loadgen.transport import ConnectionClosed, WebSocketClient

TIMEOUT_SCALE = float(os.environ.get("LOADGEN_TEST_TIMEOUT_SCALE", "1"))


def scaled(seconds: float) -> float:
    return seconds * TIMEOUT_SCALE


@pytest.fixture(name="scaled")
def scaled_fixture() -> Callable[[float], float]:
    return scaled


@dataclass
class Peer:
    ws_port: int
    wss_port: int
    raw_port: int

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.ws_port}{path}"

    def tls_url(self, path: str) -> str:
        return f"wss://127.0.0.1:{self.wss_port}{path}"

    def raw_url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.raw_port}{path}"


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_client_context(tls_ca: trustme.CA) -> ssl.SSLContext:
    # The stdlib class even when another test module has monkey-patched ssl: that is the
    # case where wrapping the socket the stdlib way would block the whole hub.
    context: ssl.SSLContext = get_original("ssl", "SSLContext")(ssl.PROTOCOL_TLS_CLIENT)
    # Not tls_ca.configure_trust(): it rejects a stdlib context once ssl is patched.
    context.load_verify_locations(cadata=tls_ca.cert_pem.bytes().decode())
    return context


@pytest.fixture(scope="session")
def peer(tmp_path_factory: pytest.TempPathFactory, tls_ca: trustme.CA) -> Iterator[Peer]:
    workdir = tmp_path_factory.mktemp("peer")
    cert = tls_ca.issue_cert("127.0.0.1")
    certfile, keyfile = workdir / "cert.pem", workdir / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    port_file = workdir / "ports.json"
    log_path = workdir / "peer.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).with_name("peer.py")),
                "--port-file",
                str(port_file),
                "--certfile",
                str(certfile),
                "--keyfile",
                str(keyfile),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + scaled(20)
        while not port_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"peer did not start; its log:\n{log_path.read_text()}")
            gevent.sleep(0.02)
        ports: dict[str, int] = json.loads(port_file.read_text())
        yield Peer(ws_port=ports["ws"], wss_port=ports["wss"], raw_port=ports["raw"])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=scaled(10))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Inbox:
    """Collects what a connection delivers and lets a test wait for it."""

    messages: list[tuple[bytes, bool]] = field(default_factory=list)
    closes: list[ConnectionClosed] = field(default_factory=list)
    changed: gevent.event.Event = field(default_factory=gevent.event.Event)

    def on_message(self, payload: bytes, is_binary: bool) -> None:
        self.messages.append((payload, is_binary))
        self.changed.set()

    def on_close(self, exc: ConnectionClosed) -> None:
        self.closes.append(exc)
        self.changed.set()

    def wait_for(self, predicate: Callable[[], bool], seconds: float = 5.0) -> None:
        deadline = time.monotonic() + scaled(seconds)
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"condition not met within {scaled(seconds):g} s: {self!r}")
            self.changed.clear()
            self.changed.wait(remaining)

    def wait_messages(self, count: int, seconds: float = 5.0) -> list[tuple[bytes, bool]]:
        self.wait_for(lambda: len(self.messages) >= count, seconds)
        return self.messages

    def wait_closed(self, seconds: float = 5.0) -> ConnectionClosed:
        self.wait_for(lambda: bool(self.closes), seconds)
        return self.closes[0]

    def __repr__(self) -> str:
        return f"Inbox({len(self.messages)} messages, closes={self.closes})"


@pytest.fixture
def inbox() -> Inbox:
    return Inbox()


@pytest.fixture
def connect(inbox: Inbox) -> Iterator[Callable[..., WebSocketClient]]:
    """Connect with the test's inbox as callbacks; every client is dropped at teardown."""
    clients: list[WebSocketClient] = []

    def _connect(url: str, **kwargs: Any) -> WebSocketClient:
        kwargs.setdefault("on_message", inbox.on_message)
        kwargs.setdefault("on_close", inbox.on_close)
        kwargs.setdefault("timeout", scaled(10))
        client = WebSocketClient.connect(url, **kwargs)
        clients.append(client)
        return client

    yield _connect
    for client in clients:
        client.abort()
