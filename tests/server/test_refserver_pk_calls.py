"""PK battles between live rooms, and 1v1 calls with their ring timeout."""

from __future__ import annotations

import time

import pytest

TS = 1764133200.5


def _live_room(open_client, unique):
    """A live room with its host and one viewer: (room, host, host name, viewer)."""
    room, host_name = unique("v"), unique("h")
    host = open_client().enter(host_name, room, as_host=True)
    viewer = open_client().enter(unique("m"), room)
    host.ok("stream.start", room=room, ts=TS)
    host.fence()
    viewer.fence()
    return room, host, host_name, viewer


def _pk_events(pushes):
    return [p for p in pushes if p["ev"] == "pk"]


def _wait_for(c, ev, timeout, state=None):
    """The next push of kind ``ev`` (and ``state``), skipping others."""
    deadline = time.monotonic() + timeout
    while True:
        push = c.next_push(max(0.0, deadline - time.monotonic()))
        if push["ev"] == ev and (state is None or push.get("state") == state):
            return push


def test_pk_runs_from_invite_to_a_timed_end_with_scores_from_both_rooms_gifts(client, unique, timeout):
    """Both rooms see the PK start, a score after every gift (count x value), and its end with the winner."""
    red, red_host, red_host_name, red_viewer = _live_room(client, unique)
    blue, blue_host, blue_host_name, blue_viewer = _live_room(client, unique)
    ack = red_host.ok("pk.invite", room=red, target=blue, duration=1, ts=TS)
    pk = ack["pk"]
    assert isinstance(pk, str) and ack["room"] == red
    assert blue_host.fence() == [
        {"ev": "pk_invite", "pk": pk, "room": red, "target": blue, "from": red_host_name, "duration": 1, "ts": TS}
    ]
    ack = blue_host.ok("pk.accept", room=blue, pk=pk, ts=TS + 1)
    assert (ack["room"], ack["pk"]) == (blue, pk)
    [started] = _pk_events(blue_host.pushes)
    blue_host.pushes = []
    assert started["ends_at"] == pytest.approx(started["server_ts"] + 1, abs=0.01)
    assert started == {
        "ev": "pk",
        "pk": pk,
        "state": "started",
        "rooms": [red, blue],
        "scores": {red: 0, blue: 0},
        "version": 0,
        "ends_at": started["ends_at"],
        "ts": TS + 1,
        "server_ts": started["server_ts"],
    }
    for c in (red_host, red_viewer, blue_viewer):
        assert _pk_events(c.fence()) == [started]
    red_viewer.ok("gift", room=red, gift="rocket", count=3, value=10, ts=TS + 2)
    blue_viewer.ok("gift", room=blue, gift="rose", count=4, value=5, ts=TS + 3)
    red_host.ok("gift", room=red, gift="heart", count=1, value=0, ts=TS + 4)
    expected = [(1, {red: 30, blue: 0}, TS + 2), (2, {red: 30, blue: 20}, TS + 3), (3, {red: 30, blue: 20}, TS + 4)]
    for c in (red_host, red_viewer, blue_host, blue_viewer):
        pushes = c.fence()
        scores = _pk_events(pushes)
        assert [(p["state"], p["version"], p["scores"], p["ts"]) for p in scores] == [
            ("score", v, s, ts) for v, s, ts in expected
        ]
        assert all(p["rooms"] == [red, blue] for p in scores)
        if c is red_viewer:
            # each score change right after the gift behind it
            assert [p["ev"] for p in pushes] == ["gift", "pk", "pk", "gift", "pk"]
    ended = _wait_for(blue_viewer, "pk", 3 * timeout, state="ended")
    assert (ended["pk"], ended["scores"], ended["version"], ended["winner"]) == (pk, {red: 30, blue: 20}, 3, red)
    assert ended["server_ts"] >= started["ends_at"] - 0.01
    assert _wait_for(red_host, "pk", timeout, state="ended") == ended
    red_viewer.ok("gift", room=red, gift="rose", count=1, value=1, ts=TS)
    assert _pk_events(red_viewer.fence()) == [ended]


def test_a_pk_between_rooms_sharing_a_member_sends_it_one_copy_and_a_draw_has_no_winner(client, unique, timeout):
    """A member of both rooms gets each PK event once, and equal scores end with winner null."""
    red, red_host, _, _ = _live_room(client, unique)
    blue, blue_host, _, _ = _live_room(client, unique)
    both = client().enter(unique("b"), red)
    both.ok("join", room=blue)
    red_host.start_pk(red, blue_host, blue, TS, duration=1)
    both.ok("gift", room=red, gift="rose", count=2, value=5, ts=TS)
    both.ok("gift", room=blue, gift="rose", count=1, value=10, ts=TS)
    assert [p["state"] for p in _pk_events(both.fence())] == ["started", "score", "score"]
    ended = _wait_for(both, "pk", 3 * timeout, state="ended")
    assert (ended["scores"], ended["winner"]) == ({red: 10, blue: 10}, None)
    assert _pk_events(both.fence()) == []


def test_pk_reject_tells_the_inviter_and_frees_both_rooms(client, unique):
    """A rejected PK invite reaches the inviter as pk_rejected; the invite is gone and both rooms are free again."""
    red, red_host, _, _ = _live_room(client, unique)
    blue, blue_host, _, _ = _live_room(client, unique)
    pk = red_host.ok("pk.invite", room=red, target=blue, ts=TS)["pk"]
    assert blue_host.ok("pk.reject", room=blue, pk=pk, ts=TS + 1)["pk"] == pk
    assert red_host.fence() == [{"ev": "pk_rejected", "pk": pk, "room": red, "target": blue, "ts": TS + 1}]
    assert blue_host.error("pk.accept", room=blue, pk=pk, ts=TS) == "no_invite"
    assert blue_host.ok("pk.invite", room=blue, target=red, ts=TS)["pk"] != pk


def test_pk_refusals(client, unique):
    """PK invites need the host of a live room and a hosted free target; only the invited host answers."""
    red, red_host, _, red_viewer = _live_room(client, unique)
    blue, blue_host, _, _ = _live_room(client, unique)
    green, green_host, _, _ = _live_room(client, unique)
    quiet = unique("v")
    quiet_host = client().enter(unique("h"), quiet, as_host=True)
    hostless = unique("v")
    client().enter(unique("m"), hostless)
    assert red_viewer.error("pk.invite", room=red, target=blue, ts=TS) == "forbidden"
    assert quiet_host.error("pk.invite", room=quiet, target=blue, ts=TS) == "not_live"
    assert red_host.error("pk.invite", room=red, target=hostless, ts=TS) == "no_host"
    assert red_host.error("pk.invite", room=red, target=unique("nowhere"), ts=TS) == "no_host"
    assert red_host.error("pk.invite", room=red, target=red, ts=TS) == "bad_request"
    for duration in (0, 601, "30"):
        assert red_host.error("pk.invite", room=red, target=blue, duration=duration, ts=TS) == "bad_request"
    pk = red_host.ok("pk.invite", room=red, target=blue, ts=TS)["pk"]
    assert green_host.error("pk.invite", room=green, target=blue, ts=TS) == "pk_busy"
    assert green_host.error("pk.invite", room=green, target=red, ts=TS) == "pk_busy"
    assert blue_host.error("pk.invite", room=blue, target=green, ts=TS) == "pk_busy"
    assert red_host.error("pk.accept", room=red, pk=pk, ts=TS) == "no_invite"
    assert green_host.error("pk.accept", room=green, pk=pk, ts=TS) == "no_invite"
    assert blue_host.error("pk.accept", room=blue, pk="pk-unknown", ts=TS) == "no_invite"
    blue_host.ok("pk.accept", room=blue, pk=pk, ts=TS)
    assert green_host.error("pk.invite", room=green, target=blue, ts=TS) == "pk_busy"


def test_stopping_a_stream_ends_its_running_pk_at_once(client, unique):
    """stream.stop of either room ends its PK right away for both rooms, with the scores so far."""
    red, red_host, _, _ = _live_room(client, unique)
    blue, blue_host, _, blue_viewer = _live_room(client, unique)
    pk = red_host.start_pk(red, blue_host, blue, TS, duration=600)
    blue_viewer.ok("gift", room=blue, gift="rose", count=1, value=7, ts=TS)
    red_host.fence()
    blue_viewer.fence()
    red_host.ok("stream.stop", room=red, ts=TS + 9)
    [ended] = _pk_events(red_host.fence())
    assert (ended["state"], ended["winner"], ended["ts"]) == ("ended", blue, TS + 9)
    assert _pk_events(blue_viewer.fence()) == [ended]
    blue_viewer.ok("gift", room=blue, gift="rose", count=1, value=7, ts=TS)
    assert _pk_events(blue_viewer.fence()) == []
    red_host.ok("stream.start", room=red, ts=TS)
    assert red_host.ok("pk.invite", room=red, target=blue, ts=TS)["pk"] != pk


def test_call_rings_connects_with_the_invites_ts_and_ends_on_hangup(client, unique):
    """Both parties see ringing, then connected stamped with the invite's ts, then ended naming who hung up."""
    alice_name, bob_name = unique("a"), unique("b")
    alice, bob = client().enter(alice_name), client().enter(bob_name)
    call = alice.ok("call.invite", to=bob_name, room=unique("v"), ts=TS)["call"]
    assert isinstance(call, str)
    [ringing] = alice.fence()
    assert ringing == {
        "ev": "call",
        "call": call,
        "state": "ringing",
        "from": alice_name,
        "to": bob_name,
        "ts": TS,
        "server_ts": ringing["server_ts"],
    }
    assert bob.fence() == [ringing]
    assert bob.ok("call.accept", call=call, ts=TS + 2)["call"] == call
    [connected] = bob.fence()
    assert (connected["state"], connected["ts"], connected["from"], connected["to"]) == (
        "connected",
        TS,
        alice_name,
        bob_name,
    )
    assert alice.fence() == [connected]
    assert alice.error("call.accept", call=call, ts=TS) == "no_call"
    assert bob.error("call.accept", call=call, ts=TS) == "no_call"
    assert bob.ok("call.hangup", call=call, ts=TS + 3)["call"] == call
    [ended] = alice.fence()
    assert (ended["state"], ended["by"], ended["ts"]) == ("ended", bob_name, TS + 3)
    assert bob.fence() == [ended]
    assert alice.error("call.hangup", call=call, ts=TS) == "no_call"


def test_a_rejected_call_ends_for_both(client, unique):
    """The callee's reject sends rejected to both parties, and only the callee may reject."""
    alice_name, bob_name = unique("a"), unique("b")
    alice, bob = client().enter(alice_name), client().enter(bob_name)
    call = alice.ok("call.invite", to=bob_name, ts=TS)["call"]
    assert alice.error("call.reject", call=call, ts=TS) == "no_call"
    assert alice.error("call.accept", call=call, ts=TS) == "no_call"
    bob.ok("call.reject", call=call, ts=TS + 1)
    assert [(p["state"], p["ts"]) for p in alice.fence()] == [("ringing", TS), ("rejected", TS + 1)]
    assert [p["state"] for p in bob.fence()] == ["ringing", "rejected"]
    assert bob.error("call.accept", call=call, ts=TS) == "no_call"


def test_call_refusals_busy_offline_self_and_unknown(client, unique):
    """Calling oneself is bad_request, an offline user offline, a party in a call or ringing busy, others no_call."""
    alice_name, bob_name, carol_name = unique("a"), unique("b"), unique("c")
    alice, bob, carol = client().enter(alice_name), client().enter(bob_name), client().enter(carol_name)
    assert alice.error("call.invite", to=alice_name, ts=TS) == "bad_request"
    assert alice.error("call.invite", to=unique("offline"), ts=TS) == "offline"
    assert alice.error("call.invite", to=bob_name) == "bad_request"
    call = alice.ok("call.invite", to=bob_name, ts=TS)["call"]
    assert carol.error("call.invite", to=bob_name, ts=TS) == "busy"
    assert carol.error("call.invite", to=alice_name, ts=TS) == "busy"
    assert bob.error("call.invite", to=carol_name, ts=TS) == "busy"
    assert carol.error("call.hangup", call=call, ts=TS) == "no_call"
    assert carol.error("call.accept", call="c-unknown", ts=TS) == "no_call"
    bob.ok("call.accept", call=call, ts=TS)
    assert carol.error("call.invite", to=bob_name, ts=TS) == "busy"
    alice.ok("call.hangup", call=call, ts=TS)
    assert carol.ok("call.invite", to=bob_name, ts=TS)["call"] != call


def test_a_party_disconnecting_ends_the_call_for_the_other(client, unique, timeout):
    """When a party's connection goes away, the other gets ended naming it, and is free for a new call."""
    alice_name, bob_name = unique("a"), unique("b")
    alice, bob = client().enter(alice_name), client().enter(bob_name)
    call = alice.ok("call.invite", to=bob_name, ts=TS)["call"]
    bob.ok("call.accept", call=call, ts=TS)
    alice.fence()
    bob.ws.close()
    ended = _wait_for(alice, "call", timeout)
    assert (ended["call"], ended["state"], ended["by"]) == (call, "ended", bob_name)
    assert ended["ts"] == ended["server_ts"]
    other = client().enter(bob_name)
    assert alice.ok("call.invite", to=bob_name, ts=TS)["call"] != call
    other.ok("logout")
    ended = _wait_for(alice, "call", timeout, state="ended")
    assert ended["by"] == bob_name


def test_an_unanswered_call_times_out_after_the_ring_timeout(spawn, connect_to, timeout):
    """With --ring-timeout 0.5 an unanswered call ends with timeout for both after about half a second."""
    server = spawn("--ring-timeout", "0.5")
    alice, bob = connect_to(server.url).enter("alice"), connect_to(server.url).enter("bob")
    started = time.monotonic()
    call = alice.ok("call.invite", to="bob", ts=TS)["call"]
    for c in (alice, bob):
        push = _wait_for(c, "call", timeout, state="timeout")
        assert (push["call"], push["from"], push["to"]) == (call, "alice", "bob")
    assert 0.45 <= time.monotonic() - started < 0.5 + timeout
    assert bob.error("call.accept", call=call, ts=TS) == "no_call"
    assert server.sample("refserver_calls_total", outcome="timeout") == 1
    assert server.sample("refserver_calls_in_progress") == 0
