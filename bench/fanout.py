"""Fan-out receive: room messages received and accounted per client CPU-second, ours against a bare picows client.

    python bench/fanout.py                                   # rooms of 10, 100 and 1,000; 1,000 members
    python bench/fanout.py --room-sizes 10 100 1000 --members 1000 --seconds 8

A broadcast server (this file with ``--serve``, picows on uvloop, pinned to the server
core) answers ``join`` as the reference backend does and, once told to start, pushes
reference-protocol room messages with consecutive sequences to every member of every room,
as fast as the members take them: a room gets its next batch only while none of its members
has more than ``WRITE_BOUND`` bytes queued, so the client core is the one that saturates and
the server's buffers stay bounded. Each batch is encoded once and the same bytes are written
to every member.

A fresh child process pinned to the client core opens ``members`` connections, the i-th
joining room ``room-{i // room_size}``, starts the broadcast, lets ``warmup`` seconds pass
and then counts deliveries and its own CPU time (user plus system) over ``seconds``. A fresh
server serves each child, so no room outlives the client that joined it.

- **ours (Session + accounting)**: a ``Session`` per connection with the reference driver and
  an ``Accounting`` receiver: every push goes the whole way (the transport's frame parser, the
  driver's JSON decoding into a ``Delivery``, ``Receiver.deliver`` with loss, order and
  duplicate checks and the HDR latency histogram). The run fails unless every message arrived
  exactly once and in order.
- **picows + uvloop**: picows' Cython client on uvloop counting text frames, the ceiling for
  a Python process.

The server's CPU time over the same window is reported too, and for both processes the share
of the window they ran or waited to run ("busy"): a busy server with a client that is not
would mean the figures measure the server. Latencies are mostly time queued in the server's
and the kernel's buffers, as they are whenever a receiver is saturated.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson
from common import (
    CLIENT_CORE,
    ROOT,
    SERVER_CORE,
    Missing,
    cpu_seconds,
    ignore_message,
    ignore_report,
    pin,
    raise_open_files_limit,
    require_modules,
    stop,
    wait_for_port,
)

CLIENTS = {"ours (Session + accounting)": "ours", "picows + uvloop": "picows"}

#: Bytes a member may have queued in the server before its room waits for it: enough that a
#: member never runs dry between two rounds, little enough that memory stays flat.
WRITE_BOUND = 64 * 1024
#: The kernel's share of a member's queue; left to autotuning it grows to megabytes per socket
#: and every latency turns into seconds of queueing.
KERNEL_SEND_BUFFER = 32 * 1024
#: Messages per room per round. A round costs the server one write per member, so a batch
#: keeps its cost per delivery a fraction of the client's.
BATCH = 128
BODY = "x" * 64
# Handshakes in flight while the members connect: enough to keep both cores busy, few enough
# that the server's accept backlog never overflows into SYN retransmits.
CONCURRENCY = 50
#: Bound on connecting and joining every member; the warm-up and the window come on top.
SETUP_SECONDS = 120.0
START = b'{"op":"start","id":1}'


def fanout(room_sizes: list[int], members: int, seconds: float, warmup: float, workdir: Path) -> list[dict]:
    """One row per room size and client: deliveries, client CPU-seconds and deliveries per CPU-second.

    Every row also carries the server's CPU-seconds over the same window, and ``client_busy``
    and ``server_busy``: the share of the window each process ran or waited to run. Rows of
    ours carry ``lost``, ``out_of_order`` and ``duplicated`` (0, or this raises) and the
    delivery latency over the window, which under saturation is mostly time queued in the
    server's and the kernel's buffers.
    """
    require_modules("picows", "uvloop")
    raise_open_files_limit()
    rows = []
    for room_size in room_sizes:
        if room_size < 1 or members % room_size:
            raise ValueError(f"{members} members do not fill rooms of {room_size}")
        for client, kind in CLIENTS.items():
            result = run_child(kind, room_size, members, seconds, warmup, workdir)
            deliveries, cpu = result.pop("deliveries"), result.pop("cpu_seconds")
            row = {
                "client": client,
                "room_size": room_size,
                "rooms": members // room_size,
                "members": members,
                "deliveries": deliveries,
                "cpu_seconds": cpu,
                "per_core": deliveries / cpu if cpu else 0.0,
                **result,
            }
            if kind == "ours" and (row["lost"] or row["out_of_order"] or row["duplicated"]):
                raise RuntimeError(f"rooms of {room_size}: accounting saw messages other than once in order: {row}")
            rows.append(row)
    return rows


def run_child(kind: str, room_size: int, members: int, seconds: float, warmup: float, workdir: Path) -> dict:
    """Start a server, run one child against it, stop both whatever happens."""
    timeout = SETUP_SECONDS + warmup + seconds + 30
    port_file = workdir / "fanout-port"
    port_file.unlink(missing_ok=True)
    server_log = workdir / "fanout-server.log"
    child_log = workdir / f"fanout-{kind}-{room_size}.log"
    command = [sys.executable, str(Path(__file__).resolve())]
    with open(server_log, "wb") as server_stderr, open(child_log, "wb") as child_stderr:
        server = subprocess.Popen(
            [*command, "--serve", str(port_file), "--lifetime", str(timeout + 30)], cwd=ROOT, stderr=server_stderr
        )
        child = None
        try:
            pin(server.pid, SERVER_CORE)
            port = wait_for_port(server, port_file)
            child_args = ["--child", kind, "--url", f"ws://127.0.0.1:{port}/", "--server-pid", str(server.pid)]
            child_args += ["--room-size", str(room_size), "--members", str(members)]
            child_args += ["--warmup", str(warmup), "--seconds", str(seconds), "--lifetime", str(timeout)]
            child = subprocess.Popen([*command, *child_args], cwd=ROOT, stdout=subprocess.PIPE, stderr=child_stderr)
            pin(child.pid, CLIENT_CORE)
            out, _ = child.communicate(timeout=timeout)
        finally:
            if child is not None and child.poll() is None:
                child.kill()
                child.wait()
            stop(server)
    if child.returncode != 0:
        raise RuntimeError(
            f"{kind} child (rooms of {room_size}) failed with {child.returncode}:\n{child_log.read_text()[-3000:]}"
            f"\nserver:\n{server_log.read_text()[-2000:]}"
        )
    return json.loads(out.decode().strip().splitlines()[-1])


# -- broadcast server ---------------------------------------------------------------------


def frame_header(size: int) -> bytes:
    """Header of an unmasked, final text frame (server to client) carrying ``size`` bytes."""
    if size < 126:
        return struct.pack("!BB", 0x81, size)
    if size < 1 << 16:
        return struct.pack("!BBH", 0x81, 126, size)
    return struct.pack("!BBQ", 0x81, 127, size)


class Room:
    __slots__ = ("name", "members", "writes", "seq", "paused")

    def __init__(self, name: str) -> None:
        self.name = name
        self.members: list = []
        # rebuilt, never changed in place, so a round iterates a list no callback alters
        self.writes: list[Callable[[bytes], None]] = []
        self.seq = 0
        #: members whose queue is above the bound
        self.paused = 0

    def add(self, member) -> None:
        self.members.append(member)
        self.writes = [m.write for m in self.members]
        self.paused += member.paused

    def remove(self, member) -> None:
        self.members.remove(member)
        self.writes = [m.write for m in self.members]
        self.paused -= member.paused

    def broadcast(self, count: int) -> None:
        now = time.time()
        parts = []
        for seq in range(self.seq + 1, self.seq + count + 1):
            payload = orjson.dumps(
                {"ev": "msg", "room": self.name, "seq": seq, "from": "bench", "cseq": seq, "ts": now,
                 "server_ts": now, "body": BODY}
            )  # fmt: skip
            parts += (frame_header(len(payload)), payload)
        self.seq += count
        data = b"".join(parts)
        for write in self.writes:
            write(data)


def serve(port_file: Path) -> None:
    import asyncio
    import socket

    import uvloop
    from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_create_server

    rooms: dict[str, Room] = {}
    started = asyncio.Event()
    #: set when a room may have become ready: a member drained below the bound, or joined
    ready = asyncio.Event()

    class Member(WSListener):
        def __init__(self) -> None:
            self.room: Room | None = None
            self.paused = False
            self.write: Callable[[bytes], None] | None = None

        def on_ws_connected(self, transport: WSTransport) -> None:
            tcp = transport.underlying_transport
            tcp.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, KERNEL_SEND_BUFFER)
            tcp.set_write_buffer_limits(high=WRITE_BOUND)
            # pushes go out pre-framed on the TCP transport; replies go through picows on the
            # same transport, so the two never reorder
            self.write = tcp.write

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type == WSMsgType.TEXT:
                transport.send(WSMsgType.TEXT, orjson.dumps(self.answer(frame.get_payload_as_bytes())))
            elif frame.msg_type == WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code())
                transport.disconnect()

        def answer(self, payload: bytes) -> dict:
            try:
                request = orjson.loads(payload)
                op, request_id = request["op"], request["id"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                return {"ev": "error", "re": None, "code": "bad_request", "message": "no op or id"}
            if op == "join":
                name = request.get("room")
                if not isinstance(name, str) or (self.room is not None and self.room.name != name):
                    return {"ev": "error", "re": request_id, "code": "bad_request", "message": "one room each"}
                room = self.room
                if room is None:
                    room = self.room = rooms.get(name) or Room(name)
                    rooms[name] = room
                    room.add(self)
                    ready.set()
                # joined between two rounds: the next round is the first this member gets
                return {"ev": "ack", "re": request_id, "room": name, "head": room.seq, "members": len(room.members)}
            if op == "start":
                started.set()
                return {"ev": "ack", "re": request_id}
            return {"ev": "error", "re": request_id, "code": "bad_request", "message": f"unknown op {op!r}"}

        def on_ws_disconnected(self, transport: WSTransport) -> None:
            room = self.room
            if room is not None:
                room.remove(self)
                if not room.members:
                    del rooms[room.name]
                self.room = None

        def pause_writing(self) -> None:
            self.paused = True
            if self.room is not None:
                self.room.paused += 1

        def resume_writing(self) -> None:
            self.paused = False
            if self.room is not None:
                self.room.paused -= 1
                if not self.room.paused:
                    ready.set()

    async def pump() -> None:
        await started.wait()
        while True:
            sent = False
            for room in list(rooms.values()):
                if not room.paused:
                    room.broadcast(BATCH)
                    sent = True
            if sent:
                # let the loop flush what it could not write at once and read the members' frames
                await asyncio.sleep(0)
            else:
                ready.clear()
                await ready.wait()

    async def main() -> None:
        server = await ws_create_server(lambda _request: Member(), "127.0.0.1", 0, backlog=4096)
        port_file.write_text(str(server.sockets[0].getsockname()[1]))
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopped.set)
        pumping = asyncio.ensure_future(pump())
        await stopped.wait()
        pumping.cancel()
        server.close()

    uvloop.run(main())


# -- client children ----------------------------------------------------------------------


def demand_seconds(pid: int) -> float:
    """Seconds the process's main thread has run or waited on a run queue to run.

    Others' work on the same core stretches the window without showing in CPU time: the
    share of the window a process wanted the core is what tells a saturated process from
    one waiting for data.
    """
    ran, waited = Path(f"/proc/{pid}/schedstat").read_text().split()[:2]
    return (int(ran) + int(waited)) / 1e9


def reading(delivered: Callable[[], int], server_pid: int) -> dict[str, float]:
    return {
        "deliveries": delivered(),
        "cpu_seconds": time.process_time(),
        "server_cpu_seconds": cpu_seconds(server_pid),
        "client_busy": demand_seconds(os.getpid()),
        "server_busy": demand_seconds(server_pid),
        "wall_seconds": time.monotonic(),
    }


def window(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Differences over the window; the busy figures as shares of its wall time."""
    spent = {key: after[key] - before[key] for key in before}
    spent["client_busy"] /= spent["wall_seconds"]
    spent["server_busy"] /= spent["wall_seconds"]
    return spent


def child_ours(args: argparse.Namespace) -> dict:
    from gevent import monkey

    monkey.patch_all()
    import gevent
    import gevent.pool

    from loadgen.accounting import Accounting, percentiles_ms
    from loadgen.drivers.reference import ReferenceDriver
    from loadgen.session import Session
    from loadgen.transport import WebSocketClient

    accounting = Accounting()

    def open_one(n: int) -> Session:
        # no keepalive: a pong waits behind the queued pushes, and a saturated client is not a dead one
        session = Session(
            args.url, ReferenceDriver(), accounting.receiver(), reporter=ignore_report, ping_interval=None
        )
        session.connect()
        session.join(f"room-{n // args.room_size}")
        return session

    def hand_over() -> None:
        # a run hands the batch of latencies to Locust's table once a second (RunContext.flush_to_locust);
        # left alone, the batch would hold every latency of the run and grow dearer to add to
        while True:
            gevent.sleep(1.0)
            accounting.take_unreported()

    sessions = list(gevent.pool.Pool(CONCURRENCY).imap_unordered(open_one, range(args.members)))
    gevent.spawn(hand_over)
    starter = WebSocketClient.connect(args.url, on_message=ignore_message, ping_interval=None)
    starter.send_text(START)
    gevent.sleep(args.warmup)

    def delivered() -> int:
        return accounting.counts.delivered

    before = reading(delivered, args.server_pid)
    accounting.latency.reset()
    gevent.sleep(args.seconds)
    after = reading(delivered, args.server_pid)
    latency = percentiles_ms(accounting.latency)
    dropped = sum(not session.alive for session in sessions)
    if dropped:
        raise RuntimeError(f"{dropped} of {len(sessions)} connections dropped")
    # TCP keeps a room's pushes in order, so a hole is never a message still on its way: it is lost
    accounting.finalize()
    counts = accounting.counts
    return {
        **window(before, after),
        "lost": counts.lost,
        "out_of_order": counts.out_of_order,
        "duplicated": counts.duplicated,
        "latency_p50_ms": latency["p50"],
        "latency_p99_ms": latency["p99"],
    }


def child_picows(args: argparse.Namespace) -> dict:
    import asyncio

    import uvloop
    from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

    class Counter(WSListener):
        def __init__(self) -> None:
            self.count = 0
            self.acked = asyncio.get_running_loop().create_future()

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type == WSMsgType.TEXT:
                self.count += 1
                if self.count == 1:
                    self.acked.set_result(frame.get_payload_as_bytes())

    async def main() -> dict:
        connections: list[tuple[WSTransport, Counter]] = []

        async def worker(pending) -> None:
            for n in pending:
                join = {"op": "join", "id": 1, "room": f"room-{n // args.room_size}"}
                transport, listener = await ws_connect(Counter, args.url)
                transport.send(WSMsgType.TEXT, orjson.dumps(join))
                ack = orjson.loads(await asyncio.wait_for(listener.acked, 10))
                if ack.get("ev") != "ack":
                    raise RuntimeError(f"join refused: {ack}")
                connections.append((transport, listener))

        pending = iter(range(args.members))
        await asyncio.gather(*(worker(pending) for _ in range(CONCURRENCY)))
        connections[0][0].send(WSMsgType.TEXT, START)
        await asyncio.sleep(args.warmup)

        def delivered() -> int:
            return sum(listener.count for _, listener in connections)

        before = reading(delivered, args.server_pid)
        await asyncio.sleep(args.seconds)
        after = reading(delivered, args.server_pid)
        dropped = sum(transport.is_disconnected for transport, _ in connections)
        if dropped:
            raise RuntimeError(f"{dropped} of {len(connections)} connections dropped")
        return window(before, after)

    return uvloop.run(main())


# -- output -------------------------------------------------------------------------------


def print_rows(rows: list[dict]) -> None:
    print(
        f"{'client':<28} {'room':>5} {'rooms':>5} {'deliveries':>10} {'CPU s':>6} {'per core':>9} {'busy':>5}"
        f" {'server CPU s':>12} {'busy':>5} {'lost/ooo/dup':>12} {'p50 ms':>7}"
    )
    for row in rows:
        checks = f"{row['lost']}/{row['out_of_order']}/{row['duplicated']}" if "lost" in row else "-"
        p50 = f"{row['latency_p50_ms']:,.0f}" if "latency_p50_ms" in row else "-"
        print(
            f"{row['client']:<28} {row['room_size']:>5,} {row['rooms']:>5,} {row['deliveries']:>10,}"
            f" {row['cpu_seconds']:>6.2f} {row['per_core']:>9,.0f} {row['client_busy']:>5.0%}"
            f" {row['server_cpu_seconds']:>12.2f} {row['server_busy']:>5.0%} {checks:>12} {p50:>7}"
        )
    for room_size in dict.fromkeys(row["room_size"] for row in rows):
        per_core = {row["client"]: row["per_core"] for row in rows if row["room_size"] == room_size}
        ours, ceiling = per_core["ours (Session + accounting)"], per_core["picows + uvloop"]
        print(f"rooms of {room_size:,}: ours/picows {ours / ceiling:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--room-sizes", type=int, nargs="+", default=[10, 100, 1000], help="default 10 100 1000")
    parser.add_argument("--members", type=int, default=1000, help="connections per client (default 1000)")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per run (default 8)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of broadcast before measuring (default 2)")
    parser.add_argument("--serve", type=Path, metavar="PORT_FILE", help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=sorted(CLIENTS.values()), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--room-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--server-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--lifetime", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.lifetime is not None:
        # the hard bound of a server or child whose parent died without stopping it
        signal.alarm(max(1, int(args.lifetime)))
    if args.serve is not None:
        raise_open_files_limit()
        serve(args.serve)
        os._exit(0)
    if args.child is not None:
        raise_open_files_limit()
        result = child_ours(args) if args.child == "ours" else child_picows(args)
        print(json.dumps(result), flush=True)
        os._exit(0)  # the connections are still open and receiving: nothing left worth a clean shutdown
    try:
        with tempfile.TemporaryDirectory() as tmp:
            rows = fanout(args.room_sizes, args.members, args.seconds, args.warmup, Path(tmp))
    except Missing as exc:
        raise SystemExit(str(exc)) from None
    print_rows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
