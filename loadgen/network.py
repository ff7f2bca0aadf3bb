"""Weak networks emulated in the client: per-user conditions, the delay model, and the latency it added.

A user on ``4g`` or ``weak-3g`` sees its frames held back by what such a link adds, each way:
one-way latency, jitter, retransmissions of lost segments and a bandwidth cap; its link also
goes away now and then (an elevator, a tunnel) and hands over between Wi-Fi and cellular.
Users from another region add the round trip between that region and the backend's. The
figures of the built-in conditions and regions, and what they are based on, are in
docs/network.md.

The transport is TCP, so a lost segment is never a lost frame: TCP resends it after its
retransmission timeout, and every frame behind it on the connection waits too (head-of-line
blocking). Frames keep their order each way; a frame leaves only once the frames before it
are on the wire (bandwidth) and arrives no earlier than the one before it.

The toolkit knows what it added to every delivery it times, when the sender is a user of
the same process: the receiver's connection knows the delay it gave the frame, and the
sender's up-delay is found by (sender, intended send time) in a bounded table the sender
fills. Measured latency minus that is what the backend (and the generator's own lag) took.

Nothing here knows Locust: the Locust side is loadgen/scenarios/network.py.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import gevent
import gevent.event

from loadgen.accounting import add_encoded, encode, new_histogram, percentiles_ms, record_seconds
from loadgen.drivers.base import Delivery
from loadgen.population import draw_role
from loadgen.profile import LinkProfile, NetworkProfile

_WIFI = LinkProfile(
    up_latency_ms=14.0, down_latency_ms=14.0, up_jitter_ms=3.0, down_jitter_ms=3.0,
    up_kbps=15_000.0, down_kbps=30_000.0,
)  # fmt: skip
_4G = LinkProfile(
    up_latency_ms=35.0, down_latency_ms=35.0, up_jitter_ms=10.0, down_jitter_ms=10.0,
    up_loss=0.001, down_loss=0.001, up_kbps=12_000.0, down_kbps=12_000.0, handover_every_s=900.0,
)  # fmt: skip
_WEAK_3G = LinkProfile(
    up_latency_ms=200.0, down_latency_ms=200.0, up_jitter_ms=50.0, down_jitter_ms=50.0,
    up_loss=0.01, down_loss=0.01, up_kbps=400.0, down_kbps=400.0,
)  # fmt: skip
_SUBWAY = LinkProfile(
    up_latency_ms=150.0, down_latency_ms=150.0, up_jitter_ms=60.0, down_jitter_ms=60.0,
    up_loss=0.02, down_loss=0.02, up_kbps=768.0, down_kbps=1_600.0,
    offline_every_s=180.0, offline_min_s=20.0, offline_max_s=90.0,
)  # fmt: skip

#: the built-in conditions, in the order of loadgen.profile.NETWORK_CONDITIONS; docs/network.md gives their sources
BUILT_IN: dict[str, LinkProfile] = {
    "good": LinkProfile(),
    "wifi": _WIFI,
    "4g": _4G,
    "weak-3g": _WEAK_3G,
    "elevator": dataclasses.replace(_4G, offline_every_s=600.0, offline_min_s=10.0, offline_max_s=30.0),
    "subway": _SUBWAY,
}

#: typical round trips between cloud regions in ms (averages measured between AWS regions; docs/network.md)
_REGION_RTT_MS: dict[tuple[str, str], float] = {
    ("us-east", "us-west"): 88, ("us-east", "eu-west"): 81, ("us-east", "ap-northeast"): 145,
    ("us-east", "ap-southeast"): 217, ("us-east", "sa-east"): 120,
    ("us-west", "eu-west"): 137, ("us-west", "ap-northeast"): 89, ("us-west", "ap-southeast"): 161,
    ("us-west", "sa-east"): 183,
    ("eu-west", "ap-northeast"): 212, ("eu-west", "ap-southeast"): 238, ("eu-west", "sa-east"): 191,
    ("ap-northeast", "ap-southeast"): 74, ("ap-northeast", "sa-east"): 257,
    ("ap-southeast", "sa-east"): 328,
}  # fmt: skip


def region_rtt_ms(region: str, backend_region: str) -> float:
    """The typical round trip between two regions of :data:`loadgen.profile.REGIONS`, in ms."""
    if region == backend_region:
        return 0.0
    return float(_REGION_RTT_MS.get((region, backend_region)) or _REGION_RTT_MS[(backend_region, region)])


#: resends of one segment after which the model stops doubling the timeout (Linux gives up after 15)
MAX_RESENDS = 6


@dataclass(frozen=True, slots=True)
class Direction:
    """What one direction of a link adds to each frame; times in seconds."""

    latency: float
    jitter: float
    loss: float
    #: how long a lost frame waits for its first resend: the RTO plus the added round trip
    rto: float
    #: seconds a byte takes on the wire; 0 without a bandwidth cap
    byte_time: float
    #: datagrams only: the mean length of a loss burst, s; 0 for losses each on their own
    loss_burst: float = 0.0

    @property
    def fixed(self) -> bool:
        """Every frame gets exactly ``latency``: no jitter, loss or cap to vary it."""
        return not (self.jitter or self.loss or self.byte_time)


@dataclass(frozen=True, slots=True)
class Link:
    """A user's link: each direction, or None where it adds nothing."""

    up: Direction | None
    down: Direction | None

    @property
    def impaired(self) -> bool:
        return self.up is not None or self.down is not None


def link_for(condition: LinkProfile, region_rtt_ms: float = 0.0) -> Link:
    """A condition's link, with half of the region's round trip added each way."""
    half = region_rtt_ms / 2
    rtt_ms = condition.up_latency_ms + condition.down_latency_ms + region_rtt_ms

    def direction(latency_ms: float, jitter_ms: float, loss: float, kbps: float, burst_ms: float) -> Direction | None:
        if not (latency_ms + half or jitter_ms or loss or kbps):
            return None
        byte_time = 8 / (kbps * 1000) if kbps else 0.0
        return Direction((latency_ms + half) / 1000, jitter_ms / 1000, loss, (condition.rto_ms + rtt_ms) / 1000,
                         byte_time, burst_ms / 1000)  # fmt: skip

    c = condition
    return Link(
        direction(c.up_latency_ms, c.up_jitter_ms, c.up_loss, c.up_kbps, c.up_loss_burst_ms),
        direction(c.down_latency_ms, c.down_jitter_ms, c.down_loss, c.down_kbps, c.down_loss_burst_ms),
    )


class Lane:
    """One direction of one connection: the delay each frame gets, frames kept in order."""

    __slots__ = ("direction", "free_at", "last_arrival")

    def __init__(self, direction: Direction) -> None:
        self.direction = direction
        #: when the last frame's last byte is on the wire (bandwidth)
        self.free_at = -math.inf
        #: when the last frame arrives: no frame arrives before the one sent ahead of it
        self.last_arrival = -math.inf

    def delay(self, now: float, size: int, rng: random.Random) -> float:
        """Seconds from ``now`` until a frame of ``size`` bytes handed to the link now arrives."""
        d = self.direction
        on_wire = 0.0
        if d.byte_time:
            done = max(now, self.free_at) + size * d.byte_time
            self.free_at = done
            on_wire = done - now
        latency = d.latency
        if d.jitter:
            latency = max(0.0, latency + rng.uniform(-d.jitter, d.jitter))
        if d.loss:
            # a lost segment waits for the retransmission timer, which doubles each time the resend is lost too
            timeout = d.rto
            for _ in range(MAX_RESENDS):
                if rng.random() >= d.loss:
                    break
                latency += timeout
                timeout *= 2
        delay = on_wire + latency
        arrival = now + delay
        if arrival < self.last_arrival:
            # head-of-line blocking: TCP hands nothing over before the frames ahead of it
            delay, arrival = self.last_arrival - now, self.last_arrival
        self.last_arrival = arrival
        return delay


#: how long the end of a connection waits beyond the last frame's due time for it to be handed over
_FINISH_SLACK = 1.0

_DATA_OPCODES = (1, 2)


class Impairment:
    """One connection's link: frames held back each way, let go in order by one greenlet of its own.

    The transport hands every frame it would write to :meth:`hold_up` and every message it
    would deliver to :meth:`hold_down`; the greenlet writes and delivers them when they are
    due, through the callbacks given to :meth:`bind`, and ends with the connection
    (:meth:`finish`). No greenlet is started until a frame is held.
    """

    __slots__ = (
        "up", "down", "rng", "network", "_write", "_deliver", "_held_up", "_held_down", "_greenlet", "_wake",
        "_until", "_closed", "_label", "_drained",
    )  # fmt: skip

    def __init__(self, link: Link, rng: random.Random, network: NetworkRun | None = None) -> None:
        self.up = None if link.up is None else Lane(link.up)
        self.down = None if link.down is None else Lane(link.down)
        self.rng = rng
        #: told the up-delay of labelled frames and the down-delay of each message as it is delivered
        self.network = network
        self._write: Callable[[bytes], None] | None = None
        self._deliver: Callable[[bytes, bool], None] | None = None
        self._held_up: deque[tuple[float, bytes]] = deque()
        self._held_down: deque[tuple[float, float, bytes, bool]] = deque()
        self._greenlet = None
        self._wake = gevent.event.Event()
        #: what the greenlet sleeps until: a frame due earlier must wake it
        self._until = math.inf
        self._closed = False
        self._label: Hashable | None = None
        self._drained: gevent.event.Event | None = None

    @property
    def held(self) -> int:
        """Frames held now, both ways."""
        return len(self._held_up) + len(self._held_down)

    @property
    def running(self) -> bool:
        """Whether its greenlet is alive: from the first frame held until the connection's end."""
        return self._greenlet is not None and not self._greenlet.dead

    def bind(self, write: Callable[[bytes], None], deliver: Callable[[bytes, bool], None]) -> None:
        """The transport's own write of a frame and delivery of a message, for when they are due."""
        self._write, self._deliver = write, deliver

    def label_next(self, label: Hashable) -> None:
        """Tell the network the up-delay of the next data frame under ``label`` (its sender and send time)."""
        self._label = label

    def hold_up(self, chunk: bytes) -> bool:
        """Take a frame on its way to the backend; False when it is to go out now (no up-delay, or it is due)."""
        if self.up is None or self._closed or gevent.getcurrent() is self._greenlet:
            return False
        now = time.monotonic()
        delay = self.up.delay(now, len(chunk), self.rng)
        if self._label is not None and chunk and (chunk[0] & 0x0F) in _DATA_OPCODES:
            if self.network is not None:
                self.network.record_up(self._label, delay)
            self._label = None
        self._held_up.append((now + delay, chunk))
        self._due(now + delay)
        return True

    def hold_down(self, payload: bytes, binary: bool) -> bool:
        """Take a message from the backend; False when it is to be delivered now."""
        if self.down is None or self._closed or gevent.getcurrent() is self._greenlet:
            return False
        now = time.monotonic()
        size = len(payload)
        # the WebSocket header counts against the bandwidth too
        delay = self.down.delay(now, size + (2 if size < 126 else 4 if size < 65536 else 10), self.rng)
        self._held_down.append((now + delay, delay, payload, binary))
        self._due(now + delay)
        return True

    def finish(self, deliver_held: bool) -> None:
        """The connection ended: nothing more is written; held messages are delivered first when ``deliver_held``.

        The backend's close came after the messages it sent before it, so they are still
        delivered (each when due); a link that was lost or aborted here loses them with it.
        """
        self._held_up.clear()
        if deliver_held and self._held_down and self._greenlet is not None:
            self._drained = gevent.event.Event()
            self._drained.wait(max(self._held_down[-1][0] - time.monotonic(), 0.0) + _FINISH_SLACK)
        self._closed = True
        self._held_down.clear()
        self._wake.set()

    def _due(self, at: float) -> None:
        if self._greenlet is None:
            self._greenlet = gevent.spawn_raw(self._run)
        elif at < self._until:
            self._wake.set()

    def _run(self) -> None:
        up, down, wake = self._held_up, self._held_down, self._wake
        while not self._closed:
            first = min(up[0][0] if up else math.inf, down[0][0] if down else math.inf)
            now = time.monotonic()
            if first > now:
                self._until = first
                wake.clear()
                wake.wait(None if first == math.inf else first - now)
                continue
            self._until = -math.inf
            if up and up[0][0] == first:
                self._release_up(up.popleft()[1])
            else:
                _, delay, payload, binary = down.popleft()
                self._release_down(delay, payload, binary)
                if not down and self._drained is not None:
                    self._drained.set()

    def _release_up(self, chunk: bytes) -> None:
        try:
            self._write(chunk)
        except OSError:
            # the transport has marked the connection lost: what is still held can never go out
            self._held_up.clear()
            self.up = None

    def _release_down(self, delay: float, payload: bytes, binary: bool) -> None:
        network = self.network
        if network is None:
            self._deliver(payload, binary)
            return
        network.delivering = delay
        try:
            self._deliver(payload, binary)
        finally:
            network.delivering = 0.0


class Outages:
    """When one user's link goes away: offline spells and handovers, each a Poisson process of its own."""

    __slots__ = ("condition", "rng")

    def __init__(self, condition: LinkProfile, rng: random.Random) -> None:
        self.condition = condition
        self.rng = rng

    @property
    def any(self) -> bool:
        return bool(self.condition.offline_every_s or self.condition.handover_every_s)

    def next_offline(self, after: float) -> tuple[float, float] | None:
        """The next offline spell after ``after`` (the end of the last one): its start and how long it lasts."""
        mean = self.condition.offline_every_s
        if not mean:
            return None
        start = after + self.rng.expovariate(1 / mean)
        return start, self.rng.uniform(self.condition.offline_min_s, self.condition.offline_max_s)

    def next_handover(self, after: float) -> float | None:
        mean = self.condition.handover_every_s
        return None if not mean else after + self.rng.expovariate(1 / mean)


#: up-delays of messages sent by this process's users that the receivers may still ask for
UP_DELAYS_KEPT = 65536


class NetworkRun:
    """One process's network conditions for one test: who is on what, and the added latency of each delivery."""

    def __init__(self, profile: NetworkProfile, now: Callable[[], float]) -> None:
        self.profile = profile
        #: the backend's time as this process knows it, as the accounting reads it
        self.now = now
        self.conditions: dict[str, LinkProfile] = {**BUILT_IN, **profile.profiles}
        self._mix = {entry.profile: entry.share for entry in profile.mix}
        self._regions = {entry.region: entry.share for entry in profile.regions}
        self._region_rtt = {
            entry.region: entry.rtt_ms or region_rtt_ms(entry.region, profile.backend_region)
            for entry in profile.regions
        }
        self._links: dict[tuple[str, str], Link] = {}
        #: jitter and loss draws for every connection of the process
        self.rng = random.Random()
        #: user id -> its link, for every user this process ever ran in the test
        self.links: dict[str, Link] = {}
        self.conditions_used: Counter[str] = Counter()
        self.regions_used: Counter[str] = Counter()
        self.added = new_histogram()
        self.backend = new_histogram()
        self.unknown_split = 0
        self.offline_spells = 0
        self.handovers = 0
        #: the down-delay of the message being delivered right now; 0 outside a held delivery
        self.delivering = 0.0
        self._up_delays: dict[Hashable, float] = {}

    def assign(self, user_id: str) -> tuple[str, str, Link]:
        """A user's condition, region and link: drawn from its id alone, so every run gives it the same."""
        condition = draw_role(random.Random(f"network/{user_id}"), self._mix, "good")
        region = draw_role(random.Random(f"region/{user_id}"), self._regions, self.profile.backend_region)
        link = self._links.get((condition, region))
        if link is None:
            rtt = self._region_rtt.get(region, 0.0)
            link = self._links[condition, region] = link_for(self.conditions[condition], rtt)
        self.links[user_id] = link
        self.conditions_used[condition] += 1
        self.regions_used[region] += 1
        return condition, region, link

    def record_up(self, label: Hashable, delay: float) -> None:
        table = self._up_delays
        table[label] = delay
        if len(table) > UP_DELAYS_KEPT:
            del table[next(iter(table))]

    def up_delay(self, sender: str, sent_at: float) -> float | None:
        """What the link added to a message of ``sender`` on its way up; None when this process cannot tell."""
        link = self.links.get(sender)
        if link is None:
            return None
        if link.up is None:
            return 0.0
        if link.up.fixed:
            return link.up.latency
        return self._up_delays.get((sender, sent_at))

    def split(self, delivery: Delivery, down: float) -> None:
        """Record a delivery's latency apart: what the links added, and the rest."""
        up = self.up_delay(delivery.sender, delivery.sent_at)
        if up is None:
            self.unknown_split += 1
            return
        # to the microsecond: a fixed figure is recorded as exactly that figure
        added = round(up + down, 6)
        record_seconds(self.added, added)
        record_seconds(self.backend, self.now() - delivery.sent_at - added)

    def snapshot(self) -> dict:
        """This process's figures in types Locust's message channel carries; :func:`summary` adds them up."""
        return {
            "conditions": dict(self.conditions_used), "regions": dict(self.regions_used),
            "added": encode(self.added), "backend": encode(self.backend), "unknown_split": self.unknown_split,
            "offline_spells": self.offline_spells, "handovers": self.handovers,
        }  # fmt: skip


def summary(snapshots: list[dict]) -> dict:
    """The summary's ``network`` block from one process's snapshot, or the sum of every worker's."""
    added, backend = new_histogram(), new_histogram()
    conditions: Counter[str] = Counter()
    regions: Counter[str] = Counter()
    for snap in snapshots:
        add_encoded(added, snap["added"])
        add_encoded(backend, snap["backend"])
        conditions.update(snap["conditions"])
        regions.update(snap["regions"])
    return {
        "profiles": dict(sorted(conditions.items())),
        "regions": dict(sorted(regions.items())),
        "added_latency_ms": percentiles_ms(added),
        "backend_latency_ms": percentiles_ms(backend),
        "split": added.get_total_count(),
        "unknown_split": sum(s["unknown_split"] for s in snapshots),
        "offline_spells": sum(s["offline_spells"] for s in snapshots),
        "handovers": sum(s["handovers"] for s in snapshots),
    }


def for_run(context) -> NetworkRun | None:
    """The run's network conditions in this process (made on first use), None without a ``network:`` section."""
    profile = context.profile.network
    if profile is None:
        return None
    return context.shared("network", lambda: NetworkRun(profile, context.accounting.now))


__all__ = [
    "BUILT_IN",
    "Direction",
    "Impairment",
    "Lane",
    "Link",
    "NetworkRun",
    "Outages",
    "for_run",
    "link_for",
    "region_rtt_ms",
    "summary",
]
