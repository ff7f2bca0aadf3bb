"""The load a process's users ask for, judged against the bench's per-core figures."""

from loadgen import planning
from loadgen.scenarios.base import MarkRead, PostToRoom


class Member:
    """What planning reads of a user: its rooms and its activities."""

    def __init__(self, rooms, activities):
        self.rooms = rooms
        self._activities = activities

    def activities(self):
        return self._activities

    def storm_multiplier(self, kind):
        return 1.0


def always(activity):
    return True


def test_room_posts_count_once_per_other_member_and_other_activities_once():
    users = [Member(["a"], [PostToRoom(2.0, 10), MarkRead(1.0)]) for _ in range(4)]
    users += [Member(["b"], [PostToRoom(2.0, 10)])]
    asked = planning.demand(users, always)
    assert asked.users == 5
    assert asked.operations == 4 * 3.0 + 2.0
    # room a: 4 members posting 2/s to 3 others each; room b: a member alone reaches nobody
    assert asked.deliveries == 4 * 2.0 * 3


def test_a_user_in_several_rooms_spreads_its_posts_over_them():
    users = [Member(["a", "b"], [PostToRoom(1.0, 10)])] + [Member(["a"], []) for _ in range(3)]
    assert planning.demand(users, always).deliveries == (3 + 0) / 2


def test_activities_the_driver_cannot_do_ask_for_nothing():
    users = [Member(["a"], [PostToRoom(5.0, 10)]) for _ in range(3)]
    asked = planning.demand(users, lambda activity: not isinstance(activity, PostToRoom))
    assert (asked.operations, asked.deliveries) == (0, 0)


def test_advice_only_past_a_comfortable_share_and_names_how_many_processes():
    light = planning.Demand(10, 100, 100)
    assert planning.advice(light) is None
    heavy = planning.Demand(1000, planning.OPERATIONS_PER_CORE, planning.DELIVERIES_PER_CORE)
    text = planning.advice(heavy)
    assert "2.0 cores" in text and "--processes 3" in text
