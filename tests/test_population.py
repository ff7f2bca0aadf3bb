"""The population model: Zipf-skewed rooms and role shares, the same on every run."""

import random

import pytest

from loadgen.population import Zipf, draw_role, user_random


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
