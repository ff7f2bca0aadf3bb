"""The reference backend's request parser (``Hub.handle``) under any frame: one reply each, an ack or a coded error.

The hub is built as the server builds it (default configuration, its own statistics, a
loop for its timers) with three connections. Frames come from a strategy that knows the
protocol's operations and fields, from arbitrary text and bytes, and from mutants of the
requests real sessions sent (tests/fuzz/corpus), replayed in their order so that every
operation meets the state it met for real: logged in, in rooms, on seats, in calls.

For every frame: ``handle`` returns normally, the connection gets exactly one reply (an
``ack`` or an ``error`` with a code and a message) whose ``re`` is the request's id (null
when the frame had no usable one), and everything queued anywhere is a JSON object with an
``ev``: the backend never sends what a client could not read.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadgen.server._config import ServerConfig
from loadgen.server._hub import Connection, Hub, Outbox
from loadgen.server._metrics import OPS, ServerStats
from tests.fuzz.fuzzing import FUZZ, MUTATIONS, SEED, Mutator, attack, bounded, sent_frames

USERS = ("ann", "bob", "cid")


class Backend:
    """A hub as the server makes one, and three connections to it.

    The loop only holds the hub's timers (invite lapses, PK ends, ring timeouts): it never
    runs, so none of them fires in the middle of a case.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.replaced: list[Connection] = []
        self.hub = Hub(ServerConfig(), loop, ServerStats(), on_replaced=self.replaced.append)
        self.connections = [Connection(Outbox(loop), peer=f"fuzz-{n}") for n in range(3)]
        for connection in self.connections:
            self.hub.open(connection)

    def request(self, index: int, frame: str | bytes) -> dict:
        """Hand ``frame`` to the hub from connection ``index``; the one reply it got."""
        connection = self.connections[index]
        with bounded():
            self.hub.handle(connection, frame)
        replies = []
        for other in self.connections:
            for queued in other.outbox.ready:
                event = orjson.loads(queued)
                assert type(event) is dict and type(event.get("ev")) is str, queued
                if other is connection and event["ev"] in ("ack", "error"):
                    replies.append(event)
            other.outbox.ready.clear()
        assert len(replies) == 1, f"{len(replies)} replies to {frame!r:.300}: {replies!r:.600}"
        reply = replies[0]
        assert reply["re"] == _request_id(frame), (frame, reply)
        if reply["ev"] == "error":
            assert type(reply["code"]) is str and reply["code"], reply
            assert type(reply["message"]) is str, reply
        return reply

    def close(self) -> None:
        for connection in self.connections:
            self.hub.close(connection)
        self.hub.shutdown()


def _request_id(frame: str | bytes) -> int | None:
    if isinstance(frame, bytes):
        return None
    try:
        request = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return None
    rid = request.get("id") if type(request) is dict else None
    return rid if type(rid) is int else None


@pytest.fixture(scope="module")
def loop():
    made = asyncio.new_event_loop()
    yield made
    made.close()


def _logged_in(backend: Backend) -> Backend:
    for n, user in enumerate(USERS):
        backend.request(n, orjson.dumps({"op": "login", "id": 1, "user": user, "token": "t"}).decode())
    return backend


# -- frames built from the protocol -------------------------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
_NAMES = st.sampled_from(["r1", "v1", "l1", *USERS, "", "x" * 65, "pk1", "c1", "@inbox"])
_FIELDS = {
    "user": _NAMES, "token": st.text(max_size=4), "room": _NAMES, "to": _NAMES, "body": st.text(max_size=20),
    "cseq": st.integers(-1, 5), "ts": st.floats(allow_nan=False) | st.integers(-(2**63), 2**63 - 1),
    "seq": st.integers(-1, 9),
    "since": st.integers(-1, 9), "limit": st.integers(-1, 600), "inbox": st.booleans(), "seats": st.integers(-1, 20),
    "as_host": st.booleans(), "seat": st.integers(-1, 20), "locked": st.booleans(), "muted": st.booleans(),
    "gift": st.text(max_size=4), "count": st.integers(-1, 2_000_000), "value": st.integers(-1, 2_000_000),
    "text": st.text(max_size=10), "title": st.text(max_size=10), "target": _NAMES, "duration": st.integers(-1, 700),
    "pk": _NAMES, "call": _NAMES, "t0": st.floats(allow_nan=False),
}  # fmt: skip
_FIELD = st.one_of([st.tuples(st.just(key), st.one_of(value, value, _JSON)) for key, value in _FIELDS.items()])
_REQUEST = st.builds(
    lambda op, rid, fields: {"op": op, "id": rid, **dict(fields)},
    st.sampled_from(sorted(OPS)) | _JSON,
    st.integers(0, 99) | _JSON,
    st.lists(_FIELD, max_size=6),
)


@FUZZ
@given(requests=st.lists(st.tuples(st.integers(0, 2), _REQUEST), min_size=1, max_size=6))
def test_requests_built_from_the_protocol_get_one_reply_each(loop, requests):
    """Every operation with fields right, wrong or missing, from three logged-in users: one ack or coded error each."""
    backend = _logged_in(Backend(loop))
    try:
        for index, request in requests:
            backend.request(index, orjson.dumps(request).decode())
    finally:
        backend.close()


@FUZZ
@given(frame=st.text(max_size=300) | st.binary(max_size=300), logged_in=st.booleans())
def test_arbitrary_frames_get_one_reply_each(loop, frame, logged_in):
    """Any text or binary frame, before or after a login: exactly one reply, an error with a code."""
    backend = _logged_in(Backend(loop)) if logged_in else Backend(loop)
    try:
        backend.request(0, frame)
    finally:
        backend.close()


# -- mutants of what real sessions sent ---------------------------------------------------


def test_mutants_of_recorded_requests_get_one_reply_each(loop):
    """The recorded sessions' requests replayed in order, each preceded by mutants of itself: one reply per frame."""
    recorded = sent_frames("reference")
    assert len(recorded) > 40
    mutator = Mutator(SEED, [frame for _index, frame in recorded])
    per_frame = 30
    ran = 0

    def as_text(case: bytes) -> str | bytes:
        # the server hands the hub text frames as str, and only valid UTF-8 makes a text frame
        try:
            return case.decode()
        except UnicodeDecodeError:
            return case

    while ran < MUTATIONS:
        replayed = Backend(loop)
        try:
            for index, frame in recorded:
                ran += attack(lambda case, i=index, b=replayed: b.request(i, as_text(case)), frame, per_frame, mutator)
                replayed.request(index, frame.decode())
        finally:
            replayed.close()
