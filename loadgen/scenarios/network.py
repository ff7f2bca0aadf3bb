"""Users on weak networks: each user's condition, its connections' impairment, its offline spells and handovers.

Every :class:`~loadgen.scenarios.base.RealtimeUser` of a run with a ``network:`` section has a
:class:`UserNetwork` (``user.network``): the user's condition and region, drawn from its id; the
impairment of its current connection; and, for conditions with outages, its offline spells and
handovers, which one greenlet per process keeps for every user (docs/network.md).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import time

import gevent
import gevent.event

from loadgen.drivers.base import Delivery
from loadgen.network import Impairment, NetworkRun, Outages, for_run
from loadgen.session import Session

log = logging.getLogger("loadgen.network")

OFFLINE, HANDOVER = "offline", "handover"


class UserNetwork:
    """One user's network: what it is on, the impairment of its connection, its outages."""

    __slots__ = ("user", "network", "condition", "region", "link", "impairment", "outages")

    def __init__(self, user, network: NetworkRun) -> None:
        self.user = user
        self.network = network
        self.condition, self.region, self.link = network.assign(user.user_id)
        self.impairment: Impairment | None = None
        outages = Outages(network.conditions[self.condition], random.Random(f"outages/{user.user_id}"))
        #: None once the first connection has started them, and for conditions without any
        self.outages: Outages | None = outages if outages.any else None

    @classmethod
    def of(cls, user) -> UserNetwork | None:
        """The user's network, None when the run emulates none (no ``network:`` section)."""
        network = for_run(user.run_context)
        return None if network is None else cls(user, network)

    def connected(self, session: Session) -> None:
        """A new connection, just opened: it goes over the user's link; the first one starts the outages."""
        if self.link.impaired:
            self.impairment = Impairment(self.link, self.network.rng, self.network)
            # nothing has been sent on it yet: every frame from the login on goes over the link
            session.connection.impair(self.impairment)
        if self.outages is not None:
            now = time.monotonic()
            outages, self.outages = self.outages, None
            clock = self.user.run_context.shared("network/outages", lambda: OutageClock(self.user.run_context))
            offline = outages.next_offline(now)
            if offline is not None:
                clock.add(offline[0], OFFLINE, self, outages, offline[1])
            handover = outages.next_handover(now)
            if handover is not None:
                clock.add(handover, HANDOVER, self, outages)

    def sending(self, sent_at: float) -> None:
        """A message stamped ``sent_at`` is about to go: its up-delay is kept for the receivers to ask."""
        if self.impairment is not None and self.link.up is not None and not self.link.up.fixed:
            self.impairment.label_next((self.user.user_id, sent_at))

    def delivered(self, delivery: Delivery, outcome: str) -> None:
        """In the delivering greenlet, right after the accounting: the delivery's latency split."""
        if outcome != "duplicate":
            self.network.split(delivery, self.network.delivering)


class OutageClock:
    """Every user's next offline spell and handover in this process, kept by one greenlet."""

    def __init__(self, run) -> None:
        self.run = run
        self._due: list[tuple[float, int, str, UserNetwork, Outages, float]] = []
        self._order = itertools.count()
        self._wake = gevent.event.Event()
        self._greenlet = None

    def add(self, at: float, kind: str, who: UserNetwork, outages: Outages, lasting: float = 0.0) -> None:
        earliest = self._due[0][0] if self._due else None
        heapq.heappush(self._due, (at, next(self._order), kind, who, outages, lasting))
        if self._greenlet is None or self._greenlet.dead:
            self._greenlet = gevent.spawn(self._run)
        elif earliest is None or at < earliest:
            self._wake.set()

    def _run(self) -> None:
        run = self.run
        while self._due and not run.draining:
            at, _, kind, who, outages, lasting = self._due[0]
            wait = at - time.monotonic()
            if wait > 0:
                self._wake.clear()
                self._wake.wait(min(wait, 1.0))
                continue
            heapq.heappop(self._due)
            if who.user not in run.users:
                continue
            if kind == OFFLINE:
                self._go_offline(who, outages, lasting)
            else:
                self._hand_over(who, outages)

    def _go_offline(self, who: UserNetwork, outages: Outages, lasting: float) -> None:
        user = who.user
        back = time.monotonic() + lasting
        user.offline_until = max(user.offline_until, back)
        who.network.offline_spells += 1
        log.debug("%s offline for %.1f s", user.user_id, lasting)
        user.drop_connection()
        following = outages.next_offline(back)
        if following is not None:
            self.add(following[0], OFFLINE, who, outages, following[1])

    def _hand_over(self, who: UserNetwork, outages: Outages) -> None:
        user = who.user
        now = time.monotonic()
        # no network to hand over to while offline, nor a connection to move while none is up
        if now >= user.offline_until and user.connected:
            who.network.handovers += 1
            log.debug("%s hands over to another network", user.user_id)
            user.drop_connection(at_once=True)
        following = outages.next_handover(now)
        if following is not None:
            self.add(following, HANDOVER, who, outages)


__all__ = ["OutageClock", "UserNetwork"]
