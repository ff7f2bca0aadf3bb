"""The reference driver from bytes alone: requests encode, frames decode to typed events."""

import orjson

from loadgen.drivers.base import (
    INBOX,
    CallUpdate,
    Delivery,
    Driver,
    Failure,
    HistoryResult,
    JoinResult,
    LogoutResult,
    Malformed,
    PkUpdate,
    Receipt,
    Reply,
    Seat,
    SeatChange,
    SeatSnapshot,
    SendResult,
)
from loadgen.drivers.janus import JanusDriver
from loadgen.drivers.reference import ReferenceDriver


def decode(driver, frame) -> list:
    return driver.receive(orjson.dumps(frame), False)


def test_requests_carry_op_and_increasing_ids():
    """Each request is one JSON object with its op and a fresh id."""
    d = ReferenceDriver()
    first = d.join("r1")
    second = d.send("r1", 7, 12.5, "hi")
    assert orjson.loads(first.payload) == {"op": "join", "id": first.request_id, "room": "r1"}
    assert orjson.loads(second.payload) == {
        "op": "send", "id": second.request_id, "room": "r1", "cseq": 7, "ts": 12.5, "body": "hi",
    }  # fmt: skip
    assert second.request_id > first.request_id


def test_ack_becomes_the_typed_result_of_its_request():
    """An ack is matched to its request and read as that operation's result."""
    d = ReferenceDriver()
    join = d.join("r1")
    dm = d.direct("u2", 1, 1.0, "x")
    [reply] = decode(d, {"ev": "ack", "re": dm.request_id, "to": "u2", "seq": 4, "server_ts": 2.0, "online": False})
    assert reply == Reply(dm.request_id, SendResult(INBOX, 4, 2.0, False))
    [reply] = decode(d, {"ev": "ack", "re": join.request_id, "room": "r1", "head": 9, "members": 3})
    assert reply.result == JoinResult("r1", 9, 3)


def test_history_and_logout_results():
    """History replies carry their deliveries; logout replies carry every head."""
    d = ReferenceDriver()
    h = d.history(INBOX, 2, 10)
    assert orjson.loads(h.payload)["inbox"] is True
    frame = {
        "ev": "dm",
        "seq": 3,
        "from": "u1",
        "to": "u2",
        "cseq": 1,
        "ts": 1.0,
        "server_ts": 1.1,
        "body": "b",
    }
    [reply] = decode(d, {"ev": "ack", "re": h.request_id, "inbox": True, "head": 3, "messages": [frame]})
    assert reply.result == HistoryResult(INBOX, 3, (Delivery(INBOX, 3, "u1", 1, 1.0, 1.1, "b", True),))
    out = d.logout()
    [reply] = decode(d, {"ev": "ack", "re": out.request_id, "heads": {"r1": 5}, "inbox_head": 2})
    assert reply.result == LogoutResult({"r1": 5}, 2)


def test_pushes_decode_to_deliveries_and_receipts():
    """Room messages, direct messages and receipts become their events."""
    d = ReferenceDriver()
    [m] = decode(d, {"ev": "msg", "room": "r1", "seq": 5, "from": "u1", "cseq": 2, "ts": 1.0, "server_ts": 1.5})
    assert m == Delivery("r1", 5, "u1", 2, 1.0, 1.5, "", False)
    [r] = decode(d, {"ev": "receipt", "room": "r1", "seq": 5, "reader": "u3", "server_ts": 2.0})
    assert r == Receipt("r1", 5, "u3")


def test_error_frame_fails_its_request():
    """An error reply names the request and its code."""
    d = ReferenceDriver()
    req = d.leave("r1")
    [f] = decode(d, {"ev": "error", "re": req.request_id, "code": "not_member", "message": "no"})
    assert f == Failure(req.request_id, "not_member", "no")


def test_garbage_is_reported_not_raised():
    """Malformed frames, unknown events, binary frames and acks for nobody are Malformed events."""
    d = ReferenceDriver()
    assert isinstance(d.receive(b"{not json", False)[0], Malformed)
    assert isinstance(decode(d, {"ev": "party"})[0], Malformed)
    assert isinstance(decode(d, {"ev": "msg", "room": "r1"})[0], Malformed)
    assert isinstance(d.receive(b"\x00\x01", True)[0], Malformed)
    assert isinstance(decode(d, {"ev": "ack", "re": 999})[0], Malformed)


def test_ack_missing_fields_fails_the_request_instead_of_hanging_it():
    """A reply the driver cannot read still ends its request, as a failure."""
    d = ReferenceDriver()
    req = d.join("r1")
    [f] = decode(d, {"ev": "ack", "re": req.request_id})
    assert isinstance(f, Failure) and f.request_id == req.request_id and f.code == "malformed_reply"


def test_room_operations_carry_their_time_and_fields():
    """Room and call operations are requests with op, id, ts and their own fields."""
    d = ReferenceDriver()
    take = d.room_op("seat.take", "v1", 12.5, seat=3)
    assert orjson.loads(take.payload) == {"op": "seat.take", "id": take.request_id, "room": "v1", "ts": 12.5, "seat": 3}
    call = d.call_op("call.invite", 1.0, to="u2")
    assert orjson.loads(call.payload)["to"] == "u2"
    join = d.join_room("v1", seats=8, as_host=True)
    assert orjson.loads(join.payload) == {
        "op": "join",
        "id": join.request_id,
        "room": "v1",
        "seats": 8,
        "as_host": True,
    }


def test_join_reply_carries_the_room_state():
    """A join reply of a room with seats gives host, stream state and the seat snapshot."""
    d = ReferenceDriver()
    join = d.join_room("v1", seats=2)
    state = {"version": 4, "seats": [{"n": 0, "user": "a", "muted": True, "locked": False},
                                     {"n": 1, "user": None, "muted": False, "locked": True}]}  # fmt: skip
    [reply] = decode(d, {"ev": "ack", "re": join.request_id, "room": "v1", "head": 0, "members": 2, "host": "h",
                         "state": state, "live": True, "settings": {}, "recent": []})  # fmt: skip
    result = reply.result
    assert (result.host, result.live, result.seats.version) == ("h", True, 4)
    assert result.seats.seats == (Seat(0, "a", True, False), Seat(1, None, False, True))


def test_rtc_pushes_decode_to_their_events():
    """Seat snapshots, gifts, invitations, PK and call updates decode to typed events."""
    d = ReferenceDriver()
    change = {"kind": "take", "seat": 0, "user": "a", "by": "a", "ts": 5.0}
    [s] = decode(d, {"ev": "seats", "room": "v1", "version": 9, "seats": [{"n": 0, "user": "a"}], "change": change,
                     "server_ts": 5.1})  # fmt: skip
    assert s == SeatSnapshot("v1", 9, (Seat(0, "a"),), SeatChange("take", 0, "a", "a", 5.0))
    [g] = decode(d, {"ev": "gift", "room": "v1", "from": "b", "gift": "rose", "count": 3, "value": 10, "ts": 6.0,
                     "server_ts": 6.1})  # fmt: skip
    assert (g.kind, g.sender, g.fields["count"], g.sent_at) == ("gift", "b", 3, 6.0)
    [i] = decode(
        d, {"ev": "pk_invite", "pk": "p1", "room": "v1", "target": "v2", "from": "h", "duration": 30, "ts": 7.0}
    )
    assert (i.kind, i.room, i.fields["pk"]) == ("pk_invite", "v1", "p1")
    [p] = decode(d, {"ev": "pk", "pk": "p1", "state": "score", "rooms": ["v1", "v2"], "scores": {"v1": 30, "v2": 0},
                     "version": 1, "ts": 6.0, "server_ts": 6.2})  # fmt: skip
    assert p == PkUpdate("p1", "score", ("v1", "v2"), {"v1": 30, "v2": 0}, 1, 6.0)
    [c] = decode(d, {"ev": "call", "call": "c1", "state": "connected", "from": "a", "to": "b", "ts": 8.0,
                     "server_ts": 8.3})  # fmt: skip
    assert c == CallUpdate("c1", "connected", "a", "b", 8.0)


def test_audio_is_optional_even_for_a_driver_that_supports_everything():
    """supports = None promises every operation but media.open, which takes a media_open of the driver's own."""

    class ChatOnly(ReferenceDriver):
        media_open = Driver.media_open

    assert ReferenceDriver.does("media.open") and ReferenceDriver.does("seat.take")
    assert not ChatOnly.does("media.open") and ChatOnly.does("seat.take")
    assert not JanusDriver.does("media.open") and JanusDriver.does("seat.take")
