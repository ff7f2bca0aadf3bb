"""A run's results folder, written while the run goes: what it was, and how it went, interval by interval.

``run.json`` is written when the test starts: the command, profile and SLO file (their text,
not only their paths), options, versions and machine, so the run can be repeated and a report
can say what it measured. ``timeseries.jsonl`` gets one line every ``--series-interval``
seconds, flushed at once, so a run that crashes keeps every interval it finished; the final
histograms are rewritten now and then for the same reason. ``summary.json`` comes at the end
(docs/summary.md). A standalone process or a distributed master writes the folder; workers
only report to the master.

Each line holds what happened within its interval: counts are differences, latency quantiles
are those of the interval's own deliveries, taken from the difference of the run's HDR
histograms (the merged ones on a master), so a spike shows where it happened instead of
being averaged into the whole run.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import platform
import socket
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import IO

import numpy
import orjson
from hdrh.histogram import HdrHistogram

from loadgen.accounting import CountsSince
from loadgen.redact import args_for_display, url_for_display

log = logging.getLogger("loadgen.record")

SCHEMA_VERSION = 1
RUN_FILE = "run.json"
SERIES_FILE = "timeseries.jsonl"
#: how often the final histograms are rewritten during the run, seconds
HISTOGRAMS_EVERY = 30.0
#: the percentiles each interval records
PERCENTILES = (("p50", 50.0), ("p95", 95.0), ("p99", 99.0))


class IntervalHistogram:
    """What a cumulative HDR histogram gained since the last look, as quantiles."""

    def __init__(self) -> None:
        self._since = CountsSince()

    def take(self, histogram: HdrHistogram) -> dict:
        gained = self._since.take(histogram)
        count = int(gained.sum())
        stats: dict = {"count": count}
        if count == 0:
            return stats | {name: None for name, _ in PERCENTILES} | {"max": None}
        cumulative = numpy.cumsum(gained)
        for name, percentile in PERCENTILES:
            # hdrh's rule: the first slot where the running count reaches the percentile's share
            wanted = max(int(percentile * count / 100 + 0.5), 1)
            stats[name] = _ms(histogram, int(numpy.searchsorted(cumulative, wanted)))
        stats["max"] = _ms(histogram, int(numpy.searchsorted(cumulative, count)))
        return stats


def _ms(histogram: HdrHistogram, index: int) -> float:
    return histogram.get_highest_equivalent_value(histogram.get_value_from_index(index)) / 1000


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in ("loadgen", "locust", "gevent", "websockets"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "unknown"
    return found


def _machine() -> dict:
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = None
    return {"hostname": socket.gethostname(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "memory_bytes": memory}  # fmt: skip


def _read_text(path: str | None) -> str | None:
    if not path:
        return None
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError:
        return None


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class Recorder:
    """Writes one test's results folder; ``tick`` once a second, ``close`` at the end."""

    def __init__(self, folder: Path, interval: float) -> None:
        self.folder = folder
        self.interval = interval
        self._series: IO[bytes] | None = None
        self._last_tick: float | None = None
        self._last_histograms = -math.inf
        self._counts: dict[str, int] = {}
        self._operations: dict[str, tuple[int, int, int]] = {}
        self._violations = 0
        self._delivery = IntervalHistogram()
        self._operation_histograms: dict[str, IntervalHistogram] = {}
        self._stage: str | None = None

    def start(self, context) -> None:
        """run.json, and an empty time series (a second test into the same folder starts afresh)."""
        options = context.options
        profile_path = context.profile.path
        slo_path = getattr(options, "slo", None)
        described = {
            "schema": SCHEMA_VERSION,
            "run_id": context.run_id,
            "scenario": context.scenario,
            "started": _iso(context.started_wall),
            "command": args_for_display(sys.argv),
            "host": url_for_display(context.environment.host),
            "locustfile": getattr(options, "locustfile", None),
            "profile": {"path": profile_path, "text": _read_text(profile_path)},
            "slo": {"path": slo_path, "text": _read_text(slo_path)},
            "options": context.option_values(),
            "versions": _versions(),
            "machine": _machine(),
            "role": "master" if context.is_master else "standalone",
        }
        target = self.folder
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            target = self.folder / RUN_FILE
            target.write_bytes(orjson.dumps(described, option=orjson.OPT_INDENT_2) + b"\n")
            target = self.folder / SERIES_FILE
            self._series = open(target, "wb")  # noqa: SIM115  (open for the whole run)
        except OSError as exc:
            log.error("Cannot record the run: %s: %s; the run goes on, its other files are tried apart", target,
                      exc.strerror)  # fmt: skip
            self._series = None
        self._last_tick = time.monotonic()
        # the first line brings the first histograms: a run killed early still has some
        self._last_histograms = -math.inf

    def stage(self, text: str) -> None:
        """The load target changed: noted on the next line."""
        self._stage = text

    def tick(self, context, force: bool = False) -> None:
        """Append a line when an interval has passed (or now, with ``force``); rewrite the histograms now and then."""
        if self._last_tick is None:
            return
        now = time.monotonic()
        elapsed = now - self._last_tick
        if not force and elapsed < self.interval:
            return
        self._last_tick = now
        if self._series is not None:
            try:
                self._series.write(orjson.dumps(self._line(context, elapsed)) + b"\n")
                self._series.flush()
            except OSError as exc:
                self._series_failed(exc)
        # the histograms are a file of their own: a time series that could not be written stops nothing else
        if force or now - self._last_histograms >= HISTOGRAMS_EVERY:
            self._last_histograms = now
            context.write_histograms()

    def close(self, context) -> None:
        """The last, partial interval, then no more lines."""
        self.tick(context, force=True)
        self._close_series()

    def _close_series(self) -> None:
        if self._series is not None:
            try:
                self._series.close()
            except OSError as exc:
                self._series_failed(exc)
            self._series = None

    def _series_failed(self, exc: OSError) -> None:
        """Said once; no more lines are tried, so a disk that stays full is not retried every interval."""
        log.error("Stopped recording the time series: cannot write %s: %s; the run goes on without it",
                  self.folder / SERIES_FILE, exc.strerror)  # fmt: skip
        series, self._series = self._series, None
        if series is not None:
            # what its buffer still holds cannot be written either; closing must not raise it again
            with contextlib.suppress(OSError):
                series.close()

    def _line(self, context, elapsed: float) -> dict:
        accounting = context.accounting
        counts = vars(accounting.counts)
        messages = {k: counts[k] - self._counts.get(k, 0) for k in ("sent", "delivered", "lost", "duplicated",
                                                                   "out_of_order", "recovered")}  # fmt: skip
        self._counts = dict(counts)
        operations = {}
        for name, stats in sorted(accounting.operations.items()):
            refusals = sum(stats.refusals.values())
            count, failures, refused = self._operations.get(name, (0, 0, 0))
            self._operations[name] = (stats.count, stats.failures, refusals)
            interval = self._operation_histograms.setdefault(name, IntervalHistogram()).take(stats.histogram)
            if stats.count == count:
                continue
            operations[name] = {
                "count": stats.count - count,
                "failures": stats.failures - failures,
                "refusals": refusals - refused,
                **{f"{key}_ms": interval[key] for key, _ in PERCENTILES},
            }
        violations = sum(context.violations.values())
        line = {
            "t": round(time.monotonic() - context.started_mono, 3),
            "time": _iso(time.time()),
            "interval_s": round(elapsed, 3),
            **context.load_now(),
            "messages": messages,
            "delivery_ms": self._delivery.take(accounting.latency),
            "operations": operations,
            "violations": violations - self._violations,
            "slo_failing": [result.name for result in context.slo_results if not result.passed],
            # the newest samples behind the soak verdict: each process's RSS, the backend's series
            "soak": context.soak.latest(),
        }
        self._violations = violations
        if self._stage is not None:
            line["stage"], self._stage = self._stage, None
        return line


__all__ = ["IntervalHistogram", "Recorder", "RUN_FILE", "SERIES_FILE"]
