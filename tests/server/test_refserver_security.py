"""Attacks on the reference backend, each refused with its exact code, and limits that hold.

Every test here plays the attacker against a real backend process: ops before login, another
user's token, rooms it is not a member of, host ops as a listener, oversized bodies and frames,
floods past the rate cap, other users' inboxes and forged sender fields.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import time

import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from loadgen.server import ServerConfig, add_serve_arguments
from loadgen.server._cli import config_from_args
from loadgen.server._limits import FLOOD_BURSTS, RateLimiter
from loadgen.server._metrics import OPS

TS = 1764133200.5
OPEN_OPS = {"login", "time", "echo"}


def _token(secret: str, user: str) -> str:
    return hmac.new(secret.encode(), user.encode(), hashlib.sha256).hexdigest()


def _eventually(read, expected, timeout: float):
    """``read()`` once it equals ``expected``, or its last value when ``timeout`` runs out."""
    deadline = time.monotonic() + timeout
    value = read()
    while value != expected and time.monotonic() < deadline:
        time.sleep(0.02)
        value = read()
    return value


def _closed_code(client, timeout: float) -> int:
    """The close code the server sent, reading (and keeping) frames until the connection ends."""
    deadline = time.monotonic() + 3 * timeout
    with pytest.raises(ConnectionClosed) as closed:
        while time.monotonic() < deadline:
            client.pushes.append(client.frame(timeout=max(0.0, deadline - time.monotonic())))
    assert closed.value.rcvd is not None, closed.value
    return closed.value.rcvd.code


def test_every_op_but_login_time_and_echo_needs_a_login(client, unique):
    """Before login, and again after logout, every op but login, time and echo is refused not_logged_in."""
    c = client()
    guarded = [op for op in OPS if op not in OPEN_OPS]
    assert len(guarded) == len(OPS) - len(OPEN_OPS)
    for op in guarded:
        assert c.error(op, room=unique("r"), to="u", user="u", ts=TS) == "not_logged_in", op
    assert c.ok("time", t0=TS)["t0"] == TS
    assert c.ok("echo", ts=TS, body="x")["body"] == "x"
    c.login(unique("u"))
    c.ok("logout")
    for op in guarded:
        assert c.error(op, room=unique("r"), ts=TS) == "not_logged_in", op


def test_another_users_token_fails_and_no_reply_or_log_line_echoes_a_token(spawn, connect_to):
    """With --secret, another user's token or a wrong one is auth_failed; no reply, error or log line holds a token."""
    secret = "s3cret-for-tests"
    server = spawn("--secret", secret)
    alice_token, bob_token = _token(secret, "alice"), _token(secret, "bob")
    wrong = "0" * 64
    mallory = connect_to(server.url)
    replies = [
        mallory.request("login", user="bob", token=alice_token),
        mallory.request("login", user="bob", token=wrong),
        mallory.request("login", user="bob", token=bob_token.upper()),
        mallory.request("login", user="b" * 65, token=bob_token),
        mallory.request("login", user="bob", token=12),
    ]
    assert [r.get("code") for r in replies] == ["auth_failed"] * 3 + ["bad_request"] * 2
    bob = connect_to(server.url)
    login = bob.request("login", user="bob", token=bob_token)
    assert login["ev"] == "ack" and set(login) == {"ev", "re", "user", "inbox_head", "server_time"}
    join = bob.ok("join", room="r", as_host=True)
    replies += [login, join, bob.request("login", user="bob", token=bob_token)]
    assert replies[-1]["code"] == "already_logged_in"
    for reply in replies:
        text = orjson.dumps(reply).decode().lower()
        assert alice_token not in text and bob_token not in text and wrong not in text, reply
    server.stop()
    log = server.log().lower()
    assert alice_token not in log and bob_token not in log and wrong not in log


def test_a_non_member_can_act_in_no_room(client, unique):
    """Every room op by a logged-in user who is not a member is not_member, and the room sees nothing of it."""
    room, target = unique("v"), unique("v")
    host = client().enter(unique("h"), room, as_host=True)
    host.ok("stream.start", room=room, ts=TS)
    host.ok("seat.take", room=room, seat=0, ts=TS)
    host.post(room, body="before")
    client().enter(unique("h"), target, as_host=True).ok("stream.start", room=target, ts=TS)
    host.fence()
    mallory = client().enter(unique("m"))
    attempts = {
        "leave": {},
        "send": {"cseq": 1, "ts": TS, "body": "x"},
        "read": {"seq": 1},
        "history": {},
        "seat.take": {"seat": 1, "ts": TS},
        "seat.leave": {"ts": TS},
        "seat.lock": {"seat": 0, "locked": True, "ts": TS},
        "seat.mute": {"seat": 0, "muted": True, "ts": TS},
        "seat.kick": {"seat": 0, "ts": TS},
        "seat.invite": {"seat": 1, "user": "someone", "ts": TS},
        "seat.accept": {"seat": 1, "ts": TS},
        "gift": {"gift": "rose", "count": 1, "value": 10, "ts": TS},
        "danmaku": {"text": "x", "ts": TS},
        "settings": {"effect": "robot", "ts": TS},
        "stream.start": {"ts": TS},
        "stream.stop": {"ts": TS},
        "cohost.request": {"ts": TS},
        "cohost.accept": {"user": "someone", "ts": TS},
        "cohost.reject": {"user": "someone", "ts": TS},
        "cohost.leave": {"ts": TS},
        "pk.invite": {"target": target, "ts": TS},
        "pk.accept": {"pk": "pk1", "ts": TS},
        "pk.reject": {"pk": "pk1", "ts": TS},
    }
    for op, fields in attempts.items():
        assert mallory.error(op, room=room, **fields) == "not_member", op
    assert host.fence() == []
    page = host.ok("history", room=room)
    assert (page["head"], [m["body"] for m in page["messages"]]) == (1, ["before"])
    state = host.ok("join", room=room)
    assert (state["live"], state["state"]["version"], state["settings"]["effects"]) == (True, 1, {})


def test_host_ops_by_a_listener_are_forbidden_and_change_nothing(client, unique):
    """A listener's seat.lock, seat.kick, seat.mute, seat.invite, stream, co-host, PK and settings ops are forbidden."""
    room, rival_room = unique("v"), unique("v")
    host_name, seated_name, applicant_name = unique("h"), unique("s"), unique("a")
    host = client().enter(host_name, room, as_host=True)
    host.ok("stream.start", room=room, ts=TS)
    seated = client().enter(seated_name, room)
    seated.ok("seat.take", room=room, seat=0, ts=TS)
    applicant = client().enter(applicant_name, room)
    applicant.ok("cohost.request", room=room, ts=TS)
    rival = client().enter(unique("h"), rival_room, as_host=True)
    rival.ok("stream.start", room=rival_room, ts=TS)
    pk = rival.ok("pk.invite", room=rival_room, target=room, ts=TS)["pk"]
    listener = client().enter(unique("l"), room)
    version = host.ok("join", room=room)["state"]["version"]
    attempts = [
        ("seat.lock", {"seat": 1, "locked": True}),
        ("seat.kick", {"seat": 0}),
        ("seat.mute", {"seat": 0, "muted": True}),
        ("seat.invite", {"seat": 1, "user": applicant_name}),
        ("stream.stop", {}),
        ("stream.start", {}),
        ("cohost.accept", {"user": applicant_name}),
        ("cohost.reject", {"user": applicant_name}),
        ("pk.invite", {"target": rival_room}),
        ("pk.accept", {"pk": pk}),
        ("pk.reject", {"pk": pk}),
        ("settings", {"bgm": {"on": True, "track": "hijack"}}),
    ]
    for op, fields in attempts:
        assert listener.error(op, room=room, ts=TS, **fields) == "forbidden", op
    state = host.ok("join", room=room)
    assert state["state"]["version"] == version
    assert [seat["user"] for seat in state["state"]["seats"][:2]] == [seated_name, None]
    assert (state["live"], state["settings"]["bgm"]) == (True, {"on": False, "track": ""})
    # What the listener tried to answer is still pending for the host.
    assert host.ok("cohost.accept", room=room, user=applicant_name, ts=TS)["seat"] == 1
    assert host.ok("pk.accept", room=room, pk=pk, ts=TS)["pk"] == pk


def test_a_third_party_can_neither_answer_nor_end_someone_elses_call(client, unique):
    """call.accept, call.reject and call.hangup of another pair's call are no_call, and the call goes on."""
    callee_name = unique("b")
    caller = client().enter(unique("a"))
    callee = client().enter(callee_name)
    mallory = client().enter(unique("m"))
    call = caller.ok("call.invite", to=callee_name, ts=TS)["call"]
    for op in ("call.accept", "call.reject", "call.hangup"):
        assert mallory.error(op, call=call, ts=TS) == "no_call", op
    assert callee.ok("call.accept", call=call, ts=TS)["call"] == call
    assert mallory.fence() == []


def test_oversized_strings_are_too_large_and_nothing_is_performed(spawn, connect_to):
    """Bodies, danmaku, gift names, effects and tracks over --max-body bytes (UTF-8) are too_large and go nowhere."""
    server = spawn("--max-body", "16")
    sender = connect_to(server.url).enter("sender", "v", as_host=True)
    receiver = connect_to(server.url).enter("receiver", "v")
    sender.ok("seat.take", room="v", seat=0, ts=TS)
    receiver.fence()
    long, wide = "x" * 17, "é" * 9
    for body in (long, wide):
        assert sender.error("send", room="v", cseq=1, ts=TS, body=body) == "too_large"
        assert sender.error("dm", to="receiver", cseq=1, ts=TS, body=body) == "too_large"
        assert sender.error("echo", ts=TS, body=body) == "too_large"
        assert sender.error("danmaku", room="v", text=body, ts=TS) == "too_large"
        assert sender.error("gift", room="v", gift=body, count=1, value=1, ts=TS) == "too_large"
        assert sender.error("settings", room="v", effect=body, ts=TS) == "too_large"
        assert sender.error("settings", room="v", bgm={"on": True, "track": body}, ts=TS) == "too_large"
    assert receiver.fence() == []
    assert sender.ok("history", room="v")["head"] == 0
    assert receiver.ok("history", inbox=True)["head"] == 0
    assert sender.post("v", body="x" * 16)["seq"] == 1
    assert server.sample("refserver_errors_total", code="too_large") == 14


def test_a_frame_over_max_frame_closes_the_connection_with_1009_and_is_counted(spawn, connect_to, timeout):
    """A frame of --max-frame bytes is served; one byte more closes that connection with 1009, counted as too_big."""
    server = spawn("--max-frame", "4096")
    bystander = connect_to(server.url).enter("bystander")
    c = connect_to(server.url)
    head = orjson.dumps({"op": "echo", "id": 1, "ts": TS, "body": ""})
    fitting = head[:-2] + b"x" * (4096 - len(head)) + head[-2:]
    assert len(fitting) == 4096
    c.send(fitting.decode())
    assert c.reply(1)["ev"] == "ack"
    c.send(fitting[:-2].decode() + 'x"}')
    assert _closed_code(c, timeout) == 1009
    assert _eventually(lambda: server.sample("refserver_limit_closes_total", reason="too_big"), 1, timeout) == 1
    assert server.sample("refserver_limit_closes_total", reason="flood") == 0
    assert bystander.ok("time", t0=TS)["t0"] == TS


def test_a_flood_is_refused_rate_limited_then_closed_with_1008(spawn, connect_to, timeout):
    """Past --rate-burst a connection's requests are rate_limited and not performed; 10 bursts of refusals close it."""
    burst = 5
    server = spawn("--rate-limit", "0.01", "--rate-burst", str(burst))
    observer = connect_to(server.url).enter("observer", "r")
    flooder = connect_to(server.url).enter("flooder", "r")
    sends = 3
    for i in range(sends):
        flooder.send({"op": "send", "id": 100 + i, "room": "r", "cseq": i + 1, "ts": TS, "body": "x"})
    flood = 2 * FLOOD_BURSTS * burst
    for i in range(flood):
        try:
            flooder.send({"op": "send", "id": 1000 + i, "room": "r", "cseq": i + 100, "ts": TS, "body": "x"})
        except ConnectionClosed:
            break
    assert _closed_code(flooder, timeout) == 1008
    replies = [(f["re"], f["ev"], f.get("code")) for f in flooder.pushes]
    refused = FLOOD_BURSTS * burst
    assert replies == [(100 + i, "ack", None) for i in range(sends)] + [
        (1000 + i, "error", "rate_limited") for i in range(refused)
    ]
    pushes = [observer.frame() for _ in range(sends)]
    assert [(p["ev"], p["seq"]) for p in pushes] == [("msg", 1), ("msg", 2), ("msg", 3)]
    assert observer.ok("history", room="r")["head"] == sends
    assert server.sample("refserver_errors_total", code="rate_limited") == refused
    assert server.sample("refserver_limit_closes_total", reason="flood") == 1
    assert server.sample("refserver_limit_closes_total", reason="too_big") == 0


def test_the_rate_cap_refills_at_the_rate_and_tolerates_ten_bursts_of_refusals():
    """The limiter lets a burst through, then one request per 1/rate seconds, and gives up after 10 bursts refused."""
    now = [0.0]
    limiter = RateLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    assert [limiter.allow() for _ in range(4)] == [True, True, True, False]
    assert limiter.tolerate()
    now[0] += 0.5
    assert [limiter.allow() for _ in range(2)] == [True, False]
    refusals = 1
    while limiter.tolerate():
        refusals += 1
        assert refusals <= FLOOD_BURSTS * 3 + 1
    # One refusal's worth was refilled in the half second, on top of the 30 the bucket holds.
    assert refusals == FLOOD_BURSTS * 3 + 1
    now[0] += 10.0
    assert [limiter.allow() for _ in range(4)] == [True, True, True, False]
    assert limiter.tolerate()


def test_rate_limit_zero_turns_the_cap_off(spawn, connect_to):
    """With --rate-limit 0, a connection may pipeline far more than a burst and every request is served."""
    server = spawn("--rate-limit", "0", "--rate-burst", "1")
    c = connect_to(server.url)
    for i in range(50):
        c.send({"op": "time", "id": i, "t0": TS})
    assert all(c.reply(i)["ev"] == "ack" for i in range(50))
    assert server.sample("refserver_errors_total", code="rate_limited") == 0


def test_inbox_history_is_only_ever_the_callers_own(client, unique):
    """history with inbox true returns the caller's inbox whatever user or to it names; a user name is no room."""
    alice_name, bob_name = unique("a"), unique("b")
    alice = client().enter(alice_name)
    bob = client().enter(bob_name)
    mallory = client().enter(unique("m"))
    secret = unique("secret")
    alice.ok("dm", to=bob_name, cseq=1, ts=TS, body=secret)
    mallory.ok("dm", to=unique("x"), cseq=1, ts=TS, body="mine")
    for fields in ({}, {"user": bob_name}, {"to": bob_name}, {"inbox_of": bob_name}):
        page = mallory.ok("history", inbox=True, **fields)
        assert (page["head"], page["messages"]) == (0, []), fields
    assert mallory.error("history", room=bob_name) == "not_member"
    assert mallory.error("history", inbox=True, room=bob_name) == "bad_request"
    assert [m["body"] for m in bob.ok("history", inbox=True)["messages"]] == [secret]


def test_a_dm_body_reaches_its_recipient_only(client, unique):
    """A dm's body goes to its recipient alone: the sender's ack and every other member of a shared room lack it."""
    room = unique("r")
    bob_name = unique("b")
    alice = client().enter(unique("a"), room)
    bob = client().enter(bob_name, room)
    carol = client().enter(unique("c"), room)
    secret = unique("secret")
    ack = alice.ok("dm", to=bob_name, cseq=1, ts=TS, body=secret)
    assert secret not in orjson.dumps(ack).decode()
    assert [(p["ev"], p["body"]) for p in bob.fence()] == [("dm", secret)]
    for other in (alice, carol):
        assert other.fence() == []
        assert other.ok("history", inbox=True)["messages"] == []
        assert all(secret not in orjson.dumps(m).decode() for m in other.ok("history", room=room)["messages"])


def test_forged_sender_fields_are_ignored_and_the_logged_in_user_is_stamped(client, unique):
    """from, user, by and reader fields a client adds never replace the logged-in user in what others receive."""
    room = unique("v")
    mallory_name, bob_name, victim = unique("m"), unique("b"), unique("victim")
    bob = client().enter(bob_name, room, as_host=True)
    mallory = client().enter(mallory_name, room)
    forged = {"from": victim, "user": victim, "by": victim, "reader": victim}
    mallory.ok("send", room=room, cseq=1, ts=TS, body="x", **forged)
    mallory.ok("dm", to=bob_name, cseq=1, ts=TS, body="x", **forged)
    mallory.ok("gift", room=room, gift="rose", count=1, value=1, ts=TS, **forged)
    mallory.ok("danmaku", room=room, text="x", ts=TS, **{k: v for k, v in forged.items() if k != "text"})
    assert mallory.ok("seat.take", room=room, ts=TS, **{k: v for k, v in forged.items() if k != "user"})["seat"] == 0
    seq = bob.post(room)["seq"]
    mallory.fence()
    mallory.ok("read", room=room, seq=seq, **forged)
    pushes = bob.fence()
    authors = [(p["ev"], p.get("from") or p.get("reader") or p["change"]["user"]) for p in pushes]
    assert authors == [
        ("msg", mallory_name),
        ("dm", mallory_name),
        ("gift", mallory_name),
        ("danmaku", mallory_name),
        ("seats", mallory_name),
        ("receipt", mallory_name),
    ]
    assert pushes[4]["change"]["by"] == mallory_name


def test_delayed_deliveries_of_an_ended_session_arrive_before_the_next_login_ack(spawn, connect_to):
    """With --delay-ms, a dm still delayed for the user who logged out arrives before another user's login ack."""
    server = spawn("--delay-ms", "60000")
    shared = connect_to(server.url).enter("alice")
    connect_to(server.url).enter("bob").ok("dm", to="alice", cseq=1, ts=TS, body="for alice")
    shared.ok("logout")
    shared.login("carol")
    before_ack, shared.pushes = shared.pushes, []
    assert [(p["ev"], p["to"], p["body"]) for p in before_ack] == [("dm", "alice", "for alice")]
    assert shared.fence() == []


def test_limits_default_to_the_documented_values():
    """Without flags frames are capped at 1 MiB and each connection at 500 requests/s with a burst of 1000."""
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    config = config_from_args(parser.parse_args([]))
    assert (config.max_frame, config.rate_limit, config.rate_burst) == (1 << 20, 500.0, 1000)
    assert config == ServerConfig()
