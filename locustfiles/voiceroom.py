"""Voice rooms with mic seats: hosts, seat hoppers, gifters, danmaku chatters and listeners.

    locust -f locustfiles/voiceroom.py --headless -u 500 -r 100 -t 60s
    locust -f locustfiles/voiceroom.py --profile locustfiles/profiles/voiceroom-giftstorm.yaml

Without --host, a reference backend starts on a free loopback port.
"""

from locust import events

from loadgen.run import install
from loadgen.scenarios.voiceroom import VoiceRoomUser

install(events, scenario="voiceroom")

__all__ = ["VoiceRoomUser"]
