"""Moving messages: large and fragmented messages, size limits, concurrent senders."""

from __future__ import annotations

import logging

import gevent
import pytest

from loadgen.transport import ConnectionClosed
from tests.transport.peer import BAD_FRAMES, scripted_stream


def test_large_messages_round_trip(peer, connect, inbox):
    """A 4 MiB binary and a 4 MiB text message come back intact."""
    blob = bytes(range(256)) * (4 * 4096)
    text = ("0123456789abcdef" * (4 * 65536)).encode()
    client = connect(peer.url("/echo"))
    client.send_binary(blob)
    client.send_text(text)

    messages = inbox.wait_messages(2, seconds=20)
    assert messages[0] == (blob, True)
    assert messages[1] == (text, False)


def test_every_length_encoding_and_both_types_come_back_intact(peer, connect, inbox):
    """Frames are built in the transport: 7-bit, 16-bit and 64-bit lengths at their edges, text and binary."""
    lengths = (0, 1, 125, 126, 127, 65535, 65536, 70000)
    client = connect(peer.url("/echo"))
    for length in lengths:
        client.send_text(b"t" * length)
        client.send_binary(bytes(range(256)) * (length // 256) + bytes(length % 256))
    expected = [
        m for n in lengths for m in ((b"t" * n, False), (bytes(range(256)) * (n // 256) + bytes(n % 256), True))
    ]
    assert inbox.wait_messages(len(expected), seconds=20) == expected


def test_message_over_max_size_closes_with_1009(peer, connect, inbox):
    """An incoming message larger than max_size ends the connection with code 1009."""
    client = connect(peer.url("/echo"), max_size=65536)
    client.send_binary(b"x" * 65536)
    client.send_binary(b"x" * 65537)

    closed = inbox.wait_closed()
    assert closed.code == 1009 and not closed.clean
    assert inbox.messages == [(b"x" * 65536, True)]
    assert client.closed and client.close_code == 1009


def test_fragmented_messages_are_reassembled(peer, connect, inbox):
    """A message sent in fragments is delivered once, whole, with its type."""
    connect(peer.url("/fragmented"))

    assert inbox.wait_messages(2) == [(b"fragmented", False), (b"\x00\x01\x02", True)]


def test_concurrent_senders_never_interleave(peer, connect, inbox):
    """Fifty greenlets sending large messages on one connection get every echo back intact."""
    client = connect(peer.url("/echo"), max_size=None)
    senders, per_sender = 50, 4

    def payload(sender: int, seq: int) -> bytes:
        # Big enough that sendall has to wait for the peer mid-frame and yield.
        size = 64 * 1024 + (sender * per_sender + seq) * 997
        return f"{sender}:{seq}:".encode() + bytes([65 + (sender + seq) % 26]) * size

    def send_all(sender: int) -> None:
        for seq in range(per_sender):
            data = payload(sender, seq)
            if sender % 2:
                client.send_binary(data)
            else:
                client.send_text(data)

    greenlets = [gevent.spawn(send_all, sender) for sender in range(senders)]
    gevent.joinall(greenlets, raise_error=True)

    messages = inbox.wait_messages(senders * per_sender, seconds=30)
    expected = {(payload(sender, seq), bool(sender % 2)) for sender in range(senders) for seq in range(per_sender)}
    assert len(messages) == senders * per_sender
    assert set(messages) == expected
    assert not client.closed


def test_failing_on_message_is_logged_once_and_reading_goes_on(peer, connect, inbox, caplog):
    """Exceptions from on_message are logged once with a traceback, counted, and reading continues."""
    received: list[bytes] = []

    def on_message(payload: bytes, is_binary: bool) -> None:
        if payload.startswith(b"bad"):
            raise RuntimeError("handler bug")
        received.append(payload)
        inbox.changed.set()

    with caplog.at_level(logging.INFO, logger="loadgen.transport"):
        client = connect(peer.url("/echo"), on_message=on_message)
        for text in ("bad 1", "good 1", "bad 2", "bad 3", "good 2"):
            client.send_text(text)
        inbox.wait_for(lambda: len(received) == 2)
        client.close()

    assert received == [b"good 1", b"good 2"]
    assert client.callback_errors == 3
    tracebacks = [r for r in caplog.records if r.exc_info and r.exc_info[0] is RuntimeError]
    assert len(tracebacks) == 1
    assert any("3 times" in r.getMessage() for r in caplog.records)
    assert isinstance(inbox.closes[0], ConnectionClosed) and inbox.closes[0].clean


@pytest.mark.parametrize("seed", range(6))
def test_frames_split_anywhere_with_pings_between_fragments_arrive_whole(peer, connect, inbox, seed):
    """Every length class, fragmented or not, cut into pieces of 1 byte to 5 KB: each message once, intact."""
    _stream, expected = scripted_stream(seed)
    client = connect(peer.raw_url(f"/stream/{seed}"))
    client.send_text(b"go")
    closed = inbox.wait_closed(seconds=20)
    assert inbox.messages == expected
    assert (closed.code, closed.clean) == (1000, True)


@pytest.mark.parametrize("kind", sorted(BAD_FRAMES))
def test_a_malformed_frame_fails_the_connection_with_1002_after_what_came_before(peer, connect, inbox, kind):
    client = connect(peer.raw_url(f"/bad/{kind}"))
    client.send_text(b"go")
    closed = inbox.wait_closed(seconds=10)
    assert inbox.messages == [(b"ok", False)]
    assert closed.code == 1002, closed
