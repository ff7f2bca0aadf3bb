"""Injected faults: what a receiver observes matches ``refserver_injected_faults_total`` exactly."""

from __future__ import annotations

import time

import pytest
from websockets.exceptions import ConnectionClosed

MESSAGES = 200


def _room_with(connect_to, server, receivers: int):
    """A logged-in sender and receivers, all members of room "r"."""
    clients = [connect_to(server.url) for _ in range(receivers + 1)]
    for i, c in enumerate(clients):
        c.login(f"u{i}")
        c.ok("join", room="r")
    return clients[0], clients[1:]


def _post_many(sender, count: int) -> None:
    """Pipelined sends, so a run of them takes milliseconds, then every ack."""
    for i in range(count):
        sender.send({"op": "send", "id": 1000 + i, "room": "r", "cseq": i + 1, "ts": time.time(), "body": "x"})
    for i in range(count):
        assert sender.reply(1000 + i)["ev"] == "ack"


def _read_until_all_seen(receiver, count: int, timeout: float) -> list[int]:
    """Room seqs in arrival order until seqs 1..count have all arrived."""
    arrived = [p["seq"] for p in receiver.pushes]
    receiver.pushes = []
    deadline = time.monotonic() + 3 * timeout
    while len(set(arrived)) < count:
        arrived.append(receiver.frame(timeout=max(0.0, deadline - time.monotonic()))["seq"])
    return arrived + [p["seq"] for p in receiver.fence()]


def _out_of_order(arrived: list[int]) -> int:
    """First arrivals below the highest seq seen before them; repeats are duplicates, not disorder."""
    seen: set[int] = set()
    highest = 0
    count = 0
    for seq in arrived:
        if seq not in seen and seq < highest:
            count += 1
        seen.add(seq)
        highest = max(highest, seq)
    return count


def test_drop_count_equals_deliveries_missed(spawn, connect_to):
    """With --drop, the pushes receivers never get equal the injected drop count, for rooms and dms."""
    server = spawn("--drop", "0.3", "--seed", "7")
    sender, receivers = _room_with(connect_to, server, receivers=2)
    _post_many(sender, MESSAGES)
    for i in range(50):
        sender.ok("dm", to="u1", cseq=i + 1, ts=0, body="x")
    missed = 0
    for receiver in receivers:
        pushes = receiver.fence()
        rooms = [p["seq"] for p in pushes if p["ev"] == "msg"]
        dms = [p["seq"] for p in pushes if p["ev"] == "dm"]
        assert rooms == sorted(set(rooms)) and dms == sorted(set(dms))
        missed += MESSAGES - len(rooms)
        if receiver is receivers[0]:
            missed += 50 - len(dms)
    assert missed > 0
    assert server.injected("drop") == missed
    assert (server.injected("duplicate"), server.injected("reorder")) == (0, 0)


def test_duplicate_count_equals_extra_copies_seen(spawn, connect_to):
    """With --duplicate, the extra copies a receiver gets equal the injected duplicate count."""
    server = spawn("--duplicate", "0.3", "--seed", "7")
    sender, (receiver,) = _room_with(connect_to, server, receivers=1)
    _post_many(sender, MESSAGES)
    arrived = [p["seq"] for p in receiver.fence()]
    assert sorted(set(arrived)) == list(range(1, MESSAGES + 1))
    assert arrived == sorted(arrived)
    extra = len(arrived) - MESSAGES
    assert extra > 0
    assert server.injected("duplicate") == extra


def test_reorder_count_equals_seqs_seen_below_the_highest(spawn, connect_to, timeout):
    """With --reorder, the seqs that first arrive below the highest seen equal the injected reorder count."""
    server = spawn("--reorder", "0.3", "--seed", "7")
    sender, (receiver,) = _room_with(connect_to, server, receivers=1)
    _post_many(sender, MESSAGES)
    arrived = _read_until_all_seen(receiver, MESSAGES, timeout)
    assert len(arrived) == MESSAGES
    disorder = _out_of_order(arrived)
    assert disorder > 0
    assert server.injected("reorder") == disorder


def test_duplicates_of_reordered_deliveries_are_counted_once_each(spawn, connect_to, timeout):
    """With --duplicate and --reorder, repeats match the duplicate count and late firsts the reorder count."""
    server = spawn("--duplicate", "0.3", "--reorder", "0.3", "--seed", "11")
    sender, (receiver,) = _room_with(connect_to, server, receivers=1)
    _post_many(sender, MESSAGES)
    arrived = _read_until_all_seen(receiver, MESSAGES, timeout)
    assert server.injected("duplicate") == len(arrived) - MESSAGES > 0
    assert server.injected("reorder") == _out_of_order(arrived) > 0


def test_delay_postpones_deliveries_keeps_their_order_and_is_not_counted(spawn, connect_to, timeout):
    """With --delay-ms 60 --jitter-ms 10 every push arrives at least ~50 ms after it was sent, in order."""
    server = spawn("--delay-ms", "60", "--jitter-ms", "10", "--seed", "3")
    sender, (receiver,) = _room_with(connect_to, server, receivers=1)
    sent_at = {}
    for i in range(40):
        sent_at[i + 1] = time.monotonic()
        sender.send({"op": "send", "id": 1000 + i, "room": "r", "cseq": i + 1, "ts": time.time(), "body": "x"})
    arrived = []
    for _ in range(40):
        push = receiver.frame(timeout)
        arrived.append(push["seq"])
        assert time.monotonic() - sent_at[push["seq"]] >= 0.045
    assert arrived == list(range(1, 41))
    for i in range(40):
        assert sender.reply(1000 + i)["ev"] == "ack"
    for kind in ("drop", "duplicate", "reorder", "disconnect"):
        assert server.injected(kind) == 0


def test_disconnect_rate_aborts_logged_in_connections_and_counts_them(spawn, connect_to, timeout):
    """With --disconnect-rate, logged-in connections are aborted without a close frame, each counted once."""
    server = spawn("--disconnect-rate", "20", "--seed", "5")
    bystander = connect_to(server.url)
    victims = [connect_to(server.url) for _ in range(3)]
    for i, victim in enumerate(victims):
        victim.login(f"v{i}")
    for victim in victims:
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                victim.frame(3 * timeout)
        assert closed.value.rcvd is None
    assert server.injected("disconnect") == 3
    bystander.ok("time", t0=0)
    assert server.sample("refserver_logged_in_users") == 0


def test_held_delivery_goes_out_alone_uncounted_on_timeout_or_leave(spawn, connect_to, timeout):
    """With --reorder 1 a lone delivery goes out alone after 100 ms, or at once on leave, uncounted."""
    server = spawn("--reorder", "1", "--seed", "1")
    sender, (receiver,) = _room_with(connect_to, server, receivers=1)
    sender.post("r")
    assert receiver.next_push(timeout)["seq"] == 1
    sender.post("r")
    receiver.ok("leave", room="r")
    assert [p["seq"] for p in receiver.fence()] == [2]
    assert server.injected("reorder") == 0
    receiver.ok("join", room="r")
    sender.post("r")
    sender.post("r")
    assert [p["seq"] for p in receiver.fence()] == [4, 3]
    assert server.injected("reorder") == 1
