"""Two runs side by side: every figure of the baseline against the candidate, its difference, the
noise around that difference, and whether it is a regression.

A figure regresses when the candidate is worse by more than the tolerance allows *and* the
difference is beyond noise (its 95 % interval excludes zero; see ``_stats``). Latency
percentiles whose samples came in fewer than ``MIN_INTERVALS`` intervals of the time series
(typically all the connects of a short run's ramp) cannot be told from noise: a change beyond
tolerance there is reported as ``unsure``, never as a regression.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from loadgen.report import _charts, _stats
from loadgen.report._html import (
    Raw,
    banner,
    chart,
    esc,
    fmt_count,
    fmt_ms,
    fmt_rate,
    page,
    table,
    write_html,
)
from loadgen.report._results import (
    PERCENTILES,
    Run,
    interval_counts,
    interval_quantiles,
    number,
    timed,
)
from loadgen.report._tolerance import COUNT, DELIVERY, LATENCY, RATE, RATE_FIGURES, VIOLATIONS, Allowance, Tolerance

REGRESSED, IMPROVED, SAME, UNSURE, NOT_COMPARABLE, IGNORED, INFO = (
    "regressed",
    "improved",
    "same",
    "unsure",
    "not comparable",
    "ignored",
    "info",
)
#: options that shape the load: runs differing in them are not the same test
LOAD_OPTIONS = ("num_users", "spawn_rate", "run_time")
#: operations whose curves and time charts are overlaid, besides any that regressed
OVERLAID_OPERATIONS = 9


@dataclass
class Row:
    figure: str  # as SLO files name it: "delivery_latency p(99)", "room.join p(95)", "errors rate"
    kind: str  # LATENCY, RATE, COUNT or INFO
    baseline: float | None
    candidate: float | None
    verdict: str
    note: str = ""
    interval: _stats.Interval | None = None
    allowance: Allowance | None = None

    @property
    def difference(self) -> float | None:
        if self.baseline is None or self.candidate is None:
            return None
        return self.candidate - self.baseline


@dataclass
class Comparison:
    baseline: Run
    candidate: Run
    tolerance: Tolerance
    rows: list[Row] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def regressed(self) -> list[Row]:
        return [row for row in self.rows if row.verdict == REGRESSED]


# --- judging --------------------------------------------------------------------------------


def _judge(
    row: Row, allowance: Allowance, interval: _stats.Interval | None, why_unknown: str | None
) -> tuple[str, str]:
    """The verdict of a figure where higher is worse, and a note saying why."""
    diff = row.difference
    if allowance.ignore:
        return IGNORED, f"ignored by {allowance.source}"
    assert diff is not None and row.baseline is not None
    allowed = allowance.allowed(row.baseline)
    worse, better = diff > allowed, -diff > allowed
    if not worse and not better:
        beyond = interval is not None and interval.excludes_zero()
        return SAME, "within tolerance" + (", beyond noise" if beyond else "")
    if interval is None:
        return UNSURE, f"beyond tolerance, but {why_unknown or 'its noise is unknown'}"
    if worse and interval.low > 0:
        return REGRESSED, "beyond tolerance and noise"
    if better and interval.high < 0:
        return IMPROVED, "beyond tolerance and noise"
    return SAME, "beyond tolerance, within noise"


STATS = ("p(50)", "p(95)", "p(99)")


def _latency_rows(base: Run, cand: Run, tolerance: Tolerance, generator: np.random.Generator) -> list[Row]:
    rows: list[Row] = []
    for name in [None, *sorted(set(base.operations) | set(cand.operations))]:
        figure = DELIVERY if name is None else name
        values = [_percentiles(run, name) for run in (base, cand)]
        if values[0] is None or values[1] is None:
            note = _absence(base, cand, name, values)
            for i, stat in enumerate(STATS):
                shown = [None if v is None else v[i] for v in values]
                rows.append(Row(f"{figure} {stat}", LATENCY, shown[0], shown[1], NOT_COMPARABLE, note))
            continue
        distributions = [run.distribution(name) for run in (base, cand)]
        sampling = None
        if distributions[0] is not None and distributions[1] is not None:
            sampling = [d.resampled_percentiles(PERCENTILES, generator) / 1000 for d in distributions]
        over_time, too_few = _over_time(base, cand, name, generator)
        for i, stat in enumerate(STATS):
            row = Row(f"{figure} {stat}", LATENCY, values[0][i], values[1][i], SAME)
            row.allowance = tolerance.latency(figure, stat)
            sample_part = None if sampling is None else (sampling[0][:, i], sampling[1][:, i])
            time_part = None
            if over_time is not None:
                (base_estimate, base_resamples), (cand_estimate, cand_resamples) = over_time
                time_part = ((base_estimate[i], base_resamples[:, i]), (cand_estimate[i], cand_resamples[:, i]))
            if too_few is None and (sample_part is not None or time_part is not None):
                row.interval = _stats.difference_interval(row.difference, sample_part, time_part)
            unknown = too_few or "neither histograms.json nor timeseries.jsonl is in both folders"
            row.verdict, row.note = _judge(row, row.allowance, row.interval, unknown)
            rows.append(row)
    return rows


def _absence(base: Run, cand: Run, name: str | None, values: list) -> str:
    notes = []
    for label, run, found in (("baseline", base, values[0]), ("candidate", cand, values[1])):
        if found is not None:
            continue
        if name is None:
            notes.append(f"no message delivered in the {label}")
        elif name not in run.operations:
            notes.append(f"never performed in the {label}")
        else:
            notes.append(f"nothing timed in the {label}")
    return "; ".join(notes)


def _percentiles(run: Run, name: str | None) -> tuple[float, float, float] | None:
    """p50, p95, p99 in ms: from the full distribution when kept, else from the summary."""
    distribution = run.distribution(name)
    if distribution is not None:
        return tuple(distribution.percentile(p) / 1000 for p in PERCENTILES)
    summary = run.summary or {}
    if name is None:
        messages = summary.get("messages") or {}
        if not number(messages.get("delivered")):
            return None
        latency = messages.get("delivery_latency_ms") or {}
        found = [number(latency.get(k)) for k in ("p50", "p95", "p99")]
    else:
        op = (summary.get("operations") or {}).get(name)
        if not op or timed(op) <= 0:
            return None
        found = [number(op.get(k)) for k in ("p50_ms", "p95_ms", "p99_ms")]
    return None if None in found else tuple(found)


def _over_time(base: Run, cand: Run, name: str | None, generator: np.random.Generator):
    """Both runs' percentiles rebuilt from their intervals with their resamples, and None; or None
    and a sentence when the figure's samples came in too few intervals to estimate the noise.

    Both None when a run has no time series at all (an older run): sampling noise alone is used.
    """
    if not base.series or not cand.series:
        return None, None
    found = []
    for label, run in (("baseline", base), ("candidate", cand)):
        quantiles, counts = interval_quantiles(run.series, name)
        estimate = _stats.over_intervals(quantiles, counts, PERCENTILES, generator)
        if estimate is None:
            return None, (
                f"its samples came in {len(counts)} interval(s) of the {label}: too few to tell a change "
                f"from noise (needs {_stats.MIN_INTERVALS})"
            )
        found.append(estimate)
    return found, None


def _errors(row: dict) -> tuple[float, float]:
    ops = (row.get("operations") or {}).values()
    return sum(number(op.get("failures")) or 0 for op in ops), sum(number(op.get("count")) or 0 for op in ops)


def _rate_rows(base: Run, cand: Run, tolerance: Tolerance, generator: np.random.Generator) -> list[Row]:
    rows = []
    for figure in RATE_FIGURES:
        pairs = []
        for run in (base, cand):
            summary = run.summary or {}
            if figure == "errors":
                ops = (summary.get("operations") or {}).values()
                pairs.append(
                    (sum(number(o.get("failures")) or 0 for o in ops), sum(number(o.get("count")) or 0 for o in ops))
                )
            else:
                messages = summary.get("messages") or {}
                outcome = figure.removeprefix("messages.")
                pairs.append((number(messages.get(outcome)) or 0, number(messages.get("sent")) or 0))
        label = f"{figure} rate"
        if pairs[0][1] <= 0 or pairs[1][1] <= 0:
            what = "no operation" if figure == "errors" else "no message sent"
            rows.append(Row(label, RATE, None, None, NOT_COMPARABLE, f"{what} in one of the runs"))
            continue
        row = Row(label, RATE, pairs[0][0] / pairs[0][1], pairs[1][0] / pairs[1][1], SAME)
        sampling = tuple(_stats.binomial(int(n), int(d), generator) for n, d in pairs)
        time_part = None
        if base.series and cand.series:
            estimates = []
            for run in (base, cand):
                if figure == "errors":
                    numerators, denominators = interval_counts(
                        run.series, lambda r: _errors(r)[0], lambda r: _errors(r)[1]
                    )
                else:
                    outcome = figure.removeprefix("messages.")
                    numerators, denominators = interval_counts(
                        run.series,
                        lambda r, o=outcome: number((r.get("messages") or {}).get(o)) or 0,
                        lambda r: number((r.get("messages") or {}).get("sent")) or 0,
                    )
                estimates.append(_stats.ratio_over_intervals(numerators, denominators, generator))
            if all(e is not None for e in estimates):
                time_part = tuple(estimates)
        row.interval = _stats.difference_interval(row.difference, sampling, time_part)
        row.allowance = tolerance.figure(figure)
        row.verdict, row.note = _judge(row, row.allowance, row.interval, None)
        rows.append(row)
    return rows


def _violation_row(base: Run, cand: Run, tolerance: Tolerance) -> Row:
    counts = [number(((run.summary or {}).get("invariants") or {}).get("violations")) or 0 for run in (base, cand)]
    row = Row(f"{VIOLATIONS} count", COUNT, counts[0], counts[1], SAME)
    row.allowance = tolerance.figure(VIOLATIONS)
    # a broken invariant is a fact, not a sample: counts are compared as they are
    row.interval = _stats.Interval(row.difference, row.difference, "exact count")
    row.verdict, row.note = _judge(row, row.allowance, row.interval, None)
    return row


def _throughput_row(base: Run, cand: Run) -> Row:
    rates = []
    for run in (base, cand):
        summary = run.summary or {}
        duration = number(summary.get("duration_s")) or 0
        sent = number((summary.get("messages") or {}).get("sent")) or 0
        rates.append(sent / duration if duration > 0 else None)
    return Row("messages.sent per s", INFO, rates[0], rates[1], INFO, "shown for information: the load offered")


def _profile_warnings(base: Run, cand: Run) -> list[str]:
    warnings = []
    if base.scenario != cand.scenario:
        warnings.append(f"different scenarios: baseline {base.scenario}, candidate {cand.scenario}")
    if base.run_id and base.run_id == cand.run_id:
        warnings.append(f"both folders hold the same run ({base.run_id}): nothing can differ")
    if base.info is not None and cand.info is not None:
        texts = [(run.info.get("profile") or {}).get("text") for run in (base, cand)]
        paths = [(run.info.get("profile") or {}).get("path") for run in (base, cand)]
        if texts[0] is not None and texts[1] is not None:
            if texts[0] != texts[1]:
                warnings.append(f"different profiles: the text of {paths[0]} and of {paths[1]} differ")
        elif paths[0] != paths[1]:
            warnings.append(f"different profiles: baseline {paths[0] or 'none'}, candidate {paths[1] or 'none'}")
        locustfiles = [run.info.get("locustfile") for run in (base, cand)]
        if locustfiles[0] != locustfiles[1]:
            warnings.append(f"different locustfiles: baseline {locustfiles[0]}, candidate {locustfiles[1]}")
        options = [run.info.get("options") or {} for run in (base, cand)]
        for key in LOAD_OPTIONS:
            if options[0].get(key) != options[1].get(key):
                warnings.append(
                    f"different load: {key} {json.dumps(options[0].get(key))} in the baseline, "
                    f"{json.dumps(options[1].get(key))} in the candidate"
                )
    else:
        paths = [(run.summary or {}).get("profile") for run in (base, cand)]
        if paths[0] != paths[1]:
            warnings.append(f"different profiles: baseline {paths[0] or 'none'}, candidate {paths[1] or 'none'}")
        warnings.append("run.json missing: the profiles' text and load options cannot be checked to be the same")
    return warnings


def _run_warnings(label: str, run: Run) -> list[str]:
    summary = run.summary or {}
    out = []
    if summary.get("partial"):
        out.append(f"the {label} has partial results (a worker's figures are missing)")
    if summary.get("interrupted"):
        out.append(f"the {label} was interrupted before its time")
    if summary.get("aborted"):
        out.append(f"the {label} was aborted: {summary['aborted']}")
    if summary.get("error"):
        out.append(f"the {label} could not reach its backend: {summary['error']}")
    saturated = run.saturated()
    if saturated:
        out.append(f"the {label}'s generator was saturated in {len(saturated)} interval(s): its results are suspect")
    if not run.series:
        out.append(
            f"the {label} has no timeseries.jsonl: noise is estimated from sampling alone, which misses "
            "run-to-run variation"
        )
    return out


def compare(base: Run, cand: Run, tolerance: Tolerance) -> Comparison:
    generator = _stats.rng()
    result = Comparison(base, cand, tolerance)
    result.warnings = _profile_warnings(base, cand)
    result.warnings += _run_warnings("baseline", base) + _run_warnings("candidate", cand)
    for name in sorted(tolerance.operations() - set(base.operations) - set(cand.operations)):
        result.warnings.append(f"{tolerance.path} names {name}, which neither run performed")
    result.rows = [
        *_latency_rows(base, cand, tolerance, generator),
        *_rate_rows(base, cand, tolerance, generator),
        _violation_row(base, cand, tolerance),
        _throughput_row(base, cand),
    ]
    return result


# --- showing --------------------------------------------------------------------------------


def fmt_value(row: Row, value: float | None) -> str:
    if value is None:
        return "—"
    if row.kind == LATENCY:
        return fmt_ms(value)
    if row.kind == RATE:
        return fmt_rate(value)
    if row.kind == COUNT:
        return fmt_count(value)
    return f"{value:,.1f}"


def _signed(value: float) -> str:
    """A difference with as many decimals as its size deserves: +0.34, +5.2, +31, +1,204."""
    size = abs(value)
    if size >= 100:
        return f"{value:+,.0f}"
    if size >= 10:
        return f"{value:+.1f}"
    if size >= 0.01 or size == 0:
        return f"{value:+.2f}"
    return f"{value:+.2g}"


def fmt_change(row: Row) -> str:
    diff = row.difference
    if diff is None:
        return "—"
    if row.kind == RATE:
        return f"{_signed(diff * 100)} pp"
    text = {LATENCY: f"{_signed(diff)} ms", COUNT: f"{diff:+,.0f}"}.get(row.kind, _signed(diff))
    if row.baseline:
        text += f" ({diff / row.baseline:+.0%})"
    return text


def fmt_interval(row: Row) -> str:
    interval = row.interval
    if interval is None:
        return "—"
    if interval.source == "exact count":
        return "exact"
    if row.kind == RATE:
        return f"[{_signed(interval.low * 100)}, {_signed(interval.high * 100)}] pp"
    return f"[{_signed(interval.low)}, {_signed(interval.high)}] ms"


def fmt_allowed(row: Row) -> str:
    if row.allowance is None:
        return "—"
    return row.allowance.describe(row.kind)


def _is_operation(row: Row) -> bool:
    return row.kind == LATENCY and not row.figure.startswith(DELIVERY)


def verdict_table(result: Comparison) -> str:
    """The compact text table for the terminal: every figure but operations that did not move."""
    shown = [r for r in result.rows if not _is_operation(r) or r.verdict in (REGRESSED, IMPROVED, UNSURE)]
    quiet = len(result.rows) - len(shown)
    header = ("figure", "baseline", "candidate", "change", "noise 95%", "verdict")
    lines = [header] + [
        (
            r.figure,
            fmt_value(r, r.baseline),
            fmt_value(r, r.candidate),
            fmt_change(r),
            fmt_interval(r),
            r.verdict.upper() if r.verdict == REGRESSED else r.verdict,
        )
        for r in shown
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for line in lines:
        cells = [line[0].ljust(widths[0])] + [line[i].rjust(widths[i]) for i in range(1, 5)] + [line[5]]
        out.append("  ".join(cells).rstrip())
    if quiet:
        out.append(f"({quiet} more operation figures the same, not comparable or ignored: see the HTML)")
    regressed = result.regressed
    if regressed:
        out.append(f"REGRESSED: {', '.join(r.figure for r in regressed)}")
    else:
        out.append("No regression.")
    return "\n".join(out) + "\n"


_VERDICT_CLASS = {REGRESSED: "fail", IMPROVED: "pass", UNSURE: "warn"}


def _rows_table(rows: list[Row]) -> str:
    return table(
        ("figure", "baseline", "candidate", "change", "noise 95%", "allowed worse", "verdict", "why"),
        [
            (
                r.figure,
                fmt_value(r, r.baseline),
                fmt_value(r, r.candidate),
                fmt_change(r),
                fmt_interval(r),
                fmt_allowed(r),
                Raw(esc(r.verdict), _VERDICT_CLASS.get(r.verdict, "")),
                r.note,
            )
            for r in rows
        ],
        numeric=(1, 2, 3, 4),
        row_class=lambda row: "fail" if row[6].text == REGRESSED else None,
    )


def _side_by_side(base: Run, cand: Run) -> str:
    def facts(run: Run) -> dict[str, str]:
        summary, info = run.summary or {}, run.info or {}
        slo = summary.get("slo") or {}
        passed = slo.get("passed")
        versions = info.get("versions") or {}
        return {
            "results": str(run.path),
            "scenario": run.scenario,
            "run id": run.run_id or "—",
            "host": str(summary.get("host") or info.get("host") or "—"),
            "started": str(summary.get("started") or "—"),
            "duration": f"{number(summary.get('duration_s')) or 0:.1f} s",
            "peak users": fmt_count(summary.get("users_peak")),
            "profile": str((info.get("profile") or {}).get("path") or summary.get("profile") or "none"),
            "SLO": "none" if passed is None else "passed" if passed else "FAILED",
            "exit code": str(summary.get("exit_code")),
            "loadgen": str(versions.get("loadgen") or "—"),
            "machine": str((info.get("machine") or {}).get("hostname") or "—"),
        }

    left, right = facts(base), facts(cand)
    return table(("", "baseline", "candidate"), [(k, left[k], right[k]) for k in left])


def _charts_section(result: Comparison) -> list[str]:
    base, cand = result.baseline, result.candidate
    out = ['<section id="charts">', "<h2>Side by side</h2>"]
    if base.series and cand.series:
        out.append(
            chart(
                "throughput-overlay",
                _charts.throughput_overlay(base.series, cand.series),
                "Users and messages sent per second: the load both runs offered.",
            )
        )
        out.append(
            chart(
                "delivery-overlay",
                _charts.overlay_over_time(base.series, cand.series, None, ("p50", "p99"), "delivery-overlay"),
                "Delivery latency per interval, p50 (dotted) and p99, baseline and candidate.",
                missing="No message was delivered in one of the runs: no delivery latency to draw.",
            )
        )
    else:
        out.append('<p class="muted">A run has no time series: no charts over time.</p>')
    delivery = {"baseline": base.distribution(None), "candidate": cand.distribution(None)}
    out.append("<h3>Latency distributions</h3>")
    out.append(
        chart(
            "delivery-curves",
            _charts.percentile_curves(delivery, "delivery-curves"),
            "HDR percentile curves of delivery latency, baseline and candidate.",
            missing="A run has no histograms.json, or delivered no message: no delivery curves to draw.",
        )
    )
    regressed_ops = []
    for row in result.regressed:
        name = row.figure.split(" ")[0]
        if name != DELIVERY and name not in regressed_ops:
            regressed_ops.append(name)
    common = [
        n
        for n in sorted(base.operations, key=lambda n: -(number(base.operations[n].get("count")) or 0))
        if n in cand.operations
    ]
    shown = (
        regressed_ops
        + [n for n in common if n not in regressed_ops][: max(0, OVERLAID_OPERATIONS - len(regressed_ops))]
    )
    panels = {n: {"baseline": base.distribution(n), "candidate": cand.distribution(n)} for n in shown}
    out.append(
        chart(
            "operation-curves",
            _charts.percentile_grid(panels, "operation-curves"),
            "HDR percentile curves of operations (regressed ones first, then the busiest), "
            "baseline in blue, candidate in red.",
            missing="A run has no histograms.json, or the runs share no timed operation: no curves to draw.",
        )
    )
    if base.series and cand.series and regressed_ops:
        out.append("<h3>Regressed operations over time</h3>")
        for name in regressed_ops[:OVERLAID_OPERATIONS]:
            out.append(
                chart(
                    f"overlay-{name}",
                    _charts.overlay_over_time(base.series, cand.series, name, ("p50", "p99"), f"overlay-{name}"),
                    f"{name} latency per interval, p50 (dotted) and p99: regressed.",
                )
            )
    out.append("</section>")
    return out


def compare_html(result: Comparison) -> str:
    base, cand = result.baseline, result.candidate
    regressed = result.regressed
    body = [
        "<header>",
        "<h1>Comparison: candidate against baseline</h1>",
        f'<p class="sub">baseline <code>{esc(base.path)}</code> ({esc(base.label)}) · candidate '
        f"<code>{esc(cand.path)}</code> ({esc(cand.label)})</p>",
        "</header>",
        '<section id="verdict">',
        "<h2>Verdict</h2>",
    ]
    if regressed:
        body.append(f'<div class="badge fail">REGRESSED: {len(regressed)} figure(s)</div>')
        body.append(
            '<ul class="tight">'
            + "".join(
                f"<li><strong>{esc(r.figure)}</strong>: "
                f"{esc(fmt_value(r, r.baseline))} → {esc(fmt_value(r, r.candidate))} "
                f"({esc(fmt_change(r))}; allowed worse: {esc(fmt_allowed(r))}; noise {esc(fmt_interval(r))})</li>"
                for r in regressed
            )
            + "</ul>"
        )
    else:
        body.append('<div class="badge pass">NO REGRESSION</div>')
    for warning in result.warnings:
        loud = warning.startswith("different") or "same run" in warning
        body.append(banner("Warning:", warning, fail=loud))
    unsure = [r.figure for r in result.rows if r.verdict == UNSURE]
    if unsure:
        body.append(
            banner(
                "Unsure:",
                f"{', '.join(unsure)} moved beyond tolerance, but too few intervals held their "
                "samples to tell the change from noise. Run longer, or spread them over the run.",
            )
        )
    body.append("<h3>The runs</h3>")
    body.append(_side_by_side(base, cand))
    body.append("</section>")
    body.append('<section id="figures"><h2>Figures</h2>')
    groups = (
        ("Delivery latency", [r for r in result.rows if r.figure.startswith(DELIVERY)]),
        ("Messages, errors and invariants", [r for r in result.rows if r.kind in (RATE, COUNT, INFO)]),
        ("Operations", [r for r in result.rows if _is_operation(r)]),
    )
    for title, rows in groups:
        if rows:
            body.append(f"<h3>{esc(title)}</h3>")
            body.append(_rows_table(rows))
    body.append("</section>")
    body += _charts_section(result)
    body.append('<section id="method"><h2>How this was judged</h2>')
    source = result.tolerance.path or "the defaults (no --tolerance file)"
    body.append(
        "<p>A figure <strong>regressed</strong> when the candidate is worse than the baseline by more than it is "
        f"allowed (tolerance: {esc(source)}) <em>and</em> the 95% interval of the difference excludes zero. The "
        "interval is the wider of two bootstraps with a fixed seed: the full HDR distributions resampled "
        "(sampling noise), and the run's intervals resampled (noise over time: samples taken in the same seconds "
        "share their conditions). A figure whose samples came in fewer than "
        f"{_stats.MIN_INTERVALS} intervals cannot be told from noise and is <strong>unsure</strong> when it moved "
        "beyond tolerance. Violations are counts, compared exactly. Docs: docs/report.md.</p>"
    )
    body.append("</section>")
    return page(f"Comparison {base.label} → {cand.label}", body)


def write_compare(result: Comparison, output: Path) -> None:
    write_html(compare_html(result), output)
