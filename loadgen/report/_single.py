"""The report of one run: the verdict first, then the charts over time, the distributions, the
operations and what it takes to run it again."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import yaml

from loadgen.report import _charts
from loadgen.report._html import (
    Raw,
    banner,
    chart,
    esc,
    fmt_count,
    fmt_ms,
    fmt_rate,
    key_values,
    page,
    table,
    write_html,
)
from loadgen.report._results import Run, number, timed, totals_from_series
from loadgen.slo import SloError, loads_slo

#: what a run's exit code means without an SLO file (README, DESIGN.md's result contract)
EXIT_CODES = {
    0: "clean, by Locust's convention",
    1: "failures recorded, by Locust's convention",
    2: "a usage or configuration error",
    3: "the backend could not be reached",
}
#: operations drawn over time one by one; the table below the charts lists every one
TIME_PANELS = 9


def _threshold(check: dict):
    """The check's condition as the SLO module reads it; None when it cannot be re-read."""
    name, expr = str(check.get("name") or ""), str(check.get("expr") or "")
    if not name.endswith(" " + expr):
        return None
    figure = name[: -len(expr) - 1]
    try:
        return loads_slo(yaml.safe_dump({figure: [expr]}), "<summary>").checks[0].condition
    except (SloError, yaml.YAMLError):
        return None


def _margin(check: dict) -> str:
    """How far the value is from the threshold, in the condition's unit: headroom or excess."""
    condition, value = _threshold(check), number(check.get("value"))
    if condition is None or value is None:
        return check.get("note") or ""
    gap = value - condition.threshold
    if condition.op in ("<", "<="):
        gap = -gap
    elif condition.op in ("==", "!="):
        return "" if gap == 0 else f"{abs(gap):g}{condition.unit} off"
    word = "headroom" if check.get("passed") else "misses by"
    share = f" ({abs(gap) / condition.threshold:.0%})" if condition.threshold else ""
    return f"{word} {_plain(abs(gap))}{condition.unit}{share}"


def _plain(value: float) -> str:
    """A number as people write it: 297.8, 0.0012, 999,988 (never 1e+06)."""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def _value(check: dict) -> str:
    value = number(check.get("value"))
    if value is None:
        return check.get("note") or "no data"
    condition = _threshold(check)
    unit = condition.unit if condition is not None else ""
    return f"{_plain(value)}{unit}"


def verdict_section(run: Run) -> list[str]:
    summary = run.summary or {}
    slo = summary.get("slo") or {}
    out = ['<section id="verdict">', "<h2>Verdict</h2>"]
    checks = slo.get("checks") or []
    if not run.complete:
        out.append('<div class="badge fail">NO VERDICT: RUN INCOMPLETE</div>')
    elif slo.get("passed") is True:
        passed = sum(1 for c in checks if c.get("passed"))
        out.append(
            f'<div class="badge pass">SLO PASSED</div> <span class="muted">{passed} of {len(checks)} checks '
            f"passed; exit code {esc(summary.get('exit_code'))}</span>"
        )
    elif slo.get("passed") is False:
        failed = sum(1 for c in checks if not c.get("passed"))
        out.append(
            f'<div class="badge fail">SLO FAILED</div> <span class="muted">{failed} of {len(checks)} checks '
            f"failed; exit code {esc(summary.get('exit_code'))}</span>"
        )
    else:
        code = summary.get("exit_code")
        word = EXIT_CODES.get(code, "see README")
        out.append(
            f'<div class="badge none">NO SLO FILE</div> <span class="muted">exit code {esc(code)} ({word})</span>'
        )
    out += _banners(run)
    if checks:
        rows = []
        for check in checks:
            ok = bool(check.get("passed"))
            rows.append(
                (
                    check.get("name"),
                    _value(check),
                    _margin(check),
                    Raw("pass" if ok else "FAIL", "pass" if ok else "fail"),
                    "abort on fail" if check.get("abort_on_fail") else "",
                )
            )
        out.append(
            table(
                ("check", "value", "margin", "verdict", ""),
                rows,
                numeric=(1,),
                row_class=lambda row: "pass" if row[3].text == "pass" else "fail",
            )
        )
        if slo.get("file"):
            out.append(f'<p class="muted">SLO file: <code>{esc(slo["file"])}</code></p>')
    out.append("<h3>At a glance</h3>")
    out.append(key_values(_glance(run)))
    out.append("</section>")
    return out


def _banners(run: Run) -> list[str]:
    summary = run.summary or {}
    out = []
    if not run.complete:
        last = run.series[-1].get("t") if run.series else None
        out.append(
            banner(
                "Incomplete:",
                f"no summary.json: the run stopped without writing it (crashed or killed). "
                f"What follows is the time series up to {last} s.",
                fail=True,
            )
        )
    if summary.get("error"):
        out.append(banner("Backend unreachable:", str(summary["error"]), fail=True))
    if summary.get("aborted"):
        out.append(banner("Aborted:", str(summary["aborted"]), fail=True))
    if summary.get("interrupted"):
        out.append(banner("Interrupted:", "the run was stopped by hand (Ctrl-C or SIGTERM) before its time."))
    partial = summary.get("partial")
    if partial:
        lost = [w.get("worker") for w in partial.get("lost_workers") or []]
        missing = partial.get("missing_workers") or []
        out.append(
            banner(
                "Partial results:",
                f"workers' figures are missing: lost mid-run {lost or 'none'}, "
                f"no final figures {missing or 'none'}. The verdict covers part of the load.",
                fail=True,
            )
        )
    saturated = run.saturated()
    if saturated:
        out.append(
            banner(
                "Generator saturated:",
                f"in {len(saturated)} of {len(run.series)} intervals the generator "
                "was at or past its limits (CPU ≥ 90% or event-loop lag ≥ 100 ms): results there are "
                "suspect. See Generator health.",
            )
        )
    elif (number((summary.get("generator") or {}).get("cpu_max_percent")) or 0) >= 90:
        out.append(banner("Generator busy:", "the generator's peak CPU reached 90%: check its health below."))
    if run.notes:
        items = "".join(f"<li>{esc(note)}</li>" for note in run.notes)
        out.append(
            f'<div class="banner"><strong>Missing from this report:</strong><ul class="tight">{items}</ul></div>'
        )
    return out


def _glance(run: Run) -> list[tuple[str, str]]:
    summary = run.summary
    if summary is None:
        totals = totals_from_series(run.series)
        messages = totals["messages"]
        pairs = [("duration (series)", f"{run.series[-1].get('t', 0):.1f} s" if run.series else "—")]
        pairs += [(f"messages {k.replace('_', ' ')}", fmt_count(v)) for k, v in messages.items()]
        pairs.append(("invariant violations", fmt_count(totals["violations"])))
        return pairs
    messages = summary.get("messages") or {}
    # with nothing delivered the summary's percentiles are zeros, not measurements
    latency = (messages.get("delivery_latency_ms") or {}) if number(messages.get("delivered")) else {}
    operations = summary.get("operations") or {}
    count = sum(number(op.get("count")) or 0 for op in operations.values())
    failures = sum(number(op.get("failures")) or 0 for op in operations.values())
    duration = number(summary.get("duration_s")) or 0.0
    sent = number(messages.get("sent")) or 0.0
    pairs = [
        ("duration", f"{duration:.1f} s"),
        ("peak users", fmt_count(summary.get("users_peak"))),
        ("messages sent", fmt_count(sent)),
        ("sent per second", f"{sent / duration:,.1f}" if duration else "—"),
        ("delivered", fmt_count(messages.get("delivered"))),
        ("lost", fmt_count(messages.get("lost"))),
        ("duplicated", fmt_count(messages.get("duplicated"))),
        ("out of order", fmt_count(messages.get("out_of_order"))),
        ("recovered from history", fmt_count(messages.get("recovered"))),
        ("delivery p50", fmt_ms(latency.get("p50"))),
        ("delivery p95", fmt_ms(latency.get("p95"))),
        ("delivery p99", fmt_ms(latency.get("p99"))),
        ("delivery p99.9", fmt_ms(latency.get("p999"))),
        ("delivery max", fmt_ms(latency.get("max"))),
        ("operations", fmt_count(count)),
        ("error rate", fmt_rate(failures / count) if count else "—"),
        ("invariant violations", fmt_count((summary.get("invariants") or {}).get("violations"))),
        ("generator peak CPU", f"{number((summary.get('generator') or {}).get('cpu_max_percent')) or 0:g}%"),
    ]
    uncertain = number(messages.get("uncertain"))
    if uncertain:
        pairs.append(("deliveries timed apart (clock uncertain)", fmt_count(uncertain)))
    return pairs


def _main_operations(run: Run) -> list[str]:
    """The operations drawn over time: the busiest, with anything that failed or was slow first."""
    ops = run.operations
    ranked = sorted(
        ops, key=lambda name: (-(number(ops[name].get("failures")) or 0), -(number(ops[name].get("count")) or 0))
    )
    return ranked[:TIME_PANELS]


def over_time_section(run: Run) -> list[str]:
    out = ['<section id="over-time">', "<h2>Over time</h2>"]
    if not run.series:
        out.append('<p class="muted">No time series in this results folder: nothing to draw over time.</p>')
        out.append("</section>")
        return out
    series = run.series
    out.append("<h3>Users and throughput</h3>")
    out.append(
        chart(
            "users-throughput",
            _charts.users_and_throughput(series),
            "Users (with the target of the load shape) and rates per second of each interval; "
            "dotted lines mark stages of the load shape.",
        )
    )
    out.append("<h3>Delivery latency</h3>")
    out.append(
        chart(
            "delivery-over-time",
            _charts.quantiles_over_time(series, None, "delivery-over-time"),
            "End-to-end delivery latency of the messages delivered in each interval.",
            missing="No message was delivered: no delivery latency to draw.",
        )
    )
    ops = [op for op in _main_operations(run) if any((row.get("operations") or {}).get(op) for row in series)]
    out.append("<h3>Operation latency</h3>")
    out.append(
        chart(
            "operations-over-time",
            _charts.operations_over_time(series, ops, "operations-over-time"),
            f"p50, p95 and p99 of each interval for the {len(ops)} busiest operations "
            "(every operation is in the table below).",
            missing="No operation was timed: no operation latency to draw.",
        )
    )
    out.append("<h3>Loss, duplicates, order and invariants</h3>")
    out.append(
        chart(
            "anomalies-over-time",
            _charts.anomalies_over_time(series),
            "Counts per interval: lost, duplicated and out-of-order messages, broken invariants and "
            "failed operations. A flat line at zero is the goal.",
        )
    )
    out.append("<h3>Generator health</h3>")
    out.append(
        chart(
            "generator-health",
            _charts.generator_health(series),
            "The generator's own CPU (busiest process, percent of one core), event-loop lag and memory. "
            "Shaded: intervals where it was saturated (CPU ≥ 90% or lag ≥ 100 ms).",
        )
    )
    saturated = run.saturated()
    if saturated:
        rows = [
            (
                f"{_start(r):.1f}–{number(r.get('t')) or 0:.1f} s",
                f"{number(r.get('cpu_percent')) or 0:g}%",
                fmt_ms(r.get("loop_lag_ms")),
            )
            for r in saturated
        ]
        out.append('<p class="warn">Generator saturated, results suspect in these intervals:</p>')
        out.append(table(("interval", "CPU", "loop lag"), rows, numeric=(1, 2)))
    else:
        out.append('<p class="muted">The generator was never saturated: its figures measure the backend.</p>')
    out.append("</section>")
    return out


def _start(row: dict) -> float:
    return (number(row.get("t")) or 0.0) - (number(row.get("interval_s")) or 0.0)


def distributions_section(run: Run) -> list[str]:
    out = ['<section id="distributions">', "<h2>Latency distributions</h2>"]
    if run.histograms is None:
        out.append('<p class="muted">No histograms.json: the full distributions were not kept.</p>')
        out.append("</section>")
        return out
    out.append(
        chart(
            "delivery-distribution",
            _charts.percentile_curves({"delivery latency": run.distribution(None)}, "delivery-distribution"),
            "HDR percentile curve of end-to-end delivery latency over the whole run: the latency at "
            "each percentile, the tail stretched out to the right.",
            missing="No message was delivered: no delivery latency to draw.",
        )
    )
    panels = {name: {name: run.distribution(name)} for name in sorted(run.operations)}
    out.append(
        chart(
            "operation-distributions",
            _charts.percentile_grid(panels, "operation-distributions"),
            "HDR percentile curves of every timed operation.",
            missing="No operation was timed: no operation latency to draw.",
        )
    )
    out.append("</section>")
    return out


def operations_section(run: Run) -> list[str]:
    out = ['<section id="operations">', "<h2>Operations</h2>"]
    ops = run.operations
    if not ops:
        out.append('<p class="muted">No operation was performed.</p></section>')
        return out
    rows = []
    for name in sorted(ops):
        op = ops[name]
        refusals = op.get("refusals")
        refused = ", ".join(f"{k} {v}" for k, v in refusals.items()) if isinstance(refusals, dict) else ""
        failures = number(op.get("failures")) or 0
        rows.append(
            (
                name,
                fmt_count(op.get("count")),
                Raw(fmt_count(failures), "fail" if failures else ""),
                refused,
                fmt_count(timed(op)),
                fmt_ms(op.get("p50_ms")),
                fmt_ms(op.get("p95_ms")),
                fmt_ms(op.get("p99_ms")),
                fmt_ms(op.get("max_ms")),
            )
        )
    out.append(
        table(
            ("operation", "count", "failures", "refusals", "timed", "p50", "p95", "p99", "max"),
            rows,
            numeric=(1, 2, 4, 5, 6, 7, 8),
        )
    )
    if not run.complete:
        out.append('<p class="muted">Counts from the time series; percentiles need the summary.</p>')
    out.append("</section>")
    return out


def reproduce_section(run: Run) -> list[str]:
    out = ['<section id="reproduce">', "<h2>Reproduce this run</h2>"]
    info = run.info
    summary = run.summary or {}
    if info is None:
        out.append(
            '<p class="muted">No run.json: the command, profile and SLO text, versions and machine were '
            "not recorded. What the summary says:</p>"
        )
        out.append(
            key_values(
                [
                    ("scenario", str(summary.get("scenario") or "—")),
                    ("host", str(summary.get("host") or "—")),
                    ("profile", str(summary.get("profile") or "none")),
                    ("SLO file", str((summary.get("slo") or {}).get("file") or "none")),
                ]
            )
        )
        out.append("</section>")
        return out
    command = info.get("command")
    if isinstance(command, list) and command:
        out.append("<h3>Command</h3>")
        out.append(f"<pre>{esc(shlex.join(str(part) for part in command))}</pre>")
    out.append(
        key_values(
            [
                ("scenario", str(info.get("scenario") or "—")),
                ("locustfile", str(info.get("locustfile") or "—")),
                ("host", str(info.get("host") or "—")),
                ("role", str(info.get("role") or "—")),
                ("started", str(info.get("started") or "—")),
                ("run id", str(info.get("run_id") or "—")),
            ]
        )
    )
    for title, key in (("Profile", "profile"), ("SLO file", "slo")):
        part = info.get(key) or {}
        out.append(f"<h3>{title}</h3>")
        if part.get("text"):
            out.append(f'<p class="muted"><code>{esc(part.get("path"))}</code></p><pre>{esc(part["text"])}</pre>')
        elif part.get("path"):
            out.append(f'<p class="muted"><code>{esc(part["path"])}</code> (its text was not kept)</p>')
        else:
            out.append('<p class="muted">none</p>')
    options = info.get("options")
    if isinstance(options, dict) and options:
        out.append("<h3>Options</h3>")
        out.append(key_values([(k, json.dumps(v)) for k, v in sorted(options.items())]))
    versions = info.get("versions")
    if isinstance(versions, dict) and versions:
        out.append("<h3>Versions</h3>")
        out.append(key_values([(str(k), str(v)) for k, v in versions.items()]))
    machine = info.get("machine")
    if isinstance(machine, dict) and machine:
        out.append("<h3>Machine</h3>")
        pairs = []
        for k, v in machine.items():
            shown = f"{v / 2**30:.1f} GiB" if k == "memory_bytes" and number(v) else str(v)
            pairs.append((k.replace("_bytes", ""), shown))
        out.append(key_values(pairs))
    out.append("</section>")
    return out


def header(run: Run, title: str) -> list[str]:
    summary = run.summary or {}
    info = run.info or {}
    started = summary.get("started") or info.get("started") or "—"
    host = summary.get("host") or info.get("host") or "—"
    return [
        "<header>",
        f"<h1>{esc(title)}</h1>",
        f'<p class="sub">{esc(run.scenario)} · run {esc(run.run_id or "—")} · started {esc(started)} · '
        f"host <code>{esc(host)}</code> · results <code>{esc(run.path)}</code></p>",
        "</header>",
    ]


def report_html(run: Run) -> str:
    title = f"Stress review: {run.scenario}" + ("" if run.complete else " (INCOMPLETE)")
    body = [
        *header(run, title),
        *verdict_section(run),
        *over_time_section(run),
        *distributions_section(run),
        *operations_section(run),
        *reproduce_section(run),
    ]
    return page(f"{title} {run.run_id}", body)


def write_report(run: Run, output: Path) -> None:
    write_html(report_html(run), output)
