"""Who goes where: Zipf-distributed room popularity and role mixes, deterministic per user.

Real voice-room and live-stream traffic is skewed: a few hot rooms hold thousands while
most stay small. Room ``k`` (0-based rank) is chosen with probability proportional to
``1 / (k + 1) ** s``. Every draw comes from a random generator seeded by the scenario and
the user's number, so the same user lands in the same room with the same role on every
run, and generators that number their users apart cover the same rooms without talking
to each other.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Mapping


class Zipf:
    """Ranks ``0 … n-1`` drawn with probability proportional to ``1 / (rank + 1) ** s``."""

    def __init__(self, n: int, s: float) -> None:
        if n < 1:
            raise ValueError("a Zipf population needs at least one rank")
        weights = [1 / (rank + 1) ** s for rank in range(n)]
        total = sum(weights)
        self.cumulative = list(itertools.accumulate(w / total for w in weights))

    def draw(self, rng: random.Random) -> int:
        return min(bisect.bisect_left(self.cumulative, rng.random()), len(self.cumulative) - 1)

    def share(self, rank: int) -> float:
        """The expected share of users in room ``rank``."""
        below = self.cumulative[rank - 1] if rank else 0.0
        return self.cumulative[rank] - below


def user_random(scenario: str, index: int, worker_index: int | None = None) -> random.Random:
    """User ``index``'s own random source: the same on every run with the same worker index.

    Each worker of a distributed run numbers its users from 0; the worker index keeps their
    draws apart, so every worker's users spread over the same rooms by the same law and a hot
    room's members sit on every worker.
    """
    return random.Random(f"{scenario}/{index}" if worker_index is None else f"{scenario}/{worker_index}/{index}")


def draw_role(rng: random.Random, shares: Mapping[str, float], rest: str) -> str:
    """A role by its share; whatever the shares leave over goes to ``rest``."""
    point = rng.random()
    for role, share in shares.items():
        if point < share:
            return role
        point -= share
    return rest


def worker_tag(user_id: str) -> str | None:
    """The worker a user id of this toolkit belongs to (``w3`` for ``w3-u17``), None for others."""
    prefix, dash, _ = user_id.partition("-")
    return prefix if dash and prefix[:1] == "w" and prefix[1:].isdigit() else None


def make_user_id(worker_index: int | None, number: int) -> str:
    """User ``number`` of a process: ``u17`` standalone, ``w3-u17`` on worker 3.

    Ids are unique across the workers of a distributed run (a second login of one id would
    replace the first connection), and name the worker, whose clock stamped the user's messages.
    """
    return f"u{number}" if worker_index is None else f"w{worker_index}-u{number}"
