"""Reading a results folder: the summary, histograms, run record and time series of one run.

Only the summary is needed to compare; a report can also be made from the time series alone
(a run that crashed before its summary was written). Whatever is missing or damaged is noted,
in words, for the report to show rather than to fail on.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from loadgen.report import _stats
from loadgen.report._stats import Distribution

SUMMARY, HISTOGRAMS, RUN, SERIES = "summary.json", "histograms.json", "run.json", "timeseries.jsonl"
#: a generator this busy, or this late on its own schedule, measures itself as much as the backend
SATURATED_CPU_PERCENT = 90.0
SATURATED_LOOP_LAG_MS = 100.0
PERCENTILES = (50.0, 95.0, 99.0)


class ResultsError(ValueError):
    """A results folder, or a file in it, that cannot be used; the message names the file."""


@dataclass
class Run:
    path: Path
    summary: dict | None
    histograms: dict | None
    info: dict | None  # run.json
    series: list[dict]
    notes: list[str] = field(default_factory=list)  # what is missing or damaged, in words
    _distributions: dict[str, Distribution | None] = field(default_factory=dict, repr=False)

    @property
    def complete(self) -> bool:
        return self.summary is not None

    @property
    def scenario(self) -> str:
        return str(_first(self.summary, self.info, key="scenario") or "unknown scenario")

    @property
    def run_id(self) -> str:
        return str(_first(self.summary, self.info, key="run_id") or "")

    @property
    def label(self) -> str:
        return f"{self.scenario} {self.run_id}".strip()

    @property
    def operations(self) -> dict[str, dict]:
        if self.summary is not None:
            return self.summary.get("operations") or {}
        return totals_from_series(self.series)["operations"]

    def distribution(self, name: str | None) -> Distribution | None:
        """The full distribution of delivery latency (``None``) or of an operation; None when not kept."""
        key = name or ""
        if key not in self._distributions:
            self._distributions[key] = self._decode(name)
        return self._distributions[key]

    def _decode(self, name: str | None) -> Distribution | None:
        if self.histograms is None:
            return None
        text = (
            self.histograms.get("delivery_latency")
            if name is None
            else (self.histograms.get("operations") or {}).get(name)
        )
        if not isinstance(text, str) or not text:
            return None
        key = "delivery_latency" if name is None else f"operations.{name}"
        try:
            found = _stats.decode(text)
        except Exception as exc:  # hdrh raises bare errors of several kinds on a damaged string
            raise ResultsError(f"{self.path / HISTOGRAMS}: {key}: not an encoded HDR histogram ({exc})") from exc
        return found if found.total else None

    def saturated(self) -> list[dict]:
        """The intervals in which the generator itself was saturated: its results there are suspect."""
        return [row for row in self.series if is_saturated(row)]


def _first(*sources: dict | None, key: str):
    for source in sources:
        if source and source.get(key) is not None:
            return source[key]
    return None


def number(value) -> float | None:
    """A JSON number as a float; None for null, text, booleans, NaN."""
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(value)


def is_saturated(row: dict) -> bool:
    cpu, lag = number(row.get("cpu_percent")), number(row.get("loop_lag_ms"))
    return (cpu is not None and cpu >= SATURATED_CPU_PERCENT) or (lag is not None and lag >= SATURATED_LOOP_LAG_MS)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ResultsError(f"{path}: cannot read: {exc.strerror}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f"{path}:{exc.lineno}" if isinstance(exc, json.JSONDecodeError) else str(path)
        raise ResultsError(f"{where}: not valid JSON: {getattr(exc, 'msg', exc)}") from exc
    if not isinstance(data, dict):
        raise ResultsError(f"{path}: not a JSON object")
    return data


def _read_series(path: Path, notes: list[str]) -> list[dict]:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise ResultsError(f"{path}: cannot read: {exc.strerror}") from exc
    rows, bad = [], []
    for number_, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict) and number(row.get("t")) is not None:
            rows.append(row)
        else:
            bad.append(number_)
    if bad:
        # the file is appended line by line, so a run killed mid-write leaves a cut last line
        notes.append(f"{SERIES}: {len(bad)} unreadable line(s) skipped (line {', '.join(map(str, bad[:5]))})")
    return sorted(rows, key=lambda row: row["t"])


def load_run(path: str | Path, need_summary: bool = False) -> Run:
    """Read a results folder; :class:`ResultsError` when it cannot make a report (or, with
    ``need_summary``, a comparison)."""
    folder = Path(path)
    if not folder.is_dir():
        raise ResultsError(f"{folder}: no such results folder")
    notes: list[str] = []
    summary = _read_json(folder / SUMMARY) if (folder / SUMMARY).exists() else None
    has_series = (folder / SERIES).exists()
    if summary is None and (need_summary or not has_series):
        also = "" if need_summary else f" (nor {SERIES})"
        raise ResultsError(f"{folder / SUMMARY}: missing{also}: not the results folder of a finished run")
    if summary is None:
        notes.append(
            f"{SUMMARY} is missing: the run did not finish (it crashed or was killed). "
            f"The figures below come from {SERIES} up to its last line."
        )
    histograms = _read_json(folder / HISTOGRAMS) if (folder / HISTOGRAMS).exists() else None
    if histograms is None:
        notes.append(f"{HISTOGRAMS} is missing: no full latency distributions (percentile curves).")
    info = _read_json(folder / RUN) if (folder / RUN).exists() else None
    if info is None:
        notes.append(
            f"{RUN} is missing: the command, profile and SLO text, versions and machine of the run "
            "were not recorded (an older loadgen, or a run that never got to start)."
        )
    series = _read_series(folder / SERIES, notes) if has_series else []
    if not has_series:
        notes.append(f"{SERIES} is missing: no charts over time (an older loadgen, or a run that never got to start).")
    return Run(folder, summary, histograms, info, series, notes)


# --- figures from the time series ----------------------------------------------------------

MESSAGE_OUTCOMES = ("sent", "delivered", "lost", "duplicated", "out_of_order", "recovered")


def _count(value) -> int:
    found = number(value)
    return 0 if found is None else int(found)


def totals_from_series(series: list[dict]) -> dict:
    """Counts added up over the time series: what is known of a run that wrote no summary."""
    messages = dict.fromkeys(MESSAGE_OUTCOMES, 0)
    operations: dict[str, dict] = {}
    violations = 0
    for row in series:
        for outcome in MESSAGE_OUTCOMES:
            messages[outcome] += _count((row.get("messages") or {}).get(outcome))
        for name, op in (row.get("operations") or {}).items():
            total = operations.setdefault(name, {"count": 0, "failures": 0})
            total["count"] += _count(op.get("count"))
            total["failures"] += _count(op.get("failures"))
        violations += _count(row.get("violations"))
    return {"messages": messages, "operations": operations, "violations": violations}


def timed(op: dict) -> int:
    """An interval's or run's timed samples of an operation: failures and refusals are not timed."""
    refusals = op.get("refusals")
    refused = sum(_count(n) for n in refusals.values()) if isinstance(refusals, dict) else _count(refusals)
    return _count(op.get("count")) - _count(op.get("failures")) - refused


def interval_quantiles(series: list[dict], name: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Per interval with samples: p50, p95, p99 and max (NaN when not kept) in ms, and the sample count."""
    rows, counts = [], []
    for row in series:
        if name is None:
            part = row.get("delivery_ms") or {}
            n, keys = _count(part.get("count")), ("p50", "p95", "p99", "max")
        else:
            part = (row.get("operations") or {}).get(name) or {}
            n, keys = timed(part), ("p50_ms", "p95_ms", "p99_ms", "max_ms")
        values = [number(part.get(k)) for k in keys]
        if n > 0 and None not in values[:3]:
            rows.append([math.nan if v is None else v for v in values])
            counts.append(n)
    return np.array(rows, dtype=float).reshape(-1, 4), np.array(counts, dtype=float)


def interval_counts(series: list[dict], numerator, denominator) -> tuple[np.ndarray, np.ndarray]:
    """Two per-interval counts (functions of a row), for ratios over intervals."""
    return (
        np.array([numerator(row) for row in series], dtype=float),
        np.array([denominator(row) for row in series], dtype=float),
    )
