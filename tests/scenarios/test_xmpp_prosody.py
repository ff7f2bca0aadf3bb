"""The messaging scenario against a real Prosody on loopback (the ``prosody`` fixture of tests/conftest.py)."""

RUN = ("-u", "30", "-r", "30", "-t", "10s", "--metrics-port", "0")


def test_messaging_against_prosody_delivers_and_loses_nothing(prosody, locust_run):
    """The messaging scenario logs in, joins rooms and messages through Prosody with nothing lost."""
    run = locust_run("messaging.py", *RUN, "--host", prosody)
    assert run.returncode == 0, run
    m = run.summary["messages"]
    assert m["delivered"] > 0 and m["lost"] == 0, m
    ops = run.summary["operations"]
    for name in ("session.login", "room.join", "msg.send", "dm.send"):
        assert ops[name]["count"] > 0 and ops[name]["failures"] == 0, (name, ops[name])


def test_reconnects_recover_what_was_missed_from_the_archives(prosody, locust_run, write_profile):
    """Users who log out and back in often fetch what they missed from the archives: recovered, never lost."""
    churn = write_profile(
        "messaging:\n  rooms: 5\n  post_rate: 4\n  dm_rate: 1\n  read_rate: 0.5\n  reconnect_rate: 0.3\n"
    )
    run = locust_run("messaging.py", *RUN, "--host", prosody, "--profile", churn)
    assert run.returncode == 0, run
    assert run.summary["connections"]["reconnects"] > 10, run.summary["connections"]
    m = run.summary["messages"]
    assert m["recovered"] > 0 and m["lost"] == 0 and m["duplicated"] == 0, m
