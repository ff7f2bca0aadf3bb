"""The run's summary JSON (the contract in docs/summary.md) and its end-of-run table."""

from __future__ import annotations

import os
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import orjson

from loadgen.accounting import percentiles_ms

SCHEMA_VERSION = 1


def build(context, exit_code: int, unreachable: str | None = None) -> dict:
    accounting = context.accounting
    counts = accounting.counts
    started = context.started_wall
    if context.started_mono is None:
        duration = 0.0
    else:
        duration = (context.stopped_mono or time.monotonic()) - context.started_mono
    operations = {name: stats.summary() for name, stats in sorted(accounting.operations.items())}
    for name, stats in accounting.operations.items():
        if stats.refusals:
            operations[name]["refusals"] = dict(stats.refusals)
    data = {
        "schema": SCHEMA_VERSION,
        "scenario": context.scenario,
        "run_id": context.run_id,
        "host": context.environment.host,
        "profile": context.profile.path,
        "started": None if started is None else _iso(started),
        "duration_s": round(duration, 3),
        "users_peak": context.users_peak,
        "exit_code": exit_code,
        "interrupted": context.interrupted,
        "messages": {
            "sent": counts.sent,
            "delivered": counts.delivered,
            "lost": counts.lost,
            "duplicated": counts.duplicated,
            "out_of_order": counts.out_of_order,
            "recovered": counts.recovered,
            "delivery_timeout_s": accounting.delivery_timeout,
            "delivery_latency_ms": percentiles_ms(accounting.latency),
        },
        "operations": operations,
        "connections": {
            "opened": context.connections["opened"],
            "dropped": context.connections["dropped"],
            "reconnects": context.connections["reconnects"],
            "connect_errors": dict(context.connect_errors),
            "close_codes": {str(code): n for code, n in sorted(context.close_codes.items())},
        },
        "receipts": context.receipts,
        "malformed_frames": context.malformed,
        "invariants": {"violations": sum(context.violations.values()), "by_kind": dict(context.violations)},
        "slo": {"file": None, "passed": None, "checks": []},
        "generator": {
            "cpu_max_percent": round(context.cpu_max_percent, 1),
            "rss_max_mb": round(context.rss_max_bytes / 2**20, 1),
            "workers": context.workers_reported if context.is_master else 1,
            "clock_offset_ms": round(accounting.clock_offset * 1000, 3),
            "clock_uncertainty_ms": None
            if context.clock_uncertainty is None
            else round(context.clock_uncertainty * 1000, 3),
            "send_lag_ms": percentiles_ms(accounting.send_lag),
        },
    }
    if unreachable is not None:
        data["error"] = f"could not reach the backend: {unreachable}"
    if getattr(context, "partial_workers", None):
        data["partial"] = {"missing_workers": context.partial_workers}
    return data


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def write(data: dict, path: Path) -> None:
    """Write atomically, so a reader never sees half a summary."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".summary-", suffix=".json")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def format_table(data: dict) -> str:
    """The end-of-run lines printed beside Locust's own table."""
    m = data["messages"]
    lat = m["delivery_latency_ms"]
    lines = [
        f"End-to-end delivery ({data['scenario']}, {data['duration_s']:.0f} s, peak {data['users_peak']} users)",
        f"  sent {m['sent']}  delivered {m['delivered']}  lost {m['lost']}  duplicated {m['duplicated']}"
        f"  out of order {m['out_of_order']}  recovered {m['recovered']}",
        f"  latency ms  p50 {lat['p50']:.3f}  p95 {lat['p95']:.3f}  p99 {lat['p99']:.3f}"
        f"  p99.9 {lat['p999']:.3f}  max {lat['max']:.3f}",
    ]
    lag = data["generator"]["send_lag_ms"]
    lines.append(f"  send lag behind schedule ms  p50 {lag['p50']:.3f}  p99 {lag['p99']:.3f}  max {lag['max']:.3f}")
    if data["operations"]:
        lines.append(f"  {'operation':<18}{'count':>9}{'fail':>7}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}")
        for name, op in data["operations"].items():
            lines.append(
                f"  {name:<18}{op['count']:>9}{op['failures']:>7}"
                f"{op['p50_ms']:>10.2f}{op['p95_ms']:>10.2f}{op['p99_ms']:>10.2f}"
            )
    return "\n".join(lines)
