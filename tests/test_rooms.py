"""Room views from hand-built snapshots: each invariant caught once, none invented."""

import pytest

from loadgen.drivers.base import JoinResult, PkUpdate, RoomEvent, Seat, SeatChange, SeatSnapshot
from loadgen.rooms import Checks, RoomView


class Findings:
    def __init__(self) -> None:
        self.violations: list[tuple[str, tuple]] = []
        self.fanouts: list[tuple[str, float]] = []
        self.now = 100.0

    def checks(self) -> Checks:
        return Checks(
            lambda kind, key, evidence: self.violations.append((kind, key)),
            lambda name, seconds: self.fanouts.append((name, seconds)),
            lambda: self.now,
        )

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.violations]


@pytest.fixture
def found():
    return Findings()


def seats(*users, locked=()):
    return tuple(Seat(n, user, False, n in locked) for n, user in enumerate(users))


def snap(version, users, kind=None, seat=0, user=None, by=None, ts=99.9, room="v1"):
    change = None if kind is None else SeatChange(kind, seat, user, by or user, ts)
    return SeatSnapshot(room, version, seats(*users), change)


def view_at(found, users, version=5, me="me"):
    view = RoomView(me, "v1", found.checks())
    view.joined(JoinResult("v1", 0, 3, "host", snap(version, users), False))
    return view


def test_ordinary_churn_raises_nothing_and_times_fanout(found):
    """Takes, leaves, kicks and locks in order are not violations; each change is a fan-out sample."""
    view = view_at(found, [None, None, None])
    view.snapshot(snap(6, ["a", None, None], "take", 0, "a"))
    view.snapshot(snap(7, ["a", "b", None], "take", 1, "b"))
    view.snapshot(snap(8, [None, "b", None], "kick", 0, "a", by="host"))
    view.snapshot(snap(9, [None, None, None], "lock", 1, "b", by="host"))
    assert found.violations == []
    assert [name for name, _ in found.fanouts] == ["seat.fanout"] * 4
    assert found.fanouts[0][1] == pytest.approx(0.1)


def test_take_of_an_occupied_seat_is_a_conflict(found):
    """A seat handed to one user while another sits on it is a seat conflict."""
    view = view_at(found, ["a", None])
    view.snapshot(snap(6, ["b", None], "take", 0, "b"))
    assert found.kinds() == ["seat_conflict"]


def test_user_on_two_seats_is_a_conflict(found):
    """One user listed on two seats is a seat conflict."""
    view = view_at(found, [None, None])
    view.snapshot(snap(6, ["a", "a"], "take", 1, "a"))
    assert found.kinds() == ["seat_conflict"]


def test_version_going_back_is_caught_each_time(found):
    """Each snapshot stamped below the version due is a regress, even several in a row."""
    view = view_at(found, [None, None, None], version=5)
    view.snapshot(snap(6, ["a", None, None], "take", 0, "a"))
    view.snapshot(snap(5, ["a", "b", None], "take", 1, "b"))
    view.snapshot(snap(6, ["a", "b", "c"], "take", 2, "c"))
    view.snapshot(snap(7, ["a", "b", None], "leave", 2, "c"))
    view.snapshot(snap(10, ["a", "b", None], "mute", 1, "b"))
    assert found.kinds() == ["seat_version_regress"] * 3
    assert view.version == 10


def test_repeated_version_is_a_regress(found):
    """Two changes stamped with the same version mean the version failed to go up."""
    view = view_at(found, [None, None], version=5)
    view.snapshot(snap(6, ["a", None], "take", 0, "a"))
    view.snapshot(snap(6, ["a", "b"], "take", 1, "b"))
    assert found.kinds() == ["seat_version_regress"]


def test_seat_taken_away_silently_is_a_phantom_for_its_holder(found):
    """A user seated by the backend who then sees someone else on its seat without being removed reports it."""
    view = view_at(found, [None, None])
    view.snapshot(snap(6, ["me", None], "take", 0, "me"))
    view.snapshot(snap(7, ["x", None], "take", 0, "x"))
    assert sorted(found.kinds()) == ["seat_conflict", "seat_phantom"]


def test_being_kicked_is_not_a_phantom(found):
    """Losing a seat through a kick is an ordinary change."""
    view = view_at(found, [None])
    view.snapshot(snap(6, ["me"], "take", 0, "me"))
    view.snapshot(snap(7, [None], "kick", 0, "me", by="host"))
    assert found.violations == [] and view.my_seat is None


def test_being_put_on_stage_times_cohost_accept(found):
    """Seeing oneself put on stage by the host is a cohost.accept sample."""
    seated = []
    view = RoomView("me", "v1", found.checks(), on_seated=lambda seat, how: seated.append((seat, how)))
    view.joined(JoinResult("v1", 0, 3, "host", snap(0, [None, None]), True))
    view.snapshot(snap(1, [None, "me"], "cohost", 1, "me", by="host", ts=99.5))
    assert ("cohost.accept", pytest.approx(0.5)) in found.fanouts
    assert seated == [(1, "cohost")] and view.my_seat == 1


def gift(count, value, room="v1"):
    return RoomEvent("gift", room, "g", 99.0, {"count": count, "value": value, "gift": "rose"})


def pk(state, version, score, pk_id="p1"):
    return PkUpdate(pk_id, state, ("v1", "v2"), {"v1": score, "v2": 0}, version, 99.0)


def test_pk_scores_that_add_up_pass_and_skew_is_caught_once(found):
    """PK scores equal to the gifts seen pass; a skewed score is one violation, later updates judged from it."""
    view = view_at(found, [None])
    view.pk_update(pk("started", 0, 0))
    view.room_event(gift(2, 10))
    view.pk_update(pk("score", 1, 20))
    view.room_event(gift(1, 10))
    view.pk_update(pk("score", 2, 31))
    view.room_event(gift(1, 5))
    view.pk_update(pk("ended", 3, 36))
    assert found.kinds() == ["pk_score_mismatch"]
    assert ("gift.fanout", pytest.approx(1.0)) in found.fanouts


def test_pk_joined_midway_is_not_judged(found):
    """A member who missed the PK start has no baseline and reports nothing."""
    view = view_at(found, [None])
    view.room_event(gift(1, 10))
    view.pk_update(pk("score", 4, 999))
    assert found.violations == []
