"""Reconnect storms end to end: real `locust` runs cutting every connection at once, on the real backend."""

import pytest

ROOMS = """
voiceroom:
  rooms: 4
  chat_rate: 1.0
reconnect:
  policy: backoff
  initial_delay: 1.0
"""


def test_a_storm_cutting_every_connection_is_recovered_in_full(locust_run, write_profile):
    """Every user cut at 4 s comes back, the times to 50/90/99 % are reported, and history recovers what was missed."""
    run = locust_run("voiceroom.py", "-u", "40", "-r", "40", "-t", "12s", "--drain", "2",
                     "--profile", write_profile(ROOMS), "--reconnect-storm", "4:100%")  # fmt: skip
    assert run.returncode == 0, run
    back = run.summary["reconnects"]
    (storm,) = back["storms"]
    assert storm["happened"] and storm["cause"] == "drop"
    assert storm["affected"] == storm["reconnected"] == 40, storm
    assert storm["failures"] == 0 and storm["attempts"] == 40, storm
    assert 0 < storm["time_to_50pct_ms"] <= storm["time_to_90pct_ms"] <= storm["time_to_99pct_ms"]
    assert storm["time_to_99pct_ms"] <= storm["time_to_all_ms"]
    m = run.summary["messages"]
    assert m["lost"] == 0 and m["recovered"] > 0, m
    assert storm["recovered"] == m["recovered"], (storm, m)
    assert "reconnect storm at 4 s (drop): 40 of 40 back" in run.output


def test_a_partial_storm_cuts_only_its_share(locust_run, write_profile):
    """A storm of 25 % cuts a quarter of the connected users, and only they are counted in it."""
    run = locust_run("voiceroom.py", "-u", "40", "-r", "40", "-t", "8s", "--drain", "1",
                     "--profile", write_profile(ROOMS), "--reconnect-storm", "3:0.25")  # fmt: skip
    assert run.returncode == 0, run
    (storm,) = run.summary["reconnects"]["storms"]
    assert storm["affected"] == storm["reconnected"] == 10, storm
    assert run.summary["connections"]["reconnects"] == 10


CHAT = """
messaging:
  rooms: 4
  post_rate: 2
  dm_rate: 0.2
  read_rate: 0
  reconnect_rate: 0
"""


RESTART_SLO = 'reconnect_storms: ["p(99) < 8s"]\nmessages.lost: ["count == 0"]\n'


@pytest.mark.parametrize("cause, close_code", [("restart", "1012"), ("hard_restart", "1006")])
def test_a_backend_restart_storm_loses_nothing_the_backend_acknowledged(locust_run, write_profile, cause, close_code):
    """The embedded backend restarted mid-run keeps its history: every user returns and nothing is lost."""
    run = locust_run("messaging.py", "-u", "30", "-r", "30", "-t", "10s", "--drain", "2",
                     "--profile", write_profile(CHAT), "--reconnect-storm", f"3:1:{cause}",
                     "--slo", write_profile(RESTART_SLO, "slo.yaml"))  # fmt: skip
    assert "Restarted the reference backend" in run.output, run
    (storm,) = run.summary["reconnects"]["storms"]
    assert storm["cause"] == cause and storm["affected"] == storm["reconnected"] == 30, storm
    assert run.summary["connections"]["close_codes"][close_code] == 30, run.summary["connections"]
    m = run.summary["messages"]
    assert m["lost"] == 0 and m["recovered"] > 0, m
    # honest failures only: tries that found the port closed while the backend was away, and at
    # most one request per user that was in flight when the backend went
    operations = run.summary["operations"]
    assert storm["failures"] == operations.get("ws.connect", {}).get("failures", 0)
    cut = sum(op["failures"] for name, op in operations.items() if name != "ws.connect")
    assert cut <= storm["affected"], operations
    # the SLO file, not Locust's any-failure rule, judges a restart
    assert run.returncode == 0, run
    assert [c["name"] for c in run.summary["slo"]["checks"] if not c["passed"]] == []
