"""The reference driver from bytes alone: requests encode, frames decode to typed events."""

import orjson

from loadgen.drivers.base import (
    INBOX,
    Delivery,
    Failure,
    HistoryResult,
    JoinResult,
    LogoutResult,
    Malformed,
    Receipt,
    Reply,
    SendResult,
)
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
