"""Fixtures that run the reference backend as a real process on 127.0.0.1 and talk to it.

The client is websockets' threaded sync client, which needs no event loop and keeps working
when another test module has let gevent monkey-patch the interpreter.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import ClientConnection, connect

# One knob stretches every wait in these tests for slow CI machines.
TIMEOUT = 5.0 * float(os.environ.get("LOADGEN_TEST_TIMEOUT_SCALE", "1"))

_METRICS_URL = re.compile(r"metrics on (http://127\.0\.0\.1:\d+/metrics)")
# An http_proxy in the environment must not divert scrapes of a loopback server.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class RunningServer:
    """A ``python -m loadgen.server`` process listening on loopback."""

    proc: subprocess.Popen[bytes]
    url: str
    metrics_url: str
    port_file: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample at ``/metrics``, keyed by (name, sorted labels)."""
        with _NO_PROXY.open(self.metrics_url, timeout=TIMEOUT) as response:
            text = response.read().decode()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics()[(name, tuple(sorted(labels.items())))]

    def injected(self, kind: str) -> int:
        return int(self.sample("refserver_injected_faults_total", kind=kind))

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """Signal the process and return its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            return self.proc.wait(timeout=3 * TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


def _start(directory: Path, flags: tuple[str, ...]) -> RunningServer:
    port_file = directory / "port"
    log_path = directory / "server.log"
    cmd = [
        sys.executable,
        "-m",
        "loadgen.server",
        "--port",
        "0",
        "--port-file",
        str(port_file),
        "--metrics-port",
        "0",
        *flags,
    ]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log_file)
    deadline = time.monotonic() + 3 * TIMEOUT
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            pytest.fail(f"server did not start: {log_path.read_text()}")
        time.sleep(0.02)
    port = int(port_file.read_text())
    # The listening line is logged before the port file is written.
    match = _METRICS_URL.search(log_path.read_text())
    assert match, log_path.read_text()
    return RunningServer(proc, f"ws://127.0.0.1:{port}/", match.group(1), port_file, log_path)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A backend with default options, shared by tests that use unique names."""
    running = _start(tmp_path_factory.mktemp("server"), ())
    yield running
    running.stop()


@pytest.fixture
def spawn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Start a backend with the given flags; every one started is stopped after the test."""
    started: list[RunningServer] = []

    def start(*flags: str) -> RunningServer:
        running = _start(tmp_path_factory.mktemp("server"), flags)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


@dataclass
class Client:
    """One protocol connection; pushes that arrive while waiting for a reply are kept in order."""

    ws: ClientConnection
    pushes: list[dict[str, Any]] = field(default_factory=list)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def send(self, frame: dict[str, Any] | str | bytes) -> None:
        if isinstance(frame, dict):
            frame = orjson.dumps(frame).decode()
        self.ws.send(frame)

    def frame(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        return orjson.loads(self.ws.recv(timeout=timeout))

    def reply(self, rid: int | None) -> dict[str, Any]:
        """The ack or error answering ``rid``, keeping pushes read on the way."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            frame = self.frame(timeout=max(0.0, deadline - time.monotonic()))
            if frame["ev"] in ("ack", "error"):
                assert frame["re"] == rid, frame
                return frame
            self.pushes.append(frame)

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        rid = next(self._ids)
        self.send({"op": op, "id": rid, **fields})
        return self.reply(rid)

    def ok(self, op: str, **fields: Any) -> dict[str, Any]:
        reply = self.request(op, **fields)
        assert reply["ev"] == "ack", reply
        return reply

    def error(self, op: str, **fields: Any) -> str:
        reply = self.request(op, **fields)
        assert reply["ev"] == "error", reply
        assert isinstance(reply["message"], str) and reply["message"]
        return reply["code"]

    def login(self, user: str, token: str = "token") -> dict[str, Any]:
        return self.ok("login", user=user, token=token)

    def enter(self, user: str, room: str | None = None, **join: Any) -> Client:
        """Log in as ``user`` and join ``room`` when one is given; this client, to chain on."""
        self.login(user)
        if room is not None:
            self.ok("join", room=room, **join)
        return self

    def start_pk(self, room: str, rival: Client, target: str, ts: float, **invite: Any) -> str:
        """Invite ``target`` from ``room`` (this client hosting it) and have its host ``rival`` accept; the PK's id."""
        pk = self.ok("pk.invite", room=room, target=target, ts=ts, **invite)["pk"]
        rival.ok("pk.accept", room=target, pk=pk, ts=ts)
        return pk

    def post(self, room: str, body: str = "hello", cseq: int = 0) -> dict[str, Any]:
        return self.ok("send", room=room, cseq=cseq, ts=time.time(), body=body)

    def fence(self) -> list[dict[str, Any]]:
        """Every push queued for this connection so far, then forgotten.

        The server writes a connection's frames in order and undelayed pushes are queued
        when the sender's request is handled, so a reply to a later request comes after them.
        """
        self.ok("time", t0=time.time())
        pushes, self.pushes = self.pushes, []
        return pushes

    def next_push(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        if self.pushes:
            return self.pushes.pop(0)
        return self.frame(timeout)


@pytest.fixture
def connect_to() -> Iterator[Any]:
    """Open clients to a server URL; all are closed after the test."""
    with contextlib.ExitStack() as stack:

        def open_client(url: str) -> Client:
            # proxy=None: websockets would otherwise route even loopback through an env proxy.
            ws = stack.enter_context(connect(url, proxy=None, open_timeout=TIMEOUT, close_timeout=TIMEOUT))
            return Client(ws)

        yield open_client


@pytest.fixture
def client(server: RunningServer, connect_to: Any) -> Any:
    """Open a client to the shared default server; call it again for more."""
    return lambda: connect_to(server.url)


@pytest.fixture
def unique() -> Any:
    """Make user and room names that no other test on a shared server uses."""
    return lambda prefix: f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def timeout() -> float:
    return TIMEOUT
