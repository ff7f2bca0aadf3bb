"""Prometheus metrics of a generator process: every name in one place, read from the run at scrape time.

Nothing is counted twice: the collector reads the run's own figures (accounting, broken
invariants, connections) when Prometheus scrapes, so the numbers on a dashboard are the
numbers in the summary. ``--metrics-port`` serves them; tests read them from an injected
registry.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("loadgen.metrics")

#: name (without ``_total``) -> (type, help, labels)
METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "loadgen_messages": (
        "counter",
        "Messages by end-to-end outcome: sent, delivered, lost, duplicated, out_of_order, recovered.",
        ("scenario", "outcome"),
    ),
    "loadgen_invariant_violations": (
        "counter",
        "Backend invariants broken as clients saw them, by kind, each breach counted once.",
        ("scenario", "kind"),
    ),
    "loadgen_operations": ("counter", "Client operations by name, failures included.", ("scenario", "op")),
    "loadgen_operation_failures": ("counter", "Failed client operations by name.", ("scenario", "op")),
    "loadgen_connections_opened": ("counter", "WebSocket connections opened.", ("scenario",)),
    "loadgen_connections_dropped": ("counter", "Connections the backend or the network cut.", ("scenario",)),
    "loadgen_users": ("gauge", "Users running in this process.", ("scenario",)),
}

OUTCOMES = ("sent", "delivered", "lost", "duplicated", "out_of_order", "recovered")


class RunCollector(Collector):
    """Reads a :class:`~loadgen.run.RunContext` at scrape time."""

    def __init__(self, context) -> None:
        self.context = context

    def _family(self, name: str) -> CounterMetricFamily | GaugeMetricFamily:
        kind, help_text, labels = METRICS[name]
        cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
        return cls(name, help_text, labels=list(labels))

    def collect(self) -> Iterator[Metric]:
        context = self.context
        scenario = context.scenario
        counts = context.accounting.counts
        messages = self._family("loadgen_messages")
        for outcome in OUTCOMES:
            messages.add_metric([scenario, outcome], getattr(counts, outcome))
        yield messages
        violations = self._family("loadgen_invariant_violations")
        for kind, count in sorted(context.violations.items()):
            violations.add_metric([scenario, kind], count)
        yield violations
        operations = self._family("loadgen_operations")
        failures = self._family("loadgen_operation_failures")
        for op, stats in sorted(context.accounting.operations.items()):
            operations.add_metric([scenario, op], stats.count)
            failures.add_metric([scenario, op], stats.failures)
        yield operations
        yield failures
        opened = self._family("loadgen_connections_opened")
        opened.add_metric([scenario], context.connections["opened"])
        yield opened
        dropped = self._family("loadgen_connections_dropped")
        dropped.add_metric([scenario], context.connections["dropped"])
        yield dropped
        users = self._family("loadgen_users")
        runner = context.environment.runner
        users.add_metric([scenario], 0 if runner is None else runner.user_count)
        yield users


def registry_for(context) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(RunCollector(context))
    return registry


def serve(context, port: int, host: str = "127.0.0.1"):
    """Serve the run's metrics from a gevent server, the generator's own kind of concurrency.

    prometheus_client's ``start_http_server`` runs a thread, which under gevent's patching
    becomes a greenlet that swallows Ctrl-C meant for Locust.
    """
    from gevent.pywsgi import WSGIServer

    server = WSGIServer((host, port), make_wsgi_app(registry_for(context)), log=None, error_log=log)
    server.start()
    log.info("Metrics on http://%s:%d/metrics", host, server.server_port)
    return server


def reference() -> str:
    """The metric table of docs/metrics.md, written from METRICS so docs match the code."""
    lines = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for name, (kind, help_text, labels) in METRICS.items():
        shown = f"{name}_total" if kind == "counter" else name
        lines.append(f"| `{shown}` | {kind} | {', '.join(labels)} | {help_text} |")
    return "\n".join(lines) + "\n"
