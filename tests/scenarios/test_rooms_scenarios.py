"""Voice rooms, live streams and 1v1 calls end to end: real `locust` runs against a real reference backend.

Each injected backend bug must be caught by the clients' invariant checks, and none may be
reported when the backend behaves.
"""

import pytest

BUSY_VOICE = """
voiceroom:
  rooms: 6
  hot_rooms: 2
  hopper_share: 0.4
  gifter_share: 0.2
  chatter_share: 0.2
  seat_rate: 1
  hold_mean: 1.5
  gift_rate: 1
  danmaku_rate: 1
  host_rate: 1
  settings_rate: 0.2
  session_mean: 30
"""

BUSY_LIVE = """
livestream:
  rooms: 4
  hot_rooms: 2
  applicant_share: 0.4
  gifter_share: 0.4
  chatter_share: 0.1
  cohost_rate: 0.5
  cohost_hold_mean: 1.5
  pk_rate: 0.4
  pk_duration: 2
  gift_rate: 1
  call_host_rate: 0.01
  talk_mean: 1
"""

BUSY_CALLS = """
call1v1:
  call_rate: 0.5
  talk_mean: 1
  answer_probability: 0.8
"""

RUN = ("-u", "60", "-r", "60", "-t", "8s", "--drain", "1")


def ops(run):
    return run.summary["operations"]


def violations(run):
    return run.summary["invariants"]


def test_voice_rooms_measure_every_operation_and_break_nothing(locust_run, write_profile):
    """A voice-room run times joins, seat takes and every fan-out, and finds no broken invariant."""
    run = locust_run("voiceroom.py", *RUN, "--profile", write_profile(BUSY_VOICE))
    assert run.returncode == 0, run
    measured = ops(run)
    for name in ("room.join", "seat.take", "seat.fanout", "gift.fanout", "danmaku.fanout", "seat.leave"):
        assert measured[name]["count"] > 0, (name, measured)
    assert measured["room.join"]["failures"] == 0
    assert measured["seat.take"]["failures"] == 0
    assert measured["seat.take"].get("refusals", {}).get("seat_taken", 0) > 0, "hoppers never contended"
    assert violations(run) == {"violations": 0, "by_kind": {}}


@pytest.mark.parametrize(
    "bug, kind",
    [("seat-double-grant", "seat_conflict"), ("seat-version-regress", "seat_version_regress")],
)
def test_injected_seat_bugs_are_caught(backend, locust_run, write_profile, bug, kind):
    """Every seat bug the backend injects is reported once under its kind, and the run fails."""
    server = backend("--bug", bug, "0.3", "--seed", "4")
    run = locust_run("voiceroom.py", *RUN, "--host", server.url, "--profile", write_profile(BUSY_VOICE))
    injected = server.injected(bug)
    assert injected > 0, run
    assert violations(run)["by_kind"].get(kind) == injected, (violations(run), injected)
    assert run.returncode == 1, run
    assert f"invariant.{kind}" in run.output


def test_storms_multiply_their_activity_in_hot_rooms(locust_run, write_profile):
    """A gift storm raises gift fan-out and a seat-churn storm raises seat changes, well above a calm run."""

    def storm(kind: str) -> str:
        return BUSY_VOICE + f"  storms:\n    - kind: {kind}\n      at: 2\n      duration: 4\n      multiplier: 10\n"

    calm = locust_run("voiceroom.py", *RUN, "--profile", write_profile(BUSY_VOICE, "calm.yaml"))
    gifts = locust_run("voiceroom.py", *RUN, "--profile", write_profile(storm("gift"), "gift.yaml"))
    seats = locust_run("voiceroom.py", *RUN, "--profile", write_profile(storm("seat_churn"), "seats.yaml"))
    assert gifts.returncode == 0 and seats.returncode == 0, (gifts, seats)
    assert ops(gifts)["gift.fanout"]["count"] > 2 * ops(calm)["gift.fanout"]["count"]
    assert ops(seats)["seat.take"]["count"] > 2 * ops(calm)["seat.take"]["count"]
    assert violations(gifts)["violations"] == violations(seats)["violations"] == 0


def test_live_streams_take_cohosts_and_fight_pks(locust_run, write_profile):
    """A live-stream run puts co-hosts on stage and starts PKs, with scores that add up."""
    run = locust_run("livestream.py", *RUN, "--profile", write_profile(BUSY_LIVE))
    assert run.returncode == 0, run
    measured = ops(run)
    for name in ("room.join", "cohost.accept", "cohost.approve", "pk.start", "gift.fanout", "stream.start"):
        assert measured[name]["count"] > 0, (name, measured)
    assert violations(run)["violations"] == 0


def test_skewed_pk_scores_are_caught(backend, locust_run, write_profile):
    """PK scores that do not add up to the gifts are reported as pk_score_mismatch."""
    server = backend("--bug", "pk-score-skew", "0.5", "--seed", "6")
    run = locust_run("livestream.py", *RUN, "--host", server.url, "--profile", write_profile(BUSY_LIVE))
    injected = server.injected("pk-score-skew")
    assert injected > 0, run
    caught = violations(run)["by_kind"].get("pk_score_mismatch", 0)
    assert 0 < caught <= injected, (caught, injected)
    assert run.returncode == 1


def test_calls_are_set_up_and_timed_on_both_sides(locust_run, write_profile):
    """1v1 calls ring, connect and end; setup is timed by caller and callee, and nothing is one-sided."""
    run = locust_run("call1v1.py", "-u", "40", "-r", "40", "-t", "8s", "--drain", "1", "--profile",
                     write_profile(BUSY_CALLS))  # fmt: skip
    assert run.returncode == 0, run
    measured = ops(run)
    assert measured["call.ring"]["count"] > 0
    assert measured["call.setup"]["count"] >= 2
    assert measured["call.invite"]["failures"] == 0
    assert violations(run)["violations"] == 0
