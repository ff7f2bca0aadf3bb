"""The media plane without I/O: the packet format, speakers' frames, datagram links, and what listeners hear.

Seated speakers and hosts publish a 20 ms audio frame every 20 ms; the backend forwards them
SFU-style to the room's members; each listener plays them out through a fixed jitter buffer
and measures what it heard. The wire format and the rules are in docs/media.md; in short:

- A listener follows each stream (ssrc, stream start) it hears in segments. A segment starts
  at the first frame heard, or at a frame captured more than 10 ms later than the frames
  heard before it allow (the backend paused forwarding: Top-K); its first heard frame is
  its anchor. Slot ``s`` of a segment is due at the anchor's arrival + (s − anchor) × 20 ms
  + the buffer depth: publishers stamp captures on that 20 ms grid, so this is the anchor's
  arrival + (capture(s) − capture(anchor)) + the buffer.
- Slots are decided lazily, in order, as arrivals pass their deadlines: played when heard by
  then, else unplayable and missing. A missing slot heard later is late; one still missing
  3 s past its deadline (or when listening ends) is lost, and a frame for it after that is
  stale. Only slots from a segment's first to its highest heard frame count: what may have
  followed the last frame heard is unknowable.
- A run of consecutive unplayable slots longer than ``stall_ms`` is a stall. Listening time
  and stalls grow as slots are decided, so every counter only grows (Prometheus reads them
  live).

Nothing here opens a socket or knows gevent or Locust: the I/O and the Locust side drive
these objects with bytes and times. The reference backend may import the packet format from
here without pulling in the client side.
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from loadgen.accounting import add_encoded, encode, new_histogram, percentiles_ms, record_seconds
from loadgen.profile import MediaProfile

if TYPE_CHECKING:
    from loadgen.network import Direction

#: one audio frame's duration, and the interval at which a publisher sends them
FRAME_SECONDS = 0.02
#: flags, kind, audio level, (reserved), ssrc, sequence, RTP timestamp, capture µs, stream start µs
HEADER = struct.Struct("!BBBxIIIQQ")
AUDIO, BIND, BIND_ACK = 1, 2, 3
KINDS = (AUDIO, BIND, BIND_ACK)
VERSION = 0x80
_VERSION_MASK = 0xC0
MARKER = 0x01
#: the RTP timestamp runs at 48 kHz: 960 ticks per 20 ms frame
TICKS_PER_FRAME = 960
TOKEN_BYTES = 16
#: RFC 6464 levels (0 loudest, 127 silence) a speaker's frames carry while talking, and while quiet
LOUD_LEVELS = (20, 40)
QUIET_LEVELS = (80, 127)

_U32 = 0xFFFFFFFF
_pack = HEADER.pack
_unpack_from = HEADER.unpack_from


class Header(NamedTuple):
    """A packet's header; times in seconds on the backend's clock."""

    kind: int
    ssrc: int
    seq: int
    capture: float
    stream_start: float
    level: int
    marker: bool


def audio_packet(
    ssrc: int, seq: int, capture: float, stream_start: float, level: int, payload: bytes, marker: bool = False
) -> bytes:
    """One audio frame: the header, then the payload."""
    flags = VERSION | MARKER if marker else VERSION
    return _pack(
        flags, AUDIO, level, ssrc, seq & _U32, (seq * TICKS_PER_FRAME) & _U32, round(capture * 1e6),
        round(stream_start * 1e6),
    ) + payload  # fmt: skip


def bind_packet(ssrc: int, token: bytes) -> bytes:
    """The datagram that binds a UDP media session to the address it comes from: the token from media.open."""
    if len(token) != TOKEN_BYTES:
        raise ValueError(f"a media token is {TOKEN_BYTES} bytes (32 hex digits in media.open's ack), got {len(token)}")
    return _pack(VERSION, BIND, 0, ssrc, 0, 0, 0, 0) + token


def read_header(data: bytes) -> Header | None:
    """The header of a packet of ours; None for anything shorter, of another version or of an unknown kind."""
    if len(data) < HEADER.size:
        return None
    flags, kind, level, ssrc, seq, _timestamp, capture_us, start_us = _unpack_from(data)
    if flags & _VERSION_MASK != VERSION or kind not in KINDS:
        return None
    return Header(kind, ssrc, seq, capture_us / 1e6, start_us / 1e6, level, bool(flags & MARKER))


# -- speakers ------------------------------------------------------------------------------

#: state changes one call of Talker.level follows before it starts afresh (a speaker that fell far behind)
_MAX_FLIPS = 1000


class Talker:
    """A speaker's audio level frame by frame: talk spurts (loud) and quiet spells, each of exponential length.

    A speaker starts with a talk spurt: who takes the mic does so to speak. The level of each
    frame is drawn within the range of its spell.
    """

    __slots__ = ("rng", "talk_mean_s", "quiet_mean_s", "talking", "until")

    def __init__(self, rng: random.Random, talk_mean_s: float, quiet_mean_s: float) -> None:
        self.rng = rng
        self.talk_mean_s = talk_mean_s
        self.quiet_mean_s = quiet_mean_s
        self.talking = True
        #: when the current spurt or quiet spell ends
        self.until = -math.inf

    def level(self, frame_time: float) -> int:
        """The level of the frame captured at ``frame_time`` (calls in time order)."""
        if frame_time >= self.until:
            self._advance(frame_time)
        low, high = LOUD_LEVELS if self.talking else QUIET_LEVELS
        return self.rng.randint(low, high)

    def _advance(self, frame_time: float) -> None:
        if self.until != -math.inf:
            for _ in range(_MAX_FLIPS):
                self.talking = not self.talking
                self.until += self._lasting()
                if self.until > frame_time:
                    return
        if self.until == -math.inf:
            self.talking = True
        else:
            # too far behind to walk through every spell: the process is memoryless, so a fresh
            # draw by the shares of the time is as good as the walk
            self.talking = self.rng.random() < self.talk_mean_s / (self.talk_mean_s + self.quiet_mean_s)
        self.until = frame_time + self._lasting()

    def _lasting(self) -> float:
        mean = self.talk_mean_s if self.talking else self.quiet_mean_s
        return self.rng.expovariate(1 / mean) if mean > 0 else 0.0


#: frames one call of Publisher.due hands out at most; the rest follow on the next call
MAX_CATCH_UP = 500


class Publisher:
    """One stream's frames on an open-model schedule: frame ``seq`` is due at ``begins + seq × 20 ms``.

    ``begins`` is when the speaker may publish (the seat granted); it defaults to
    ``stream_start``, the time listeners time the stream's first audio from (the seat's
    intended request). Each frame's capture time is its due time, not when it was made: a
    generator that woke up late sends the frames it owes at once, and their delay shows it.
    """

    __slots__ = ("ssrc", "stream_start", "payload", "talker", "begins", "seq")

    def __init__(
        self, ssrc: int, stream_start: float, payload: bytes, talker: Talker, begins: float | None = None
    ) -> None:
        self.ssrc = ssrc
        self.stream_start = stream_start
        self.payload = payload
        self.talker = talker
        self.begins = stream_start if begins is None else begins
        #: the next frame's sequence: frames produced so far
        self.seq = 0

    @property
    def next_due(self) -> float:
        """When the next frame is due: the time to wake up for."""
        return self.begins + self.seq * FRAME_SECONDS

    def due(self, now: float) -> list[bytes]:
        """Every frame due by ``now`` and not produced yet, in order (at most :data:`MAX_CATCH_UP` a call)."""
        frames = []
        seq, start, ssrc, payload, talker = self.seq, self.stream_start, self.ssrc, self.payload, self.talker
        begins = self.begins
        for _ in range(MAX_CATCH_UP):
            capture = begins + seq * FRAME_SECONDS
            if capture > now:
                break
            frames.append(audio_packet(ssrc, seq, capture, start, talker.level(capture), payload, seq == 0))
            seq += 1
        self.seq = seq
        return frames


# -- datagram links ------------------------------------------------------------------------

#: the longest a datagram waits behind others for the link's bandwidth before the queue drops it
MAX_QUEUE_SECONDS = 1.0


class DatagramLane:
    """One direction of a user's emulated link, for datagrams: what ``loadgen.network.Lane`` is for TCP.

    Nothing is resent and nothing waits for a datagram ahead of it: a lost datagram is gone,
    and one with less jitter overtakes one sent before it. A bandwidth cap queues datagrams
    one behind the other; the queue drops a datagram that would wait more than
    :data:`MAX_QUEUE_SECONDS` (tail drop), which then takes no bandwidth. Loss strikes on the
    way, after the datagram had its turn on the wire.
    """

    __slots__ = ("direction", "rng", "free_at", "_burst")

    def __init__(self, direction: Direction, rng: random.Random) -> None:
        self.direction = direction
        self.rng = rng
        #: when the last admitted datagram's last byte is on the wire
        self.free_at = -math.inf
        #: the current or next loss burst, (start, end) in the callers' time, with ``loss_burst``
        self._burst: tuple[float, float] | None = None

    def admit(self, now: float, size: int) -> float | None:
        """Seconds from ``now`` until a datagram of ``size`` bytes handed to the link arrives, or None: dropped."""
        d = self.direction
        on_wire = 0.0
        if d.byte_time:
            start = max(now, self.free_at)
            if start - now > MAX_QUEUE_SECONDS:
                return None
            self.free_at = start + size * d.byte_time
            on_wire = self.free_at - now
        if d.loss and (self._in_burst(now) if d.loss_burst else self.rng.random() < d.loss):
            return None
        latency = d.latency
        if d.jitter:
            latency = max(0.0, latency + self.rng.uniform(-d.jitter, d.jitter))
        return on_wire + latency

    def _in_burst(self, now: float) -> bool:
        """Whether ``now`` falls in a loss burst (Gilbert–Elliott in time).

        Bursts last ``loss_burst`` on average and the good spells between them
        ``loss_burst × (1 − loss) / loss``, both exponential, so the link is down a share
        ``loss`` of the time and a datagram is lost with that probability, in runs.
        """
        d, rng = self.direction, self.rng
        burst = self._burst or (now, now)
        while now >= burst[1]:
            start = burst[1] + rng.expovariate(d.loss / (d.loss_burst * (1 - d.loss)))
            burst = (start, start + rng.expovariate(1 / d.loss_burst))
        self._burst = burst
        return now >= burst[0]


# -- listeners -----------------------------------------------------------------------------

#: a capture this much later than the frames heard before allow starts a new segment
SEGMENT_BREAK_SECONDS = 0.010
#: a missing slot still unheard this long past its deadline is lost
LOSS_HORIZON_SECONDS = 3.0
#: frames between two samples of a stream's interarrival jitter
JITTER_SAMPLE_FRAMES = 50
#: a sequence jump wider than this (a minute of frames) starts a new segment: nothing was lost in between
MAX_GAP = 3000
#: streams one listener follows at once; the least recently heard is settled to make room
MAX_STREAMS = 64
#: how far back a listener remembers segments, lost slots and settled streams: enough to tell a frame
#: seconds late from a duplicate, bounded so that heavy loss cannot grow a listener's memory
_SEGMENTS_KEPT = 8
_LOST_KEPT = 128
_SETTLED_KEPT = 256
_NEVER = math.inf

#: the frame counters by outcome that Prometheus and the summary show
FRAME_OUTCOMES = ("sent", "received", "lost", "late", "duplicated", "stale", "counted", "network_dropped")


class MediaRun:
    """One process's media figures for one test: every listener adds to them as it decides slots."""

    def __init__(self, profile: MediaProfile) -> None:
        self.profile = profile
        #: frames by outcome (:data:`FRAME_OUTCOMES`, and ``played``); each only grows. A decoding
        #: listener's slot ends up played, late or lost, exactly one of them; a frame it receives is
        #: also a duplicate (heard twice) or stale (its slot was settled lost, or lies outside every
        #: segment) when it is one. Counting listeners' frames are ``counted`` only.
        self.frames = dict.fromkeys((*FRAME_OUTCOMES, "played"), 0)
        self.stalls = 0
        self.stalled_frames = 0
        self.listening_frames = 0
        #: segments decoding listeners heard
        self.streams = 0
        #: listenings begun, by kind
        self.decoding = 0
        self.counting = 0
        self.first_audio_join = new_histogram()
        self.first_audio_seat = new_histogram()
        self.frame_delay = new_histogram()
        self.jitter = new_histogram()
        #: listeners not closed yet, for :meth:`close_all`
        self.open_listeners: dict[Listener, None] = {}
        #: told every time to first audio as it is recorded: ``"join"`` or ``"seat"``, and the seconds
        self.on_first_audio: Callable[[str, float], None] | None = None

    @property
    def stalled_seconds(self) -> float:
        return self.stalled_frames * FRAME_SECONDS

    @property
    def listening_seconds(self) -> float:
        return self.listening_frames * FRAME_SECONDS

    def listener(self, listening_since: float, decode: bool) -> Listener:
        """A user's listening to one room from ``listening_since`` (backend clock): decoding, or only counting."""
        if decode:
            self.decoding += 1
            listener = Listener(self, listening_since)
        else:
            self.counting += 1
            listener = _CountingListener(self, listening_since)
        self.open_listeners[listener] = None
        return listener

    def close_all(self, at: float) -> None:
        """Every listener still open stops listening at ``at`` (the end of the test)."""
        for listener in list(self.open_listeners):
            listener.close(at)

    def sent(self, frames: int) -> None:
        """Publishers' frames put on the wire."""
        self.frames["sent"] += frames

    def network_dropped(self, frames: int) -> None:
        """Datagrams an emulated link dropped (loss or a full queue), either direction."""
        self.frames["network_dropped"] += frames

    def adopt(self, snapshots: list[dict]) -> None:
        """Become the sum of ``snapshots``: a distributed run's master, whose users hear nothing, shows its workers'."""
        self.frames = dict.fromkeys((*FRAME_OUTCOMES, "played"), 0)
        self.decoding = self.counting = self.streams = self.stalls = self.stalled_frames = self.listening_frames = 0
        for name in ("first_audio_join", "first_audio_seat", "frame_delay", "jitter"):
            setattr(self, name, new_histogram())
        for snap in snapshots:
            for outcome, n in snap["frames"].items():
                self.frames[outcome] = self.frames.get(outcome, 0) + n
            self.decoding += snap["listeners"]["decoding"]
            self.counting += snap["listeners"]["counting"]
            for key in ("streams", "stalls", "stalled_frames", "listening_frames"):
                setattr(self, key, getattr(self, key) + snap[key])
            for name in ("first_audio_join", "first_audio_seat", "frame_delay", "jitter"):
                add_encoded(getattr(self, name), snap[name])

    def snapshot(self) -> dict:
        """This process's figures in types Locust's message channel carries; :func:`summary` adds them up."""
        return {
            "frames": dict(self.frames),
            "listeners": {"decoding": self.decoding, "counting": self.counting},
            "streams": self.streams,
            "stalls": self.stalls,
            "stalled_frames": self.stalled_frames,
            "listening_frames": self.listening_frames,
            "first_audio_join": encode(self.first_audio_join),
            "first_audio_seat": encode(self.first_audio_seat),
            "frame_delay": encode(self.frame_delay),
            "jitter": encode(self.jitter),
        }


class _Segment:
    """A stretch of a stream forwarded without a pause: slots ``first``..``top``, timed from the anchor."""

    __slots__ = ("first", "top", "anchor_seq", "anchor_capture", "anchor_deadline")

    def __init__(self, seq: int, arrival: float, capture: float, buffer: float) -> None:
        self.first = self.top = self.anchor_seq = seq
        self.anchor_capture = capture
        self.anchor_deadline = arrival + buffer

    def lateness(self, seq: int, capture: float) -> float:
        """How much later a frame was captured than this segment's timeline has it (negative: earlier)."""
        return capture - (self.anchor_capture + (seq - self.anchor_seq) * FRAME_SECONDS)


class _Stream:
    """What one listener knows of one stream: its segments, the slots decided, and those waiting."""

    __slots__ = (
        "segments", "index", "cursor", "top", "top_capture", "pending", "missing", "expiry", "lost", "run",
        "transit", "jitter", "unsampled", "last_arrival",
    )  # fmt: skip

    def __init__(self, seq: int, arrival: float, capture: float, buffer: float) -> None:
        self.segments = [_Segment(seq, arrival, capture, buffer)]
        #: the segment the cursor is in
        self.index = 0
        #: the next slot to decide
        self.cursor = seq
        self.top = seq
        self.top_capture = capture
        #: heard, not decided yet: seq -> arrival
        self.pending: dict[int, float] = {seq: arrival}
        #: decided unplayable, not heard, not lost yet: seq -> deadline, in the order decided
        self.missing: dict[int, float] = {}
        #: no missing slot passes the loss horizon before this
        self.expiry = _NEVER
        #: the most recent slots settled lost (an ordered set), to tell a stale frame from a duplicate
        self.lost: dict[int, None] = {}
        #: consecutive unplayable slots up to the cursor
        self.run = 0
        self.transit = arrival - capture
        self.jitter = 0.0
        self.unsampled = 0
        self.last_arrival = arrival

    def outside(self, seq: int) -> bool:
        """Whether a slot below the cursor lies in no segment (before the first, or between two)."""
        segments = self.segments
        if seq < segments[0].first:
            return True
        for segment in reversed(segments):
            if segment.first <= seq:
                return seq > segment.top
        return True


class Listener:
    """One user listening to one room: plays each stream out through the jitter buffer and counts what it heard.

    :meth:`frame` is called with every packet in the order they arrived; anything but an audio
    frame of ours is ignored.
    """

    __slots__ = ("run", "listening_since", "closed", "streams", "settled", "joined", "_buffer", "_stall_frames")

    #: whether it plays audio out and measures it, or only counts frames
    decode = True

    def __init__(self, run: MediaRun, listening_since: float) -> None:
        self.run = run
        self.listening_since = listening_since
        self.closed = False
        self.streams: dict[tuple[int, int], _Stream] = {}
        #: streams settled to make room: their frames are stale
        self.settled: dict[tuple[int, int], None] = {}
        #: whether the first audio after joining is timed yet
        self.joined = False
        self._buffer = run.profile.jitter_buffer_ms / 1000
        #: the longest run of unplayable slots that is not a stall
        self._stall_frames = int(run.profile.stall_ms // (FRAME_SECONDS * 1000))

    def frame(self, data: bytes, arrival: float) -> None:
        """A packet that arrived at ``arrival`` (seconds, backend clock)."""
        if self.closed:
            return
        try:
            flags, kind, _level, ssrc, seq, _timestamp, capture_us, start_us = _unpack_from(data)
        except struct.error:
            return
        if flags & _VERSION_MASK != VERSION or kind != AUDIO:
            return
        run = self.run
        counts = run.frames
        counts["received"] += 1
        capture = capture_us / 1e6
        record_seconds(run.frame_delay, arrival - capture)
        key = (ssrc, start_us)
        stream = self.streams.get(key)
        if stream is None:
            if key in self.settled:
                counts["stale"] += 1
            else:
                self._open(key, seq, arrival, capture, start_us / 1e6)
            return
        stream.last_arrival = arrival
        self._decide(stream, arrival)
        self._file(stream, seq, arrival, capture)
        # RFC 3550 6.4.1 and A.8, with capture times as the timestamps
        transit = arrival - capture
        difference = transit - stream.transit
        stream.transit = transit
        jitter = stream.jitter
        jitter += (abs(difference) - jitter) / 16
        stream.jitter = jitter
        stream.unsampled += 1
        if stream.unsampled >= JITTER_SAMPLE_FRAMES:
            record_seconds(run.jitter, jitter)
            stream.unsampled = 0
        if arrival >= stream.expiry:
            self._expire(stream, arrival)

    def count(self, frames: int) -> None:
        """Frames received and not looked at (a counting listener's batch from its socket)."""
        if not self.closed:
            self.run.frames["counted"] += frames

    def close(self, at: float) -> None:
        """Listening ended at ``at``: every slot up to each stream's highest heard frame is settled now."""
        if self.closed:
            return
        self.closed = True
        self.run.open_listeners.pop(self, None)
        for stream in self.streams.values():
            self._settle(stream)
        self.streams.clear()

    def _open(self, key: tuple[int, int], seq: int, arrival: float, capture: float, stream_start: float) -> None:
        streams = self.streams
        if len(streams) >= MAX_STREAMS:
            oldest = min(streams, key=lambda k: streams[k].last_arrival)
            self._settle(streams.pop(oldest))
            self.settled[oldest] = None
            if len(self.settled) > _SETTLED_KEPT:
                del self.settled[next(iter(self.settled))]
        streams[key] = _Stream(seq, arrival, capture, self._buffer)
        run = self.run
        run.streams += 1
        if stream_start >= self.listening_since:
            after, waited = "seat", arrival - stream_start
            record_seconds(run.first_audio_seat, waited)
        elif not self.joined:
            self.joined = True
            after, waited = "join", arrival - self.listening_since
            record_seconds(run.first_audio_join, waited)
        else:
            return
        if run.on_first_audio is not None:
            run.on_first_audio(after, waited)

    def _decide(self, stream: _Stream, now: float) -> None:
        """Decide every slot due by ``now``, in order: played if heard by its deadline, else unplayable."""
        cursor, top = stream.cursor, stream.top
        segments, index = stream.segments, stream.index
        if cursor > top:
            return
        segment = segments[index]
        if cursor <= segment.top and segment.anchor_deadline + (cursor - segment.anchor_seq) * FRAME_SECONDS > now:
            return
        following = segments[index + 1].first if index + 1 < len(segments) else _NEVER
        pending, missing = stream.pending, stream.missing
        run = self.run
        counts = run.frames
        limit = self._stall_frames
        run_length = stream.run
        while cursor <= top:
            while cursor >= following:
                index += 1
                segment = segments[index]
                following = segments[index + 1].first if index + 1 < len(segments) else _NEVER
                run_length = 0
            deadline = segment.anchor_deadline + (cursor - segment.anchor_seq) * FRAME_SECONDS
            if cursor > segment.top:
                # between a segment's highest heard frame and the next segment, passed only once it could play
                # on neither timeline (it may still turn up and extend one). A backend that pauses a stream keeps
                # its sequence contiguous, so the slot was sent and missed: lost, unless it turns up late. When
                # it was lost, before or after the pause, is unknowable, so it takes no listening time
                after = segments[index + 1]
                passed = max(deadline, after.anchor_deadline + (cursor - after.anchor_seq) * FRAME_SECONDS)
                if passed > now:
                    break
                if after.first - segment.top <= MAX_GAP:
                    if not missing:
                        stream.expiry = passed + LOSS_HORIZON_SECONDS
                    missing[cursor] = passed
                cursor += 1
                continue
            if deadline > now:
                break
            run.listening_frames += 1
            arrival = pending.pop(cursor, None)
            if arrival is not None and arrival <= deadline:
                counts["played"] += 1
                run_length = 0
            else:
                if arrival is None:
                    if not missing:
                        stream.expiry = deadline + LOSS_HORIZON_SECONDS
                    missing[cursor] = deadline
                else:
                    counts["late"] += 1
                run_length += 1
                if run_length > limit:
                    if run_length == limit + 1:
                        run.stalls += 1
                        run.stalled_frames += run_length
                    else:
                        run.stalled_frames += 1
            cursor += 1
        stream.cursor, stream.run = cursor, run_length
        if index > _SEGMENTS_KEPT:
            del segments[: index - _SEGMENTS_KEPT]
            index = _SEGMENTS_KEPT
        stream.index = index

    def _file(self, stream: _Stream, seq: int, arrival: float, capture: float) -> None:
        """Take a frame once the slots due before it are decided."""
        counts = self.run.frames
        segments = stream.segments
        if seq < stream.cursor:
            first = segments[0]
            if seq in stream.missing:
                del stream.missing[seq]
                counts["late"] += 1
            elif (
                stream.index == 0 and stream.cursor == first.first and first.first - seq <= MAX_GAP
                and abs(first.lateness(seq, capture)) <= SEGMENT_BREAK_SECONDS
            ):  # fmt: skip
                # overtaken by the first frame heard, and nothing decided yet: the stream starts here
                first.first = stream.cursor = seq
                stream.pending[seq] = arrival
            elif seq in stream.lost or stream.outside(seq):
                counts["stale"] += 1
            else:
                counts["duplicated"] += 1
            return
        top = stream.top
        if seq > top:
            paused = capture - stream.top_capture - (seq - top) * FRAME_SECONDS > SEGMENT_BREAK_SECONDS
            if paused or seq - top > MAX_GAP:
                self._sample_jitter(stream)
                segments.append(_Segment(seq, arrival, capture, self._buffer))
                self.run.streams += 1
            else:
                segments[-1].top = seq
            stream.top, stream.top_capture = seq, capture
            stream.pending[seq] = arrival
            return
        if seq in stream.pending:
            counts["duplicated"] += 1
            return
        n = len(segments) - 1
        while segments[n].first > seq:
            n -= 1
        segment = segments[n]
        if seq > segment.top:
            # between two segments: it belongs to the timeline its capture fits
            if segment.lateness(seq, capture) <= SEGMENT_BREAK_SECONDS:
                if stream.cursor > segment.top + 1:
                    # the cursor passed those slots as unknowable; this frame shows they were sent and missed
                    self._passed_unheard(stream, range(segment.top + 1, stream.cursor))
                segment.top = seq
            else:
                segments[n + 1].first = seq
        stream.pending[seq] = arrival

    def _passed_unheard(self, stream: _Stream, slots: range) -> None:
        """Slots already passed turn out to be in a segment: lost, and part of the run of unplayable ones."""
        run = self.run
        for seq in slots:
            # passed as missing between two segments: lost here, with its place on the timeline now known
            stream.missing.pop(seq, None)
        run.frames["lost"] += len(slots)
        run.listening_frames += len(slots)
        self._remember_lost(stream, slots)
        before = stream.run
        stream.run = after = before + len(slots)
        if before > self._stall_frames:
            run.stalled_frames += len(slots)
        elif after > self._stall_frames:
            run.stalls += 1
            run.stalled_frames += after

    def _expire(self, stream: _Stream, now: float) -> None:
        """Missing slots past the horizon are lost."""
        limit = now - LOSS_HORIZON_SECONDS
        expired = []
        stream.expiry = _NEVER
        for seq, deadline in stream.missing.items():
            if deadline > limit:
                # decided in deadline order, near enough (only overlapping segments differ): the first left is next
                stream.expiry = deadline + LOSS_HORIZON_SECONDS
                break
            expired.append(seq)
        if not expired:
            return
        for seq in expired:
            del stream.missing[seq]
        self._remember_lost(stream, expired)
        self.run.frames["lost"] += len(expired)

    @staticmethod
    def _remember_lost(stream: _Stream, slots) -> None:
        lost = stream.lost
        lost.update(dict.fromkeys(slots[-_LOST_KEPT:]))
        while len(lost) > _LOST_KEPT:
            del lost[next(iter(lost))]

    def _settle(self, stream: _Stream) -> None:
        """Decide every slot up to the highest heard frame; what is still missing is lost."""
        self._decide(stream, _NEVER)
        self.run.frames["lost"] += len(stream.missing)
        stream.missing.clear()
        stream.expiry = _NEVER
        self._sample_jitter(stream)

    def _sample_jitter(self, stream: _Stream) -> None:
        """The end of a segment: its jitter is sampled unless it just was."""
        if stream.unsampled:
            record_seconds(self.run.jitter, stream.jitter)
            stream.unsampled = 0


class _CountingListener(Listener):
    """A listener that does not play audio out: it counts frames and looks at nothing in them."""

    __slots__ = ()

    decode = False

    def frame(self, data: bytes, arrival: float) -> None:
        if not self.closed:
            self.run.frames["counted"] += 1

    def close(self, at: float) -> None:
        self.closed = True
        self.run.open_listeners.pop(self, None)


def _timings(histogram) -> dict:
    return {**percentiles_ms(histogram), "count": histogram.get_total_count()}


def _rate(part: float, whole: float) -> float | None:
    return round(part / whole, 6) if whole else None


def summary(snapshots: list[dict], profile: MediaProfile) -> dict:
    """The summary's ``media`` block from one process's snapshot, or the sum of every worker's."""
    run = MediaRun(profile)
    run.adopt(snapshots)
    frames = run.frames
    expected = frames["played"] + frames["late"] + frames["lost"]
    return {
        "transport": profile.transport,
        "rooms": profile.rooms,
        "jitter_buffer_ms": profile.jitter_buffer_ms,
        "stall_ms": profile.stall_ms,
        "listeners": {"decoding": run.decoding, "counting": run.counting},
        "streams": run.streams,
        "frames": frames,
        "expected": expected,
        "loss_rate": _rate(frames["lost"], expected),
        "late_rate": _rate(frames["late"], expected),
        "first_audio_join_ms": _timings(run.first_audio_join),
        "first_audio_seat_ms": _timings(run.first_audio_seat),
        "frame_delay_ms": _timings(run.frame_delay),
        "jitter_ms": _timings(run.jitter),
        "stalls": run.stalls,
        "stalled_s": round(run.stalled_seconds, 3),
        "listening_s": round(run.listening_seconds, 3),
        "stall_rate": _rate(run.stalled_frames, run.listening_frames),
    }


def for_run(context) -> MediaRun | None:
    """The run's media figures in this process (made on first use), None without a ``media:`` section."""
    profile = context.profile.media
    if profile is None:
        return None
    return context.shared("media", lambda: MediaRun(profile))


__all__ = [
    "AUDIO",
    "BIND",
    "BIND_ACK",
    "FRAME_OUTCOMES",
    "FRAME_SECONDS",
    "HEADER",
    "DatagramLane",
    "Header",
    "Listener",
    "MediaRun",
    "Publisher",
    "Talker",
    "audio_packet",
    "bind_packet",
    "for_run",
    "read_header",
    "summary",
]
