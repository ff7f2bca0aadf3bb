"""Ping-pong and fidelity: round trips per client core, and the latency a client adds at a fixed rate.

    python bench/pingpong.py --clients picows ours-locust wsclient-locust --connections 100 1000
    python bench/pingpong.py --clients picows ours-locust --connections 100 --rate 20   # fidelity

Every client keeps ``connections`` WebSocket connections to the bench's echo server and
sends ``common.MESSAGE``-sized JSON on each: with ``--rate 0`` the next as soon as the
answer is back (closed loop, the per-core ceiling), otherwise that many per second per
connection. The figure is answers counted over the measured window divided by the CPU
time the client process spent in it.

Clients: ``picows`` (picows on uvloop, the Python ceiling), ``ours-transport`` (our gevent
transport alone, answering from the reader), ``ours-locust`` (Locust users on our Session
with full accounting: bench/locustfiles/pingpong_ours.py), ``wsclient-locust`` (the usual
websocket-client user: bench/locustfiles/pingpong_wsclient.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import common

LOCUSTFILES = {"ours-locust": "pingpong_ours.py", "wsclient-locust": "pingpong_wsclient.py"}
CHILDREN = ("picows", "ours-transport")
CLIENTS = ("picows", "ours-transport", "ours-locust", "wsclient-locust")
LABELS = {
    "picows": "picows + uvloop (ceiling)",
    "ours-transport": "our transport alone (Sans-I/O over gevent)",
    "ours-locust": "ours in Locust, full accounting",
    "wsclient-locust": "websocket-client in Locust",
}


def pingpong(url: str, client: str, connections: int, seconds: float, warmup: float, workdir: Path,
             rate: float = 0.0) -> dict:  # fmt: skip
    """One measured run of ``client``; the returned row has ``per_core`` (answers per CPU-second)."""
    result_path = workdir / f"{client}-{connections}-{rate:g}.json"
    result_path.unlink(missing_ok=True)
    limit = warmup + seconds + connections / 100 + 60
    if client in LOCUSTFILES:
        common.require_modules("locust", "websocket")
        env = {**os.environ, "BENCH_RESULT": str(result_path), "BENCH_WARMUP": str(warmup),
               "BENCH_SECONDS": str(seconds), "BENCH_RATE": str(rate)}  # fmt: skip
        command = [
            sys.executable, "-m", "locust", "-f", str(common.BENCH / "locustfiles" / LOCUSTFILES[client]),
            "--headless", "-u", str(connections), "-r", str(min(connections, 500)), "--host", url,
            "-t", f"{int(limit)}s", "--only-summary", "--loglevel", "WARNING",
        ]  # fmt: skip
        if client == "ours-locust":
            command += ["--results", str(workdir / "results"), "--metrics-port", "0", "--request-timeout", "3"]
    else:
        env = dict(os.environ)
        command = [
            sys.executable, str(Path(__file__).resolve()), "--child", client, "--url", url,
            "--connections", str(connections), "--seconds", str(seconds), "--warmup", str(warmup),
            "--rate", str(rate), "--result", str(result_path),
        ]  # fmt: skip
    log_path = workdir / f"{client}-{connections}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=common.ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        common.pin(process.pid, common.CLIENT_CORE)
        try:
            process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if not result_path.exists():
        tail = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{client} at {connections} connections measured nothing; its log ends:\n{tail}")
    result = json.loads(result_path.read_text())
    return {
        "client": LABELS[client],
        "key": client,
        "connections": connections,
        "rate_per_connection": rate,
        "messages": result["messages"],
        "cpu_seconds": round(result["cpu_seconds"], 3),
        "wall_seconds": round(result["wall_seconds"], 3),
        "per_core": result["messages"] / result["cpu_seconds"] if result["cpu_seconds"] else 0.0,
        "us_per_message": 1e6 * result["cpu_seconds"] / result["messages"] if result["messages"] else None,
        **{k: result[k] for k in ("rtt_p50_ms", "rtt_p99_ms") if k in result},
    }


# -- clients that run as plain processes ---------------------------------------------


def child_picows(args) -> dict:
    import asyncio

    import uvloop
    from hdrh.histogram import HdrHistogram
    from picows import WSListener, WSMsgType, ws_connect

    message = common.MESSAGE
    latency = HdrHistogram(1, 60_000_000, 3)
    state = {"answers": 0}

    class PingPong(WSListener):
        def on_ws_connected(self, transport) -> None:
            self.transport = transport
            self.sent_at = 0.0

        def send(self) -> None:
            self.sent_at = time.perf_counter()
            self.transport.send(WSMsgType.TEXT, message)

        def on_ws_frame(self, transport, frame) -> None:
            if frame.msg_type is not WSMsgType.TEXT:
                return
            frame.get_payload_as_bytes()
            state["answers"] += 1
            latency.record_value(max(int((time.perf_counter() - self.sent_at) * 1e6), 1))
            if args.rate <= 0:
                self.send()

    async def paced(listener: PingPong, offset: float) -> None:
        interval = 1.0 / args.rate
        due = time.perf_counter() + offset * interval
        while True:
            await asyncio.sleep(max(due - time.perf_counter(), 0))
            listener.send()
            due += interval

    async def main() -> dict:
        listeners = []
        for start in range(0, args.connections, 200):
            batch = range(start, min(start + 200, args.connections))
            pairs = await asyncio.gather(*(ws_connect(PingPong, args.url) for _ in batch))
            listeners += [listener for _transport, listener in pairs]
        if args.rate <= 0:
            for listener in listeners:
                listener.send()
        else:
            for n, listener in enumerate(listeners):
                asyncio.ensure_future(paced(listener, n / len(listeners)))
        return await window(asyncio.sleep, lambda: state["answers"], latency, args)

    return uvloop.run(main())


def child_transport(args) -> dict:
    from gevent import monkey

    monkey.patch_all()
    import gevent
    from hdrh.histogram import HdrHistogram

    from loadgen.transport import WebSocketClient

    message = common.MESSAGE
    latency = HdrHistogram(1, 60_000_000, 3)
    state = {"answers": 0}

    class PingPong:
        def __init__(self) -> None:
            self.sent_at = 0.0
            self.ws = WebSocketClient.connect(args.url, on_message=self.on_message, ping_interval=20.0)

        def send(self) -> None:
            self.sent_at = time.perf_counter()
            self.ws.send_text(message)

        def on_message(self, payload: bytes, binary: bool) -> None:
            state["answers"] += 1
            latency.record_value(max(int((time.perf_counter() - self.sent_at) * 1e6), 1))
            if args.rate <= 0:
                self.send()

    def paced(client: PingPong, offset: float) -> None:
        interval = 1.0 / args.rate
        due = time.perf_counter() + offset * interval
        while True:
            gevent.sleep(max(due - time.perf_counter(), 0))
            client.send()
            due += interval

    clients = []
    for start in range(0, args.connections, 200):
        jobs = [gevent.spawn(PingPong) for _ in range(start, min(start + 200, args.connections))]
        gevent.joinall(jobs, raise_error=True)
        clients += [job.value for job in jobs]
    if args.rate <= 0:
        for client in clients:
            client.send()
    else:
        for n, client in enumerate(clients):
            gevent.spawn(paced, client, n / len(clients))
    return window(gevent.sleep, lambda: state["answers"], latency, args)


def window(sleep, count, latency, args):
    """Count answers and CPU over the measured span; latency from its start. Awaitable when ``sleep`` is."""

    def measure(count0: int, cpu0: float, wall0: float) -> dict:
        return {
            "messages": count() - count0,
            "cpu_seconds": time.process_time() - cpu0,
            "wall_seconds": time.monotonic() - wall0,
            "rtt_p50_ms": latency.get_value_at_percentile(50) / 1000,
            "rtt_p99_ms": latency.get_value_at_percentile(99) / 1000,
        }

    pause = sleep(args.warmup)
    if hasattr(pause, "__await__"):

        async def spans() -> dict:
            await pause
            latency.reset()
            start = count(), time.process_time(), time.monotonic()
            await sleep(args.seconds)
            return measure(*start)

        return spans()
    latency.reset()
    start = count(), time.process_time(), time.monotonic()
    sleep(args.seconds)
    return measure(*start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", nargs="+", choices=CLIENTS, default=list(CLIENTS))
    parser.add_argument("--connections", nargs="+", type=int, default=[100, 1000])
    parser.add_argument("--rate", type=float, default=0.0, help="messages per second per connection (0: closed loop)")
    parser.add_argument("--seconds", type=float, default=6.0, help="measured window (default 6)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds after connecting before measuring")
    parser.add_argument("--child", choices=CHILDREN, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        common.raise_open_files_limit()
        args.connections = args.connections[0]
        result = child_picows(args) if args.child == "picows" else child_transport(args)
        args.result.write_text(json.dumps(result))
        os._exit(0)  # connections and greenlets still open: the process has said what it had to say

    def measure(url: str, workdir: Path) -> None:
        for connections in args.connections:
            for client in args.clients:
                row = pingpong(url, client, connections, args.seconds, args.warmup, workdir, args.rate)
                print(f"{row['client']:<45} {connections:>6} conns  {row['per_core']:>9,.0f} msg/CPU-s  "
                      f"{row['us_per_message']:>7.1f} us/msg  rtt p50 {row.get('rtt_p50_ms', 0):.2f} "
                      f"p99 {row.get('rtt_p99_ms', 0):.2f} ms", flush=True)  # fmt: skip

    return common.on_echo_server(measure)


if __name__ == "__main__":
    sys.exit(main())
