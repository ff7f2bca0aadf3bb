"""Peer load tools on the bench's echo server: Tsung and Artillery doing closed-loop ping-pong.

    python bench/peers.py --connections 100 --seconds 8
    python bench/peers.py --connections 1000 --seconds 8 --warmup 3 --peer tsung

Each peer runs as its own process tree pinned to the client core, with ``connections``
WebSocket connections that each send ``common.MESSAGE`` as a text frame, wait for its echo and
send it again. A run opens every connection, waits ``warmup`` seconds, then measures a window:
the echoes the tool itself counted in that window, and the CPU-seconds its whole process tree
spent in exactly that window (read from /proc at both ends). Both tools only report counts
per interval of their own clock, so each window is a whole number of those intervals and
the CPU is sampled as each interval closes:

- Tsung writes its statistics to tsung.log once a second here (``dumpstats_interval``); the
  window is ``ceil(seconds)`` of those dumps.
- Artillery buckets its counters into 10-second wall-clock periods that only appear in the
  ``--output`` report written at the end; the window is the whole periods from the first
  boundary after warm-up, at least ``seconds`` long (so 8 s becomes 10 s).

Every run is bounded by ``seconds + warmup + 60`` seconds, only talks to a loopback address,
and ends every process it started, whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import math
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from xml.sax.saxutils import escape

import common

TSUNG_INSTALL = "apt-get install tsung"
ARTILLERY_PREFIX = Path.home() / ".cache" / "loadgen-bench" / "artillery"
#: Install scripts of Artillery's dependencies download a browser for its Playwright engine and
#: build optional native modules; the ws engine needs neither, and a download fails offline.
ARTILLERY_INSTALL = [
    "npm", "install", "--prefix", str(ARTILLERY_PREFIX), "artillery@2",
    "--ignore-scripts", "--no-audit", "--no-fund", "--no-update-notifier",
]  # fmt: skip
TSUNG_DUMP_SECONDS = 1
ARTILLERY_PERIOD_SECONDS = 10
#: New connections per second, the same for both tools.
ARRIVALS_PER_SECOND = 1000
POLL_SECONDS = 0.02
#: A run, from launch to the last process ended, takes at most ``seconds + warmup + RUN_MARGIN``.
RUN_MARGIN = 60
#: How long a peer gets to exit after SIGTERM before it is killed.
STOP_GRACE = 5.0

_TSUNG_CONFIG = """\
<?xml version="1.0"?>
<!DOCTYPE tsung SYSTEM "/usr/share/tsung/tsung-1.0.dtd">
<tsung loglevel="warning" version="1.0">
  <clients>
    <client host="localhost" use_controller_vm="true" maxusers="{maxusers}"/>
  </clients>
  <servers>
    <server host="{host}" port="{port}" type="tcp"/>
  </servers>
  <load duration="{limit}" unit="second">
    <arrivalphase phase="1" duration="{limit}" unit="second">
      <users maxnumber="{connections}" arrivalrate="{rate}" unit="second"/>
    </arrivalphase>
  </load>
  <sessions>
    <session name="pingpong" probability="100" type="ts_websocket">
      <request><websocket type="connect" path="{path}"/></request>
      <for from="1" to="2000000000" incr="1" var="round">
        <request><websocket type="message" frame="text">{message}</websocket></request>
      </for>
    </session>
  </sessions>
</tsung>
"""

_ARTILLERY_PROCESSOR = """\
// The loop runs until bench/peers.py creates the stop file; polling it off the hot path keeps the
// per-message loop test down to reading one boolean.
const fs = require("fs");
const path = require("path");

const stopFile = path.join(__dirname, "stop");
let running = true;
setInterval(() => {
  running = !fs.existsSync(stopFile);
}, 100).unref();

module.exports = {
  keepGoing: (context, next) => next(running),
  // The bench's echo server answers a close frame without a status code with code 0, which ws
  // rejects; Artillery then calls the finished scenario's callback twice and the worker dies
  // before the report is written. Dropping the socket skips the closing handshake.
  hangUp: (context, events, next) => {
    context.ws.terminate();
    next();
  },
};
"""

_ARTILLERY_OFFLINE = """\
// Artillery sends an anonymous "test run" event to its telemetry service even when
// ARTILLERY_DISABLE_TELEMETRY is set; without the client library it falls back to a no-op,
// so the peer never leaves the loopback interface.
const Module = require("module");
const resolve = Module._resolveFilename;
Module._resolveFilename = function (request, ...rest) {
  if (request === "posthog-node") {
    throw new Error("telemetry client not loaded by bench/peers.py");
  }
  return resolve.call(this, request, ...rest);
};
"""


def ensure_tsung() -> str:
    """Path of ``tsung``; installed from Debian's packages when missing and running as root."""
    path = shutil.which("tsung")
    if path is not None:
        return path
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise common.Missing(f"tsung not found: {TSUNG_INSTALL}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "tsung"]
    done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        # A fresh machine has no package lists yet.
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, text=True, timeout=900)
        done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise common.Missing(f"'{' '.join(install)}' failed:\n{done.stderr[-2000:]}\ninstall it with: {TSUNG_INSTALL}")
    return common.require_command("tsung", TSUNG_INSTALL)


def ensure_artillery() -> str:
    """Path of the ``artillery`` executable, installed once under ~/.cache/loadgen-bench/artillery."""
    executable = ARTILLERY_PREFIX / "node_modules" / ".bin" / "artillery"
    if executable.exists():
        return str(executable)
    command = " ".join(ARTILLERY_INSTALL)
    common.require_command("node", f"install Node.js 20 or later with npm, then: {command}")
    common.require_command("npm", f"install npm, then: {command}")
    ARTILLERY_PREFIX.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(ARTILLERY_INSTALL, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired as error:
        raise common.Missing(f"'{command}' did not finish within {error.timeout:g} s; run it by hand") from error
    if done.returncode != 0 or not executable.exists():
        raise common.Missing(
            f"'{command}' exited with {done.returncode} without installing {executable}:\n"
            f"{done.stderr[-2000:]}\nrun it by hand once the cause is fixed"
        )
    return str(executable)


def tsung_pingpong(url: str, connections: int, seconds: float, warmup: float, workdir: Path) -> dict:
    """Tsung's ts_websocket sessions: connect, then a ``<for>`` loop of messages that wait for their echo."""
    tsung = ensure_tsung()
    taskset = common.require_command("taskset", "apt-get install util-linux")
    host, port, path = _loopback_target(url)
    deadline = _deadline(seconds, warmup)
    run_dir = Path(tempfile.mkdtemp(prefix="tsung-", dir=workdir))
    config = run_dir / "pingpong.xml"
    config.write_text(
        _TSUNG_CONFIG.format(
            connections=connections,
            # Tsung asks for another VM, which use_controller_vm forbids, once maxusers - 1 users have
            # started while maxusers are active.
            maxusers=connections + 1,
            host=host,
            port=port,
            path=escape(path, {'"': "&quot;"}),
            limit=math.ceil(seconds + warmup + RUN_MARGIN),
            rate=ARRIVALS_PER_SECOND,
            message=escape(common.MESSAGE.decode()),
        )
    )
    env = {
        **os.environ,
        # ~/.tsung and anything else Tsung keeps in the home directory stay in this run's folder.
        "HOME": str(run_dir),
        # One scheduler for the one core the VM is pinned to, and no busy-waiting: a scheduler that
        # spins while every connection waits for the server would count the wait as CPU spent on
        # messages. Statistics every second instead of every 10. Erlang distribution, which Tsung
        # starts even for a single VM, on loopback only.
        "ERL_FLAGS": "+S 1:1 +SDcpu 1:1 +sbwt none +sbwtdcpu none +sbwtdio none "
        f"-tsung_controller dumpstats_interval {TSUNG_DUMP_SECONDS * 1000} "
        "-kernel inet_dist_use_interface {127,0,0,1}",
        "ERL_EPMD_ADDRESS": "127.0.0.1",
    }
    # A unique controller id lets this run share the machine with another Tsung.
    command = [taskset, "-c", str(common.CLIENT_CORE), tsung, "-n", "-i", f"bench{secrets.token_hex(4)}",
               "-f", str(config), "-l", str(run_dir / "log"), "start"]  # fmt: skip
    output = run_dir / "tsung.out"
    stats = _TsungLog(run_dir / "log")

    def trouble() -> str:
        return f"{_tail(output)}\n{stats.tail()}"

    intervals = max(1, math.ceil(seconds / TSUNG_DUMP_SECONDS))
    epmd_before = _epmd_pids()
    common.raise_open_files_limit()
    try:
        with _launched(command, run_dir, env, output) as process:
            _await_connections(process, port, connections, deadline, trouble)
            _sleep_until(time.monotonic() + warmup, process, deadline, trouble)
            first = stats.wait_for(stats.count() + 1, process, deadline, trouble)
            cpu_start, wall_start = common.tree_cpu_seconds(process.pid), time.monotonic()
            stats.wait_for(first + intervals, process, deadline, trouble)
            cpu_end, wall_end = common.tree_cpu_seconds(process.pid), time.monotonic()
            # The last block of the window is complete once the next dump starts.
            blocks = stats.blocks(stats.wait_for(first + intervals + 1, process, deadline, trouble))
    finally:
        _stop_epmd(_epmd_pids() - epmd_before)
    window = blocks[first : first + intervals]
    users = {_tsung_stat(block, "users") for block in window}
    if users != {connections}:
        raise RuntimeError(f"Tsung had {sorted(users)} users instead of {connections} in the window:\n{trouble()}")
    messages = sum(_tsung_stat(block, "request") for block in window)
    return _result(
        f"Tsung {_tsung_version(tsung)}",
        connections,
        messages,
        cpu_end - cpu_start,
        wall_end - wall_start,
        "echoes counted by Tsung's own 'request' statistic (a message with ack=parse is counted when its "
        f"reply arrives) over {intervals} one-second tsung.log dumps, CPU sampled as the first and last of "
        "them were written; Tsung's statistics cache flushes every 0.5 s, so the counted span trails the CPU "
        "span by up to 0.5 s; one Erlang scheduler (+S 1), busy-wait off (+sbwt none), pinned with taskset; "
        "CPU of the tsung script, beam.smp and its port programs",
    )


def artillery_pingpong(url: str, connections: int, seconds: float, warmup: float, workdir: Path) -> dict:
    """Artillery's ws engine: a loop of ``send`` steps, each with a ``match`` so that it waits for the echo."""
    artillery = ensure_artillery()
    taskset = common.require_command("taskset", "apt-get install util-linux")
    _host, port, _path = _loopback_target(url)
    deadline = _deadline(seconds, warmup)
    run_dir = Path(tempfile.mkdtemp(prefix="artillery-", dir=workdir))
    (run_dir / "loop.js").write_text(_ARTILLERY_PROCESSOR)
    offline = run_dir / "offline.js"
    offline.write_text(_ARTILLERY_OFFLINE)
    echo_id = json.loads(common.MESSAGE)["id"]
    ramp = max(1, math.ceil(connections / ARRIVALS_PER_SECOND))
    script = {
        "config": {
            "target": url,
            "processor": "./loop.js",
            "phases": [{"duration": ramp, "arrivalCount": connections}],
        },
        "scenarios": [
            {
                "engine": "ws",
                "flow": [
                    # Connections that started ping-pong would slow the arrival timer down that opens
                    # the rest, so every connection idles until the last one should be open.
                    {"think": ramp + 1},
                    {
                        # A plain send does not wait for anything (open loop); a send with a match
                        # waits for the next message and checks it before the loop goes on.
                        "loop": [
                            {"send": {"payload": common.MESSAGE.decode(), "match": {"json": "$.id", "value": echo_id}}}
                        ],
                        "whileTrue": "keepGoing",
                    },
                    {"function": "hangUp"},
                ],
            }
        ],
    }
    # JSON is YAML, which is what Artillery reads.
    (run_dir / "pingpong.yml").write_text(json.dumps(script, indent=2))
    report = run_dir / "report.json"
    env = {
        **os.environ,
        "ARTILLERY_DISABLE_TELEMETRY": "true",
        "NO_UPDATE_NOTIFIER": "1",
        "NODE_OPTIONS": f"{os.environ.get('NODE_OPTIONS', '')} --require {json.dumps(str(offline))}".strip(),
    }
    command = [taskset, "-c", str(common.CLIENT_CORE), artillery, "run", "--output", str(report), "pingpong.yml"]
    common.raise_open_files_limit()
    output = run_dir / "artillery.out"

    def trouble() -> str:
        return _tail(output)

    with _launched(command, run_dir, env, output) as process:
        _await_connections(process, port, connections, deadline, trouble)
        period = ARTILLERY_PERIOD_SECONDS
        start = math.ceil((time.time() + warmup) / period) * period
        end = start + max(1, math.ceil(seconds / period)) * period
        _sleep_until(time.monotonic() + start - time.time(), process, deadline, trouble)
        cpu_start, wall_start = common.tree_cpu_seconds(process.pid), time.monotonic()
        _sleep_until(time.monotonic() + end - time.time(), process, deadline, trouble)
        cpu_end, wall_end = common.tree_cpu_seconds(process.pid), time.monotonic()
        (run_dir / "stop").touch()
        while process.poll() is None:
            _check(process, deadline, trouble, exit_ok=True)
            time.sleep(POLL_SECONDS)
        if process.returncode != 0 or not report.exists():
            raise RuntimeError(f"Artillery exited with {process.returncode} without a report:\n{trouble()}")
    # Periods are named by their first millisecond, as a string.
    in_window = [
        item
        for item in json.loads(report.read_text())["intermediate"]
        if start * 1000 <= int(item["period"]) < end * 1000
    ]
    periods = {int(item["period"]) for item in in_window}
    if len(periods) != (end - start) // period:
        raise RuntimeError(f"Artillery reported {len(periods)} periods between {start} and {end}:\n{trouble()}")
    totals: dict[str, int] = {}
    for item in in_window:
        for name, value in item["counters"].items():
            totals[name] = totals.get(name, 0) + value
    errors = {name: value for name, value in totals.items() if name.startswith("errors.")}
    version = json.loads((Path(artillery).resolve().parent.parent / "package.json").read_text())["version"]
    return _result(
        f"Artillery {version} (ws engine)",
        connections,
        totals.get("websocket.messages_received", 0),
        cpu_end - cpu_start,
        wall_end - wall_start,
        "closed loop: each send step carries a match on the echo's id, which makes the ws engine wait for "
        "the next message before the loop goes on (a plain send is open loop, and the engine measures no "
        "per-message latency either way); echoes are the websocket.messages_received counter (sent: "
        f"{totals.get('websocket.messages_sent', 0)}) over {len(periods)} whole {period}-s metric periods of "
        "the --output report, CPU sampled at those wall-clock boundaries, so the window is rounded up to "
        "whole periods; every send also arms a 10 s response timer and parses the reply as JSON; the loop "
        "condition is a processor function reading a flag; CPU of node's main and worker threads"
        + (f"; errors in window: {errors}" if errors else ""),
    )


class _TsungLog:
    """tsung.log as Tsung writes it: one block of statistics per dump, each opened by a ``# stats: dump at`` line."""

    HEADER = "# stats: dump at "

    def __init__(self, log_root: Path):
        self.log_root = log_root

    def _text(self) -> str:
        # Tsung puts the log in a YYYYMMDD-HHMM folder of its own under the -l folder.
        found = sorted(self.log_root.glob("*/tsung.log"))
        return found[0].read_text() if found else ""

    def count(self) -> int:
        return self._text().count(self.HEADER)

    def blocks(self, count: int) -> list[str]:
        return self._text().split(self.HEADER)[1 : count + 1]

    def wait_for(self, count: int, process: subprocess.Popen, deadline: float, trouble: Callable[[], str]) -> int:
        """Wait until ``count`` dumps have started; returns ``count``."""
        while self.count() < count:
            _check(process, deadline, trouble)
            time.sleep(POLL_SECONDS)
        return count

    def tail(self) -> str:
        found = sorted(self.log_root.glob("*/*.log"))
        return "\n".join(f"{path.name}:\n{path.read_text()[-1500:]}" for path in found)


def _tsung_stat(block: str, name: str) -> int:
    """The per-interval count of a statistic in one dump: a missing line means nothing happened."""
    found = re.search(rf"^stats: {name} (\d+) ", block, re.MULTILINE)
    return int(found.group(1)) if found else 0


def _tsung_version(tsung: str) -> str:
    done = subprocess.run([tsung, "-v"], capture_output=True, text=True, timeout=30)
    found = re.search(r"version (\S+)", done.stdout)
    return found.group(1) if found else "(unknown version)"


def _loopback_target(url: str) -> tuple[str, int, str]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "ws" or parts.hostname is None or parts.port is None:
        raise ValueError(f"{url}: expected ws://127.0.0.1:PORT/")
    if not ipaddress.ip_address(parts.hostname).is_loopback:
        raise ValueError(f"{url}: peers only ever load a server on a loopback address")
    return parts.hostname, parts.port, parts.path or "/"


@contextlib.contextmanager
def _launched(command: list[str], cwd: Path, env: dict[str, str], output: Path) -> Iterator[subprocess.Popen]:
    """Run ``command`` in a process group of its own and end the group, and every descendant, on exit."""
    with output.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield process
        finally:
            _end(process)


def _deadline(seconds: float, warmup: float) -> float:
    """When to give up waiting on a peer: early enough to stop it, and epmd, within the run's bound."""
    return time.monotonic() + seconds + warmup + RUN_MARGIN - 2 * STOP_GRACE


def _end(process: subprocess.Popen, grace: float = STOP_GRACE) -> None:
    """SIGTERM to the group lets Erlang and node shut down cleanly; whatever outlives ``grace`` is killed."""
    members = [process.pid, *common.descendants(process.pid)]
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    limit = time.monotonic() + grace
    while time.monotonic() < limit and any(_alive(pid) for pid in members):
        process.poll()
        time.sleep(0.05)
    for pid in members:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    process.wait()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _check(process: subprocess.Popen, deadline: float, trouble: Callable[[], str], exit_ok: bool = False) -> None:
    """Give up when the peer has exited or the run's time is up."""
    if not exit_ok and process.poll() is not None:
        raise RuntimeError(f"{process.args[3]} exited early with {process.returncode}:\n{trouble()}")
    if time.monotonic() > deadline:
        raise TimeoutError(f"{process.args[3]} did not finish in time:\n{trouble()}")


def _sleep_until(moment: float, process: subprocess.Popen, deadline: float, trouble: Callable[[], str]) -> None:
    while (left := moment - time.monotonic()) > 0:
        _check(process, deadline, trouble)
        time.sleep(min(left, 0.1))


def _await_connections(
    process: subprocess.Popen, port: int, connections: int, deadline: float, trouble: Callable[[], str]
) -> None:
    """Wait until the peer's process tree holds ``connections`` established sockets to the server."""
    while (opened := _established(process.pid, port)) < connections:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {opened} of {connections} connections opened:\n{trouble()}")
        _check(process, deadline, trouble)
        time.sleep(0.1)


def _established(pid: int, port: int) -> int:
    inodes = set()
    for member in [pid, *common.descendants(pid)]:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, PermissionError):
            for entry in os.scandir(f"/proc/{member}/fd"):
                with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                    target = os.readlink(entry.path)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                # fields: slot, local address, remote address, state (01 is ESTABLISHED), ..., inode
                if fields[3] == "01" and int(fields[2].rsplit(":", 1)[1], 16) == port and fields[9] in inodes:
                    count += 1
    return count


def _epmd_pids() -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                if (entry / "comm").read_text().strip() == "epmd":
                    found.add(int(entry.name))
    return found


def _stop_epmd(started: set[int]) -> None:
    """Stop the Erlang port mapper that the run started; epmd refuses while any other node is registered."""
    epmd = shutil.which("epmd")
    if not started or epmd is None:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        subprocess.run([epmd, "-kill"], capture_output=True, timeout=STOP_GRACE)
    # The next run must not take a port mapper that is still exiting for one it did not start.
    limit = time.monotonic() + STOP_GRACE
    while time.monotonic() < limit and any(_alive(pid) for pid in started):
        time.sleep(0.05)


def _tail(path: Path, size: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except FileNotFoundError:
        return ""


def _result(client: str, connections: int, messages: int, cpu: float, wall: float, note: str) -> dict:
    if messages <= 0 or cpu <= 0:
        raise RuntimeError(f"{client}: {messages} echoes for {cpu:.2f} CPU-s: nothing was measured ({note})")
    return {
        "client": client,
        "connections": connections,
        "messages": messages,
        "cpu_seconds": round(cpu, 2),
        "wall_seconds": round(wall, 3),
        "per_core": round(messages / cpu, 1),
        "note": note,
    }


PEERS = {"tsung": tsung_pingpong, "artillery": artillery_pingpong}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=8.0, help="length of the measured window")
    parser.add_argument("--warmup", type=float, default=3.0, help="wait after all connections are open")
    parser.add_argument("--peer", choices=sorted(PEERS), action="append", help="default: every peer")
    args = parser.parse_args()
    # A terminated bench still ends the peers and the echo server it started.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    failed = False
    with tempfile.TemporaryDirectory(prefix="peers-") as tmp:
        server, url = common.start_echo_server(Path(tmp))
        try:
            for name in args.peer or PEERS:
                try:
                    result = PEERS[name](url, args.connections, args.seconds, args.warmup, Path(tmp))
                except common.Missing as missing:
                    print(f"{name}: {missing}", file=sys.stderr)
                    failed = True
                    continue
                print(json.dumps(result), flush=True)
        finally:
            common.stop(server)
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
