"""Test support: a real reference backend process and real `locust` runs, all on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: one factor scales every wait in the suite, for slow CI machines
SCALE = float(os.environ.get("LOADGEN_TEST_TIMEOUT_SCALE", "1"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports_in_a_row(count: int) -> int:
    """The first of ``count`` consecutive free ports: a distributed run's metrics take base, base + 1..."""
    for _ in range(50):
        base = free_port()
        sockets = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free ports on 127.0.0.1")


class Backend:
    """A `loadgen serve` process with its metrics endpoint."""

    def __init__(self, tmp: Path, *flags: str) -> None:
        self.metrics_port = free_port()
        port_file = tmp / f"port-{self.metrics_port}"
        self.log_path = tmp / f"backend-{self.metrics_port}.log"
        command = [
            sys.executable, "-m", "loadgen.server", "--port", "0", "--port-file", str(port_file),
            "--metrics-port", str(self.metrics_port), *flags,
        ]  # fmt: skip
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 20 * SCALE
        while not port_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"backend did not start: {self.log_path.read_text()}")
            time.sleep(0.05)
        self.port = int(port_file.read_text())
        self.url = f"ws://127.0.0.1:{self.port}"

    def metric(self, name: str, **labels: str) -> float:
        """One sample from the backend's /metrics (0 when absent)."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read().decode()
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            match = re.match(r"^([a-zA-Z_:]+)(?:\{(.*)\})? (\S+)$", line)
            if match and match.group(1) == name:
                got = ",".join(sorted(p for p in (match.group(2) or "").split(",") if p))
                if got == wanted:
                    return float(match.group(3))
        return 0.0

    def injected(self, kind: str) -> int:
        return int(self.metric("refserver_injected_faults_total", kind=kind))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20 * SCALE)


class LocustRun:
    def __init__(self, returncode: int, output: str, summary: dict | None, results: Path) -> None:
        self.returncode = returncode
        self.output = output
        self.summary = summary
        self.results = results

    def __repr__(self) -> str:
        return f"LocustRun(rc={self.returncode}, output tail:\n{self.output[-3000:]})"


def run_locust(tmp: Path, locustfile: str, *args: str, timeout: float = 120) -> LocustRun:
    """Run the real `locust` command headless and read back its summary."""
    summary = tmp / f"summary-{time.monotonic_ns()}.json"
    command = [
        sys.executable, "-m", "locust", "-f", str(ROOT / "locustfiles" / locustfile), "--headless",
        "--summary", str(summary), "--results", str(tmp / "results"), *args,
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=tmp, capture_output=True, text=True, timeout=timeout * SCALE, stdin=subprocess.DEVNULL
    )
    data = json.loads(summary.read_text()) if summary.exists() else None
    return LocustRun(done.returncode, done.stdout + done.stderr, data, tmp / "results")


#: libfaketime from Debian's faketime package: a process whose wall clock runs ahead, as on a
#: machine with a bad clock; monotonic time (gevent's timers) is left alone
LIBFAKETIME = sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))


def skewed_clock(seconds: float) -> dict[str, str]:
    """Environment that shifts a process's wall clock by ``seconds``."""
    assert LIBFAKETIME, "Debian's faketime is missing: run scripts/test-deps"
    return {
        "LD_PRELOAD": str(LIBFAKETIME[0]),
        "FAKETIME": f"{seconds:+g}",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "FAKETIME_NO_CACHE": "1",
    }


class Cluster:
    """A headless Locust master and worker processes started apart, as on separate machines."""

    def __init__(
        self,
        tmp: Path,
        locustfile: str,
        *master_args: str,
        workers: list[dict[str, str]],
        worker_args: tuple[str, ...] = ("--metrics-port", "0"),
    ) -> None:
        self.tmp = tmp
        self.summary = tmp / "cluster-summary.json"
        self.results = tmp / "cluster-results"
        port = str(free_port())
        path = str(ROOT / "locustfiles" / locustfile)
        master = [sys.executable, "-m", "locust", "-f", path, "--master", "--headless", "--master-bind-port", port,
                  "--expect-workers", str(len(workers)), "--summary", str(self.summary),
                  "--results", str(self.results), *master_args]  # fmt: skip
        self.master = self._start(master, "master", {})
        worker = [sys.executable, "-m", "locust", "-f", path, "--worker", "--master-port", port, *worker_args]
        self.workers = [self._start(worker, f"worker{n}", env) for n, env in enumerate(workers)]

    def _start(self, command: list[str], name: str, env: dict[str, str]) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "wb")
        process = subprocess.Popen(
            command, cwd=self.tmp, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env}
        )
        log.close()
        return process

    def log(self, name: str = "master") -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def wait(self, timeout: float = 120) -> dict:
        """Wait for the master to end the run; the summary it wrote."""
        try:
            self.master.wait(timeout=timeout * SCALE)
            for worker in self.workers:
                worker.wait(timeout=30 * SCALE)
        finally:
            self.stop()
        assert self.summary.exists(), self.log()[-3000:]
        return json.loads(self.summary.read_text())

    def stop(self) -> None:
        for process in (self.master, *self.workers):
            if process.poll() is None:
                process.kill()
                process.wait()


def profile_error(tmp_path: Path, text: str) -> str:
    """The message load_profile gives for a profile file holding ``text``; it must start with the path."""
    from loadgen.profile import ProfileError, load_profile

    path = tmp_path / "bad.yaml"
    path.write_text(text)
    try:
        load_profile(path)
    except ProfileError as exc:
        message = str(exc)
    else:
        raise AssertionError(f"{text!r} loaded as a profile")
    assert message.startswith(str(path)), message
    return message
