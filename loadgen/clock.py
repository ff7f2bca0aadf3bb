"""Clock offsets of generator processes against the backend, and the latencies they leave uncertain.

A message's latency is its receipt minus its stamp. Each process stamps and reads the
backend's clock as it best knows it: its own wall clock plus an offset measured NTP-style
against the backend's clock-sync operation, whose error is at most half the round trip of the
best sample (the uncertainty). When sender and receiver share a process, the offset cancels out
and the latency is exact. When a message crosses processes (a user on worker A, a listener on
worker B), its error is bounded by the sum of the two processes' uncertainties; the master
tells every worker the others' uncertainties, and a latency whose bound exceeds the limit is
counted apart, never mixed into the delivery histogram.

A process re-measures every ``--clock-sync-interval`` seconds to follow drift. The newest
measurement is adopted as it comes; a message in flight across the change is off by the
change, which is within the two measurements' uncertainties.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from loadgen.population import worker_tag


@dataclass(frozen=True, slots=True)
class Estimate:
    """The backend's clock minus ours (``offset``) and the most it can be wrong by, in seconds."""

    offset: float
    uncertainty: float


class ProcessClock:
    """This process's view of the backend's clock, and its peers' uncertainties.

    ``tag`` names the process among the run's workers (``w0``, ``w1`` … as user ids start),
    None for a standalone process whose every sender shares its clock.
    """

    def __init__(self, tag: str | None = None, limit: float = math.inf) -> None:
        self.tag = tag
        self.limit = limit
        self.estimate: Estimate | None = None
        self.syncs = 0
        #: tag -> uncertainty (seconds) of each worker, as the master last relayed them
        self.peers: dict[str, float] = {}

    @property
    def offset(self) -> float:
        """Seconds to add to this process's wall clock to read the backend's; 0 until measured."""
        return 0.0 if self.estimate is None else self.estimate.offset

    @property
    def uncertainty(self) -> float | None:
        return None if self.estimate is None else self.estimate.uncertainty

    def adopt(self, estimate: Estimate) -> None:
        self.estimate = estimate
        self.syncs += 1

    def sender_bound(self, sender: str) -> tuple[float, bool]:
        """How wrong a latency from ``sender`` may be, and whether the message crossed processes.

        A sender on an unmeasured clock (a worker not yet heard of, or this process before its
        first measurement) gives an infinite bound: its latency is flagged, not trusted.
        """
        tag = worker_tag(sender)
        if self.tag is None or tag == self.tag:
            return 0.0, False
        mine = self.uncertainty
        theirs = self.peers.get(tag) if tag is not None else None
        if mine is None or theirs is None:
            return math.inf, True
        return mine + theirs, True

    def flags(self, bound: float) -> bool:
        return bound > self.limit


__all__ = ["Estimate", "ProcessClock"]
