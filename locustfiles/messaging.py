"""Chat messaging: users post to rooms, message each other, mark messages read, reconnect.

    locust -f locustfiles/messaging.py --headless -u 200 -r 100 -t 60s
    locust -f locustfiles/messaging.py --profile locustfiles/profiles/messaging.yaml --host ws://staging:8765

Without --host, a reference backend starts on a free loopback port.
"""

from locust import events

from loadgen.run import install
from loadgen.scenarios.messaging import ChatUser

install(events, scenario="messaging")

__all__ = ["ChatUser"]
