"""The soak verdict: does memory, or anything else a leak grows, trend upward over the run?

Every generator process samples its own resident memory every ``--series-interval``; with
``--backend-metrics URL`` the master (or standalone process) also scrapes the backend's
Prometheus endpoint at the same pace for its resident memory, open file descriptors,
threads or goroutines and connections. At the end each series gets a least-squares line
over the samples after the warm-up (``--soak-warmup``: memory grows while pools, caches and
connections fill), and the summary's ``soak`` block gives its slope per hour in base units,
the fit's r², the first and last values, the growth the line implies over the window and a
verdict. Thresholds live in the SLO file as ordinary checks (``soak.backend_fds: ["growth
< 5%"]``), so a leak fails the run (docs/validity.md).
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from array import array
from dataclasses import dataclass

import gevent
import numpy
import psutil
from prometheus_client.parser import text_string_to_metric_families

from loadgen.errors import ConfigError

log = logging.getLogger("loadgen")

GENERATOR_RSS = "generator_rss"
#: backend series -> the metric names that feed it, first found wins; a process_* name also
#: matches with any namespace prefix (the reference backend's refserver_process_open_fds)
BACKEND_SERIES: dict[str, tuple[str, ...]] = {
    "backend_rss": ("process_resident_memory_bytes",),
    "backend_fds": ("process_open_fds",),
    "backend_threads": ("go_goroutines", "process_threads"),
    "backend_connections": ("refserver_connections",),
}
UNITS = {GENERATOR_RSS: "bytes", "backend_rss": "bytes", "backend_fds": "fds", "backend_threads": "threads",
         "backend_connections": "connections"}  # fmt: skip
#: below this many samples after the warm-up a series has no verdict (and a leak check on it fails)
MIN_SAMPLES = 5
#: a fit this good with growth this large (either way) over the window is a trend, not noise
TREND_R2 = 0.5
TREND_GROWTH_PERCENT = 1.0
SECONDS_PER_HOUR = 3600.0

OPTIONS: tuple[tuple[str, dict], ...] = (
    ("--backend-metrics", {"metavar": "URL", "default": None,
                           "help": "the backend's Prometheus endpoint (http or https): scraped every "
                                   "--series-interval for the soak verdict's backend series (docs/validity.md)"}),
    ("--soak-warmup", {"metavar": "SECONDS|PERCENT", "default": "10%",
                       "help": "leave this much of the start out of the soak trends: seconds, or a share of "
                               "the run such as 10%% (default 10%%)"}),
)  # fmt: skip


@dataclass(frozen=True)
class Settings:
    interval: float = 2.0
    warmup_seconds: float | None = None
    warmup_fraction: float | None = 0.1
    backend_url: str | None = None

    @property
    def warmup(self) -> str:
        if self.warmup_fraction is not None:
            return f"{self.warmup_fraction * 100:g}%"
        return f"{self.warmup_seconds:g}s"


def settings_from(options) -> Settings:
    """The soak settings from the command line; a bad value raises ConfigError naming its option."""
    interval = getattr(options, "series_interval", 2.0) or 2.0
    text = str(getattr(options, "soak_warmup", "10%") or "0").strip()
    found = re.fullmatch(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(%|s?)", text)
    if found is None:
        raise ConfigError("--soak-warmup", None, "", f"cannot read {text!r}: give seconds (120) or a share (10%)")
    number = float(found[1])
    if found[2] == "%" and number >= 100:
        raise ConfigError("--soak-warmup", None, "", f"a share of the run must be below 100%, got {text}")
    url = getattr(options, "backend_metrics", None)
    if url is not None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError("--backend-metrics", None, "", f"must be an http:// or https:// URL, got {url!r}")
    if found[2] == "%":
        return Settings(interval, None, number / 100, url)
    return Settings(interval, number, None, url)


# --- the fit ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trend:
    """A least-squares line through (seconds, value) samples."""

    slope: float  # units per second
    intercept: float  # the line's value at t = 0
    r2: float  # share of the variance the line explains; 0 for a flat series
    samples: int
    first_t: float
    last_t: float
    first: float
    last: float

    def at(self, t: float) -> float:
        return self.intercept + self.slope * t


def fit(times, values) -> Trend | None:
    """The least-squares line through samples at ``times``; None for fewer than two distinct times.

    Sums are taken about the means, so large values (bytes) keep their precision.
    """
    t = numpy.asarray(times, dtype=float)
    v = numpy.asarray(values, dtype=float)
    if len(t) < 2:
        return None
    dt, dv = t - t.mean(), v - v.mean()
    stt, svv, stv = float(dt @ dt), float(dv @ dv), float(dt @ dv)
    if stt == 0:
        return None
    slope = stv / stt
    r2 = 0.0 if svv == 0 else min(stv * stv / (stt * svv), 1.0)
    intercept = float(v.mean()) - slope * float(t.mean())
    return Trend(slope, intercept, r2, len(t), float(t[0]), float(t[-1]), float(v[0]), float(v[-1]))


def warmup_end(times, settings: Settings) -> float:
    """Where the warm-up ends: a share of the span sampled, or a number of seconds into the test."""
    if len(times) == 0:
        return 0.0
    if settings.warmup_fraction is not None:
        return times[0] + (times[-1] - times[0]) * settings.warmup_fraction
    return settings.warmup_seconds or 0.0


def judge(times, values, settings: Settings, unit: str) -> dict:
    """One series of the summary's ``soak`` block: its trend past the warm-up."""
    t = numpy.asarray(times, dtype=float)
    v = numpy.asarray(values, dtype=float)
    first = int(numpy.searchsorted(t, warmup_end(t, settings), side="left"))
    t, v = t[first:], v[first:]
    trend = fit(t, v) if len(t) >= MIN_SAMPLES else None
    block: dict = {"unit": unit, "samples": len(t)}
    if trend is None:
        return block | {"slope_per_hour": None, "r2": None, "start": _number(v[0]) if len(v) else None,
                        "end": _number(v[-1]) if len(v) else None, "growth_percent": None, "from_s": None,
                        "to_s": None, "verdict": "too_few_samples"}  # fmt: skip
    fitted_start = trend.at(trend.first_t)
    growth = trend.at(trend.last_t) - fitted_start
    percent = growth / fitted_start * 100 if fitted_start > 0 else None
    if trend.r2 >= TREND_R2 and percent is not None and abs(percent) >= TREND_GROWTH_PERCENT:
        verdict = "growing" if percent > 0 else "shrinking"
    else:
        verdict = "steady"
    return block | {
        "slope_per_hour": _round(trend.slope * SECONDS_PER_HOUR),
        "r2": round(trend.r2, 4),
        "start": _number(trend.first),
        "end": _number(trend.last),
        "growth_percent": None if percent is None else _round(percent),
        "from_s": round(trend.first_t, 1),
        "to_s": round(trend.last_t, 1),
        "verdict": verdict,
    }


def _round(value: float) -> float:
    return float(f"{value:.6g}")


def _number(value: float) -> float | int:
    value = float(value)
    return int(value) if value.is_integer() else round(value, 3)


# --- sampling ----------------------------------------------------------------------------------


class Series:
    """(seconds into the test, value) samples in two flat arrays: a day at 2 s is 700 KB."""

    __slots__ = ("times", "values")

    def __init__(self) -> None:
        self.times = array("d")
        self.values = array("d")

    def add(self, t: float, value: float) -> None:
        self.times.append(t)
        self.values.append(value)

    def judge(self, settings: Settings, unit: str) -> dict:
        # numpy reads the arrays in place: fitting a day of samples takes a millisecond
        return judge(numpy.frombuffer(self.times), numpy.frombuffer(self.values), settings, unit)

    def __len__(self) -> int:
        return len(self.times)


def read_backend(text: str) -> dict[str, tuple[str, float]]:
    """Each backend series found in a Prometheus exposition: the metric used and its value (labels summed)."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.type not in ("gauge", "unknown"):
            continue
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    found = {}
    for series, names in BACKEND_SERIES.items():
        for name in names:
            matches = [m for m in totals if m == name or (name.startswith("process_") and m.endswith("_" + name))]
            if matches:
                metric = min(matches, key=len)
                found[series] = (metric, totals[metric])
                break
    return found


class Watch:
    """One process's soak samples: its own RSS always, the backend's metrics where it scrapes them."""

    def __init__(self, settings: Settings, scrapes_backend: bool) -> None:
        self.settings = settings
        self.rss = Series()
        self.backend: dict[str, Series] | None = None
        if scrapes_backend and settings.backend_url is not None:
            self.backend = {name: Series() for name in BACKEND_SERIES}
        self.metrics: dict[str, str] = {}
        self.last_backend: dict[str, float] = {}
        #: worker tag -> its soak state as last reported (master only)
        self.workers: dict[str, dict] = {}
        self._process = psutil.Process(os.getpid())
        self._last_sample = -math.inf
        self._failing = False
        self._said_failing = False

    def tick(self, at_s: float) -> None:
        """Sample the generator's RSS when an interval has passed since the last sample."""
        if at_s - self._last_sample < self.settings.interval:
            return
        self._last_sample = at_s
        self.rss.add(at_s, float(self._process.memory_info().rss))

    def scrape_forever(self, context) -> None:
        """The backend's endpoint every interval, for as long as the test runs (killed with it)."""
        while True:
            started = time.monotonic()
            self.scrape(started - context.started_mono)
            gevent.sleep(max(self.settings.interval - (time.monotonic() - started), 0.05))

    def scrape(self, at_s: float) -> None:
        """One scrape; a failure is logged the first time only and the run goes on without that sample."""
        url = self.settings.backend_url
        if self.backend is None or url is None:
            return
        try:
            with urllib.request.urlopen(url, timeout=min(self.settings.interval, 5.0)) as response:
                text = response.read().decode("utf-8", "replace")
            found = read_backend(text)
        except (OSError, ValueError, urllib.error.URLError) as exc:
            if not self._said_failing:
                self._said_failing = True
                log.warning("--backend-metrics %s: %s; the soak verdict lacks the samples it misses "
                            "(said once)", url, getattr(exc, "reason", None) or exc)  # fmt: skip
            self._failing = True
            return
        if self._failing:
            self._failing = False
            log.info("--backend-metrics %s answers again", url)
        self.last_backend = {}
        for series, (metric, value) in found.items():
            self.metrics[series] = metric
            self.backend[series].add(at_s, value)
            self.last_backend[series] = value

    def report(self) -> dict:
        """What a worker tells its master: its RSS trend and last sample."""
        return {"rss": self.rss.judge(self.settings, "bytes"),
                "last_rss": self.rss.values[-1] if self.rss else None}  # fmt: skip

    def latest(self) -> dict:
        """The newest samples, for a line of timeseries.jsonl."""
        rss = {"local": self.rss.values[-1] if self.rss else None}
        rss |= {tag: state["last_rss"] for tag, state in sorted(self.workers.items())}
        line: dict = {"rss_bytes": rss}
        if self.backend is not None:
            line["backend"] = dict(self.last_backend)
        return line

    def summary(self) -> dict:
        """The summary's ``soak`` block; a master's generator_rss is its worst process's."""
        settings = self.settings
        processes = {"local": self.rss.judge(settings, "bytes")}
        processes |= {tag: state["rss"] for tag, state in sorted(self.workers.items())}
        worst = max(processes, key=lambda name: _slope_order(processes[name]))
        series: dict = {GENERATOR_RSS: {**processes[worst], "process": worst, "processes": processes}}
        if self.backend is not None:
            for name, samples in self.backend.items():
                series[name] = {**samples.judge(settings, UNITS[name]), "metric": self.metrics.get(name)}
        return {"warmup": settings.warmup, "interval_s": settings.interval, "backend_metrics": settings.backend_url,
                "series": series}  # fmt: skip


def _slope_order(block: dict) -> float:
    slope = block["slope_per_hour"]
    return -math.inf if slope is None else slope


__all__ = [
    "BACKEND_SERIES",
    "GENERATOR_RSS",
    "MIN_SAMPLES",
    "OPTIONS",
    "Series",
    "Settings",
    "Trend",
    "Watch",
    "fit",
    "judge",
    "read_backend",
    "settings_from",
    "warmup_end",
]
