"""The run's summary JSON (the contract in docs/summary.md) and its end-of-run table."""

from __future__ import annotations

import os
import stat
import time
from datetime import datetime, timezone
from pathlib import Path

import orjson

from loadgen import media, merge, network, reconnects
from loadgen.accounting import percentiles_ms
from loadgen.files import write_atomically
from loadgen.redact import url_for_display

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
        "host": url_for_display(context.environment.host),
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
            "cross_process": counts.cross_process,
            "uncertain": counts.uncertain,
            "uncertain_latency_ms": percentiles_ms(accounting.uncertain_latency),
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
        "protocol_errors": {"total": context.malformed, "by_kind": dict(sorted(context.protocol_errors.items()))},
        "invariants": {"violations": sum(context.violations.values()), "by_kind": dict(context.violations)},
        "slo": {"file": None, "passed": None, "checks": []},
        "generator": {
            "cpu_max_percent": round(context.cpu_max_percent, 1),
            "rss_max_mb": round(context.rss_max_bytes / 2**20, 1),
            "workers": context.workers_reported if context.is_master else 1,
            "clock": _clock(context),
            "send_lag_ms": percentiles_ms(accounting.send_lag),
        },
    }
    data["reconnects"] = _reconnects(context)
    data["network"] = _network(context)
    data["media"] = _media(context)
    data["generator"]["suspect"], data["generator"]["guard"] = context.guard.summary()
    data["soak"] = context.soak.summary()
    if unreachable is not None:
        data["error"] = f"could not reach the backend: {unreachable}"
    if context.is_master:
        data["workers"] = merge.per_worker(context.worker_reports)
    missing, lost = context.partial_workers, list(context.lost_workers.values())
    if missing or lost:
        data["partial"] = {"missing_workers": missing, "lost_workers": lost}
    return data


def _reconnects(context) -> dict:
    """This process's reconnections, or on a master every worker's with the master's own restarts."""
    snapshots = [context.reconnects.snapshot()]
    if context.is_master:
        snapshots += [r["reconnects"] for r in context.worker_reports.values()]
    return reconnects.summary(context.reconnect_policy, snapshots)


def _network(context) -> dict | None:
    """What the emulated networks added and the rest: this process's, or on a master every worker's."""
    run = network.for_run(context)
    if run is None:
        return None
    snapshots = [run.snapshot()]
    if context.is_master:
        snapshots += [r["network"] for r in context.worker_reports.values() if r.get("network")]
    return network.summary(snapshots)


def _media(context) -> dict | None:
    """What listeners heard: this process's, or on a master every worker's (merged into its own)."""
    run = media.for_run(context)
    return None if run is None else media.summary([run.snapshot()], context.profile.media)


def _clock(context) -> dict:
    """Each process's clock against the backend's: this one's, or on a master every worker's."""

    def ms(seconds: float | None) -> float | None:
        return None if seconds is None else round(seconds * 1000, 3)

    clock = context.clock
    if context.is_master:
        processes = {tag: c for tag, c in sorted(context.worker_clocks.items())}
    else:
        processes = {clock.tag or "standalone": {"offset": clock.offset, "uncertainty": clock.uncertainty,
                                                 "syncs": clock.syncs}}  # fmt: skip
    return {
        "sync_interval_s": context.clock_sync_interval,
        "uncertainty_limit_ms": ms(clock.limit),
        "processes": {
            name: {"offset_ms": ms(c["offset"]), "uncertainty_ms": ms(c["uncertainty"]), "syncs": c["syncs"]}
            for name, c in processes.items()
        },
    }


def histograms(context) -> dict:
    """The run's final histograms, encoded: the exact distributions behind the summary's percentiles.

    A distributed run's master adds each worker's own, so the merge can be checked or redone.
    """
    accounting = context.accounting
    data = {
        "schema": SCHEMA_VERSION,
        "run_id": context.run_id,
        "unit": "microseconds",
        "encoding": "HdrHistogram V2, compressed, base64 (HdrHistogram.encode())",
        "delivery_latency": merge.encode(accounting.latency),
        "operations": {name: merge.encode(stats.histogram) for name, stats in sorted(accounting.operations.items())},
    }
    if context.is_master:
        data["workers"] = merge.worker_histograms(context.worker_reports)
    return data


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def write(data: dict, path: Path) -> None:
    """Write JSON atomically, so a reader never sees half a file.

    A path to a device or a pipe (``/dev/stdout``) is written in place: replacing it with a
    file, as an atomic write does, would take the device away.
    """
    payload = orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n"
    try:
        special = not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        special = False
    if special:
        with open(path, "wb") as out:
            out.write(payload)
    else:
        write_atomically(path, payload)


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
    if m["uncertain"]:
        lines.append(
            f"  {m['uncertain']} latencies across processes left out: clocks not known within "
            f"{data['generator']['clock']['uncertainty_limit_ms']} ms (messages.uncertain)"
        )
    lag = data["generator"]["send_lag_ms"]
    lines.append(f"  send lag behind schedule ms  p50 {lag['p50']:.3f}  p99 {lag['p99']:.3f}  max {lag['max']:.3f}")
    net = data.get("network")
    if net:
        added, rest = net["added_latency_ms"], net["backend_latency_ms"]
        users = ", ".join(f"{name} {n}" for name, n in net["profiles"].items())
        lines += [
            f"  network ({users}): latency added ms  p50 {added['p50']:.3f}  p99 {added['p99']:.3f}  max "
            f"{added['max']:.3f};  the rest ms  p50 {rest['p50']:.3f}  p99 {rest['p99']:.3f}  max {rest['max']:.3f}",
            f"  network: {net['split']} deliveries split, {net['unknown_split']} not (sender in another process); "
            f"{net['offline_spells']} offline spells, {net['handovers']} handovers",
        ]
    lines += _media_lines(data.get("media"))
    if data["operations"]:
        lines.append(f"  {'operation':<18}{'count':>9}{'fail':>7}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}")
        for name, op in data["operations"].items():
            lines.append(
                f"  {name:<18}{op['count']:>9}{op['failures']:>7}"
                f"{op['p50_ms']:>10.2f}{op['p95_ms']:>10.2f}{op['p99_ms']:>10.2f}"
            )
    back = data["reconnects"]
    for storm in back["storms"]:
        if not storm["happened"]:
            continue
        times = "  ".join(f"{share}% {_ms(storm[f'time_to_{share}pct_ms'])}" for share in reconnects.RETURN_SHARES)
        lines.append(
            f"  reconnect storm at {storm['at_s']:g} s ({storm['cause']}): {storm['reconnected']} of "
            f"{storm['affected']} back; back within  {times}  all {_ms(storm['time_to_all_ms'])}; "
            f"{storm['attempts']} tries, {storm['failures']} failed; {storm['recovered']} messages recovered"
        )
    suspect = data["generator"].get("suspect")
    for reason in suspect["reasons"] if suspect else ():
        unit = reason["unit"]
        lines.append(
            f"  SUSPECT RUN: {reason['process']} process {reason['measure']} {reason['value']:g} {unit} over "
            f"{reason['threshold']:g} {unit} for {reason['seconds_over']:g} s from {reason['at_s']:g} s"
        )
    for name, series in (data.get("soak") or {}).get("series", {}).items():
        if series["slope_per_hour"] is not None:
            lines.append(
                f"  soak {name}: {_amount(series['slope_per_hour'], series['unit'], '+')}/h "
                f"(r² {series['r2']:.2f}, {series['samples']} samples), {_amount(series['start'], series['unit'])} → "
                f"{_amount(series['end'], series['unit'])}: {series['verdict']}"
            )
    partial = data.get("partial")
    if partial:
        for worker in partial["lost_workers"]:
            lines.append(
                f"  PARTIAL RESULTS: worker {worker['index']} ({worker['worker']}) was lost "
                f"{worker['lost_after_s']} s into the run; its figures up to {worker['last_report_after_s']} s are kept"
            )
        if partial["missing_workers"]:
            lines.append(f"  PARTIAL RESULTS: no final figures from {', '.join(partial['missing_workers'])}")
    return "\n".join(lines)


def _media_lines(audio: dict | None) -> list[str]:
    if not audio:
        return []
    frames, delay, jitter = audio["frames"], audio["frame_delay_ms"], audio["jitter_ms"]
    first, seat = audio["first_audio_join_ms"], audio["first_audio_seat_ms"]
    lost, late = _percent(audio["loss_rate"]), _percent(audio["late_rate"])
    return [
        f"  audio ({audio['transport']}, {audio['listeners']['decoding']} listeners decoding, "
        f"{audio['listeners']['counting']} counting): frames sent {frames['sent']}  heard {frames['received']}  "
        f"lost {frames['lost']} ({lost})  late {frames['late']} ({late})  counted {frames['counted']}",
        f"  audio: first audio after join ms  p50 {first['p50']:.1f}  p95 {first['p95']:.1f}  (n {first['count']});  "
        f"after a seat ms  p50 {seat['p50']:.1f}  p95 {seat['p95']:.1f}  (n {seat['count']})",
        f"  audio: frame delay ms  p50 {delay['p50']:.1f}  p99 {delay['p99']:.1f};  jitter ms  p50 {jitter['p50']:.2f}"
        f"  p99 {jitter['p99']:.2f};  stalls {audio['stalls']}, stall rate {_percent(audio['stall_rate'])} of "
        f"{audio['listening_s']:.0f} s listened",
    ]


def _percent(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{fraction * 100:.2f} %"


def _ms(value: float | None) -> str:
    return "never" if value is None else f"{value:.0f} ms"


def _amount(value: float, unit: str, sign: str = "") -> str:
    """A soak figure as people read it: bytes in MiB, counts as they are."""
    if unit == "bytes":
        return f"{value / 2**20:{sign}.1f} MiB"
    return f"{value:{sign}g} {unit}"
