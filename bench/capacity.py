"""Fan-out capacity of the reference backend: room deliveries per backend CPU-second.

    python bench/capacity.py                                # rooms of 10 and 100, 8 s each
    python bench/capacity.py --room-sizes 10 100 500 --seconds 15

For each room size a fresh reference backend (``python -m loadgen.server``, on uvloop when
it is installed) runs pinned to the server core, and one generator process pinned to the
client core holds about 1,000 members in rooms of that size: each logged in and joined
through a ``Session`` with the reference driver and full delivery accounting. In every
room a few members post back to back, each waiting for its acknowledgement before the
next post, so the posting rate is as high as the slower of the two processes allows.
The figure is deliveries the members received per CPU-second the backend spent over the
same window.

One client core doing the accounting for every delivery is likely to run out before the
backend core does. The row's ``note`` says which process saturated, judged by how much of
the window each one ran or waited to run (from /proc/PID/schedstat): on a machine shared
with other work a saturated process may get only part of its core, but it never idles.
When the client saturated first, the backend's figure is its cost per delivery at a load
it could carry, which understates what it does saturated (busier event loops batch more
writes per wake-up).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from common import cpu_seconds, raise_open_files_limit, run_pinned, start_backend, stop

MEMBERS = 1000
SENDERS_PER_ROOM = 3
SETUP_CONCURRENCY = 50
WARMUP_SECONDS = 1.0
BODY = "x" * 64
# A process that wanted its core this much of the window counts as saturated.
SATURATED = 0.9


def capacity(room_sizes: list[int], seconds: float, workdir: Path) -> list[dict]:
    """One row per room size: deliveries, backend and client CPU-seconds, deliveries per backend core."""
    raise_open_files_limit()
    rows = []
    for room_size in room_sizes:
        rooms = max(1, round(MEMBERS / room_size))
        backend, url = start_backend(workdir)
        try:
            result = run_child(url, backend.pid, room_size, rooms, seconds, workdir)
        finally:
            stop(backend)
        rows.append({"room_size": room_size, **result})
    return rows


def run_child(url: str, server_pid: int, room_size: int, rooms: int, seconds: float, workdir: Path) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", "--url", url]
    command += ["--server-pid", str(server_pid), "--room-sizes", str(room_size), "--rooms", str(rooms)]
    command += ["--seconds", str(seconds)]
    return run_pinned(command, workdir / f"capacity-{room_size}.log", 120 + 2 * seconds, "capacity child")


# -- generator process --------------------------------------------------------------------


def child(url: str, server_pid: int, room_size: int, rooms: int, seconds: float) -> dict:
    from gevent import monkey

    monkey.patch_all()
    import gevent
    import gevent.pool

    from loadgen.accounting import Accounting
    from loadgen.drivers.reference import ReferenceDriver
    from loadgen.session import OperationFailed, Session
    from loadgen.transport import TransportError

    accounting = Accounting()
    members = room_size * rooms
    errors = 0

    def ignore(name, seconds, error):
        return None

    def join(n: int) -> Session:
        session = Session(url, ReferenceDriver(), accounting.receiver(), reporter=ignore)
        session.connect()
        session.login(f"cap{n}", "t")
        session.join(f"cap-{n % rooms}")
        return session

    def post(session: Session, room: str) -> None:
        nonlocal errors
        while True:
            try:
                session.send(room, BODY, time.time())
            except OperationFailed:
                errors += 1
            except TransportError:
                errors += 1
                return

    sessions = list(gevent.pool.Pool(SETUP_CONCURRENCY).imap(join, range(members)))
    # Members n, n + rooms, n + 2 * rooms … share room n: the first few of each room post.
    senders = sessions[: rooms * min(SENDERS_PER_ROOM, room_size)]
    for n, session in enumerate(senders):
        gevent.spawn(post, session, f"cap-{n % rooms}")
    gevent.sleep(WARMUP_SECONDS)
    me = os.getpid()
    delivered, wall = accounting.counts.delivered, time.monotonic()
    cpu, backend = cpu_seconds(me), cpu_seconds(server_pid)
    wanted, backend_wanted = wanted_seconds(me), wanted_seconds(server_pid)
    gevent.sleep(seconds)
    delivered = accounting.counts.delivered - delivered
    cpu, backend = cpu_seconds(me) - cpu, cpu_seconds(server_pid) - backend
    wanted, backend_wanted = wanted_seconds(me) - wanted, wanted_seconds(server_pid) - backend_wanted
    wall = time.monotonic() - wall
    note = f"client core ran {cpu / wall:.0%} of the window and wanted {wanted / wall:.0%}, backend core"
    note += f" ran {backend / wall:.0%} and wanted {backend_wanted / wall:.0%}: "
    note += saturation(wanted / wall, backend_wanted / wall)
    return {
        "members": members,
        "deliveries": delivered,
        "backend_cpu_seconds": backend,
        "per_backend_core": delivered / backend if backend else 0.0,
        "client_cpu_seconds": cpu,
        "note": note + (f"; {errors} posts failed" if errors else ""),
    }


def wanted_seconds(pid: int) -> float:
    """Seconds a process ran or waited for a core to run on.

    Over a window, a process that is never idle wants its core all the time however many
    other processes share it, where its CPU time would only say how much it was given.
    """
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            ran, waited = (task / "schedstat").read_text().split()[:2]
        except FileNotFoundError:
            continue
        total += int(ran) + int(waited)
    return total / 1e9


def saturation(client_wanted: float, backend_wanted: float) -> str:
    if backend_wanted >= SATURATED:
        return "the backend saturated"
    if client_wanted >= SATURATED:
        return "the client saturated first, so the backend figure is a lower bound"
    return "neither saturated"


# -- output -------------------------------------------------------------------------------


def print_rows(rows: list[dict]) -> None:
    print(f"{'room size':>9} {'members':>7} {'deliveries':>10} {'backend CPU s':>13} {'per backend core':>16}", end="")
    print(f" {'client CPU s':>12}")
    for row in rows:
        print(
            f"{row['room_size']:>9,} {row['members']:>7,} {row['deliveries']:>10,} {row['backend_cpu_seconds']:>13.2f}"
            f" {row['per_backend_core']:>16,.0f} {row['client_cpu_seconds']:>12.2f}  {row['note']}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--room-sizes", type=int, nargs="+", default=[10, 100], help="members per room (default 10 100)"
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per room size (default 8)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--server-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rooms", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        raise_open_files_limit()
        result = child(args.url, args.server_pid, args.room_sizes[0], args.rooms, args.seconds)
        print(json.dumps(result), flush=True)
        os._exit(0)  # posters and readers still hold their sockets: nothing left worth a clean shutdown
    with tempfile.TemporaryDirectory() as tmp:
        print_rows(capacity(args.room_sizes, args.seconds, Path(tmp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
