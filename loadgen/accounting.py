"""End-to-end delivery accounting: latency, loss, duplicates, order, recovery.

Every delivery belongs to a stream (a room, or a user's direct-message inbox) whose
sequence the backend stamps. A receiver knows exactly which sequences were meant for it:
those after the ``head`` the backend reported when the receiver joined (or logged in), up to
the ``head`` it reported when the receiver left (or logged out). Holes inside that window are
messages not seen yet; a hole still open ``delivery_timeout`` seconds after it was noticed is
lost. Nothing sent while the receiver was joining or leaving is guessed about: the heads say
what was in the window.

This module is plain Python: no Locust, no gevent, no sockets. Times are passed in or read
from injectable clocks, so every rule here is tested with hand-built event sequences.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy
from hdrh.histogram import HdrHistogram

from loadgen.clock import ProcessClock
from loadgen.drivers.base import Delivery, parent_stream

#: Histograms hold microseconds from 1 µs to one hour at three significant digits.
HIGHEST_TRACKABLE_US = 3_600_000_000
SIGNIFICANT_DIGITS = 3
#: a stream that jumps further than this at once broke its sequence: one hole per number
#: would cost the generator its memory (a backend sending seq 10^12 must not hang it)
MAX_SEQUENCE_GAP = 100_000


class ImplausibleSequence(ValueError):
    """The backend's sequence jumped too far to be missing messages; nothing was accounted."""


def new_histogram() -> HdrHistogram:
    return HdrHistogram(1, HIGHEST_TRACKABLE_US, SIGNIFICANT_DIGITS)


def encode(histogram: HdrHistogram) -> str:
    """HdrHistogram's compressed V2 encoding, base64, as text."""
    return histogram.encode().decode("ascii")


def add_encoded(target: HdrHistogram, encoded: str) -> None:
    """Add a histogram sent as :func:`encode` gave it; an empty text adds nothing."""
    if encoded:
        target.decode_and_add(encoded.encode("ascii"))


def record_seconds(histogram: HdrHistogram, seconds: float) -> None:
    """Record a duration; negative ones (clock steps) count as the smallest value, huge ones are capped.

    ``HdrHistogram.record_value`` inlined: hdrh finds the slot through five method calls, the
    most expensive step of accounting a message. The arithmetic is its own (tests compare).
    """
    micros = min(max(int(seconds * 1e6), 1), HIGHEST_TRACKABLE_US)
    unit = histogram.unit_magnitude
    half = histogram.sub_bucket_half_count_magnitude
    bucket = (micros | histogram.sub_bucket_mask).bit_length() - unit - half - 1
    histogram.counts[((bucket + 1) << half) + (micros >> (bucket + unit)) - histogram.sub_bucket_half_count] += 1
    histogram.total_count += 1
    if micros < histogram.min_value:
        histogram.min_value = micros
    if micros > histogram.max_value:
        histogram.max_value = micros


class CountsSince:
    """What a cumulative HDR histogram gained since the last look, slot by slot.

    The counts up to the largest recorded value are copied out of hdrh's array (a numpy
    view, one copy) and subtracted from the last look's; a histogram reset since then gained
    all it holds. The run's time series and Locust's table both read their intervals here.
    """

    def __init__(self) -> None:
        self._total = 0
        self._counts: numpy.ndarray | None = None

    def take(self, histogram: HdrHistogram) -> numpy.ndarray:
        total = histogram.get_total_count()
        if total == self._total:
            return numpy.zeros(0, dtype=numpy.int64)
        top = histogram.get_counts_array_index(histogram.get_max_value()) + 1 if total else 0
        counts = numpy.ctypeslib.as_array(histogram.counts)[:top].astype(numpy.int64)
        gained = counts.copy()
        if self._counts is not None:
            gained[: len(self._counts)] -= self._counts[:top]
            if total < self._total or (gained < 0).any():
                # reset since the last look (and maybe refilled past it): all it holds is new
                gained = counts.copy()
        self._total, self._counts = total, counts
        return gained


class _HistogramGains:
    """What histograms gained since the last look, by name, as {milliseconds: count}.

    Locust's table wants latencies value by value; handing it each one as it is recorded
    cost a fifth of a delivery's accounting. Once a second, the histograms' gains give the
    same samples at the histogram's resolution.
    """

    def __init__(self) -> None:
        self._since: dict[str, CountsSince] = {}

    def take(self, name: str, histogram: HdrHistogram) -> Counter[float]:
        since = self._since.get(name)
        if since is None:
            since = self._since[name] = CountsSince()
        gained = since.take(histogram)
        batch: Counter[float] = Counter()
        for index in numpy.flatnonzero(gained).tolist():
            lowest = histogram.get_value_from_index(index)
            # the middle of the slot: within a thousandth of every value it holds
            micros = (lowest + histogram.get_highest_equivalent_value(lowest)) / 2
            batch[round(micros / 1000, 3)] += int(gained[index])
        return batch


def percentiles_ms(histogram: HdrHistogram) -> dict[str, float]:
    """p50/p95/p99/p999/max in milliseconds with microsecond resolution."""
    if histogram.get_total_count() == 0:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "p999": 0.0, "max": 0.0}
    at = histogram.get_value_at_percentile
    return {
        "p50": at(50) / 1000,
        "p95": at(95) / 1000,
        "p99": at(99) / 1000,
        "p999": at(99.9) / 1000,
        "max": histogram.get_max_value() / 1000,
    }


@dataclass
class MessageCounts:
    sent: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    recovered: int = 0
    #: deliveries whose sender ran in another process (every one of them is also ``delivered``)
    cross_process: int = 0
    #: deliveries whose latency the two clocks could not bound within the limit: timed apart
    uncertain: int = 0


class OperationStats:
    """Latency and outcome of one named operation (``room.join``, ``msg.send`` …)."""

    __slots__ = ("histogram", "count", "failures", "refusals")

    def __init__(self) -> None:
        self.histogram = new_histogram()
        self.count = 0
        self.failures = 0
        self.refusals: Counter[str] = Counter()

    def summary(self) -> dict:
        ms = percentiles_ms(self.histogram)
        return {
            "count": self.count,
            "failures": self.failures,
            "p50_ms": ms["p50"],
            "p95_ms": ms["p95"],
            "p99_ms": ms["p99"],
            "max_ms": ms["max"],
        }


class _Track:
    """What one receiver knows of one stream.

    Every sequence at or below ``top`` is either seen, an open hole, lost, or was outside the
    receiver's windows. ``seen_max`` is the highest sequence actually pushed to us: a push
    below it arrived out of order. Holes that only a closing ``head`` revealed do not raise
    ``seen_max``, so a late message filling one is not out of order.
    """

    __slots__ = ("top", "seen_max", "holes", "lost", "open", "cut")

    def __init__(self, head: int) -> None:
        self.top = head
        self.seen_max = head
        self.holes: dict[int, float] = {}
        self.lost: set[int] = set()
        self.open = True
        #: the window ended with the connection, not by leaving: the receiver still counts as a member
        self.cut = False


class Accounting:
    """Per-process delivery accounting shared by every receiver of the process."""

    def __init__(
        self,
        delivery_timeout: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
        wallclock: Callable[[], float] = time.time,
        clock: ProcessClock | None = None,
    ) -> None:
        self.delivery_timeout = delivery_timeout
        self.monotonic = monotonic
        self.wallclock = wallclock
        self.clock = ProcessClock() if clock is None else clock
        self.counts = MessageCounts()
        self.latency = new_histogram()
        #: latencies of deliveries counted ``uncertain``, kept out of ``latency``
        self.uncertain_latency = new_histogram()
        self.send_lag = new_histogram()
        self.operations: dict[str, OperationStats] = {}
        #: operations whose every sample is a broadcast seen by a receiver (``seat.fanout`` …)
        self.fanout_names: set[str] = set()
        self._gains = _HistogramGains()
        self._tracks_with_holes: set[_Track] = set()

    @property
    def clock_offset(self) -> float:
        """Seconds to add to this process's wall clock to read the backend's clock."""
        return self.clock.offset

    def now(self) -> float:
        """The backend's time as this process best knows it."""
        return self.wallclock() + self.clock.offset

    def receiver(self) -> Receiver:
        return Receiver(self)

    def operation(self, name: str) -> OperationStats:
        stats = self.operations.get(name)
        if stats is None:
            stats = self.operations[name] = OperationStats()
        return stats

    def record_operation(self, name: str, seconds: float, failed: bool = False) -> None:
        stats = self.operation(name)
        stats.count += 1
        if failed:
            stats.failures += 1
        else:
            record_seconds(stats.histogram, seconds)

    def record_fanout(self, name: str, seconds: float) -> None:
        """A broadcast seen by one receiver ``seconds`` after the action behind it (``seat.fanout`` …)."""
        stats = self.operation(name)
        stats.count += 1
        record_seconds(stats.histogram, seconds)
        self.fanout_names.add(name)

    def take_unreported(self) -> dict[str, Counter[float]]:
        """Latencies recorded since the last call, by name, as {milliseconds: count}, for Locust's table.

        Deliveries under ``msg.deliver``, broadcasts under their own names, and the successful
        operations; read off the histograms, at their resolution (three significant digits).
        """
        gains = {}
        for name, histogram in (("msg.deliver", self.latency),
                                *((name, stats.histogram) for name, stats in self.operations.items())):  # fmt: skip
            gained = self._gains.take(name, histogram)
            if gained:
                gains[name] = gained
        return gains

    def record_refusal(self, name: str, reason: str) -> None:
        """An expected refusal (a seat lost in a race, a busy callee): an outcome, not a failure."""
        stats = self.operation(name)
        stats.count += 1
        stats.refusals[reason] += 1

    def record_sent(self, lag_seconds: float) -> None:
        """A message the backend accepted, ``lag_seconds`` behind its schedule."""
        self.counts.sent += 1
        record_seconds(self.send_lag, lag_seconds)

    def open_holes(self) -> int:
        return sum(len(track.holes) for track in self._tracks_with_holes)

    def expire(self) -> int:
        """Turn holes open longer than the delivery timeout into losses; returns how many."""
        deadline = self.monotonic() - self.delivery_timeout
        expired = 0
        for track in list(self._tracks_with_holes):
            for seq, noticed in list(track.holes.items()):
                if noticed <= deadline:
                    del track.holes[seq]
                    track.lost.add(seq)
                    expired += 1
            if not track.holes:
                self._tracks_with_holes.discard(track)
        self.counts.lost += expired
        return expired

    def youngest_hole_age(self) -> float | None:
        """Seconds since the most recently noticed open hole, or None when none is open."""
        newest = max((max(t.holes.values()) for t in self._tracks_with_holes if t.holes), default=None)
        return None if newest is None else self.monotonic() - newest

    def finalize(self) -> int:
        """End of the run: every hole still open is lost. Returns how many."""
        remaining = 0
        for track in self._tracks_with_holes:
            remaining += len(track.holes)
            track.lost.update(track.holes)
            track.holes.clear()
        self._tracks_with_holes.clear()
        self.counts.lost += remaining
        return remaining

    def _noticed(self, track: _Track, first: int, last: int) -> None:
        """Sequences first..last (inclusive) were meant for this receiver and are not here yet."""
        if first > last:
            return
        if last - first >= MAX_SEQUENCE_GAP:
            raise ImplausibleSequence(f"the sequence jumped from {first - 1} to {last + 1}")
        now = self.monotonic()
        holes = track.holes
        for seq in range(first, last + 1):
            holes[seq] = now
        self._tracks_with_holes.add(track)


class Receiver:
    """One user's view of its streams; it outlives reconnects so history can fill holes."""

    def __init__(self, accounting: Accounting) -> None:
        self.accounting = accounting
        self.tracks: dict[str, _Track] = {}
        #: room (or inbox) -> its sender streams we follow, so joins and leaves touch only those
        self._senders: dict[str, list[str]] = {}

    def open_window(self, stream: str, head: int) -> None:
        """Joined (or logged in): everything after ``head`` is meant for us.

        The sender streams of ``stream`` (backends without a stream sequence) resume where
        they were: what their senders sent meanwhile is ours to fetch from history.
        """
        for sub in self._sender_streams(stream):
            self.tracks[sub].open = True
        track = self.tracks.get(stream)
        if track is None:
            self.tracks[stream] = _Track(head)
            return
        if track.cut:
            # back after a lost connection: what the stream got meanwhile was ours, and history
            # owes it to us (roaming); what history does not give back is lost by the usual rule
            self.accounting._noticed(track, track.top + 1, head)
            track.top = max(track.top, head)
            track.cut = False
        else:
            # after leaving: sequences between the last window and this one were never ours
            track.top = max(track.top, head)
            track.seen_max = max(track.seen_max, head)
        track.open = True

    def close_window(self, stream: str, head: int | None) -> None:
        """Left (or logged out) at ``head``; ``None`` when the connection broke and the head is unknown."""
        for sub in self._sender_streams(stream):
            self.tracks[sub].open = False
        track = self.tracks.get(stream)
        if track is None or not track.open:
            return
        if head is not None and head > track.top:
            self.accounting._noticed(track, track.top + 1, head)
            track.top = head
        track.open = False
        track.cut = head is None

    def _sender_streams(self, stream: str) -> list[str]:
        return self._senders.get(stream, [])

    def roaming_streams(self) -> list[str]:
        """Rooms (and the inbox) whose sender streams we follow: their history may hold what we missed."""
        return sorted(self._senders)

    def _track_for(self, delivery: Delivery) -> _Track | None:
        """The delivery's track; a sender stream opens at its first message inside its room's window."""
        track = self.tracks.get(delivery.stream)
        if track is not None:
            return track
        room = parent_stream(delivery.stream)
        parent = self.tracks.get(room)
        if room == delivery.stream or parent is None or not parent.open:
            return None
        # nothing tells what this sender sent before we saw it: we follow it from here
        track = self.tracks[delivery.stream] = _Track(delivery.seq - 1)
        self._senders.setdefault(room, []).append(delivery.stream)
        return track

    def close_all(self, heads: dict[str, int] | None = None) -> None:
        for stream in list(self.tracks):
            self.close_window(stream, None if heads is None else heads.get(stream))

    def own(self, stream: str, seq: int) -> None:
        """The backend acknowledged our own message ``seq``: we will not be sent it."""
        track = self.tracks.get(stream)
        if track is None:
            return
        if seq > track.top:
            self.accounting._noticed(track, track.top + 1, seq - 1)
            track.top = seq
        else:
            track.holes.pop(seq, None)
        # order is judged among pushes only: a push overtaken by our own acknowledged
        # message was not reordered by the backend

    def deliver(self, delivery: Delivery) -> str:
        """Account one pushed message. Returns ``delivered``, ``duplicate`` or ``out_of_order``."""
        accounting = self.accounting
        track = self._track_for(delivery)
        seq = delivery.seq
        if track is None:
            # a push for a stream never joined: count it, it cannot be checked
            outcome = "delivered"
        elif seq > track.top:
            accounting._noticed(track, track.top + 1, seq - 1)
            track.top = seq
            track.seen_max = seq
            outcome = "delivered"
        elif seq in track.holes:
            del track.holes[seq]
            outcome = "out_of_order" if seq < track.seen_max else "delivered"
            track.seen_max = max(track.seen_max, seq)
        elif seq in track.lost:
            # arrived after its timeout: still lost by the rule, but a real arrival; a copy of
            # it coming later is a duplicate
            track.lost.discard(seq)
            outcome = "out_of_order" if seq < track.seen_max else "delivered"
            track.seen_max = max(track.seen_max, seq)
        else:
            accounting.counts.duplicated += 1
            return "duplicate"
        counts = accounting.counts
        counts.delivered += 1
        if outcome == "out_of_order":
            counts.out_of_order += 1
        latency = accounting.now() - delivery.sent_at
        bound, crossed = accounting.clock.sender_bound(delivery.sender)
        counts.cross_process += crossed
        if accounting.clock.flags(bound):
            counts.uncertain += 1
            record_seconds(accounting.uncertain_latency, latency)
            return outcome
        record_seconds(accounting.latency, latency)
        return outcome

    def lowest_gap(self, stream: str) -> int | None:
        """The lowest sequence we are still missing in ``stream`` (open or lost), if any."""
        track = self.tracks.get(stream)
        if track is None:
            return None
        return min((*track.holes, *track.lost), default=None)

    def gaps(self) -> dict[str, int]:
        """Streams with something missing, each with its lowest missing sequence."""
        found = {}
        for stream in self.tracks:
            lowest = self.lowest_gap(stream)
            if lowest is not None:
                found[stream] = lowest
        return found

    def recover(self, deliveries: Iterable[Delivery]) -> int:
        """Messages fetched from history: those we were missing count as recovered, not lost."""
        counts = self.accounting.counts
        recovered = 0
        for delivery in deliveries:
            track = self.tracks.get(delivery.stream)
            if track is None:
                continue
            seq = delivery.seq
            if track.holes.pop(seq, None) is not None:
                recovered += 1
            elif seq in track.lost:
                track.lost.discard(seq)
                counts.lost -= 1
                recovered += 1
            elif seq > track.top and parent_stream(delivery.stream) != delivery.stream:
                # a sender stream's history: sent while we were away; what history skips is missing
                try:
                    self.accounting._noticed(track, track.top + 1, seq - 1)
                except ImplausibleSequence:
                    continue  # an entry that far ahead is the history's error, not ours to wait for
                track.top = track.seen_max = seq
                recovered += 1
        counts.recovered += recovered
        return recovered
