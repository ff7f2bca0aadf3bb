"""New WebSocket connections per client CPU-second: ours against a bare picows client.

    python bench/connect_rate.py                       # 2,000 connections per client
    python bench/connect_rate.py --connections 5000

What is measured is a reconnect storm: every user of a worker comes back at once and
stays. In each round a fresh child process pinned to the client core opens the
connections (TCP connect and HTTP upgrade), 50 in flight at a time, and holds each one
once its handshake is done; nothing is closed inside the measured window, so the figure
is the cost of opening alone, keepalive timers included. The figure is connections per
CPU-second of the child (user plus system time, so the kernel's share of a connect
counts), read over the opening only: the echo server runs on the other core and its own
speed shows up as wall time, not as client cost. A few warm-up connections before the
window keep first-use costs (lazy imports, caches) out of it. Over loopback the kernel
may run, and charge to the connecting process, part of the server's side of each TCP
handshake: every client here pays alike for that, more than against a remote host.

- **ours (transport)**: ``WebSocketClient.connect`` with keepalive on.
- **ours (session)**: ``Session.connect`` with the reference driver and an accounting
  receiver, as a Locust user reconnects.
- **picows + uvloop**: picows' Cython client on uvloop, the ceiling for a Python process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from common import on_echo_server, raise_open_files_limit, run_pinned

CLIENTS = {"ours (transport)": "transport", "ours (session)": "session", "picows + uvloop": "picows"}

# A storm's reconnects are not serialised, but unbounded they would overflow the server's
# accept backlog and turn into SYN retransmits that stall for a second each.
CONCURRENCY = 50
WARMUP = 20
PING_INTERVAL = 20.0
GOAL_PER_CORE = 2500


def connect_rate(url: str, connections: int, workdir: Path, rounds: int = 3) -> list[dict]:
    """One row per client: CPU and wall seconds to open ``connections``, connections per CPU-second.

    Each client runs ``rounds`` times, the clients taking turns so that a noisy neighbour
    hits all of them; a row is the client's round with the least CPU.
    """
    raise_open_files_limit()
    best: dict[str, dict] = {}
    for _ in range(rounds):
        for client, kind in CLIENTS.items():
            result = run_child(kind, url, connections, workdir)
            if client not in best or result["cpu_seconds"] < best[client]["cpu_seconds"]:
                best[client] = result
    return [{"client": client, "connections": connections, **result} for client, result in best.items()]


def run_child(kind: str, url: str, connections: int, workdir: Path) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--url", url]
    command += ["--connections", str(connections)]
    return run_pinned(command, workdir / f"connect-rate-{kind}.log", 60 + connections / 100, f"{kind} child")


# -- child processes ----------------------------------------------------------------------


def child_ours(kind: str, url: str, connections: int) -> dict:
    from gevent import monkey

    monkey.patch_all()
    import gevent.pool

    from loadgen.accounting import Accounting
    from loadgen.drivers.reference import ReferenceDriver
    from loadgen.session import Session
    from loadgen.transport import TransportError, WebSocketClient

    accounting = Accounting()
    held = []

    def ignore(name, seconds, error):
        return None

    def ignore_message(payload: bytes, binary: bool) -> None:
        return None

    def open_one(_) -> bool:
        try:
            if kind == "transport":
                held.append(WebSocketClient.connect(url, on_message=ignore_message, ping_interval=PING_INTERVAL))
            else:
                session = Session(
                    url, ReferenceDriver(), accounting.receiver(), reporter=ignore, ping_interval=PING_INTERVAL
                )
                session.connect()
                held.append(session)
        except TransportError:
            return False
        return True

    pool = gevent.pool.Pool(CONCURRENCY)
    list(pool.imap_unordered(open_one, range(WARMUP)))
    cpu, wall = time.process_time(), time.monotonic()
    outcomes = list(pool.imap_unordered(open_one, range(connections)))
    return window(outcomes, time.process_time() - cpu, time.monotonic() - wall)


def child_picows(url: str, connections: int) -> dict:
    import asyncio

    import uvloop
    from picows import WSError, WSListener, ws_connect

    async def main() -> dict:
        held = []

        async def worker(pending, outcomes: list[bool]) -> None:
            for _ in pending:
                try:
                    transport, _ = await ws_connect(
                        WSListener, url, enable_auto_ping=True, auto_ping_idle_timeout=PING_INTERVAL
                    )
                except (OSError, asyncio.TimeoutError, WSError):
                    outcomes.append(False)
                else:
                    held.append(transport)
                    outcomes.append(True)

        async def open_all(count: int) -> list[bool]:
            outcomes: list[bool] = []
            pending = iter(range(count))
            await asyncio.gather(*(worker(pending, outcomes) for _ in range(CONCURRENCY)))
            return outcomes

        await open_all(WARMUP)
        cpu, wall = time.process_time(), time.monotonic()
        outcomes = await open_all(connections)
        return window(outcomes, time.process_time() - cpu, time.monotonic() - wall)

    return uvloop.run(main())


def window(outcomes: list[bool], cpu_seconds: float, wall_seconds: float) -> dict:
    return {
        "cpu_seconds": cpu_seconds,
        "wall_seconds": wall_seconds,
        "per_core": len(outcomes) / cpu_seconds if cpu_seconds else 0.0,
        "failed": outcomes.count(False),
    }


# -- output -------------------------------------------------------------------------------


def print_rows(rows: list[dict]) -> None:
    print(f"{'client':<18} {'conns':>6} {'CPU s':>6} {'wall s':>7} {'per core':>9} {'failed':>6}")
    for row in rows:
        print(
            f"{row['client']:<18} {row['connections']:>6,} {row['cpu_seconds']:>6.2f} {row['wall_seconds']:>7.2f}"
            f" {row['per_core']:>9,.0f} {row['failed']:>6,}"
        )
    ours = [row["per_core"] for row in rows if row["client"].startswith("ours")]
    print(f"goal for ours: >= {GOAL_PER_CORE:,} new connections per second per core; worst of ours {min(ours):,.0f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=2000, help="connections per client (default 2000)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per client, best one kept (default 3)")
    parser.add_argument("--child", choices=sorted(set(CLIENTS.values())), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        raise_open_files_limit()
        if args.child == "picows":
            result = child_picows(args.url, args.connections)
        else:
            result = child_ours(args.child, args.url, args.connections)
        print(json.dumps(result), flush=True)
        os._exit(0)  # the connections are held open: nothing left worth a clean shutdown
    return on_echo_server(lambda url, workdir: print_rows(connect_rate(url, args.connections, workdir, args.rounds)))


if __name__ == "__main__":
    sys.exit(main())
