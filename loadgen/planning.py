"""How much one generator process can drive, from the bench's figures, and a warning when a run asks for more.

A generator short of CPU does not fail: it queues, and its own queueing shows up as the
backend's latency. The figures below are the medians of ``python bench/suite.py`` on the
machine docs/performance.md names, rounded down; a faster machine does more, so the warning
speaks of "about" and leaves the decision to the user.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

log = logging.getLogger("loadgen")

#: round trips per CPU-second inside Locust with full accounting, 1,000 connections (bench ping-pong)
OPERATIONS_PER_CORE = 20_000
#: room messages received and accounted per CPU-second, the worst room size (bench fan-out receive)
DELIVERIES_PER_CORE = 160_000
#: past this share of its core a process's latencies start to include its own queueing
COMFORTABLE_SHARE = 0.7


@dataclass(frozen=True)
class Demand:
    """What this process's users ask of it, per second."""

    users: int
    operations: float
    deliveries: float

    @property
    def cores(self) -> float:
        return self.operations / OPERATIONS_PER_CORE + self.deliveries / DELIVERIES_PER_CORE


def demand(users: Iterable, can_run) -> Demand:
    """Sum the users' activity rates; room broadcasts count once per other member of the room here.

    ``can_run(activity)`` says whether the run's driver performs an activity at all. Members
    are this process's own users: in a distributed run each worker judges its own share.
    """
    users = list(users)
    members: Counter[str] = Counter(room for user in users for room in user.rooms)
    operations = deliveries = 0.0
    for user in users:
        for activity in user.activities():
            if activity.rate <= 0 or not can_run(activity):
                continue
            rate = activity.rate_for(user)
            operations += rate
            if activity.broadcast and user.rooms:
                # a post goes to one of the user's rooms, chosen evenly
                others = sum(members[room] - 1 for room in user.rooms) / len(user.rooms)
                deliveries += rate * others
    return Demand(len(users), operations, deliveries)


def advice(asked: Demand) -> str | None:
    """A warning when ``asked`` needs more than a comfortable share of one core, else None."""
    if asked.cores <= COMFORTABLE_SHARE:
        return None
    processes = int(asked.cores / COMFORTABLE_SHARE) + 1
    return (
        f"This process's {asked.users:,} users ask for about {asked.operations:,.0f} operations/s and "
        f"{asked.deliveries:,.0f} room deliveries/s: {asked.cores:.1f} cores by the bench's figures "
        f"({OPERATIONS_PER_CORE:,} round trips or {DELIVERIES_PER_CORE:,} deliveries per core, "
        f"docs/performance.md). Its own queueing would show up as backend latency: spread the users over "
        f"about {processes} processes (--processes {processes}, or more workers)."
    )


def warn_if_overloaded(users: Iterable, can_run) -> Demand:
    asked = demand(users, can_run)
    message = advice(asked)
    if message:
        log.warning(message)
    return asked
