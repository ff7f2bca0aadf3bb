"""What fuzzing the parsers found, each kept as a plain test of the behaviour now expected."""

from __future__ import annotations

import asyncio
import base64
import hashlib

import gevent
import gevent.server
import orjson

from loadgen.drivers.base import Failure, JoinResult, Malformed, Reply
from loadgen.drivers.janus import JanusDriver
from loadgen.drivers.reference import ReferenceDriver
from loadgen.drivers.xmpp import XmppDriver
from loadgen.server._config import ServerConfig
from loadgen.server._hub import Connection, Hub, Outbox
from loadgen.server._metrics import ServerStats
from loadgen.transport import WebSocketClient
from tests.fuzz.fuzzing import apply_call, check_events, corpus, decode, make_driver, primed

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def receive(driver, frame: object) -> list:
    events = driver.receive(frame if isinstance(frame, bytes) else orjson.dumps(frame), False)
    check_events(events)
    return events


def test_a_join_ack_whose_state_is_not_an_object_fails_the_join():
    """The reference driver ends the join with malformed_reply (it raised AttributeError out of receive)."""
    driver = ReferenceDriver()
    join = driver.join_room("v1", seats=8)
    [failure] = receive(driver, {"ev": "ack", "re": join.request_id, "room": "v1", "head": 0, "state": [1]})
    assert isinstance(failure, Failure) and failure.code == "malformed_reply"


def test_a_message_with_a_sequence_of_the_wrong_type_is_skipped_as_unexpected_shape():
    """A push whose seq is a string never reaches the accounting, where it would fail in the reader."""
    frame = {"ev": "msg", "room": "r1", "seq": "7", "from": "bob", "cseq": 1, "ts": 1.0, "server_ts": 1.0}
    [event] = receive(ReferenceDriver(), frame)
    assert isinstance(event, Malformed) and event.kind == "unexpected_shape" and "'seq'" in event.reason


def test_a_gift_whose_count_is_not_an_integer_is_skipped_as_unexpected_shape():
    """A gift whose count is not an integer is the backend's error, not one of the room views that multiply it."""
    frame = {"ev": "gift", "room": "v1", "from": "bob", "ts": 1.0, "gift": "rose", "count": "many", "value": 1}
    assert [event.kind for event in receive(ReferenceDriver(), frame)] == ["unexpected_shape"]


def test_an_error_without_a_code_is_skipped_as_unexpected_shape():
    """An error frame with an empty code is the backend's fault, as every failure reported has a code."""
    assert [event.kind for event in receive(ReferenceDriver(), {"ev": "error", "re": None, "code": ""})] == [
        "unexpected_shape"
    ]


def test_an_xmpp_login_answer_after_the_login_ended_is_an_unmatched_reply():
    """A registration answer after a stream error ended the login is unmatched (it failed an assert)."""
    driver = primed("xmpp", 0, 3)  # the registration iq (lg2) is out, its answer not yet in
    stream_error = (
        b"<stream:error xmlns:stream='http://etherx.jabber.org/streams'>"
        b"<conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"
    )
    assert isinstance(receive(driver, stream_error)[0], Failure)
    late = b"<iq xmlns='jabber:client' id='lg2'/>"
    assert [event.kind for event in receive(driver, late)] == ["unmatched_reply"]


def test_an_xmpp_stamp_with_a_time_of_nan_is_skipped_as_unexpected_shape():
    """A stamp time of "nan", which float() takes, is the backend's error and never a delivery's time."""
    driver = XmppDriver(domain="localhost")
    driver.join("r1")
    stanza = (
        b"<message xmlns='jabber:client' type='groupchat' from='r1@conference.localhost/bob'>"
        b"<body>hi</body><stamp xmlns='urn:loadgen:stamp' cseq='1' ts='nan'/></message>"
    )
    assert [event.kind for event in receive(driver, stanza)] == ["unexpected_shape"]


def test_a_janus_answer_whose_plugin_data_is_a_list_fails_the_operation():
    """The join ends with malformed_reply (its flow died, leaving the request to time out)."""
    driver = JanusDriver(monotonic=lambda: 0.0, wall=lambda: 0.0)
    login = driver.login("ann", "t")
    receive(driver, {"janus": "success", "transaction": "1", "data": {"id": 1}})
    assert login.request_id == 1
    join = driver.join_room("4242", seats=4)
    receive(driver, {"janus": "success", "transaction": "2", "data": {"id": 2}})
    answer = {"janus": "success", "transaction": "3", "sender": 2, "plugindata": {"plugin": "x", "data": [1]}}
    [failure] = receive(driver, answer)
    assert isinstance(failure, Failure) and failure.request_id == join.request_id
    assert failure.code == "malformed_reply"


def test_a_janus_display_with_a_time_of_infinity_is_not_a_seat_change_time():
    """A seat taken with ``"ts": "1e999"`` in its display name is a malformed event, not a change at infinity."""
    recorded = corpus("janus")
    tape = recorded["tapes"][0]
    driver = make_driver("janus", recorded["config"], tape)
    senders = set()
    for call in tape["calls"]:
        events = apply_call(driver, call) or []
        if call[1] == "receive":
            senders.add(orjson.loads(decode(call[2])).get("sender"))
        if any(isinstance(event, Reply) and isinstance(event.result, JoinResult) for event in events):
            break
    display = orjson.dumps({"u": "eve", "ts": "1e999"}).decode()
    joining = {"videoroom": "event", "room": 4242, "joining": {"id": 4, "display": display}}
    events = []
    for sender in senders - {None}:
        plugindata = {"plugin": "janus.plugin.videoroom", "data": joining}
        events += receive(driver, {"janus": "event", "sender": sender, "plugindata": plugindata})
    assert [event.kind for event in events] == ["unexpected_shape"]


def test_history_from_the_largest_sequence_is_answered_not_raised():
    """The hub answers ``since`` 2**63 - 1 with an empty page (a ValueError ended the connection's handler)."""
    loop = asyncio.new_event_loop()
    try:
        hub = Hub(ServerConfig(), loop, ServerStats(), on_replaced=lambda _conn: None)
        conn = Connection(Outbox(loop), peer="test")
        hub.open(conn)
        for request in (
            {"op": "login", "id": 1, "user": "ann", "token": "t"},
            {"op": "join", "id": 2, "room": "r1"},
            {"op": "send", "id": 3, "room": "r1", "cseq": 1, "ts": 1.0, "body": "x"},
            {"op": "history", "id": 4, "room": "r1", "since": 2**63 - 1},
        ):
            hub.handle(conn, orjson.dumps(request).decode())
        reply = orjson.loads(conn.outbox.ready[-1])
        assert (reply["ev"], reply["re"], reply["messages"]) == ("ack", 4, [])
        hub.close(conn)
    finally:
        loop.close()


def test_a_frame_header_that_came_alone_with_the_upgrade_response_is_read_with_its_payload():
    """A frame whose header came alone with the upgrade response is delivered once its payload follows."""

    def serve(sock, _address) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += sock.recv(4096)
        key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key"))  # fmt: skip
        accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        upgrade = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        # the header of a 5-byte text frame in the same write as the response; the payload after
        sock.sendall(upgrade + b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n\x81\x05")
        gevent.sleep(0.2)
        sock.sendall(b"hello")
        sock.recv(4096)

    server = gevent.server.StreamServer(("127.0.0.1", 0), serve)
    server.start()
    received: list[tuple[bytes, bool]] = []
    try:
        client = WebSocketClient.connect(
            f"ws://127.0.0.1:{server.server_port}/", on_message=lambda p, b: received.append((p, b)), ping_interval=None
        )
        deadline = gevent.Timeout(10)
        deadline.start()
        try:
            while not received and not client.closed:
                gevent.sleep(0.01)
        finally:
            deadline.close()
        assert received == [(b"hello", False)], client
        client.abort()
    finally:
        server.stop(timeout=1)


def test_a_janus_session_id_json_cannot_carry_back_fails_the_login():
    """A session id of 1e20 fails the login with malformed_reply (every later request failed to encode)."""
    driver = JanusDriver(monotonic=lambda: 0.0, wall=lambda: 0.0)
    login = driver.login("ann", "t")
    [failure] = receive(driver, b'{"janus": "success", "transaction": "1", "data": {"id": 1e20}}')
    assert isinstance(failure, Failure) and (failure.request_id, failure.code) == (login.request_id, "malformed_reply")
    driver.join_room("4242", seats=4)
