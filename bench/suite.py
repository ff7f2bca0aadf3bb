"""The generator's benchmark suite: our client against its peers on one server and one message.

    python bench/suite.py                 # everything, about 12 minutes on 2 cores
    python bench/suite.py --quick         # one round, shorter windows: a smoke run
    python bench/suite.py --parts pingpong fidelity --rounds 3

Parts: ping-pong (round trips per client core at 100 and 1,000 connections), fidelity
(CPU per message and added latency at a fixed moderate rate), fan-out receive
(deliveries accounted per core in rooms of 10, 100 and 1,000), idle (memory per held
connection at 5,000 and 20,000), connect rate (new connections per second per core) and
the reference backend's own fan-out capacity; only when named (``--parts soak``), a compressed
soak of the generator's memory (bench/soak.py). The server runs on core 0, every client on
core 1; each figure divides work by the client's own CPU-seconds, and rounds interleave
the clients so machine noise hits all of them alike: compare ratios, not absolute rates.

Prints the tables and the goals of docs/performance.md with their ratios, writes every
row to docs/performance.json and the tables into docs/performance.md between its
``bench:begin`` and ``bench:end`` markers. Installs what it needs (the ``bench`` extra,
Debian's tsung as root, Artillery from npm into ~/.cache/loadgen-bench) or says exactly
what is missing and goes on without that client.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

PARTS = ("pingpong", "fidelity", "fanout", "idle", "connect", "capacity")
#: parts run only when named: the soak takes minutes of its own (python bench/suite.py --parts soak)
OPT_IN_PARTS = ("soak",)
PEERS = ("tsung", "artillery")
FIDELITY_CONNECTIONS = 100
FIDELITY_RATE = 20.0  # per connection: 2,000 round trips a second in all
RESULTS = common.ROOT / "docs" / "performance.json"
PAGE = common.ROOT / "docs" / "performance.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def ensure_python_packages() -> None:
    try:
        common.require_modules("loadgen", "picows", "uvloop", "websocket", "locust", "hdrh")
    except common.Missing:
        print("installing the bench extra: pip install -e '.[bench]'", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", ".[bench]"], cwd=common.ROOT, check=True)
        common.require_modules("loadgen", "picows", "uvloop", "websocket", "locust", "hdrh")


def median_row(rows: list[dict]) -> dict:
    """The round with the median per-core figure, so every field of a row comes from one real run."""
    ordered = sorted(rows, key=lambda row: row.get("per_core") or 0.0)
    return {**ordered[len(ordered) // 2], "rounds": [round(row.get("per_core") or 0.0) for row in rows]}


def run_pingpong(url: str, args, workdir: Path, peers: dict) -> list[dict]:
    import peers as peer_runs
    import pingpong

    rows = []
    for connections in args.connections:
        runs: dict[str, list[dict]] = {}
        for round_number in range(args.rounds):
            for client in pingpong.CLIENTS + tuple(peers):
                if client in peers:
                    run = getattr(peer_runs, f"{client}_pingpong")
                    row = run(url, connections, args.seconds, args.warmup, workdir)
                    row["key"] = client
                else:
                    row = pingpong.pingpong(url, client, connections, args.seconds, args.warmup, workdir)
                runs.setdefault(client, []).append(row)
                progress(f"ping-pong {connections} conns, round {round_number + 1}: {row['client']}", row)
        rows += [{"part": "pingpong", **median_row(r)} for r in runs.values()]
    return rows


def run_fidelity(url: str, args, workdir: Path) -> list[dict]:
    import pingpong

    runs: dict[str, list[dict]] = {}
    for round_number in range(args.fidelity_rounds):
        for client in ("picows", "ours-locust"):
            row = pingpong.pingpong(url, client, FIDELITY_CONNECTIONS, args.seconds, args.warmup, workdir,
                                    rate=FIDELITY_RATE)  # fmt: skip
            runs.setdefault(client, []).append(row)
            progress(f"fidelity round {round_number + 1}: {row['client']}", row)
    # the median by CPU per message: the figure this part is about
    rows = []
    for rounds in runs.values():
        ordered = sorted(rounds, key=lambda row: row["us_per_message"])
        rows.append({"part": "fidelity", **ordered[len(ordered) // 2]})
    return rows


def progress(what: str, row: dict) -> None:
    figure = row.get("per_core")
    print(f"  {what}: {figure:,.0f}/CPU-s" if figure else f"  {what}: {row}", flush=True)


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())  # fmt: skip
    versions = {}
    for package in ("locust", "gevent", "websockets", "orjson", "picows", "uvloop", "websocket-client"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": model,
        "cores": len(__import__("os").sched_getaffinity(0)),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "versions": versions,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])  # fmt: skip
    parser.add_argument("--parts", nargs="+", choices=PARTS + OPT_IN_PARTS, default=list(PARTS),
                        help="parts to run (default all but soak)")  # fmt: skip
    parser.add_argument(
        "--peers",
        nargs="*",
        choices=PEERS,
        default=list(PEERS),
        help="peer tools in ping-pong (default: tsung artillery; none with --peers)",
    )
    parser.add_argument("--connections", nargs="+", type=int, default=[100, 1000], help="ping-pong connections")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per client; the median counts")
    parser.add_argument("--fidelity-rounds", type=int, default=5,
                        help="rounds of the fixed-rate part, whose figures wander more (default 5)")  # fmt: skip
    parser.add_argument("--seconds", type=float, default=5.0, help="measured window per run (default 5)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds between connecting and measuring")
    parser.add_argument("--idle", nargs="+", type=int, default=[5000, 20000], help="idle connection counts")
    parser.add_argument("--quick", action="store_true", help="one round of 3 s windows, 1,000 idle connections")
    parser.add_argument("--no-write", action="store_true", help="print only: leave docs/performance.* alone")
    parser.add_argument("--soak-messages", type=int, default=1_000_000,
                        help="deliveries the soak part runs for (default 1,000,000; 200,000 with --quick)")  # fmt: skip
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.fidelity_rounds, args.seconds, args.warmup, args.idle = 1, 1, 3.0, 1.5, [1000]
        args.soak_messages = min(args.soak_messages, 200_000)
    started = time.monotonic()
    ensure_python_packages()
    common.raise_open_files_limit()
    peers, missing = ensure_peers(args.peers if "pingpong" in args.parts else [])
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        server, url = common.start_echo_server(workdir)
        try:
            if "pingpong" in args.parts:
                rows += run_pingpong(url, args, workdir, peers)
            if "fidelity" in args.parts:
                rows += run_fidelity(url, args, workdir)
            if "fanout" in args.parts:
                import fanout

                rows += [{"part": "fanout", **row} for row in fanout.fanout([10, 100, 1000], 1000, args.seconds,
                                                                           args.warmup, workdir)]  # fmt: skip
            if "idle" in args.parts:
                import idle

                rows += [{"part": "idle", **row} for row in idle.idle(url, args.idle, workdir)]
            if "connect" in args.parts:
                import connect_rate

                rows += [{"part": "connect", **row} for row in connect_rate.connect_rate(url, 2000, workdir)]
        finally:
            common.stop(server)
        if "capacity" in args.parts:
            import capacity

            rows += [{"part": "capacity", **row} for row in capacity.capacity([10, 100], args.seconds, workdir)]
        if "soak" in args.parts:
            import soak

            rows += [{"part": "soak", **row} for row in soak.soak(args.soak_messages, workdir)]
    import report

    text = report.render(rows, missing)
    soak_rows = [row for row in rows if row["part"] == "soak"]
    if soak_rows:
        import soak

        text += "\n\n" + soak.render(soak_rows)
    print(text)
    elapsed = time.monotonic() - started
    print(f"suite took {elapsed / 60:.1f} min")
    if not args.no_write:
        command = "python bench/suite.py" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")
        record = {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": command,
            "minutes": round(elapsed / 60, 1),
            "machine": machine(),
            "peers": {name: info for name, info in peers.items()},
            "missing": missing,
            "rows": rows,
        }
        RESULTS.write_text(json.dumps(record, indent=1) + "\n")
        report.update_page(PAGE, record, text)
        print(f"wrote {RESULTS.relative_to(common.ROOT)} and the figures in {PAGE.relative_to(common.ROOT)}")
    return 0


def ensure_peers(wanted: list[str]) -> tuple[dict, dict]:
    import peers as peer_runs

    found, missing = {}, {}
    for name in wanted:
        try:
            found[name] = getattr(peer_runs, f"ensure_{name}")()
        except common.Missing as exc:
            missing[name] = str(exc)
            print(f"{name}: {exc}; going on without it", flush=True)
    return found, missing


if __name__ == "__main__":
    sys.exit(main())
