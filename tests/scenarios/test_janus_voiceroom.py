"""Voice rooms against a real Janus (Debian's package) started by scripts/servers/janus.sh on a free port."""

import time

import gevent
import pytest

from loadgen.accounting import Accounting
from loadgen.drivers.base import SeatSnapshot
from loadgen.drivers.janus import JanusDriver
from loadgen.session import Refused, Session
from tests.support import SCALE

#: few rooms and eager hoppers, so seats change hands every second and contend
SEAT_CHURN = """
voiceroom:
  rooms: 4
  hot_rooms: 1
  hopper_share: 0.6
  seat_rate: 1
  hold_mean: 1.5
  session_mean: 8
"""

# Locust's metrics endpoint is not under test here: port 0 keeps parallel runs apart
RUN = ("-u", "40", "-r", "20", "-t", "12s", "--drain", "1", "--metrics-port", "0")


def test_seat_churn_on_janus_reports_join_and_seat_latencies_and_breaks_nothing(janus, locust_run, write_profile):
    """Seat hoppers churn VideoRoom seats: joins and takes are timed, lost races are refusals, no invariant breaks."""
    run = locust_run("voiceroom.py", *RUN, "--host", janus, "--profile", write_profile(SEAT_CHURN))
    assert run.returncode == 0, run
    operations = run.summary["operations"]
    for name in ("room.join", "seat.take", "seat.leave", "seat.fanout", "room.leave"):
        assert operations[name]["count"] > 0, (name, operations)
        assert operations[name]["failures"] == 0, (name, operations[name])
    assert operations["room.join"]["p95_ms"] > 0 and operations["seat.take"]["p95_ms"] > 0
    assert operations["seat.take"].get("refusals", {}).get("seat_taken", 0) > 0, "hoppers never contended"
    assert run.summary["invariants"] == {"violations": 0, "by_kind": {}}


def test_what_janus_cannot_do_is_skipped_and_said(janus, locust_run, write_profile):
    """A voice-room run names the behaviours Janus cannot carry (settings, chat, synthetic audio) and runs the rest:
    hosts still mute and kick, without the locks and invitations Janus lacks."""
    run = locust_run("voiceroom.py", "-u", "10", "-r", "10", "-t", "3s", "--drain", "0", "--metrics-port", "0",
                     "--host", janus, "--profile", write_profile(SEAT_CHURN + "media: {rooms: 4}\n"))  # fmt: skip
    assert run.returncode == 0, run
    # hosts change settings; everyone else chats now and then
    for behaviour in ("ChangeSettings", "PostToRoom"):
        assert f"every {behaviour} behaviour is skipped" in run.output, behaviour
    assert "every RunRoom behaviour is skipped" not in run.output
    assert run.summary["operations"]["room.join"]["count"] >= 10
    # its audio is WebRTC, not the reference packets: the rooms run silent, which is said once
    assert run.output.count("The JanusDriver driver has no media sessions") == 1, run
    assert run.summary["media"]["listeners"] == {"decoding": 0, "counting": 0}


def test_a_chat_scenario_refuses_to_start_on_janus(janus, locust_run):
    """Messaging needs chat, which Janus has none of: the run stops at once with the usage exit code."""
    run = locust_run("messaging.py", "-u", "2", "-t", "3s", "--metrics-port", "0", "--host", janus)
    assert run.returncode == 2, run
    assert "cannot run on it" in run.output


def keep_snapshots(story: list[SeatSnapshot]):
    def on_event(event: object) -> None:
        if isinstance(event, SeatSnapshot):
            story.append(event)

    return on_event


def test_every_member_sees_the_same_seat_story_with_the_actors_times(janus):
    """A take, a host's mute, unmute and kick reach all three members as the same snapshots, stamped by their actors."""
    factory, url = JanusDriver.configure(janus)
    room = f"story-{time.time_ns()}"
    seen: dict[str, list[SeatSnapshot]] = {}
    sessions: dict[str, Session] = {}
    for name in ("host", "carol", "bob"):
        story = seen[name] = []
        session = Session(url, factory(), Accounting().receiver(), reporter=lambda *_: None,
                          request_timeout=10 * SCALE, ping_interval=None, on_event=keep_snapshots(story))  # fmt: skip
        session.connect()
        session.login(name, "loadgen")
        session.join_room(room, seats=4)
        sessions[name] = session
    try:
        sessions["carol"].room_op("seat.take", room, 100.0, seat=2)
        host = sessions["host"]
        for ts, op, fields in ((101.0, "seat.mute", {"muted": True}), (102.0, "seat.mute", {"muted": False}),
                               (103.0, "seat.kick", {})):  # fmt: skip
            gevent.sleep(0.1)
            host.room_op(op, room, ts, seat=2, **fields)
        deadline = time.monotonic() + 10 * SCALE
        while min(len(story) for story in seen.values()) < 4 and time.monotonic() < deadline:
            gevent.sleep(0.05)
        with pytest.raises(Refused):
            host.room_op("seat.kick", room, 104.0, seat=2)
    finally:
        for session in sessions.values():
            session.close()
    expected = [(1, "take", "carol", 100.0, True), (2, "mute", "host", 101.0, True),
                (3, "unmute", "host", 102.0, True), (4, "kick", "host", 103.0, False)]  # fmt: skip
    for name, story in seen.items():
        told = [(s.version, s.change.kind, s.change.by, s.change.sent_at, s.seats[2].user == "carol") for s in story]
        assert told == expected, name
        assert [s.seats[2].muted for s in story[:3]] == [False, True, False], name
