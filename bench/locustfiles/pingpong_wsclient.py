"""Ping-pong the way Locust users usually write WebSocket tests: websocket-client under gevent.

    locust -f bench/locustfiles/pingpong_wsclient.py --headless -u 1000 -r 500 --host ws://127.0.0.1:PORT/

A blocking ``websocket.create_connection`` per user (gevent's monkey-patching makes it
cooperative), ``json.loads`` on every answer, and one Locust request event per round trip.
The baseline of the bench (bench/suite.py).
"""

from __future__ import annotations

import json
import time

import websocket
from locust import User, constant, task
from probe import measure_window

MESSAGE = json.dumps({"op": "echo", "id": 1, "ev": "ack", "re": 1, "ts": 1764000000.123456, "body": "x" * 128})
round_trips = 0


class WebSocketClientUser(User):
    wait_time = constant(0)

    def on_start(self) -> None:
        self.ws = websocket.create_connection(self.host)

    def on_stop(self) -> None:
        self.ws.close()

    @task
    def pingpong(self) -> None:
        global round_trips
        fire = self.environment.events.request.fire
        while True:
            started = time.perf_counter()
            self.ws.send(MESSAGE)
            answer = json.loads(self.ws.recv())
            error = None if answer["re"] == 1 else ValueError("wrong answer")
            elapsed_ms = (time.perf_counter() - started) * 1000
            fire(
                request_type="WS", name="echo", response_time=elapsed_ms, response_length=0, exception=error, context={}
            )
            round_trips += 1


measure_window(lambda environment: round_trips)
