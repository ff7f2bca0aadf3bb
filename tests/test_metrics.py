"""The generator's Prometheus metrics: read from the run's figures, named as documented."""

import shutil
import subprocess
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import generate_latest

from loadgen.accounting import Accounting, new_histogram
from loadgen.metrics import BUCKETS, METRICS, hdr_buckets, metrics_port, reference, registry_for
from loadgen.profile import ReconnectProfile
from loadgen.reconnects import Reconnects

ROOT = Path(__file__).resolve().parent.parent

#: microseconds: exact bounds, values either side of the bounds below 2048 µs, values well
#: inside buckets above (HDR slots there are 0.1 % wide), and one past the last bound
RECORDED_US = (1, 499, 500, 501, 999, 1000, 1001, 2000, 2047, 4000, 5000, 9000, 10_000, 150_000, 599_000, 45_000_000)


def session(alive: bool, rooms: set[str]):
    return SimpleNamespace(alive=alive, rooms=rooms)


def fake_run():
    accounting = Accounting()
    accounting.counts.delivered = 41
    accounting.counts.lost = 2
    accounting.record_operation("room.join", 0.01)
    accounting.record_operation("room.join", 0.02, failed=True)
    accounting.record_refusal("seat.take", "seat_taken")
    accounting.record_refusal("seat.take", "seat_taken")
    accounting.record_refusal("seat.take", "room_full")
    accounting.record_fanout("seat.fanout", 0.004)
    for micros in RECORDED_US:
        accounting.latency.record_value(micros)
    return SimpleNamespace(
        scenario="voiceroom",
        accounting=accounting,
        violations=Counter({"seat_conflict": 3}),
        connections=Counter({"opened": 7, "dropped": 1, "reconnects": 4}),
        close_codes=Counter({1000: 5, 1006: 2}),
        environment=SimpleNamespace(
            runner=SimpleNamespace(user_count=5, current_cpu_usage=37.5, current_memory_usage=123_456_789)
        ),
        sessions=[session(True, {"r1", "r2"}), session(True, {"r3"}), session(False, {"r4"})],
        seats_held=lambda: 2,
        calls_in_progress=lambda: 1,
        loop_lag_seconds=0.25,
        profile=SimpleNamespace(path="profiles/review.yaml"),
        run_id="abc123def456",
    )


def test_scrape_reads_the_run_figures():
    """A scrape reports exactly the run's messages, violations, operations, connections and close codes."""
    registry = registry_for(fake_run())
    value = registry.get_sample_value
    assert value("loadgen_messages_total", {"scenario": "voiceroom", "outcome": "delivered"}) == 41
    assert value("loadgen_messages_total", {"scenario": "voiceroom", "outcome": "lost"}) == 2
    assert value("loadgen_invariant_violations_total", {"scenario": "voiceroom", "kind": "seat_conflict"}) == 3
    assert value("loadgen_operations_total", {"scenario": "voiceroom", "op": "room.join"}) == 2
    assert value("loadgen_operation_failures_total", {"scenario": "voiceroom", "op": "room.join"}) == 1
    assert value("loadgen_connections_opened_total", {"scenario": "voiceroom"}) == 7
    assert value("loadgen_connections_dropped_total", {"scenario": "voiceroom"}) == 1
    assert value("loadgen_reconnects_total", {"scenario": "voiceroom"}) == 4
    assert value("loadgen_close_codes_total", {"scenario": "voiceroom", "code": "1000"}) == 5
    assert value("loadgen_close_codes_total", {"scenario": "voiceroom", "code": "1006"}) == 2


def test_refusals_are_counted_by_operation_and_reason():
    """Each refusal counts once under its operation and reason, and as an operation but not a failure."""
    value = registry_for(fake_run()).get_sample_value
    labels = {"scenario": "voiceroom", "op": "seat.take"}
    assert value("loadgen_operation_refusals_total", {**labels, "reason": "seat_taken"}) == 2
    assert value("loadgen_operation_refusals_total", {**labels, "reason": "room_full"}) == 1
    assert value("loadgen_operations_total", labels) == 3
    assert value("loadgen_operation_failures_total", labels) == 0


def test_gauges_read_the_current_state():
    """Gauges report users, open sessions and their rooms, seats, calls and the generator's own health now."""
    value = registry_for(fake_run()).get_sample_value
    scenario = {"scenario": "voiceroom"}
    assert value("loadgen_users", scenario) == 5
    assert value("loadgen_open_connections", scenario) == 2
    assert value("loadgen_rooms_joined", scenario) == 3
    assert value("loadgen_seats_held", scenario) == 2
    assert value("loadgen_calls_in_progress", scenario) == 1
    assert value("loadgen_process_cpu_percent", scenario) == 37.5
    assert value("loadgen_process_resident_memory_bytes", scenario) == 123_456_789
    assert value("loadgen_event_loop_lag_seconds", scenario) == 0.25


def test_run_info_names_the_run():
    """loadgen_run_info is 1 with the scenario, the profile file, the run id and the process's role as labels."""
    run = fake_run()
    labels = {"scenario": "voiceroom", "profile": "profiles/review.yaml", "run_id": "abc123def456"}
    assert registry_for(run).get_sample_value("loadgen_run_info", {**labels, "role": "standalone"}) == 1
    run.is_worker = True
    assert registry_for(run).get_sample_value("loadgen_run_info", {**labels, "role": "worker"}) == 1
    run.is_worker, run.is_master = False, True
    assert registry_for(run).get_sample_value("loadgen_run_info", {**labels, "role": "master"}) == 1


def test_a_run_without_the_optional_figures_still_scrapes():
    """A context without close codes, seats, calls, loop lag, run id or runner reads them as zero or empty."""
    run = fake_run()
    for name in ("close_codes", "seats_held", "calls_in_progress", "loop_lag_seconds", "run_id"):
        delattr(run, name)
    run.environment.runner = None
    run.profile.path = None
    value = registry_for(run).get_sample_value
    scenario = {"scenario": "voiceroom"}
    assert value("loadgen_seats_held", scenario) == 0
    assert value("loadgen_calls_in_progress", scenario) == 0
    assert value("loadgen_event_loop_lag_seconds", scenario) == 0
    assert value("loadgen_users", scenario) == 0
    assert value("loadgen_run_info", {"scenario": "voiceroom", "profile": "", "run_id": "", "role": "standalone"}) == 1
    assert value("loadgen_close_codes_total", {"scenario": "voiceroom", "code": "1006"}) is None


def test_latency_buckets_count_the_recorded_values_up_to_each_bound():
    """Each delivery-latency bucket holds exactly the recorded values at or below its bound; sum and count match."""
    run = fake_run()
    value = registry_for(run).get_sample_value
    scenario = {"scenario": "voiceroom"}
    for bound in BUCKETS:
        expected = sum(micros <= round(bound * 1e6) for micros in RECORDED_US)
        le = repr(float(bound))
        assert value("loadgen_delivery_latency_seconds_bucket", {**scenario, "le": le}) == expected, le
    assert value("loadgen_delivery_latency_seconds_bucket", {**scenario, "le": "+Inf"}) == len(RECORDED_US)
    assert value("loadgen_delivery_latency_seconds_count", scenario) == len(RECORDED_US)
    # the sum is the HDR's own (its mean times its count): true to the HDR's three significant digits
    histogram = run.accounting.latency
    hdr_sum = histogram.get_mean_value() * histogram.get_total_count() / 1e6
    assert value("loadgen_delivery_latency_seconds_sum", scenario) == pytest.approx(hdr_sum)
    assert hdr_sum == pytest.approx(sum(RECORDED_US) / 1e6, rel=1e-3)


def test_a_value_hdr_cannot_tell_from_a_bound_counts_in_its_bucket():
    """A value within the HDR's 0.1 % resolution above a bound shares the bound's slot and counts at the bound."""
    histogram = new_histogram()
    histogram.record_value(100_020)  # 100 ms lies in the HDR slot [99 968, 100 031] µs
    buckets, _ = hdr_buckets(histogram)
    assert dict(buckets)["0.1"] == 1
    assert dict(buckets)["0.05"] == 0


def test_an_empty_histogram_has_empty_buckets():
    """An HDR histogram with nothing recorded gives zero in every bucket and a zero sum."""
    buckets, total = hdr_buckets(new_histogram())
    assert [count for _, count in buckets] == [0] * (len(BUCKETS) + 1)
    assert total == 0


def test_operation_durations_come_from_each_operations_histogram():
    """Every operation, fan-outs included, has a duration histogram of its successful, timed occurrences."""
    value = registry_for(fake_run()).get_sample_value

    def sample(op, suffix, **labels):
        return value(f"loadgen_operation_duration_seconds_{suffix}", {"scenario": "voiceroom", "op": op, **labels})

    assert sample("room.join", "count") == 1  # the failed join is not timed
    assert sample("room.join", "bucket", le="0.005") == 0
    assert sample("room.join", "bucket", le="0.01") == 1
    assert sample("room.join", "sum") == pytest.approx(0.01, rel=1e-3)
    assert sample("seat.fanout", "bucket", le="0.002") == 0
    assert sample("seat.fanout", "bucket", le="0.005") == 1
    assert sample("seat.take", "count") == 0  # refusals are counted, not timed
    assert sample("seat.take", "bucket", le="+Inf") == 0


def test_the_exposition_passes_promtool():
    """promtool check metrics accepts a full scrape: valid exposition, names and units as Prometheus advises."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found on PATH: install it (Debian: apt-get install prometheus) to run this test")
    exposition = generate_latest(registry_for(fake_run()))
    done = subprocess.run([promtool, "check", "metrics"], input=exposition, capture_output=True, timeout=60)
    assert done.returncode == 0, (done.stdout + done.stderr).decode()


def test_metrics_port_gives_each_process_its_own_port():
    """A standalone or master process serves on the base port, worker n on base + n + 1, and no base means off."""
    assert metrics_port(9100, None) == 9100
    assert metrics_port(9100, 0) == 9101
    assert metrics_port(9100, 3) == 9104
    assert metrics_port(None, 2) is None


def test_names_follow_prometheus_practice():
    """Every metric carries the loadgen_ prefix, the scenario label and no unbounded label such as a user or room id."""
    for name, (kind, _, labels) in METRICS.items():
        assert name.startswith("loadgen_")
        assert "scenario" in labels
        assert not {"user", "room", "user_id", "room_id", "message", "message_id"} & set(labels)
        assert kind in ("counter", "gauge", "histogram")


def test_docs_carry_the_generated_table():
    """docs/metrics.md lists every metric exactly as METRICS describes it."""
    assert reference() in (ROOT / "docs" / "metrics.md").read_text()


def test_reconnect_tries_and_time_away_are_exported():
    """Tries to come back are counted by outcome and the time away is a histogram of the run's own."""
    run = fake_run()
    run.reconnects = Reconnects(ReconnectProfile())
    for failure in ("connect", "connect", None):
        run.reconnects.attempted("u1", failure)
    run.reconnects.returned("u1", 0.75, recovered=3)
    value = registry_for(run).get_sample_value
    scenario = {"scenario": "voiceroom"}
    assert value("loadgen_reconnect_attempts_total", {**scenario, "outcome": "failed"}) == 2
    assert value("loadgen_reconnect_attempts_total", {**scenario, "outcome": "ok"}) == 1
    assert value("loadgen_reconnect_time_away_seconds_count", scenario) == 1
    assert value("loadgen_reconnect_time_away_seconds_bucket", {**scenario, "le": "0.5"}) == 0
    assert value("loadgen_reconnect_time_away_seconds_bucket", {**scenario, "le": "1.0"}) == 1
