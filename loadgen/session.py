"""One user's connection: transport + driver + accounting, with a blocking call per operation.

Scenarios talk to a :class:`Session` ("join r7", "send hello") and never see a frame. The
session sends what the driver encodes, waits (as a greenlet) for the reply the driver
decodes, times it, and hands deliveries to the user's :class:`~loadgen.accounting.Receiver`
in the reader greenlet, in arrival order: a window must open before the first push of the
room is read, and a message's own acknowledgement must be accounted before a later push.

The session reports every operation through a plain callback, so it runs without Locust
(tests use it directly); the Locust layer turns the callback into request events.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, MutableMapping

import gevent
from gevent.event import AsyncResult

from loadgen.accounting import ImplausibleSequence, Receiver
from loadgen.drivers.base import (
    INBOX,
    MALFORMED_REPLY,
    ClockResult,
    Delivery,
    Done,
    Driver,
    Failure,
    HistoryResult,
    JoinResult,
    LeaveResult,
    LoginResult,
    LogoutResult,
    Malformed,
    MediaFrame,
    MediaSession,
    Outgoing,
    ReadResult,
    Receipt,
    Reply,
    SendResult,
)
from loadgen.transport import ConnectionClosed, TransportError, WebSocketClient

#: reporter(name, seconds, error): error is None for a success
Reporter = Callable[[str, float, "BaseException | None"], None]

log = logging.getLogger("loadgen.session")

#: how often overdue requests are looked for: a request times out at most this much late
DEADLINE_RESOLUTION_S = 0.1


class _Overdue(Exception):
    """Set on a waiter whose request outlived its deadline."""


class _Deadlines:
    """Request deadlines of every session in the process, checked by one greenlet.

    A gevent Timeout per request (what ``AsyncResult.get(timeout=…)`` starts) costs as
    much as the rest of a round trip's bookkeeping at thousands of round trips a second;
    one sweep over the requests in flight, ten times a second, costs next to nothing.
    """

    def __init__(self) -> None:
        self._due: dict[AsyncResult, float] = {}
        self._sweeper = None

    def watch(self, waiter: AsyncResult, seconds: float) -> None:
        self._due[waiter] = time.monotonic() + seconds
        # a sweeper of a hub that is gone (a test's, a parent process's before a fork) sweeps nothing
        if self._sweeper is None or self._sweeper.dead:
            self._sweeper = gevent.spawn_raw(self._sweep)

    def forget(self, waiter: AsyncResult) -> None:
        self._due.pop(waiter, None)

    def _sweep(self) -> None:
        try:
            while self._due:
                gevent.sleep(DEADLINE_RESOLUTION_S)
                now = time.monotonic()
                for waiter, due in list(self._due.items()):
                    if due <= now and not waiter.ready():
                        del self._due[waiter]
                        waiter.set_exception(_Overdue())
        finally:
            self._sweeper = None


_deadlines = _Deadlines()


class LoggedOut(ConnectionClosed):
    """An operation on a session that has logged out; not sent, not reported."""

    def __init__(self, operation: str) -> None:
        super().__init__(None, f"{operation} after logout")


class OperationFailed(Exception):
    """The backend refused an operation; ``code`` is its error code."""

    def __init__(self, operation: str, code: str, message: str = "") -> None:
        super().__init__(f"{operation}: {code}" + (f" ({message})" if message else ""))
        self.operation = operation
        self.code = code
        self.message = message


class Refused(OperationFailed):
    """An expected refusal (a seat lost in a race, a busy callee): an outcome, not a failure."""


#: refusal codes that a busy, healthy backend gives, by operation
EXPECTED_REFUSALS: dict[str, frozenset[str]] = {
    op: frozenset(codes)
    for op, codes in {
        "seat.take": ("seat_taken", "seat_locked", "no_free_seat", "already_seated"),
        "seat.accept": ("no_invite", "seat_taken", "seat_locked", "already_seated"),
        "seat.leave": ("not_seated",),
        "seat.mute": ("not_seated",),
        "seat.kick": ("not_seated",),
        "seat.invite": ("seat_taken", "seat_locked", "not_member"),
        "cohost.request": ("not_live", "already_seated"),
        "cohost.approve": ("no_request", "stage_full", "already_seated"),
        "cohost.reject": ("no_request",),
        "cohost.leave": ("not_seated",),
        "pk.invite": ("not_live", "no_host", "pk_busy"),
        "pk.accept": ("no_invite",),
        "pk.reject": ("no_invite",),
        "call.invite": ("busy", "offline"),
        "call.accept": ("no_call",),
        "call.reject": ("no_call",),
        "call.hangup": ("no_call",),
    }.items()
}


class OperationTimeout(OperationFailed):
    def __init__(self, operation: str, seconds: float) -> None:
        super().__init__(operation, "timeout", f"no reply within {seconds:g} s")


class Session:
    """A connection of one user. Not shared between users; safe to use from several greenlets."""

    # slots: a worker holds one Session per user, tens of thousands of them
    __slots__ = (
        "url", "driver", "receiver", "report", "sequences", "request_timeout", "connect_timeout",
        "ping_interval", "headers", "on_delivery", "on_receipt", "on_malformed", "on_dropped", "on_event",
        "on_closed", "on_media", "log", "user", "rooms", "logged_out", "dropped", "_ws", "_waiting",
        "_speaks_unasked", "_closing",
    )  # fmt: skip

    def __init__(
        self,
        url: str,
        driver: Driver,
        receiver: Receiver,
        *,
        reporter: Reporter,
        sequences: MutableMapping[str, int] | None = None,
        request_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        ping_interval: float | None = 20.0,
        headers: Mapping[str, str] | None = None,
        on_delivery: Callable[[Delivery, str], None] | None = None,
        on_receipt: Callable[[Receipt], None] | None = None,
        on_malformed: Callable[[Malformed], None] | None = None,
        on_dropped: Callable[[], None] | None = None,
        on_event: Callable[[object], None] | None = None,
        on_closed: Callable[[int | None], None] | None = None,
        on_media: Callable[[bytes], None] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.url = url
        self.driver = driver
        self.receiver = receiver
        self.report = reporter
        # per-(sender, stream) counters outlive a connection, so they belong to the caller
        self.sequences = sequences if sequences is not None else {}
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self.ping_interval = ping_interval
        self.headers = headers
        self.on_delivery = on_delivery
        self.on_receipt = on_receipt
        self.on_malformed = on_malformed
        self.on_dropped = on_dropped
        self.on_event = on_event
        self.on_closed = on_closed
        self.on_media = on_media
        self.log = logger or log
        self.user: str | None = None
        self.rooms: set[str] = set()
        self.logged_out = False
        self.dropped = False
        self._ws: WebSocketClient | None = None
        self._waiting: dict[int, AsyncResult] = {}
        # only drivers that send frames unasked are asked for them: a call per received message
        # and a ticker greenlet per connection are not free at thousands of connections
        self._speaks_unasked = type(driver).pending is not Driver.pending
        self._closing = False

    # -- connection -------------------------------------------------------------------

    @property
    def connection(self) -> WebSocketClient | None:
        """The WebSocket under the session, once connected: what a network emulation impairs."""
        return self._ws

    @property
    def alive(self) -> bool:
        return self._ws is not None and not self._ws.closed

    def connect(self) -> None:
        started = time.perf_counter()
        try:
            self._ws = WebSocketClient.connect(
                self.url,
                on_message=self._on_message,
                on_close=self._on_close,
                timeout=self.connect_timeout,
                subprotocols=self.driver.subprotocols,
                headers=self.headers,
                ping_interval=self.ping_interval,
                logger=self.log,
            )
        except TransportError as exc:
            self.report("ws.connect", time.perf_counter() - started, exc)
            raise
        self.report("ws.connect", time.perf_counter() - started, None)
        if self._speaks_unasked:
            gevent.spawn(self._tick)

    def close(self) -> None:
        """Close the connection; windows still open end at what was seen."""
        self._closing = True
        if self._ws is not None:
            self._ws.close()

    def abort(self) -> None:
        """Cut the connection without a close frame, as a lost mobile link would."""
        self._closing = True
        if self._ws is not None:
            self._ws.abort()

    # -- operations -------------------------------------------------------------------

    def login(self, user: str, token: str) -> LoginResult:
        self.user = user
        return self._call("session.login", self.driver.login(user, token))

    def join(self, room: str) -> JoinResult:
        result = self._call("room.join", self.driver.join(room))
        self.rooms.add(room)
        return result

    def join_room(self, room: str, *, seats: int | None = None, as_host: bool = False) -> JoinResult:
        """Join a room with seats; the reply carries its seat snapshot, host and stream state."""
        result = self._call("room.join", self.driver.join_room(room, seats=seats, as_host=as_host))
        self.rooms.add(room)
        return result

    def room_op(
        self, op: str, room: str, sent_at: float, *, report: bool = True, name: str | None = None, **fields: object
    ):
        """A room operation (``seat.take``, ``gift``, ``pk.invite`` …) reported under ``name`` or its own."""
        return self._call(name or op, self.driver.room_op(op, room, sent_at, **fields), report=report)

    def call_op(self, op: str, sent_at: float, **fields: object) -> Done:
        return self._call(op, self.driver.call_op(op, sent_at, **fields))

    def leave(self, room: str) -> LeaveResult:
        self.rooms.discard(room)
        return self._call("room.leave", self.driver.leave(room))

    def send(self, room: str, body: str, sent_at: float) -> SendResult:
        """Post to ``room``; ``sent_at`` is the intended send time on the backend's clock."""
        cseq = self.sequences[room] = self.sequences.get(room, 0) + 1
        return self._call("msg.send", self.driver.send(room, cseq, sent_at, body))

    def direct(self, to: str, body: str, sent_at: float) -> SendResult:
        key = "@" + to
        cseq = self.sequences[key] = self.sequences.get(key, 0) + 1
        return self._call("dm.send", self.driver.direct(to, cseq, sent_at, body))

    def read(self, room: str, seq: int) -> ReadResult:
        return self._call("msg.read", self.driver.read(room, seq))

    def history(self, stream: str, since: int, limit: int = 500) -> HistoryResult:
        return self._call("history.fetch", self.driver.history(stream, since, limit))

    def echo(self, body: str, sent_at: float) -> Done:
        """One round trip that changes nothing on the backend (``session.echo``)."""
        return self._call("session.echo", self.driver.echo(sent_at, body))

    def logout(self) -> LogoutResult:
        result = self._call("session.logout", self.driver.logout())
        self.rooms.clear()
        return result

    def media_open(self, room: str, transport: str) -> MediaSession:
        """Start a media session in ``room`` (docs/media.md)."""
        return self._call("media.open", self.driver.media_open(room, transport))

    def send_media(self, packet: bytes) -> None:
        """An audio packet over the signalling connection (the websocket media transport); unanswered."""
        ws = self._ws
        if ws is None:
            raise ConnectionClosed(None, "not connected")
        ws.send_binary(packet)

    def sync_clock(self, rounds: int = 5) -> tuple[float, float]:
        """Estimate the backend's clock offset NTP-style; returns (offset, uncertainty) in seconds.

        The sample with the shortest round trip bounds the error best: half its round trip.
        """
        best: tuple[float, float] | None = None
        for _ in range(rounds):
            t0 = time.time()
            result: ClockResult = self._call("clock.sync", self.driver.clock(t0))
            t1 = time.time()
            half_rtt = (t1 - t0) / 2
            sample = (result.server_time - (t0 + t1) / 2, half_rtt)
            if best is None or sample[1] < best[1]:
                best = sample
        assert best is not None
        return best

    def recover(self, limit: int = 500, max_pages: int = 20) -> int:
        """Fetch history for every stream we miss something in; returns how many were recovered.

        A backend without stream sequences cannot say what we missed while away: its rooms'
        (and inbox's) recent history is fetched whole, and the sender streams sort it out.
        """
        if self.driver.sender_sequenced:
            recovered = 0
            for stream in self.receiver.roaming_streams():
                if stream == INBOX or stream in self.rooms:
                    recovered += self.receiver.recover(self.history(stream, 0, limit).deliveries)
            return recovered
        recovered = 0
        for stream, lowest in self.receiver.gaps().items():
            if stream != INBOX and stream not in self.rooms:
                continue
            since = lowest - 1
            for _ in range(max_pages):
                page = self.history(stream, since, limit)
                recovered += self.receiver.recover(page.deliveries)
                if not page.deliveries or page.deliveries[-1].seq >= page.head:
                    break
                since = page.deliveries[-1].seq
        return recovered

    def _call(self, name: str, outgoing: Outgoing, report: bool = True):
        """Send, wait for the reply, report it; expected refusals raise Refused."""
        if self.logged_out:
            # the end-of-run drain logs every connection out, possibly while its user is half-way
            # through moving rooms: what the user tries next is not the backend's failure
            raise LoggedOut(name)
        ws = self._ws
        waiter = AsyncResult()
        if outgoing.done is None:
            self._waiting[outgoing.request_id] = waiter
        started = time.perf_counter()
        _deadlines.watch(waiter, self.request_timeout)
        try:
            if ws is None:
                raise ConnectionClosed(None, "not connected")
            if outgoing.binary:
                ws.send_binary(outgoing.payload)
            else:
                ws.send_text(outgoing.payload)
            if outgoing.done is not None:
                # answered by the driver itself: applied as a backend's reply would be
                self._apply(outgoing.done)
                waiter.set(outgoing.done)
            result = waiter.get()
        except _Overdue as exc:
            error: BaseException = OperationTimeout(name, self.request_timeout)
            self.report(name, time.perf_counter() - started, error)
            raise error from exc
        except OperationFailed as exc:
            expected = exc.code in EXPECTED_REFUSALS.get(name, ())
            error = (Refused if expected else OperationFailed)(name, exc.code, exc.message)
            self.report(name, time.perf_counter() - started, error)
            raise error from None
        except TransportError as exc:
            self.report(name, time.perf_counter() - started, exc)
            raise
        finally:
            _deadlines.forget(waiter)
            self._waiting.pop(outgoing.request_id, None)
        if report:
            self.report(name, time.perf_counter() - started, None)
        return result

    # -- reader greenlet --------------------------------------------------------------

    def _on_message(self, data: bytes, binary: bool) -> None:
        events = self.driver.receive(data, binary)
        if self._speaks_unasked:
            self._send_pending()
        for event in events:
            try:
                self._handle(event)
            except ImplausibleSequence as exc:
                if self.on_malformed is not None:
                    self.on_malformed(Malformed(str(exc), data, "unexpected_shape"))

    def _handle(self, event: object) -> None:
        """One event from the backend, in the reader greenlet."""
        if isinstance(event, Delivery):
            outcome = self.receiver.deliver(event)
            if self.on_delivery is not None:
                self.on_delivery(event, outcome)
        elif isinstance(event, MediaFrame):
            if self.on_media is not None:
                self.on_media(event.data)
        elif isinstance(event, Reply):
            waiter = self._waiting.get(event.request_id)
            try:
                self._apply(event.result)
            except ImplausibleSequence as exc:
                if waiter is not None:
                    waiter.set_exception(OperationFailed("", MALFORMED_REPLY, str(exc)))
                raise
            if waiter is not None:
                waiter.set(event.result)
        elif isinstance(event, Failure):
            waiter = self._waiting.get(event.request_id) if event.request_id is not None else None
            if waiter is not None:
                waiter.set_exception(OperationFailed("", event.code, event.message))
            else:
                self.log.warning("backend error not tied to a request: %s %s", event.code, event.message)
            if event.code == MALFORMED_REPLY and self.on_malformed is not None:
                # the request failed, and the backend broke the protocol: both are counted
                self.on_malformed(Malformed(event.message, b"", "unexpected_shape"))
        elif isinstance(event, Receipt):
            if self.on_receipt is not None:
                self.on_receipt(event)
        elif isinstance(event, Malformed):
            if self.on_malformed is not None:
                self.on_malformed(event)
        elif self.on_event is not None:
            self.on_event(event)

    def _send_pending(self) -> None:
        ws = self._ws
        for frame in self.driver.pending():
            if ws is None or ws.closed:
                return
            try:
                ws.send_text(frame)
            except TransportError:
                return  # the close is reported by the reader

    def _tick(self) -> None:
        """Once a second, what the driver wants sent unasked (a keepalive), while the connection lives."""
        while self.alive:
            gevent.sleep(1.0)
            self._send_pending()

    def _apply(self, result: object) -> None:
        """Open and close accounting windows the moment the backend's reply is read."""
        receiver = self.receiver
        if isinstance(result, SendResult):
            if result.stream != INBOX:
                receiver.own(result.stream, result.seq)
        elif isinstance(result, JoinResult):
            receiver.open_window(result.room, result.head)
            if result.seats is not None and self.on_event is not None:
                self.on_event(result)
        elif isinstance(result, LeaveResult):
            receiver.close_window(result.room, result.head)
        elif isinstance(result, LoginResult):
            receiver.open_window(INBOX, result.inbox_head)
        elif isinstance(result, LogoutResult):
            self.logged_out = True
            receiver.close_all({**result.heads, INBOX: result.inbox_head})

    def _on_close(self, closed: ConnectionClosed) -> None:
        if closed.protocol_error is not None and self.on_malformed is not None:
            self.on_malformed(Malformed(str(closed), b"", closed.protocol_error))
        if not self.logged_out:
            # the heads at the break are unknown: windows end at what was seen
            self.receiver.close_all(None)
        self.dropped = not self._closing
        if self.on_closed is not None:
            self.on_closed(closed.code)
        if self.dropped:
            self.log.info("connection of %s dropped: code %s %s", self.user, closed.code, closed.reason)
            if self.on_dropped is not None:
                self.on_dropped()
        for waiter in list(self._waiting.values()):
            waiter.set_exception(closed)
