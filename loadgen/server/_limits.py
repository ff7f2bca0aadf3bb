"""Per-connection request rate cap of the reference backend (``--rate-limit``, ``--rate-burst``)."""

from __future__ import annotations

from collections.abc import Callable

# A connection may be refused this many bursts' worth of requests (beyond what the cap
# refills meanwhile) before it is taken for a flood and closed.
FLOOD_BURSTS = 10


class RateLimiter:
    """Two token buckets, both refilled at ``rate`` tokens per second.

    Every frame takes a token from the request bucket (``burst`` deep); a frame that finds
    it empty is refused and takes a token from the refusal bucket (``FLOOD_BURSTS * burst``
    deep); a refusal that finds that one empty too means the connection is flooding. A
    client sending at more than twice the cap empties the refusal bucket sooner or later;
    one that slows down to the cap never does.
    """

    __slots__ = ("_rate", "_burst", "_tolerance", "_tokens", "_spare", "_last", "_clock")

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tolerance = float(FLOOD_BURSTS * burst)
        self._tokens = self._burst
        self._spare = self._tolerance
        self._clock = clock
        self._last = clock()

    def allow(self) -> bool:
        """Take a request token; False when the request must be refused."""
        now = self._clock()
        gained = (now - self._last) * self._rate
        self._last = now
        self._tokens = min(self._burst, self._tokens + gained)
        self._spare = min(self._tolerance, self._spare + gained)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def tolerate(self) -> bool:
        """Take a refusal token (after ``allow`` said no); False when the connection floods."""
        if self._spare >= 1.0:
            self._spare -= 1.0
            return True
        return False
