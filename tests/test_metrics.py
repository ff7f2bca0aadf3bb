"""The generator's Prometheus metrics: read from the run's figures, named as documented."""

from collections import Counter
from pathlib import Path
from types import SimpleNamespace

from loadgen.accounting import Accounting
from loadgen.metrics import METRICS, reference, registry_for

ROOT = Path(__file__).resolve().parent.parent


def fake_run():
    accounting = Accounting()
    accounting.counts.delivered = 41
    accounting.counts.lost = 2
    accounting.record_operation("room.join", 0.01)
    accounting.record_operation("room.join", 0.02, failed=True)
    return SimpleNamespace(
        scenario="voiceroom",
        accounting=accounting,
        violations=Counter({"seat_conflict": 3}),
        connections=Counter({"opened": 7, "dropped": 1}),
        environment=SimpleNamespace(runner=SimpleNamespace(user_count=5)),
    )


def test_scrape_reads_the_run_figures():
    """A scrape reports exactly the run's messages, violations, operations, connections and users."""
    registry = registry_for(fake_run())
    value = registry.get_sample_value
    assert value("loadgen_messages_total", {"scenario": "voiceroom", "outcome": "delivered"}) == 41
    assert value("loadgen_messages_total", {"scenario": "voiceroom", "outcome": "lost"}) == 2
    assert value("loadgen_invariant_violations_total", {"scenario": "voiceroom", "kind": "seat_conflict"}) == 3
    assert value("loadgen_operations_total", {"scenario": "voiceroom", "op": "room.join"}) == 2
    assert value("loadgen_operation_failures_total", {"scenario": "voiceroom", "op": "room.join"}) == 1
    assert value("loadgen_connections_dropped_total", {"scenario": "voiceroom"}) == 1
    assert value("loadgen_users", {"scenario": "voiceroom"}) == 5


def test_names_follow_prometheus_practice():
    """Every metric carries the loadgen_ prefix and no unbounded label such as a user or room id."""
    for name, (_, _, labels) in METRICS.items():
        assert name.startswith("loadgen_")
        assert not {"user", "room", "user_id", "room_id"} & set(labels)


def test_docs_carry_the_generated_table():
    """docs/metrics.md lists every metric exactly as METRICS describes it."""
    assert reference() in (ROOT / "docs" / "metrics.md").read_text()
