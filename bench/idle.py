"""Memory of idle connections: RSS per held connection, ours against a bare picows client.

    python bench/idle.py                                  # 5,000 and 20,000 connections
    python bench/idle.py --counts 2000 --breakdown        # plus where our bytes per connection go

Each client holds its connections in a fresh process pinned to the client core, with
keepalive on as a Locust user has it (a ping every 20 s), against the picows echo server
on the other core. RSS is read before the first measured connection (after one warm-up
connection, so lazily imported modules and first-use caches are not charged to the
connections) and again once all are open and a collection has run.

- **ours (transport)**: ``WebSocketClient.connect`` alone.
- **ours (session)**: a ``Session`` with the reference driver and an accounting receiver,
  connected but not logged in: what a Locust user holds between tasks.
- **picows + uvloop**: picows' Cython client on uvloop with its own keepalive, the
  fastest Python client; its default read buffer, 16 KiB per connection, is most of
  its figure.

``--breakdown`` repeats ours under tracemalloc and lists the allocation sites that grew
with the connections. tracemalloc sees the Python allocators only: the difference from
the RSS figure is mostly each greenlet's frame stack, which CPython 3.11+ maps outside
them (a 16 KiB chunk per greenlet, of which the touched pages count).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from common import (
    ROOT,
    ignore_message,
    ignore_report,
    on_echo_server,
    raise_open_files_limit,
    rss_bytes,
    run_pinned,
)

CLIENTS = {"ours (transport)": "transport", "ours (session)": "session", "picows + uvloop": "picows"}

# Enough handshakes in flight to keep both cores busy, few enough that the server's
# accept backlog never overflows into SYN retransmits (a one-second stall each).
CONCURRENCY = 200
PING_INTERVAL = 20.0
SETTLE_SECONDS = 2.0
BREAKDOWN_FRAMES = 12
# Descriptors a process needs besides its connections: interpreter, event loop, listener.
FD_RESERVE = 100
# /proc/net/tcp states of a server-side socket whose descriptor is still open.
_HOLDING_DESCRIPTOR = {"01", "08"}  # ESTABLISHED, CLOSE_WAIT


def idle(url: str, counts: list[int], workdir: Path) -> list[dict]:
    """One row per client and count: RSS before and after opening, KiB per connection, open time.

    The echo server behind ``url`` must have been started after
    ``common.raise_open_files_limit()``, so that it inherited a hard limit above the count.
    A count the limit cannot hold (a container without CAP_SYS_RESOURCE keeps its hard
    limit) is lowered to what fits, and the row's ``note`` says so: a server out of
    descriptors stalls handshakes instead of refusing them.
    """
    raise_open_files_limit()
    ceiling = connection_ceiling()
    rows = []
    for asked in counts:
        connections = min(asked, ceiling)
        for client, kind in CLIENTS.items():
            row = {"client": client, "connections": connections, **run_child(kind, url, connections, workdir)}
            if connections < asked:
                row["note"] = f"{asked:,} asked; an open-files limit of {ceiling + FD_RESERVE:,} holds {connections:,}"
            rows.append(row)
    return rows


def connection_ceiling() -> int:
    """Connections one process can hold under this process's limit, which the children and server share."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0] - FD_RESERVE


def wait_for_server_to_drain(url: str, seconds: float = 60.0) -> None:
    """Wait until the server has closed the connections of a child that exited: until then they hold its descriptors."""
    port = f"{urlsplit(url).port:04X}"
    deadline = time.monotonic() + seconds
    while True:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
        fields = (line.split() for line in lines)
        held = sum(1 for f in fields if f[1].endswith(f":{port}") and f[3] in _HOLDING_DESCRIPTOR)
        if held < FD_RESERVE:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server at {url} still holds {held:,} connections after {seconds:g} s")
        time.sleep(0.2)


def breakdown(url: str, connections: int, workdir: Path, top: int = 15) -> list[dict]:
    """Where our memory per connection goes: RSS, traced total, greenlet stacks, top allocation sites."""
    raise_open_files_limit()
    connections = min(connections, connection_ceiling())
    found = []
    for client in ("ours (transport)", "ours (session)"):
        kind = CLIENTS[client]
        plain = run_child(kind, url, connections, workdir)
        traced = run_child(kind, url, connections, workdir, trace=True)
        traced["sites"] = traced["sites"][:top]
        found.append(
            {
                "client": client,
                "connections": connections,
                "rss_kib_per_connection": plain["kib_per_connection"],
                **traced,
            }
        )
    return found


def run_child(kind: str, url: str, connections: int, workdir: Path, trace: bool = False) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--url", url]
    command += ["--counts", str(connections)] + (["--breakdown"] if trace else [])
    log = workdir / f"idle-{kind}-{connections}{'-traced' if trace else ''}.log"
    # A generous bound: 20,000 handshakes take seconds, tracing them a minute.
    result = run_pinned(command, log, 120 + connections / 50, f"{kind} child")
    # The next child, or whatever uses the server next, needs the descriptors these held.
    wait_for_server_to_drain(url)
    return result


# -- child processes ----------------------------------------------------------------------


def child_ours(kind: str, url: str, connections: int, trace: bool) -> dict:
    from gevent import monkey

    monkey.patch_all()
    import gevent
    import gevent.pool
    import greenlet

    from loadgen.accounting import Accounting
    from loadgen.drivers.reference import ReferenceDriver
    from loadgen.session import Session
    from loadgen.transport import TransportError, WebSocketClient

    accounting = Accounting()

    def open_one():
        if kind == "transport":
            return WebSocketClient.connect(url, on_message=ignore_message, ping_interval=PING_INTERVAL)
        session = Session(
            url, ReferenceDriver(), accounting.receiver(), reporter=ignore_report, ping_interval=PING_INTERVAL
        )
        session.connect()
        return session

    def attempt(_):
        try:
            return open_one()
        except TransportError:
            return None

    def alive(connection) -> bool:
        return not connection.closed if kind == "transport" else connection.alive

    def greenlet_stacks() -> tuple[int, int]:
        found = [g for g in gc.get_objects() if isinstance(g, greenlet.greenlet)]
        return len(found), sum(g._stack_saved for g in found)

    opened = [open_one()]
    gevent.sleep(0.1)
    gc.collect()
    if trace:
        import tracemalloc

        tracemalloc.start(BREAKDOWN_FRAMES)
        greenlets_before, stacks_before = greenlet_stacks()
        snapshot = tracemalloc.take_snapshot()
        traced_before = tracemalloc.get_traced_memory()[0]
    rss_before = rss_bytes(os.getpid())
    started = time.monotonic()
    pool = gevent.pool.Pool(CONCURRENCY)
    opened.extend(c for c in pool.imap_unordered(attempt, range(connections)) if c is not None)
    open_seconds = time.monotonic() - started
    gevent.sleep(SETTLE_SECONDS)
    gc.collect()
    rss_after = rss_bytes(os.getpid())
    result = summary(connections, sum(alive(c) for c in opened[1:]), rss_before, rss_after, open_seconds)
    if trace:
        traced = tracemalloc.get_traced_memory()[0] - traced_before
        greenlets_after, stacks_after = greenlet_stacks()
        result.update(
            traced_kib_per_connection=traced / connections / 1024,
            greenlets_per_connection=(greenlets_after - greenlets_before) / connections,
            greenlet_stack_kib_per_connection=(stacks_after - stacks_before) / connections / 1024,
            sites=allocation_sites(snapshot, tracemalloc.take_snapshot(), connections),
        )
    return result


def allocation_sites(before, after, connections: int) -> list[dict]:
    """Growth between two snapshots per site: the innermost frame, and the loadgen line that led there."""
    import sysconfig

    package = f"{ROOT / 'loadgen'}/"
    # Longest first, so a virtualenv's site-packages wins over the standard library it sits under.
    prefixes = sorted({f"{p}/" for p in (*sysconfig.get_paths().values(), ROOT)}, key=len, reverse=True)

    def short(frame) -> str:
        prefix = next((p for p in prefixes if frame.filename.startswith(p)), "")
        return f"{frame.filename[len(prefix) :]}:{frame.lineno}"

    sites: dict[str, list[int]] = {}
    for stat in after.compare_to(before, "traceback"):
        frames = list(stat.traceback)  # oldest first
        label = short(frames[-1])
        ours = next((f for f in reversed(frames) if f.filename.startswith(package)), None)
        if ours is not None and ours is not frames[-1]:
            label += f" <- {short(ours)}"
        total = sites.setdefault(label, [0, 0])
        total[0] += stat.size_diff
        total[1] += stat.count_diff
    ranked = sorted(sites.items(), key=lambda item: -item[1][0])
    return [
        {"site": label, "bytes": size / connections, "blocks": count / connections}
        for label, (size, count) in ranked
        if size > 0
    ]


def child_picows(url: str, connections: int) -> dict:
    import asyncio

    import uvloop
    from picows import WSError, WSListener, ws_connect

    async def main() -> dict:
        transports = []

        async def open_one():
            transport, _ = await ws_connect(
                WSListener, url, enable_auto_ping=True, auto_ping_idle_timeout=PING_INTERVAL
            )
            transports.append(transport)

        async def worker(pending) -> None:
            for _ in pending:
                try:
                    await open_one()
                except (OSError, asyncio.TimeoutError, WSError):
                    pass

        await open_one()
        await asyncio.sleep(0.1)
        gc.collect()
        rss_before = rss_bytes(os.getpid())
        started = time.monotonic()
        pending = iter(range(connections))
        await asyncio.gather(*(worker(pending) for _ in range(CONCURRENCY)))
        open_seconds = time.monotonic() - started
        await asyncio.sleep(SETTLE_SECONDS)
        gc.collect()
        held = sum(not t.is_disconnected for t in transports[1:])
        return summary(connections, held, rss_before, rss_bytes(os.getpid()), open_seconds)

    return uvloop.run(main())


def summary(connections: int, held: int, rss_before: int, rss_after: int, open_seconds: float) -> dict:
    return {
        "held": held,
        "rss_before_mib": rss_before / 2**20,
        "rss_after_mib": rss_after / 2**20,
        "kib_per_connection": (rss_after - rss_before) / connections / 1024,
        "open_seconds": open_seconds,
    }


# -- output -------------------------------------------------------------------------------


def print_rows(rows: list[dict]) -> None:
    print(f"{'client':<18} {'conns':>7} {'held':>7} {'RSS before':>11} {'RSS after':>10} {'KiB/conn':>9} {'open s':>7}")
    for row in rows:
        print(
            f"{row['client']:<18} {row['connections']:>7,} {row['held']:>7,} {row['rss_before_mib']:>9.1f}Mi"
            f" {row['rss_after_mib']:>8.1f}Mi {row['kib_per_connection']:>9.2f} {row['open_seconds']:>7.2f}"
            + (f"  ({row['note']})" if "note" in row else "")
        )
    for count in sorted({row["connections"] for row in rows}):
        same = {row["client"]: row["kib_per_connection"] for row in rows if row["connections"] == count}
        ceiling = same.pop("picows + uvloop", None)
        if ceiling:
            ratios = ", ".join(f"{client} {kib / ceiling:.1f}x" for client, kib in same.items())
            print(f"at {count:,}: {ratios} the memory of picows + uvloop")


def print_breakdown(found: list[dict]) -> None:
    for entry in found:
        rss, traced = entry["rss_kib_per_connection"], entry["traced_kib_per_connection"]
        print(
            f"\n{entry['client']}, {entry['connections']:,} connections: {rss:.2f} KiB RSS per connection,"
            f" {traced:.2f} KiB traced, {rss - traced:.2f} KiB untraced (greenlet frame stacks, allocator slack);"
            f" {entry['greenlets_per_connection']:.2f} greenlets per connection, their saved C stacks"
            f" {entry['greenlet_stack_kib_per_connection']:.2f} KiB of the traced"
        )
        print(f"{'bytes/conn':>10} {'blocks':>7}  site (innermost frame <- loadgen line that led there)")
        for site in entry["sites"]:
            print(f"{site['bytes']:>10,.0f} {site['blocks']:>7.2f}  {site['site']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[5000, 20000], help="connections per client")
    parser.add_argument(
        "--breakdown", action="store_true", help="also trace where our memory goes (at the first count)"
    )
    parser.add_argument("--child", choices=sorted(set(CLIENTS.values())), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        raise_open_files_limit()
        if args.child == "picows":
            result = child_picows(args.url, args.counts[0])
        else:
            result = child_ours(args.child, args.url, args.counts[0], args.breakdown)
        print(json.dumps(result), flush=True)
        os._exit(0)  # thousands of open sockets: nothing left worth a clean shutdown

    def measure(url: str, workdir: Path) -> None:
        print_rows(idle(url, args.counts, workdir))
        if args.breakdown:
            print_breakdown(breakdown(url, args.counts[0], workdir))

    return on_echo_server(measure)


if __name__ == "__main__":
    sys.exit(main())
