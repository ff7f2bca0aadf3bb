"""Coming back after a lost connection: the reconnect policy, reconnect storms, and how recovery went.

A user that loses its connection (the backend dropped it, the network did, or a storm cut
it) tries again by the profile's policy. How long it stayed away, how many tries it took and
how many failed are recorded here, run-wide and for each storm, so a review can read "99 % of
the users were back 2.1 s after the restart, and every message they missed came back from
history".

A storm is a moment at which many connections are lost at once: the chosen share of users
cut their own connections (``drop``, as a network outage would), or the embedded reference
backend restarts (``restart``) or is killed and started again (``hard_restart``). Each
process runs its own storms on its own users, so a distributed run drops the same share on
every worker; the process that owns the embedded backend restarts it.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field

import gevent

from loadgen.accounting import add_encoded, encode, new_histogram, percentiles_ms, record_seconds
from loadgen.errors import ConfigError
from loadgen.profile import STORM_CAUSES, ReconnectProfile, ReconnectStorm

log = logging.getLogger("loadgen.reconnects")

#: the shares of a storm's users whose return the summary times
RETURN_SHARES = (50, 90, 99)


class StormOptionError(ConfigError):
    """A ``--reconnect-storm`` value that cannot be used."""

    def __init__(self, value: str, problem: str) -> None:
        expected = "expected AT:SHARE[:CAUSE], e.g. 10:100%:drop"
        super().__init__("--reconnect-storm", None, "", f"{value!r}: {problem} ({expected})")


def parse_storm_option(value: str) -> ReconnectStorm:
    """``AT:SHARE[:CAUSE]``: seconds into the test, share as 0..1 or a percentage, and the cause."""
    parts = value.split(":")
    if len(parts) not in (2, 3):
        raise StormOptionError(value, "needs two or three parts")
    try:
        at = float(parts[0].rstrip("s"))
        share = float(parts[1][:-1]) / 100 if parts[1].endswith("%") else float(parts[1])
    except ValueError:
        raise StormOptionError(value, "AT and SHARE must be numbers") from None
    cause = parts[2] if len(parts) == 3 else "drop"
    if not (math.isfinite(at) and at >= 0):
        raise StormOptionError(value, "AT must be a number of seconds, at least 0")
    if not 0 <= share <= 1:
        raise StormOptionError(value, "SHARE must be between 0 and 1 (or 0% and 100%)")
    if cause not in STORM_CAUSES:
        raise StormOptionError(value, f"CAUSE must be one of {', '.join(STORM_CAUSES)}")
    return ReconnectStorm(at=at, share=share, cause=cause)


def delay(policy: ReconnectProfile, attempt: int, rng: random.Random) -> float:
    """Seconds to wait before try number ``attempt`` (1 for the first try after the loss)."""
    if policy.policy == "immediate":
        return 0.0 if attempt == 1 else policy.initial_delay
    ceiling = min(policy.max_delay, policy.initial_delay * policy.multiplier ** (attempt - 1))
    if policy.jitter == "full":
        return rng.uniform(0, ceiling)
    if policy.jitter == "equal":
        return ceiling / 2 + rng.uniform(0, ceiling / 2)
    return ceiling


@dataclass
class StormRecord:
    """One storm in this process: whom it hit and when each came back."""

    at: float
    cause: str
    share: float
    started: float | None = None
    affected: set[str] = field(default_factory=set)
    #: user id -> seconds from the storm to being back and caught up
    back: dict[str, float] = field(default_factory=dict)
    attempts: int = 0
    failures: int = 0
    recovered: int = 0

    def snapshot(self) -> dict:
        return {
            "at": self.at, "cause": self.cause, "share": self.share, "affected": len(self.affected),
            "started": self.started is not None, "back": sorted(self.back.values()), "attempts": self.attempts,
            "failures": self.failures, "recovered": self.recovered,
        }  # fmt: skip


class Reconnects:
    """Every involuntary reconnection of one process's users, and its storms."""

    def __init__(self, policy: ReconnectProfile, storms: tuple[ReconnectStorm, ...] = ()) -> None:
        self.policy = policy
        self.storms = [StormRecord(s.at, s.cause, s.share) for s in sorted(storms, key=lambda s: s.at)]
        self.away = new_histogram()
        self.attempts = 0
        self.failures: dict[str, int] = {}
        self.reconnected = 0

    def _storm_of(self, user_id: str) -> StormRecord | None:
        """The latest storm that hit ``user_id`` and that it has not come back from yet."""
        for storm in reversed(self.storms):
            if user_id in storm.affected and user_id not in storm.back:
                return storm
        return None

    def attempted(self, user_id: str, failure: str | None) -> None:
        self.attempts += 1
        storm = self._storm_of(user_id)
        if storm is not None:
            storm.attempts += 1
        if failure is not None:
            self.failures[failure] = self.failures.get(failure, 0) + 1
            if storm is not None:
                storm.failures += 1

    def returned(self, user_id: str, away_seconds: float, recovered: int) -> None:
        """``user_id`` is connected, back in its rooms and caught up from history."""
        self.reconnected += 1
        record_seconds(self.away, away_seconds)
        storm = self._storm_of(user_id)
        if storm is not None and storm.started is not None:
            storm.back[user_id] = time.monotonic() - storm.started
            storm.recovered += recovered

    def snapshot(self) -> dict:
        return {
            "attempts": self.attempts, "failures": dict(self.failures), "reconnected": self.reconnected,
            "away": encode(self.away), "storms": [s.snapshot() for s in self.storms],
        }  # fmt: skip


def summary(policy: ReconnectProfile, snapshots: list[dict]) -> dict:
    """The summary's ``reconnects`` block from one process's snapshot, or the sum of every worker's."""
    away = new_histogram()
    failures: dict[str, int] = {}
    storms: list[dict] = []
    for snap in snapshots:
        add_encoded(away, snap["away"])
        for reason, n in snap["failures"].items():
            failures[reason] = failures.get(reason, 0) + n
        for n, storm in enumerate(snap["storms"]):
            if n == len(storms):
                storms.append({**storm, "back": list(storm["back"])})
                continue
            into = storms[n]
            for key in ("affected", "attempts", "failures", "recovered"):
                into[key] += storm[key]
            into["back"] += storm["back"]
            into["started"] = into["started"] or storm["started"]
    return {
        "policy": {k: getattr(policy, k) for k in ("policy", "initial_delay", "multiplier", "max_delay", "jitter")},
        "attempts": sum(s["attempts"] for s in snapshots),
        "failures": sum(failures.values()),
        "failures_by_reason": failures,
        "reconnected": sum(s["reconnected"] for s in snapshots),
        "time_away_ms": percentiles_ms(away),
        "storms": [_storm_summary(s) for s in storms],
    }


def _storm_summary(storm: dict) -> dict:
    """Times to the shares of the storm's users being back: null for a share that never came back."""
    back = sorted(storm["back"])
    affected = storm["affected"]
    out = {
        "at_s": storm["at"], "cause": storm["cause"], "share": storm["share"], "happened": storm["started"],
        "affected": affected, "reconnected": len(back),
    }  # fmt: skip
    for share in (*RETURN_SHARES, 100):
        needed = math.ceil(affected * share / 100)
        key = "time_to_all_ms" if share == 100 else f"time_to_{share}pct_ms"
        out[key] = round(back[needed - 1] * 1000, 1) if affected and needed <= len(back) else None
    out.update(attempts=storm["attempts"], failures=storm["failures"], recovered=storm["recovered"])
    return out


def run_storm(context, storm: StormRecord) -> None:
    """Wait for the storm's moment, then cut the chosen connections or restart the backend."""
    wait = storm.at - (time.monotonic() - context.started_mono)
    if wait > 0:
        gevent.sleep(wait)
    if context.draining:
        return
    connected = sorted((u for u in context.users if u.connected), key=lambda u: u.user_id)
    if storm.cause == "drop":
        rng = random.Random(f"storm-{storm.at}-{context.run_id}")
        chosen = rng.sample(connected, round(len(connected) * storm.share))
    else:
        chosen = connected
    storm.started = time.monotonic()
    storm.affected = {u.user_id for u in chosen}
    log.warning("Reconnect storm at %g s (%s): %d of %d connected users lose their connection",
                storm.at, storm.cause, len(chosen), len(connected))  # fmt: skip
    context.annotate("storm", f"reconnect storm ({storm.cause}) hits {len(chosen)} users")
    if storm.cause == "drop":
        for user in chosen:
            user.drop_connection()
    elif context.backend is not None:
        context.backend.restart(hard=storm.cause == "hard_restart")


__all__ = ["Reconnects", "StormRecord", "delay", "parse_storm_option", "run_storm", "summary"]
