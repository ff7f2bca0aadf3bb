"""Live streams: hosts with co-hosts (连麦) and PK battles; viewers who gift, chat, apply and call.

    locust -f locustfiles/livestream.py --headless -u 300 -r 100 -t 60s

Without --host, a reference backend starts on a free loopback port.
"""

from locust import events

from loadgen.run import install
from loadgen.scenarios.livestream import LiveStreamUser

install(events, scenario="livestream")

__all__ = ["LiveStreamUser"]
