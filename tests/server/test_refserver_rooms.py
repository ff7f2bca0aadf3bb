"""Voice rooms and live streams: room state, seats, gifts, danmaku, settings, streams and co-hosts."""

from __future__ import annotations

import pytest
from websockets.exceptions import ConnectionClosed

TS = 1764133200.5


def _room(client, unique, members=2, seats=None):
    """A fresh room with a host and ``members`` other members: (room, host, host name, [(client, name)])."""
    room = unique("v")
    host_name = unique("h")
    join = {"as_host": True} if seats is None else {"as_host": True, "seats": seats}
    host = client().enter(host_name, room, **join)
    others = []
    for _ in range(members):
        name = unique("m")
        others.append((client().enter(name, room), name))
    return room, host, host_name, others


def _snapshots(pushes):
    return [p for p in pushes if p["ev"] == "seats"]


def _occupants(snapshot):
    return [seat["user"] for seat in snapshot["seats"]]


def test_join_returns_the_room_state_and_the_last_20_messages(client, unique):
    """The join ack carries host, a version 0 snapshot of the requested seats, settings, live and recent messages."""
    room = unique("v")
    host_name = unique("h")
    host = client()
    host.login(host_name)
    ack = host.ok("join", room=room, seats=4, as_host=True)
    assert ack["host"] == host_name
    assert ack["state"] == {
        "version": 0,
        "seats": [{"n": n, "user": None, "muted": False, "locked": False} for n in range(4)],
    }
    assert ack["settings"] == {"effects": {}, "bgm": {"on": False, "track": ""}}
    assert ack["live"] is False
    assert ack["recent"] == []
    for i in range(25):
        host.post(room, body=f"m{i + 1}", cseq=i + 1)
    late = client().enter(unique("m"))
    ack = late.ok("join", room=room, seats=12)
    assert (ack["head"], ack["host"], len(ack["state"]["seats"])) == (25, host_name, 4)
    assert [(m["ev"], m["seq"], m["body"]) for m in ack["recent"]] == [("msg", i, f"m{i}") for i in range(6, 26)]
    assert late.fence() == []


def test_join_defaults_to_eight_seats_and_rejects_bad_seat_counts(client, unique):
    """A room created without seats has 8; seats outside 1-16 or a non-boolean as_host is bad_request."""
    c = client().enter(unique("u"))
    assert len(c.ok("join", room=unique("v"))["state"]["seats"]) == 8
    assert len(c.ok("join", room=unique("v"), seats=16)["state"]["seats"]) == 16
    for fields in ({"seats": 0}, {"seats": 17}, {"seats": "8"}, {"as_host": 1}):
        assert c.error("join", room=unique("v"), **fields) == "bad_request"


def test_host_role_is_refused_while_taken_and_freed_when_the_host_leaves(client, unique):
    """join as_host is host_taken (and no membership) while another user hosts; after the host leaves anyone can."""
    room, host, host_name, [(member, member_name)] = _room(client, unique, members=1)
    rival = client().enter(unique("r"))
    assert rival.error("join", room=room, as_host=True) == "host_taken"
    assert rival.error("danmaku", room=room, text="hi", ts=TS) == "not_member"
    assert member.error("join", room=room, as_host=True) == "host_taken"
    assert host.ok("join", room=room, as_host=True)["host"] == host_name
    host.ok("leave", room=room)
    assert member.ok("join", room=room)["host"] is None
    assert member.ok("join", room=room, as_host=True)["host"] == member_name
    assert rival.ok("join", room=room)["host"] == member_name


def test_seat_take_broadcasts_the_full_snapshot_to_every_member_before_the_actors_ack(client, unique):
    """A take is one snapshot, the actor's own arriving before its ack, the same bytes for every member."""
    room, host, host_name, [(alice, alice_name), (bob, _)] = _room(client, unique, seats=3)
    ack = alice.ok("seat.take", room=room, seat=2, ts=TS)
    assert (ack["room"], ack["seat"], ack["version"]) == (room, 2, 1)
    [own] = alice.pushes
    alice.pushes = []
    assert own["server_ts"] > 0
    assert own == {
        "ev": "seats",
        "room": room,
        "version": 1,
        "seats": [
            {"n": 0, "user": None, "muted": False, "locked": False},
            {"n": 1, "user": None, "muted": False, "locked": False},
            {"n": 2, "user": alice_name, "muted": False, "locked": False},
        ],
        "change": {"kind": "take", "seat": 2, "user": alice_name, "by": alice_name, "ts": TS},
        "server_ts": own["server_ts"],
    }
    assert host.fence() == [own]
    assert bob.fence() == [own]
    assert bob.ok("join", room=room)["state"] == {"version": 1, "seats": own["seats"]}


def test_seat_take_without_a_seat_picks_the_lowest_free_unlocked_one(client, unique):
    """seat.take without seat gets the lowest seat that is neither occupied nor locked, then no_free_seat."""
    room, host, _, [(alice, _), (bob, _), (carol, _)] = _room(client, unique, members=3, seats=3)
    host.ok("seat.lock", room=room, seat=0, locked=True, ts=TS)
    assert alice.ok("seat.take", room=room, ts=TS)["seat"] == 1
    assert bob.ok("seat.take", room=room, seat=None, ts=TS)["seat"] == 2
    assert carol.error("seat.take", room=room, ts=TS) == "no_free_seat"


def test_every_seat_change_is_one_full_snapshot_with_the_next_version(client, unique):
    """Across every kind of change, each snapshot lists every seat, reflects the change, and is the next version."""
    room, host, host_name, [(alice, alice_name), (bob, bob_name), (watcher, _)] = _room(
        client, unique, members=3, seats=4
    )
    steps = [
        (alice, "seat.take", {"seat": 1}, ("take", 1, alice_name, alice_name)),
        (bob, "seat.take", {"seat": 2}, ("take", 2, bob_name, bob_name)),
        (alice, "seat.mute", {"seat": 1, "muted": True}, ("mute", 1, alice_name, alice_name)),
        (host, "seat.mute", {"seat": 1, "muted": False}, ("unmute", 1, alice_name, host_name)),
        (host, "seat.mute", {"seat": 2, "muted": True}, ("mute", 2, bob_name, host_name)),
        (host, "seat.kick", {"seat": 2}, ("kick", 2, bob_name, host_name)),
        (host, "seat.lock", {"seat": 3, "locked": True}, ("lock", 3, None, host_name)),
        (host, "seat.lock", {"seat": 3, "locked": True}, ("lock", 3, None, host_name)),
        (host, "seat.lock", {"seat": 3, "locked": False}, ("unlock", 3, None, host_name)),
        (alice, "seat.leave", {}, ("leave", 1, alice_name, alice_name)),
        (bob, "seat.take", {"seat": 2}, ("take", 2, bob_name, bob_name)),
    ]
    expected = {"user": [None] * 4, "muted": [False] * 4, "locked": [False] * 4}
    for version, (actor, op, fields, (kind, seat, user, by)) in enumerate(steps, start=1):
        ts = TS + version
        ack = actor.ok(op, room=room, ts=ts, **fields)
        assert (ack["seat"], ack["version"]) == (seat, version)
        [snapshot] = watcher.fence()
        assert snapshot["version"] == version
        assert snapshot["change"] == {"kind": kind, "seat": seat, "user": user, "by": by, "ts": ts}
        if kind in ("take",):
            expected["user"][seat], expected["muted"][seat] = user, False
        elif kind in ("leave", "kick"):
            expected["user"][seat], expected["muted"][seat] = None, False
        elif kind in ("mute", "unmute"):
            expected["muted"][seat] = kind == "mute"
        else:
            expected["locked"][seat] = kind == "lock"
        assert snapshot["seats"] == [
            {"n": n, "user": expected["user"][n], "muted": expected["muted"][n], "locked": expected["locked"][n]}
            for n in range(4)
        ]


def test_seat_refusals_keep_the_state_and_the_connection(client, unique):
    """Taken, locked, already seated, not seated, out-of-range and missing-ts requests are refused, changing nothing."""
    room, host, _, [(alice, _), (bob, _)] = _room(client, unique, seats=3)
    alice.ok("seat.take", room=room, seat=0, ts=TS)
    host.ok("seat.lock", room=room, seat=2, locked=True, ts=TS)
    assert bob.error("seat.take", room=room, seat=0, ts=TS) == "seat_taken"
    assert bob.error("seat.take", room=room, seat=2, ts=TS) == "seat_locked"
    assert alice.error("seat.take", room=room, seat=1, ts=TS) == "already_seated"
    assert alice.error("seat.take", room=room, ts=TS) == "already_seated"
    assert bob.error("seat.leave", room=room, ts=TS) == "not_seated"
    assert bob.error("cohost.leave", room=room, ts=TS) == "not_seated"
    assert bob.error("seat.take", room=room, seat=3, ts=TS) == "bad_request"
    assert bob.error("seat.take", room=room, seat=-1, ts=TS) == "bad_request"
    assert bob.error("seat.take", room=room, seat=1) == "bad_request"
    assert host.error("seat.kick", room=room, seat=1, ts=TS) == "not_seated"
    assert host.error("seat.mute", room=room, seat=1, muted=True, ts=TS) == "not_seated"
    assert host.ok("join", room=room)["state"]["version"] == 2
    bob.fence()
    assert bob.ok("seat.take", room=room, seat=1, ts=TS)["version"] == 3


def test_non_members_get_not_member_for_every_room_op(client, unique):
    """A user outside the room is refused with not_member, and a seat request of theirs gets no seat."""
    room, host, _, [(alice, alice_name)] = _room(client, unique, members=1)
    outsider = client().enter(unique("o"))
    for op, fields in [
        ("seat.take", {"seat": 0}),
        ("seat.take", {}),
        ("seat.leave", {}),
        ("seat.lock", {"seat": 0, "locked": True}),
        ("seat.mute", {"seat": 0, "muted": True}),
        ("seat.kick", {"seat": 0}),
        ("seat.invite", {"seat": 0, "user": alice_name}),
        ("seat.accept", {"seat": 0}),
        ("gift", {"gift": "rose", "count": 1, "value": 1}),
        ("danmaku", {"text": "hi"}),
        ("settings", {"effect": "robot"}),
        ("stream.start", {}),
        ("stream.stop", {}),
        ("cohost.request", {}),
        ("cohost.accept", {"user": alice_name}),
        ("cohost.reject", {"user": alice_name}),
        ("cohost.leave", {}),
        ("pk.invite", {"target": unique("v")}),
        ("pk.accept", {"pk": "pk1"}),
        ("pk.reject", {"pk": "pk1"}),
    ]:
        assert outsider.error(op, room=room, ts=TS, **fields) == "not_member", op
    assert host.ok("join", room=room)["state"]["version"] == 0
    assert alice.fence() == []


def test_host_only_ops_answer_forbidden_to_anyone_else(client, unique):
    """lock, kick, invite, co-host answers, streams and PK invites are the host's; mute is the occupant's or host's."""
    room, host, _, [(alice, alice_name), (bob, bob_name)] = _room(client, unique)
    host.ok("stream.start", room=room, ts=TS)
    alice.ok("seat.take", room=room, seat=0, ts=TS)
    bob.ok("cohost.request", room=room, ts=TS)
    for op, fields in [
        ("seat.lock", {"seat": 1, "locked": True}),
        ("seat.kick", {"seat": 0}),
        ("seat.invite", {"seat": 1, "user": bob_name}),
        ("cohost.accept", {"user": bob_name}),
        ("cohost.reject", {"user": bob_name}),
        ("stream.start", {}),
        ("stream.stop", {}),
        ("pk.invite", {"target": unique("v")}),
        ("pk.accept", {"pk": "pk1"}),
        ("pk.reject", {"pk": "pk1"}),
    ]:
        assert alice.error(op, room=room, ts=TS, **fields) == "forbidden", op
    assert bob.error("seat.mute", room=room, seat=0, muted=True, ts=TS) == "forbidden"
    assert bob.error("seat.mute", room=room, seat=1, muted=True, ts=TS) == "forbidden"
    assert bob.error("settings", room=room, effect="robot", ts=TS) == "forbidden"
    assert host.error("cohost.request", room=room, ts=TS) == "forbidden"
    assert bob.ok("join", room=room)["state"]["version"] == 1


def test_locking_an_occupied_seat_removes_its_occupant_in_one_change(client, unique):
    """Locking an occupied seat is one lock change naming the removed user, who is then free to sit elsewhere."""
    room, host, host_name, [(alice, alice_name)] = _room(client, unique, members=1, seats=2)
    alice.ok("seat.take", room=room, seat=1, ts=TS)
    alice.fence()
    ack = host.ok("seat.lock", room=room, seat=1, locked=True, ts=TS + 1)
    assert ack["version"] == 2
    [snapshot] = alice.fence()
    assert snapshot["change"] == {"kind": "lock", "seat": 1, "user": alice_name, "by": host_name, "ts": TS + 1}
    assert snapshot["seats"][1] == {"n": 1, "user": None, "muted": False, "locked": True}
    assert alice.error("seat.leave", room=room, ts=TS) == "not_seated"
    assert alice.ok("seat.take", room=room, ts=TS)["seat"] == 0


def test_a_seated_user_leaving_logging_out_or_disconnecting_frees_its_seat(client, unique, timeout):
    """Leaving the room, logging out or dropping the connection each free the seat with a leave change to the rest."""
    room, host, _, others = _room(client, unique, members=3, seats=3)
    for n, (c, _) in enumerate(others):
        c.ok("seat.take", room=room, seat=n, ts=TS)
    for c in (host, *(c for c, _ in others)):
        c.fence()
    (leaver, leaver_name), (quitter, quitter_name), (dropper, dropper_name) = others
    assert leaver.ok("leave", room=room)["room"] == room
    quitter.ok("logout")
    dropper.ws.close()
    changes = []
    while len(changes) < 3:
        snapshot = host.next_push(timeout)
        assert snapshot["ev"] == "seats"
        changes.append((snapshot["version"], snapshot["change"]["kind"], snapshot["change"]["user"]))
        assert snapshot["change"]["by"] == snapshot["change"]["user"]
        assert snapshot["change"]["ts"] == snapshot["server_ts"]
    assert changes == [(4, "leave", leaver_name), (5, "leave", quitter_name), (6, "leave", dropper_name)]
    assert _occupants(host.ok("join", room=room)["state"]) == [None, None, None]
    assert _snapshots(leaver.fence()) == []
    assert [s["version"] for s in _snapshots(quitter.fence())] == [4]


def test_replaced_login_frees_the_seat_of_the_old_connection(client, unique, timeout):
    """A second login of a seated user ends the old session, whose seat is freed with a leave change."""
    room, host, _, [(alice, alice_name)] = _room(client, unique, members=1)
    alice.ok("seat.take", room=room, seat=4, ts=TS)
    host.fence()
    client().login(alice_name)
    [snapshot] = host.fence()
    assert (snapshot["change"]["kind"], snapshot["change"]["user"]) == ("leave", alice_name)
    with pytest.raises(ConnectionClosed):
        while True:
            alice.frame(timeout)


def test_seat_invite_then_accept_seats_the_invitee(client, unique):
    """The host's invite reaches the invitee, whose accept is an accept change; an invite is used once."""
    room, host, host_name, [(alice, alice_name), (bob, _)] = _room(client, unique, seats=4)
    ack = host.ok("seat.invite", room=room, seat=3, user=alice_name, ts=TS)
    assert (ack["room"], ack["seat"]) == (room, 3)
    assert "version" not in ack
    assert host.fence() == []
    assert alice.fence() == [{"ev": "seat_invite", "room": room, "seat": 3, "from": host_name, "ts": TS}]
    assert alice.error("seat.accept", room=room, seat=2, ts=TS) == "no_invite"
    assert bob.error("seat.accept", room=room, seat=3, ts=TS) == "no_invite"
    ack = alice.ok("seat.accept", room=room, seat=3, ts=TS + 1)
    assert (ack["seat"], ack["version"]) == (3, 1)
    [snapshot] = bob.fence()
    assert snapshot["change"] == {"kind": "accept", "seat": 3, "user": alice_name, "by": alice_name, "ts": TS + 1}
    assert snapshot["seats"][3]["user"] == alice_name
    alice.ok("seat.leave", room=room, ts=TS)
    assert alice.error("seat.accept", room=room, seat=3, ts=TS) == "no_invite"


def test_seat_invite_and_accept_refusals(client, unique):
    """Invites to taken or locked seats or non-members are refused; accept re-checks the seat and the invitee."""
    room, host, _, [(alice, alice_name), (bob, bob_name)] = _room(client, unique, seats=4)
    outsider_name = unique("o")
    client().enter(outsider_name)
    bob.ok("seat.take", room=room, seat=0, ts=TS)
    host.ok("seat.lock", room=room, seat=1, locked=True, ts=TS)
    assert host.error("seat.invite", room=room, seat=0, user=alice_name, ts=TS) == "seat_taken"
    assert host.error("seat.invite", room=room, seat=1, user=alice_name, ts=TS) == "seat_locked"
    assert host.error("seat.invite", room=room, seat=2, user=outsider_name, ts=TS) == "not_member"
    assert host.error("seat.invite", room=room, seat=2, user=unique("nobody"), ts=TS) == "not_member"
    host.ok("seat.invite", room=room, seat=2, user=alice_name, ts=TS)
    host.ok("seat.invite", room=room, seat=3, user=alice_name, ts=TS)
    host.ok("seat.invite", room=room, seat=2, user=bob_name, ts=TS)
    assert bob.error("seat.accept", room=room, seat=2, ts=TS) == "already_seated"
    bob.ok("seat.leave", room=room, ts=TS)
    bob.ok("seat.accept", room=room, seat=2, ts=TS)
    assert alice.error("seat.accept", room=room, seat=2, ts=TS) == "seat_taken"
    host.ok("seat.lock", room=room, seat=3, locked=True, ts=TS)
    assert alice.error("seat.accept", room=room, seat=3, ts=TS) == "seat_locked"
    host.ok("seat.lock", room=room, seat=3, locked=False, ts=TS)
    alice.ok("leave", room=room)
    alice.ok("join", room=room)
    assert alice.error("seat.accept", room=room, seat=3, ts=TS) == "no_invite"


def test_gift_and_danmaku_reach_every_member_the_sender_included(client, unique):
    """A gift and a danmaku are broadcast as one frame to every member, the sender's before its ack."""
    room, host, _, [(alice, alice_name), (bob, _)] = _room(client, unique)
    ack = alice.ok("gift", room=room, gift="rocket", count=3, value=100, ts=TS)
    assert (set(ack), ack["room"]) == ({"ev", "re", "room"}, room)
    [gift] = alice.pushes
    assert gift == {
        "ev": "gift",
        "room": room,
        "from": alice_name,
        "gift": "rocket",
        "count": 3,
        "value": 100,
        "ts": TS,
        "server_ts": gift["server_ts"],
    }
    alice.pushes = []
    assert alice.ok("danmaku", room=room, text="666", ts=TS + 1)["room"] == room
    [danmaku] = alice.fence()
    assert danmaku == {
        "ev": "danmaku",
        "room": room,
        "from": alice_name,
        "text": "666",
        "ts": TS + 1,
        "server_ts": danmaku["server_ts"],
    }
    assert host.fence() == [gift, danmaku]
    assert bob.fence() == [gift, danmaku]


def test_gift_and_danmaku_refusals(client, unique):
    """A gift needs a count of 1 to 10^6 and a value of 0 to 10^6; danmaku text obeys --max-body."""
    room, _, _, [(alice, _)] = _room(client, unique, members=1)
    assert alice.error("gift", room=room, gift="rose", count=0, value=1, ts=TS) == "bad_request"
    assert alice.error("gift", room=room, gift="rose", count=1, value=-1, ts=TS) == "bad_request"
    assert alice.error("gift", room=room, gift=5, count=1, value=1, ts=TS) == "bad_request"
    assert alice.error("gift", room=room, gift="rose", count=1_000_001, value=1, ts=TS) == "bad_request"
    assert alice.error("gift", room=room, gift="rose", count=1, value=1_000_001, ts=TS) == "bad_request"
    alice.ok("gift", room=room, gift="rose", count=1_000_000, value=1_000_000, ts=TS)
    assert alice.error("danmaku", room=room, text="x" * 65537, ts=TS) == "too_large"
    alice.ok("gift", room=room, gift="rose", count=1, value=0, ts=TS)
    alice.ok("danmaku", room=room, text="x" * 65536, ts=TS)


def test_settings_are_the_hosts_and_seated_users_and_broadcast_whole(client, unique):
    """The host sets the bgm and a seated user its own effect; each broadcast carries every setting."""
    room, host, host_name, [(alice, alice_name), (bob, _)] = _room(client, unique)
    host.ok("settings", room=room, bgm={"on": True, "track": "song-1"}, ts=TS)
    alice.ok("seat.take", room=room, seat=0, ts=TS)
    alice.ok("settings", room=room, effect="robot", ts=TS + 1)
    pushes = [p for p in bob.fence() if p["ev"] == "settings"]
    assert [(p["by"], p["ts"], p["settings"]) for p in pushes] == [
        (host_name, TS, {"effects": {}, "bgm": {"on": True, "track": "song-1"}}),
        (alice_name, TS + 1, {"effects": {alice_name: "robot"}, "bgm": {"on": True, "track": "song-1"}}),
    ]
    assert bob.error("settings", room=room, effect="echo", ts=TS) == "forbidden"
    assert host.error("settings", room=room, bgm={"on": "yes", "track": "x"}, ts=TS) == "bad_request"
    assert host.error("settings", room=room, bgm={"on": True}, ts=TS) == "bad_request"
    assert bob.ok("join", room=room)["settings"] == pushes[-1]["settings"]


def test_stream_start_and_stop_are_broadcast(client, unique):
    """stream.start and stream.stop broadcast the stream's state with the host, and join shows it."""
    room, host, host_name, [(alice, _)] = _room(client, unique, members=1)
    host.ok("stream.start", room=room, ts=TS)
    [started] = alice.fence()
    assert started == {
        "ev": "stream",
        "room": room,
        "live": True,
        "host": host_name,
        "ts": TS,
        "server_ts": started["server_ts"],
    }
    assert alice.ok("join", room=room)["live"] is True
    host.ok("stream.stop", room=room, ts=TS + 1)
    [stopped] = alice.fence()
    assert (stopped["live"], stopped["ts"]) == (False, TS + 1)
    assert alice.ok("join", room=room)["live"] is False


def test_cohost_request_accept_puts_the_requester_on_stage_until_it_leaves(client, unique):
    """A co-host request reaches the host; accepting seats the requester (a cohost change); cohost.leave frees it."""
    room, host, host_name, [(alice, alice_name), (bob, _)] = _room(client, unique, seats=3)
    assert alice.error("cohost.request", room=room, ts=TS) == "not_live"
    host.ok("stream.start", room=room, ts=TS)
    bob.ok("seat.take", room=room, seat=0, ts=TS)
    host.fence()
    bob.fence()
    assert bob.error("cohost.request", room=room, ts=TS) == "already_seated"
    ack = alice.ok("cohost.request", room=room, ts=TS + 1)
    assert (set(ack), ack["room"]) == ({"ev", "re", "room"}, room)
    assert host.fence() == [{"ev": "cohost_request", "room": room, "from": alice_name, "ts": TS + 1}]
    assert host.error("cohost.accept", room=room, user=unique("nobody"), ts=TS) == "no_request"
    ack = host.ok("cohost.accept", room=room, user=alice_name, ts=TS + 2)
    assert (ack["seat"], ack["version"]) == (1, 2)
    [snapshot] = bob.fence()
    assert snapshot["change"] == {"kind": "cohost", "seat": 1, "user": alice_name, "by": host_name, "ts": TS + 2}
    assert host.error("cohost.accept", room=room, user=alice_name, ts=TS) == "no_request"
    ack = alice.ok("cohost.leave", room=room, ts=TS + 3)
    assert (ack["seat"], ack["version"]) == (1, 3)
    [snapshot] = bob.fence()
    assert snapshot["change"] == {"kind": "leave", "seat": 1, "user": alice_name, "by": alice_name, "ts": TS + 3}


def test_cohost_reject_tells_the_requester_and_a_leaving_requester_withdraws(client, unique):
    """A rejected requester gets cohost_rejected; a requester who leaves the room has no request left to answer."""
    room, host, host_name, [(alice, alice_name), (bob, bob_name)] = _room(client, unique)
    host.ok("stream.start", room=room, ts=TS)
    alice.ok("cohost.request", room=room, ts=TS)
    bob.ok("cohost.request", room=room, ts=TS)
    alice.fence()
    assert host.ok("cohost.reject", room=room, user=alice_name, ts=TS + 1)["room"] == room
    assert alice.fence() == [{"ev": "cohost_rejected", "room": room, "by": host_name, "ts": TS + 1}]
    assert host.error("cohost.reject", room=room, user=alice_name, ts=TS) == "no_request"
    bob.ok("leave", room=room)
    assert host.error("cohost.accept", room=room, user=bob_name, ts=TS) == "no_request"


def test_cohost_accept_without_a_free_unlocked_seat_is_stage_full(client, unique):
    """With every seat occupied or locked, accepting a co-host is stage_full and the request stays pending."""
    room, host, _, [(alice, alice_name), (bob, _)] = _room(client, unique, seats=2)
    host.ok("stream.start", room=room, ts=TS)
    alice.ok("cohost.request", room=room, ts=TS)
    bob.ok("seat.take", room=room, seat=0, ts=TS)
    host.ok("seat.lock", room=room, seat=1, locked=True, ts=TS)
    assert host.error("cohost.accept", room=room, user=alice_name, ts=TS) == "stage_full"
    host.ok("seat.lock", room=room, seat=1, locked=False, ts=TS)
    assert host.ok("cohost.accept", room=room, user=alice_name, ts=TS)["seat"] == 1


def test_stopping_the_stream_takes_only_cohosts_off_stage(client, unique):
    """stream.stop broadcasts the stream event, then one leave change by the host per co-host, sparing others."""
    room, host, host_name, [(alice, alice_name), (bob, bob_name), (carol, carol_name)] = _room(
        client, unique, members=3
    )
    host.ok("stream.start", room=room, ts=TS)
    bob.ok("seat.take", room=room, seat=0, ts=TS)
    for requester, name in ((alice, alice_name), (carol, carol_name)):
        requester.ok("cohost.request", room=room, ts=TS)
        host.ok("cohost.accept", room=room, user=name, ts=TS)
    bob.fence()
    host.ok("stream.stop", room=room, ts=TS + 5)
    stream, *leaves = bob.fence()
    assert (stream["ev"], stream["live"]) == ("stream", False)
    assert [(s["version"], s["change"]) for s in leaves] == [
        (4, {"kind": "leave", "seat": 1, "user": alice_name, "by": host_name, "ts": TS + 5}),
        (5, {"kind": "leave", "seat": 2, "user": carol_name, "by": host_name, "ts": TS + 5}),
    ]
    assert _occupants(leaves[-1]) == [bob_name, None, None, None, None, None, None, None]


def test_room_requests_need_ts_and_well_typed_fields(client, unique):
    """Every op of the voice-room section is bad_request without a numeric ts or with a mistyped field."""
    room, host, _, [(alice, _)] = _room(client, unique, members=1)
    for op, fields in [
        ("seat.take", {"seat": 0}),
        ("seat.lock", {"seat": 0, "locked": True}),
        ("gift", {"gift": "rose", "count": 1, "value": 1}),
        ("danmaku", {"text": "hi"}),
        ("stream.start", {}),
        ("cohost.request", {}),
    ]:
        assert host.error(op, room=room, **fields) == "bad_request", op
        assert host.error(op, room=room, ts="now", **fields) == "bad_request", op
    assert host.error("seat.lock", room=room, seat=0, locked=1, ts=TS) == "bad_request"
    assert host.error("seat.mute", room=room, seat="0", muted=True, ts=TS) == "bad_request"
    assert host.error("seat.take", room=room, seat=True, ts=TS) == "bad_request"
    assert host.ok("join", room=room)["state"]["version"] == 0
