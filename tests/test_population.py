"""The population model: Zipf-skewed rooms and role shares, the same on every run."""

import random

import pytest

from loadgen.population import Zipf, draw_role, make_user_id, user_random, worker_tag


def test_zipf_makes_the_first_rooms_hot():
    """Draws follow 1/(rank+1)^s: the top room gets about its expected share, far above the last."""
    zipf = Zipf(20, 1.1)
    rng = random.Random(1)
    counts = [0] * 20
    for _ in range(20000):
        counts[zipf.draw(rng)] += 1
    assert counts[0] / 20000 == pytest.approx(zipf.share(0), abs=0.02)
    assert counts[0] > 10 * counts[19]
    assert sum(zipf.share(r) for r in range(20)) == pytest.approx(1.0)


def test_zero_skew_is_uniform():
    """With s = 0 every room is equally likely."""
    zipf = Zipf(4, 0)
    assert [zipf.share(r) for r in range(4)] == pytest.approx([0.25] * 4)


def test_same_user_same_draws():
    """A user's room and role come out the same on every run."""
    first = user_random("voiceroom", 42)
    second = user_random("voiceroom", 42)
    zipf = Zipf(10, 1.0)
    assert zipf.draw(first) == zipf.draw(second)
    assert draw_role(first, {"a": 0.5}, "b") == draw_role(second, {"a": 0.5}, "b")


def test_roles_follow_shares():
    """Roles are drawn by their shares; what the shares leave goes to the rest role."""
    rng = random.Random(3)
    roles = [draw_role(rng, {"hopper": 0.25, "gifter": 0.25}, "listener") for _ in range(8000)]
    assert roles.count("listener") / 8000 == pytest.approx(0.5, abs=0.03)
    assert roles.count("hopper") / 8000 == pytest.approx(0.25, abs=0.03)


def test_draws_are_fixed_by_worker_index_and_differ_between_workers():
    """User n of worker w draws the same on every run; user n of another worker draws on its own."""
    zipf = Zipf(50, 1.0)

    def rooms(worker: int | None) -> list[int]:
        return [zipf.draw(user_random("voiceroom", n, worker)) for n in range(200)]

    assert rooms(0) == rooms(0) and rooms(1) == rooms(1)
    assert rooms(0) != rooms(1) and rooms(None) != rooms(0)


def test_hot_rooms_have_members_on_every_worker():
    """Split 400 users over 4 workers: each of the three hottest rooms gets users from all four."""
    zipf = Zipf(50, 1.0)
    members: dict[int, set[int]] = {}
    for worker in range(4):
        for n in range(100):
            members.setdefault(zipf.draw(user_random("voiceroom", n, worker)), set()).add(worker)
    assert all(members[rank] == {0, 1, 2, 3} for rank in range(3))


def test_user_ids_name_their_worker():
    """Ids are unique across workers and say which worker's clock stamped a message."""
    assert make_user_id(None, 7) == "u7" and worker_tag("u7") is None
    assert make_user_id(3, 7) == "w3-u7" and worker_tag("w3-u7") == "w3"
    assert worker_tag("wx-u1") is None and worker_tag("alice") is None
