"""Messages per second per generator core: our client stack against websocket-client under gevent.

    python bench/throughput.py                 # 200 users, 2 rounds of 10 s per client
    python bench/throughput.py --users 1000 --seconds 20 --rounds 3

One reference backend (its own process) serves both clients in turn. Each client runs in a
fresh generator process with the same users, rooms and posting schedule; the figure is
deliveries received per CPU-second of that generator process, so a backend that cannot
keep up slows both equally instead of skewing the ratio. Rounds alternate (ours, baseline,
ours, baseline …) so a noisy neighbour hits both.

"ours" is the whole client path with accounting on: gevent transport on the websockets
Sans-I/O core, the reference driver, a Session and the Accounting (HDR latency, loss,
order). "baseline" is what Locust users write today: websocket-client's blocking
connection under gevent's monkey-patching, json.loads on each frame, a greenlet per
connection, replies matched to requests.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def start_backend(workdir: Path) -> tuple[subprocess.Popen, str]:
    port_file = workdir / "port"
    process = subprocess.Popen(
        [sys.executable, "-m", "loadgen.server", "--port", "0", "--port-file", str(port_file),
         "--log-level", "WARNING"],
        cwd=ROOT,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while not port_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("reference backend did not start")
        time.sleep(0.05)
    return process, f"ws://127.0.0.1:{int(port_file.read_text())}"


def run_generator(variant: str, url: str, args) -> dict:
    command = [
        sys.executable, str(Path(__file__).resolve()), "--generator", variant, "--url", url,
        "--users", str(args.users), "--rooms", str(args.rooms), "--rate", str(args.rate),
        "--seconds", str(args.seconds),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.seconds * 4 + 60)
    if done.returncode != 0:
        raise SystemExit(f"{variant} generator failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def orchestrate(args) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        backend, url = start_backend(Path(tmp))
        try:
            results: dict[str, list[dict]] = {"ours": [], "baseline": []}
            for round_number in range(args.rounds):
                for variant in ("ours", "baseline"):
                    result = run_generator(variant, url, args)
                    results[variant].append(result)
                    print(
                        f"round {round_number + 1} {variant:>8}: {result['deliveries']:>8} deliveries, "
                        f"{result['cpu_seconds']:.2f} CPU-s, {result['per_cpu_second']:,.0f} msg/CPU-s"
                        + (f", lost {result['lost']}" if "lost" in result else ""),
                        flush=True,
                    )
        finally:
            backend.terminate()
            backend.wait(timeout=20)
    best = {variant: max(r["per_cpu_second"] for r in runs) for variant, runs in results.items()}
    ratio = best["ours"] / best["baseline"]
    print(f"users={args.users} rooms={args.rooms} rate={args.rate}/s/user seconds={args.seconds}")
    print(f"ours {best['ours']:,.0f} msg/CPU-s, baseline {best['baseline']:,.0f} msg/CPU-s")
    print(f"ratio ours/baseline: {ratio:.2f}x (bar: 1.5x)")
    return 0


# -- generator processes ------------------------------------------------------------------


def generator_ours(args) -> dict:
    from gevent import monkey

    monkey.patch_all()
    import random

    import gevent

    from loadgen.accounting import Accounting
    from loadgen.drivers.reference import ReferenceDriver
    from loadgen.session import Session

    accounting = Accounting(delivery_timeout=5.0)

    def ignore(name, seconds, error):
        return None

    sessions = []
    for n in range(args.users):
        receiver = accounting.receiver()
        session = Session(args.url, ReferenceDriver(), receiver, reporter=ignore, ping_interval=None)
        session.connect()
        session.login(f"b{n}", "t")
        session.join(f"bench-{n % args.rooms}")
        sessions.append(session)

    def post(session: Session, seed: int) -> None:
        rng = random.Random(seed)
        room = f"bench-{seed % args.rooms}"
        due = time.time()
        while True:
            due += rng.expovariate(args.rate)
            wait = due - time.time()
            if wait > 0:
                gevent.sleep(wait)
            session.send(room, "x" * 64, due)
            accounting.record_sent(time.time() - due)

    def losses() -> dict:
        accounting.expire()
        return {"lost": accounting.counts.lost}

    return measure(
        lambda: [gevent.spawn(post, s, n) for n, s in enumerate(sessions)],
        lambda: accounting.counts.delivered,
        args.seconds,
        extra=losses,
    )


def generator_baseline(args) -> dict:
    from gevent import monkey

    monkey.patch_all()
    import itertools
    import random

    import gevent
    import websocket
    from gevent.event import AsyncResult

    delivered = 0

    class Client:
        def __init__(self, url: str) -> None:
            self.ws = websocket.create_connection(url)
            self.ids = itertools.count(1)
            self.waiting: dict[int, AsyncResult] = {}
            gevent.spawn(self.read)

        def read(self) -> None:
            nonlocal delivered
            while True:
                frame = json.loads(self.ws.recv())
                if frame["ev"] == "msg":
                    delivered += 1
                else:
                    waiter = self.waiting.pop(frame.get("re"), None)
                    if waiter is not None:
                        waiter.set(frame)

        def call(self, op: str, **fields) -> dict:
            request_id = next(self.ids)
            waiter = self.waiting[request_id] = AsyncResult()
            self.ws.send(json.dumps({"op": op, "id": request_id, **fields}))
            return waiter.get(timeout=10)

    clients = []
    for n in range(args.users):
        client = Client(args.url)
        client.call("login", user=f"b{n}", token="t")
        client.call("join", room=f"bench-{n % args.rooms}")
        clients.append(client)

    def post(client: Client, seed: int) -> None:
        rng = random.Random(seed)
        room = f"bench-{seed % args.rooms}"
        cseq = 0
        due = time.time()
        while True:
            due += rng.expovariate(args.rate)
            wait = due - time.time()
            if wait > 0:
                gevent.sleep(wait)
            cseq += 1
            client.call("send", room=room, cseq=cseq, ts=due, body="x" * 64)

    return measure(
        lambda: [gevent.spawn(post, c, n) for n, c in enumerate(clients)],
        lambda: delivered,
        args.seconds,
    )


def measure(start, delivered, seconds: float, extra=None) -> dict:
    import gevent

    greenlets = start()
    gevent.sleep(1.0)  # let the schedule settle before measuring
    count0, cpu0, wall0 = delivered(), time.process_time(), time.monotonic()
    gevent.sleep(seconds)
    count1, cpu1, wall1 = delivered(), time.process_time(), time.monotonic()
    gevent.killall(greenlets)
    cpu = cpu1 - cpu0
    result = {
        "deliveries": count1 - count0,
        "cpu_seconds": cpu,
        "wall_seconds": wall1 - wall0,
        "per_cpu_second": (count1 - count0) / cpu if cpu else 0.0,
    }
    if extra is not None:
        result.update(extra())
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=200, help="connections per generator (default 200)")
    parser.add_argument("--rooms", type=int, default=10, help="rooms the users spread over (default 10)")
    parser.add_argument("--rate", type=float, default=2.0, help="posts per user per second (default 2)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per round (default 10)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per client, alternating (default 2)")
    parser.add_argument("--generator", choices=("ours", "baseline"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generator is None:
        return orchestrate(args)
    os.environ.setdefault("PYTHONHASHSEED", "0")
    result = generator_ours(args) if args.generator == "ours" else generator_baseline(args)
    print(json.dumps(result), flush=True)
    os._exit(0)  # the greenlets hold sockets open; the process has said all it has to say


if __name__ == "__main__":
    sys.exit(main())
