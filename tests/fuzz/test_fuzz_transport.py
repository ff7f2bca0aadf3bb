"""The transport's own frame parser against byte streams cut anywhere: the messages in them, or a clean protocol error.

The transport parses unmasked data frames itself (``WebSocketClient._parse``) and leaves
control frames, and everything after the connection leaves OPEN, to websockets' Sans-I/O
parser. Every stream here goes through it twice, once on that fast path and once through
websockets' parser alone, cut into the same pieces: both must deliver the same messages and
end the same way (the same protocol error kind, the same close code). Neither may raise,
whatever the bytes; a protocol error must come with the close code RFC 6455 gives it.

Streams: frames built by a strategy that knows the header (every opcode, reserved bits,
masking, fragments, pings between fragments, close frames with good and bad codes and
reasons, lengths in 7, 16 or 64 bits, minimal or not), arbitrary bytes, and mutants of what
real backends sent on real connections (tests/fuzz/corpus, "wire").
"""

from __future__ import annotations

import logging
import random
import struct

import gevent.socket
import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.client import ClientProtocol
from websockets.protocol import OPEN
from websockets.uri import parse_uri

from loadgen.transport import WebSocketClient
from tests.fuzz.fuzzing import FUZZ, MUTATIONS, SEED, Mutator, attack, bounded, corpus, decode

URL = "ws://127.0.0.1:9/"
WSURI = parse_uri(URL)
LOGGER = logging.getLogger("tests.fuzz")
#: what the transport fails the connection with, by protocol error kind (None: no close frame, EOF)
CLOSE_CODE = {"bad_frame": 1002, "oversized": 1009, "bad_utf8": 1007, "truncated": None}


@pytest.fixture(scope="module")
def sink():
    """Where the clients' pongs and close frames go: one socket pair, drained after every case."""
    mine, theirs = gevent.socket.socketpair()
    theirs.setblocking(False)
    yield mine, theirs
    mine.close()
    theirs.close()


def _drain(theirs) -> None:
    try:
        while theirs.recv(1 << 20):
            pass
    except BlockingIOError:
        pass


def read(stream: bytes, cuts: list[int], fast: bool, max_size: int | None, sink) -> tuple:
    """What a client makes of ``stream`` arriving in pieces cut at ``cuts``, then the end of the stream."""
    mine, theirs = sink
    protocol = ClientProtocol(WSURI, state=OPEN, max_size=max_size, logger=LOGGER)
    messages: list[tuple[bytes, bool]] = []
    client = WebSocketClient(URL, mine, protocol, LOGGER, "fuzz", lambda p, b: messages.append((p, b)), None)
    client._parse_here = fast
    bounds = [0, *sorted(cut % (len(stream) + 1) for cut in cuts), len(stream)]
    for start, end in zip(bounds, bounds[1:], strict=False):
        if end > start:
            client._received(stream[start:end])
    client._received_eof()
    _drain(theirs)
    sent = protocol.close_sent
    return messages, client.protocol_error, None if sent is None else sent.code, protocol.close_rcvd is not None


def check(stream: bytes, cuts: list[int], max_size: int | None, sink) -> tuple:
    with bounded():
        fast = read(stream, cuts, True, max_size, sink)
        slow = read(stream, cuts, False, max_size, sink)
    disagree = f"the transport's parser and websockets' disagree:\n fast {fast!r:.600}\n slow {slow!r:.600}"
    assert fast[0] == slow[0], disagree
    # The two judge a frame's header in a different order, and websockets some of it only once the
    # payload is in: of a frame broken twice over they may name different faults, and of a broken
    # one the stream cuts short, one the fault and the other the cut. Both end the connection over it.
    if fast[1] is None or slow[1] is None:
        assert fast[1:] == slow[1:], disagree
    for messages, kind, code, server_closed in (fast, slow):
        if kind is not None:
            assert code == CLOSE_CODE[kind], (kind, code)
        elif code is not None:
            assert server_closed, f"failed with {code} without saying why"
        if max_size is not None:
            assert all(len(payload) <= max_size for payload, _binary in messages)
    return fast


# -- frames built from the header up ------------------------------------------------------


def frame(fin: bool, rsv: int, opcode: int, masked: bool, width: int, payload: bytes) -> bytes:
    """One server frame; ``width`` 0 picks the shortest length encoding, 2 and 8 force one."""
    head = bytes(((0x80 if fin else 0) | rsv << 4 | opcode,))
    mask_bit = 0x80 if masked else 0
    length = len(payload)
    if width == 0 and length < 126:
        head += bytes((mask_bit | length,))
    elif width in (0, 2) and length < 65536:
        head += bytes((mask_bit | 126,)) + struct.pack("!H", length)
    else:
        head += bytes((mask_bit | 127,)) + struct.pack("!Q", length)
    if masked:
        key = b"\x01\x02\x03\x04"
        return head + key + bytes(b ^ key[n % 4] for n, b in enumerate(payload))
    return head + payload


_CLOSE_CODES = st.sampled_from(
    [1000, 1001, 1002, 1003, 1005, 1006, 1007, 1009, 1011, 1015, 999, 2999, 3000, 4999, 5000]
)
_CLOSE_PAYLOAD = st.one_of(
    st.just(b""),
    st.binary(max_size=1),
    st.tuples(_CLOSE_CODES, st.text(max_size=20).map(str.encode) | st.binary(max_size=20)).map(
        lambda pair: struct.pack("!H", pair[0]) + pair[1][:123]
    ),
)
_FRAME = st.one_of(
    # mostly the frames servers send: whole text or binary messages, sometimes in fragments, pings
    st.builds(frame, st.just(True), st.just(0), st.sampled_from([1, 2]), st.just(False), st.just(0),
              st.binary(max_size=300)),
    st.builds(frame, st.booleans(), st.just(0), st.sampled_from([0, 1, 2]), st.just(False), st.just(0),
              st.binary(max_size=40)),
    st.builds(frame, st.just(True), st.just(0), st.sampled_from([9, 10]), st.just(False), st.just(0),
              st.binary(max_size=125)),
    st.builds(frame, st.just(True), st.just(0), st.just(8), st.just(False), st.just(0), _CLOSE_PAYLOAD),
    # and anything a header can say
    st.builds(frame, st.booleans(), st.integers(0, 7), st.integers(0, 15), st.booleans(), st.sampled_from([0, 2, 8]),
              st.binary(max_size=200)),
)  # fmt: skip
_LIMITS = st.sampled_from([None, 2**24, 1024, 100, 1])


@FUZZ
@given(frames=st.lists(_FRAME, max_size=12), cuts=st.lists(st.integers(0, 10**6), max_size=8),
       cut_short=st.integers(0, 3), max_size=_LIMITS)  # fmt: skip
def test_frames_of_every_kind_cut_anywhere_read_alike_on_both_parsers(sink, frames, cuts, cut_short, max_size):
    """Good and bad frames in any order and pieces: the same messages and the same end on both parsers."""
    stream = b"".join(frames)
    if cut_short:
        # the connection lost in the middle of the last frame
        stream = stream[: max(len(stream) - cut_short * 3, 0)]
    check(stream, cuts, max_size, sink)


_MESSAGE = st.tuples(st.sampled_from([1, 2]), st.binary(max_size=2000), st.integers(1, 4))


@FUZZ
@given(frames=st.lists(_MESSAGE, max_size=8), pings=st.lists(st.binary(max_size=125), max_size=4),
       cuts=st.lists(st.integers(0, 10**6), max_size=12))  # fmt: skip
def test_well_formed_messages_arrive_whole_and_in_order(sink, frames, pings, cuts):
    """Messages in fragments, pings between the fragments, cut anywhere: each arrives once, whole, no error."""
    stream, expected = b"", []
    for opcode, payload, pieces in frames:
        bounds = sorted({0, len(payload), *(len(payload) * k // pieces for k in range(1, pieces))})
        parts = [payload[a:b] for a, b in zip(bounds, bounds[1:], strict=False)] or [b""]
        for n, part in enumerate(parts):
            stream += frame(n == len(parts) - 1, 0, opcode if n == 0 else 0, False, 0, part)
            if pings and n < len(pings):
                stream += frame(True, 0, 9, False, 0, pings[n])
        expected.append((payload, opcode == 2))
    stream += frame(True, 0, 8, False, 0, struct.pack("!H", 1000))
    messages, kind, code, _server_closed = check(stream, cuts, 2**24, sink)
    assert (messages, kind, code) == (expected, None, 1000)


@FUZZ
@given(stream=st.binary(max_size=600), cuts=st.lists(st.integers(0, 600), max_size=6), max_size=_LIMITS)
def test_arbitrary_bytes_read_alike_on_both_parsers(sink, stream, cuts, max_size):
    """Any bytes at all after the upgrade: both parsers agree, and neither raises."""
    check(stream, cuts, max_size, sink)


# -- what real backends sent, mutated -----------------------------------------------------


def _recorded_frames() -> list[bytes]:
    """The recorded wire bytes of every backend, split into their frames."""
    frames = []
    for name in ("reference", "xmpp", "janus"):
        for wire in corpus(name)["wire"]:
            stream = decode(wire)
            pos = 0
            while pos + 2 <= len(stream):
                length, start = stream[pos + 1] & 0x7F, pos + 2
                if length == 126:
                    length, start = int.from_bytes(stream[pos + 2 : pos + 4], "big"), pos + 4
                elif length == 127:
                    length, start = int.from_bytes(stream[pos + 2 : pos + 10], "big"), pos + 10
                frames.append(stream[pos : start + length])
                pos = start + length
    return frames


def test_mutants_of_recorded_wire_bytes_read_alike_on_both_parsers(sink):
    """Runs of real frames from real backends, flipped, cut, spliced, fed in random pieces: both parsers agree."""
    frames = _recorded_frames()
    assert len(frames) > 100
    rng = random.Random(SEED)
    mutator = Mutator(SEED, frames)
    ran = 0
    while ran < MUTATIONS:
        start = rng.randrange(len(frames))
        run = b"".join(frames[start : start + rng.choice((1, 1, 2, 4))])
        cuts = [rng.randrange(len(run) + 1) for _ in range(rng.choice((0, 1, 3)))]
        max_size = rng.choice((None, 2**24, 2**24, 512, 64))
        ran += attack(lambda case, cuts=cuts, limit=max_size: check(case, cuts, limit, sink), run, 20, mutator)
