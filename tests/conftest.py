"""Fixtures shared by the suite; the machinery behind them is in tests/support.py."""

from __future__ import annotations

import contextlib
import os
import subprocess

import pytest

from tests.support import ROOT, SCALE, Backend, LocustRun, free_port, run_locust


@pytest.fixture
def backend(tmp_path):
    """Start reference backends with the given flags; all are stopped after the test."""
    started: list[Backend] = []

    def start(*flags: str) -> Backend:
        server = Backend(tmp_path, *flags)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def locust_run(tmp_path):
    def run(locustfile: str, *args: str, timeout: float = 120) -> LocustRun:
        return run_locust(tmp_path, locustfile, *args, timeout=timeout)

    return run


@pytest.fixture
def write_profile(tmp_path):
    def write(text: str, name: str = "profile.yaml") -> str:
        path = tmp_path / name
        path.write_text(text)
        return str(path)

    return write


@contextlib.contextmanager
def own_server(name: str, env: dict[str, str]):
    """scripts/servers/<name>.sh started with ``env`` (its port and scratch folder), stopped after."""

    def script(command: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(ROOT / "scripts" / "servers" / f"{name}.sh"), command], env={**os.environ, **env},
                              capture_output=True, text=True, timeout=600 * SCALE)  # fmt: skip

    started = script("start")
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield
    finally:
        script("stop")


@pytest.fixture(scope="session")
def janus(tmp_path_factory):
    """A Janus of its own (Debian's package) on a free loopback port; its --host URL."""
    port = free_port()
    with own_server("janus", {"JANUS_PORT": str(port), "JANUS_RUN": str(tmp_path_factory.mktemp("janus"))}):
        yield f"janus+ws://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def prosody(tmp_path_factory):
    """A Prosody of its own (Debian's package) on a free loopback port; its --host URL."""
    port = free_port()
    scratch = str(tmp_path_factory.mktemp("prosody"))
    with own_server("prosody", {"PROSODY_HTTP_PORT": str(port), "PROSODY_RUN_DIR": scratch}):
        yield f"xmpp+ws://127.0.0.1:{port}/xmpp-websocket"
