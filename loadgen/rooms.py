"""A user's picture of a room with seats, checked against what the backend promises.

Every member keeps the last seat snapshot it saw and checks each new one:

- ``seat_version_regress``: a snapshot whose version is below the next one due (a member
  gets every change of its room in order, so each snapshot is due exactly one version up);
- ``seat_conflict``: a seat handed to someone while someone else sat on it (a ``take``,
  ``accept`` or ``cohost`` change onto an occupied seat), or one user on two seats;
- ``seat_phantom``: this user was seated, and a snapshot shows someone else on its seat
  though nothing (a leave, kick or lock of this user) took it away;
- ``pk_score_mismatch``: a PK score of this room that differs from the sum of the gifts
  this member saw in the room since the PK started.

The same breach is usually seen by every member; each check names the occurrence
(room and version, or PK and version) so the run counts it once. Plain Python: the
callbacks carry the results out, nothing here touches Locust or sockets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from loadgen.drivers.base import JoinResult, PkUpdate, RoomEvent, Seat, SeatSnapshot

#: changes that seat a user, and those that unseat one
SEATING = frozenset({"take", "accept", "cohost"})
UNSEATING = frozenset({"leave", "kick", "lock"})
#: broadcasts whose fan-out latency is measured, by event kind
FANOUT_NAMES = {"gift": "gift.fanout", "danmaku": "danmaku.fanout", "settings": "settings.fanout"}


@dataclass
class Checks:
    """Where a view sends what it finds."""

    violation: Callable[[str, tuple, str], None]
    fanout: Callable[[str, float], None]
    now: Callable[[], float]


class RoomView:
    def __init__(self, me: str, room: str, checks: Checks, on_seated: Callable[[int, str], None] | None = None) -> None:
        self.me = me
        self.room = room
        self.checks = checks
        self.on_seated = on_seated
        self.version: int | None = None
        self.seats: tuple[Seat, ...] = ()
        self.host: str | None = None
        self.live = False
        self.my_seat: int | None = None
        # PK id -> this room's score as the gifts this member saw add up
        self.expected_scores: dict[str, int] = {}

    @property
    def seated_users(self) -> list[str]:
        return [seat.user for seat in self.seats if seat.user is not None]

    def free_seats(self) -> list[int]:
        return [seat.n for seat in self.seats if seat.user is None and not seat.locked]

    def joined(self, result: JoinResult) -> None:
        self.host = result.host
        self.live = result.live
        self.expected_scores.clear()
        if result.seats is not None:
            self._adopt(result.seats)

    def _adopt(self, snapshot: SeatSnapshot) -> None:
        self.version = snapshot.version
        self.seats = snapshot.seats
        mine = [seat.n for seat in snapshot.seats if seat.user == self.me]
        self.my_seat = mine[0] if mine else None

    def snapshot(self, snapshot: SeatSnapshot) -> None:
        checks = self.checks
        change = snapshot.change
        if change is not None:
            checks.fanout("seat.fanout", checks.now() - change.sent_at)
        if self.version is None:
            self._adopt(snapshot)
            return
        # a member is sent every change of its room, in order, so each snapshot must carry
        # exactly the next version; counting them tells a stale version from a real one
        expected = self.version + 1
        if snapshot.version < expected:
            checks.violation(
                "seat_version_regress",
                ("seat_version_regress", self.room, expected),
                f"room {self.room}: snapshot version {snapshot.version} where {expected} was due",
            )
        elif snapshot.version == expected:
            self._check_seating(snapshot)
        self._check_my_seat(snapshot)
        self._adopt(snapshot)
        self.version = max(expected, snapshot.version)
        if change is not None and change.user == self.me and change.kind in SEATING:
            if change.kind == "cohost":
                checks.fanout("cohost.accept", checks.now() - change.sent_at)
            if self.on_seated is not None:
                self.on_seated(change.seat, change.kind)

    def _check_seating(self, snapshot: SeatSnapshot) -> None:
        occupants = [seat.user for seat in snapshot.seats if seat.user is not None]
        if len(occupants) != len(set(occupants)):
            self.checks.violation(
                "seat_conflict",
                ("seat_conflict", self.room, snapshot.version),
                f"room {self.room} version {snapshot.version}: a user on two seats: {occupants}",
            )
            return
        change = snapshot.change
        if change is None or change.kind not in SEATING or change.seat >= len(self.seats):
            return
        sitting = self.seats[change.seat].user
        if sitting is not None and sitting != change.user:
            self.checks.violation(
                "seat_conflict",
                ("seat_conflict", self.room, snapshot.version),
                f"room {self.room} version {snapshot.version}: seat {change.seat} given to {change.user}"
                f" by a {change.kind} while {sitting} sat on it",
            )

    def _check_my_seat(self, snapshot: SeatSnapshot) -> None:
        mine = self.my_seat
        if mine is None or mine >= len(snapshot.seats):
            return
        change = snapshot.change
        if change is not None and change.user == self.me and change.kind in UNSEATING:
            return
        holder = snapshot.seats[mine].user
        if holder != self.me:
            self.checks.violation(
                "seat_phantom",
                ("seat_phantom", self.room, snapshot.version, self.me),
                f"room {self.room} version {snapshot.version}: {self.me} holds seat {mine}"
                f" but the snapshot shows {holder} there",
            )

    def room_event(self, event: RoomEvent) -> None:
        name = FANOUT_NAMES.get(event.kind)
        if name is not None:
            self.checks.fanout(name, self.checks.now() - event.sent_at)
        if event.kind == "gift" and self.expected_scores:
            value = int(event.fields.get("count", 1)) * int(event.fields.get("value", 0))
            for pk in self.expected_scores:
                self.expected_scores[pk] += value
        elif event.kind == "stream":
            self.live = bool(event.fields.get("live"))
            if not self.live:
                self.expected_scores.clear()

    def pk_update(self, update: PkUpdate) -> None:
        if update.state == "started":
            self.expected_scores[update.pk] = int(update.scores.get(self.room, 0))
            if self.host == self.me:
                self.checks.fanout("pk.start", self.checks.now() - update.sent_at)
            return
        expected = self.expected_scores.get(update.pk)
        if expected is None:
            return  # joined during the PK: no baseline to check against
        reported = int(update.scores.get(self.room, 0))
        if reported != expected:
            self.checks.violation(
                "pk_score_mismatch",
                ("pk_score_mismatch", update.pk, update.version),
                f"PK {update.pk} version {update.version}: room {self.room} scored {reported}"
                f" but its gifts add up to {expected}",
            )
            # check the next changes from the backend's figure, so one skew counts once
            self.expected_scores[update.pk] = reported
        if update.state == "ended":
            del self.expected_scores[update.pk]
