"""The one base user every scenario builds on, and the activities users are composed of.

A :class:`RealtimeUser` owns a connection (a :class:`~loadgen.session.Session`), a driver
and its accounting :class:`~loadgen.accounting.Receiver`, and keeps the connection alive:
when the backend drops it, the user reconnects, rejoins and fetches what it missed.

What a user *does* is a list of :class:`Activity` objects, each a Poisson process with its
own rate. The schedule is open-model: the next time an activity is due is drawn from the
time it was *due*, not from when the last one finished, and messages carry that intended
time. A generator that falls behind therefore shows as latency (and as send lag), never as
a quieter backend.
"""

from __future__ import annotations

import functools
import heapq
import logging
import random
import time
from collections import deque
from collections.abc import Callable

import gevent
from gevent.event import Event
from locust import User, constant, task

from loadgen import reconnects
from loadgen.drivers.base import (
    CallUpdate,
    Delivery,
    Driver,
    Invitation,
    JoinResult,
    Malformed,
    PkUpdate,
    Receipt,
    RoomEvent,
    SeatSnapshot,
)
from loadgen.drivers.reference import ReferenceDriver
from loadgen.rooms import RoomView
from loadgen.run import RunContext
from loadgen.scenarios.network import UserNetwork
from loadgen.session import OperationFailed, Session
from loadgen.transport import ConnectError, TransportError

log = logging.getLogger("loadgen.scenarios")

#: how long a voluntary reconnect lingers after logout for messages still on the wire
LINGER_SECONDS = 0.2
#: unread messages a user remembers for read receipts
UNREAD_KEPT = 16


class Activity:
    """Something a user does ``rate`` times per second on average.

    ``storm`` names the profile storm kind that multiplies the rate while it lasts, for
    users in hot rooms.
    """

    storm: str | None = None
    #: the operations it performs: a driver that cannot do them all skips this behaviour
    needs: tuple[str, ...] = ()
    #: each time, the backend pushes the outcome to every member of the user's room
    broadcast = False

    def __init__(self, rate: float) -> None:
        self.rate = rate

    def rate_for(self, user: RealtimeUser) -> float:
        if self.storm is None:
            return self.rate
        return self.rate * user.storm_multiplier(self.storm)

    def __call__(self, user: RealtimeUser, intended: float) -> None:
        raise NotImplementedError


class RealtimeUser(User):
    """A user with one live connection to the backend; subclasses choose activities and rooms."""

    abstract = True
    # after an unexpected error in the schedule, wait a second before resuming it
    wait_time = constant(1)
    #: the backend's protocol; a team with its own backend sets its driver here
    driver: type[Driver] = ReferenceDriver
    #: operations without which the scenario is not itself: a driver supporting none of them cannot run it
    core: tuple[str, ...] = ()

    def __init__(self, environment) -> None:
        super().__init__(environment)
        self.run_context = RunContext.of(environment)
        self.user_id = self.run_context.new_user_id()
        self.index = len(self.run_context.user_ids) - 1
        self.rng = random.Random(f"{self.user_id}")
        self.receiver = self.run_context.accounting.receiver()
        self.sequences: dict[str, int] = {}
        self.session: Session | None = None
        self.rooms: list[str] = []
        self.unread: deque[tuple[str, int]] = deque(maxlen=UNREAD_KEPT)
        self.views: dict[str, RoomView] = {}
        self.hot = False
        self._reactions: deque[Callable[[], None]] = deque()
        self._wake = Event()
        #: while offline (an elevator, a tunnel) every try to reconnect fails without touching the network
        self.offline_until = 0.0
        #: when the connection was lost (monotonic), until the user is back; tries made since
        self._lost_at: float | None = None
        self._tries = 0
        self._was_connected = False
        #: the next try to come back skips the policy's wait (after a handover)
        self._back_at_once = False
        self.log = log.getChild(self.user_id)
        self.run_context.users.add(self)
        #: the user's emulated network (loadgen/scenarios/network.py); None when the run emulates none
        self.network = UserNetwork.of(self)

    # -- what subclasses provide ------------------------------------------------------

    def activities(self) -> list[Activity]:
        return []

    def choose_rooms(self) -> list[str]:
        return []

    def token(self) -> str:
        return "loadgen"

    def enter(self, session: Session, room: str) -> None:
        """Join ``room`` on a fresh connection; room scenarios join with seats and roles."""
        session.join(room)

    def on_invitation(self, invitation: Invitation) -> None:
        """Something asks this user for an answer; runs in the user's greenlet."""

    def on_call(self, update: CallUpdate) -> None:
        """A call this user is part of changed state; runs in the reader greenlet."""

    def on_pk(self, update: PkUpdate) -> None:
        """A PK involving this user's room changed state; runs in the reader greenlet."""

    def storm_multiplier(self, kind: str) -> float:
        return self.run_context.storm_multiplier(kind) if self.hot else 1.0

    def react(self, reaction: Callable[[], None]) -> None:
        """Run ``reaction`` in the user's greenlet as soon as it is free (from the reader greenlet)."""
        self._reactions.append(reaction)
        self._wake.set()

    # -- connection -------------------------------------------------------------------

    def on_start(self) -> None:
        self.rooms = self.choose_rooms()
        try:
            self.open_session()
        except (TransportError, OperationFailed):
            # already in Locust's table; the schedule retries
            pass

    def on_stop(self) -> None:
        self.run_context.users.discard(self)
        session = self.session
        if session is not None:
            self.run_context.sessions.discard(session)
            session.close()

    @property
    def connected(self) -> bool:
        session = self.session
        return session is not None and session.alive and not session.logged_out

    def drop_connection(self, at_once: bool = False) -> None:
        """Lose the connection as a dead network link would (no logout, no close frame).

        Done in the user's own greenlet, between operations, so no request of ours is cut
        half-way: what the backend sees is a client that vanished, and the user comes back
        by the reconnect policy; ``at_once`` makes the first try without its wait, as a
        client handed over to another network does.
        """

        def drop() -> None:
            session = self.session
            if session is not None and session.alive:
                self._lost_at = time.monotonic()
                self._back_at_once = at_once
                session.abort()

        self.react(drop)

    def open_session(self) -> int:
        """Connect, log in, enter the rooms and catch up; returns how many messages history gave back."""
        run = self.run_context
        session = Session(
            run.transport_url,
            run.driver_factory(),
            self.receiver,
            reporter=run.report,
            sequences=self.sequences,
            request_timeout=run.request_timeout,
            on_delivery=self._on_delivery,
            on_receipt=self._on_receipt,
            on_malformed=self._on_malformed,
            on_dropped=self._on_dropped,
            on_event=self._on_event,
            on_closed=self._on_closed,
            logger=self.log,
        )
        self.session = session
        run.opening += 1
        try:
            session.connect()
            if self.network is not None:
                self.network.connected(session)
            run.sessions.add(session)
            session.login(self.user_id, self.token())
            for room in self.rooms:
                self.enter(session, room)
            recovered = session.recover()
        finally:
            run.opening -= 1
        self._was_connected = True
        return recovered

    def reconnect(self, voluntary: bool) -> int:
        """Leave cleanly (or find the connection gone), connect again, catch up from history."""
        old = self.session
        run = self.run_context
        if old is not None:
            run.sessions.discard(old)
            if voluntary and old.alive:
                try:
                    old.logout()
                    self._linger()
                except (TransportError, OperationFailed):
                    pass
                old.close()
        run.connections["reconnects"] += 1
        return self.open_session()

    def _linger(self) -> None:
        """After logout, give messages already on the wire a moment to land before closing."""
        deadline = time.monotonic() + LINGER_SECONDS
        while self.receiver.gaps() and time.monotonic() < deadline:
            gevent.sleep(0.02)

    # -- the schedule -----------------------------------------------------------------

    @task
    def live(self) -> None:
        rng = self.rng
        run = self.run_context
        activities = [a for a in self.activities() if a.rate > 0 and run.driver_can(a)]
        due: list = []
        storms = None
        while True:
            if run.draining:
                self._reactions.clear()
                gevent.sleep(1.0)
                continue
            session = self.session
            if session is None or not session.alive:
                self._come_back()
                continue
            while self._reactions and session.alive:
                self._attempt(self._reactions.popleft())
            if not session.alive:
                continue
            if storms != run.storms_active():
                # a storm began or ended: rates changed, and a Poisson process may start afresh
                storms = run.storms_active()
                now = time.time()
                due = [(now + rng.expovariate(r), n, a) for n, a in enumerate(activities) if (r := a.rate_for(self))]
                heapq.heapify(due)
            wait = due[0][0] - time.time() if due else 1.0
            if wait > 0:
                self._wake.wait(min(wait, 1.0))
                self._wake.clear()
                continue
            intended, n, activity = due[0]
            heapq.heapreplace(due, (intended + rng.expovariate(activity.rate_for(self)), n, activity))
            self._attempt(functools.partial(activity, self, intended))

    def _attempt(self, action: Callable[[], None]) -> None:
        try:
            action()
        except (TransportError, OperationFailed):
            # reported by the session already; a broken connection is mended next turn
            pass

    def _come_back(self) -> None:
        """One try to reconnect, after the wait the reconnect policy sets for it."""
        run = self.run_context
        if self._lost_at is None:
            self._lost_at = time.monotonic()
        self._tries += 1
        at_once, self._back_at_once = self._back_at_once, False
        gevent.sleep(0.0 if at_once else reconnects.delay(run.reconnect_policy, self._tries, self.rng))
        if run.draining:
            return
        # a user that never got in is still starting, not reconnecting: its tries are not counted
        counted = run.reconnects if self._was_connected else None
        if time.monotonic() < self.offline_until:
            if counted is not None:
                counted.attempted(self.user_id, "offline")
            return
        try:
            recovered = self.reconnect(voluntary=False)
        except (TransportError, OperationFailed) as exc:
            if counted is not None:
                counted.attempted(self.user_id, _failure_kind(exc))
            return
        if counted is not None:
            counted.attempted(self.user_id, None)
            counted.returned(self.user_id, time.monotonic() - self._lost_at, recovered)
        self._lost_at = None
        self._tries = 0

    # -- pushes, in the reader greenlet -----------------------------------------------

    def _on_delivery(self, delivery: Delivery, outcome: str) -> None:
        if not delivery.direct and outcome != "duplicate":
            self.unread.append((delivery.stream, delivery.seq))
        if self.network is not None:
            self.network.delivered(delivery, outcome)

    def _on_receipt(self, receipt: Receipt) -> None:
        self.run_context.receipts += 1

    def _on_event(self, event: object) -> None:
        if isinstance(event, JoinResult):
            view = self.views.get(event.room)
            if view is not None:
                view.joined(event)
        elif isinstance(event, SeatSnapshot):
            view = self.views.get(event.room)
            if view is not None:
                view.snapshot(event)
        elif isinstance(event, RoomEvent):
            view = self.views.get(event.room)
            if view is not None:
                view.room_event(event)
        elif isinstance(event, PkUpdate):
            for room in event.rooms:
                view = self.views.get(room)
                if view is not None:
                    view.pk_update(event)
            self.on_pk(event)
        elif isinstance(event, CallUpdate):
            self.on_call(event)
        elif isinstance(event, Invitation):
            self.react(lambda: self.on_invitation(event))

    def _on_closed(self, code: int | None) -> None:
        self.run_context.close_codes[code if code is not None else 1006] += 1
        # the schedule may be asleep until its next activity: it has a connection to mend first
        self._wake.set()

    def _on_dropped(self) -> None:
        self.run_context.connections["dropped"] += 1
        if self._lost_at is None:
            self._lost_at = time.monotonic()

    def _on_malformed(self, event: Malformed) -> None:
        self.run_context.protocol_error(event.kind, event.reason)


def _failure_kind(exc: Exception) -> str:
    """A failed try's reason in a few words, a label that stays small."""
    if isinstance(exc, OperationFailed):
        return f"{exc.operation}: {exc.code}"
    return "connect" if isinstance(exc, ConnectError) else "connection lost"


class Post(Activity):
    """Post a message when due, stamped with the time it was due, not the time it left."""

    def __init__(self, rate: float, body_bytes: int) -> None:
        super().__init__(rate)
        self.body = "x" * body_bytes

    def target(self, user: RealtimeUser) -> str | None:
        raise NotImplementedError

    def post(self, session: Session, target: str, body: str, sent_at: float) -> None:
        raise NotImplementedError

    def __call__(self, user: RealtimeUser, intended: float) -> None:
        target = self.target(user)
        if target is None:
            return
        accounting = user.run_context.accounting
        lag = time.time() - intended
        sent_at = intended + accounting.clock_offset
        if user.network is not None:
            user.network.sending(sent_at)
        self.post(user.session, target, self.body, sent_at)
        accounting.record_sent(lag)


class PostToRoom(Post):
    needs = ("msg.send",)
    broadcast = True

    def target(self, user: RealtimeUser) -> str | None:
        return user.rng.choice(user.rooms) if user.rooms else None

    def post(self, session: Session, target: str, body: str, sent_at: float) -> None:
        session.send(target, body, sent_at)


class SendDirect(Post):
    needs = ("dm.send",)

    def target(self, user: RealtimeUser) -> str | None:
        others = user.run_context.user_ids
        to = others[user.rng.randrange(len(others))]
        return None if to == user.user_id else to

    def post(self, session: Session, target: str, body: str, sent_at: float) -> None:
        session.direct(target, body, sent_at)


class MarkRead(Activity):
    needs = ("msg.read",)

    def __call__(self, user: RealtimeUser, intended: float) -> None:
        if user.unread:
            room, seq = user.unread.pop()
            user.session.read(room, seq)


class Reconnect(Activity):
    """Drop the connection as a phone switching networks would, come back and sync history."""

    needs = ("session.logout",)

    def __call__(self, user: RealtimeUser, intended: float) -> None:
        user.reconnect(voluntary=True)
