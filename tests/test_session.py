"""The Session API over a real reference backend: operations, windows and roaming, without Locust."""

import gevent
import pytest

from loadgen.accounting import Accounting
from loadgen.drivers.base import INBOX, Outgoing, ReadResult
from loadgen.drivers.reference import ReferenceDriver
from loadgen.session import OperationFailed, Session
from loadgen.transport import ConnectError, ConnectionClosed


@pytest.fixture
def make_session():
    sessions = []
    reports = []

    def make(url, accounting, **kwargs):
        session = Session(
            url,
            ReferenceDriver(),
            accounting.receiver(),
            reporter=lambda name, seconds, error: reports.append((name, error)),
            request_timeout=5,
            **kwargs,
        )
        session.connect()
        sessions.append(session)
        return session

    make.reports = reports
    yield make
    for session in sessions:
        session.close()


def wait_until(condition, seconds=5.0):
    deadline = gevent.get_hub().loop.now() + seconds
    while not condition() and gevent.get_hub().loop.now() < deadline:
        gevent.sleep(0.01)
    return condition()


def test_room_message_reaches_members_and_is_accounted(backend, make_session):
    """A room message is acknowledged to its sender and delivered once to the other member."""
    server = backend()
    accounting = Accounting()
    alice, bob = make_session(server.url, accounting), make_session(server.url, accounting)
    alice.login("alice", "t")
    bob.login("bob", "t")
    assert alice.join("r1").head == 0
    bob.join("r1")
    ack = alice.send("r1", "hello", accounting.now())
    assert ack.seq == 1
    assert wait_until(lambda: accounting.counts.delivered == 1)
    assert accounting.latency.get_total_count() == 1
    assert ("room.join", None) in make_session.reports and ("msg.send", None) in make_session.reports


def test_refused_operation_raises_with_the_backend_code(backend, make_session):
    """An operation the backend refuses raises OperationFailed carrying its error code, and is reported."""
    server = backend()
    session = make_session(server.url, Accounting())
    session.login("carol", "t")
    with pytest.raises(OperationFailed) as caught:
        session.send("not-joined", "x", 0.0)
    assert caught.value.code == "not_member" and caught.value.operation == "msg.send"
    assert make_session.reports[-1][0] == "msg.send" and make_session.reports[-1][1] is not None


def test_logout_head_and_history_recover_a_missed_message(backend, make_session):
    """A message missed while logged in is exposed by the logout head and recovered from history on return."""
    server = backend("--drop", "1", "--seed", "1")
    accounting = Accounting(delivery_timeout=0.2)
    sender, reader = make_session(server.url, accounting), make_session(server.url, accounting)
    sender.login("s", "t")
    reader.login("r", "t")
    sender.join("r1")
    reader.join("r1")
    sender.send("r1", "you will not see this live", accounting.now())
    reader.logout()
    assert reader.receiver.gaps() == {"r1": 1}
    reader.close()
    again = Session(server.url, ReferenceDriver(), reader.receiver, reporter=lambda *a: None)
    again.connect()
    try:
        again.login("r", "t")
        again.join("r1")
        assert again.recover() == 1
    finally:
        again.close()
    assert (accounting.counts.lost, accounting.counts.recovered) == (0, 1)


def test_direct_message_uses_the_inbox_stream(backend, make_session):
    """A direct message is delivered on the recipient's inbox stream with its inbox sequence."""
    server = backend()
    accounting = Accounting()
    seen = []
    a = make_session(server.url, accounting)
    b = make_session(server.url, accounting, on_delivery=lambda d, outcome: seen.append((d.stream, d.seq)))
    a.login("a", "t")
    b.login("b", "t")
    assert a.direct("b", "hi", accounting.now()).seq == 1
    assert wait_until(lambda: seen == [(INBOX, 1)])


def test_clock_sync_against_the_same_machine_is_near_zero(backend, make_session):
    """Clock sync with a backend on this machine finds an offset within its own uncertainty bound."""
    server = backend()
    session = make_session(server.url, Accounting())
    offset, uncertainty = session.sync_clock(rounds=5)
    assert abs(offset) <= uncertainty + 0.002


def test_unreachable_backend_raises_connect_error_and_reports_it():
    """Connecting to a port nobody listens on raises ConnectError and reports a failed ws.connect."""
    reports = []
    session = Session(
        "ws://127.0.0.1:1", ReferenceDriver(), Accounting().receiver(), reporter=lambda *a: reports.append(a)
    )
    with pytest.raises(ConnectError):
        session.connect()
    assert reports[0][0] == "ws.connect" and reports[0][2] is not None


def test_dropped_connection_fails_pending_calls_and_is_noticed(backend, make_session):
    """When the backend goes away, the session reports the drop and later calls fail fast."""
    server = backend()
    dropped = []
    session = make_session(server.url, Accounting(), on_dropped=lambda: dropped.append(True))
    session.login("d", "t")
    server.process.kill()
    assert wait_until(lambda: not session.alive)
    assert dropped == [True]
    with pytest.raises(ConnectionClosed):
        session.join("r1")


class UnaskedDriver(ReferenceDriver):
    """Reads are fire-and-forget, and a clock request goes out unasked after every frame and every second."""

    def __init__(self) -> None:
        super().__init__()
        self.unasked: list[bytes] = []

    def read(self, room, seq):
        outgoing = super().read(room, seq)
        return Outgoing(outgoing.request_id, outgoing.payload, done=ReadResult(room, seq))

    def pending(self) -> list[bytes]:
        frames = [self.clock(0.0).payload]
        self.unasked += frames
        return frames


def test_a_done_operation_returns_at_once_and_unasked_frames_are_sent(backend):
    """An Outgoing with ``done`` is not waited for; what ``pending()`` returns is sent, and replies to it
    (no one waits for them) are dropped quietly."""
    server = backend()
    driver = UnaskedDriver()
    reports = []
    session = Session(server.url, driver, Accounting().receiver(), request_timeout=5,
                      reporter=lambda name, seconds, error: reports.append((name, error)))  # fmt: skip
    session.connect()
    try:
        session.login("alice", "t")
        assert session.read("r1", 7) == ReadResult("r1", 7)
        assert wait_until(lambda: len(driver.unasked) >= 3, seconds=4)
        assert session.alive and ("msg.read", None) in reports
    finally:
        session.close()
