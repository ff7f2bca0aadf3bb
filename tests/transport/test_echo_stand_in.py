"""The echo operation: one timed round trip, answered alike by the reference backend and a bare echo server.

The bench (bench/) measures our client against others on a server that only echoes frames;
this is what makes that server a fair stand-in for the backend.
"""

import time

import pytest

from loadgen.accounting import Accounting
from loadgen.drivers.reference import ReferenceDriver
from loadgen.session import OperationTimeout, Session


def test_echo_round_trips_against_the_backend_and_a_bare_echo_server(backend, peer):
    reports = []
    for url in (backend().url, peer.url("/echo")):
        reports.clear()
        session = Session(
            url,
            ReferenceDriver(),
            Accounting().receiver(),
            reporter=lambda name, seconds, error: reports.append((name, error)),
            request_timeout=5,
        )
        session.connect()
        try:
            for _ in range(3):
                session.echo("ping", time.time())
        finally:
            session.close()
        assert reports == [("ws.connect", None)] + [("session.echo", None)] * 3, url


def test_a_request_left_unanswered_fails_as_an_operation_timeout(peer):
    """A bare echo server sends a clock request back unanswered: the caller gets OperationTimeout, reported."""
    reports = []
    session = Session(
        peer.url("/echo"),
        ReferenceDriver(),
        Accounting().receiver(),
        reporter=lambda name, seconds, error: reports.append((name, type(error))),
        request_timeout=0.3,
    )
    session.connect()
    try:
        with pytest.raises(OperationTimeout):
            session.sync_clock(rounds=1)
    finally:
        session.close()
    assert reports[-1] == ("clock.sync", OperationTimeout)
