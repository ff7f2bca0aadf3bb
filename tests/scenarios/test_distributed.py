"""Locust's distributed mode: workers' figures merged exactly into the master's summary."""

from tests.scenarios.test_messaging import STABLE


def test_two_workers_merge_into_one_summary(locust_run):
    """With --processes 2, the master's summary counts both workers and merges their histograms."""
    run = locust_run("messaging.py", "--processes", "2", "-u", "40", "-r", "40", "-t", "6s", "--drain", "1")
    assert run.returncode == 0, run
    summary = run.summary
    assert summary["generator"]["workers"] == 2
    assert summary["operations"]["room.join"]["count"] == 40 + summary["connections"]["reconnects"]
    assert summary["messages"]["delivered"] > 100
    assert summary["messages"]["lost"] == 0 and "partial" not in summary


def test_injected_drops_are_found_exactly_across_workers(backend, locust_run, write_profile):
    """Drops injected while two workers run are all reported, lost or recovered, in the merged summary."""
    server = backend("--drop", "0.03", "--seed", "8")
    run = locust_run("messaging.py", "--processes", "2", "-u", "40", "-r", "40", "-t", "6s", "--delivery-timeout", "2",
                     "--host", server.url, "--profile", write_profile(STABLE))  # fmt: skip
    messages = run.summary["messages"]
    assert server.injected("drop") > 10
    assert messages["lost"] + messages["recovered"] == server.injected("drop"), messages
    assert run.returncode == 1, run
