"""A compressed soak of the generator: does its memory grow with the messages it handles?

    python bench/soak.py                       # about a million delivered messages, ~5 minutes on 2 cores
    python bench/soak.py --messages 200000     # shorter
    python bench/soak.py --trace               # with tracemalloc from the start (slower; sites of growth)

The reference backend runs on the server core with its metrics on; one headless Locust process
runs on the client core: chat users at high churn (each reconnects every 10 s on average, so it
connects, logs in, joins its rooms and catches up on history again) posting to rooms of 20,
until the run has delivered ``--messages`` room and direct messages. The run's own soak verdict
(docs/validity.md) fits the generator's RSS past the warm-up (the first ``--warmup`` share of the
run) and the backend's RSS and open fds through ``--backend-metrics``.

The figure is the generator's RSS growth over the measured window, from the fitted line (a
single sample is noisy): the goal is under 2 %. When it is missed, the run is repeated on a
quarter of the messages under tracemalloc, with snapshots (after a full garbage collection) at the
end of the warm-up and at the end, and the 15 sites whose allocations grew most are printed.
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

from common import CLIENT_CORE, pin, raise_open_files_limit, start_backend, stop

USERS = 300
PROFILE = """\
messaging:
  rooms: 30
  rooms_per_user: 2
  post_rate: 1.0
  dm_rate: 0.1
  read_rate: 0.2
  reconnect_rate: 0.1
  body_bytes: 64
"""
GOAL_PERCENT = 2.0
#: the slowest this generator is expected to deliver, per second: bounds the run's time
SLOWEST_RATE = 1500
TRACE_SITES = 15

LOCUSTFILE = f'''
import gc
import json
import os
import time
import tracemalloc

import gevent
from locust import events

from loadgen.run import RunContext, install
from loadgen.scenarios.messaging import ChatUser

install(events, scenario="messaging")


def _until_delivered(environment):
    """Quit once the run has delivered the target, bounded in time; trace allocations if asked."""
    target = int(os.environ["SOAK_MESSAGES"])
    limit = float(os.environ["SOAK_LIMIT_S"])
    trace_file = os.environ.get("SOAK_TRACE_FILE")
    warmup_share = float(os.environ["SOAK_WARMUP_SHARE"])
    context = RunContext.of(environment)
    started = time.monotonic()
    if trace_file:
        tracemalloc.start(8)
    first = None
    while time.monotonic() - started < limit:
        gevent.sleep(0.5)
        delivered = context.accounting.counts.delivered
        if trace_file and first is None and delivered >= target * warmup_share:
            # cycles the collector has not reached yet are not growth: collect before each snapshot
            gc.collect()
            first = tracemalloc.take_snapshot()
        if delivered >= target:
            break
    if trace_file and first is not None:
        gc.collect()
        grown = [s for s in tracemalloc.take_snapshot().compare_to(first, "traceback") if s.size_diff > 0]
        grown = sorted(grown, key=lambda s: -s.size_diff)[:{TRACE_SITES}]
        sites = [{{"size_diff": s.size_diff, "count_diff": s.count_diff,
                   "where": [f"{{frame.filename}}:{{frame.lineno}}" for frame in s.traceback][-4:]}} for s in grown]
        with open(trace_file, "w") as out:
            json.dump(sites, out)
    environment.runner.quit()


@events.test_start.add_listener
def _watch(environment, **_kwargs):
    gevent.spawn(_until_delivered, environment)


__all__ = ["ChatUser"]
'''


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_generator(messages: int, warmup: float, workdir: Path, trace: bool) -> tuple[dict, list | None]:
    """One Locust run to ``messages`` deliveries on a fresh backend: its summary, and the trace when asked."""
    metrics_port = free_port()
    backend, url = start_backend(workdir, "soak-backend", "--metrics-port", str(metrics_port))
    name = "trace" if trace else "soak"
    locustfile = workdir / "soak_locustfile.py"
    locustfile.write_text(LOCUSTFILE)
    (workdir / "soak-profile.yaml").write_text(PROFILE)
    summary, trace_file = workdir / f"{name}-summary.json", workdir / f"{name}-trace.json"
    limit = messages / SLOWEST_RATE + 60
    command = [sys.executable, "-m", "locust", "-f", str(locustfile), "--headless", "-u", str(USERS),
               "-r", "100", "-t", f"{int(limit) + 60}s", "--host", url, "--profile", str(workdir / "soak-profile.yaml"),
               "--drain", "2", "--metrics-port", "0", "--summary", str(summary), "--results", str(workdir / name),
               "--backend-metrics", f"http://127.0.0.1:{metrics_port}/metrics", "--series-interval", "1",
               "--soak-warmup", f"{warmup * 100:g}%", "--loglevel", "WARNING"]  # fmt: skip
    env = {**os.environ, "SOAK_MESSAGES": str(messages), "SOAK_LIMIT_S": str(limit),
           "SOAK_WARMUP_SHARE": str(warmup)}  # fmt: skip
    if trace:
        env["SOAK_TRACE_FILE"] = str(trace_file)
    try:
        with open(workdir / f"{name}-locust.log", "wb") as log:
            process = subprocess.Popen(command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, env=env)
            try:
                pin(process.pid, CLIENT_CORE)
                process.wait(timeout=limit + 180)
            finally:
                stop(process)
    finally:
        stop(backend)
    if not summary.exists():
        raise RuntimeError(f"the soak run wrote no summary:\n{(workdir / f'{name}-locust.log').read_text()[-3000:]}")
    return json.loads(summary.read_text()), json.loads(trace_file.read_text()) if trace_file.exists() else None


def row_of(summary: dict, seconds: float) -> dict:
    """The bench's figures from a run's summary: its own soak verdict, and what the run did."""
    series = summary["soak"]["series"]
    rss = series["generator_rss"]
    raw = (rss["end"] / rss["start"] - 1) * 100 if rss["start"] else None
    backend_rss, fds = series.get("backend_rss", {}), series.get("backend_fds", {})
    growth = rss["growth_percent"]
    return {
        "messages": summary["messages"]["delivered"],
        "sent": summary["messages"]["sent"],
        "lost": summary["messages"]["lost"],
        "reconnects": summary["connections"]["reconnects"],
        "joins": summary["operations"].get("room.join", {}).get("count", 0),
        "run_seconds": round(summary["duration_s"], 1),
        "wall_seconds": round(seconds, 1),
        "rss_start_mb": round(rss["start"] / 2**20, 1) if rss["start"] else None,
        "rss_end_mb": round(rss["end"] / 2**20, 1) if rss["end"] else None,
        "rss_growth_percent": growth,
        "rss_raw_growth_percent": None if raw is None else round(raw, 3),
        "rss_slope_mb_per_hour": None if rss["slope_per_hour"] is None else round(rss["slope_per_hour"] / 2**20, 1),
        "rss_r2": rss["r2"],
        "rss_samples": rss["samples"],
        "backend_rss_growth_percent": backend_rss.get("growth_percent"),
        "backend_fds_start": fds.get("start"),
        "backend_fds_end": fds.get("end"),
        "suspect": bool(summary["generator"]["suspect"]),
        "goal_met": growth is not None and growth < GOAL_PERCENT,
    }


def soak(messages: int, workdir: Path, warmup: float = 0.2, trace: bool = False) -> list[dict]:
    """The soak row; with the goal missed (or ``trace``), the sites whose allocations grew most."""
    raise_open_files_limit()
    started = time.monotonic()
    summary, sites = run_generator(messages, warmup, workdir, trace)
    row = row_of(summary, time.monotonic() - started)
    if not row["goal_met"] and not trace:
        _, sites = run_generator(max(messages // 4, 50_000), warmup, workdir, trace=True)
    if sites is not None:
        row["growth_sites"] = sites
    return [row]


def render(rows: list[dict]) -> str:
    lines = []
    for row in rows:
        verdict = "met" if row["goal_met"] else "MISSED"
        lines.append(
            f"Soak: {row['messages']:,} messages delivered in {row['run_seconds']:.0f} s ({row['reconnects']:,} "
            f"reconnects, {row['joins']:,} joins, {row['lost']} lost{', SUSPECT run' if row['suspect'] else ''})\n"
            f"  generator RSS {row['rss_start_mb']} → {row['rss_end_mb']} MiB past the warm-up: "
            f"{row['rss_growth_percent']}% by the fitted line ({row['rss_slope_mb_per_hour']} MiB/h, "
            f"r² {row['rss_r2']}), {row['rss_raw_growth_percent']}% sample to sample; goal < {GOAL_PERCENT:g}%: "
            f"{verdict}\n"
            f"  backend RSS {row['backend_rss_growth_percent']}% by its line; open fds "
            f"{row['backend_fds_start']} → {row['backend_fds_end']}"
        )
        for site in row.get("growth_sites") or ():
            lines.append(f"    {site['size_diff'] / 1024:+10.1f} KiB {site['count_diff']:+8d} blocks  "
                         f"{' < '.join(reversed(site['where']))}")  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])  # fmt: skip
    parser.add_argument("--messages", type=int, default=1_000_000, help="deliveries to run for (default 1,000,000)")
    parser.add_argument("--warmup", type=float, default=0.2, help="share of the run left out of the fit (0.2)")
    parser.add_argument("--trace", action="store_true", help="run under tracemalloc and list the growth sites")
    args = parser.parse_args()
    if not 0 <= args.warmup < 1 or args.messages <= 0:
        parser.error("--warmup is a share from 0 to below 1, --messages a positive count")
    with tempfile.TemporaryDirectory() as tmp:
        rows = soak(args.messages, Path(tmp), args.warmup, args.trace)
    print(render(rows))
    print(json.dumps(rows[0]))
    return 0 if rows[0]["goal_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
