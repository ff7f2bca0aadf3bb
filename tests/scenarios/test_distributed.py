"""Locust's distributed mode: workers' figures merged exactly into the master's summary."""

import pytest

from tests.scenarios.test_messaging import STABLE
from tests.scenarios.test_rooms_scenarios import BUSY_VOICE
from tests.support import free_port


@pytest.fixture
def processes():
    """--processes 2 with the master on a free port, so nothing else on 5557 can interfere."""
    port = str(free_port())
    return ("--processes", "2", "--master-bind-port", port, "--master-port", port)


def test_two_workers_merge_into_one_summary(locust_run, processes):
    """With --processes 2, the master's summary counts both workers and merges their histograms."""
    run = locust_run("messaging.py", *processes, "-u", "40", "-r", "40", "-t", "6s", "--drain", "1")
    assert run.returncode == 0, run
    summary = run.summary
    assert summary["generator"]["workers"] == 2
    assert summary["operations"]["room.join"]["count"] == 40 + summary["connections"]["reconnects"]
    assert summary["messages"]["delivered"] > 100
    assert summary["messages"]["lost"] == 0 and "partial" not in summary


def test_injected_drops_are_found_exactly_across_workers(backend, locust_run, write_profile, processes):
    """Drops injected while two workers run are all reported, lost or recovered, in the merged summary."""
    server = backend("--drop", "0.03", "--seed", "8")
    run = locust_run("messaging.py", *processes, "-u", "40", "-r", "40", "-t", "6s", "--delivery-timeout", "2",
                     "--host", server.url, "--profile", write_profile(STABLE))  # fmt: skip
    messages = run.summary["messages"]
    assert server.injected("drop") > 10
    assert messages["lost"] + messages["recovered"] == server.injected("drop"), messages
    assert run.returncode == 1, run


def test_voice_rooms_across_two_workers_have_one_host_each(locust_run, write_profile, processes):
    """Voice rooms spread over two workers join, contend for seats and merge without a refused host."""
    run = locust_run("voiceroom.py", *processes, "-u", "60", "-r", "60", "-t", "6s", "--drain", "1",
                     "--profile", write_profile(BUSY_VOICE))  # fmt: skip
    assert run.returncode == 0, run
    operations = run.summary["operations"]
    assert operations["room.join"]["failures"] == 0
    assert operations["seat.take"]["count"] > 0 and operations["seat.fanout"]["count"] > 0
    assert run.summary["generator"]["workers"] == 2
    assert run.summary["invariants"]["violations"] == 0
