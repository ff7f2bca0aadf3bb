"""Fixtures shared by the suite; the machinery behind them is in tests/support.py."""

from __future__ import annotations

import pytest

from tests.support import Backend, LocustRun, run_locust


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
