"""``loadgen webrtc``: a few real WebRTC peers (aiortc) in a Janus AudioBridge or VideoRoom room.

The Locust scenarios drive Janus' signalling only; this command checks its media plane. N
publishers send a tone (or a tone in talk spurts) for a bounded time, M listeners receive, and
each listener reports when it first *heard* audio (a decoded frame above ``AUDIBLE_RMS``, since
AudioBridge sends mixer silence from the moment a listener is connected), the RTP packets it
received and lost (gaps in the sequence numbers), the interarrival jitter of RFC 3550, and the
ICE and connection events of every peer. ``--drop-every N`` drops every Nth RTP packet a
listener receives before aiortc sees it, so the loss accounting can be checked against what was
dropped.

aiortc is asyncio and an optional extra (``pip install -e '.[webrtc]'``): this module imports it
only where a run needs it, so ``loadgen`` builds its parser without it, and the Locust (gevent)
processes never import this module at all. docs/webrtc.md says how to run it, what it measures,
and why it needs a network namespace on one machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import functools
import itertools
import json
import math
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from loadgen.drivers.janus import AUDIOBRIDGE, KEEPALIVE_SECONDS, VIDEOROOM, VIDEOROOM_NO_SUCH_FEED, JanusDriver

if TYPE_CHECKING:
    from aiortc import MediaStreamTrack, RTCIceServer, RTCPeerConnection, RTCRtpReceiver

EXIT_OK = 0
EXIT_NOT_HEARD = 1  # a listener heard nothing, or a peer failed
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
INSTALL = "pip install -e '.[webrtc]'"

PLUGINS = {"audiobridge": AUDIOBRIDGE, "videoroom": VIDEOROOM}
MAX_PUBLISHERS = 8
#: aiortc decodes every listener's audio in Python's process: a few percent of a core each
MAX_LISTENERS = 32
MAX_SECONDS = 3600.0
SAMPLE_RATE = 48_000
#: 20 ms: one Opus frame per RTP packet, 50 packets a second
FRAME_SAMPLES = 960
#: Opus' RTP clock is 48 kHz whatever the audio's own rate (RFC 7587)
RTP_CLOCK = 48_000
TONE_AMPLITUDE = 0.2
#: RMS of a decoded frame (16-bit samples) that counts as heard, about -36 dBFS: mixer silence
#: decodes to zeros, the tone to about 4600
AUDIBLE_RMS = 500.0
#: how often a subscriber asks again while VideoRoom answers "no such feed" (a feed announced
#: before its media is up), and how many times
FEED_RETRY_SECONDS = 0.05
FEED_RETRIES = 40
#: the longest a peer's teardown (PeerConnection close, session destroy) may take
CLOSE_SECONDS = 5.0


class JanusError(Exception):
    """Janus (or a plugin) answered a request with an error, or did not answer in time."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class Unreachable(Exception):
    """Nothing that speaks the Janus API answered at the URL."""


# -- command line -------------------------------------------------------------------------


def _bounded(kind: type, low: float, high: float, what: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is outside {low:g} … {high:g}")
        return value

    return parse


def _talk(text: str) -> tuple[float, float]:
    on, sep, off = text.partition(",")
    try:
        spurt = (float(on), float(off)) if sep else None
    except ValueError:
        spurt = None
    if spurt is None or not (0.02 <= spurt[0] <= 60 and 0 <= spurt[1] <= 60):
        raise argparse.ArgumentTypeError(f"{text!r} is not TALK,PAUSE in seconds (talk 0.02 … 60, pause 0 … 60)")
    return spurt


def _drop_every(text: str) -> int:
    value = _bounded(int, 0, 1_000_000, "a whole number")(text)
    if value == 1:
        raise argparse.ArgumentTypeError("1 would drop every packet: use 0 (off) or 2 and above")
    return value


def _ice_server(text: str) -> str:
    if text.split(":", 1)[0] not in ("stun", "stuns", "turn", "turns"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a stun:, stuns:, turn: or turns: URL")
    return text


def add_webrtc_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``loadgen webrtc``; parsing them needs no aiortc."""
    parser.add_argument(
        "--url",
        default="ws://127.0.0.1:8188",
        help="Janus' WebSocket API, ws:// or wss:// (janus+ws:// as for --host works too); ?apisecret=S and "
        "?admin_key=K as for the Janus driver (default: %(default)s)",
    )
    parser.add_argument("--plugin", choices=sorted(PLUGINS), default="audiobridge", help="(default: %(default)s)")
    parser.add_argument(
        "--publishers",
        type=_bounded(int, 1, MAX_PUBLISHERS, "a whole number"),
        default=1,
        help=f"peers sending a tone, 1 … {MAX_PUBLISHERS} (default: %(default)s)",
    )
    parser.add_argument(
        "--listeners",
        type=_bounded(int, 1, MAX_LISTENERS, "a whole number"),
        default=2,
        help=f"peers receiving, 1 … {MAX_LISTENERS} (default: %(default)s)",
    )
    parser.add_argument(
        "--seconds",
        type=_bounded(float, 0.5, MAX_SECONDS, "a number"),
        default=10.0,
        help="how long media flows once the publishers join (default: %(default)s)",
    )
    parser.add_argument(
        "--publisher-delay",
        type=_bounded(float, 0.0, 60.0, "a number"),
        default=1.0,
        metavar="SECONDS",
        help="the publishers join this long after the listeners, so that publisher join -> first audible frame "
        "is measured on listeners already in the room (default: %(default)s)",
    )
    parser.add_argument(
        "--talk",
        type=_talk,
        metavar="TALK,PAUSE",
        help="send the tone in talk spurts: TALK seconds of tone, PAUSE seconds of silence (default: a steady tone)",
    )
    parser.add_argument(
        "--drop-every",
        type=_drop_every,
        default=0,
        metavar="N",
        help="drop every Nth RTP packet each listener receives, before aiortc sees it: injected loss that the "
        "loss figures must show (default: 0, off)",
    )
    parser.add_argument(
        "--ice-server",
        type=_ice_server,
        action="append",
        default=[],
        metavar="URL",
        help="a STUN or TURN server for the peers, repeatable (default: none; aiortc's own default is Google's STUN)",
    )
    parser.add_argument("--ice-username", help="username for the TURN servers")
    parser.add_argument(
        "--ice-credential-env",
        metavar="VAR",
        help="name of the environment variable holding the TURN credential (never on the command line)",
    )
    parser.add_argument(
        "--timeout",
        type=_bounded(float, 0.5, 120.0, "a number"),
        default=10.0,
        help="seconds to wait for each Janus answer and for the connection (default: %(default)s)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        metavar="PATH",
        help="where the results go (default: results/<UTC time>-webrtc-<plugin>.json)",
    )


def webrtc_command(args: argparse.Namespace) -> int:
    """Run ``loadgen webrtc``; returns the exit code."""
    prog = "loadgen webrtc"
    try:
        driver, url = JanusDriver.configure(args.url)
    except ValueError as error:
        return _usage(prog, f"--url: {error}")
    # apisecret and admin_key, read from the URL's query as the Janus driver reads them
    options = getattr(driver, "keywords", {})
    if url.split("://", 1)[0] not in ("ws", "wss"):
        return _usage(prog, f"--url: {args.url!r} is not a ws://, wss:// or janus+ws:// URL")
    credential = None
    if args.ice_credential_env:
        credential = os.environ.get(args.ice_credential_env)
        if not credential:
            return _usage(prog, f"--ice-credential-env: the environment variable {args.ice_credential_env} is unset")
    try:
        import aiortc  # noqa: F401
    except ImportError as error:
        return _usage(prog, f"aiortc is not installed ({error}); {INSTALL}")
    settings = _Settings(
        url=url,
        apisecret=options.get("apisecret"),
        admin_key=options.get("admin_key"),
        plugin=args.plugin,
        publishers=args.publishers,
        listeners=args.listeners,
        seconds=args.seconds,
        publisher_delay=args.publisher_delay,
        talk=args.talk,
        drop_every=args.drop_every,
        ice_servers=tuple(args.ice_server),
        ice_username=args.ice_username,
        ice_credential=credential,
        timeout=args.timeout,
    )
    started = datetime.now(timezone.utc)
    cpu = time.process_time()
    try:
        result = asyncio.run(_run_bounded(settings))
    except Unreachable as error:
        sys.stderr.write(f"{prog}: error: {error}\n")
        return EXIT_UNREACHABLE
    except JanusError as error:
        sys.stderr.write(f"{prog}: error: {error}\n")
        return EXIT_NOT_HEARD
    result["started"] = started.isoformat(timespec="seconds")
    result["generator"] = {"cpu_seconds": round(time.process_time() - cpu, 2)}
    path = args.json or Path("results") / f"{started.strftime('%Y%m%dT%H%M%SZ')}-webrtc-{args.plugin}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(format_table(result))
    sys.stdout.write(f"results: {path}\n")
    return EXIT_OK if result["passed"] else EXIT_NOT_HEARD


def _usage(prog: str, message: str) -> int:
    sys.stderr.write(f"{prog}: error: {message}\n")
    return EXIT_USAGE


# -- Janus over WebSocket -----------------------------------------------------------------


class _JanusSession:
    """One WebSocket and one Janus session: answers matched by transaction, the rest routed by handle."""

    def __init__(self, settings: _Settings, peer: _Peer) -> None:
        self.settings = settings
        self.peer = peer
        self.session_id: int | None = None
        self._socket: ClientConnection | None = None
        self._transactions = itertools.count(1)
        self._pending: dict[str, asyncio.Future[dict]] = {}
        self._events: dict[int, asyncio.Queue[dict]] = {}
        self._trickle: dict[int, Callable[[dict | None], Awaitable[None]]] = {}
        self._reader: asyncio.Task | None = None
        self._keepalive: asyncio.Task | None = None

    async def open(self) -> None:
        """Connect and create the session; Unreachable when nothing (that speaks Janus) answers."""
        url = self.settings.url
        try:
            self._socket = await connect(url, subprotocols=JanusDriver.subprotocols, open_timeout=self.settings.timeout)
        except (OSError, asyncio.TimeoutError, InvalidHandshake, InvalidURI) as error:
            raise Unreachable(f"cannot reach Janus at {url}: {error or type(error).__name__}") from error
        self._reader = asyncio.create_task(self._read())
        try:
            answer = await self.request({"janus": "create"})
        except JanusError as error:
            if error.code is None:
                raise Unreachable(f"{url} accepted the WebSocket but did not answer as Janus: {error}") from error
            raise
        self.session_id = answer["data"]["id"]
        self._keepalive = asyncio.create_task(self._keep_alive())
        self.peer.mark("janus session")

    async def close(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
        if self._socket is None:
            return
        if self.session_id is not None:
            # destroying the session hangs up its PeerConnections and leaves its rooms
            with contextlib.suppress(JanusError, ConnectionClosed, OSError):
                await self.request({"janus": "destroy"}, timeout=min(self.settings.timeout, CLOSE_SECONDS))
        with contextlib.suppress(asyncio.TimeoutError, OSError):
            await asyncio.wait_for(self._socket.close(), CLOSE_SECONDS)
        if self._reader is not None:
            self._reader.cancel()

    def _stamped(self, message: dict) -> dict:
        """``message`` with what Janus wants on every request: a new transaction, the session, the apisecret."""
        message = {**message, "transaction": str(next(self._transactions))}
        if self.session_id is not None:
            message["session_id"] = self.session_id
        if self.settings.apisecret is not None:
            message["apisecret"] = self.settings.apisecret
        return message

    async def request(self, message: dict, timeout: float | None = None) -> dict:
        assert self._socket is not None
        message = self._stamped(message)
        transaction = message["transaction"]
        answer = self._pending[transaction] = asyncio.get_running_loop().create_future()
        try:
            await self._socket.send(json.dumps(message))
            reply = await asyncio.wait_for(answer, timeout or self.settings.timeout)
        except asyncio.TimeoutError:
            raise JanusError(f"no answer to {_verb(message)} within {timeout or self.settings.timeout:g} s") from None
        except ConnectionClosed as error:
            raise JanusError(f"connection closed during {_verb(message)}: {error}") from None
        finally:
            self._pending.pop(transaction, None)
        if reply.get("janus") == "error":
            error = reply.get("error", {})
            raise JanusError(
                f"{_verb(message)}: Janus error {error.get('code')} {error.get('reason')}", error.get("code")
            )
        return reply

    async def attach(self, plugin: str) -> int:
        handle = (await self.request({"janus": "attach", "plugin": plugin}))["data"]["id"]
        self._events[handle] = asyncio.Queue()
        return handle

    async def message(self, handle: int, body: dict, jsep: dict | None = None) -> tuple[dict, dict | None]:
        """A plugin request; its data and JSEP, or JanusError with the plugin's error code."""
        message: dict = {"janus": "message", "handle_id": handle, "body": body}
        if jsep is not None:
            message["jsep"] = jsep
        reply = await self.request(message)
        data = reply.get("plugindata", {}).get("data", {})
        if "error_code" in data or "error" in data:
            code = data.get("error_code")
            raise JanusError(f"{body['request']}: plugin error {code} {data.get('error')}", code)
        return data, reply.get("jsep")

    def events(self, handle: int) -> asyncio.Queue[dict]:
        """Plugin events no request waited for, on ``handle``."""
        return self._events[handle]

    def on_trickle(self, handle: int, receive: Callable[[dict | None], Awaitable[None]]) -> None:
        self._trickle[handle] = receive

    async def _read(self) -> None:
        assert self._socket is not None
        with contextlib.suppress(ConnectionClosed):
            async for raw in self._socket:
                message = json.loads(raw)
                kind = message.get("janus")
                if kind == "ack":
                    continue
                if kind in ("webrtcup", "media", "slowlink", "hangup", "timeout"):
                    detail = message.get("reason") or message.get("type") or ""
                    self.peer.mark(f"janus {kind} {detail}".rstrip())
                    continue
                if kind == "trickle":
                    receive = self._trickle.get(message.get("sender", 0))
                    try:
                        if receive is not None:
                            await receive(message.get("candidate"))
                    except Exception as error:  # a candidate aiortc cannot use is left out, as a browser would
                        self.peer.mark(f"remote candidate left out: {type(error).__name__}: {error}")
                    continue
                answer = self._pending.get(str(message.get("transaction")))
                if answer is not None and not answer.done():
                    answer.set_result(message)
                elif kind == "event" and message.get("sender") in self._events:
                    self._events[message["sender"]].put_nowait(message)
        for answer in self._pending.values():
            if not answer.done():
                answer.set_exception(ConnectionClosed(None, None))

    async def _keep_alive(self) -> None:
        # Janus ends a session after session_timeout without a request; WebSocket pings do not count
        assert self._socket is not None
        with contextlib.suppress(ConnectionClosed):
            while True:
                await asyncio.sleep(KEEPALIVE_SECONDS)
                await self._socket.send(json.dumps(self._stamped({"janus": "keepalive"})))


def _verb(message: dict) -> str:
    body = message.get("body")
    return f"{message['janus']} {body['request']}" if body else message["janus"]


# -- peers --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Settings:
    url: str
    apisecret: str | None
    admin_key: str | None
    plugin: str
    publishers: int
    listeners: int
    seconds: float
    publisher_delay: float
    talk: tuple[float, float] | None
    drop_every: int
    ice_servers: tuple[str, ...]
    ice_username: str | None
    ice_credential: str | None
    timeout: float


class _Clock:
    """Milliseconds since the run started: one origin for every peer's timeline."""

    def __init__(self) -> None:
        self.origin = time.monotonic()

    def ms(self) -> float:
        return round((time.monotonic() - self.origin) * 1000, 1)


@dataclass
class _Stream:
    """One received RTP stream: sequence numbers extended past 16 bits, RFC 3550 jitter."""

    first: int | None = None
    highest: int = 0
    received: int = 0
    jitter: float = 0.0  # in RTP clock units, as RFC 3550 keeps it
    _last: tuple[float, int] | None = None  # (arrival, RTP timestamp) of the previous packet passed on

    def arrived(self, sequence: int) -> None:
        if self.first is None:
            self.first = self.highest = sequence
            return
        extended = self.highest + (sequence - self.highest + 32768) % 65536 - 32768
        self.highest = max(self.highest, extended)

    def passed(self, arrival: float, timestamp: int) -> None:
        self.received += 1
        if self._last is not None:
            elapsed = (timestamp - self._last[1] + 2**31) % 2**32 - 2**31
            difference = (arrival - self._last[0]) * RTP_CLOCK - elapsed
            self.jitter += (abs(difference) - self.jitter) / 16
        self._last = (arrival, timestamp)

    @property
    def lost(self) -> int:
        return 0 if self.first is None else self.highest - self.first + 1 - self.received


@dataclass
class _Peer:
    """A publisher or a listener (or the run's own admin session): its timeline and what it got."""

    name: str
    clock: _Clock
    timeline: list[tuple[float, str]] = field(default_factory=list)
    error: str | None = None
    join_ms: float | None = None
    #: set once the join is answered (or failed): the run waits for its listeners before publishing
    joined: asyncio.Event = field(default_factory=asyncio.Event)
    ice_state: str = "new"
    packets_sent: int = 0
    drop_every: int = 0
    streams: list[_Stream] = field(default_factory=list)
    arrivals: int = 0
    dropped: int = 0
    first_audible_ms: float | None = None
    tasks: list[asyncio.Task] = field(default_factory=list)

    def mark(self, event: str) -> float:
        ms = self.clock.ms()
        self.timeline.append((ms, event))
        return ms

    def watch(self, receiver: RTCRtpReceiver) -> None:
        """Count what ``receiver`` gets, and drop every Nth packet, before aiortc's own handling."""
        stream = _Stream()
        self.streams.append(stream)
        # aiortc's DTLS transport hands each SRTP-decrypted packet to this (private) method
        handle = receiver._handle_rtp_packet

        async def counted(packet: Any, arrival_time_ms: int) -> None:
            arrival = time.monotonic()
            if self.arrivals == 0:
                self.mark("first rtp")
            self.arrivals += 1
            stream.arrived(packet.sequence_number)
            if self.drop_every and self.arrivals % self.drop_every == 0:
                self.dropped += 1
                return
            stream.passed(arrival, packet.timestamp)
            await handle(packet, arrival_time_ms=arrival_time_ms)

        receiver._handle_rtp_packet = counted

    def hear(self, track: MediaStreamTrack) -> None:
        self.tasks.append(asyncio.create_task(self._listen(track)))

    async def _listen(self, track: MediaStreamTrack) -> None:
        from aiortc.mediastreams import MediaStreamError

        # ends when the track does (the PeerConnection closes) or the peer's teardown cancels it
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if self.first_audible_ms is None:
                    samples = frame.to_ndarray().astype(np.float64)
                    if math.sqrt(float(np.mean(samples * samples))) >= AUDIBLE_RMS:
                        self.first_audible_ms = self.mark("first audible")


class _Run:
    """What every peer of a run shares: settings, clock, room, and the PeerConnection set-up."""

    def __init__(self, settings: _Settings) -> None:
        self.settings = settings
        self.clock = _Clock()
        # 48 bits keep the number exact in JSON; random so that runs never meet in one room
        self.room = random.randrange(1 << 40, 1 << 48)
        self.stop = asyncio.Event()

    def ice_servers(self) -> list[RTCIceServer]:
        from aiortc import RTCIceServer

        settings = self.settings
        return [
            RTCIceServer(url, settings.ice_username, settings.ice_credential) if url.startswith("turn") else
            RTCIceServer(url)
            for url in settings.ice_servers
        ]  # fmt: skip

    def peer_connection(self, peer: _Peer) -> RTCPeerConnection:
        from aiortc import RTCConfiguration, RTCPeerConnection

        # an empty list, not None: aiortc would otherwise ask Google's STUN server
        connection = RTCPeerConnection(RTCConfiguration(iceServers=self.ice_servers()))

        connection.on("icegatheringstatechange", lambda: peer.mark(f"ice gathering {connection.iceGatheringState}"))

        def ice_state() -> None:
            peer.mark(f"ice {connection.iceConnectionState}")
            if connection.iceConnectionState == "completed":
                peer.mark(f"ice pair {_pair(connection)}")

        connection.on("iceconnectionstatechange", ice_state)
        connection.on("connectionstatechange", lambda: peer.mark(f"connection {connection.connectionState}"))
        return connection

    async def life(self, peer: _Peer, join: Callable[[_JanusSession, RTCPeerConnection], Awaitable[None]]) -> None:
        """One peer: session, PeerConnection, ``join`` (signalling and negotiation), media until the stop."""
        janus = _JanusSession(self.settings, peer)
        connection = self.peer_connection(peer)
        try:
            await janus.open()
            await join(janus, connection)
            await self.stop.wait()
            peer.ice_state = connection.iceConnectionState
            stats = await connection.getStats()
            peer.packets_sent = sum(s.packetsSent for s in stats.values() if s.type == "outbound-rtp")
        except Exception as error:  # whatever ends one peer is its result; the others go on
            peer.error = f"{type(error).__name__}: {error}" if not isinstance(error, JanusError) else str(error)
            peer.mark(f"error: {peer.error}")
        finally:
            peer.joined.set()
            for task in peer.tasks:
                task.cancel()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(connection.close(), CLOSE_SECONDS)
            await janus.close()

    async def negotiate(self, janus: _JanusSession, connection: RTCPeerConnection, handle: int, body: dict) -> None:
        """Offer from aiortc, answer from Janus (as ``body``'s reply); Janus' trickled candidates added."""
        janus.on_trickle(handle, functools.partial(_add_candidate, connection))
        await connection.setLocalDescription(await connection.createOffer())
        _, jsep = await janus.message(handle, body, jsep=_jsep(connection))
        if jsep is None:
            raise JanusError(f"{body['request']}: Janus answered without SDP")
        await _set_remote(connection, jsep)

    async def publisher(self, peer: _Peer, number: int, janus: _JanusSession, connection: RTCPeerConnection) -> None:
        frequency = 440.0 + 110.0 * number  # a different pitch each, so that a mix never cancels out
        transceiver = connection.addTransceiver(_tone(frequency, self.settings.talk), direction="sendonly")
        _prefer_opus(transceiver)
        plugin = PLUGINS[self.settings.plugin]
        handle = await janus.attach(plugin)
        peer.join_ms = peer.mark("join")
        if plugin == AUDIOBRIDGE:
            await janus.message(handle, {"request": "join", "room": self.room, "display": peer.name, "muted": False})
            peer.mark("joined")
            await self.negotiate(janus, connection, handle, {"request": "configure", "muted": False})
        else:
            await janus.message(handle, {"request": "join", "ptype": "publisher", "room": self.room,
                                         "display": peer.name})  # fmt: skip
            peer.mark("joined")
            await self.negotiate(janus, connection, handle, {"request": "publish"})

    async def audiobridge_listener(self, peer: _Peer, janus: _JanusSession, connection: RTCPeerConnection) -> None:
        transceiver = connection.addTransceiver("audio", direction="recvonly")
        peer.watch(transceiver.receiver)
        connection.on("track", peer.hear)
        handle = await janus.attach(AUDIOBRIDGE)
        peer.join_ms = peer.mark("join")
        await janus.message(handle, {"request": "join", "room": self.room, "display": peer.name, "muted": True})
        peer.mark("joined")
        peer.joined.set()
        await self.negotiate(janus, connection, handle, {"request": "configure", "muted": True})

    async def videoroom_listener(self, peer: _Peer, janus: _JanusSession, connection: RTCPeerConnection) -> None:
        # a member of the room (a participant that never publishes) hears of publishers as they come,
        # then subscribes to all of them on a second handle, as a VideoRoom client does
        member = await janus.attach(VIDEOROOM)
        peer.join_ms = peer.mark("join")
        joined, _ = await janus.message(member, {"request": "join", "ptype": "publisher", "room": self.room,
                                                 "display": peer.name})  # fmt: skip
        peer.mark("joined")
        peer.joined.set()
        feeds = {publisher["id"] for publisher in joined.get("publishers", [])}
        events = janus.events(member)
        while len(feeds) < self.settings.publishers:
            event = await _next(events, self.stop)
            if event is None:
                raise JanusError(f"only {len(feeds)} of {self.settings.publishers} publishers appeared in the room")
            data = event.get("plugindata", {}).get("data", {})
            feeds.update(publisher["id"] for publisher in data.get("publishers", []))
        peer.mark(f"publishers seen: {len(feeds)}")
        subscriber = await janus.attach(VIDEOROOM)
        subscribe = {"request": "join", "ptype": "subscriber", "room": self.room,
                     "streams": [{"feed": feed} for feed in sorted(feeds)]}  # fmt: skip
        for attempt in range(FEED_RETRIES):
            try:
                _, offer = await janus.message(subscriber, subscribe)
                break
            except JanusError as error:
                if error.code != VIDEOROOM_NO_SUCH_FEED or attempt == FEED_RETRIES - 1 or self.stop.is_set():
                    raise
                await asyncio.sleep(FEED_RETRY_SECONDS)
        if offer is None:
            raise JanusError("join as subscriber: Janus offered no SDP")
        janus.on_trickle(subscriber, functools.partial(_add_candidate, connection))
        connection.on("track", peer.hear)
        await _set_remote(connection, offer)
        for transceiver in connection.getTransceivers():
            peer.watch(transceiver.receiver)
        await connection.setLocalDescription(await connection.createAnswer())
        await janus.message(subscriber, {"request": "start"}, jsep=_jsep(connection))
        peer.mark("subscribed")


async def _next(queue: asyncio.Queue[dict], stop: asyncio.Event) -> dict | None:
    """The queue's next item, or None once ``stop`` is set."""
    getting = asyncio.ensure_future(queue.get())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({getting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if getting.done():
        return getting.result()
    getting.cancel()
    return None


def _pair(connection: RTCPeerConnection) -> str:
    """The candidate pair ICE chose, ``local <-> remote``, from aioice's own record (no public API has it)."""
    try:
        ice = connection.getTransceivers()[0].receiver.transport.transport._connection
        pair = ice._nominated[1]
    except (AttributeError, IndexError, KeyError):
        return "unknown"
    local, remote = pair.local_candidate, pair.remote_candidate
    return f"{local.host}:{local.port} {local.type} <-> {remote.host}:{remote.port} {remote.type}"


def _jsep(connection: RTCPeerConnection) -> dict:
    return {"type": connection.localDescription.type, "sdp": connection.localDescription.sdp}


async def _set_remote(connection: RTCPeerConnection, jsep: dict) -> None:
    from aiortc import RTCSessionDescription

    await connection.setRemoteDescription(RTCSessionDescription(sdp=jsep["sdp"], type=jsep["type"]))


async def _add_candidate(connection: RTCPeerConnection, candidate: dict | None) -> None:
    from aiortc.sdp import candidate_from_sdp

    if not candidate or candidate.get("completed") or not candidate.get("candidate"):
        return
    ice = candidate_from_sdp(candidate["candidate"].split(":", 1)[1])
    ice.sdpMid, ice.sdpMLineIndex = candidate.get("sdpMid"), candidate.get("sdpMLineIndex")
    await connection.addIceCandidate(ice)


def _prefer_opus(transceiver: Any) -> None:
    from aiortc import RTCRtpSender

    codecs = RTCRtpSender.getCapabilities("audio").codecs
    transceiver.setCodecPreferences([codec for codec in codecs if codec.mimeType.lower() == "audio/opus"])


def _tone(frequency: float, talk: tuple[float, float] | None) -> MediaStreamTrack:
    return _tone_track_class()(frequency, talk)


@functools.cache
def _tone_track_class() -> type:
    from aiortc import MediaStreamTrack
    from av import AudioFrame

    class ToneTrack(MediaStreamTrack):
        """20 ms frames in real time: a sine tone, silent during the pauses between talk spurts."""

        kind = "audio"

        def __init__(self, frequency: float, talk: tuple[float, float] | None) -> None:
            super().__init__()
            self.frequency = frequency
            self.talk = talk
            self.samples = 0
            self.started: float | None = None

        async def recv(self) -> AudioFrame:
            if self.started is None:
                self.started = time.monotonic()
            wait = self.started + self.samples / SAMPLE_RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            at = self.samples / SAMPLE_RATE
            talking = self.talk is None or at % (self.talk[0] + self.talk[1]) < self.talk[0]
            if talking:
                t = (np.arange(FRAME_SAMPLES) + self.samples) / SAMPLE_RATE
                pcm = (TONE_AMPLITUDE * 32767 * np.sin(2 * math.pi * self.frequency * t)).astype(np.int16)
            else:
                pcm = np.zeros(FRAME_SAMPLES, dtype=np.int16)
            frame = AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = SAMPLE_RATE
            frame.pts = self.samples
            frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
            self.samples += FRAME_SAMPLES
            return frame

    return ToneTrack


# -- the run ------------------------------------------------------------------------------


async def _run_bounded(settings: _Settings) -> dict:
    # every step below has its own bound; this one only guarantees the command ends
    budget = settings.publisher_delay + settings.seconds + 8 * settings.timeout + 4 * CLOSE_SECONDS
    try:
        return await asyncio.wait_for(_run(settings), budget)
    except asyncio.TimeoutError:
        raise JanusError(f"the run did not end within {budget:g} s") from None


async def _run(settings: _Settings) -> dict:
    run = _Run(settings)
    admin = _Peer("admin", run.clock)
    janus = _JanusSession(settings, admin)
    try:
        await janus.open()
        plugin = PLUGINS[settings.plugin]
        handle = await janus.attach(plugin)
        create: dict = {"request": "create", "room": run.room}
        if plugin == AUDIOBRIDGE:
            create["sampling_rate"] = SAMPLE_RATE
        else:
            create.update(publishers=settings.publishers, audiocodec="opus")
        if settings.admin_key is not None:
            create["admin_key"] = settings.admin_key
        await janus.message(handle, create)
        try:
            listeners, publishers = await _peers(run)
        finally:
            with contextlib.suppress(JanusError, ConnectionClosed):
                await janus.message(handle, {"request": "destroy", "room": run.room})
    finally:
        await janus.close()
    return summarize(run, listeners, publishers)


async def _peers(run: _Run) -> tuple[list[_Peer], list[_Peer]]:
    settings = run.settings
    listeners = [_Peer(f"listener-{n}", run.clock, drop_every=settings.drop_every)
                 for n in range(settings.listeners)]  # fmt: skip
    publishers = [_Peer(f"publisher-{n}", run.clock) for n in range(settings.publishers)]
    listen = run.audiobridge_listener if settings.plugin == "audiobridge" else run.videoroom_listener
    tasks = [asyncio.create_task(run.life(peer, functools.partial(listen, peer))) for peer in listeners]
    try:
        # connect, create, attach, join: four answers at most before a listener is in the room
        await _all_set([peer.joined for peer in listeners], 4 * settings.timeout)
        await asyncio.sleep(settings.publisher_delay)
        tasks += [
            asyncio.create_task(run.life(peer, functools.partial(run.publisher, peer, number)))
            for number, peer in enumerate(publishers)
        ]
        await asyncio.sleep(settings.seconds)
    finally:
        run.stop.set()
        _, late = await asyncio.wait(tasks, timeout=2 * settings.timeout + 2 * CLOSE_SECONDS)
        for task in late:
            task.cancel()
    return listeners, publishers


async def _all_set(events: list[asyncio.Event], timeout: float) -> None:
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    await asyncio.wait(waits, timeout=timeout)
    for wait in waits:
        wait.cancel()


# -- results ------------------------------------------------------------------------------


def summarize(run: _Run, listeners: list[_Peer], publishers: list[_Peer]) -> dict:
    """The results: per peer, and over the listeners the worst (latest first audio, highest jitter) and sums."""
    settings = run.settings
    joins = [peer.join_ms for peer in publishers if peer.join_ms is not None]
    seat_ms = min(joins) if joins else None
    rows = [_listener_result(peer, seat_ms) for peer in listeners]
    heard = [row for row in rows if row["heard"]]
    received = sum(row["frames"]["received"] for row in rows)
    lost = sum(row["frames"]["lost"] for row in rows)
    jitters = [row["jitter_ms"] for row in rows if row["jitter_ms"] is not None]
    failed = [peer for peer in (*listeners, *publishers) if peer.error is not None]
    return {
        "plugin": settings.plugin,
        "url": settings.url,
        "room": run.room,
        "settings": {
            "publishers": settings.publishers,
            "listeners": settings.listeners,
            "seconds": settings.seconds,
            "publisher_delay_s": settings.publisher_delay,
            "talk_s": list(settings.talk) if settings.talk else None,
            "drop_every": settings.drop_every,
        },
        "passed": len(heard) == len(rows) and not failed,
        "heard": len(heard),
        "first_audio_join_ms": _worst(row["first_audio_join_ms"] for row in rows),
        "first_audio_seat_ms": _worst(row["first_audio_seat_ms"] for row in rows),
        "frames": {"received": received, "lost": lost, "dropped": sum(peer.dropped for peer in listeners)},
        "loss_rate": _rate(lost, received),
        "jitter_ms": max(jitters) if jitters else None,
        "listeners": rows,
        "publishers": [
            {
                "name": peer.name,
                "error": peer.error,
                "join_ms": peer.join_ms,
                "packets_sent": peer.packets_sent,
                "ice": peer.ice_state,
                "timeline": peer.timeline,
            }
            for peer in publishers
        ],
    }


def _listener_result(peer: _Peer, seat_ms: float | None) -> dict:
    audible = peer.first_audible_ms
    received = sum(stream.received for stream in peer.streams)
    lost = sum(stream.lost for stream in peer.streams)
    jitter = max((stream.jitter for stream in peer.streams if stream.received > 1), default=None)
    return {
        "name": peer.name,
        "heard": audible is not None,
        "error": peer.error,
        "join_ms": peer.join_ms,
        "first_audio_join_ms": _since(audible, peer.join_ms),
        "first_audio_seat_ms": _since(audible, seat_ms),
        "frames": {"received": received, "lost": lost, "dropped": peer.dropped},
        "loss_rate": _rate(lost, received),
        "jitter_ms": None if jitter is None else round(jitter * 1000 / RTP_CLOCK, 2),
        "ice": peer.ice_state,
        "timeline": peer.timeline,
    }


def _since(end: float | None, start: float | None) -> float | None:
    return None if end is None or start is None else round(end - start, 1)


def _worst(values: Any) -> float | None:
    present = [value for value in values if value is not None]
    return max(present) if present else None


def _rate(lost: int, received: int) -> float | None:
    return round(lost / (lost + received), 6) if lost + received else None


def format_table(result: dict) -> str:
    """The results as a table, one line per peer."""

    def cell(value: Any) -> str:
        return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)

    settings = result["settings"]
    lines = [
        f"{result['plugin']} room {result['room']} at {result['url']}: {settings['publishers']} publisher(s), "
        f"{settings['listeners']} listener(s), {settings['seconds']:g} s of media",
        f"{'peer':<14}{'heard':>6}{'join->audio ms':>16}{'seat->audio ms':>16}{'received':>10}{'lost':>7}"
        f"{'loss %':>8}{'jitter ms':>11}  ice",
    ]
    for row in result["listeners"]:
        loss = None if row["loss_rate"] is None else round(row["loss_rate"] * 100, 2)
        lines.append(
            f"{row['name']:<14}{'yes' if row['heard'] else 'NO':>6}{cell(row['first_audio_join_ms']):>16}"
            f"{cell(row['first_audio_seat_ms']):>16}{row['frames']['received']:>10}{row['frames']['lost']:>7}"
            f"{cell(loss):>8}{cell(row['jitter_ms']):>11}  {row['ice']}"
        )
    for row in result["publishers"]:
        lines.append(f"{row['name']:<14}{'sent':>6}{row['packets_sent']:>42}{'':>26}  {row['ice']}")
    for row in (*result["listeners"], *result["publishers"]):
        if row["error"]:
            lines.append(f"{row['name']}: {row['error']}")
    frames = result["frames"]
    heard = f"{result['heard']} of {settings['listeners']} listeners heard audio"
    lines.append(f"{heard}; {frames['lost']} of {frames['received'] + frames['lost']} RTP packets lost")
    return "\n".join(lines) + "\n"
