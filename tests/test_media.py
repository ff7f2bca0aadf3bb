"""The media plane without I/O: packets, publishers, datagram links and listeners, on hand-built timelines."""

from __future__ import annotations

import itertools
import json
import math
import random
import subprocess
import sys

import pytest

from loadgen.media import (
    AUDIO,
    BIND,
    FRAME_OUTCOMES,
    FRAME_SECONDS,
    HEADER,
    MAX_CATCH_UP,
    MAX_STREAMS,
    DatagramLane,
    Header,
    MediaRun,
    Publisher,
    Talker,
    audio_packet,
    bind_packet,
    read_header,
    summary,
)
from loadgen.network import Direction
from loadgen.profile import MediaProfile, load_profile
from tests.support import ROOT

F = FRAME_SECONDS
#: the backend's clock: Unix time, so the float arithmetic is that of a real run
START = 1_764_000_000.0
PROFILE = MediaProfile()  # a 60 ms jitter buffer, stalls over 200 ms
PAYLOAD = b"\x55" * 80


def packet(seq: int, ssrc: int = 7, start: float = START, paused: float = 0.0) -> bytes:
    """Frame ``seq`` of a stream, captured on its 20 ms grid (``paused`` seconds later after a backend pause)."""
    return audio_packet(ssrc, seq, start + paused + seq * F, start, 30, PAYLOAD, seq == 0)


def timeline(seqs, delay, ssrc: int = 7, start: float = START, paused=lambda seq: 0.0) -> list[tuple[bytes, float]]:
    """(packet, arrival) of each frame, ``delay(seq)`` after its capture."""
    return [
        (packet(seq, ssrc, start, paused(seq)), start + paused(seq) + seq * F + delay(seq)) for seq in seqs
    ]  # fmt: skip


def listen(frames, profile: MediaProfile = PROFILE, since: float = START - 1.0, run: MediaRun | None = None):
    """One decoding listener hears ``frames`` in the order they arrive, then stops listening."""
    run = MediaRun(profile) if run is None else run
    listener = run.listener(since, decode=True)
    ordered = sorted(frames, key=lambda frame: frame[1])
    for data, arrival in ordered:
        listener.frame(data, arrival)
    listener.close(ordered[-1][1] if ordered else since)
    return run


def media(run: MediaRun) -> dict:
    return summary([run.snapshot()], run.profile)


def steady(delay: float):
    return lambda seq: delay


# -- the packet format -------------------------------------------------------------------


def test_an_audio_packet_reads_back_as_it_was_written():
    """Every header field of an audio frame survives the wire, capture and stream start to the microsecond."""
    data = audio_packet(0xDEADBEEF, 5_000_000, START + 12.345678, START, 17, PAYLOAD, marker=True)
    assert len(data) == 32 + len(PAYLOAD) and data[32:] == PAYLOAD
    header = read_header(data)
    assert header == Header(AUDIO, 0xDEADBEEF, 5_000_000, pytest.approx(START + 12.345678, abs=1e-6), START, 17, True)
    flags, kind, level, ssrc, seq, timestamp, capture_us, start_us = HEADER.unpack_from(data)
    assert (flags, kind, level) == (0x81, 1, 17)
    assert timestamp == 5_000_000 * 960 % 2**32
    assert (capture_us, start_us) == (round((START + 12.345678) * 1e6), round(START * 1e6))
    assert read_header(audio_packet(1, 1, START, START, 127, b"")).marker is False


def test_a_bind_packet_carries_the_token_behind_an_otherwise_empty_header():
    """A bind is kind 2 with the ssrc, every other field zero, and the 16-byte token as its payload."""
    token = bytes.fromhex("00112233445566778899aabbccddeeff")
    data = bind_packet(42, token)
    assert HEADER.unpack_from(data) == (0x80, BIND, 0, 42, 0, 0, 0, 0) and data[32:] == token
    assert read_header(data).kind == BIND
    with pytest.raises(ValueError, match="16 bytes"):
        bind_packet(42, token[:8])


def test_read_header_rejects_what_is_not_a_packet_of_ours():
    """Short data, another version and an unknown kind are not ours: None, never an exception."""
    good = packet(3)
    assert read_header(good) is not None
    assert read_header(good[:31]) is None
    assert read_header(b"") is None
    for flags in (0x00, 0x40, 0xC0, 0x01):
        assert read_header(bytes([flags]) + good[1:]) is None
    assert read_header(good[:1] + bytes([9]) + good[2:]) is None


def test_the_media_module_leaves_the_client_side_unloaded():
    """The backend may read packets with loadgen.media: importing it loads neither gevent nor Locust."""
    code = "import sys, loadgen.media\nbad = [m for m in sys.modules if m.split('.')[0] in ('gevent', 'locust')]\n"
    code += "assert not bad, bad\n"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# -- speakers ----------------------------------------------------------------------------


def test_a_publisher_catches_up_after_a_late_wake_with_captures_on_schedule():
    """Frames due while the generator slept all come at once, each stamped with its own due time."""
    publisher = Publisher(9, START, PAYLOAD, Talker(random.Random(1), 3.0, 2.0))
    assert publisher.due(START - 0.001) == []
    first = [read_header(data) for data in publisher.due(START)]
    assert [(h.seq, h.capture, h.marker) for h in first] == [(0, START, True)]
    late = [read_header(data) for data in publisher.due(START + 1.005)]
    assert [h.seq for h in late] == list(range(1, 51))
    assert all(h.capture == pytest.approx(START + h.seq * F, abs=1e-6) for h in late)
    assert not any(h.marker for h in late) and {h.stream_start for h in late} == {START}
    assert publisher.due(START + 1.005) == []
    assert publisher.next_due == pytest.approx(START + 51 * F)


def test_a_publisher_granted_its_seat_late_starts_at_sequence_0_then_and_keeps_the_stream_start():
    """Frames run from ``begins`` on, seq 0 first, while the header's stream start stays the intended one."""
    publisher = Publisher(9, START, PAYLOAD, Talker(random.Random(1), 3.0, 2.0), begins=START + 0.3)
    assert publisher.due(START + 0.29) == [] and publisher.next_due == START + 0.3
    packets = publisher.due(START + 0.345)
    headers = [read_header(data) for data in packets]
    assert [(h.seq, h.marker) for h in headers] == [(0, True), (1, False), (2, False)]
    assert {h.stream_start for h in headers} == {START}
    assert [h.capture for h in headers] == pytest.approx([START + 0.3, START + 0.32, START + 0.34], abs=1e-6)
    # a listener there before the seat request times first audio from the intended start
    seat = media(listen([(packets[0], START + 0.35)]))["first_audio_seat_ms"]
    assert seat["count"] == 1 and seat["max"] == pytest.approx(350.0, rel=1e-3)


def test_a_long_catch_up_comes_in_bounded_batches_and_skips_nothing():
    """A generator 100 s behind gets its 5,000 frames over several calls, every sequence once, in order."""
    publisher = Publisher(9, START, PAYLOAD, Talker(random.Random(2), 3.0, 2.0))
    batches = [publisher.due(START + 99.999) for _ in range(12)]
    assert max(len(batch) for batch in batches) == MAX_CATCH_UP
    seqs = [read_header(data).seq for batch in batches for data in batch]
    assert seqs == list(range(5000))


def test_a_talker_is_loud_for_its_share_of_the_time():
    """Talk spurts averaging 3 s between quiet spells averaging 2 s make 60 % of the frames loud."""
    talker = Talker(random.Random(3), 3.0, 2.0)
    levels = [talker.level(START + n * F) for n in range(500_000)]
    loud = [level for level in levels if level <= 40]
    assert set(loud) <= set(range(20, 41)) and {lv for lv in levels if lv > 40} <= set(range(80, 128))
    assert len(loud) / len(levels) == pytest.approx(0.6, abs=0.03)
    # spurts and spells alternate: about one of each per 5 s
    changes = sum(1 for a, b in itertools.pairwise(levels) if (a <= 40) != (b <= 40))
    assert changes == pytest.approx(2 * 500_000 * F / 5.0, rel=0.1)


def test_a_talker_without_quiet_spells_always_talks():
    """With a quiet mean of 0 every frame is loud, however far apart the calls."""
    talker = Talker(random.Random(4), 0.5, 0.0)
    assert all(20 <= talker.level(START + t) <= 40 for t in (0, 0.02, 7.0, 3600.0, 3600.02))


# -- datagram links ----------------------------------------------------------------------


def test_a_datagram_lane_loses_its_share_within_a_binomial_bound():
    """5 % loss over 20,000 datagrams loses 1,000 give or take five standard deviations; the rest arrive."""
    lane = DatagramLane(Direction(0.03, 0.0, 0.05, 0.0, 0.0), random.Random(5))
    held = [lane.admit(n * 0.02, 112) for n in range(20_000)]
    lost = held.count(None)
    assert abs(lost - 1000) < 5 * math.sqrt(20_000 * 0.05 * 0.95)
    assert {delay for delay in held if delay is not None} == {0.03}


def test_bursty_loss_keeps_its_share_and_comes_in_runs():
    """5 % lost in bursts of 100 ms on average: 5 % of 50-per-second datagrams go, about five in a row."""

    def lost_runs(burst: float) -> tuple[float, float]:
        lane = DatagramLane(Direction(0.0, 0.0, 0.05, 0.0, 0.0, burst), random.Random(9))
        lost = [lane.admit(n * FRAME_SECONDS, 100) is None for n in range(500_000)]
        runs = sum(1 for gone, before in zip(lost, [False, *lost], strict=False) if gone and not before)
        return sum(lost) / len(lost), sum(lost) / runs

    share, run = lost_runs(0.1)
    # 10,000 s hold some 5,000 bursts: the share is 5 % within a few tenths of a percent
    assert 0.047 <= share <= 0.053, share
    assert 4.5 <= run <= 6.5, run
    scattered_share, scattered_run = lost_runs(0.0)
    assert 0.047 <= scattered_share <= 0.053 and scattered_run < 1.1, (scattered_share, scattered_run)


def test_datagram_jitter_stays_within_its_bounds_and_reorders():
    """Jitter spreads delays over latency ± jitter, never below zero, and later datagrams overtake earlier ones."""
    lane = DatagramLane(Direction(0.05, 0.02, 0.0, 0.0, 0.0), random.Random(6))
    delays = [lane.admit(n * 0.02, 112) for n in range(5000)]
    assert 0.03 <= min(delays) < 0.031 and 0.069 < max(delays) <= 0.07
    arrivals = [n * 0.02 + delay for n, delay in enumerate(delays)]
    assert sum(1 for a, b in itertools.pairwise(arrivals) if b < a) > 100
    clamped = DatagramLane(Direction(0.01, 0.03, 0.0, 0.0, 0.0), random.Random(7))
    near = [clamped.admit(n * 0.02, 112) for n in range(5000)]
    assert min(near) == 0.0 and sum(1 for d in near if d == 0.0) > 1000


def test_a_full_datagram_queue_drops_the_tail():
    """At 1 ms a byte, 150-byte datagrams queue 0.15 s apart; one that would wait over 1 s is dropped."""
    lane = DatagramLane(Direction(0.02, 0.0, 0.0, 0.0, 8 / 8000), random.Random(8))
    burst = [lane.admit(10.0, 150) for _ in range(20)]
    admitted = [delay for delay in burst if delay is not None]
    assert admitted == pytest.approx([0.15 * (n + 1) + 0.02 for n in range(7)])
    assert burst[7:] == [None] * 13
    # dropped datagrams took no bandwidth: the queue is empty once the seven are out
    assert lane.admit(10.0 + 7 * 0.15, 150) == pytest.approx(0.15 + 0.02)


# -- listeners ---------------------------------------------------------------------------


def test_every_twentieth_frame_dropped_is_five_percent_loss():
    """500 frames with every 20th missing: exactly 25 lost of 500 expected, nothing late, no stall."""
    block = media(listen(timeline([s for s in range(500) if s % 20 != 10], steady(0.03))))
    assert block["frames"]["lost"] == 25 and block["expected"] == 500 and block["loss_rate"] == 0.05
    assert block["frames"]["received"] == 475 and block["frames"]["late"] == 0 and block["late_rate"] == 0.0
    assert (block["stalls"], block["stalled_s"], block["listening_s"]) == (0, 0.0, 10.0)
    assert block["streams"] == 1 and block["listeners"] == {"decoding": 1, "counting": 0}


def test_a_300_ms_hole_is_one_stall_of_300_ms():
    """15 frames missing in a row (300 ms, over the 200 ms limit) make one stall of exactly that length."""
    block = media(listen(timeline([s for s in range(500) if not 100 <= s < 115], steady(0.03))))
    assert (block["stalls"], block["stalled_s"], block["listening_s"]) == (1, 0.3, 10.0)
    assert block["stall_rate"] == pytest.approx(0.3 / 10.0) and block["frames"]["lost"] == 15


def test_a_200_ms_hole_is_no_stall():
    """10 frames missing in a row last exactly the limit, which a stall must exceed."""
    block = media(listen(timeline([s for s in range(500) if not 100 <= s < 110], steady(0.03))))
    assert (block["stalls"], block["stalled_s"], block["stall_rate"]) == (0, 0.0, 0.0)
    assert block["frames"]["lost"] == 10


def test_a_constant_delay_is_the_frame_delay_with_no_jitter():
    """Every frame 50 ms after its capture: frame delay 50 ms throughout, and interarrival jitter 0."""
    block = media(listen(timeline(range(500), steady(0.05))))
    delay = block["frame_delay_ms"]
    assert delay["count"] == 500
    assert delay["p50"] == pytest.approx(50.0, rel=1e-3) and delay["max"] == pytest.approx(50.0, rel=1e-3)
    # ten samples: every 50 frames and at the segment's end; zero is the histogram's 1 µs floor
    assert block["jitter_ms"]["count"] == 10 and block["jitter_ms"]["max"] <= 0.001


def test_alternating_delay_gives_the_rfc_3550_jitter():
    """Delays alternating 45 and 55 ms make |D| 10 ms each frame, and J follows J += (|D| − J)/16."""
    block = media(listen(timeline(range(500), lambda seq: 0.05 + (0.005 if seq % 2 else -0.005))))
    # J after n differences of 10 ms, from J = 0: the closed form of the recurrence
    expected = [0.010 * (1 - (15 / 16) ** n) for n in (*range(50, 500, 50), 499)]
    jitter = block["jitter_ms"]
    assert jitter["count"] == len(expected) == 10
    assert jitter["max"] == pytest.approx(expected[-1] * 1000, abs=0.01)
    assert jitter["p50"] == pytest.approx(sorted(expected)[4] * 1000, abs=0.01)


def test_frames_later_than_the_buffer_are_late_not_lost():
    """With a 60 ms buffer, a frame 70 ms behind the anchor's pace is late; one 50 ms behind still plays."""

    def delay(seq: int) -> float:
        return 0.02 + (0.07 if seq % 10 == 5 else 0.05 if seq % 10 == 7 else 0.0)

    block = media(listen(timeline(range(500), delay)))
    assert block["frames"]["late"] == 50 and block["late_rate"] == 0.1
    assert block["frames"]["lost"] == 0 and block["expected"] == 500 and block["stalls"] == 0


def test_a_run_of_late_frames_is_a_stall():
    """Late frames are unplayable: 15 of them in a row stall playback as a hole would."""
    block = media(listen(timeline(range(500), lambda seq: 0.02 + (0.2 if 200 <= seq < 215 else 0.0))))
    assert block["frames"]["late"] == 15 and block["frames"]["lost"] == 0
    assert (block["stalls"], block["stalled_s"]) == (1, 0.3)


def test_duplicates_count_once_as_frames_and_once_as_duplicates():
    """A second copy of a frame is a duplicate whether its slot is still waiting or already played."""
    frames = timeline(range(500), steady(0.03))
    # every 10th frame again 5 ms later (slot not decided yet), every 100th again 1 s later (played long ago)
    again = [(data, arrival + 0.005) for data, arrival in frames[::10]]
    again += [(data, arrival + 1.0) for data, arrival in frames[3::100]]
    block = media(listen(frames + again))
    assert block["frames"]["duplicated"] == 55 and block["frames"]["received"] == 555
    assert (block["frames"]["lost"], block["frames"]["late"], block["expected"]) == (0, 0, 500)


def test_reordering_within_the_buffer_plays_every_frame():
    """Each even frame overtaken by the odd one after it, by less than the buffer: all played, none late."""
    block = media(listen(timeline(range(500), lambda seq: 0.02 if seq % 2 else 0.055)))
    assert (block["frames"]["late"], block["frames"]["lost"], block["expected"]) == (0, 0, 500)


def test_a_backend_pause_is_neither_loss_nor_stall():
    """Top-K stops forwarding for 2 s with the sequence kept contiguous: a new segment, nothing missing."""

    def paused(seq: int) -> float:
        return 2.0 if seq >= 250 else 0.0

    block = media(listen(timeline(range(500), steady(0.03), paused=paused)))
    assert (block["frames"]["lost"], block["frames"]["late"], block["stalls"]) == (0, 0, 0)
    assert block["streams"] == 2 and block["listening_s"] == 10.0 and block["expected"] == 500


def test_a_frame_overtaken_across_a_pause_joins_the_segment_its_capture_fits():
    """The first frame after a pause arriving after the second is the new segment's, not a loss or stale."""

    def delay(seq: int) -> float:
        return 0.05 if seq == 250 else 0.02

    block = media(listen(timeline(range(500), delay, paused=lambda seq: 2.0 if seq >= 250 else 0.0)))
    assert block["frames"] == {**block["frames"], "lost": 0, "late": 0, "stale": 0, "duplicated": 0}
    assert block["streams"] == 2 and block["expected"] == 500


def test_frames_lost_at_the_edge_of_a_pause_are_lost_and_one_turning_up_late_is_late():
    """Frames 245..249 missing at a 50 ms pause are lost (the sequence runs on over it); 249 arriving late is late."""

    def paused(seq: int) -> float:
        return 0.05 if seq >= 250 else 0.0

    def delay(seq: int) -> float:
        return 0.11 if seq == 249 else 0.03

    edge = media(listen(timeline([s for s in range(500) if not 245 <= s < 250], delay, paused=paused)))
    assert (edge["frames"]["lost"], edge["frames"]["late"], edge["expected"]) == (5, 0, 500)
    # lost before or after the pause, nobody can say: they take no listening time, and stall nothing
    assert edge["streams"] == 2 and edge["listening_s"] == 9.9 and edge["stalls"] == 0
    # 249 comes after the first frame past the pause, in time to be placed: on the old timeline, and late there
    known = media(listen(timeline([s for s in range(500) if not 245 <= s < 249], delay, paused=paused)))
    assert (known["frames"]["lost"], known["frames"]["late"], known["frames"]["stale"]) == (4, 1, 0)
    assert known["expected"] == 500 and known["streams"] == 2


def test_a_frame_from_before_the_first_one_heard_is_stale_once_playout_began():
    """A listener that came in at frame 100 counts frame 50 turning up a second later as stale, not lost."""
    frames = timeline(range(100, 500), steady(0.03)) + [(packet(50), START + 100 * F + 1.0)]
    block = media(listen(frames))
    assert (block["frames"]["stale"], block["frames"]["lost"], block["expected"]) == (1, 0, 400)


def test_frames_after_the_last_one_heard_are_never_lost():
    """The stream's last 20 frames never arrive: what follows the highest frame heard is unknowable."""
    block = media(listen(timeline(range(480), steady(0.03))))
    assert (block["frames"]["lost"], block["expected"], block["listening_s"]) == (0, 480, 9.6)


def test_a_missing_frame_turns_lost_three_seconds_past_its_deadline_and_stale_after():
    """Missing, then lost once 3 s past its deadline (counted once), and its arrival after that is stale."""
    run = MediaRun(PROFILE)
    listener = run.listener(START - 1.0, decode=True)
    frames = dict(timeline(range(400), steady(0.03)))
    order = [data for data in frames if read_header(data).seq != 10]
    deadline = START + 0.03 + 10 * F + 0.06
    for data in order:
        arrival = frames[data]
        listener.frame(data, arrival)
        if arrival < deadline + 2.9:
            assert run.frames["lost"] == 0
    assert run.frames["lost"] == 1 and run.listening_frames > 0
    listener.frame(packet(10), START + 8.5)
    assert (run.frames["lost"], run.frames["late"], run.frames["stale"]) == (1, 0, 1)
    listener.close(START + 8.5)
    assert (run.frames["lost"], run.frames["played"], run.frames["late"]) == (1, 399, 0)


def test_a_frame_heard_before_the_horizon_is_late_not_lost():
    """A frame 2 s late fills its missing slot as late, and nothing is lost."""
    frames = timeline(range(400), lambda seq: 2.0 if seq == 10 else 0.03)
    block = media(listen(frames))
    assert (block["frames"]["late"], block["frames"]["lost"], block["frames"]["stale"]) == (1, 0, 0)


def test_a_new_stream_start_for_the_same_ssrc_is_a_new_stream():
    """The same ssrc publishing again (a new seat) starts over at 0: a new stream, timed for first audio."""
    again = START + 20.0
    frames = timeline(range(100), steady(0.03)) + timeline(range(100), steady(0.04), start=again)
    block = media(listen(frames))
    assert block["streams"] == 2 and block["expected"] == 200 and block["frames"]["lost"] == 0
    assert block["first_audio_seat_ms"]["count"] == 2
    assert block["first_audio_seat_ms"]["max"] == pytest.approx(40.0, rel=1e-3)


def test_first_audio_is_timed_once_after_joining_and_once_per_stream_after_a_seat():
    """A stream already going times the join (once); each stream begun later times its seat from its start."""
    since = START + 10.0
    # frame 516 of a stream begun 10 s before the listener is the first it hears, 355 ms after joining
    frames = timeline(range(516, 600), steady(0.035), ssrc=1)
    frames += timeline(range(300, 400), steady(0.5), ssrc=2, start=START + 5.0)  # also going before the join
    frames += timeline(range(50), steady(0.25), ssrc=3, start=since + 1.0)
    frames += timeline(range(50), steady(0.1), ssrc=4, start=since + 2.0)
    run = MediaRun(PROFILE)
    told: list[tuple[str, float]] = []
    run.on_first_audio = lambda after, seconds: told.append((after, seconds))
    block = media(listen(frames, since=since, run=run))
    assert [after for after, _ in told] == ["join", "seat", "seat"]
    assert [seconds for _, seconds in told] == pytest.approx([0.355, 0.25, 0.1], abs=1e-6)
    assert block["first_audio_join_ms"]["count"] == 1
    assert block["first_audio_join_ms"]["max"] == pytest.approx(355.0, rel=1e-3)
    seat = block["first_audio_seat_ms"]
    assert seat["count"] == 2
    assert (seat["p50"], seat["max"]) == (pytest.approx(100.0, rel=1e-3), pytest.approx(250.0, rel=1e-3))


def test_a_counting_listener_only_counts():
    """A listener that does not decode counts every packet it gets and measures nothing."""
    run = MediaRun(PROFILE)
    listener = run.listener(START, decode=False)
    for data, arrival in timeline(range(100), steady(0.03)):
        listener.frame(data, arrival)
    listener.frame(b"not even a header", START + 3.0)
    listener.close(START + 3.0)
    listener.frame(packet(100), START + 3.1)
    block = media(run)
    assert block["frames"] == {**dict.fromkeys(block["frames"], 0), "counted": 101}
    assert block["listeners"] == {"decoding": 0, "counting": 1}
    assert block["expected"] == 0 and block["loss_rate"] is None and block["stall_rate"] is None
    assert block["frame_delay_ms"]["count"] == 0


def test_a_counting_listener_counts_a_batch_read_unlooked_at():
    """Counting a batch of frames adds them to ``counted``; nothing counts once listening ended."""
    run = MediaRun(PROFILE)
    listener = run.listener(START, decode=False)
    listener.count(37)
    listener.count(0)
    listener.close(START + 1.0)
    listener.count(5)
    assert run.frames["counted"] == 37 and run.frames["received"] == 0


def test_closing_every_listener_settles_what_each_heard():
    """At the end of a test every listener still open is closed: its streams settled, its later frames ignored."""
    run = MediaRun(PROFILE)
    open_one, closed_one, counting = (run.listener(START - 1.0, decode) for decode in (True, True, False))
    closed_one.close(START)
    for data, arrival in timeline([s for s in range(100) if s != 50], steady(0.03)):
        open_one.frame(data, arrival)
        counting.frame(data, arrival)
    run.close_all(START + 2.1)
    assert (run.frames["played"], run.frames["lost"], run.frames["counted"]) == (99, 1, 99)
    assert run.listening_frames == 100 and not run.open_listeners
    open_one.frame(packet(100), START + 2.2)
    counting.frame(packet(100), START + 2.2)
    assert (run.frames["received"], run.frames["counted"]) == (99, 99)


def test_a_decoding_listener_ignores_what_is_not_audio_and_anything_after_close():
    """Junk, a bind ack and frames after listening ended are not received."""
    run = MediaRun(PROFILE)
    listener = run.listener(START, decode=True)
    listener.frame(b"\x80\x01", START + 0.1)
    listener.frame(bytes([0x80, 3]) + bytes(30), START + 0.1)
    for data, arrival in timeline(range(10), steady(0.03)):
        listener.frame(data, arrival)
    listener.close(START + 1.0)
    listener.frame(packet(10), START + 1.1)
    assert run.frames["received"] == 10 and run.frames["played"] == 10


def test_a_listener_following_too_many_streams_settles_the_quietest():
    """Past the stream limit the least recently heard stream is settled, and its later frames are stale."""
    run = MediaRun(PROFILE)
    listener = run.listener(START - 1.0, decode=True)
    for ssrc in range(MAX_STREAMS + 1):
        for data, arrival in timeline(range(3), steady(0.03), ssrc=ssrc, start=START + ssrc):
            listener.frame(data, arrival)
    # no stream's slots are due yet, but the first stream's were settled to make room
    assert run.frames["played"] == 3
    listener.frame(packet(3, ssrc=0), START + 200.0)
    assert run.frames["stale"] == 1
    listener.close(START + 200.0)
    assert (run.frames["played"], run.streams) == (3 * (MAX_STREAMS + 1), MAX_STREAMS + 1)


def test_a_profile_section_sets_the_buffer_and_the_stall_limit(tmp_path):
    """jitter_buffer_ms and stall_ms from a profile's media section decide what is late and what stalls."""
    path = tmp_path / "media.yaml"
    path.write_text("media:\n  jitter_buffer_ms: 100\n  stall_ms: 400\n  transport: websocket\n")
    profile = load_profile(path).media
    frames = timeline([s for s in range(500) if not 100 <= s < 115], lambda seq: 0.02 + (0.09 if seq == 7 else 0))
    block = media(listen(frames, profile=profile))
    assert (block["frames"]["late"], block["stalls"], block["frames"]["lost"]) == (0, 0, 15)
    assert (block["transport"], block["jitter_buffer_ms"], block["stall_ms"]) == ("websocket", 100.0, 400.0)


# -- against an independent reading of the rules -----------------------------------------


def reference_figures(delivered: dict[int, float], buffer: float, stall_frames: int, segments=None) -> dict:
    """The rules read offline, knowing every arrival and where the backend paused.

    Each segment (sequences forwarded without a pause; by default all of them) runs from its
    lowest to its highest heard frame and is timed from the first of its frames to arrive.
    """
    figures = dict.fromkeys(("lost", "late", "played", "stalls", "stalled", "listening", "segments"), 0)
    for segment in segments or [range(min(delivered), max(delivered) + 1)]:
        heard = {seq: delivered[seq] for seq in segment if seq in delivered}
        if not heard:
            continue
        figures["segments"] += 1
        anchor = min(heard, key=heard.get)
        run = 0
        for seq in range(min(heard), max(heard) + 1):
            figures["listening"] += 1
            if seq not in heard:
                figures["lost"] += 1
            elif heard[seq] > heard[anchor] + (seq - anchor) * F + buffer:
                figures["late"] += 1
            else:
                figures["played"] += 1
                run = 0
                continue
            run += 1
            if run == stall_frames + 1:
                figures["stalls"] += 1
                figures["stalled"] += run
            elif run > stall_frames:
                figures["stalled"] += 1
    return figures


def test_listener_figures_match_the_rules_over_a_jittery_lossy_link_and_only_grow():
    """Through a lossy, jittery lane and a 400 ms outage every count is the rules', and no live counter goes down."""
    lane = DatagramLane(Direction(0.06, 0.05, 0.04, 0.0, 0.0), random.Random(11))
    # the first frame, the anchor, came through fast: every frame more than 80 ms behind its capture is late
    delivered: dict[int, float] = {0: START + 0.02}
    dropped = 0
    for seq in range(1, 3000):
        held = lane.admit(START + seq * F, 112)
        if held is None or 1000 <= seq < 1020:
            dropped += 1
            continue
        delivered[seq] = START + seq * F + held
    run = MediaRun(PROFILE)
    run.network_dropped(dropped)
    listener = run.listener(START - 1.0, decode=True)
    histograms = (run.first_audio_join, run.first_audio_seat, run.frame_delay, run.jitter)

    def reading() -> list[float]:
        return [*run.frames.values(), run.stalls, run.stalled_seconds, run.listening_seconds] + [
            h.get_total_count() for h in histograms
        ]

    last = reading()
    for seq, arrival in sorted(delivered.items(), key=lambda item: item[1]):
        listener.frame(packet(seq), arrival)
        now = reading()
        assert all(b >= a for a, b in zip(last, now, strict=True)), (seq, last, now)
        last = now
    listener.close(max(delivered.values()))
    assert all(b >= a for a, b in zip(last, reading(), strict=True))

    expected = reference_figures(delivered, 0.06, 10)
    assert expected["stalls"] >= 1 and expected["late"] > 0
    counts = run.frames
    assert all(counts[outcome] == expected[outcome] for outcome in ("lost", "late", "played")), (counts, expected)
    assert (run.stalls, run.stalled_frames) == (expected["stalls"], expected["stalled"])
    assert (counts["duplicated"], counts["stale"], counts["received"]) == (0, 0, len(delivered))
    first, top = min(delivered), max(delivered)
    assert counts["lost"] == sum(1 for seq in range(first, top + 1) if seq not in delivered)
    assert run.listening_frames == expected["listening"] == top - first + 1
    assert set(run.frames) == {*FRAME_OUTCOMES, "played"}
    assert media(run)["frames"]["network_dropped"] == dropped == 3000 - len(delivered)


@pytest.mark.parametrize("buffer_ms", [60, 2000])
def test_listener_figures_match_the_rules_across_backend_pauses(buffer_ms):
    """Ten stretches of 300 frames 1 s apart through a lossy, jittery lane give the rules' figures, any buffer."""
    # the jitter stays within the buffer, so nothing is late whichever frame of a stretch comes first
    lane = DatagramLane(Direction(0.05, 0.02, 0.05, 0.0, 0.0), random.Random(12))

    def paused(seq: int) -> float:
        return 1.0 * (seq // 300)

    delivered: dict[int, float] = {}
    for seq in range(3000):
        sent = START + paused(seq) + seq * F
        held = lane.admit(sent, 112)
        if held is not None and not 1600 <= seq < 1630:
            delivered[seq] = sent + held
    profile = MediaProfile(jitter_buffer_ms=buffer_ms)
    run = listen([(packet(seq, paused=paused(seq)), arrival) for seq, arrival in delivered.items()], profile=profile)
    expected = reference_figures(delivered, buffer_ms / 1000, 10, [range(n, n + 300) for n in range(0, 3000, 300)])
    counts = run.frames
    assert (counts["lost"], counts["late"], counts["played"]) == (expected["lost"], 0, expected["played"])
    assert (run.stalls, run.stalled_frames) == (expected["stalls"], expected["stalled"]) and run.stalls >= 1
    assert run.listening_frames == expected["listening"]
    assert (counts["duplicated"], counts["stale"]) == (0, 0)
    assert run.streams == expected["segments"] == 10


# -- figures across processes ------------------------------------------------------------


def test_a_snapshot_survives_json_and_gives_the_same_summary():
    """What a worker sends over Locust's message channel sums to exactly the figures it holds."""
    run = listen(timeline([s for s in range(500) if not 100 <= s < 115], lambda seq: 0.03 + (seq % 3) * 0.004))
    run.sent(500)
    snapshot = run.snapshot()
    assert summary([json.loads(json.dumps(snapshot))], PROFILE) == summary([snapshot], PROFILE)
    block = summary([snapshot], PROFILE)
    assert block["frames"]["sent"] == 500 and block["stalls"] == 1


def test_two_processes_snapshots_sum_exactly():
    """Counts, listening and stalls add up; histograms merge, so the maximum is the larger of the two."""
    one = listen(timeline([s for s in range(500) if s % 20 != 10], steady(0.03)))
    two = listen(timeline([s for s in range(250) if not 100 <= s < 115], steady(0.08)))
    two.sent(7)
    merged = summary([one.snapshot(), two.snapshot()], PROFILE)
    a, b = media(one), media(two)
    assert merged["frames"] == {k: a["frames"][k] + b["frames"][k] for k in a["frames"]}
    assert merged["expected"] == 750 and merged["loss_rate"] == round(40 / 750, 6)
    assert (merged["stalls"], merged["stalled_s"], merged["listening_s"]) == (1, 0.3, 15.0)
    assert merged["stall_rate"] == pytest.approx(0.3 / 15.0)
    assert merged["listeners"] == {"decoding": 2, "counting": 0} and merged["streams"] == 2
    assert merged["frame_delay_ms"]["count"] == a["frame_delay_ms"]["count"] + b["frame_delay_ms"]["count"]
    assert merged["frame_delay_ms"]["max"] == b["frame_delay_ms"]["max"]
    assert merged["frame_delay_ms"]["p50"] == a["frame_delay_ms"]["p50"]
