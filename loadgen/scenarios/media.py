"""Audio in rooms, the gevent side: each member's media session, its socket and listener, and the speakers' frames.

A member of a room that carries audio (the profile's ``media:`` section, docs/media.md) opens
a media session when it joins: over UDP it binds a socket of its own to the backend's media
port; over the websocket transport frames ride its signalling connection. It listens for as
long as it stays: a decoding listener hands every frame, with its arrival time, to a
:class:`~loadgen.media.Listener`; a counting one only counts them, reading its socket in
batches four times a second, which is what lets one generator core hold many more listeners.
Speakers on a mic seat, and hosts, publish 20 ms frames; one greenlet per process sends every
speaker's frames when they are due.

Arrival times are the kernel's receive timestamps where the system gives them (Linux), so a
busy generator delays the measuring of a frame, not its arrival. A user on an emulated weak
network (docs/network.md) has its datagrams dropped and held by its link each way; over the
websocket transport the connection's own emulation applies, as it does to every frame.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import random
import socket
import struct
import sys
import time

import gevent
from gevent.event import Event

from loadgen import media
from loadgen.drivers.base import MediaSession
from loadgen.population import draw_role
from loadgen.session import OperationTimeout, Session
from loadgen.transport import TransportError

log = logging.getLogger("loadgen.media")

#: how often, and how many times, a bind is sent before the media session counts as failed
BIND_EVERY_S = 0.2
BIND_TRIES = 10
#: a counting listener reads what its socket gathered this often
COUNT_EVERY_S = 0.25
#: the largest datagram read: a header and the largest payload a profile allows, with room to spare
DATAGRAM_MAX = 2048
#: enough for a counting listener's quarter second of a busy room's frames
RECEIVE_BUFFER_BYTES = 1 << 20
#: SO_TIMESTAMPNS: Python names it on some builds only; 35 is its number on Linux
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@qq")
_ANCILLARY_BYTES = socket.CMSG_SPACE(_TIMESPEC.size) if hasattr(socket, "CMSG_SPACE") else 0


class MediaPlane:
    """One process's publishing: every speaker's frames sent when due, held ones when their link lets them go."""

    def __init__(self, run_context, run: media.MediaRun) -> None:
        self.run_context = run_context
        self.run = run
        self.speakers: set[UserMedia] = set()
        #: datagrams an emulated uplink holds: (due on the wall clock, order, socket, packet, address)
        self._held: list[tuple[float, int, socket.socket, bytes, tuple]] = []
        self._order = itertools.count()
        self._greenlet: gevent.Greenlet | None = None

    @classmethod
    def of(cls, run_context) -> MediaPlane | None:
        run = media.for_run(run_context)
        if run is None:
            return None
        return run_context.shared("media/plane", lambda: cls._for(run_context, run))

    @classmethod
    def _for(cls, run_context, run: media.MediaRun) -> MediaPlane:
        def first_audio(after: str, seconds: float) -> None:
            # an operation like any other: Locust's table, the summary's operations, SLO figures and metrics
            run_context.report(f"media.first_audio.{after}", seconds, None)

        run.on_first_audio = first_audio
        return cls(run_context, run)

    def speak(self, who: UserMedia) -> None:
        self.speakers.add(who)
        if self._greenlet is None or self._greenlet.dead:
            self._greenlet = gevent.spawn(self._send_due)

    def hold(self, due: float, sock: socket.socket, packet: bytes, address: tuple) -> None:
        heapq.heappush(self._held, (due, next(self._order), sock, packet, address))

    def _send_due(self) -> None:
        """Every frame time: each speaker's due frames, then the held datagrams whose time has come."""
        run_context = self.run_context
        while (self.speakers or self._held) and not run_context.draining:
            wall = time.time()
            now = wall + run_context.accounting.clock_offset
            for who in list(self.speakers):
                who.publish_due(now, wall)
            held = self._held
            while held and held[0][0] <= wall:
                _, _, sock, packet, address = heapq.heappop(held)
                _send_datagram(sock, packet, address)
            # the next frame boundary, or a held datagram's time if that comes first
            wait = media.FRAME_SECONDS - (wall % media.FRAME_SECONDS)
            if held:
                wait = min(wait, max(0.0, held[0][0] - time.time()))
            gevent.sleep(wait)
        self.speakers.clear()
        self._held.clear()


def datagram_socket(host: str, decode: bool) -> socket.socket:
    """A member's UDP socket on ``host``: room for a counting reader's quarter second; arrival times to decode."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
    if sys.platform == "linux" and decode:
        sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
    sock.bind((host, 0))
    return sock


def _send_datagram(sock: socket.socket, packet: bytes, address: tuple) -> None:
    try:
        sock.sendto(packet, address)
    except OSError:
        # a socket closed under a held datagram, or a full buffer: the frame is lost, as on a real link
        pass


class UserMedia:
    """One user's media session in one room: socket, listener, and its stream while it speaks."""

    def __init__(self, user, plane: MediaPlane, decode: bool) -> None:
        self.user = user
        self.plane = plane
        self.decode = decode
        self.session: MediaSession | None = None
        self.signalling: Session | None = None
        self.listener: media.Listener | None = None
        self.publisher: media.Publisher | None = None
        self.sock: socket.socket | None = None
        self.address: tuple | None = None
        self._reader: gevent.Greenlet | None = None
        network = user.network
        link = network.link if network is not None and plane.run.profile.transport == "udp" else None
        rng = random.Random(f"media-link/{user.user_id}")
        self.up = media.DatagramLane(link.up, rng) if link is not None and link.up is not None else None
        self.down = media.DatagramLane(link.down, rng) if link is not None and link.down is not None else None
        self._bound = Event()

    @classmethod
    def for_user(cls, user) -> UserMedia | None:
        """The user's media, None when the run carries no audio or its driver cannot open a media session."""
        run_context = user.run_context
        plane = MediaPlane.of(run_context)
        if plane is None:
            return None
        if not run_context.driver_does("media.open"):
            # said once per process, the first time a user would have listened
            run_context.shared("media/unsupported", lambda: log.warning(
                "The %s driver has no media sessions: rooms carry no audio despite the profile's media section",
                run_context.driver_class.__name__) or True)  # fmt: skip
            return None
        share = plane.run.profile.decode_share
        decode = draw_role(random.Random(f"media/{user.user_id}"), {"decode": share}, "count") == "decode"
        return cls(user, plane, decode)

    @property
    def speaking(self) -> bool:
        return self.publisher is not None

    # -- the session ------------------------------------------------------------------

    def open(self, signalling: Session, room: str, listening_since: float) -> None:
        """Start listening in ``room`` (joined at ``listening_since``, the backend's clock); raises on failure."""
        self.close(listening_since)
        run_context = self.user.run_context
        transport = self.plane.run.profile.transport
        opened = signalling.media_open(room, transport)
        self.session, self.signalling = opened, signalling
        self.listener = self.plane.run.listener(listening_since, self.decode)
        if transport == "websocket":
            signalling.on_media = self._heard_on_signalling
            return
        host = signalling.url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
        sock = datagram_socket(host, self.decode)
        self.sock, self.address = sock, (host, opened.udp_port)
        started = time.perf_counter()
        error = None if self._bind(sock, opened) else OperationTimeout("media.bind", BIND_EVERY_S * BIND_TRIES)
        run_context.report("media.bind", time.perf_counter() - started, error)
        if error is not None:
            self.close(listening_since)
            raise error
        self.listen(sock, self.listener)

    def listen(self, sock: socket.socket, listener: media.Listener) -> None:
        """Hear what reaches ``sock`` (bound, known to the backend) through ``listener``, read as its kind needs."""
        self.sock, self.listener = sock, listener
        self._reader = gevent.spawn(self._read if self.decode else self._count, sock)

    def _bind(self, sock: socket.socket, opened: MediaSession) -> bool:
        """Tell the backend which address is ours; True once it acknowledged."""
        bind = media.bind_packet(opened.ssrc, opened.token)
        sock.settimeout(BIND_EVERY_S)
        for _ in range(BIND_TRIES):
            sock.sendto(bind, self.address)
            deadline = time.monotonic() + BIND_EVERY_S
            while time.monotonic() < deadline:
                try:
                    data = sock.recv(DATAGRAM_MAX)
                except TimeoutError:
                    break
                header = media.read_header(data)
                if header is not None and header.kind == media.BIND_ACK and header.ssrc == opened.ssrc:
                    return True
        return False

    def close(self, at: float) -> None:
        """Stop speaking and listening (left the room, or lost the connection)."""
        self.stop_speaking()
        if self.listener is not None:
            self.listener.close(at)
            self.listener = None
        if self.signalling is not None and self.signalling.on_media == self._heard_on_signalling:
            self.signalling.on_media = None
        self.session = self.signalling = None
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.kill(block=False)

    # -- speaking ---------------------------------------------------------------------

    def start_speaking(self, stream_start: float, begins: float) -> None:
        """Publish from ``begins`` on (the backend's clock): the stream a listener times from ``stream_start``."""
        if self.session is None or self.publisher is not None:
            return
        profile = self.plane.run.profile
        # on the sending greenlet's 20 ms grid: a frame leaves when it is due, not up to a frame later
        offset = self.user.run_context.accounting.clock_offset
        begins = math.ceil((begins - offset) / media.FRAME_SECONDS) * media.FRAME_SECONDS + offset
        talker = media.Talker(random.Random(f"talk/{self.user.user_id}/{stream_start}"), profile.talk_mean_s,
                              profile.quiet_mean_s)  # fmt: skip
        self.publisher = media.Publisher(
            self.session.ssrc, stream_start, bytes(profile.frame_bytes), talker, begins=begins
        )
        self.plane.speak(self)

    def stop_speaking(self) -> None:
        self.publisher = None
        self.plane.speakers.discard(self)

    def publish_due(self, now: float, wall: float) -> None:
        """In the plane's greenlet: send the frames due by ``now``, or stop once the user may no longer speak."""
        publisher = self.publisher
        if publisher is None or not self.user.may_speak():
            self.stop_speaking()
            return
        packets = publisher.due(now)
        run = self.plane.run
        run.sent(len(packets))
        if self.sock is None:
            signalling = self.signalling
            try:
                for packet in packets:
                    signalling.send_media(packet)
            except TransportError:
                self.stop_speaking()
            return
        sock, address, up = self.sock, self.address, self.up
        for packet in packets:
            if up is None:
                _send_datagram(sock, packet, address)
                continue
            hold = up.admit(wall, len(packet))
            if hold is None:
                run.network_dropped(1)
            elif hold == 0:
                _send_datagram(sock, packet, address)
            else:
                self.plane.hold(wall + hold, sock, packet, address)

    # -- listening --------------------------------------------------------------------

    def _heard_on_signalling(self, packet: bytes) -> None:
        listener = self.listener
        if listener is not None:
            listener.frame(packet, time.time() + self.user.run_context.accounting.clock_offset)

    def _read(self, sock: socket.socket) -> None:
        """A decoding listener's reader: every datagram with its arrival time, through the emulated downlink."""
        accounting = self.user.run_context.accounting
        down = self.down
        held: list[tuple[float, int, bytes]] = []
        order = itertools.count()
        timestamps = sys.platform == "linux"
        while self.sock is sock:
            sock.settimeout(None if not held else max(0.0, held[0][0] - time.time()))
            try:
                data, arrival = _receive(sock, timestamps)
                # everything already queued, so that held frames are let go in the order they arrive
                sock.settimeout(0.0)
                while data is not None:
                    listener = self.listener
                    if listener is None:
                        return
                    if down is None:
                        listener.frame(data, arrival + accounting.clock_offset)
                    else:
                        hold = down.admit(arrival, len(data))
                        if hold is None:
                            self.plane.run.network_dropped(1)
                        else:
                            heapq.heappush(held, (arrival + hold, next(order), data))
                    data, arrival = _receive(sock, timestamps)
            except TimeoutError:
                pass
            except OSError:
                return  # closed under us: the listening has ended
            wall = time.time()
            while held and held[0][0] <= wall and self.listener is not None:
                due, _, data = heapq.heappop(held)
                self.listener.frame(data, due + accounting.clock_offset)

    def _count(self, sock: socket.socket) -> None:
        """A counting listener's reader: a batch of datagrams four times a second, counted unread."""
        sock.settimeout(0.0)
        while self.sock is sock:
            gevent.sleep(COUNT_EVERY_S)
            frames = 0
            try:
                while True:
                    sock.recv(DATAGRAM_MAX)
                    frames += 1
            except BlockingIOError:
                pass
            except OSError:
                return
            listener = self.listener
            if listener is None:
                return
            down = self.down
            if down is not None:
                # arrival times do not matter to a count: only what the link lets through
                wall = time.time()
                dropped = sum(down.admit(wall, 0) is None for _ in range(frames))
                self.plane.run.network_dropped(dropped)
                frames -= dropped
            listener.count(frames)


def _receive(sock: socket.socket, timestamps: bool) -> tuple[bytes | None, float]:
    """One datagram and when it arrived (wall clock); (None, 0) when nothing is queued on a non-blocking socket."""
    try:
        if not timestamps:
            return sock.recv(DATAGRAM_MAX), time.time()
        data, ancillary, _, _ = sock.recvmsg(DATAGRAM_MAX, _ANCILLARY_BYTES)
    except BlockingIOError:
        return None, 0.0
    for level, kind, value in ancillary:
        if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(value) >= _TIMESPEC.size:
            seconds, nanoseconds = _TIMESPEC.unpack_from(value)
            return data, seconds + nanoseconds / 1e9
    return data, time.time()
