"""Load shapes: the timeline of each kind, its checks, and a real Locust runner following it."""

import argparse
import logging
import subprocess
import sys
import time
from pathlib import Path

import gevent
import pytest
from locust import User, constant, task
from locust.env import Environment
from locust.event import Events
from locust.runners import STATE_STOPPED

from loadgen.profile import Profile, ShapeProfile, load_profile
from loadgen.shapes import duration_of, install_shape, shape_class, tick_at, users_at
from tests.support import SCALE, profile_error

ROOT = Path(__file__).resolve().parent.parent


class Sleeper(User):
    """A user that does nothing but wait, so a test measures the runner alone."""

    wait_time = constant(60)

    @task
    def idle(self) -> None:
        pass


def test_ramp_grows_linearly_then_holds_then_stops():
    """A ramp's target rises in proportion to time, holds at users, and ends after duration plus hold."""
    shape = ShapeProfile(kind="ramp", users=100, duration=10, hold=5)
    assert [users_at(shape, t) for t in (0, 0.05, 3, 5, 10, 12, 14.9)] == [0, 1, 30, 50, 100, 100, 100]
    assert users_at(shape, 15) is None
    assert duration_of(shape) == 15


def test_step_climbs_in_equal_steps_and_stops_after_the_last():
    """A step shape holds each of its steps for step_duration, ending exactly at users."""
    shape = ShapeProfile(kind="step", users=100, steps=3, step_duration=10)
    assert [users_at(shape, t) for t in (0, 9.9, 10, 20, 29.9)] == [33, 33, 66, 100, 100]
    assert users_at(shape, 30) is None


def test_spike_goes_from_baseline_to_the_burst_and_back():
    """A spike runs baseline users, spike_users during the spike, then baseline until duration."""
    shape = ShapeProfile(kind="spike", baseline=10, spike_users=200, spike_at=20, spike_duration=10, duration=60)
    assert [users_at(shape, t) for t in (0, 19.9, 20, 29.9, 30, 59.9)] == [10, 10, 200, 200, 10, 10]
    assert users_at(shape, 60) is None


def test_soak_waves_dip_and_recover_and_the_soak_stops_at_duration():
    """A soak holds users, drops wave_depth of them for wave_duration every wave_every, and stops at duration."""
    shape = ShapeProfile(kind="soak", users=100, duration=7200, wave_every=900, wave_depth=0.3, wave_duration=120)
    assert [users_at(shape, t) for t in (0, 899, 900, 1019, 1020, 1800, 1920)] == [100, 100, 70, 70, 100, 70, 100]
    assert users_at(shape, 7199) == 100 and users_at(shape, 7200) is None


def test_tick_pairs_the_target_with_the_spawn_rate_and_honours_a_cap():
    """A tick is (users, spawn_rate) until the shape ends or the run-time cap is reached, whichever is first."""
    shape = ShapeProfile(kind="step", users=10, steps=2, step_duration=10, spawn_rate=5)
    assert tick_at(shape, 12) == (10, 5.0)
    assert tick_at(shape, 20) is None
    assert tick_at(shape, 12, stop_after=12) is None


def test_profile_without_shape_gives_no_shape_class(tmp_path):
    """A profile without a shape section selects no shape, so -u, -r and -t keep their meaning."""
    path = tmp_path / "p.yaml"
    path.write_text("messaging:\n  rooms: 3\n")
    assert load_profile(path).shape is None
    assert shape_class(load_profile(path)) is None
    environment = Environment(user_classes=[Sleeper], events=Events())
    environment.create_local_runner()
    assert install_shape(environment, load_profile(path)) is None
    assert environment.shape_class is None


def test_shape_section_is_read_with_its_own_knobs(tmp_path):
    """A shape section sits beside the scenario sections and keeps defaults for what it leaves out."""
    path = tmp_path / "p.yaml"
    path.write_text("voiceroom:\n  rooms: 4\nshape:\n  kind: soak\n  users: 50\n  duration: 3600\n")
    profile = load_profile(path)
    assert profile.voiceroom.rooms == 4
    assert profile.shape == ShapeProfile(kind="soak", users=50, duration=3600.0)


@pytest.mark.parametrize(
    "text, where",
    [
        ("shape:\n  kind: wave\n", ":2: shape.kind: must be one of ramp, step, spike, soak"),
        ("shape:\n  kind: ramp\n  users: 0\n", ":3: shape.users: must be at least 1"),
        ("shape:\n  kind: step\n  steps: lots\n", ":3: shape.steps: must be a"),
        ("shape:\n  kind: step\n  hold: 30\n", ":3: shape.hold: is not a knob of kind step"),
        ("shape:\n  kind: spike\n  users: 30\n", ":3: shape.users: is not a knob of kind spike"),
        ("shape:\n  kind: soak\n  wave_depth: 1.5\n", ":3: shape.wave_depth: must be at most 1"),
        ("shape:\n  kind: spike\n  baseline: 50\n  spike_users: 40\n", ":4: shape.spike_users: must exceed baseline"),
        ("shape:\n  kind: spike\n  spike_at: 50\n  duration: 60\n", ":4: shape.duration: must be at least spike_at"),
        ("shape:\n  kind: soak\n  wave_every: 60\n  wave_duration: 60\n", ":4: shape.wave_duration: must be shorter"),
        ("shape:\n  kind: ramp\n  users: 1000\n  duration: 10\n  spawn_rate: 5\n", ":5: shape.spawn_rate: moving"),
        ("shape:\n  kind: ramp\n  users: 1000\n  duration: 10\n", ":3: shape.users: moving 1000 users in 10 s"),
        ("shape:\n  kind: soak\n  spawn_rate: 0.1\n", ":3: shape.spawn_rate: moving 20 users in 60 s needs"),
        ("shape: 3\n", ":1: shape: must be a mapping"),
    ],
)
def test_bad_shape_sections_name_file_line_and_key(tmp_path, text, where):
    """Every mistake in a shape section is reported with the file, the line and the key."""
    assert where in profile_error(tmp_path, text)


def test_install_shape_caps_at_run_time_and_warns_of_ignored_users(caplog):
    """With -t, the installed shape stops at the run time; a warning says -u is ignored."""
    profile = Profile(shape=ShapeProfile(kind="ramp", users=10, duration=10, hold=100))
    environment = Environment(user_classes=[Sleeper], events=Events())
    environment.parsed_options = argparse.Namespace(run_time=30, num_users=5, spawn_rate=None)
    runner = environment.create_local_runner()
    with caplog.at_level(logging.INFO, logger="loadgen.shapes"):
        shape = install_shape(environment, profile)
    assert environment.shape_class is shape and shape.runner is runner
    assert shape.stop_after == 30 and type(shape).__name__ in environment.available_shape_classes
    assert "-u ignored" in caplog.text and "30 s of 110 s" in caplog.text


def test_a_real_runner_follows_an_installed_step_shape():
    """A local runner given a step shape at init time reaches each step's user count and stops at the end."""
    profile = Profile(shape=ShapeProfile(kind="step", users=6, steps=3, step_duration=1, spawn_rate=100))
    environment = Environment(user_classes=[Sleeper], events=Events())
    runner = environment.create_local_runner()
    install_shape(environment, profile)  # as the run's init hook does, after the runner exists
    seen = set()
    try:
        runner.start_shape()
        deadline = time.monotonic() + 8 * SCALE
        while runner.shape_greenlet is not None and time.monotonic() < deadline:
            seen.add(runner.user_count)
            gevent.sleep(0.05)
        assert {2, 4, 6} <= seen
        assert runner.shape_greenlet is None and runner.state == STATE_STOPPED and runner.user_count == 0
    finally:
        runner.quit()


def test_shipped_profiles_with_shapes_load():
    """Every profile shipped with the locustfiles loads, and the shape examples carry the shape they are named for."""
    profiles = {path.name: load_profile(path) for path in (ROOT / "locustfiles" / "profiles").glob("*.yaml")}
    kinds = {name: profile.shape.kind for name, profile in profiles.items() if profile.shape is not None}
    assert kinds == {
        "voiceroom-ramp.yaml": "ramp",
        "messaging-step.yaml": "step",
        "livestream-spike.yaml": "spike",
        "voiceroom-soak-2h.yaml": "soak",
        "review.yaml": "ramp",
    }
    assert duration_of(profiles["voiceroom-soak-2h.yaml"].shape) == 7200


LOCUSTFILE = """
from locust import User, constant, events, task

from loadgen.profile import load_profile
from loadgen.shapes import install_shape


class Sleeper(User):
    wait_time = constant(60)

    @task
    def idle(self):
        pass


@events.init.add_listener
def on_init(environment, **_kwargs):
    install_shape(environment, load_profile(environment.parsed_options.profile))
"""


def test_the_locust_command_runs_a_shape_installed_from_the_init_event(tmp_path):
    """Headless `locust` follows a shape set in an init listener, ignoring -u and -r, and exits when it ends."""
    (tmp_path / "shaped.py").write_text(LOCUSTFILE)
    profile = tmp_path / "p.yaml"
    profile.write_text("shape:\n  kind: step\n  users: 4\n  steps: 2\n  step_duration: 1\n  spawn_rate: 100\n")
    command = [sys.executable, "-m", "locust", "-f", "shaped.py", "--headless", "--only-summary",
               "-u", "50", "-r", "5", "--profile", str(profile)]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=30 * SCALE)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Shape test updating to 2 users" in output and "Shape test updating to 4 users" in output
    assert "Shape test completed" in output and "50 users" not in output
