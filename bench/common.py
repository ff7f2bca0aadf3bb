"""What every bench part shares: the echo server, the message, core pinning and CPU readings.

The bench runs the server on one core and the client under test on the other, so a
figure is "per client core" and a slow server shows up as idle client time, not as
client cost. Every figure divides work done by the CPU-seconds the client process
spent doing it, read from /proc, so noise from the rest of the machine cancels out of
the ratios that compare clients measured in the same run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
SERVER_CORE = 0
CLIENT_CORE = 1 if (os.cpu_count() or 1) > 1 else 0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

#: ~200 bytes of JSON, written so that its echo is its own acknowledgement in the reference
#: protocol (``ev: ack`` and ``re`` equal to ``id``): a bare echo server answers our client's
#: request exactly as the reference backend's ``echo`` operation does.
MESSAGE = json.dumps(
    {"op": "echo", "id": 1, "ev": "ack", "re": 1, "ts": 1764000000.123456, "body": "x" * 128}, separators=(",", ":")
).encode()


class Missing(RuntimeError):
    """Something a part needs is not installed; the message says how to get it."""


def require_modules(*names: str) -> None:
    absent = [name for name in names if importlib.util.find_spec(name) is None]
    if absent:
        raise Missing(f"Python package(s) {', '.join(absent)} missing: pip install -e '.[bench]'")


def require_command(name: str, install: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise Missing(f"{name} not found: {install}")
    return path


def pin(pid: int, core: int) -> None:
    """Keep a process (and the threads it starts later) on one core."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(pid, {core})


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process and all its threads so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and its living descendants (a Node or Erlang peer runs child processes)."""
    total = 0.0
    for candidate in [pid, *descendants(pid)]:
        try:
            total += cpu_seconds(candidate)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def raise_open_files_limit(wanted: int = 1 << 17) -> None:
    """Tens of thousands of sockets need more than the usual 1,024 descriptors."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, target), max(hard, target)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(target, hard)), hard))


def start_echo_server(workdir: Path, core: int = SERVER_CORE) -> tuple[subprocess.Popen, str]:
    """A picows echo server on uvloop, pinned to ``core``: fast enough that no client waits on it."""
    require_modules("picows", "uvloop")
    port_file = workdir / "echo-port"
    port_file.unlink(missing_ok=True)
    process = subprocess.Popen([sys.executable, str(BENCH / "echo_server.py"), str(port_file)], cwd=ROOT)
    pin(process.pid, core)
    return process, f"ws://127.0.0.1:{wait_for_port(process, port_file)}/"


def start_backend(workdir: Path, name: str = "backend", *flags: str) -> tuple[subprocess.Popen, str]:
    """The reference backend with ``flags``, pinned to the server core, its log in ``workdir/name.log``."""
    port_file = workdir / f"{name}-port"
    port_file.unlink(missing_ok=True)
    command = [sys.executable, "-m", "loadgen.server", "--port", "0", "--port-file", str(port_file),
               "--log-level", "WARNING", *flags]  # fmt: skip
    with open(workdir / f"{name}.log", "ab") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
    try:
        pin(process.pid, SERVER_CORE)
        port = wait_for_port(process, port_file)
    except BaseException:
        stop(process)
        raise
    return process, f"ws://127.0.0.1:{port}/"


def wait_for_port(process: subprocess.Popen, port_file: Path, seconds: float = 30) -> int:
    deadline = time.monotonic() + seconds
    while not port_file.exists() or not port_file.read_text().strip():
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode} before listening")
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"{process.args} did not listen within {seconds:g} s")
        time.sleep(0.05)
    return int(port_file.read_text())


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_pinned(command: list[str], log_path: Path, timeout: float, what: str) -> dict:
    """Run a client process pinned to the client core; its last line of output is its JSON result."""
    with open(log_path, "wb") as stderr:
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr)
        try:
            pin(process.pid, CLIENT_CORE)
            out, _ = process.communicate(timeout=timeout)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    if process.returncode != 0:
        raise RuntimeError(f"{what} failed with {process.returncode}:\n{log_path.read_text()[-3000:]}")
    return json.loads(out.decode().strip().splitlines()[-1])


def on_echo_server(run: Callable[[str, Path], None]) -> int:
    """A part run alone: ``run(url, workdir)`` against a fresh echo server, stopped whatever happens."""
    try:
        require_modules("picows", "uvloop")
    except Missing as exc:
        raise SystemExit(str(exc)) from None
    raise_open_files_limit()
    with tempfile.TemporaryDirectory() as tmp:
        server, url = start_echo_server(Path(tmp))
        try:
            run(url, Path(tmp))
        finally:
            stop(server)
    return 0


def ignore_report(name: str, seconds: float, error: BaseException | None) -> None:
    """A Session reporter for clients that count elsewhere."""


def ignore_message(payload: bytes, binary: bool) -> None:
    """An on_message for connections whose messages do not matter."""
