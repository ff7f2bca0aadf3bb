"""The reference protocol's operations, replies and errors, against a real backend process."""

from __future__ import annotations

import hashlib
import hmac
import time

import pytest
from websockets.exceptions import ConnectionClosed

EXACT_TS = 1764133200.123456


def test_login_acknowledges_user_inbox_head_and_server_time(client, unique):
    """A login is acknowledged with the user, an empty inbox head and the server's clock."""
    user = unique("u")
    ack = client().login(user)
    assert ack["user"] == user
    assert ack["inbox_head"] == 0
    assert abs(ack["server_time"] - time.time()) < 5


def test_send_is_sequenced_pushed_to_other_members_and_not_echoed(client, unique):
    """Each send gets the next room seq and reaches every other member intact, but not its sender."""
    room = unique("r")
    alice, bob, carol = client(), client(), client()
    alice_name = unique("a")
    for c, name in ((alice, alice_name), (bob, unique("b")), (carol, unique("c"))):
        c.login(name)
        c.ok("join", room=room)
    acks = [alice.ok("send", room=room, cseq=i, ts=EXACT_TS + i, body=f"m{i}") for i in (1, 2, 3)]
    assert [ack["seq"] for ack in acks] == [1, 2, 3]
    assert all(ack["room"] == room and ack["server_ts"] > 0 for ack in acks)
    for receiver in (bob, carol):
        pushes = receiver.fence()
        assert [p["seq"] for p in pushes] == [1, 2, 3]
        first = pushes[0]
        assert first == {
            "ev": "msg",
            "room": room,
            "seq": 1,
            "from": alice_name,
            "cseq": 1,
            "ts": EXACT_TS + 1,
            "server_ts": acks[0]["server_ts"],
            "body": "m1",
        }
    assert alice.fence() == []


def test_join_head_opens_the_window_and_join_is_idempotent(client, unique):
    """join returns the room seq when joining, later messages arrive, and joining again changes nothing."""
    room = unique("r")
    alice, bob = client(), client()
    alice.login(unique("a"))
    bob.login(unique("b"))
    joined = alice.ok("join", room=room)
    assert (joined["room"], joined["head"], joined["members"]) == (room, 0, 1)
    alice.post(room)
    alice.post(room)
    joined = bob.ok("join", room=room)
    assert (joined["head"], joined["members"]) == (2, 2)
    alice.post(room)
    again = bob.ok("join", room=room)
    assert (again["head"], again["members"]) == (2, 2)
    assert [p["seq"] for p in bob.fence()] == [3]


def test_leave_head_closes_the_window(client, unique):
    """leave returns the room seq at leaving, no later message is pushed, and leaving twice is not_member."""
    room = unique("r")
    alice, bob = client(), client()
    alice.login(unique("a"))
    bob.login(unique("b"))
    alice.ok("join", room=room)
    bob.ok("join", room=room)
    alice.post(room)
    left = bob.ok("leave", room=room)
    assert (left["room"], left["head"]) == (room, 1)
    alice.post(room)
    assert [p["seq"] for p in bob.fence()] == [1]
    assert bob.error("leave", room=room) == "not_member"


def test_dm_uses_the_recipients_inbox_sequence_online_or_not(client, unique):
    """A dm is stored in the recipient's inbox whether or not it is online, and pushed when it is."""
    alice, bob = client(), client()
    bob_name = unique("b")
    alice.login(unique("a"))
    offline = alice.ok("dm", to=bob_name, cseq=1, ts=EXACT_TS, body="first")
    assert (offline["to"], offline["seq"], offline["online"]) == (bob_name, 1, False)
    assert bob.login(bob_name)["inbox_head"] == 1
    online = alice.ok("dm", to=bob_name, cseq=2, ts=EXACT_TS, body="second")
    assert (online["seq"], online["online"]) == (2, True)
    push = bob.next_push()
    assert push["ev"] == "dm"
    assert (push["seq"], push["to"], push["cseq"], push["ts"], push["body"]) == (
        2,
        bob_name,
        2,
        EXACT_TS,
        "second",
    )
    assert push["server_ts"] == online["server_ts"]
    history = bob.ok("history", inbox=True, since=0)
    assert history["inbox"] is True and history["head"] == 2
    assert [(m["ev"], m["seq"], m["body"]) for m in history["messages"]] == [
        ("dm", 1, "first"),
        ("dm", 2, "second"),
    ]


def test_read_sends_a_receipt_to_the_author(client, unique):
    """Reading a message sends its author a receipt naming the reader."""
    room = unique("r")
    alice, bob = client(), client()
    alice.login(unique("a"))
    bob_name = unique("b")
    bob.login(bob_name)
    alice.ok("join", room=room)
    bob.ok("join", room=room)
    seq = alice.post(room)["seq"]
    read = bob.ok("read", room=room, seq=seq)
    assert (read["room"], read["seq"]) == (room, seq)
    receipt = alice.next_push()
    assert receipt["ev"] == "receipt"
    assert (receipt["room"], receipt["seq"], receipt["reader"]) == (room, seq, bob_name)
    assert receipt["server_ts"] > 0
    assert bob.error("read", room=room, seq=seq + 5) == "not_found"
    assert bob.error("read", room=unique("elsewhere"), seq=1) == "not_member"


def test_room_history_pages_by_since_and_limit(client, unique):
    """Room history returns messages after since, oldest first, at most limit, with the head at reading."""
    room = unique("r")
    alice = client()
    alice.login(unique("a"))
    alice.ok("join", room=room)
    for i in range(7):
        alice.post(room, body=f"m{i + 1}", cseq=i + 1)
    page = alice.ok("history", room=room, since=2, limit=3)
    assert page["room"] == room and page["head"] == 7
    assert [(m["ev"], m["seq"], m["body"]) for m in page["messages"]] == [
        ("msg", 3, "m3"),
        ("msg", 4, "m4"),
        ("msg", 5, "m5"),
    ]
    assert [m["seq"] for m in alice.ok("history", room=room)["messages"]] == list(range(1, 8))
    assert alice.ok("history", room=room, since=7)["messages"] == []
    assert alice.error("history", room=unique("elsewhere"), since=0) == "not_member"


def test_history_limit_is_capped_at_500(client, unique):
    """A history request for more than 500 messages returns 500."""
    room = unique("r")
    alice = client()
    alice.login(unique("a"))
    alice.ok("join", room=room)
    for i in range(520):
        alice.send({"op": "send", "id": 10_000 + i, "room": room, "cseq": i, "ts": 0, "body": "x"})
    for i in range(520):
        assert alice.reply(10_000 + i)["ev"] == "ack"
    page = alice.ok("history", room=room, since=0, limit=1000)
    assert page["head"] == 520
    assert [m["seq"] for m in page["messages"]] == list(range(1, 501))


def test_time_echoes_t0_with_server_time(client):
    """The time op echoes the client's t0 next to the server's clock, before any login."""
    ack = client().ok("time", t0=EXACT_TS)
    assert ack["t0"] == EXACT_TS
    assert abs(ack["server_time"] - time.time()) < 5


def test_echo_sends_the_request_back_as_its_ack_before_any_login(client):
    """The echo op answers with the request's own fields, so a bare echo server is a drop-in stand-in."""
    ack = client().ok("echo", ts=EXACT_TS, body="ping")
    assert (ack["op"], ack["ts"], ack["body"]) == ("echo", EXACT_TS, "ping")
    assert ack["id"] == ack["re"]


def test_server_answers_pings(client, timeout):
    """A WebSocket ping from the client is answered with a pong."""
    assert client().ws.ping().wait(timeout)


def test_logout_closes_every_window_and_stops_pushes(client, unique):
    """logout returns each room's head and the inbox head; after it no push arrives and only login works."""
    room1, room2 = unique("r"), unique("r")
    alice, bob = client(), client()
    alice.login(unique("a"))
    bob_name = unique("b")
    bob.login(bob_name)
    for room in (room1, room2):
        alice.ok("join", room=room)
        bob.ok("join", room=room)
    alice.post(room1)
    alice.post(room1)
    alice.post(room2)
    alice.ok("dm", to=bob_name, cseq=1, ts=0, body="hi")
    out = bob.ok("logout")
    assert out["heads"] == {room1: 2, room2: 1}
    assert out["inbox_head"] == 1
    assert [p["ev"] for p in bob.fence()] == ["msg", "msg", "msg", "dm"]
    alice.post(room1)
    assert alice.ok("dm", to=bob_name, cseq=2, ts=0, body="hi")["online"] is False
    assert bob.fence() == []
    assert bob.error("join", room=room1) == "not_logged_in"
    assert bob.error("logout") == "not_logged_in"
    assert bob.login(bob_name)["inbox_head"] == 2
    assert bob.ok("join", room=room1)["head"] == 3


def test_second_login_replaces_the_first_connection_with_close_4001(client, unique, timeout):
    """Logging a user in again closes its older connection with code 4001 and drops its memberships."""
    room = unique("r")
    user = unique("u")
    old, new, other = client(), client(), client()
    old.login(user)
    old.ok("join", room=room)
    new.login(user)
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            old.frame(timeout)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001
    other.login(unique("o"))
    assert other.ok("join", room=room)["members"] == 1
    assert new.ok("join", room=room)["members"] == 2


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "bad_json"),
        ("[1, 2]", "bad_json"),
        (b'{"op": "time", "id": 1, "t0": 0}', "bad_request"),
        ('{"op": "time", "t0": 0}', "bad_request"),
        ('{"op": "time", "id": "7", "t0": 0}', "bad_request"),
    ],
    ids=["not-json", "not-object", "binary", "no-id", "string-id"],
)
def test_unreadable_frames_get_an_error_without_re_and_the_connection_stays(client, frame, code):
    """A frame that cannot be read as a request gets an error with re null; the connection stays usable."""
    c = client()
    c.send(frame)
    reply = c.reply(None)
    assert (reply["ev"], reply["code"]) == ("error", code)
    c.ok("time", t0=0)


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"op": "dance"}, "unknown_op"),
        ({"op": 5}, "bad_request"),
        ({"op": "join"}, "not_logged_in"),
        ({"op": "logout"}, "not_logged_in"),
        ({"op": "time"}, "bad_request"),
        ({"op": "login", "user": "x" * 65, "token": "t"}, "bad_request"),
        ({"op": "login", "user": "", "token": "t"}, "bad_request"),
        ({"op": "login", "user": "someone"}, "bad_request"),
        ({"op": "login", "user": "someone", "token": ""}, "auth_failed"),
    ],
    ids=[
        "unknown-op",
        "op-not-string",
        "join-first",
        "logout-first",
        "time-without-t0",
        "long-user",
        "empty-user",
        "no-token",
        "empty-token",
    ],
)
def test_request_errors_before_login_keep_the_connection(client, fields, code):
    """Each malformed or premature request gets its error code and id back; the connection stays usable."""
    c = client()
    reply = c.request(**fields)
    assert (reply["ev"], reply["re"], reply["code"]) == ("error", 1, code)
    c.ok("time", t0=0)


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"op": "login", "user": "again", "token": "t"}, "already_logged_in"),
        ({"op": "join"}, "bad_request"),
        ({"op": "join", "room": "r" * 65}, "bad_request"),
        ({"op": "send", "room": "nowhere", "cseq": 1, "ts": 0, "body": "x"}, "not_member"),
        ({"op": "send", "room": "nowhere", "cseq": "1", "ts": 0, "body": "x"}, "bad_request"),
        ({"op": "send", "room": "nowhere", "cseq": 1, "ts": "now", "body": "x"}, "bad_request"),
        ({"op": "send", "room": "nowhere", "cseq": 1, "ts": 0, "body": 5}, "bad_request"),
        ({"op": "dm", "to": "", "cseq": 1, "ts": 0, "body": "x"}, "bad_request"),
        ({"op": "read", "room": "nowhere", "seq": 1}, "not_member"),
        ({"op": "read", "room": "nowhere", "seq": True}, "bad_request"),
        ({"op": "leave", "room": "nowhere"}, "not_member"),
        ({"op": "history", "room": "nowhere", "since": 0}, "not_member"),
        ({"op": "history", "since": 0}, "bad_request"),
        ({"op": "history", "inbox": True, "room": "nowhere"}, "bad_request"),
        ({"op": "history", "inbox": True, "limit": -1}, "bad_request"),
        ({"op": "dm", "to": "someone", "cseq": 1, "ts": 0, "body": "x" * 65537}, "too_large"),
    ],
    ids=[
        "second-login",
        "join-no-room",
        "long-room",
        "send-not-member",
        "cseq-string",
        "ts-string",
        "body-number",
        "dm-empty-to",
        "read-not-member",
        "seq-bool",
        "leave-not-member",
        "history-not-member",
        "history-no-room",
        "history-both",
        "negative-limit",
        "dm-too-large",
    ],
)
def test_request_errors_after_login_keep_the_connection(client, unique, fields, code):
    """Each invalid request of a logged-in user gets its error code, and the connection stays usable."""
    c = client()
    c.login(unique("u"))
    reply = c.request(**fields)
    assert (reply["ev"], reply["re"], reply["code"]) == ("error", 2, code)
    c.ok("time", t0=0)


def test_body_limit_counts_utf8_bytes(client, unique):
    """A body of --max-body bytes is accepted; one byte more, even in multi-byte text, is too_large."""
    room = unique("r")
    c = client()
    c.login(unique("u"))
    c.ok("join", room=room)
    c.post(room, body="x" * 65536)
    assert c.error("send", room=room, cseq=2, ts=0, body="x" * 65537) == "too_large"
    assert c.error("send", room=room, cseq=2, ts=0, body="é" * 32769) == "too_large"
    assert c.post(room, body="é" * 32768)["seq"] == 2


def test_frame_over_one_mebibyte_closes_with_1009(client, timeout):
    """A frame larger than 1 MiB closes the connection with code 1009."""
    c = client()
    c.send("x" * (1024 * 1024 + 1))
    with pytest.raises(ConnectionClosed) as closed:
        c.frame(timeout)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


def test_secret_requires_an_hmac_token(spawn, connect_to):
    """With --secret only hex(HMAC-SHA256(secret, user)) logs in; a wrong token is auth_failed."""
    server = spawn("--secret", "s3cret")
    c = connect_to(server.url)
    assert c.error("login", user="alice", token="guess") == "auth_failed"
    token = hmac.new(b"s3cret", b"alice", hashlib.sha256).hexdigest()
    assert c.login("alice", token)["user"] == "alice"


def test_history_keeps_the_last_n_messages_per_room_and_inbox(spawn, connect_to):
    """With --history 5 rooms and inboxes keep their last 5 messages, and older ones are not_found."""
    server = spawn("--history", "5")
    alice, bob = connect_to(server.url), connect_to(server.url)
    alice.login("alice")
    alice.ok("join", room="r")
    for _ in range(8):
        alice.post("r")
        alice.ok("dm", to="bob", cseq=1, ts=0, body="hi")
    page = alice.ok("history", room="r", since=0)
    assert page["head"] == 8
    assert [m["seq"] for m in page["messages"]] == [4, 5, 6, 7, 8]
    assert alice.error("read", room="r", seq=3) == "not_found"
    assert alice.ok("read", room="r", seq=4)["seq"] == 4
    bob.login("bob")
    inbox = bob.ok("history", inbox=True, since=2, limit=2)
    assert inbox["head"] == 8
    assert [m["seq"] for m in inbox["messages"]] == [4, 5]


def test_max_body_flag_sets_the_limit(spawn, connect_to):
    """--max-body sets the longest body accepted, for room messages and dms alike."""
    server = spawn("--max-body", "10")
    c = connect_to(server.url)
    c.login("u")
    c.ok("join", room="r")
    c.post("r", body="x" * 10)
    assert c.error("send", room="r", cseq=1, ts=0, body="x" * 11) == "too_large"
    assert c.error("dm", to="v", cseq=1, ts=0, body="x" * 11) == "too_large"
