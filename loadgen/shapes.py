"""Load shapes: a profile's ``shape:`` section as a Locust ``LoadTestShape`` (docs/shapes.md).

The timeline is a pure function of elapsed seconds, :func:`users_at`, so it is tested
without Locust; :class:`ProfileShape` only asks Locust for the run time and hands the
answer back as ``(users, spawn_rate)``.

A locustfile does not define a shape class: Locust would then run the shape and ignore
``-u``/``-r``/``-t`` even for profiles without a ``shape:``. The run's init hook calls
:func:`install_shape` instead, which sets ``environment.shape_class`` only when the profile
has a shape; Locust reads that attribute after the init event, when it starts the test.
"""

from __future__ import annotations

import logging
import math

from locust.env import Environment
from locust.runners import WorkerRunner
from locust.shape import LoadTestShape

from loadgen.profile import Profile, ShapeProfile

log = logging.getLogger("loadgen.shapes")


def duration_of(shape: ShapeProfile) -> float:
    """Seconds from the start of the test to the moment the shape stops it."""
    if shape.kind == "ramp":
        return shape.duration + shape.hold
    if shape.kind == "step":
        return shape.steps * shape.step_duration
    return shape.duration


def users_at(shape: ShapeProfile, elapsed: float) -> int | None:
    """The target number of users ``elapsed`` seconds into the test; None once the shape is over."""
    if elapsed >= duration_of(shape):
        return None
    elapsed = max(elapsed, 0.0)
    if shape.kind == "ramp":
        # rounded up, so the first tick starts a user; the tolerance keeps 100 * 0.3 / 1 at 30
        return min(shape.users, math.ceil(shape.users * elapsed / shape.duration - 1e-9))
    if shape.kind == "step":
        step = min(int(elapsed // shape.step_duration), shape.steps - 1)
        return shape.users * (step + 1) // shape.steps
    if shape.kind == "spike":
        in_spike = shape.spike_at <= elapsed < shape.spike_at + shape.spike_duration
        return shape.spike_users if in_spike else shape.baseline
    if shape.kind == "soak":
        wave = int(elapsed // shape.wave_every)
        in_wave = wave >= 1 and elapsed - wave * shape.wave_every < shape.wave_duration
        return shape.users - round(shape.users * shape.wave_depth) if in_wave else shape.users
    raise ValueError(f"unknown shape kind {shape.kind!r}")


def tick_at(shape: ShapeProfile, elapsed: float, stop_after: float | None = None) -> tuple[int, float] | None:
    """What ``LoadTestShape.tick`` answers at ``elapsed``: ``(users, spawn_rate)``, or None to stop the test."""
    if stop_after is not None and elapsed >= stop_after:
        return None
    users = users_at(shape, elapsed)
    return None if users is None else (users, shape.spawn_rate)


class ProfileShape(LoadTestShape):
    """A load shape read from a profile; :func:`shape_class` makes the configured subclasses."""

    #: Locust's locustfile loader skips abstract shapes, so importing this class selects nothing
    abstract = True
    #: the shape this class follows
    shape: ShapeProfile
    #: stop at this many seconds even if the shape goes on (``-t`` with a profile shape)
    stop_after: float | None = None

    def tick(self) -> tuple[int, float] | None:
        return tick_at(self.shape, self.get_run_time(), self.stop_after)


def shape_class(profile: Profile, stop_after: float | None = None) -> type[ProfileShape] | None:
    """A ``LoadTestShape`` subclass following ``profile.shape``, or None when the profile has no shape."""
    if profile.shape is None:
        return None
    name = f"Profile{profile.shape.kind.capitalize()}Shape"
    namespace = {"shape": profile.shape, "stop_after": stop_after, "abstract": False, "__module__": __name__}
    return type(name, (ProfileShape,), namespace)


def install_shape(environment: Environment, profile: Profile) -> ProfileShape | None:
    """From the init event: let the profile's shape drive the test; a profile without one changes nothing.

    Sets ``environment.shape_class`` (Locust's name; it holds an instance) and attaches the
    runner, as ``Environment.create_*_runner`` would have. ``-t`` caps the shape; ``-u`` and
    ``-r`` are ignored with a warning. Workers get nothing: the master runs the shape.
    """
    if profile.shape is None or isinstance(environment.runner, WorkerRunner):
        return None
    options = environment.parsed_options
    run_time = getattr(options, "run_time", None) or None
    cls = shape_class(profile, stop_after=run_time)
    assert cls is not None
    shape = cls()
    shape.runner = environment.runner
    environment.shape_class = shape
    # the web UI's class picker offers what is listed here; without it a swarm would drop the shape
    environment.available_shape_classes = {**(environment.available_shape_classes or {}), cls.__name__: shape}
    ignored = [flag for flag, attr in (("-u", "num_users"), ("-r", "spawn_rate")) if getattr(options, attr, None)]
    if ignored:
        log.warning("The profile's %s shape decides the users; %s ignored", profile.shape.kind, " and ".join(ignored))
    total = duration_of(profile.shape)
    if run_time is not None and run_time < total:
        log.info("Load shape %s: %g s of %g s (cut by -t)", profile.shape.kind, run_time, total)
    else:
        log.info("Load shape %s: %g s", profile.shape.kind, total)
    return shape


__all__ = ["ProfileShape", "duration_of", "install_shape", "shape_class", "tick_at", "users_at"]
