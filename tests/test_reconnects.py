"""The reconnect policy, the storm option and the storm summary, without a network."""

import random

import pytest

from loadgen.errors import ConfigError
from loadgen.profile import ReconnectProfile, ReconnectStorm
from loadgen.reconnects import Reconnects, delay, parse_storm_option, summary
from loadgen.slo import evaluate, loads_slo
from tests.support import profile_error


def test_backoff_doubles_up_to_its_cap_without_jitter():
    """Without jitter, backoff waits initial, initial×m, … and never more than max_delay."""
    policy = ReconnectProfile(policy="backoff", initial_delay=0.5, multiplier=2, max_delay=3, jitter="none")
    assert [delay(policy, n, random.Random(1)) for n in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


@pytest.mark.parametrize("jitter, low", [("full", 0.0), ("equal", 2.0)])
def test_jitter_spreads_each_wait_within_its_band(jitter, low):
    """Full jitter draws from 0..delay, equal jitter from delay/2..delay."""
    policy = ReconnectProfile(initial_delay=1, multiplier=2, max_delay=30, jitter=jitter)
    waits = [delay(policy, 3, random.Random(seed)) for seed in range(2000)]
    assert low <= min(waits) < low + 0.05 and 3.95 < max(waits) <= 4.0


def test_immediate_tries_at_once_then_every_initial_delay():
    """The immediate policy's first try has no wait; every later one waits initial_delay."""
    policy = ReconnectProfile(policy="immediate", initial_delay=0.25)
    assert [delay(policy, n, random.Random(1)) for n in (1, 2, 9)] == [0.0, 0.25, 0.25]


@pytest.mark.parametrize(
    "text, storm",
    [
        ("10:100%", ReconnectStorm(at=10, share=1.0, cause="drop")),
        ("2.5s:0.3:drop", ReconnectStorm(at=2.5, share=0.3, cause="drop")),
        ("20:1:hard_restart", ReconnectStorm(at=20, share=1.0, cause="hard_restart")),
    ],
)
def test_storm_option_reads_at_share_and_cause(text, storm):
    """--reconnect-storm takes AT:SHARE[:CAUSE] with the share as a fraction or a percentage."""
    assert parse_storm_option(text) == storm


@pytest.mark.parametrize(
    "text, problem", [("10", "two or three parts"), ("x:1", "numbers"), ("5:150%", "between 0 and 1"),
                      ("5:1:reboot", "CAUSE must be one of")],
)  # fmt: skip
def test_a_bad_storm_option_names_the_option_and_the_problem(text, problem):
    """A storm option that cannot be used is a configuration error naming --reconnect-storm."""
    with pytest.raises(ConfigError, match=problem) as caught:
        parse_storm_option(text)
    assert str(caught.value).startswith("--reconnect-storm")


def _storm_back_after(seconds: list[float], affected: int) -> dict:
    tracker = Reconnects(ReconnectProfile(), (ReconnectStorm(at=1),))
    storm = tracker.storms[0]
    storm.started = 0.0
    storm.affected = {f"u{n}" for n in range(affected)}
    storm.back = {f"u{n}": s for n, s in enumerate(seconds)}
    return summary(tracker.policy, [tracker.snapshot()])["storms"][0]


def test_time_to_a_share_is_when_that_many_of_the_affected_users_were_back():
    """Of 10 users, 50 % are back at the 5th return, 90 % at the 9th, 99 % and all at the 10th."""
    storm = _storm_back_after([0.1 * n for n in range(1, 11)], affected=10)
    assert (storm["time_to_50pct_ms"], storm["time_to_90pct_ms"]) == (500.0, 900.0)
    assert storm["time_to_99pct_ms"] == storm["time_to_all_ms"] == 1000.0


def test_a_share_never_reached_has_no_time():
    """With 9 of 10 users back, 99 % and all were never reached: their times are null, not a guess."""
    storm = _storm_back_after([0.1 * n for n in range(1, 10)], affected=10)
    assert storm["time_to_90pct_ms"] == 900.0
    assert storm["time_to_99pct_ms"] is None and storm["time_to_all_ms"] is None


def test_workers_storms_add_up_in_the_master_summary():
    """Each worker's storm counts and return times are merged, and the shares judged on the union."""
    snapshots = []
    for worker in range(2):
        tracker = Reconnects(ReconnectProfile(), (ReconnectStorm(at=1),))
        storm = tracker.storms[0]
        storm.started, storm.affected = 0.0, {f"w{worker}u{n}" for n in range(2)}
        tracker.attempted(f"w{worker}u0", "connect")
        storm.back = {f"w{worker}u{n}": 0.1 * (2 * n + worker + 1) for n in range(2)}
        snapshots.append(tracker.snapshot())
    merged = summary(ReconnectProfile(), snapshots)
    storm = merged["storms"][0]
    assert (storm["affected"], storm["reconnected"], storm["attempts"], storm["failures"]) == (4, 4, 2, 2)
    assert (storm["time_to_50pct_ms"], storm["time_to_all_ms"]) == (200.0, 400.0)
    assert merged["failures_by_reason"] == {"connect": 2}


@pytest.mark.parametrize(
    "text, where",
    [
        ("reconnect:\n  policy: sometimes\n", "bad.yaml:2: reconnect.policy: must be one of immediate, backoff"),
        ("reconnect:\n  initial_delay: 5\n  max_delay: 1\n", "bad.yaml:3: reconnect.max_delay: must be at least"),
        ("reconnect:\n  storms:\n    - at: 3\n      cause: reboot\n", "bad.yaml:4: reconnect.storms[0].cause:"),
        ("reconnect:\n  storms:\n    - share: 2\n", "bad.yaml:3: reconnect.storms[0].share: must be at most 1"),
    ],
)
def test_a_bad_reconnect_section_names_file_line_and_key(tmp_path, text, where):
    """Every reconnect knob is checked, and an error points at the line of the knob at fault."""
    assert where in profile_error(tmp_path, text)


def _judged(slo_text: str, storms: list[dict]) -> list[tuple[str, float | None, bool, str | None]]:
    results = evaluate(loads_slo(slo_text), {"reconnects": {"storms": storms}})
    return [(r.name, r.value, r.passed, r.note) for r in results]


def test_an_slo_holds_the_slowest_storm_to_its_bar():
    """reconnect_storms p(99) and max judge the slowest storm that happened, in the unit written."""
    storms = [
        {"happened": True, "time_to_99pct_ms": 800.0, "time_to_all_ms": 900.0},
        {"happened": True, "time_to_99pct_ms": 2500.0, "time_to_all_ms": 3100.0},
        {"happened": False, "time_to_99pct_ms": None, "time_to_all_ms": None},
    ]
    assert _judged('reconnect_storms: ["p(99) < 2s", "max < 5s"]', storms) == [
        ("reconnect_storms p(99) < 2s", 2.5, False, None),
        ("reconnect_storms max < 5s", 3.1, True, None),
    ]


def test_a_storm_whose_users_never_all_came_back_fails_and_no_storm_is_not_run():
    """A share that never came back fails the check; a run without storms has nothing to judge."""
    never = [{"happened": True, "time_to_99pct_ms": None, "time_to_all_ms": None}]
    assert _judged('reconnect_storms: ["p(99) < 60s"]', never) == [
        ("reconnect_storms p(99) < 60s", None, False, "never back")
    ]
    assert _judged('reconnect_storms: ["p(99) < 60s"]', []) == [("reconnect_storms p(99) < 60s", None, True, "not run")]
