"""Distributed runs: workers report their figures to the master, which merges them exactly.

Each report is a full snapshot of a worker's run (counters, HDR histograms encoded,
refusals, broken-invariant keys), so a late or repeated report replaces the last one and
nothing is counted twice. The master merges histograms bucket by bucket: its percentiles
are those of the whole run, never an average of workers' percentiles. Broken invariants
are merged by their keys, so a breach two workers both saw counts once.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, fields

from loadgen import media, network
from loadgen.accounting import Accounting, MessageCounts, OperationStats, add_encoded, encode

REPORT = "loadgen_report"
DRAIN = "loadgen_drain"
#: master -> workers: every worker's clock uncertainty, so a receiver can bound a latency by its sender's
CLOCKS = "loadgen_clocks"


def snapshot(context, final: bool) -> dict:
    """A worker's whole run so far, in types Locust's message channel carries."""
    accounting = context.accounting
    clock = context.clock
    return {
        "final": final,
        "worker_index": context.worker_index,
        "counts": asdict(accounting.counts),
        "latency": encode(accounting.latency),
        "uncertain_latency": encode(accounting.uncertain_latency),
        "send_lag": encode(accounting.send_lag),
        "operations": {
            name: {
                "histogram": encode(stats.histogram),
                "count": stats.count,
                "failures": stats.failures,
                "refusals": dict(stats.refusals),
            }
            for name, stats in accounting.operations.items()
        },
        "violation_keys": ["\x1f".join(map(str, key)) for key in context._violations_seen],
        "connections": dict(context.connections),
        "connect_errors": dict(context.connect_errors),
        "close_codes": {str(code): n for code, n in context.close_codes.items()},
        "receipts": context.receipts,
        "malformed": context.malformed,
        "protocol_errors": dict(context.protocol_errors),
        "reconnects": context.reconnects.snapshot(),
        "network": None if (emulated := network.for_run(context)) is None else emulated.snapshot(),
        "media": None if (audio := media.for_run(context)) is None else audio.snapshot(),
        "loop_lag": context.loop_lag_seconds,
        "cpu_max_percent": context.cpu_max_percent,
        "rss_max_bytes": context.rss_max_bytes,
        "guard": context.guard.guard.state(),
        "soak": context.soak.report(),
        "clock": {"tag": clock.tag, "offset": clock.offset, "uncertainty": clock.uncertainty, "syncs": clock.syncs},
    }


def merge_into(context, reports: dict[str, dict]) -> None:
    """Make the master's figures the exact sum of its workers' latest reports."""
    accounting = Accounting(context.delivery_timeout)
    counts = {f.name: 0 for f in fields(MessageCounts)}
    violations: set[str] = set()
    connections: Counter[str] = Counter()
    connect_errors: Counter[str] = Counter()
    close_codes: Counter[int] = Counter()
    receipts = malformed = 0
    protocol_errors: Counter[str] = Counter()
    for report in reports.values():
        for name, value in report["counts"].items():
            counts[name] += value
        add_encoded(accounting.latency, report["latency"])
        add_encoded(accounting.uncertain_latency, report["uncertain_latency"])
        add_encoded(accounting.send_lag, report["send_lag"])
        for name, op in report["operations"].items():
            stats = accounting.operations.get(name) or accounting.operations.setdefault(name, OperationStats())
            add_encoded(stats.histogram, op["histogram"])
            stats.count += op["count"]
            stats.failures += op["failures"]
            stats.refusals.update(op["refusals"])
        violations.update(report["violation_keys"])
        connections.update(report["connections"])
        connect_errors.update(report["connect_errors"])
        close_codes.update({int(code): n for code, n in report["close_codes"].items()})
        receipts += report["receipts"]
        malformed += report["malformed"]
        protocol_errors.update(report.get("protocol_errors", {}))
    accounting.counts = MessageCounts(**counts)
    context.accounting = accounting
    context.violations = Counter(key.split("\x1f", 1)[0] for key in violations)
    context.connections = connections
    context.connect_errors = connect_errors
    context.close_codes = close_codes
    context.receipts = receipts
    context.malformed = malformed
    context.protocol_errors = protocol_errors
    audio = media.for_run(context)
    if audio is not None:
        audio.adopt([r["media"] for r in reports.values() if r.get("media")])
    context.workers_reported = len(reports)
    context.worker_clocks = clocks(reports)
    context.worker_cpu_max_percent = max((r["cpu_max_percent"] for r in reports.values()), default=0.0)
    context.worker_rss_max_bytes = max((r["rss_max_bytes"] for r in reports.values()), default=0)
    # each worker's guard and RSS trend stay apart: a suspect worker or a leaking one is named
    context.guard.adopt({worker_name(r, node): r["guard"] for node, r in reports.items()})
    context.soak.workers = {worker_name(r, node): r["soak"] for node, r in reports.items()}


def worker_name(report: dict, node: str) -> str:
    return report["clock"]["tag"] or node


def per_worker(reports: dict[str, dict]) -> dict[str, dict]:
    """Each worker's own counts, as its latest report gave them: the parts the merge adds up."""
    return {
        worker_name(report, node): {
            "final": report["final"],
            "messages": dict(report["counts"]),
            "operations": {name: op["count"] for name, op in sorted(report["operations"].items())},
        }
        for node, report in sorted(reports.items(), key=lambda item: item[1]["worker_index"] or 0)
    }


def worker_histograms(reports: dict[str, dict]) -> dict[str, dict]:
    """Each worker's encoded histograms, for checking (and redoing) the merge outside the run."""
    return {
        worker_name(report, node): {
            "delivery_latency": report["latency"],
            "operations": {name: op["histogram"] for name, op in sorted(report["operations"].items())},
        }
        for node, report in reports.items()
    }


def clocks(reports: dict[str, dict]) -> dict[str, dict]:
    """Each worker's clock by tag (``w0``, ``w1`` …), as its latest report gave it."""
    return {report["clock"]["tag"]: report["clock"] for report in reports.values() if report["clock"]["tag"]}


__all__ = ["CLOCKS", "DRAIN", "REPORT", "clocks", "merge_into", "per_worker", "snapshot", "worker_histograms"]
