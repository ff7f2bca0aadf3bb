"""Weak networks end to end: real `locust` messaging runs on the embedded reference backend, users on emulated links."""

from loadgen.accounting import new_histogram, percentiles_ms, record_seconds
from tests.support import free_port

CHAT = "messaging: {rooms: 2, post_rate: 0.5, dm_rate: 0, read_rate: 0, reconnect_rate: 0}\n"

FIXED = """
network:
  mix: [{profile: fixed, share: 1}]
  profiles:
    fixed: {up_latency_ms: 120, down_latency_ms: 80}
"""

LIFT = """
messaging: {rooms: 2, post_rate: 1, dm_rate: 0, read_rate: 0, reconnect_rate: 0}
reconnect: {policy: immediate, initial_delay: 0.3}
network:
  mix: [{profile: lift, share: 1}]
  profiles:
    lift: {up_latency_ms: 20, down_latency_ms: 20, offline_every_s: 3, offline_min_s: 1, offline_max_s: 2,
           handover_every_s: 4}
"""

RUN = ("-u", "20", "-r", "20", "-t", "6s", "--drain", "2")


def test_a_fixed_added_latency_is_reported_apart_from_the_backends(locust_run, write_profile):
    """120 ms up and 80 ms down for all: every delivery's added latency is 200 ms, the rest is the clean run's."""
    clean = locust_run("messaging.py", *RUN, "--profile", write_profile(CHAT, "clean.yaml"))
    run = locust_run("messaging.py", *RUN, "--profile", write_profile(CHAT + FIXED))
    assert clean.returncode == 0 and clean.summary["network"] is None, clean
    assert run.returncode == 0, run
    network, messages = run.summary["network"], run.summary["messages"]
    injected = new_histogram()
    record_seconds(injected, 0.200)
    assert network["added_latency_ms"] == percentiles_ms(injected), network
    assert network["profiles"] == {"fixed": 20} and network["unknown_split"] == 0
    assert network["split"] == messages["delivered"] > 100
    assert messages["lost"] == 0, messages
    # what the user saw holds the added part; what is left is the backend's, as in the clean run
    assert messages["delivery_latency_ms"]["p50"] >= 200
    rest, plain = network["backend_latency_ms"]["p50"], clean.summary["messages"]["delivery_latency_ms"]["p50"]
    assert rest < plain + 40, (rest, plain)
    assert "network (fixed 20): latency added ms  p50 200.063" in run.output


def test_users_in_an_elevator_go_offline_come_back_and_recover_what_they_missed(locust_run, write_profile):
    """Offline spells and handovers cut users off, tries while offline fail, history gives back what they missed."""
    run = locust_run("messaging.py", "-u", "20", "-r", "20", "-t", "10s", "--drain", "3", "--delivery-timeout", "3",
                     "--profile", write_profile(LIFT))  # fmt: skip
    assert run.returncode == 0, run
    network, messages, back = run.summary["network"], run.summary["messages"], run.summary["reconnects"]
    assert network["offline_spells"] > 10 and network["handovers"] > 5, network
    assert back["failures_by_reason"].get("offline", 0) > 0, back
    assert back["reconnected"] > 10, back
    assert messages["recovered"] > 0 and messages["lost"] == 0, messages
    assert f"{network['offline_spells']} offline spells" in run.output


def test_across_two_workers_each_splits_what_its_own_users_sent(locust_run, write_profile):
    """Two workers count their users apart; deliveries from the other worker's users are left unsplit, and counted."""
    port = str(free_port())
    run = locust_run("messaging.py", "--processes", "2", "--master-bind-port", port, "--master-port", port, *RUN,
                     "--profile", write_profile(CHAT + FIXED))  # fmt: skip
    assert run.returncode == 0, run
    network, messages = run.summary["network"], run.summary["messages"]
    assert run.summary["generator"]["workers"] == 2
    assert network["profiles"] == {"fixed": 20}
    assert network["split"] > 0 and network["unknown_split"] > 0, network
    assert network["split"] + network["unknown_split"] == messages["delivered"], (network, messages)
    injected = new_histogram()
    record_seconds(injected, 0.200)
    assert network["added_latency_ms"] == percentiles_ms(injected), network
