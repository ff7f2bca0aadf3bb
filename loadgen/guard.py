"""The generator's validity guard: a run the generator could not drive is marked suspect, never passed silently.

A generator short of CPU does not fail: it falls behind, and its own delay shows up as the
backend's latency. So every process (standalone, master, each worker) watches itself once a
second on four measures and compares each with a threshold (docs/validity.md):

- ``cpu``: the process's CPU time over the last sample, in percent of one core (from
  ``os.times``: Locust's own reading comes every 10 s, too seldom for a sustained window);
- ``loop_lag``: how late gevent's hub woke the one-second housekeeping timer, in ms;
- ``schedule_lag``: the median lag of the posts sent during the sample behind their intended
  time, in ms. The median, not a tail: a user whose reply came late or who was reconnecting
  posts late on its own, a starved generator makes everyone late;
- ``queue``: callbacks ready to run in gevent's hub (libev's pending watchers: sockets with
  data, timers due) when the housekeeping timer fires. The transport has no send queue of
  its own (a send writes to the socket in the sending greenlet), and the kernel's send buffers
  fill when the *backend* reads slowly; work that is ready and waiting for the generator's
  CPU is the generator's own backlog.

A measure is *over* when ``window`` consecutive samples exceed its threshold, so one garbage
collection does not mark a run. A sample without a value (no post sent in that second)
neither extends nor breaks a streak. The first time a process goes over on a measure, one
WARNING says so; the summary's ``generator.suspect`` lists every such reason.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

import gevent

from loadgen.errors import ConfigError
from loadgen.record import IntervalHistogram

log = logging.getLogger("loadgen")

CPU, LOOP_LAG, SCHEDULE_LAG, QUEUE = "cpu", "loop_lag", "schedule_lag", "queue"
#: each measure's unit as the summary and the warnings give it
UNITS = {CPU: "%", LOOP_LAG: "ms", SCHEDULE_LAG: "ms", QUEUE: "callbacks"}
#: the process that writes the summary (standalone, or a distributed run's master) in reasons
LOCAL = "local"

OPTIONS: tuple[tuple[str, dict], ...] = (
    ("--guard-cpu", {"metavar": "PERCENT", "type": float, "default": 90.0,
                     "help": "the run is suspect when a generator process uses more CPU than this, percent of "
                             "one core, for --guard-window samples in a row (default 90; 0: off; docs/validity.md)"}),
    ("--guard-loop-lag-ms", {"metavar": "MS", "type": float, "default": 100.0,
                             "help": "... or its event loop wakes timers later than this (default 100 ms; 0: off)"}),
    ("--guard-schedule-lag-ms", {"metavar": "MS", "type": float, "default": 500.0,
                                 "help": "... or its posts leave, by the median, later than this behind their "
                                         "schedule (default 500 ms; 0: off)"}),
    ("--guard-queue", {"metavar": "CALLBACKS", "type": int, "default": 1000,
                       "help": "... or more callbacks than this wait ready in its event loop (default 1000; 0: off)"}),
    ("--guard-window", {"metavar": "SAMPLES", "type": int, "default": 3,
                        "help": "how many one-second samples in a row make a measure over its threshold (default 3)"}),
    ("--no-guard", {"action": "store_true", "default": False,
                    "help": "do not watch the generator: the run is never marked suspect"}),
)  # fmt: skip


@dataclass(frozen=True)
class Thresholds:
    """Where each measure turns suspect; 0 leaves a measure unwatched."""

    cpu: float = 90.0
    loop_lag: float = 100.0
    schedule_lag: float = 500.0
    queue: float = 1000.0
    window: int = 3
    enabled: bool = True

    def of(self, measure: str) -> float | None:
        limit = getattr(self, measure)
        return limit if self.enabled and limit > 0 else None

    def block(self) -> dict:
        """The summary's ``generator.guard`` settings."""
        return {
            "enabled": self.enabled,
            "window_samples": self.window,
            "thresholds": {f"{m}_{UNITS[m] if m != CPU else 'percent'}": self.of(m) for m in UNITS},
        }


def thresholds_from(options) -> Thresholds:
    """The guard's settings from the command line (on a worker, the master's); bad values name their option."""
    values = {
        CPU: getattr(options, "guard_cpu", 90.0),
        LOOP_LAG: getattr(options, "guard_loop_lag_ms", 100.0),
        SCHEDULE_LAG: getattr(options, "guard_schedule_lag_ms", 500.0),
        QUEUE: getattr(options, "guard_queue", 1000),
    }
    flags = {CPU: "--guard-cpu", LOOP_LAG: "--guard-loop-lag-ms", SCHEDULE_LAG: "--guard-schedule-lag-ms",
             QUEUE: "--guard-queue"}  # fmt: skip
    for measure, value in values.items():
        if value is None or value < 0:
            raise ConfigError(flags[measure], None, "", f"must be 0 (off) or a positive number, got {value}")
    window = getattr(options, "guard_window", 3)
    if window is None or window < 1:
        raise ConfigError("--guard-window", None, "", f"must be at least 1 sample, got {window}")
    enabled = not getattr(options, "no_guard", False)
    return Thresholds(**{k: float(v) for k, v in values.items()}, window=int(window), enabled=enabled)


@dataclass
class _Streak:
    """One measure of one process: the current run of samples over its threshold, and what went before."""

    count: int = 0
    started_s: float = 0.0
    seconds: float = 0.0
    peak: float = 0.0
    reason: dict | None = field(default=None)


class Guard:
    """The sustained-window logic of one process; fed samples, it says when a measure first goes over."""

    def __init__(self, thresholds: Thresholds, process: str = LOCAL) -> None:
        self.thresholds = thresholds
        self.process = process
        self._streaks = {measure: _Streak() for measure in UNITS}
        self.peaks: dict[str, float] = {}
        self.reasons: list[dict] = []

    def observe(self, at_s: float, interval_s: float, samples: dict[str, float | None]) -> list[dict]:
        """Take one sample of each measure (None: no value this time); the reasons that are new."""
        crossed = []
        for measure, value in samples.items():
            if value is None:
                continue
            self.peaks[measure] = max(self.peaks.get(measure, value), value)
            limit = self.thresholds.of(measure)
            streak = self._streaks[measure]
            if limit is None or value <= limit:
                streak.count = 0
                continue
            if streak.count == 0:
                streak.started_s, streak.seconds, streak.peak = at_s - interval_s, 0.0, value
            streak.count += 1
            streak.seconds += interval_s
            streak.peak = max(streak.peak, value)
            if streak.count < self.thresholds.window:
                continue
            reason = streak.reason
            if reason is None:
                # the whole sustained run counts, from its first sample over
                reason = streak.reason = {"process": self.process, "measure": measure, "value": _round(streak.peak),
                                          "unit": UNITS[measure], "threshold": limit,
                                          "at_s": _round(max(streak.started_s, 0.0)), "seconds_over": 0.0}  # fmt: skip
                self.reasons.append(reason)
                crossed.append(reason)
                reason["seconds_over"] = _round(streak.seconds)
            else:
                reason["value"] = _round(max(reason["value"], streak.peak))
                # a streak that was already counted grows one sample; a new one brings its first samples
                added = interval_s if streak.count > self.thresholds.window else streak.seconds
                reason["seconds_over"] = _round(reason["seconds_over"] + added)
        return crossed

    def state(self) -> dict:
        """What a worker reports to its master: its reasons and the peak of each measure."""
        return {"reasons": [dict(reason) for reason in self.reasons], "peaks": dict(self.peaks)}


def _round(value: float) -> float:
    return round(value, 3)


def warn(reason: dict) -> None:
    """The one console line that says a process went over on a measure."""
    unit = reason["unit"]
    log.warning(
        "Generator overloaded (%s process): %s %g %s over its threshold of %g %s for %g s, from %g s into the run. "
        "The run is SUSPECT: its latencies include the generator's own delay (docs/validity.md)",
        "this" if reason["process"] == LOCAL else f"worker {reason['process']}",
        reason["measure"],
        reason["value"],
        unit,
        reason["threshold"],
        unit,
        reason["seconds_over"],
        reason["at_s"],
    )


class Sampler:
    """Reads this process's measures once a second, cheaply: a system call and two counters."""

    def __init__(self) -> None:
        self._cpu = _cpu_seconds()
        self._mono = time.monotonic()
        self._send_lag = IntervalHistogram()

    def sample(self, context, with_posts: bool = True) -> tuple[float, dict[str, float | None]]:
        """The sample's length in seconds and each measure over it."""
        now, cpu = time.monotonic(), _cpu_seconds()
        interval = max(now - self._mono, 1e-6)
        used = (cpu - self._cpu) / interval * 100
        self._mono, self._cpu = now, cpu
        lag = None
        if with_posts:
            posts = self._send_lag.take(context.accounting.send_lag)
            lag = posts["p50"]
        return interval, {
            CPU: round(used, 1),
            LOOP_LAG: context.loop_lag_seconds * 1000,
            SCHEDULE_LAG: lag,
            QUEUE: ready_callbacks(),
        }


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def ready_callbacks() -> float | None:
    """Watchers ready to run in gevent's hub now; None on a loop that does not say (libuv)."""
    pending = getattr(gevent.get_hub().loop, "pendingcnt", None)
    return None if pending is None else float(pending)


class ProcessGuard:
    """A process's guard inside a run: samples, judges, warns once per measure, keeps workers' states."""

    def __init__(self, thresholds: Thresholds, watches_posts: bool, process: str = LOCAL) -> None:
        self.guard = Guard(thresholds, process)
        self.sampler = Sampler()
        self.watches_posts = watches_posts
        #: the last sample's values, for the metrics
        self.last: dict[str, float | None] = {}
        #: worker tag -> its guard state as last reported (master only)
        self.workers: dict[str, dict] = {}
        self._warned: set[tuple[str, str]] = set()

    def tick(self, context, at_s: float) -> None:
        if not self.guard.thresholds.enabled:
            return
        interval, self.last = self.sampler.sample(context, self.watches_posts)
        for reason in self.guard.observe(at_s, interval, self.last):
            self._warn_once(reason)

    def adopt(self, states: dict[str, dict]) -> None:
        """Workers' guard states from their reports; a worker's new reason is said once here too."""
        self.workers = states
        for state in states.values():
            for reason in state["reasons"]:
                self._warn_once(reason)

    def _warn_once(self, reason: dict) -> None:
        key = (reason["process"], reason["measure"])
        if key not in self._warned:
            self._warned.add(key)
            warn(reason)

    def reasons(self) -> list[dict]:
        found = list(self.guard.reasons)
        for tag, state in sorted(self.workers.items()):
            found += [{**reason, "process": tag} for reason in state["reasons"]]
        return found

    @property
    def suspect(self) -> bool:
        return bool(self.guard.reasons) or any(state["reasons"] for state in self.workers.values())

    def summary(self) -> tuple[dict | bool, dict]:
        """``generator.suspect`` (False, or since when and why) and ``generator.guard`` (settings and peaks)."""
        reasons = self.reasons()
        suspect: dict | bool = False
        if reasons:
            suspect = {"since_s": min(reason["at_s"] for reason in reasons), "reasons": reasons}
        peaks = {LOCAL: _shown_peaks(self.guard.peaks)}
        peaks |= {tag: _shown_peaks(state["peaks"]) for tag, state in sorted(self.workers.items())}
        return suspect, {**self.guard.thresholds.block(), "peaks": peaks}


def _shown_peaks(peaks: dict[str, float]) -> dict[str, float]:
    return {f"{m}_{UNITS[m] if m != CPU else 'percent'}": _round(v) for m, v in sorted(peaks.items())}


__all__ = [
    "CPU",
    "LOCAL",
    "LOOP_LAG",
    "OPTIONS",
    "QUEUE",
    "SCHEDULE_LAG",
    "Guard",
    "ProcessGuard",
    "Sampler",
    "Thresholds",
    "ready_callbacks",
    "thresholds_from",
]
