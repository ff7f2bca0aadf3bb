"""Charts drawn with matplotlib into inline SVG: no script, no font or file fetched, prints as drawn.

Every function takes plain data and returns one ``<svg>`` element as text, or None when there is
nothing to draw. Figures are built with the object API (no pyplot and its global state), and each
SVG's ids get a prefix of its own, since the page holds many SVGs in one id space.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from loadgen.report._results import is_saturated, number
from loadgen.report._stats import Distribution

# Okabe-Ito colours: told apart with colour blindness and in grey print
BLUE, ORANGE, VERMILLION, GREEN, PURPLE, SKY, GREY = (
    "#0072B2",
    "#E69F00",
    "#D55E00",
    "#009E73",
    "#CC79A7",
    "#56B4E9",
    "#666666",
)
QUANTILE_COLOURS = {"p50": BLUE, "p95": ORANGE, "p99": VERMILLION, "max": GREY}
BASELINE, CANDIDATE = BLUE, VERMILLION
SATURATED_BAND = "#F0E442"
CYCLE = (BLUE, ORANGE, GREEN, VERMILLION, PURPLE, SKY, GREY, "#000000")

_STYLE = {
    "svg.fonttype": "none",  # text stays text: searchable, selectable, small
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Liberation Sans", "Arial", "Helvetica"],
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#dddddd",
    "grid.linewidth": 0.6,
    "legend.frameon": False,
    "legend.fontsize": 8,
    "lines.linewidth": 1.4,
}


def _svg(figure: Figure, name: str) -> str:
    out = io.StringIO()
    figure.savefig(out, format="svg", metadata={"Date": None, "Creator": None})
    text = out.getvalue()
    text = text[text.index("<svg") :]
    # one id space for the whole page: prefix every id and every reference to one
    prefix = re.sub(r"[^a-zA-Z0-9_-]", "-", name) + "-"
    text = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{prefix}{m[1]}"', text)
    text = re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{prefix}{m[1]})", text)
    text = re.sub(r'href="#([^"]+)"', lambda m: f'href="#{prefix}{m[1]}"', text)
    # scale with the page; the viewBox keeps the proportions
    text = re.sub(r'^<svg([^>]*?) width="[^"]*" height="[^"]*"', r'<svg\1 width="100%"', text, count=1)
    return text.replace("<svg", f'<svg role="img" aria-label="{name}"', 1)


def _legend(ax, ncols: int = 3, handles=None, labels=None, fontsize: float | None = None) -> None:
    """A legend above the axes, where it never hides data."""
    args = () if handles is None else (handles, labels)
    ax.legend(*args, loc="lower left", bbox_to_anchor=(0, 1.0), ncols=ncols, borderaxespad=0.2, fontsize=fontsize)


def _figure(rows: int = 1, columns: int = 1, height: float = 2.8, sharex: bool = True):
    """A figure and its grid of axes; call inside :func:`render`, whose style it takes."""
    figure = Figure(figsize=(9.0, height * rows), layout="constrained")
    return figure, figure.subplots(rows, columns, sharex=sharex, squeeze=False)


def render(name: str, draw) -> str:
    """Build a chart inside the house style and return its SVG."""
    with matplotlib.rc_context({**_STYLE, "svg.hashsalt": name}):
        figure = draw()
        # data artists (the labelled ones) are marked apart from axes, ticks, grid and guide lines, so a
        # reader (or a test) can find them
        artists = [
            artist
            for ax in figure.axes
            for artist in (*ax.lines, *ax.collections)
            if not str(artist.get_label()).startswith("_")
        ]
        for number_, artist in enumerate(artists):
            artist.set_gid(f"data-{number_}")
        return _svg(figure, name)


# --- time axis -----------------------------------------------------------------------------


def _time_scale(series: Sequence[dict]) -> tuple[float, str]:
    end = max((number(row.get("t")) or 0.0) for row in series)
    return (60.0, "minutes since start") if end > 900 else (1.0, "seconds since start")


def _time_axis(ax, label: str) -> None:
    """Every chart over time starts at the run's start, so charts one above the other line up."""
    ax.set_xlabel(label)
    ax.set_xlim(left=0)


def _times(series: Sequence[dict], scale: float) -> np.ndarray:
    return np.array([(number(row.get("t")) or 0.0) / scale for row in series])


def _rate_rows(series: Sequence[dict]) -> list[dict]:
    """Rows fit for per-second rates: a last, very short interval (the run stopping) would spike."""
    lengths = [number(row.get("interval_s")) or 0.0 for row in series]
    usual = float(np.median([x for x in lengths if x > 0])) if any(x > 0 for x in lengths) else 0.0
    return [row for row, x in zip(series, lengths, strict=True) if x > 0 and x >= usual / 4]


def _shade_saturated(ax, series: Sequence[dict], scale: float, label: bool = False) -> None:
    first = True
    for row in series:
        if is_saturated(row):
            end = (number(row.get("t")) or 0.0) / scale
            start = end - (number(row.get("interval_s")) or 0.0) / scale
            ax.axvspan(
                start,
                end,
                color=SATURATED_BAND,
                alpha=0.45,
                lw=0,
                label="generator saturated: results suspect" if label and first else None,
            )
            first = False


def _stages(ax, series: Sequence[dict], scale: float) -> None:
    for row in series:
        stage = row.get("stage")
        if isinstance(stage, str) and stage:
            x = (number(row.get("t")) or 0.0) / scale - (number(row.get("interval_s")) or 0.0) / scale
            ax.axvline(x, color=GREY, lw=0.8, ls=":")
            ax.annotate(
                stage,
                (x, 1.0),
                xycoords=("data", "axes fraction"),
                rotation=90,
                va="top",
                ha="right",
                fontsize=7,
                color=GREY,
            )


def _values(series: Sequence[dict], get) -> np.ndarray:
    out = []
    for row in series:
        value = get(row)
        out.append(np.nan if value is None else value)
    return np.array(out, dtype=float)


def _ms(part: dict | None, key: str) -> float | None:
    return None if not part else number(part.get(key))


# --- one run over time --------------------------------------------------------------------


def users_and_throughput(series: Sequence[dict], name: str = "users-throughput") -> str | None:
    if not series:
        return None
    scale, xlabel = _time_scale(series)

    def draw():
        figure, axes = _figure(rows=2, height=2.2)
        users_ax, rate_ax = axes[0][0], axes[1][0]
        # the run starts from no users at time 0
        x = np.concatenate([[0.0], _times(series, scale)])
        users = np.concatenate([[0.0], _values(series, lambda r: number(r.get("users")))])
        target = _values(series, lambda r: number(r.get("target_users")))
        if not np.all(np.isnan(target)):
            users_ax.step(x[1:], target, where="pre", color=GREY, ls="--", lw=1, label="target")
        users_ax.plot(x, users, color=BLUE, label="users")
        users_ax.set_ylabel("users")
        users_ax.set_ylim(bottom=0)
        _stages(users_ax, series, scale)
        rows = _rate_rows(series)
        xr = _times(rows, scale)

        def per_s(count):
            return _values(rows, lambda r: count(r) / (number(r.get("interval_s")) or 1.0))

        messages = [(lambda r, k=k: number((r.get("messages") or {}).get(k)) or 0.0) for k in ("sent", "delivered")]
        rates = [
            ("messages sent/s", BLUE, per_s(messages[0])),
            ("messages delivered/s", GREEN, per_s(messages[1])),
            (
                "operations/s",
                ORANGE,
                per_s(lambda r: sum(number(op.get("count")) or 0.0 for op in (r.get("operations") or {}).values())),
            ),
        ]
        for label, colour, values in rates:
            rate_ax.plot(xr, values, color=colour, label=label)
        if any(np.nansum(values) > 0 for _, _, values in rates):
            # messages sent, their fan-out and all operations differ by orders of magnitude
            rate_ax.set_yscale("log", nonpositive="mask")
            rate_ax.set_ylabel("per second (log)")
        else:
            rate_ax.set_ylabel("per second")
        _time_axis(rate_ax, xlabel)
        for ax in (users_ax, rate_ax):
            _shade_saturated(ax, series, scale)
            _legend(ax)
        return figure

    return render(name, draw)


def quantiles_over_time(series: Sequence[dict], operation: str | None, name: str) -> str | None:
    """p50, p95 and p99 per interval of delivery latency (``operation`` None) or of an operation."""
    if not series:
        return None
    scale, xlabel = _time_scale(series)
    part = _part(operation)
    found = [_values(series, lambda r, q=q: _ms(part(r), _key(operation, q))) for q in ("p50", "p95", "p99")]
    if all(np.all(np.isnan(v)) for v in found):
        return None

    def draw():
        figure, axes = _figure(height=2.6)
        ax = axes[0][0]
        x = _times(series, scale)
        for q, values in zip(("p50", "p95", "p99"), found, strict=True):
            ax.plot(x, values, color=QUANTILE_COLOURS[q], marker=".", ms=3, label=q)
        _shade_saturated(ax, series, scale)
        ax.set_ylabel("ms")
        ax.set_ylim(bottom=0)
        _time_axis(ax, xlabel)
        _legend(ax)
        return figure

    return render(name, draw)


def _part(operation: str | None):
    if operation is None:
        return lambda row: row.get("delivery_ms") or {}
    return lambda row: (row.get("operations") or {}).get(operation) or {}


def _key(operation: str | None, quantile: str) -> str:
    return quantile if operation is None else f"{quantile}_ms"


def operations_over_time(series: Sequence[dict], operations: Sequence[str], name: str = "operations") -> str | None:
    """Small multiples: p50, p95, p99 per interval of each operation."""
    if not series or not operations:
        return None
    scale, xlabel = _time_scale(series)
    columns = min(3, len(operations))
    rows = -(-len(operations) // columns)

    def draw():
        figure, axes = _figure(rows=rows, columns=columns, height=1.9)
        x = _times(series, scale)
        for index, op in enumerate(operations):
            ax = axes[index // columns][index % columns]
            for q in ("p50", "p95", "p99"):
                values = _values(series, lambda r, q=q, op=op: _ms(_part(op)(r), _key(op, q)))
                ax.plot(x, values, color=QUANTILE_COLOURS[q], marker=".", ms=2, lw=1, label=q)
            _shade_saturated(ax, series, scale)
            ax.set_title(op, loc="left", fontsize=8)
            ax.set_ylim(bottom=0)
            if index % columns == 0:
                ax.set_ylabel("ms")
        for index in range(len(operations), rows * columns):
            axes[index // columns][index % columns].set_visible(False)
        for ax in axes[-1]:
            _time_axis(ax, xlabel)
        figure.legend(*axes[0][0].get_legend_handles_labels(), loc="outside upper left", ncols=3)
        return figure

    return render(name, draw)


def anomalies_over_time(series: Sequence[dict], name: str = "anomalies") -> str | None:
    """Lost, duplicated, out-of-order messages, broken invariants and operation failures per interval."""
    if not series:
        return None
    scale, xlabel = _time_scale(series)

    def draw():
        figure, axes = _figure(height=2.6)
        ax = axes[0][0]
        x = _times(series, scale)
        lines = [
            ("lost", VERMILLION, lambda r: (r.get("messages") or {}).get("lost")),
            ("duplicated", ORANGE, lambda r: (r.get("messages") or {}).get("duplicated")),
            ("out of order", PURPLE, lambda r: (r.get("messages") or {}).get("out_of_order")),
            ("invariant violations", "#000000", lambda r: r.get("violations")),
            (
                "operation failures",
                SKY,
                lambda r: sum(number(op.get("failures")) or 0.0 for op in (r.get("operations") or {}).values()),
            ),
        ]
        top = 0.0
        for label, colour, get in lines:
            values = _values(series, lambda r, get=get: number(get(r)) or 0.0)
            top = max(top, float(np.nanmax(values)) if len(values) else 0.0)
            ax.step(x, values, where="pre", color=colour, label=label)
        _shade_saturated(ax, series, scale)
        ax.set_ylim(0, max(top * 1.15, 1.0))
        ax.set_ylabel("per interval")
        _time_axis(ax, xlabel)
        _legend(ax)
        return figure

    return render(name, draw)


def generator_health(series: Sequence[dict], name: str = "generator") -> str | None:
    """CPU, event-loop lag and memory of the generator, with the saturated intervals shaded."""
    if not series:
        return None
    scale, xlabel = _time_scale(series)

    def draw():
        figure, axes = _figure(rows=2, height=2.0)
        cpu_ax, rss_ax = axes[0][0], axes[1][0]
        x = _times(series, scale)
        cpu = _values(series, lambda r: number(r.get("cpu_percent")))
        lag = _values(series, lambda r: number(r.get("loop_lag_ms")))
        cpu_ax.plot(x, cpu, color=BLUE, marker=".", ms=3, label="CPU % of one core (busiest process)")
        cpu_ax.axhline(90, color=BLUE, lw=0.8, ls=":")
        cpu_ax.set_ylabel("CPU %")
        cpu_ax.set_ylim(0, max(110.0, float(np.nanmax(cpu)) * 1.1 if not np.all(np.isnan(cpu)) else 110.0))
        lag_ax = cpu_ax.twinx()
        lag_ax.grid(False)
        lag_ax.spines["right"].set_visible(True)
        lag_ax.plot(x, lag, color=ORANGE, marker=".", ms=3, label="event-loop lag ms")
        lag_ax.axhline(100, color=ORANGE, lw=0.8, ls=":")
        lag_ax.set_ylabel("loop lag ms")
        lag_ax.set_ylim(0, max(120.0, float(np.nanmax(lag)) * 1.1 if not np.all(np.isnan(lag)) else 120.0))
        _shade_saturated(cpu_ax, series, scale, label=True)
        handles = cpu_ax.get_legend_handles_labels()
        more = lag_ax.get_legend_handles_labels()
        _legend(cpu_ax, 3, handles[0] + more[0], handles[1] + more[1])
        rss_ax.plot(x, _values(series, lambda r: number(r.get("rss_mb"))), color=GREEN, label="RSS MB")
        rss_ax.set_ylabel("RSS MB")
        rss_ax.set_ylim(bottom=0)
        _time_axis(rss_ax, xlabel)
        _shade_saturated(rss_ax, series, scale)
        return figure

    return render(name, draw)


# --- distributions -------------------------------------------------------------------------

_PERCENTILE_TICKS = (0.0, 90.0, 99.0, 99.9, 99.99, 99.999, 99.9999)


def _hdr_axis(ax, top: float) -> None:
    ax.set_xscale("log")
    ticks = [1 / (1 - p / 100) for p in _PERCENTILE_TICKS if 1 / (1 - p / 100) <= top * 1.01]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{100 * (1 - 1 / x):.10g}%"))
    ax.set_xlim(1, max(top, 10.0))


def _curve(ax, distribution: Distribution, colour: str, label: str) -> float:
    percentiles, values = distribution.curve()
    x = 1 / (1 - percentiles / 100)
    ax.plot(x, values / 1000, color=colour, label=label, drawstyle="steps-post")
    return float(x[-1])


def percentile_curves(curves: dict[str, Distribution], name: str) -> str | None:
    """HDR percentile curves (value against 1/(1-p) on a log axis) of one or several distributions."""
    curves = {label: d for label, d in curves.items() if d is not None and d.total}
    if not curves:
        return None

    def draw():
        figure, axes = _figure(height=2.8)
        ax = axes[0][0]
        top = 10.0
        colours = (BASELINE, CANDIDATE) if len(curves) == 2 else CYCLE
        for (label, distribution), colour in zip(curves.items(), colours * 4, strict=False):
            top = max(top, _curve(ax, distribution, colour, f"{label} (n={distribution.total})"))
        _hdr_axis(ax, top)
        ax.set_ylabel("ms")
        ax.set_ylim(bottom=0)
        ax.set_xlabel("percentile")
        _legend(ax, 2)
        return figure

    return render(name, draw)


def percentile_grid(panels: dict[str, dict[str, Distribution | None]], name: str) -> str | None:
    """Small multiples of HDR percentile curves: one panel per operation, one curve per run."""
    panels = {title: {k: d for k, d in curves.items() if d is not None and d.total} for title, curves in panels.items()}
    panels = {title: curves for title, curves in panels.items() if curves}
    if not panels:
        return None
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)

    def draw():
        figure, axes = _figure(rows=rows, columns=columns, height=1.9, sharex=False)
        for index, (title, curves) in enumerate(panels.items()):
            ax = axes[index // columns][index % columns]
            top = 10.0
            colours = (BASELINE, CANDIDATE) if len(curves) == 2 else (BLUE,)
            for (label, distribution), colour in zip(curves.items(), colours * 2, strict=False):
                top = max(top, _curve(ax, distribution, colour, label))
            _hdr_axis(ax, top)
            ax.tick_params(axis="x", labelsize=6)
            ax.set_ylim(bottom=0)
            ax.set_title(title, loc="left", fontsize=8)
            if index % columns == 0:
                ax.set_ylabel("ms")
            if len(curves) > 1 and index == 0:
                figure.legend(*ax.get_legend_handles_labels(), loc="outside upper left", ncols=2)
        for index in range(len(panels), rows * columns):
            axes[index // columns][index % columns].set_visible(False)
        return figure

    return render(name, draw)


# --- two runs over time --------------------------------------------------------------------


def overlay_over_time(
    baseline: Sequence[dict], candidate: Sequence[dict], operation: str | None, quantiles: Sequence[str], name: str
) -> str | None:
    """One figure's quantiles per interval for both runs on one time axis (time since each run's start)."""
    if not baseline or not candidate:
        return None
    scale, xlabel = _time_scale([*baseline, *candidate])
    part = _part(operation)

    def draw():
        figure, axes = _figure(height=2.8)
        ax = axes[0][0]
        styles = {"p50": ":", "p95": "--", "p99": "-"}
        for label, series, colour in (("baseline", baseline, BASELINE), ("candidate", candidate, CANDIDATE)):
            x = _times(series, scale)
            for q in quantiles:
                values = _values(series, lambda r, q=q: _ms(part(r), _key(operation, q)))
                ax.plot(x, values, color=colour, ls=styles.get(q, "-"), marker=".", ms=3, label=f"{label} {q}")
            _shade_saturated(ax, series, scale)
        ax.set_ylabel("ms")
        ax.set_ylim(bottom=0)
        _time_axis(ax, xlabel)
        _legend(ax, len(quantiles))
        return figure

    return render(name, draw)


def throughput_overlay(baseline: Sequence[dict], candidate: Sequence[dict], name: str = "throughput") -> str | None:
    """Users and messages sent per second of both runs: the load each offered."""
    if not baseline or not candidate:
        return None
    scale, xlabel = _time_scale([*baseline, *candidate])

    def draw():
        figure, axes = _figure(rows=2, height=1.8)
        users_ax, sent_ax = axes[0][0], axes[1][0]
        for label, series, colour in (("baseline", baseline, BASELINE), ("candidate", candidate, CANDIDATE)):
            x = np.concatenate([[0.0], _times(series, scale)])
            users = np.concatenate([[0.0], _values(series, lambda r: number(r.get("users")))])
            users_ax.plot(x, users, color=colour, label=f"{label} users")
            rows = _rate_rows(series)
            sent = _values(
                rows,
                lambda r: (number((r.get("messages") or {}).get("sent")) or 0.0) / (number(r.get("interval_s")) or 1),
            )
            sent_ax.plot(_times(rows, scale), sent, color=colour, marker=".", ms=3, label=f"{label} messages sent/s")
        users_ax.set_ylabel("users")
        sent_ax.set_ylabel("sent/s")
        for ax in (users_ax, sent_ax):
            ax.set_ylim(bottom=0)
            _legend(ax, 2)
        _time_axis(sent_ax, xlabel)
        return figure

    return render(name, draw)
