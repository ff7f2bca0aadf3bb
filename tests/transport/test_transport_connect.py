"""Opening connections: handshake, negotiation, TLS, and every way connecting fails."""

from __future__ import annotations

import json
import socket
import time

import pytest

from loadgen.transport import ConnectError, ConnectTimeout, HandshakeError, WebSocketClient


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_echo_text_and_binary(peer, connect, inbox):
    """Text and binary messages round-trip with their type, text as raw UTF-8 bytes."""
    client = connect(peer.url("/echo"))
    client.send_text("héllo")
    client.send_text(b'{"op": "join"}')
    client.send_binary(b"\x00\xff")

    assert inbox.wait_messages(3) == [("héllo".encode(), False), (b'{"op": "join"}', False), (b"\x00\xff", True)]
    assert all(type(payload) is bytes for payload, _ in inbox.messages)
    assert not client.closed and client.close_code is None


def test_subprotocol_negotiated(peer, connect, inbox):
    """The subprotocol the server picked among those offered is exposed."""
    client = connect(peer.url("/subproto"), subprotocols=["chat.v1", "other"])

    assert client.subprotocol == "chat.v1"
    assert inbox.wait_messages(1) == [(b"chat.v1", False)]


def test_extra_headers_reach_the_server(peer, connect, inbox):
    """Extra headers are sent with the upgrade request."""
    connect(peer.url("/headers"), headers={"Authorization": "Bearer t0ken", "X-Loadgen-Run": "r1"})

    headers = json.loads(inbox.wait_messages(1)[0][0])
    assert ["Authorization", "Bearer t0ken"] in headers
    assert ["X-Loadgen-Run", "r1"] in headers


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]"])
def test_refused_connection_is_connect_error(scaled, host):
    """A port with nothing listening fails at once with ConnectError, not a timeout; IPv6 literals too."""
    url = f"ws://{host}:{_free_port()}/"
    started = time.monotonic()
    with pytest.raises(ConnectError) as info:
        WebSocketClient.connect(url, on_message=lambda payload, binary: None, timeout=scaled(30))

    assert type(info.value) is ConnectError
    assert info.value.url == url
    # with IPv6 off in the kernel, the address family itself is refused
    assert "refused" in info.value.reason.lower() or "not supported" in info.value.reason.lower()
    assert time.monotonic() - started < scaled(10)


def test_unanswered_upgrade_is_connect_timeout(peer, scaled):
    """A server that accepts TCP but never answers the upgrade fails with ConnectTimeout."""
    with pytest.raises(ConnectTimeout):
        WebSocketClient.connect(peer.raw_url("/hang"), on_message=lambda payload, binary: None, timeout=0.5)


def test_refused_upgrade_is_handshake_error_with_status(peer):
    """A non-101 answer fails with HandshakeError carrying the HTTP status."""
    with pytest.raises(HandshakeError) as info:
        WebSocketClient.connect(peer.url("/status/403"), on_message=lambda payload, binary: None)

    assert info.value.status == 403
    assert isinstance(info.value, ConnectError)


def test_bad_arguments_are_value_errors(peer, tls_client_context):
    """A malformed URL, or a TLS context for a ws:// URL, is a usage error."""
    with pytest.raises(ValueError):
        WebSocketClient.connect("http://127.0.0.1/", on_message=lambda payload, binary: None)
    with pytest.raises(ValueError):
        WebSocketClient.connect(
            peer.url("/echo"), on_message=lambda payload, binary: None, ssl_context=tls_client_context
        )


def test_wss_round_trip(peer, connect, inbox, tls_client_context):
    """Messages round-trip over TLS with a stdlib SSLContext that trusts the server's CA."""
    client = connect(peer.tls_url("/echo"), ssl_context=tls_client_context)
    client.send_text("over tls")
    client.send_binary(bytes(range(256)) * 64)

    assert inbox.wait_messages(2) == [(b"over tls", False), (bytes(range(256)) * 64, True)]


def test_wss_untrusted_certificate_is_connect_error(peer):
    """The default TLS context rejects a certificate from an unknown CA."""
    with pytest.raises(ConnectError) as info:
        WebSocketClient.connect(peer.tls_url("/echo"), on_message=lambda payload, binary: None)

    assert "TLS" in info.value.reason
    assert not isinstance(info.value, HandshakeError)
