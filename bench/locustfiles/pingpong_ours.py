"""Ping-pong through the toolkit inside Locust: echo round trips with full accounting.

    locust -f bench/locustfiles/pingpong_ours.py --headless -u 1000 -r 500 --host ws://127.0.0.1:PORT/

Each user holds one Session (reference driver) and sends the echo request, waits for its
answer and sends the next; every round trip goes through the run's reporter like any
other operation (HDR histogram, Prometheus counters, Locust's table). ``BENCH_RATE`` (round
trips per second per user) paces users at a fixed rate instead.
"""

from __future__ import annotations

import os
import time

import gevent
from locust import User, constant, events, task
from probe import measure_window

from loadgen.run import RunContext, install
from loadgen.session import Session

install(events, scenario="pingpong")

BODY = "x" * 128
RATE = float(os.environ.get("BENCH_RATE", "0"))
ECHO = "session.echo"


class EchoUser(User):
    wait_time = constant(0)

    def on_start(self) -> None:
        run = RunContext.of(self.environment)
        self.session = Session(
            run.transport_url, run.driver_factory(), run.accounting.receiver(), reporter=run.report,
            request_timeout=run.request_timeout,
        )  # fmt: skip
        self.session.connect()

    def on_stop(self) -> None:
        self.session.close()

    @task
    def pingpong(self) -> None:
        session = self.session
        if RATE <= 0:
            while True:
                session.echo(BODY, time.time())
        interval = 1.0 / RATE
        # users start spread over one interval, so a fixed rate does not arrive in bursts
        due = time.time() + interval * (hash(self) % 1000) / 1000
        while True:
            wait = due - time.time()
            if wait > 0:
                gevent.sleep(wait)
            session.echo(BODY, due)
            due += interval


def _echo_stats(environment):
    return RunContext.of(environment).accounting.operation(ECHO)


def _latency(environment) -> dict:
    histogram = _echo_stats(environment).histogram
    return {"rtt_p50_ms": histogram.get_value_at_percentile(50) / 1000,
            "rtt_p99_ms": histogram.get_value_at_percentile(99) / 1000}  # fmt: skip


measure_window(lambda environment: _echo_stats(environment).count,
               lambda environment: _echo_stats(environment).histogram.reset(), _latency)  # fmt: skip
