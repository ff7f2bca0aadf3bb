"""--bug injection: each injected bug is visible to clients and counted exactly; without it none is."""

from __future__ import annotations

TS = 1764133200.5


def _clients(connect_to, server, room, count, seats=4):
    """Logged-in members u0..u(count-1) of ``room``, u0 its host, the room live."""
    clients = [connect_to(server.url).enter(f"u{i}", room, seats=seats, as_host=i == 0) for i in range(count)]
    clients[0].ok("stream.start", room=room, ts=TS)
    for c in clients:
        c.fence()
    return clients


def _blue_host(connect_to, server):
    """The host b0 of room blue, the other side of a PK."""
    return connect_to(server.url).enter("b0", "blue", as_host=True)


def _drain(*clients):
    """Read what is left, so closing a client does not wait behind pushes it never read."""
    for c in clients:
        c.fence()


def _bug_counts(server):
    return {kind: server.injected(kind) for kind in ("seat-double-grant", "seat-version-regress", "pk-score-skew")}


def test_seat_double_grant_hands_an_occupied_seat_over_silently(spawn, connect_to):
    """With the bug at P=1 a take of an occupied seat succeeds as a take change, and each such take is counted."""
    server = spawn("--bug", "seat-double-grant", "1")
    host, sitter, grabber = _clients(connect_to, server, "r", 3)
    sitter.ok("seat.take", room="r", seat=0, ts=TS)
    host.fence()
    sitter.fence()
    ack = grabber.ok("seat.take", room="r", seat=0, ts=TS)
    assert (ack["seat"], ack["version"]) == (0, 2)
    [snapshot] = sitter.fence()
    assert snapshot["change"] == {"kind": "take", "seat": 0, "user": "u2", "by": "u2", "ts": TS}
    assert snapshot["seats"][0]["user"] == "u2"
    assert sitter.error("seat.leave", room="r", ts=TS) == "not_seated"
    assert grabber.error("seat.take", room="r", seat=1, ts=TS) == "already_seated"
    assert sitter.ok("seat.take", room="r", seat=1, ts=TS)["seat"] == 1
    assert _bug_counts(server) == {"seat-double-grant": 1, "seat-version-regress": 0, "pk-score-skew": 0}


def test_seat_version_regress_stamps_snapshots_two_below_the_room_version(spawn, connect_to):
    """With the bug at P=1 every snapshot shows the version two below its ack's, and each one is counted."""
    server = spawn("--bug", "seat-version-regress", "1")
    host, alice = _clients(connect_to, server, "r", 2)
    acks = [
        alice.ok("seat.take", room="r", seat=0, ts=TS)["version"],
        alice.ok("seat.mute", room="r", seat=0, muted=True, ts=TS)["version"],
        host.ok("seat.lock", room="r", seat=0, locked=True, ts=TS)["version"],
    ]
    assert acks == [1, 2, 3]
    seen = [s["version"] for s in host.fence() if s["ev"] == "seats"]
    assert seen == [-1, 0, 1]
    assert seen[0] < 0
    assert host.ok("join", room="r")["state"]["version"] == 3
    assert _bug_counts(server) == {"seat-double-grant": 0, "seat-version-regress": 3, "pk-score-skew": 0}


def test_pk_score_skew_adds_one_more_than_the_gifts(spawn, connect_to):
    """With the bug at P=1 each PK score change adds count x value plus one, and each one is counted."""
    server = spawn("--bug", "pk-score-skew", "1")
    red_host, red_viewer = _clients(connect_to, server, "red", 2)
    blue = _blue_host(connect_to, server)
    red_host.start_pk("red", blue, "blue", TS)
    red_viewer.ok("gift", room="red", gift="rose", count=2, value=10, ts=TS)
    red_viewer.ok("gift", room="red", gift="rose", count=1, value=5, ts=TS)
    scores = [p["scores"] for p in blue.fence() if p["ev"] == "pk" and p["state"] == "score"]
    assert scores == [{"red": 21, "blue": 0}, {"red": 27, "blue": 0}]
    assert _bug_counts(server) == {"seat-double-grant": 0, "seat-version-regress": 0, "pk-score-skew": 2}


def test_bugs_at_half_probability_are_counted_exactly_as_observed(spawn, connect_to):
    """At P=0.5 with a seed, the takes granted, versions regressed and scores skewed equal the counts."""
    server = spawn(
        "--bug", "seat-double-grant", "0.5",
        "--bug", "seat-version-regress", "0.5",
        "--bug", "pk-score-skew", "0.5",
        "--seed", "4",
    )  # fmt: skip
    host, a, b, watcher = _clients(connect_to, server, "r", 4)
    blue = _blue_host(connect_to, server)
    host.start_pk("r", blue, "blue", TS, duration=600)
    a.ok("seat.take", room="r", seat=0, ts=TS)
    granted = 0
    sitting, taker = a, b
    for _ in range(40):
        reply = taker.request("seat.take", room="r", seat=0, ts=TS)
        if reply["ev"] == "ack":
            granted += 1
            sitting, taker = taker, sitting
        else:
            assert reply["code"] == "seat_taken"
        host.ok("gift", room="r", gift="rose", count=1, value=3, ts=TS)
    pushes = watcher.fence()
    snapshots = [p for p in pushes if p["ev"] == "seats"]
    # the k-th snapshot since the join (at version 0) belongs to room version k
    regressed = sum(s["version"] != k for k, s in enumerate(snapshots, start=1))
    assert all(s["version"] in (k, k - 2) for k, s in enumerate(snapshots, start=1))
    scores = [p["scores"]["r"] for p in pushes if p["ev"] == "pk" and p["state"] == "score"]
    skewed = sum(after - before - 3 for before, after in zip([0, *scores], scores, strict=False))
    assert len(snapshots) == 1 + granted and len(scores) == 40
    _drain(host, a, b, blue)
    assert 0 < granted < 40 and 0 < regressed < len(snapshots) and 0 < skewed < 40
    assert _bug_counts(server) == {
        "seat-double-grant": granted,
        "seat-version-regress": regressed,
        "pk-score-skew": skewed,
    }


def test_without_bugs_seats_versions_and_scores_keep_their_invariants(spawn, connect_to):
    """With no --bug a take of an occupied seat is seat_taken, versions rise by one, scores equal the gifts."""
    server = spawn("--seed", "4")
    host, a, b, watcher = _clients(connect_to, server, "r", 4)
    blue = _blue_host(connect_to, server)
    host.start_pk("r", blue, "blue", TS, duration=600)
    a.ok("seat.take", room="r", seat=0, ts=TS)
    for _ in range(20):
        assert b.error("seat.take", room="r", seat=0, ts=TS) == "seat_taken"
        a.ok("seat.mute", room="r", seat=0, muted=True, ts=TS)
        host.ok("gift", room="r", gift="rose", count=2, value=3, ts=TS)
    pushes = watcher.fence()
    _drain(host, a, b, blue)
    assert [p["version"] for p in pushes if p["ev"] == "seats"] == list(range(1, 22))
    assert [p["scores"]["r"] for p in pushes if p["ev"] == "pk" and p["state"] == "score"] == list(range(6, 121, 6))
    assert _bug_counts(server) == {"seat-double-grant": 0, "seat-version-regress": 0, "pk-score-skew": 0}
