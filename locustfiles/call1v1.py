"""1v1 calls: callers ring callees, who answer, talk and hang up; call setup timed on both sides.

    locust -f locustfiles/call1v1.py --headless -u 200 -r 100 -t 60s

Without --host, a reference backend starts on a free loopback port.
"""

from locust import events

from loadgen.run import install
from loadgen.scenarios.calls import CallUser

install(events, scenario="call1v1")

__all__ = ["CallUser"]
