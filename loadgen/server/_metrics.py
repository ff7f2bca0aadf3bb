"""Counters of the reference backend and their Prometheus exposition."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer

from prometheus_client import CollectorRegistry, MetricsHandler
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ._config import BUG_KINDS, FAULT_KINDS, FRAME_FAULT_KINDS

OPS = (
    "login",
    "join",
    "leave",
    "send",
    "dm",
    "read",
    "history",
    "time",
    "echo",
    "logout",
    "seat.take",
    "seat.leave",
    "seat.lock",
    "seat.mute",
    "seat.kick",
    "seat.invite",
    "seat.accept",
    "gift",
    "danmaku",
    "settings",
    "stream.start",
    "stream.stop",
    "cohost.request",
    "cohost.accept",
    "cohost.reject",
    "cohost.leave",
    "pk.invite",
    "pk.accept",
    "pk.reject",
    "call.invite",
    "call.accept",
    "call.reject",
    "call.hangup",
    "media.open",
    "media.close",
)
# Frames that never named a known op are counted under this label, keeping the label set closed.
INVALID_OP = "invalid"
ERROR_CODES = (
    "bad_json",
    "bad_request",
    "unknown_op",
    "not_logged_in",
    "auth_failed",
    "already_logged_in",
    "not_member",
    "not_found",
    "too_large",
    "forbidden",
    "host_taken",
    "seat_taken",
    "seat_locked",
    "no_free_seat",
    "already_seated",
    "not_seated",
    "no_invite",
    "not_live",
    "no_request",
    "stage_full",
    "no_host",
    "pk_busy",
    "busy",
    "offline",
    "no_call",
    "rate_limited",
)
MESSAGE_KINDS = ("room", "dm")
SEAT_CHANGE_KINDS = ("take", "leave", "lock", "unlock", "mute", "unmute", "kick", "accept", "cohost")
# How each call attempt ended up: answered, refused, unanswered, called off while ringing
# (hangup or a party gone), or never started because a party was busy.
CALL_OUTCOMES = ("connected", "rejected", "timeout", "cancelled", "busy")
# Why the backend closed a connection that broke a limit: a flood past the rate cap (1008),
# a frame over --max-frame (1009).
LIMIT_CLOSE_REASONS = ("flood", "too_big")
# How the media relay's frames ended up: received, not_seated, not_selected and malformed count
# frames (or datagrams) that came in; forwarded and injected_loss count copies, one per recipient.
MEDIA_OUTCOMES = ("received", "forwarded", "not_seated", "not_selected", "malformed", "injected_loss")


class ServerStats:
    """Plain integer counters.

    They are bumped on the event loop's hot path, where a lock per increment (as
    ``prometheus_client.Counter`` takes) would cost more than the work it counts; the
    collector reads them at scrape time instead.
    """

    __slots__ = (
        "requests",
        "errors",
        "messages",
        "deliveries",
        "faults",
        "bugs",
        "seat_changes",
        "gifts",
        "calls",
        "frame_faults",
        "limit_closes",
        "media_frames",
    )

    def __init__(self) -> None:
        self.requests = dict.fromkeys((*OPS, INVALID_OP), 0)
        self.errors = dict.fromkeys(ERROR_CODES, 0)
        self.messages = dict.fromkeys(MESSAGE_KINDS, 0)
        self.deliveries = dict.fromkeys(MESSAGE_KINDS, 0)
        self.faults = dict.fromkeys(FAULT_KINDS, 0)
        # Exposed with ``faults`` as refserver_injected_faults_total, kept apart because
        # they break the backend's own invariants rather than message deliveries.
        self.bugs = dict.fromkeys(BUG_KINDS, 0)
        self.seat_changes = dict.fromkeys(SEAT_CHANGE_KINDS, 0)
        self.gifts = 0
        self.calls = dict.fromkeys(CALL_OUTCOMES, 0)
        # Also exposed as refserver_injected_faults_total: faults of frames rather than of deliveries.
        self.frame_faults = dict.fromkeys(FRAME_FAULT_KINDS, 0)
        self.limit_closes = dict.fromkeys(LIMIT_CLOSE_REASONS, 0)
        self.media_frames = dict.fromkeys(MEDIA_OUTCOMES, 0)


class Gauges:
    """Current-state readings computed when scraped."""

    __slots__ = (
        "connections",
        "logged_in_users",
        "rooms",
        "outbox_frames",
        "seated_users",
        "live_streams",
        "pks",
        "calls_in_progress",
        "media_sessions",
    )

    def __init__(
        self,
        connections: Callable[[], int],
        logged_in_users: Callable[[], int],
        rooms: Callable[[], int],
        outbox_frames: Callable[[], int],
        seated_users: Callable[[], int],
        live_streams: Callable[[], int],
        pks: Callable[[], int],
        calls_in_progress: Callable[[], int],
        media_sessions: Callable[[], int],
    ) -> None:
        self.connections = connections
        self.logged_in_users = logged_in_users
        self.rooms = rooms
        self.outbox_frames = outbox_frames
        self.seated_users = seated_users
        self.live_streams = live_streams
        self.pks = pks
        self.calls_in_progress = calls_in_progress
        self.media_sessions = media_sessions


class ServerCollector(Collector):
    """Exposes ``ServerStats`` and ``Gauges`` as ``refserver_*`` metrics."""

    def __init__(self, stats: ServerStats, gauges: Gauges) -> None:
        self._stats = stats
        self._gauges = gauges

    def collect(self) -> Iterator[Metric]:
        gauges = self._gauges
        yield GaugeMetricFamily("refserver_connections", "Open WebSocket connections.", value=gauges.connections())
        yield GaugeMetricFamily(
            "refserver_logged_in_users", "Connections with a logged-in user.", value=gauges.logged_in_users()
        )
        yield GaugeMetricFamily("refserver_rooms", "Rooms with at least one member.", value=gauges.rooms())
        yield GaugeMetricFamily(
            "refserver_outbox_frames",
            "Frames queued for writing to connections; growth means slow consumers.",
            value=gauges.outbox_frames(),
        )
        yield GaugeMetricFamily("refserver_seated_users", "Occupied mic seats, all rooms.", value=gauges.seated_users())
        yield GaugeMetricFamily("refserver_live_streams", "Rooms whose stream is live.", value=gauges.live_streams())
        yield GaugeMetricFamily("refserver_pks", "PK battles running (accepted, not ended).", value=gauges.pks())
        yield GaugeMetricFamily(
            "refserver_calls_in_progress", "1v1 calls ringing or connected.", value=gauges.calls_in_progress()
        )
        yield GaugeMetricFamily(
            "refserver_media_sessions", "Open media sessions (media.open), all rooms.", value=gauges.media_sessions()
        )
        stats = self._stats
        yield _counter("refserver_requests", "Request frames received, by op.", "op", stats.requests)
        yield _counter("refserver_errors", "Error replies sent, by code.", "code", stats.errors)
        yield _counter("refserver_messages", "Messages accepted and sequenced, by kind.", "kind", stats.messages)
        yield _counter(
            "refserver_deliveries",
            "Pushes of messages to recipient connections before fault injection, by kind.",
            "kind",
            stats.deliveries,
        )
        yield _counter(
            "refserver_injected_faults",
            "Faults and bugs injected on purpose, by kind.",
            "kind",
            {**stats.faults, **stats.bugs, **stats.frame_faults},
        )
        yield _counter(
            "refserver_limit_closes",
            "Connections closed for breaking a limit, by reason: flood (1008) or too_big (1009).",
            "reason",
            stats.limit_closes,
        )
        yield _counter(
            "refserver_seat_changes",
            "Seat changes broadcast as snapshots, by change kind.",
            "kind",
            stats.seat_changes,
        )
        yield CounterMetricFamily("refserver_gifts", "Gifts accepted and broadcast.", value=stats.gifts)
        yield _counter("refserver_calls", "1v1 call attempts, by outcome.", "outcome", stats.calls)
        yield _counter(
            "refserver_media_frames",
            "Media frames by outcome: received, not_seated, not_selected, malformed as they came in; "
            "forwarded, injected_loss per recipient copy.",
            "outcome",
            stats.media_frames,
        )


def _counter(name: str, documentation: str, label: str, values: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    # A copy, because the event loop thread may bump the counters while this scrape thread reads.
    for key, value in dict(values).items():
        family.add_metric([key], value)
    return family


class MetricsServer:
    """``/metrics`` over HTTP, served from a daemon thread."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        handler = type("_Handler", (MetricsHandler.factory(registry),), {"log_message": _quiet})
        server_class = _IPv6Server if ":" in host else ThreadingHTTPServer
        self._httpd = server_class((host, port), handler)
        # A short poll interval bounds how long stop() waits for the serving thread.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="refserver-metrics",
            daemon=True,
        )

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Blocks until the serving thread ends."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def _quiet(*_args: object) -> None:
    """Scrapes every few seconds would otherwise fill stderr with access lines."""
