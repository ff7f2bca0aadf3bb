"""Prometheus metrics of a generator process: every name in one place, read from the run at scrape time.

Nothing is counted twice: the collector reads the run's own figures (accounting, broken
invariants, connections, live sessions) when Prometheus scrapes, so the numbers on a
dashboard are the numbers in the summary. Even the histograms are the summary's HDR
histograms, folded into Prometheus buckets at each scrape. ``--metrics-port`` serves them;
tests read them from an injected registry.
"""

from __future__ import annotations

import logging
import operator
import os
from bisect import bisect_right
from collections.abc import Iterator

from hdrh.histogram import HdrHistogram
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from loadgen import media
from loadgen.drivers.base import PROTOCOL_ERROR_KINDS

log = logging.getLogger("loadgen.metrics")

#: name (without ``_total``) -> (type, help, labels)
METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "loadgen_messages": (
        "counter",
        "Messages by end-to-end outcome: sent, delivered, lost, duplicated, out_of_order, recovered.",
        ("scenario", "outcome"),
    ),
    "loadgen_delivery_latency_seconds": (
        "histogram",
        "End-to-end latency of delivered messages, sender's send to receiver's receipt.",
        ("scenario",),
    ),
    "loadgen_deliveries_cross_process": (
        "counter",
        "Deliveries whose sender ran in another generator process (also counted delivered).",
        ("scenario",),
    ),
    "loadgen_deliveries_uncertain": (
        "counter",
        "Deliveries whose latency is left out of loadgen_delivery_latency_seconds: sender's and receiver's "
        "clock uncertainties together exceeded --clock-uncertainty-limit.",
        ("scenario",),
    ),
    "loadgen_operations": (
        "counter",
        "Client operations and fan-out receptions by name, failures and refusals included.",
        ("scenario", "op"),
    ),
    "loadgen_operation_failures": ("counter", "Failed client operations by name.", ("scenario", "op")),
    "loadgen_operation_refusals": (
        "counter",
        "Operations the backend refused as an expected outcome (a seat taken, a busy callee), by reason.",
        ("scenario", "op", "reason"),
    ),
    "loadgen_operation_duration_seconds": (
        "histogram",
        "Duration of successful operations, and delay of fan-outs such as seat.fanout; "
        "failures and refusals are not timed.",
        ("scenario", "op"),
    ),
    "loadgen_invariant_violations": (
        "counter",
        "Backend invariants broken as clients saw them, by kind, each breach counted once.",
        ("scenario", "kind"),
    ),
    "loadgen_connections_opened": ("counter", "WebSocket connections opened.", ("scenario",)),
    "loadgen_connections_dropped": ("counter", "Connections the backend or the network cut.", ("scenario",)),
    "loadgen_reconnects": ("counter", "Reconnections after a dropped connection.", ("scenario",)),
    "loadgen_reconnect_attempts": (
        "counter",
        "Tries to come back after a lost connection (docs/reconnects.md), by outcome: ok or failed.",
        ("scenario", "outcome"),
    ),
    "loadgen_reconnect_time_away_seconds": (
        "histogram",
        "From losing a connection to being back in every room and caught up from history.",
        ("scenario",),
    ),
    "loadgen_protocol_errors": (
        "counter",
        "Frames and connections on which the backend broke its protocol, by kind (docs/faults.md): "
        f"{', '.join(PROTOCOL_ERROR_KINDS)}.",
        ("scenario", "kind"),
    ),
    "loadgen_media_frames": (
        "counter",
        "Audio frames (docs/media.md) by outcome: sent by speakers; received, duplicated or stale as decoding "
        "listeners got them, and each of their frame slots played, late or lost; counted by counting listeners; "
        "network_dropped by an emulated link.",
        ("scenario", "outcome"),
    ),
    "loadgen_media_stalls": (
        "counter",
        "Stalls: gaps with nothing playable longer than the profile's stall_ms.",
        ("scenario",),
    ),
    "loadgen_media_stalled_seconds": ("counter", "Listening time spent in stalls, summed over streams.", ("scenario",)),
    "loadgen_media_listening_seconds": (
        "counter",
        "Listening time of decoding listeners, summed over the streams they heard; the stall rate's denominator.",
        ("scenario",),
    ),
    "loadgen_media_frame_delay_seconds": (
        "histogram",
        "Audio frames' capture-to-arrival delay, on the backend's clock.",
        ("scenario",),
    ),
    "loadgen_media_jitter_seconds": (
        "histogram",
        "Interarrival jitter of audio streams as RFC 3550 computes it, sampled once a second per stream.",
        ("scenario",),
    ),
    "loadgen_close_codes": (
        "counter",
        "Connections closed, by WebSocket close code (1006: closed without a close frame).",
        ("scenario", "code"),
    ),
    "loadgen_users": ("gauge", "Users running in this process.", ("scenario",)),
    "loadgen_open_connections": ("gauge", "Sessions whose WebSocket is open now.", ("scenario",)),
    "loadgen_rooms_joined": ("gauge", "Room memberships of the open sessions, summed.", ("scenario",)),
    "loadgen_seats_held": ("gauge", "Mic seats this process's users occupy now.", ("scenario",)),
    "loadgen_calls_in_progress": ("gauge", "1v1 calls this process's users are in now.", ("scenario",)),
    "loadgen_process_cpu_percent": (
        "gauge",
        "CPU use of this generator process, percent of one core, as Locust samples it every 10 s.",
        ("scenario",),
    ),
    "loadgen_process_resident_memory_bytes": (
        "gauge",
        "Resident memory of this generator process, as Locust samples it every 10 s.",
        ("scenario",),
    ),
    "loadgen_event_loop_lag_seconds": (
        "gauge",
        "How late gevent's hub last woke a one-second timer; a CPU-starved generator shows here first.",
        ("scenario",),
    ),
    "loadgen_process_cpu_seconds": (
        "counter",
        "CPU time this generator process has used, user and system; rate() gives the cores it keeps busy.",
        ("scenario",),
    ),
    "loadgen_schedule_lag_seconds": (
        "gauge",
        "Median lag behind their schedule of the posts this process sent in the guard's last one-second sample.",
        ("scenario",),
    ),
    "loadgen_event_loop_ready_callbacks": (
        "gauge",
        "Callbacks ready to run in gevent's hub at the guard's last sample: the generator's own backlog.",
        ("scenario",),
    ),
    "loadgen_generator_suspect": (
        "gauge",
        "1 once the validity guard has marked the run suspect (this process, or on a master any process), "
        "else 0 (docs/validity.md).",
        ("scenario",),
    ),
    "loadgen_clock_offset_seconds": (
        "gauge",
        "The backend's clock minus this process's, as last measured (workers and standalone processes).",
        ("scenario",),
    ),
    "loadgen_clock_uncertainty_seconds": (
        "gauge",
        "How far the measured clock offset may be off: half the round trip of its best sample.",
        ("scenario",),
    ),
    "loadgen_run_info": (
        "gauge",
        "Always 1; labels name the run (scenario, profile file, run id) and the process's role: "
        "standalone, master (serves the workers' figures merged) or worker.",
        ("scenario", "profile", "run_id", "role"),
    ),
    "loadgen_slo_check_passed": (
        "gauge",
        "1 while an SLO check passes on the figures so far, 0 when it fails (master or standalone, with --slo).",
        ("scenario", "check"),
    ),
}

OUTCOMES = ("sent", "delivered", "lost", "duplicated", "out_of_order", "recovered")

#: upper bounds of the duration histograms' buckets, seconds (+Inf is implied)
BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.6, 1.0, 2.0, 5.0, 10.0, 30.0,
)  # fmt: skip
_BOUNDS_US = tuple(round(bound * 1e6) for bound in BUCKETS)
_LE = tuple(floatToGoString(bound) for bound in BUCKETS)


class _Layout:
    """Where the buckets fall in the counts array of every HDR histogram of one configuration.

    An HDR histogram keeps one counter per slot of equivalent values (exact below 2048 µs at
    three significant digits, 0.1 % wide above). Slots are ordered by value, so "values <=
    bound" is a prefix of the array: ``cuts[k]`` slots whose lowest value is <= bound ``k``.
    ``middles`` is each slot's middle value, which hdrh's own mean uses.
    """

    __slots__ = ("lowest", "middles", "cuts")

    def __init__(self, histogram: HdrHistogram) -> None:
        self.lowest = [histogram.get_value_from_index(i) for i in range(histogram.counts_len)]
        self.middles = [low + (histogram.get_highest_equivalent_value(low) - low + 1) // 2 for low in self.lowest]
        self.cuts = [bisect_right(self.lowest, bound) for bound in _BOUNDS_US]


_layouts: dict[tuple[int, int, int], _Layout] = {}


def _layout(histogram: HdrHistogram) -> _Layout:
    key = (histogram.lowest_trackable_value, histogram.highest_trackable_value, histogram.significant_figures)
    layout = _layouts.get(key)
    if layout is None:
        layout = _layouts[key] = _Layout(histogram)
    return layout


def hdr_buckets(histogram: HdrHistogram) -> tuple[list[tuple[str, int]], float]:
    """Cumulative Prometheus buckets and the sum in seconds of an HDR histogram of microseconds.

    A bucket counts the recorded values whose HDR slot starts at or below its bound: exact
    below 2048 µs; above, a value less than 0.1 % over a bound may share the bound's slot and
    then counts in that bucket. The sum is hdrh's mean times the count (slot middles).

    The counts array is read once, as a list, up to the largest recorded value. hdrh's
    recorded-value iterator would walk all ~23,500 slots in Python on every call (tens of
    milliseconds per histogram, with the gevent hub blocked), and ``get_mean_value`` a second time.
    """
    layout = _layout(histogram)
    top = bisect_right(layout.lowest, histogram.get_max_value()) if histogram.get_total_count() else 0
    counts = histogram.counts[:top]
    buckets: list[tuple[str, int]] = []
    cumulative = start = 0
    for le, cut in zip(_LE, layout.cuts, strict=True):
        cumulative += sum(counts[start:cut])
        start = cut
        buckets.append((le, cumulative))
    total = cumulative + sum(counts[start:])
    buckets.append(("+Inf", total))
    return buckets, sum(map(operator.mul, counts, layout.middles)) / 1e6


class RunCollector(Collector):
    """Reads a :class:`~loadgen.run.RunContext` at scrape time."""

    def __init__(self, context) -> None:
        self.context = context

    def _family(self, name: str) -> CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily:
        kind, help_text, labels = METRICS[name]
        cls = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily, "histogram": HistogramMetricFamily}[kind]
        return cls(name, help_text, labels=list(labels))

    def _single(self, name: str, value: float) -> GaugeMetricFamily | CounterMetricFamily:
        family = self._family(name)
        family.add_metric([self.context.scenario], value)
        return family

    def collect(self) -> Iterator[Metric]:
        context = self.context
        scenario = context.scenario
        accounting = context.accounting
        counts = accounting.counts
        messages = self._family("loadgen_messages")
        for outcome in OUTCOMES:
            messages.add_metric([scenario, outcome], getattr(counts, outcome))
        yield messages
        latency = self._family("loadgen_delivery_latency_seconds")
        latency.add_metric([scenario], *hdr_buckets(accounting.latency))
        yield latency
        yield self._single("loadgen_deliveries_cross_process", counts.cross_process)
        yield self._single("loadgen_deliveries_uncertain", counts.uncertain)

        operations = self._family("loadgen_operations")
        failures = self._family("loadgen_operation_failures")
        refusals = self._family("loadgen_operation_refusals")
        durations = self._family("loadgen_operation_duration_seconds")
        for op, stats in sorted(accounting.operations.items()):
            operations.add_metric([scenario, op], stats.count)
            failures.add_metric([scenario, op], stats.failures)
            for reason, count in sorted(stats.refusals.items()):
                refusals.add_metric([scenario, op, reason], count)
            durations.add_metric([scenario, op], *hdr_buckets(stats.histogram))
        yield from (operations, failures, refusals, durations)

        violations = self._family("loadgen_invariant_violations")
        for kind, count in sorted(context.violations.items()):
            violations.add_metric([scenario, kind], count)
        yield violations
        connections = context.connections
        yield self._single("loadgen_connections_opened", connections["opened"])
        yield self._single("loadgen_connections_dropped", connections["dropped"])
        yield self._single("loadgen_reconnects", connections["reconnects"])
        back = getattr(context, "reconnects", None)
        if back is not None:
            attempts = self._family("loadgen_reconnect_attempts")
            failed = sum(back.failures.values())
            attempts.add_metric([scenario, "ok"], back.attempts - failed)
            attempts.add_metric([scenario, "failed"], failed)
            away = self._family("loadgen_reconnect_time_away_seconds")
            away.add_metric([scenario], *hdr_buckets(back.away))
            yield from (attempts, away)
        protocol_errors = self._family("loadgen_protocol_errors")
        seen = getattr(context, "protocol_errors", {})
        # every kind, seen or not: a rate() over a series that appears mid-run misses its first increase
        for kind in PROTOCOL_ERROR_KINDS:
            protocol_errors.add_metric([scenario, kind], seen.get(kind, 0))
        yield protocol_errors
        yield from self._media(scenario)
        close_codes = self._family("loadgen_close_codes")
        for code, count in sorted(getattr(context, "close_codes", {}).items()):
            close_codes.add_metric([scenario, str(code)], count)
        yield close_codes

        runner = context.environment.runner
        alive = [session for session in context.sessions if session.alive]
        yield self._single("loadgen_users", 0 if runner is None else runner.user_count)
        yield self._single("loadgen_open_connections", len(alive))
        yield self._single("loadgen_rooms_joined", sum(len(session.rooms) for session in alive))
        yield self._single("loadgen_seats_held", getattr(context, "seats_held", lambda: 0)())
        yield self._single("loadgen_calls_in_progress", getattr(context, "calls_in_progress", lambda: 0)())
        yield self._single("loadgen_process_cpu_percent", 0.0 if runner is None else runner.current_cpu_usage)
        yield self._single(
            "loadgen_process_resident_memory_bytes", 0 if runner is None else runner.current_memory_usage
        )
        yield self._single("loadgen_event_loop_lag_seconds", getattr(context, "loop_lag_seconds", 0.0))
        times = os.times()
        yield self._single("loadgen_process_cpu_seconds", times.user + times.system)
        guard = getattr(context, "guard", None)
        if guard is not None:
            lag, ready = guard.last.get("schedule_lag"), guard.last.get("queue")
            if lag is not None:
                yield self._single("loadgen_schedule_lag_seconds", lag / 1000)
            if ready is not None:
                yield self._single("loadgen_event_loop_ready_callbacks", ready)
            yield self._single("loadgen_generator_suspect", 1 if guard.suspect else 0)
        clock = getattr(context, "clock", None)
        if clock is not None and clock.estimate is not None:
            yield self._single("loadgen_clock_offset_seconds", clock.offset)
            yield self._single("loadgen_clock_uncertainty_seconds", clock.uncertainty)
        info = self._family("loadgen_run_info")
        info.add_metric([scenario, context.profile.path or "", getattr(context, "run_id", ""), role(context)], 1)
        yield info
        checks = self._family("loadgen_slo_check_passed")
        for result in getattr(context, "slo_results", ()):
            checks.add_metric([scenario, result.name], 1 if result.passed else 0)
        yield checks

    def _media(self, scenario: str) -> Iterator[Metric]:
        if getattr(getattr(self.context, "profile", None), "media", None) is None:
            return
        audio = media.for_run(self.context)
        frames = self._family("loadgen_media_frames")
        for outcome, count in audio.frames.items():
            frames.add_metric([scenario, outcome], count)
        yield frames
        yield self._single("loadgen_media_stalls", audio.stalls)
        yield self._single("loadgen_media_stalled_seconds", audio.stalled_seconds)
        yield self._single("loadgen_media_listening_seconds", audio.listening_seconds)
        delay = self._family("loadgen_media_frame_delay_seconds")
        delay.add_metric([scenario], *hdr_buckets(audio.frame_delay))
        jitter = self._family("loadgen_media_jitter_seconds")
        jitter.add_metric([scenario], *hdr_buckets(audio.jitter))
        yield from (delay, jitter)


def role(context) -> str:
    if getattr(context, "is_master", False):
        return "master"
    return "worker" if getattr(context, "is_worker", False) else "standalone"


def registry_for(context) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(RunCollector(context))
    return registry


#: where a process serves /metrics when --metrics-port is not given
DEFAULT_PORT = 9646


def metrics_port(base: int | None, worker_index: int | None) -> int | None:
    """The port a process serves metrics on, given ``--metrics-port`` and Locust's worker index.

    A standalone or master process (no worker index) serves on ``base``; worker ``n``
    (Locust numbers them from 0) on ``base + n + 1``, so one flag shared by every process of
    a distributed run gives each its own port. ``None`` (no ``--metrics-port``) stays off.
    """
    if base is None:
        return None
    return base if worker_index is None else base + worker_index + 1


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
