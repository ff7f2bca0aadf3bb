"""Build the Grafana dashboards in this folder: ``python dashboards/build.py`` rewrites every ``*.json``.

The JSON files are generated, never edited by hand; ``tests/test_dashboards.py`` fails when they drift
from what this script writes. Three parts, kept apart as in kubernetes-mixin:

* configuration: the metrics the generator and the reference backend export (``EXPORTED_METRICS``,
  ``REFSERVER_METRICS``), the selectors every query shares, and the targets drawn as threshold lines;
* queries: one dict of named PromQL expressions per dashboard (``QUERIES``);
* layout: small functions that return panels, one shared default that gives the house look.

Percentiles are always ``histogram_quantile(q, sum by (le) (rate(..._bucket[$__rate_interval])))``: buckets are
summed over every worker first, so the quantile is the quantile of the whole run, never an average of workers'.
"""

from __future__ import annotations

import copy
import json
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from loadgen.metrics import METRICS

HERE = Path(__file__).resolve().parent

# --------------------------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------------------------

#: Metrics the generator exports: family name (without ``_total``) -> (type, labels), read from
#: ``loadgen.metrics.METRICS``, the one list every dashboard query is checked against.
EXPORTED_METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    name: (kind, labels) for name, (kind, _help, labels) in METRICS.items()
}

#: Metrics of the reference backend (``loadgen serve``), same shape.
REFSERVER_METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "refserver_connections": ("gauge", ()),
    "refserver_deliveries": ("counter", ("kind",)),
    "refserver_injected_faults": ("counter", ("kind",)),
}

_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",), "info": ("_info",)}


def series_names(metrics: dict[str, tuple[str, tuple[str, ...]]]) -> dict[str, tuple[str, ...]]:
    """Every series name a set of metric families exposes (``_total``, ``_bucket``...) -> its labels."""
    names: dict[str, tuple[str, ...]] = {}
    for family, (kind, labels) in metrics.items():
        for suffix in _SUFFIXES[kind]:
            names[family + suffix] = labels + (("le",) if suffix == "_bucket" else ())
    return names


#: The generator's series: every one carries ``scenario``; the run joins on ``loadgen_run_info``.
#: A distributed run's master serves its workers' figures merged; ``RUN`` leaves it out so figures
#: summed over processes count each message once. ``PROCESSES`` keeps every process of the run,
#: for what is each process's own: CPU, memory, loop lag, the master's SLO verdict.
SCENARIO = 'scenario=~"$scenario"'
RUN = 'and on (job, instance) loadgen_run_info{scenario=~"$scenario", run_id=~"$run_id", role!="master"}'
PROCESSES = 'and on (job, instance) loadgen_run_info{scenario=~"$scenario", run_id=~"$run_id"}'
RATE = "$__rate_interval"

#: Targets drawn as threshold lines; the SLO file decides pass or fail, these only guide the eye.
TARGETS = {
    "delivery_p99_seconds": 1.0,
    "call_setup_p95_seconds": 0.6,
    "generator_cpu_percent": 90,
    "event_loop_lag_seconds": 0.1,
}


def sel(metric: str, matchers: str = "") -> str:
    """``metric{scenario=~"$scenario", matchers}``."""
    return f"{metric}{{{SCENARIO}{', ' + matchers if matchers else ''}}}"


def rate(metric: str, matchers: str = "", by: str = "") -> str:
    """Per-second rate summed over workers (optionally by labels), restricted to the selected runs."""
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (rate({sel(metric, matchers)}[{RATE}]) {RUN})"


def gauge(metric: str, matchers: str = "", by: str = "", agg: str = "sum", run: str = RUN) -> str:
    """A gauge aggregated over workers (or over every process of the run: ``run=PROCESSES``)."""
    grouping = f" by ({by})" if by else ""
    return f"{agg}{grouping} ({sel(metric, matchers)} {run})"


def quantile(q: float, histogram: str, matchers: str = "", by: str = "") -> str:
    """The q-quantile of a histogram over all workers: buckets summed by ``le`` first, then the quantile."""
    grouping = f"le, {by}" if by else "le"
    inner = f"sum by ({grouping}) (rate({sel(histogram + '_bucket', matchers)}[{RATE}]) {RUN})"
    return f"histogram_quantile({q}, {inner})"


def ratio(numerator: str, denominator: str) -> str:
    """``numerator / denominator``, empty (not infinite) while nothing happened."""
    return f"{numerator} / ({denominator} > 0)"


def backend(metric: str, by: str = "") -> str:
    """A reference backend counter's rate (the backend has no scenario or run labels)."""
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (rate({metric}[{RATE}]))"


OPS = "loadgen_operation_duration_seconds"
LATENCY = "loadgen_delivery_latency_seconds"


def op_percentiles(key: str, op: str) -> dict[str, str]:
    """p50, p95 and p99 of one operation, named ``<key>_p50``..."""
    return {f"{key}_p{int(q * 100)}": quantile(q, OPS, f'op="{op}"') for q in (0.5, 0.95, 0.99)}


# --------------------------------------------------------------------------------------------------------------------
# Queries: one dict of named PromQL expressions per dashboard
# --------------------------------------------------------------------------------------------------------------------

MESSAGES = "loadgen_messages_total"
MEDIA_FRAMES = "loadgen_media_frames_total"


def audio_queries() -> dict[str, str]:
    """What listeners heard (docs/media.md), for the room dashboards."""
    slots = rate(MEDIA_FRAMES, 'outcome=~"played|late|lost"')
    return {
        "audio_stall_rate": ratio(
            rate("loadgen_media_stalled_seconds_total"), rate("loadgen_media_listening_seconds_total")
        ),
        "audio_loss": ratio(rate(MEDIA_FRAMES, 'outcome="lost"'), slots),
        "audio_late": ratio(rate(MEDIA_FRAMES, 'outcome="late"'), slots),
        "audio_frames": rate(MEDIA_FRAMES, 'outcome=~"sent|received|counted|lost|late"', by="outcome"),
        "audio_stalls": rate("loadgen_media_stalls_total"),
        **op_percentiles("first_audio_join", "media.first_audio.join"),
        **op_percentiles("first_audio_seat", "media.first_audio.seat"),
        "frame_delay_p50": quantile(0.5, "loadgen_media_frame_delay_seconds"),
        "frame_delay_p99": quantile(0.99, "loadgen_media_frame_delay_seconds"),
        "jitter_p95": quantile(0.95, "loadgen_media_jitter_seconds"),
    }


QUERIES: dict[str, dict[str, str]] = {
    "overview": {
        "users": gauge("loadgen_users"),
        "users_by_scenario": gauge("loadgen_users", by="scenario"),
        "open_connections": gauge("loadgen_open_connections"),
        "sent_rate": rate(MESSAGES, 'outcome="sent"'),
        "delivered_rate": rate(MESSAGES, 'outcome="delivered"'),
        "operations_rate": rate("loadgen_operations_total"),
        "error_ratio": ratio(rate("loadgen_operation_failures_total"), rate("loadgen_operations_total")),
        "loss_ratio": ratio(rate(MESSAGES, 'outcome="lost"'), rate(MESSAGES, 'outcome="sent"')),
        "duplicate_ratio": ratio(rate(MESSAGES, 'outcome="duplicated"'), rate(MESSAGES, 'outcome="sent"')),
        "out_of_order_ratio": ratio(rate(MESSAGES, 'outcome="out_of_order"'), rate(MESSAGES, 'outcome="sent"')),
        "delivery_p50": quantile(0.5, LATENCY),
        "delivery_p95": quantile(0.95, LATENCY),
        "delivery_p99": quantile(0.99, LATENCY),
        "slo_status": gauge("loadgen_slo_check_passed", by="check", agg="min", run=PROCESSES),
        "slo_failing": f"count ({gauge('loadgen_slo_check_passed', by='check', agg='min', run=PROCESSES)} == 0)"
        " or vector(0)",
        "violations": rate("loadgen_invariant_violations_total", by="kind"),
        "injected_faults": backend("refserver_injected_faults_total", by="kind"),
    },
    "messaging": {
        **op_percentiles("send", "msg.send"),
        "delivery_p50": quantile(0.5, LATENCY),
        "delivery_p95": quantile(0.95, LATENCY),
        "delivery_p99": quantile(0.99, LATENCY),
        "outcomes": rate(MESSAGES, by="outcome"),
        "loss_ratio": ratio(rate(MESSAGES, 'outcome="lost"'), rate(MESSAGES, 'outcome="sent"')),
        "duplicate_ratio": ratio(rate(MESSAGES, 'outcome="duplicated"'), rate(MESSAGES, 'outcome="sent"')),
        "out_of_order_ratio": ratio(rate(MESSAGES, 'outcome="out_of_order"'), rate(MESSAGES, 'outcome="sent"')),
        "recovered_ratio": ratio(rate(MESSAGES, 'outcome="recovered"'), rate(MESSAGES, 'outcome="sent"')),
        "connect_p95": quantile(0.95, OPS, 'op="ws.connect"'),
        "connect_p99": quantile(0.99, OPS, 'op="ws.connect"'),
        "opened": rate("loadgen_connections_opened_total"),
        "dropped": rate("loadgen_connections_dropped_total"),
        "reconnects": rate("loadgen_reconnects_total"),
        "reconnect_tries": rate("loadgen_reconnect_attempts_total", by="outcome"),
        "away_p50": quantile(0.5, "loadgen_reconnect_time_away_seconds"),
        "away_p99": quantile(0.99, "loadgen_reconnect_time_away_seconds"),
        "close_codes": rate("loadgen_close_codes_total", by="code"),
        "open_connections": gauge("loadgen_open_connections"),
        "backend_connections": "sum (refserver_connections)",
        "backend_deliveries": backend("refserver_deliveries_total", by="kind"),
        "backend_faults": backend("refserver_injected_faults_total", by="kind"),
    },
    "voiceroom": {
        **op_percentiles("join", "room.join"),
        **op_percentiles("seat_take", "seat.take"),
        "seat_fanout_p95": quantile(0.95, OPS, 'op="seat.fanout"'),
        "gift_fanout_p95": quantile(0.95, OPS, 'op="gift.fanout"'),
        "danmaku_fanout_p95": quantile(0.95, OPS, 'op="danmaku.fanout"'),
        "gift_rates": rate("loadgen_operations_total", 'op=~"gift\\\\..*"', by="op"),
        "danmaku_rates": rate("loadgen_operations_total", 'op=~"danmaku\\\\..*"', by="op"),
        "rooms_joined": gauge("loadgen_rooms_joined"),
        "seats_held": gauge("loadgen_seats_held"),
        "users": gauge("loadgen_users"),
        "refusals": rate("loadgen_operation_refusals_total", 'op=~"seat\\\\..*|room\\\\..*"', by="op, reason"),
        "failures": rate("loadgen_operation_failures_total", by="op"),
        "violations": rate("loadgen_invariant_violations_total", by="kind"),
        "violations_total": f"sum (increase({sel('loadgen_invariant_violations_total')}[{RATE}]) {RUN})",
        **audio_queries(),
    },
    "livestream": {
        **op_percentiles("cohost", "cohost.accept"),
        **op_percentiles("pk", "pk.start"),
        "join_p95": quantile(0.95, OPS, 'op="room.join"'),
        "gift_fanout_p95": quantile(0.95, OPS, 'op="gift.fanout"'),
        "danmaku_fanout_p95": quantile(0.95, OPS, 'op="danmaku.fanout"'),
        "gift_rates": rate("loadgen_operations_total", 'op=~"gift\\\\..*"', by="op"),
        "users": gauge("loadgen_users"),
        "rooms_joined": gauge("loadgen_rooms_joined"),
        "refusals": rate("loadgen_operation_refusals_total", 'op=~"cohost\\\\..*|pk\\\\..*"', by="op, reason"),
        "failures": rate("loadgen_operation_failures_total", by="op"),
        "violations": rate("loadgen_invariant_violations_total", by="kind"),
        **audio_queries(),
    },
    "calls": {
        **op_percentiles("setup", "call.setup"),
        "ring_p50": quantile(0.5, OPS, 'op="call.ring"'),
        "ring_p95": quantile(0.95, OPS, 'op="call.ring"'),
        "in_progress": gauge("loadgen_calls_in_progress"),
        "busy_rate": rate("loadgen_operation_refusals_total", 'op=~"call\\\\..*", reason="busy"'),
        "busy_ratio": ratio(
            rate("loadgen_operation_refusals_total", 'op=~"call\\\\..*", reason="busy"'),
            rate("loadgen_operations_total", 'op="call.setup"'),
        ),
        "refusals": rate("loadgen_operation_refusals_total", 'op=~"call\\\\..*"', by="op, reason"),
        "attempts": rate("loadgen_operations_total", 'op=~"call\\\\..*"', by="op"),
        "failures": rate("loadgen_operation_failures_total", 'op=~"call\\\\..*"', by="op"),
        "violations": rate("loadgen_invariant_violations_total", by="kind"),
    },
    "generator": {
        "cpu": gauge("loadgen_process_cpu_percent", by="instance", agg="max", run=PROCESSES),
        "cpu_max": gauge("loadgen_process_cpu_percent", agg="max", run=PROCESSES),
        "rss": gauge("loadgen_process_resident_memory_bytes", by="instance", agg="max", run=PROCESSES),
        "loop_lag": gauge("loadgen_event_loop_lag_seconds", by="instance", agg="max", run=PROCESSES),
        "loop_lag_max": gauge("loadgen_event_loop_lag_seconds", agg="max", run=PROCESSES),
        "suspect": gauge("loadgen_generator_suspect", agg="max", run=PROCESSES),
        "open_connections": gauge("loadgen_open_connections", by="instance"),
        "users": gauge("loadgen_users", by="instance"),
        "sent_rate": rate(MESSAGES, 'outcome="sent"', by="instance"),
        "operations_rate": rate("loadgen_operations_total", by="instance"),
        "workers": f"count ({sel('loadgen_run_info')} {RUN})",
        "reconnects": rate("loadgen_reconnects_total", by="instance"),
        "clock_offset": gauge("loadgen_clock_offset_seconds", by="instance", agg="max"),
        "clock_uncertainty": gauge("loadgen_clock_uncertainty_seconds", by="instance", agg="max"),
        "uncertain_ratio": ratio(
            rate("loadgen_deliveries_uncertain_total"), rate("loadgen_deliveries_cross_process_total")
        ),
        "cross_process": rate("loadgen_deliveries_cross_process_total", by="instance"),
    },
}


# --------------------------------------------------------------------------------------------------------------------
# Panels: small functions, one shared default
# --------------------------------------------------------------------------------------------------------------------

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

#: The house look every panel starts from.
DEFAULT_PANEL: dict[str, Any] = {
    "datasource": DATASOURCE,
    "fieldConfig": {
        "defaults": {
            "color": {"mode": "palette-classic"},
            "custom": {
                "drawStyle": "line",
                "lineWidth": 1,
                "fillOpacity": 10,
                "showPoints": "never",
                "spanNulls": False,
                "thresholdsStyle": {"mode": "off"},
            },
            "thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None}]},
            "unit": "short",
        },
        "overrides": [],
    },
    "options": {
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
        "tooltip": {"mode": "multi", "sort": "desc"},
    },
}

Target = tuple[str, str]  # (query name, legend)


def _panel(kind: str, title: str, targets: Iterable[Target], *, unit: str, description: str, width: int, height: int):
    panel = copy.deepcopy(DEFAULT_PANEL)
    panel.update(type=kind, title=title, description=description, gridPos={"w": width, "h": height})
    panel["fieldConfig"]["defaults"]["unit"] = unit
    panel["targets"] = [{"query": name, "legendFormat": legend} for name, legend in targets]
    return panel


def _threshold(panel: dict[str, Any], value: float, color: str = "red") -> None:
    defaults = panel["fieldConfig"]["defaults"]
    defaults["thresholds"]["steps"].append({"color": color, "value": value})
    defaults["custom"]["thresholdsStyle"] = {"mode": "line+area"}


def timeseries(
    title: str,
    *targets: Target,
    unit: str = "short",
    description: str = "",
    width: int = 12,
    height: int = 8,
    threshold: float | None = None,
    stack: bool = False,
) -> dict[str, Any]:
    """A time series panel; ``threshold`` draws a red line (and area above it) at a target."""
    panel = _panel("timeseries", title, targets, unit=unit, description=description, width=width, height=height)
    if threshold is not None:
        _threshold(panel, threshold)
    if stack:
        panel["fieldConfig"]["defaults"]["custom"]["stacking"] = {"mode": "normal", "group": "A"}
        panel["fieldConfig"]["defaults"]["custom"]["fillOpacity"] = 40
    return panel


def stat(
    title: str,
    *targets: Target,
    unit: str = "short",
    description: str = "",
    width: int = 4,
    height: int = 4,
    threshold: float | None = None,
    mappings: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A single-value panel showing the latest value; ``threshold`` turns it red at and above a value."""
    panel = _panel("stat", title, targets, unit=unit, description=description, width=width, height=height)
    del panel["fieldConfig"]["defaults"]["custom"]
    if threshold is not None:
        panel["fieldConfig"]["defaults"]["thresholds"]["steps"].append({"color": "red", "value": threshold})
    if mappings:
        panel["fieldConfig"]["defaults"]["mappings"] = mappings
    panel["options"] = {
        "colorMode": "background" if threshold is not None or mappings else "value",
        "graphMode": "area",
        "justifyMode": "auto",
        "orientation": "auto",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "textMode": "auto",
    }
    return panel


def row(title: str) -> dict[str, Any]:
    """A full-width, always open row header."""
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "gridPos": {"w": 24, "h": 1}}


PASS_FAIL = [
    {
        "type": "value",
        "options": {
            "0": {"text": "FAIL", "color": "red", "index": 0},
            "1": {"text": "PASS", "color": "green", "index": 1},
        },
    }
]

PERCENTILES = (("_p50", "p50"), ("_p95", "p95"), ("_p99", "p99"))


def percentiles(key: str) -> list[Target]:
    """The p50/p95/p99 targets of a query family made by ``op_percentiles`` or named ``<key>_p50``..."""
    return [(key + suffix, legend) for suffix, legend in PERCENTILES]


# --------------------------------------------------------------------------------------------------------------------
# Layout: which panels each dashboard shows, in reading order
# --------------------------------------------------------------------------------------------------------------------


def overview_panels() -> list[dict[str, Any]]:
    return [
        stat("Users", ("users", "users")),
        stat("Open connections", ("open_connections", "connections")),
        stat("Delivered / s", ("delivered_rate", "delivered"), unit="reqps"),
        stat("Delivery p99", ("delivery_p99", "p99"), unit="s", threshold=TARGETS["delivery_p99_seconds"]),
        stat("Loss ratio", ("loss_ratio", "lost"), unit="percentunit", threshold=0.0001),
        stat(
            "SLO checks failing",
            ("slo_failing", "failing"),
            threshold=1,
            description="Checks of the SLO file currently failing (loadgen_slo_check_passed == 0).",
        ),
        timeseries("Users", ("users_by_scenario", "{{scenario}}"), stack=True, width=8),
        timeseries(
            "Throughput",
            ("sent_rate", "messages sent"),
            ("delivered_rate", "messages delivered"),
            ("operations_rate", "operations"),
            unit="reqps",
            width=8,
        ),
        timeseries(
            "Error and loss ratios",
            ("error_ratio", "operations failed"),
            ("loss_ratio", "messages lost"),
            ("duplicate_ratio", "duplicated"),
            ("out_of_order_ratio", "out of order"),
            unit="percentunit",
            width=8,
        ),
        timeseries(
            "Delivery latency",
            *percentiles("delivery"),
            unit="s",
            threshold=TARGETS["delivery_p99_seconds"],
            description="End-to-end latency, buckets summed over all workers before the quantile.",
        ),
        stat("SLO status", ("slo_status", "{{check}}"), mappings=PASS_FAIL, width=12, height=8),
        timeseries("Invariant violations / s", ("violations", "{{kind}}"), unit="reqps"),
        timeseries(
            "Faults injected by the reference backend",
            ("injected_faults", "{{kind}}"),
            unit="reqps",
            description="Only the reference backend (loadgen serve) exports these; empty against a real backend.",
        ),
    ]


def messaging_panels() -> list[dict[str, Any]]:
    return [
        row("Latency"),
        timeseries("Send (msg.send)", *percentiles("send"), unit="s"),
        timeseries("Delivery latency", *percentiles("delivery"), unit="s", threshold=TARGETS["delivery_p99_seconds"]),
        row("Delivery"),
        timeseries("Messages by outcome / s", ("outcomes", "{{outcome}}"), unit="reqps"),
        timeseries(
            "Loss, duplicates, reordering",
            ("loss_ratio", "lost"),
            ("duplicate_ratio", "duplicated"),
            ("out_of_order_ratio", "out of order"),
            ("recovered_ratio", "recovered from history"),
            unit="percentunit",
            description="Share of sent messages; recovered ones came back through history after a gap.",
        ),
        row("Connections"),
        timeseries("Connect (ws.connect)", ("connect_p95", "p95"), ("connect_p99", "p99"), unit="s", width=8),
        timeseries(
            "Connections opened, dropped, reconnects / s",
            ("opened", "opened"),
            ("dropped", "dropped"),
            ("reconnects", "reconnects"),
            unit="reqps",
            width=8,
        ),
        timeseries("Close codes / s", ("close_codes", "{{code}}"), unit="reqps", width=8),
        timeseries(
            "Tries to come back / s",
            ("reconnect_tries", "{{outcome}}"),
            unit="reqps",
            width=8,
            description="After a lost connection, by the reconnect policy (docs/reconnects.md): a storm shows here.",
        ),
        timeseries(
            "Time away (lost → back and caught up)",
            ("away_p50", "p50"),
            ("away_p99", "p99"),
            unit="s",
            width=8,
        ),
        timeseries(
            "Open connections: generator vs backend",
            ("open_connections", "generator"),
            ("backend_connections", "reference backend"),
            width=8,
        ),
        timeseries("Backend deliveries / s", ("backend_deliveries", "{{kind}}"), unit="reqps", width=8),
        timeseries("Backend injected faults / s", ("backend_faults", "{{kind}}"), unit="reqps", width=8),
    ]


def voiceroom_panels() -> list[dict[str, Any]]:
    return [
        stat("Users", ("users", "users")),
        stat("Rooms joined", ("rooms_joined", "rooms")),
        stat("Seats held", ("seats_held", "seats")),
        stat("Join p95", ("join_p95", "p95"), unit="s"),
        stat("Seat take p95", ("seat_take_p95", "p95"), unit="s"),
        stat("Invariant violations", ("violations_total", "violations"), threshold=1),
        timeseries("Room join (room.join)", *percentiles("join"), unit="s", width=8),
        timeseries("Seat take (seat.take)", *percentiles("seat_take"), unit="s", width=8),
        timeseries(
            "Fan-out delay p95",
            ("seat_fanout_p95", "seat"),
            ("gift_fanout_p95", "gift"),
            ("danmaku_fanout_p95", "danmaku"),
            unit="s",
            width=8,
            description="From the sender's action to each listener's receipt, over all listeners.",
        ),
        timeseries("Gift storm / s", ("gift_rates", "{{op}}"), unit="reqps", width=8),
        timeseries("Danmaku / s", ("danmaku_rates", "{{op}}"), unit="reqps", width=8),
        timeseries("Refusals / s", ("refusals", "{{op}} {{reason}}"), unit="reqps", width=8),
        timeseries("Failures / s", ("failures", "{{op}}"), unit="reqps"),
        timeseries(
            "Invariant violations / s",
            ("violations", "{{kind}}"),
            unit="reqps",
            threshold=0,
            description="Two holders of one seat, a gift counted twice...: any value is a backend bug.",
        ),
        *audio_panels(),
    ]


def audio_panels() -> list[dict[str, Any]]:
    """A row on what listeners heard; empty panels when the profile has no ``media:`` section."""
    return [
        row("Audio (docs/media.md)"),
        stat(
            "Stall rate",
            ("audio_stall_rate", "stall rate"),
            unit="percentunit",
            threshold=0.01,
            description="Stalled listening time / listening time: gaps with nothing playable over stall_ms.",
        ),
        stat("Frames lost", ("audio_loss", "lost"), unit="percentunit", threshold=0.01),
        stat(
            "Frames late",
            ("audio_late", "late"),
            unit="percentunit",
            threshold=0.01,
            description="Arrived after the jitter buffer's playout time.",
        ),
        stat("First audio after join p95", ("first_audio_join_p95", "p95"), unit="s"),
        stat(
            "First audio after a seat p95",
            ("first_audio_seat_p95", "p95"),
            unit="s",
            description="From a speaker asking for the seat to a listener hearing it.",
        ),
        stat("Jitter p95", ("jitter_p95", "p95"), unit="s", description="RFC 3550 interarrival jitter."),
        timeseries("First audio after join", *percentiles("first_audio_join"), unit="s", width=8),
        timeseries("First audio after a seat", *percentiles("first_audio_seat"), unit="s", width=8),
        timeseries(
            "Frame delay and jitter",
            ("frame_delay_p50", "delay p50"),
            ("frame_delay_p99", "delay p99"),
            ("jitter_p95", "jitter p95"),
            unit="s",
            width=8,
        ),
        timeseries("Audio frames / s", ("audio_frames", "{{outcome}}"), unit="reqps", width=12),
        timeseries(
            "Stalls / s and stall rate",
            ("audio_stalls", "stalls / s"),
            ("audio_stall_rate", "stall rate"),
            unit="short",
            width=12,
            threshold=0.01,
        ),
    ]


def livestream_panels() -> list[dict[str, Any]]:
    return [
        stat("Users", ("users", "users")),
        stat("Rooms joined", ("rooms_joined", "rooms")),
        stat("Co-host accept p95", ("cohost_p95", "p95"), unit="s"),
        stat("PK start p95", ("pk_p95", "p95"), unit="s"),
        stat("Gift fan-out p95", ("gift_fanout_p95", "p95"), unit="s"),
        stat("Join p95", ("join_p95", "p95"), unit="s"),
        timeseries("Co-host accept (cohost.accept)", *percentiles("cohost"), unit="s", width=8),
        timeseries("PK start (pk.start)", *percentiles("pk"), unit="s", width=8),
        timeseries(
            "Fan-out delay p95",
            ("gift_fanout_p95", "gift"),
            ("danmaku_fanout_p95", "danmaku"),
            unit="s",
            width=8,
        ),
        timeseries("Gifts / s", ("gift_rates", "{{op}}"), unit="reqps", width=8),
        timeseries("Refusals / s", ("refusals", "{{op}} {{reason}}"), unit="reqps", width=8),
        timeseries("Failures / s", ("failures", "{{op}}"), unit="reqps", width=8),
        timeseries("Invariant violations / s", ("violations", "{{kind}}"), unit="reqps", threshold=0, width=24),
        *audio_panels(),
    ]


def calls_panels() -> list[dict[str, Any]]:
    target = TARGETS["call_setup_p95_seconds"]
    return [
        stat("Calls in progress", ("in_progress", "calls")),
        stat("Call setup p95", ("setup_p95", "p95"), unit="s", threshold=target),
        stat("Ring p95", ("ring_p95", "p95"), unit="s"),
        stat("Busy / s", ("busy_rate", "busy"), unit="reqps"),
        stat("Busy share of setups", ("busy_ratio", "busy"), unit="percentunit"),
        stat("Failures / s", ("failures", "{{op}}"), unit="reqps"),
        timeseries(
            f"Call setup (call.setup) vs {target * 1000:.0f} ms",
            *percentiles("setup"),
            unit="s",
            threshold=target,
            description=f"Red line: the {target * 1000:.0f} ms p95 setup target.",
        ),
        timeseries("Ring (call.ring)", ("ring_p50", "p50"), ("ring_p95", "p95"), unit="s"),
        timeseries("Calls in progress", ("in_progress", "calls"), width=8),
        timeseries(
            "Refusals / s",
            ("refusals", "{{op}} {{reason}}"),
            unit="reqps",
            width=8,
            description="Busy callees are an expected outcome, counted apart from failures.",
        ),
        timeseries("Attempts / s", ("attempts", "{{op}}"), unit="reqps", width=8),
        timeseries("Failures / s", ("failures", "{{op}}"), unit="reqps"),
        timeseries("Invariant violations / s", ("violations", "{{kind}}"), unit="reqps", threshold=0),
    ]


def generator_panels() -> list[dict[str, Any]]:
    return [
        stat("Worker processes", ("workers", "workers")),
        stat("Busiest CPU", ("cpu_max", "cpu"), unit="percent", threshold=TARGETS["generator_cpu_percent"]),
        stat("Worst event loop lag", ("loop_lag_max", "lag"), unit="s", threshold=TARGETS["event_loop_lag_seconds"]),
        stat(
            "Run validity",
            ("suspect", "suspect"),
            threshold=1,
            mappings=[{"type": "value", "options": {"0": {"text": "valid"}, "1": {"text": "SUSPECT"}}}],
            description="The validity guard (docs/validity.md): SUSPECT once a generator process stayed over a "
            "threshold (CPU, event loop lag, schedule lag, ready callbacks); its latencies include its own delay.",
        ),
        timeseries(
            "CPU per process",
            ("cpu", "{{instance}}"),
            unit="percent",
            threshold=TARGETS["generator_cpu_percent"],
            description="A worker near one full core measures itself, not the backend: add workers.",
        ),
        timeseries(
            "Event loop lag per process",
            ("loop_lag", "{{instance}}"),
            unit="s",
            threshold=TARGETS["event_loop_lag_seconds"],
            description="How late the gevent loop runs timers; latencies above it include the generator's delay.",
        ),
        timeseries("Resident memory per process", ("rss", "{{instance}}"), unit="bytes", width=8),
        timeseries("Open connections per process", ("open_connections", "{{instance}}"), width=8),
        timeseries("Users per process", ("users", "{{instance}}"), width=8),
        timeseries("Messages sent / s per process", ("sent_rate", "{{instance}}"), unit="reqps", width=8),
        timeseries("Operations / s per process", ("operations_rate", "{{instance}}"), unit="reqps", width=8),
        timeseries("Reconnects / s per process", ("reconnects", "{{instance}}"), unit="reqps", width=8),
        timeseries(
            "Clock offset to the backend per process",
            ("clock_offset", "{{instance}}"),
            unit="s",
            width=8,
            description="Measured NTP-style against the backend's clock; cross-process latencies are corrected by it.",
        ),
        timeseries(
            "Clock uncertainty per process",
            ("clock_uncertainty", "{{instance}}"),
            unit="s",
            width=8,
            description="Half the best round trip of the clock measurement: the most the offset can be off by.",
        ),
        timeseries(
            "Cross-process deliveries: uncertain share",
            ("uncertain_ratio", "uncertain"),
            unit="percentunit",
            width=8,
            description="Latencies left out of the delivery histogram because the two clocks were not known well "
            "enough (--clock-uncertainty-limit).",
        ),
        timeseries("Cross-process deliveries / s per receiver", ("cross_process", "{{instance}}"), unit="reqps"),
    ]


# --------------------------------------------------------------------------------------------------------------------
# Dashboards
# --------------------------------------------------------------------------------------------------------------------

#: file name -> (uid, title, layout); uids are stable: links and pushes rely on them.
DASHBOARDS = {
    "overview": ("loadgen-overview", "loadgen / Overview", overview_panels),
    "messaging": ("loadgen-messaging", "loadgen / Messaging", messaging_panels),
    "voiceroom": ("loadgen-voiceroom", "loadgen / Voice rooms", voiceroom_panels),
    "livestream": ("loadgen-livestream", "loadgen / Live streams", livestream_panels),
    "calls": ("loadgen-calls", "loadgen / 1v1 calls", calls_panels),
    "generator": ("loadgen-generator", "loadgen / Generator health", generator_panels),
}


def variables() -> list[dict[str, Any]]:
    """``datasource``, ``scenario`` and ``run_id``, the last two multi-valued with All meaning any."""

    def query(name: str, label: str, expr: str) -> dict[str, Any]:
        return {
            "type": "query",
            "name": name,
            "label": label,
            "datasource": DATASOURCE,
            "definition": expr,
            "query": {"query": expr, "refId": f"{name}-variable"},
            "refresh": 2,
            "multi": True,
            "includeAll": True,
            "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "sort": 1,
        }

    return [
        {
            "type": "datasource",
            "name": "datasource",
            "label": "Data source",
            "query": "prometheus",
            "current": {},
            "refresh": 1,
        },
        query("scenario", "Scenario", "label_values(loadgen_run_info, scenario)"),
        query("run_id", "Run", 'label_values(loadgen_run_info{scenario=~"$scenario"}, run_id)'),
    ]


def annotations() -> list[dict[str, Any]]:
    """Grafana's own annotations tagged ``loadgen`` (posted by ``loadgen.grafana.Annotator``), by kind."""

    def tagged(name: str, tags: list[str], color: str) -> dict[str, Any]:
        return {
            "name": name,
            "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True,
            "hide": False,
            "iconColor": color,
            "target": {"type": "tags", "tags": tags, "matchAny": False, "limit": 500},
        }

    builtin = {
        "name": "Annotations & Alerts",
        "builtIn": 1,
        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
        "enable": True,
        "hide": True,
        "iconColor": "rgba(0, 211, 255, 1)",
        "type": "dashboard",
    }
    return [
        builtin,
        tagged("Run start and end", ["loadgen", "run"], "blue"),
        tagged("Load stages", ["loadgen", "stage"], "purple"),
        tagged("SLO breaches", ["loadgen", "slo-breach"], "red"),
    ]


def _place(panels: list[dict[str, Any]]) -> None:
    """Give panels ids and positions, left to right, wrapping at Grafana's 24 columns."""
    x = y = line = 0
    for number, panel in enumerate(panels, start=1):
        w, h = panel["gridPos"]["w"], panel["gridPos"]["h"]
        if x + w > 24:
            x, y, line = 0, y + line, 0
        panel["id"] = number
        panel["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
        x, line = x + w, max(line, h)


def build(name: str) -> dict[str, Any]:
    """The dashboard JSON model of one dashboard, queries resolved from ``QUERIES[name]``."""
    uid, title, layout = DASHBOARDS[name]
    queries = QUERIES[name]
    panels = layout()
    used: set[str] = set()
    for panel in panels:
        for number, target in enumerate(panel.get("targets", [])):
            key = target.pop("query")
            if key not in queries:
                raise KeyError(f"{name}: panel {panel['title']!r} names unknown query {key!r}")
            used.add(key)
            target.update(datasource=DATASOURCE, expr=queries[key], refId=chr(ord("A") + number), range=True)
    unused = sorted(set(queries) - used)
    if unused:
        raise ValueError(f"{name}: queries no panel shows: {', '.join(unused)}")
    _place(panels)
    return {
        "uid": uid,
        "title": title,
        "tags": ["loadgen"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "10s",
        "schemaVersion": 39,
        "time": {"from": "now-30m", "to": "now"},
        "templating": {"list": variables()},
        "annotations": {"list": annotations()},
        "links": [
            {"type": "dashboards", "tags": ["loadgen"], "asDropdown": True, "title": "loadgen", "includeVars": True}
        ],
        "panels": panels,
    }


def render(name: str) -> str:
    """The exact text of ``<name>.json``."""
    return json.dumps(build(name), indent=2) + "\n"


def all_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, PromQL expression) for every query of every panel."""
    found = []
    for name in DASHBOARDS:
        for panel in build(name)["panels"]:
            for target in panel.get("targets", []):
                found.append((name, panel["title"], target["expr"]))
    return found


# --------------------------------------------------------------------------------------------------------------------
# Checks shared with tests/test_dashboards.py
# --------------------------------------------------------------------------------------------------------------------

_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)\b(?!\s*\()")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (function names, keywords, labels and numbers left out)."""
    text = _STRINGS.sub('""', expr)
    text = _MATCHERS.sub("{}", text)
    text = _RANGES.sub("[]", text)
    text = _GROUPING.sub(" ", text)
    return {name for name in _IDENTIFIER.findall(text) if name not in _KEYWORDS and not name.startswith("__")}


def selector_labels(expr: str) -> dict[str, set[str]]:
    """metric -> label names its ``{...}`` selectors match on."""
    found: dict[str, set[str]] = {}
    for metric, body in re.findall(r"([A-Za-z_:][\w:]*)\{([^{}]*)\}", expr):
        found.setdefault(metric, set()).update(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", body))
    return found


def allowed_series() -> dict[str, tuple[str, ...]]:
    """Every series name a dashboard may query -> its labels."""
    return {**series_names(EXPORTED_METRICS), **series_names(REFSERVER_METRICS)}


def iter_files() -> Iterator[tuple[Path, str]]:
    for name in DASHBOARDS:
        yield HERE / f"{name}.json", render(name)


def main() -> int:
    for path, text in iter_files():
        path.write_text(text)
        sys.stderr.write(f"wrote {path.relative_to(HERE.parent)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
