"""Ending connections: close handshakes, lost links, keepalive, and on_close exactly once."""

from __future__ import annotations

import time

import gevent
import pytest

from loadgen.transport import ConnectionClosed


def test_local_close_completes_handshake(peer, connect, inbox):
    """close() runs the closing handshake with 1000, reports it clean, and later sends raise."""
    client = connect(peer.url("/echo"))
    client.close()

    assert client.closed and client.close_code == 1000
    assert len(inbox.closes) == 1
    assert inbox.closes[0].code == 1000 and inbox.closes[0].clean
    with pytest.raises(ConnectionClosed) as info:
        client.send_text("too late")
    assert info.value.code == 1000
    client.close()
    assert len(inbox.closes) == 1


def test_close_with_code_and_reason(peer, connect, inbox):
    """The close code and reason given to close() reach the server, which echoes them."""
    client = connect(peer.url("/echo"))
    client.close(4100, "user left")

    assert (client.close_code, client.close_reason) == (4100, "user left")
    assert not inbox.closes[0].clean


def test_invalid_close_arguments_leave_the_connection_open(peer, connect, inbox):
    """close() with a code that may not be sent raises ValueError and the connection stays usable."""
    client = connect(peer.url("/echo"))
    with pytest.raises(ValueError):
        client.close(1006)
    with pytest.raises(ValueError):
        client.close(1000, "x" * 200)
    client.send_text("still open")

    assert inbox.wait_messages(1) == [(b"still open", False)]
    assert not client.closed


@pytest.mark.parametrize(("code", "clean"), [(4001, False), (1001, True)])
def test_server_close_code_and_reason_surface(peer, connect, inbox, code, clean):
    """A close started by the server reports its code and reason through on_close."""
    client = connect(peer.url(f"/close/{code}"))

    closed = inbox.wait_closed()
    assert (closed.code, closed.reason, closed.clean) == (code, f"closing with {code}", clean)
    assert (client.close_code, client.close_reason) == (code, f"closing with {code}")
    with pytest.raises(ConnectionClosed):
        client.send_text("after close")


def test_frames_arriving_with_the_handshake_response_are_handled(peer, connect, inbox):
    """A message and a close frame sent together with the 101 response are both processed."""
    connect(peer.raw_url("/early"), ping_interval=None)

    closed = inbox.wait_closed()
    assert (closed.code, closed.reason) == (4002, "early")
    assert inbox.messages == [(b"hello", False)]


def test_close_from_on_message_completes(peer, connect, inbox):
    """close() called inside on_message sends the close frame and the reader finishes the handshake."""
    holder = {}

    def on_message(payload: bytes, is_binary: bool) -> None:
        inbox.on_message(payload, is_binary)
        holder["client"].close(1000, "done")

    holder["client"] = connect(peer.url("/echo"), on_message=on_message)
    holder["client"].send_text("bye")

    closed = inbox.wait_closed()
    assert closed.code == 1000 and closed.clean
    assert inbox.messages == [(b"bye", False)]


def test_close_without_answer_is_bounded(peer, connect, inbox, scaled):
    """close() against a peer that never answers returns after its timeout with code 1006."""
    client = connect(peer.raw_url("/noping"), ping_interval=None)
    started = time.monotonic()
    client.close(timeout=0.3)

    assert time.monotonic() - started < scaled(5)
    assert client.close_code == 1006
    assert len(inbox.closes) == 1 and not inbox.closes[0].clean


def test_abort_drops_without_close_frame(peer, connect, inbox):
    """abort() ends the connection at once with 1006 and on_close called once."""
    client = connect(peer.url("/echo"))
    client.abort()

    assert client.closed
    closed = inbox.wait_closed()
    assert closed.code == 1006 and not closed.clean
    with pytest.raises(ConnectionClosed) as info:
        client.send_binary(b"x")
    assert info.value.code == 1006
    client.abort()
    client.close()
    assert len(inbox.closes) == 1


def test_server_vanishing_mid_send_surfaces_as_connection_closed(peer, connect, inbox, scaled):
    """When the server drops TCP, sends raise ConnectionClosed 1006 and on_close runs once."""
    client = connect(peer.url("/vanish"))
    deadline = time.monotonic() + scaled(5)
    raised = None
    for _ in range(2000):
        try:
            client.send_binary(b"m" * 1024)
        except ConnectionClosed as exc:
            raised = exc
            break
        if time.monotonic() > deadline:
            break
        gevent.sleep(0.001)

    assert raised is not None and raised.code == 1006
    inbox.wait_closed()
    gevent.sleep(0.05)  # room for a second on_close, which must not come
    assert len(inbox.closes) == 1 and inbox.closes[0].code == 1006


def test_answered_pings_keep_the_connection(peer, connect, inbox, scaled):
    """With keepalive pings answered, the connection stays open across many ping intervals."""
    client = connect(peer.url("/echo"), ping_interval=0.05, ping_timeout=scaled(1))
    gevent.sleep(1.0)
    client.send_text("still here")

    assert inbox.wait_messages(1) == [(b"still here", False)]
    assert not client.closed and not inbox.closes


def test_missing_pong_fails_with_1011(peer, connect, inbox):
    """A peer that never answers pings is closed by keepalive with 1011 and on_close."""
    client = connect(peer.raw_url("/noping"), ping_interval=0.1, ping_timeout=0.2)

    closed = inbox.wait_closed()
    assert (closed.code, closed.reason) == (1011, "keepalive ping timeout")
    assert client.closed and client.close_code == 1011
    with pytest.raises(ConnectionClosed):
        client.send_text("after keepalive timeout")


def test_keepalive_unblocks_a_send_stuck_on_a_deaf_peer(peer, connect, inbox, scaled):
    """A send blocked on a peer that stopped reading ends with ConnectionClosed once keepalive gives up."""
    client = connect(peer.raw_url("/deaf"), ping_interval=0.1, ping_timeout=0.2)
    chunk = b"z" * (1024 * 1024)

    def flood() -> None:
        # More than any pair of socket buffers holds, so the send has to block.
        for _ in range(256):
            client.send_binary(chunk)

    sender = gevent.spawn(flood)
    sender.join(timeout=scaled(10))

    assert sender.dead and isinstance(sender.exception, ConnectionClosed)
    assert inbox.wait_closed().code == 1011


def test_killing_a_sender_mid_frame_drops_the_connection(peer, connect, inbox, scaled):
    """A greenlet killed inside a send (as Locust stops users) drops the connection rather than corrupt it."""
    client = connect(peer.raw_url("/deaf"), ping_interval=None)
    chunk = b"z" * (1024 * 1024)

    def flood() -> None:
        for _ in range(256):
            client.send_binary(chunk)

    sender = gevent.spawn(flood)
    sender.join(timeout=scaled(1))
    assert not sender.dead
    sender.kill()

    closed = inbox.wait_closed()
    assert closed.code == 1006 and "GreenletExit" in closed.reason
    with pytest.raises(ConnectionClosed):
        client.send_text("after kill")


def test_server_pings_are_answered(peer, connect, inbox):
    """Pings from the server get pongs without the application doing anything."""
    connect(peer.url("/ping"), ping_interval=None)

    assert inbox.wait_messages(1) == [(b"pongs:3", False)]
