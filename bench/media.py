"""Media frames per client CPU-second: a decoding listener, a counting one, and reading the header alone.

    python bench/media.py               # 5 rounds over 200,000 frames per reader
    python bench/media.py --quick       # 3 rounds over 50,000 frames: a smoke run
    python bench/media.py --frames 400000 --rounds 7
    python bench/media.py --io          # with sockets: 5 rounds of 3 s, 8 speakers to 128 listeners
    python bench/media.py --io --quick  # 3 rounds of 1 s

The listener side of the media plane has no I/O of its own (loadgen/media.py), so the first
part measures it in one process with no sockets: how many frames one core can take from the
socket layer and account, and how that compares with doing nothing but reading each header.

A room of eight speakers is synthesised once, before anything is timed: each a
``Publisher`` with its own ``Talker``, every 20 ms frame (32-byte header, 80-byte payload)
sent through its own ``DatagramLane`` (40 ms ± 15 ms, 1 % loss), the arrivals sorted. Each
reader is then handed the same packets in the same order, with their arrival times:

- **read_header alone**: ``read_header(data)`` on each packet, the floor of any reader.
- **counting listener**: ``Listener.frame`` of a listener that does not decode, as most
  members of an audio room are (``decode_share``).
- **decoding listener**: ``Listener.frame`` of a decoding one: the header unpacked, the frame
  delay into its HDR histogram, the slots due decided through the jitter buffer, the frame
  filed (late, duplicate, stale, a new segment), the RFC 3550 jitter updated; ``close`` at the
  end settles every stream.

The figure is frames per CPU-second of this process (``time.process_time`` around each
reader's pass, the process pinned to the client core). Rounds interleave the readers so a
noisy neighbour hits all of them; the table shows the median round and the ratios of the
medians.

``--io`` measures the receiving side as a worker carries it: real UDP sockets on 127.0.0.1,
read under gevent by ``UserMedia``'s own readers (loadgen/scenarios/media.py). This process
sends, pinned to the server core, and never patches anything; each kind of listener lives
in a receiving process of its own on the client core, ``monkey.patch_all()`` done there:

- **decoding**: ``UserMedia._read``, a blocking ``recvmsg`` per datagram with its
  SO_TIMESTAMPNS kernel timestamp, then a non-blocking drain, each frame to
  ``Listener.frame``.
- **counting**: ``UserMedia._count``, the socket drained every ``COUNT_EVERY_S`` (0.25 s),
  the batch to ``Listener.count``.

In a round, the receiving process opens a socket and a listener per member, as
``UserMedia.open`` does after the backend's bind; this process then sends every speaker's
frame (32-byte header, 80-byte payload) to every member on a 20 ms grid, as a forwarding
backend does. The round ends once the listeners have every frame sent, or two counting reads
found none more: a saturated reader works through its sockets' backlog first. The figure is
frames received per CPU-second of the receiving process (``time.process_time`` there, from
its sockets being open to the end of the round); sent minus received is what the kernel
dropped (full receive buffers), printed beside the host's UDP ``RcvbufErrors``. The kernel's
own delivery of a datagram is not in the figure: on loopback it runs on the sender's core.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import CLIENT_CORE, ROOT, SERVER_CORE, pin, raise_open_files_limit

from loadgen.media import FRAME_SECONDS, DatagramLane, MediaRun, Publisher, Talker, audio_packet, read_header
from loadgen.network import Direction
from loadgen.profile import MediaProfile

SPEAKERS = 8
START = 1_764_000_000.0
PAYLOAD = b"\x55" * 80
LANE = Direction(latency=0.04, jitter=0.015, loss=0.01, rto=0.0, byte_time=0.0)
READERS = ("read_header alone", "counting listener", "decoding listener")


def room_frames(frames: int, seed: int = 1) -> list[tuple[bytes, float]]:
    """About ``frames`` packets of a room of eight speakers, as one member receives them: (packet, arrival)."""
    rng = random.Random(seed)
    seconds = frames / SPEAKERS * 0.02
    arrivals = []
    for ssrc in range(1, SPEAKERS + 1):
        publisher = Publisher(ssrc, START, PAYLOAD, Talker(rng, 3.0, 2.0))
        lane = DatagramLane(LANE, rng)
        # bounded: each call hands out at most MAX_CATCH_UP frames, and the schedule ends at ``seconds``
        while publisher.next_due <= START + seconds:
            for data in publisher.due(START + seconds):
                held = lane.admit(read_header(data).capture, len(data))
                if held is not None:
                    arrivals.append((data, read_header(data).capture + held))
    arrivals.sort(key=lambda frame: frame[1])
    return arrivals


def read_only(frames: list[tuple[bytes, float]]) -> None:
    for data, _arrival in frames:
        read_header(data)


def listen(frames: list[tuple[bytes, float]], decode: bool) -> MediaRun:
    run = MediaRun(MediaProfile())
    listener = run.listener(START - 1.0, decode)
    frame = listener.frame
    for data, arrival in frames:
        frame(data, arrival)
    listener.close(frames[-1][1])
    return run


def timed(reader: str, frames: list[tuple[bytes, float]]) -> float:
    """CPU-seconds one pass of ``reader`` over ``frames`` takes."""
    started = time.process_time()
    if reader == "read_header alone":
        read_only(frames)
    else:
        listen(frames, decode=reader == "decoding listener")
    return time.process_time() - started


def bench(frames: int, rounds: int) -> list[dict]:
    """One row per reader: the frames, each round's frames per CPU-second, and the median."""
    packets = room_frames(frames)
    heard = listen(packets, decode=True).frames
    # the lanes only drop and reorder: every packet is received once, none is a duplicate or stale
    if heard["received"] != len(packets) or heard["duplicated"] or heard["stale"]:
        raise RuntimeError(f"a decoding listener miscounted {len(packets)} packets: {heard}")
    per_round: dict[str, list[float]] = {reader: [] for reader in READERS}
    for _ in range(rounds):
        for reader in READERS:
            per_round[reader].append(len(packets) / timed(reader, packets))
    rows = []
    for reader in READERS:
        median = statistics.median(per_round[reader])
        rows.append({"reader": reader, "frames": len(packets), "per_core": median, "rounds": per_round[reader]})
    return rows


def print_rows(rows: list[dict]) -> None:
    floor = rows[0]["per_core"]
    print(f"{'reader':<18} {'frames':>8} {'frames/CPU-s':>12} {'us/frame':>8} {'vs read_header':>14}  rounds")
    for row in rows:
        rounds = " ".join(f"{rate:,.0f}" for rate in row["rounds"])
        print(
            f"{row['reader']:<18} {row['frames']:>8,} {row['per_core']:>12,.0f} {1e6 / row['per_core']:>8.2f}"
            f" {row['per_core'] / floor:>13.2f}x  {rounds}"
        )
    decoding, counting = rows[2]["per_core"], rows[1]["per_core"]
    print(f"a decoding listener costs {counting / decoding:.1f} counting ones")


# -- with sockets: the receiving side under gevent -------------------------------------------

IO_READERS = ("decoding", "counting")
#: the level every frame carries: a talking speaker's (a counting listener never looks)
LEVEL = 30
#: RcvbufErrors' column in /proc/net/snmp's Udp lines: datagrams the kernel dropped, a receive buffer full
SNMP = Path("/proc/net/snmp")
#: how often, and at most how long, a receiving process looks whether its listeners have caught up
SETTLE_POLL_S = 0.05
SETTLE_LIMIT_S = 30.0


def receive(kind: str, control_fd: int, rounds: int) -> None:
    """A receiving process: ``UserMedia`` listeners of one kind on real sockets, a round each time it is asked."""
    from gevent import monkey

    monkey.patch_all()
    from types import SimpleNamespace

    from loadgen.profile import MediaProfile
    from loadgen.scenarios import media as scenario

    decode = kind == "decoding"
    # the two things a UserMedia reads of its run: the backend's clock offset, and no emulated network
    run_context = SimpleNamespace(accounting=SimpleNamespace(clock_offset=0.0))
    channel = socket.socket(fileno=control_fd).makefile("rwb")
    answer(channel, {"ready": kind})
    for _ in range(rounds):
        request = channel.readline()
        if not request:
            return
        ask = json.loads(request)
        plane = scenario.MediaPlane(run_context, MediaRun(MediaProfile()))
        members = []
        for n in range(ask["listeners"]):
            user = SimpleNamespace(user_id=f"io-{n}", network=None, run_context=run_context)
            member = scenario.UserMedia(user, plane, decode)
            # what UserMedia.open does once the backend acknowledged the bind
            sock = scenario.datagram_socket("127.0.0.1", decode)
            member.listen(sock, plane.run.listener(ask["listening_since"], decode))
            members.append(member)
        started_cpu, started = time.process_time(), time.monotonic()
        answer(channel, {"ports": [member.sock.getsockname()[1] for member in members]})
        stop = channel.readline()
        if not stop:
            return
        settle(plane.run.frames, json.loads(stop)["sent"], scenario.COUNT_EVERY_S)
        cpu, wall = time.process_time() - started_cpu, time.monotonic() - started
        frames = dict(plane.run.frames)
        for member in members:
            member.close(time.time())
        answer(channel, {"frames": frames, "cpu_seconds": cpu, "wall_seconds": wall})


def settle(frames: dict, sent: int, count_every: float) -> None:
    """Until the listeners have every frame sent, or two counting reads found none more: the rest were dropped.

    A saturated reader is still working through its sockets' backlog when the sending ends;
    those frames are late, not lost, and what reading them costs belongs to the round. In the
    receiving process, ``time.sleep`` is gevent's: the readers run while this waits.
    """
    heard, quiet_since = -1, time.monotonic()
    for _ in range(round(SETTLE_LIMIT_S / SETTLE_POLL_S)):
        now = frames["received"] + frames["counted"]
        if now != heard:
            heard, quiet_since = now, time.monotonic()
        if heard >= sent or time.monotonic() - quiet_since > 2 * count_every:
            return
        time.sleep(SETTLE_POLL_S)


def answer(channel, message: dict) -> None:
    channel.write(json.dumps(message).encode() + b"\n")
    channel.flush()


def send_frames(ports: list[int], speakers: int, seconds: float) -> dict:
    """Every speaker's frame to every listener each 20 ms, as a forwarding backend does; late bursts go at once."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    addresses = [("127.0.0.1", port) for port in ports]
    sent = failed = 0
    start = time.time()
    for seq in range(round(seconds / FRAME_SECONDS)):
        due = start + seq * FRAME_SECONDS
        wait = due - time.time()
        if wait > 0:
            time.sleep(wait)
        for ssrc in range(1, speakers + 1):
            packet = audio_packet(ssrc, seq, due, start, LEVEL, PAYLOAD, seq == 0)
            for address in addresses:
                try:
                    sock.sendto(packet, address)
                    sent += 1
                except OSError:
                    failed += 1
    sending = time.time() - start
    sock.close()
    return {"sent": sent, "send_failed": failed, "send_seconds": sending}


def receive_buffer_errors() -> int | None:
    """The host's UDP RcvbufErrors so far; None where /proc/net/snmp does not say."""
    try:
        lines = [line.split() for line in SNMP.read_text().splitlines() if line.startswith("Udp:")]
        return int(lines[1][lines[0].index("RcvbufErrors")])
    except (OSError, IndexError, ValueError):
        return None


class Receiver:
    """A receiving process of one kind, pinned to the client core, and the socket that runs its rounds."""

    def __init__(self, kind: str, rounds: int) -> None:
        self.kind = kind
        ours, theirs = socket.socketpair()
        command = [sys.executable, __file__, "--receiver", kind, "--control", str(theirs.fileno()),
                   "--rounds", str(rounds)]  # fmt: skip
        self.process = subprocess.Popen(command, cwd=ROOT, pass_fds=(theirs.fileno(),))
        theirs.close()
        pin(self.process.pid, CLIENT_CORE)
        ours.settimeout(60)
        self.control = ours
        self.channel = ours.makefile("rwb")
        self.reply()

    def ask(self, message: dict) -> dict:
        answer(self.channel, message)
        return self.reply()

    def reply(self) -> dict:
        line = self.channel.readline()
        if not line:
            raise RuntimeError(f"the {self.kind} receiving process exited with {self.process.wait(10)}")
        return json.loads(line)

    def round(self, listeners: int, speakers: int, seconds: float) -> dict:
        """One round: sockets opened there, frames sent from here, the figures read there."""
        ports = self.ask({"listeners": listeners, "listening_since": time.time() - 1.0})["ports"]
        dropped_before = receive_buffer_errors()
        sending = send_frames(ports, speakers, seconds)
        got = self.ask({"sent": sending["sent"]})
        dropped_after = receive_buffer_errors()
        frames = got["frames"]
        received = frames["received"] + frames["counted"]
        if received > sending["sent"] or frames["duplicated"] or frames["stale"]:
            raise RuntimeError(f"{self.kind} listeners miscounted {sending['sent']} datagrams sent: {frames}")
        dropped = None if dropped_before is None or dropped_after is None else dropped_after - dropped_before
        return {**sending, "received": received, "lost": sending["sent"] - received, "rcvbuf_errors": dropped,
                "cpu_seconds": got["cpu_seconds"], "wall_seconds": got["wall_seconds"]}  # fmt: skip

    def close(self) -> None:
        self.channel.close()
        self.control.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def bench_io(listeners: int, speakers: int, seconds: float, rounds: int) -> list[dict]:
    """One row per listener kind: each round's figures, and the median frames per CPU-second."""
    pin(os.getpid(), SERVER_CORE)
    raise_open_files_limit(2 * listeners + 256)
    receivers: list[Receiver] = []
    try:
        for kind in IO_READERS:
            receivers.append(Receiver(kind, rounds))
        per_round: dict[str, list[dict]] = {kind: [] for kind in IO_READERS}
        for n in range(rounds):
            # alternate which goes first, so neither always follows the other's warm caches
            for receiver in receivers if n % 2 == 0 else receivers[::-1]:
                measured = receiver.round(listeners, speakers, seconds)
                per_round[receiver.kind].append(measured)
                print_io_round(n + 1, receiver.kind, measured)
    finally:
        for receiver in receivers:
            receiver.close()
    rows = []
    for kind in IO_READERS:
        rates = [measured["received"] / measured["cpu_seconds"] for measured in per_round[kind]]
        rows.append({"reader": kind, "listeners": listeners, "speakers": speakers, "per_core": statistics.median(rates),
                     "rounds": per_round[kind]})  # fmt: skip
    return rows


def print_io_round(n: int, kind: str, measured: dict) -> None:
    errors = "-" if measured["rcvbuf_errors"] is None else f"{measured['rcvbuf_errors']:,}"
    failed = f", {measured['send_failed']:,} sends failed" if measured["send_failed"] else ""
    print(
        f"round {n} {kind:<8} sent {measured['sent']:>9,} in {measured['send_seconds']:5.2f} s"
        f"  received {measured['received']:>9,}  lost {measured['lost']:>7,} (host RcvbufErrors +{errors}{failed})"
        f"  CPU {measured['cpu_seconds']:5.2f} s of {measured['wall_seconds']:5.2f}"
        f"  {measured['received'] / measured['cpu_seconds']:>9,.0f} frames/CPU-s",
        flush=True,
    )


def print_io_rows(rows: list[dict]) -> None:
    print(f"{'listener':<10} {'speakers':>8} {'members':>7} {'frames/s in':>11} {'lost':>7} {'cores':>5}"
          f" {'frames/CPU-s':>12} {'us/frame':>8}  rounds")  # fmt: skip
    for row in rows:
        done = row["rounds"]
        offered = sum(measured["sent"] for measured in done) / sum(measured["send_seconds"] for measured in done)
        lost = sum(measured["lost"] for measured in done)
        # the CPU the round's frames took per second of sending them: the share of a core that load needs
        cores = statistics.median(measured["cpu_seconds"] / measured["send_seconds"] for measured in done)
        rates = " ".join(f"{measured['received'] / measured['cpu_seconds']:,.0f}" for measured in done)
        print(
            f"{row['reader']:<10} {row['speakers']:>8} {row['listeners']:>7,} {offered:>11,.0f} {lost:>7,}"
            f" {cores:>5.2f} {row['per_core']:>12,.0f} {1e6 / row['per_core']:>8.2f}  {rates}"
        )
    decoding, counting = rows[0]["per_core"], rows[1]["per_core"]
    print(f"with sockets, a decoding listener costs {counting / decoding:.1f} counting ones")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=200_000, help="frames per pass (default 200,000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per reader, interleaved (default 5)")
    parser.add_argument("--quick", action="store_true", help="3 rounds over 50,000 frames; with --io, of 1 s")
    parser.add_argument("--io", action="store_true", help="the receiving side with sockets, under gevent")
    parser.add_argument("--listeners", type=int, default=128, help="with --io: listening members (default 128)")
    parser.add_argument("--speakers", type=int, default=SPEAKERS, help=f"with --io: speakers (default {SPEAKERS})")
    parser.add_argument("--seconds", type=float, default=3.0, help="with --io: sending per round (default 3 s)")
    parser.add_argument("--receiver", choices=IO_READERS, help=argparse.SUPPRESS)
    parser.add_argument("--control", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver:
        receive(args.receiver, args.control, args.rounds)
        return 0
    if args.quick:
        args.frames, args.rounds, args.seconds = 50_000, 3, 1.0
    if args.io:
        print_io_rows(bench_io(args.listeners, args.speakers, args.seconds, args.rounds))
        return 0
    pin(os.getpid(), CLIENT_CORE)
    print_rows(bench(args.frames, args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
