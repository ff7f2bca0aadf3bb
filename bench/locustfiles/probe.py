"""The bench's window on a Locust run: counts and CPU time over a measured span, then quit.

Set by the bench through the environment: ``BENCH_RESULT`` (where to write one JSON
object), ``BENCH_WARMUP`` (seconds after the last user started before measuring) and
``BENCH_SECONDS`` (the span). CPU time is the process's own, read in-process, so the
figure is the cost of this generator process alone.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

import gevent
from locust import events
from locust.env import Environment


def measure_window(
    count: Callable[[Environment], int],
    on_window_start: Callable[[Environment], None] = lambda environment: None,
    extra: Callable[[Environment], dict] = lambda environment: {},
) -> None:
    """Measure ``count(environment)`` over the window; ``extra`` adds figures (latency) at its end."""
    result_path = os.environ.get("BENCH_RESULT")
    if not result_path:
        return
    warmup = float(os.environ.get("BENCH_WARMUP", "3"))
    seconds = float(os.environ.get("BENCH_SECONDS", "10"))
    environments: list[Environment] = []

    def window(environment: Environment) -> None:
        gevent.sleep(warmup)
        on_window_start(environment)
        count0, cpu0, wall0 = count(environment), time.process_time(), time.monotonic()
        gevent.sleep(seconds)
        count1, cpu1, wall1 = count(environment), time.process_time(), time.monotonic()
        result = {
            "messages": count1 - count0,
            "cpu_seconds": cpu1 - cpu0,
            "wall_seconds": wall1 - wall0,
            "users": environment.runner.user_count,
            **extra(environment),
        }
        with open(result_path, "w") as out:
            json.dump(result, out)
        environment.runner.quit()

    events.init.add_listener(lambda environment, **_kwargs: environments.append(environment))
    events.spawning_complete.add_listener(lambda **_kwargs: gevent.spawn(window, environments[-1]))
