"""The reference backend's media relay: an SFU for synthetic audio frames (docs/protocol.md, Media).

Publishers and listeners open media sessions with ``media.open`` on their WebSocket; frames
then come in as UDP datagrams (or binary WebSocket messages) and go out to every other
member of the room with a session. Everything runs on the event loop, like the hub: the
per-frame path is one session lookup, a seat check and a loop of sends.

The packet header is parsed here with its own struct: the backend never imports the
client side of the toolkit.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import random
import secrets
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from ._config import ServerConfig

if TYPE_CHECKING:
    from ._hub import Connection, Room

log = logging.getLogger("loadgen.server")

# flags, kind, audio level, reserved, ssrc, sequence, rtp timestamp, capture time, stream start
HEADER = struct.Struct("!BBBxIIIQQ")
HEADER_BYTES = HEADER.size
TOKEN_BYTES = 16
_SEQUENCE = struct.Struct("!I")
_SEQUENCE_AT = 8
SEQUENCE_MASK = 0xFFFFFFFF
# The top two bits of the flags hold the version, 2 as in RTP; the other bits (the marker of a
# stream's first frame) are forwarded as they came.
_VERSION_BITS = 0xC0
VERSION = 0x80
AUDIO = 1
BIND = 2
BIND_ACK = 3
LEVEL_SILENCE = 127
MEDIA_TRANSPORTS = ("udp", "websocket")
# Top-K picks the loudest streams of a room this often.
RESELECT_S = 0.2
# A stream with no frame for this long is not a candidate for top-K, so a publisher that went
# away frees its slot; long enough that a publisher's scheduling hiccup does not.
ACTIVE_S = 1.0
# Weight of each new frame's level in a stream's smoothed level: about 5 frames (100 ms) of memory,
# short against talk spurts of seconds.
LEVEL_SMOOTHING = 0.2
# How long stopping waits for the UDP socket to be closed, so a restart can bind the port again.
_CLOSE_WAIT_S = 1.0
_SSRC_TRIES = 100


class MediaFrame(bytes):
    """A media packet queued on a connection's outbox: written as a binary WebSocket message."""

    __slots__ = ()


class MediaSession:
    """One connection's media session in one room; also the state of its stream for top-K."""

    __slots__ = (
        "ssrc",
        "token",
        "conn",
        "user",
        "name",
        "room",
        "udp",
        "addr",
        "level",
        "heard_at",
        "stream_start",
        "last_forwarded",
        "skipped",
        "paused",
    )

    def __init__(self, ssrc: int, conn: Connection, user: str, name: str, room: RoomMedia, udp: bool) -> None:
        self.ssrc = ssrc
        self.token = secrets.token_bytes(TOKEN_BYTES)
        self.conn = conn
        self.user = user
        self.name = name
        self.room = room
        self.udp = udp
        # the UDP address its bind came from; None until bound, and always for transport websocket
        self.addr: Any = None
        self.level: float | None = None
        self.heard_at = 0.0
        self.stream_start: int | None = None
        self.last_forwarded = SEQUENCE_MASK
        self.skipped = 0
        self.paused = False


class RoomMedia:
    """The media sessions of one room and its top-K selection."""

    __slots__ = ("room", "sessions", "selected", "next_pick")

    def __init__(self, room: Room) -> None:
        self.room = room
        self.sessions: dict[int, MediaSession] = {}
        self.selected: set[MediaSession] = set()
        self.next_pick = 0.0

    def may_publish(self, user: str) -> bool:
        room = self.room
        return user in room.seated or room.host == user

    def pick(self, k: int, now: float) -> None:
        """Select the ``k`` loudest streams heard lately whose users may still publish."""
        self.next_pick = now + RESELECT_S
        since = now - ACTIVE_S
        selected = self.selected
        candidates = [s for s in self.sessions.values() if s.heard_at >= since and self.may_publish(s.user)]
        # On a tie the streams already selected stay, so equal voices do not flap.
        candidates.sort(key=lambda s: (s.level, s not in selected))
        self.selected = set(candidates[:k])


class MediaRelay(asyncio.DatagramProtocol):
    """Media sessions of every room, the UDP endpoint's protocol, and the forwarding.

    The server binds the UDP endpoint with this object as its protocol; without it (a hub
    used on its own) sessions open all the same and only the websocket transport carries frames.
    """

    def __init__(self, config: ServerConfig, loop: asyncio.AbstractEventLoop, counts: dict[str, int]) -> None:
        self._loop = loop
        self._counts = counts
        self._top_k = config.media_top_k
        self._loss = config.media_loss
        self._delay_s = config.media_delay_ms / 1000.0
        self._jitter_s = config.media_jitter_ms / 1000.0
        self._impaired = bool(config.media_loss or config.media_delay_ms or config.media_jitter_ms)
        # Its own generator, so media impairment shifts none of the other fault dice.
        self._rng = random.Random(None if config.seed is None else f"media-{config.seed}")
        self._transport: asyncio.DatagramTransport | None = None
        self._sendto: Callable[[bytes, Any], None] = _nowhere
        self._closed = asyncio.Event()
        self.port: int | None = None
        self.sessions: dict[int, MediaSession] = {}
        self._rooms: dict[str, RoomMedia] = {}
        self._by_member: dict[tuple[Connection, str], MediaSession] = {}

    # Sessions

    def open(self, conn: Connection, user: str, name: str, room: Room, transport: str) -> MediaSession:
        """A new session of ``conn`` in room ``name``, replacing the one it had there."""
        self.close(conn, name)
        media_room = self._rooms.get(name)
        if media_room is None:
            media_room = self._rooms[name] = RoomMedia(room)
        session = MediaSession(self._new_ssrc(), conn, user, name, media_room, transport == "udp")
        self.sessions[session.ssrc] = session
        media_room.sessions[session.ssrc] = session
        self._by_member[conn, name] = session
        return session

    def close(self, conn: Connection, name: str) -> None:
        """End ``conn``'s session in room ``name`` if it has one."""
        session = self._by_member.pop((conn, name), None)
        if session is None:
            return
        del self.sessions[session.ssrc]
        media_room = session.room
        del media_room.sessions[session.ssrc]
        media_room.selected.discard(session)
        if not media_room.sessions:
            del self._rooms[name]

    def shutdown(self) -> None:
        """End every session; the server is stopping."""
        self.sessions.clear()
        self._rooms.clear()
        self._by_member.clear()

    def _new_ssrc(self) -> int:
        for _ in range(_SSRC_TRIES):
            ssrc = secrets.randbits(32)
            if ssrc and ssrc not in self.sessions:
                return ssrc
        raise RuntimeError(f"no free ssrc after {_SSRC_TRIES} draws")

    # The UDP endpoint

    @property
    def address(self) -> tuple[str, int] | None:
        """The (host, port) the UDP endpoint is bound to, or None when it is not."""
        if self._transport is None:
            return None
        host, port = self._transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)
        self._sendto = self._transport.sendto
        self._closed.clear()
        self.port = int(transport.get_extra_info("sockname")[1])

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        # Copies still delayed when the socket closed are dropped with it.
        self._sendto = _nowhere
        self._closed.set()

    def error_received(self, exc: Exception) -> None:
        # A listener's socket that went away; its session ends with its WebSocket.
        log.debug("media endpoint: %s", exc)

    async def close_endpoint(self) -> None:
        """Close the UDP socket and wait until it is closed, so its port can be bound again at once."""
        transport = self._transport
        if transport is None:
            return
        transport.close()
        try:
            await asyncio.wait_for(self._closed.wait(), _CLOSE_WAIT_S)
        except asyncio.TimeoutError:
            log.warning("the media endpoint did not close within %g s", _CLOSE_WAIT_S)

    # Frames in

    def datagram_received(self, data: bytes, addr: Any) -> None:
        counts = self._counts
        if len(data) < HEADER_BYTES:
            counts["malformed"] += 1
            return
        flags, kind, level, ssrc, seq, _, _, start = HEADER.unpack_from(data)
        if flags & _VERSION_BITS != VERSION or level > LEVEL_SILENCE:
            counts["malformed"] += 1
            return
        if kind == AUDIO:
            counts["received"] += 1
            session = self.sessions.get(ssrc)
            if session is None or session.addr != addr:
                counts["not_seated"] += 1
                return
            self._relay(session, data, level, seq, start)
        elif kind == BIND:
            self._bind(data, ssrc, addr)
        else:
            counts["malformed"] += 1

    def from_websocket(self, conn: Connection, data: bytes) -> bool:
        """Relay a binary WebSocket message if it is an audio frame of ``conn``'s own websocket session.

        False, with nothing done or counted, for anything else: the hub answers it as any binary frame.
        """
        if len(data) < HEADER_BYTES:
            return False
        flags, kind, level, ssrc, seq, _, _, start = HEADER.unpack_from(data)
        if flags & _VERSION_BITS != VERSION or kind != AUDIO or level > LEVEL_SILENCE:
            return False
        session = self.sessions.get(ssrc)
        if session is None or session.conn is not conn or session.udp:
            return False
        self._counts["received"] += 1
        self._relay(session, data, level, seq, start)
        return True

    def _bind(self, data: bytes, ssrc: int, addr: Any) -> None:
        session = self.sessions.get(ssrc)
        if (
            session is None
            or not session.udp
            or len(data) != HEADER_BYTES + TOKEN_BYTES
            or not hmac.compare_digest(data[HEADER_BYTES:], session.token)
        ):
            self._counts["malformed"] += 1
            return
        # A later bind moves the session to its new address, as a client behind a rebinding NAT needs.
        session.addr = addr
        self._sendto(data[:1] + bytes((BIND_ACK,)) + data[2:HEADER_BYTES], addr)

    # Frames out

    def _relay(self, session: MediaSession, data: bytes, level: int, seq: int, start: int) -> None:
        media_room = session.room
        if not media_room.may_publish(session.user):
            self._counts["not_seated"] += 1
            return
        if self._top_k:
            selected = self._select(session, media_room, data, level, seq, start)
            if selected is None:
                return
            data = selected
        if self._impaired:
            self._forward_impaired(session, media_room, data)
            return
        sendto = self._sendto
        frame = None
        sent = 0
        for other in media_room.sessions.values():
            if other is session:
                continue
            addr = other.addr
            if addr is not None:
                sendto(data, addr)
            elif other.udp:
                continue
            else:
                if frame is None:
                    frame = MediaFrame(data)
                other.conn.outbox.put(frame)
            sent += 1
        self._counts["forwarded"] += sent

    def _select(
        self, session: MediaSession, media_room: RoomMedia, data: bytes, level: int, seq: int, start: int
    ) -> bytes | None:
        """Top-K: the frame to forward, its sequence rewritten to hide what was not forwarded; None to drop it."""
        if start != session.stream_start:
            session.stream_start = start
            session.last_forwarded = SEQUENCE_MASK
            session.skipped = 0
            session.paused = False
        smoothed = session.level
        session.level = level if smoothed is None else smoothed + (level - smoothed) * LEVEL_SMOOTHING
        now = self._loop.time()
        session.heard_at = now
        if now >= media_room.next_pick:
            media_room.pick(self._top_k, now)
        selected = media_room.selected
        if session not in selected:
            # A free slot is taken at once, so a new voice in a quiet room is not cut for a whole pick.
            if len(selected) >= self._top_k:
                self._counts["not_selected"] += 1
                session.paused = True
                return None
            selected.add(session)
        if session.paused:
            # Every sequence since the last forwarded frame was held back (or lost on the way in).
            session.skipped = (session.skipped + seq - session.last_forwarded - 1) & SEQUENCE_MASK
            session.paused = False
        session.last_forwarded = seq
        skipped = session.skipped
        if not skipped:
            return data
        return (
            data[:_SEQUENCE_AT]
            + _SEQUENCE.pack((seq - skipped) & SEQUENCE_MASK)
            + data[_SEQUENCE_AT + _SEQUENCE.size :]
        )

    def _forward_impaired(self, session: MediaSession, media_room: RoomMedia, data: bytes) -> None:
        """Forward with the injected loss and delay, rolled per copy: loss first, then the delay."""
        counts = self._counts
        rng = self._rng
        loop = self._loop
        frame = None
        for other in media_room.sessions.values():
            if other is session:
                continue
            addr = other.addr
            if addr is None and other.udp:
                continue
            if self._loss and rng.random() < self._loss:
                counts["injected_loss"] += 1
                continue
            counts["forwarded"] += 1
            delay = self._delay_s + rng.uniform(-self._jitter_s, self._jitter_s) if self._jitter_s else self._delay_s
            if addr is not None:
                if delay > 0:
                    loop.call_later(delay, self._send_later, data, addr)
                else:
                    self._sendto(data, addr)
                continue
            if frame is None:
                frame = MediaFrame(data)
            if delay > 0:
                # Held in the outbox's own order, as a TCP stream would keep it.
                other.conn.outbox.put_at(loop.time() + delay, frame, 1)
            else:
                other.conn.outbox.put(frame)

    def _send_later(self, data: bytes, addr: Any) -> None:
        self._sendto(data, addr)


def _nowhere(data: bytes, addr: Any) -> None:
    """Where copies go while no UDP socket is open."""
