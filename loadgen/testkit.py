"""A test kit for drivers: the checks every driver must pass against its real backend.

Subclass :class:`DriverContract` in a test module of your own, with a fixture ``endpoint``
that yields the ``--host`` URL of a running backend (loopback), and set ``driver``::

    from loadgen.testkit import DriverContract
    from mybackend.driver import MyDriver

    class TestMyDriver(DriverContract):
        driver = MyDriver

        @pytest.fixture
        def endpoint(self, my_backend):
            return my_backend.url

pytest then runs every check of the contract that the driver's ``supports`` covers; a check
of an operation the driver does not declare is not generated at all, so nothing is skipped
and nothing is claimed that the driver does not do. The checks go through
:class:`~loadgen.session.Session`, as the scenarios do, so what passes here runs under Locust.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import gevent
import pytest

from loadgen.accounting import Accounting
from loadgen.drivers.base import Driver, Malformed, SeatSnapshot, Unsupported, parent_stream
from loadgen.session import Session

#: check name -> the operations it needs
CHECKS: dict[str, tuple[str, ...]] = {
    "login_and_logout": ("session.login", "session.logout"),
    "room_message_reaches_the_other_member_once": ("room.join", "msg.send"),
    "direct_message_reaches_its_recipient_once": ("dm.send",),
    "history_returns_what_was_sent": ("room.join", "msg.send", "history.fetch"),
    "seat_taken_is_seen_by_the_other_member": ("room.join", "seat.take", "seat.leave"),
    "leaving_a_room_is_answered": ("room.join", "room.leave"),
    "garbage_frames_decode_as_malformed": (),
    "undeclared_operations_are_unsupported": (),
}


def supported(driver: type[Driver], needs: tuple[str, ...]) -> bool:
    return driver.supports is None or all(op in driver.supports for op in needs)


def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        gevent.sleep(0.02)
    return condition()


class DriverContract:
    """What every driver must do against its backend; subclass it with ``driver`` and an ``endpoint`` fixture."""

    driver: type[Driver]
    #: seconds an operation may take on a loaded test machine
    timeout = 10.0

    def pytest_generate_tests(self, metafunc) -> None:
        """Only the checks the driver's ``supports`` covers exist for it (pytest asks the class)."""
        if "contract_check" in metafunc.fixturenames:
            names = [name for name, needs in CHECKS.items() if supported(self.driver, needs)]
            if self.driver.supports is None:
                # a driver that declares everything has nothing undeclared to refuse
                names.remove("undeclared_operations_are_unsupported")
            metafunc.parametrize("contract_check", names)

    @pytest.fixture
    def connect(self, endpoint) -> Iterator[Callable[[str, Accounting], Session]]:
        """Sessions of fresh users on the endpoint, closed after the check."""
        factory, url = self.driver.configure(endpoint)
        opened: list[Session] = []

        def open_session(user: str, accounting: Accounting) -> Session:
            session = Session(url, factory(), accounting.receiver(), reporter=lambda *_: None,
                              request_timeout=self.timeout, ping_interval=None)  # fmt: skip
            session.connect()
            opened.append(session)
            session.login(user, "loadgen")
            return session

        yield open_session
        for session in opened:
            session.close()

    def test_contract(self, contract_check: str, connect, request) -> None:
        getattr(self, f"check_{contract_check}")(connect, request.node.name)

    @staticmethod
    def user(test_name: str, who: str) -> str:
        # fresh ids per check: a backend that keeps accounts must not see a name twice
        return f"kit{abs(hash((test_name, time.time()))) % 10**8}{who}"

    def room(self, test_name: str) -> str:
        return f"kit-{abs(hash((test_name, time.time()))) % 10**8}"

    def join(self, session: Session, room: str) -> None:
        if supported(self.driver, ("seat.take",)):
            session.join_room(room, seats=4)
        else:
            session.join(room)

    # -- the checks -------------------------------------------------------------------

    def check_login_and_logout(self, connect, name: str) -> None:
        session = connect(self.user(name, "a"), Accounting())
        session.logout()
        assert session.logged_out

    def check_room_message_reaches_the_other_member_once(self, connect, name: str) -> None:
        accounting = Accounting()
        room = self.room(name)
        alice, bob = connect(self.user(name, "a"), accounting), connect(self.user(name, "b"), accounting)
        self.join(alice, room)
        self.join(bob, room)
        for _ in range(3):
            alice.send(room, "hello", accounting.now())
        assert wait_for(lambda: accounting.counts.delivered == 3, self.timeout), accounting.counts
        gevent.sleep(0.3)
        counts = accounting.counts
        assert (counts.delivered, counts.duplicated, counts.out_of_order) == (3, 0, 0)
        assert accounting.latency.get_total_count() == 3

    def check_direct_message_reaches_its_recipient_once(self, connect, name: str) -> None:
        accounting = Accounting()
        alice, bob = connect(self.user(name, "a"), accounting), connect(self.user(name, "b"), accounting)
        alice.direct(bob.user, "psst", accounting.now())
        assert wait_for(lambda: accounting.counts.delivered == 1, self.timeout), accounting.counts
        gevent.sleep(0.3)
        assert accounting.counts.delivered == 1 and accounting.counts.duplicated == 0

    def check_history_returns_what_was_sent(self, connect, name: str) -> None:
        accounting = Accounting()
        room = self.room(name)
        alice = connect(self.user(name, "a"), accounting)
        self.join(alice, room)
        for _ in range(3):
            alice.send(room, "kept", accounting.now())
        deadline = time.monotonic() + self.timeout
        while True:
            page = alice.history(room, 0, 50)
            mine = [d for d in page.deliveries if parent_stream(d.stream) == room and d.sender == alice.user]
            if len(mine) >= 3 or time.monotonic() > deadline:
                break
            gevent.sleep(0.2)
        assert sorted(d.cseq for d in mine)[-3:] == [1, 2, 3]

    def check_seat_taken_is_seen_by_the_other_member(self, connect, name: str) -> None:
        accounting = Accounting()
        room = self.room(name)
        seen: list[SeatSnapshot] = []
        alice = connect(self.user(name, "a"), accounting)
        bob = connect(self.user(name, "b"), accounting)
        bob.on_event = lambda event: seen.append(event) if isinstance(event, SeatSnapshot) else None
        self.join(alice, room)
        self.join(bob, room)
        alice.room_op("seat.take", room, accounting.now(), seat=0)

        def alice_seated() -> bool:
            return any(seat.user == alice.user for snapshot in seen for seat in snapshot.seats)

        assert wait_for(alice_seated, self.timeout), seen
        alice.room_op("seat.leave", room, accounting.now())
        assert wait_for(lambda: bool(seen) and all(s.user != alice.user for s in seen[-1].seats), self.timeout)

    def check_leaving_a_room_is_answered(self, connect, name: str) -> None:
        session = connect(self.user(name, "a"), Accounting())
        room = self.room(name)
        self.join(session, room)
        assert session.leave(room).room == room

    def check_garbage_frames_decode_as_malformed(self, connect, name: str) -> None:
        del connect, name
        factory, _url = self.driver.configure("ws://127.0.0.1:1")
        driver = factory()
        for frame in (b"\xff\xfe not text", b"{", b"<unclosed", b""):
            events = driver.receive(frame, False)
            assert all(isinstance(event, Malformed) for event in events), events

    def check_undeclared_operations_are_unsupported(self, connect, name: str) -> None:
        del connect, name
        supports = self.driver.supports
        factory, _url = self.driver.configure("ws://127.0.0.1:1")
        driver = factory()
        undeclared = {
            "gift": lambda: driver.room_op("gift", "r", 0.0, gift="rose", count=1, value=1),
            "call.invite": lambda: driver.call_op("call.invite", 0.0, to="u"),
            "dm.send": lambda: driver.direct("u", 1, 0.0, "x"),
        }
        for op, attempt in undeclared.items():
            if op not in supports:
                with pytest.raises(Unsupported):
                    attempt()


__all__ = ["CHECKS", "DriverContract", "supported"]
