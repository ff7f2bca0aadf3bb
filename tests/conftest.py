"""Fixtures shared by the suite; the machinery behind them is in tests/support.py."""

from __future__ import annotations

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


@pytest.fixture(scope="session")
def janus(tmp_path_factory):
    """A Janus of its own (Debian's package, scripts/servers/janus.sh) on a free loopback port; its --host URL."""
    port = free_port()
    env = {**os.environ, "JANUS_PORT": str(port), "JANUS_RUN": str(tmp_path_factory.mktemp("janus"))}

    def script(command: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(ROOT / "scripts" / "servers" / "janus.sh"), command], env=env,
                              capture_output=True, text=True, timeout=600 * SCALE)  # fmt: skip

    started = script("start")
    assert started.returncode == 0, started.stdout + started.stderr
    yield f"janus+ws://127.0.0.1:{port}"
    script("stop")


@pytest.fixture(scope="session")
def prosody(tmp_path_factory):
    """A Prosody of its own (Debian's package, scripts/servers/prosody.sh) on a free loopback port; its --host URL."""
    port = free_port()
    env = {**os.environ, "PROSODY_RUN_DIR": str(tmp_path_factory.mktemp("prosody")), "PROSODY_HTTP_PORT": str(port)}

    def script(command: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(ROOT / "scripts" / "servers" / "prosody.sh"), command], env=env,
                              capture_output=True, text=True, timeout=600 * SCALE)  # fmt: skip

    started = script("start")
    assert started.returncode == 0, started.stdout + started.stderr
    yield f"xmpp+ws://127.0.0.1:{port}/xmpp-websocket"
    script("stop")
