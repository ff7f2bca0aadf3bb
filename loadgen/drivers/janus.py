"""Driver for the Janus WebRTC server's API over WebSocket: voice rooms and mic seats, signalling only.

A voice room is two Janus rooms with the same number: an AudioBridge room, which every member
joins (membership and mute), and a VideoRoom room whose publishers are the mic seats. Seat
``n`` is the VideoRoom participant with id ``n + 1``: taking it is joining as a publisher with
that id, leaving it is leaving the VideoRoom. Janus refuses a second participant with an id
already present (error 436), which makes "one user per seat" Janus' own rule; it does *not*
count a publisher that sends no media against the room's publisher limit, so the seat count
is kept by the ids themselves (1 … seats) rather than by that limit.

Janus has no seat numbers, versions or actor timestamps, so the driver makes them: every
member's driver numbers seats by participant id (the same for all), counts a version per room
from its own join in the order Janus' events arrive, and reads the actor's time from the
display name Janus echoes (a JSON object ``{"u": user, "ts": time, …}``). See
docs/drivers-janus.md for the whole mapping and what the invariant checks can prove on Janus.

No message streams: Janus carries no chat, gifts, danmaku or settings, so those operations are
unsupported, and so are clock sync (Janus tells no time), seat locks and invites.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson

from loadgen.drivers.base import (
    MALFORMED_REPLY,
    Driver,
    Event,
    Failure,
    JoinResult,
    LeaveResult,
    LoginResult,
    LogoutResult,
    Malformed,
    Outgoing,
    Reply,
    Seat,
    SeatChange,
    SeatResult,
    SeatSnapshot,
    Unsupported,
    unreadable,
)

AUDIOBRIDGE = "janus.plugin.audiobridge"
VIDEOROOM = "janus.plugin.videoroom"
#: Janus ends a session after ``session_timeout`` (60 s by default) without a request on it;
#: WebSocket pings do not count, so the driver sends its own keepalive well within that
KEEPALIVE_SECONDS = 25.0
#: how long the connection must have been idle before a logout destroys the session: a caller
#: going on from one operation to the next (leave a room, join another) is not cut off between
QUIET_SECONDS = 0.2
#: seats of a room joined without a seat count (a plain chat ``join``)
DEFAULT_SEATS = 8

# Plugin error codes the driver acts on (janus_videoroom.c, janus_audiobridge.c).
VIDEOROOM_NO_SUCH_ROOM = 426
VIDEOROOM_ROOM_EXISTS = 427
VIDEOROOM_NO_SUCH_FEED = 428
VIDEOROOM_ID_EXISTS = 436
AUDIOBRIDGE_NO_SUCH_ROOM = 485
AUDIOBRIDGE_ROOM_EXISTS = 486
AUDIOBRIDGE_NO_SUCH_USER = 492

#: Janus messages that need nothing from a signalling-only client
_IGNORED = frozenset({"ack", "success", "detached", "hangup", "webrtcup", "media", "slowlink", "trickle"})


def room_number(room: str) -> int:
    """The Janus room number of a scenario's room: a decimal name as is, any other name hashed.

    48 bits of BLAKE2b keep the number exact in JSON (below 2**53) and collisions unlikely
    for any realistic count of rooms.
    """
    if room.isdigit():
        return int(room)
    return int.from_bytes(hashlib.blake2b(room.encode(), digest_size=6).digest(), "big")


class _Refusal(Exception):
    """Ends an operation with ``Failure(code, message)``."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message


class _PluginError(_Refusal):
    """A plugin answered with ``error_code``; operations catch the codes they expect."""

    def __init__(self, number: int, message: str) -> None:
        super().__init__(f"janus_{number}", message)
        self.number = number


#: an operation: yields Janus requests, is sent each one's answer, returns the typed result
Flow = Generator[dict, dict, object]
#: what a flow yields to send nothing until the connection's other operations have ended
_AFTER_OTHERS: dict = {"janus": "(after the others)"}


@dataclass
class _Step:
    """The request a flow waits on; ``flow`` None for requests whose answer nobody needs."""

    flow: Flow | None
    request_id: int
    verb: str


@dataclass
class _Occupant:
    """A VideoRoom participant on a seat, as the seat's display name describes it."""

    user: str
    audio_id: int | None
    #: the time its leave was announced, once it was
    left_at: float | None = None


@dataclass
class _Room:
    """One member's picture of a voice room, built from Janus' events in arrival order."""

    name: str
    number: int
    seats: int
    audio_handle: int | None = None
    member_handle: int | None = None
    seat_handle: int | None = None
    my_seat: int | None = None
    my_audio_id: int | None = None
    #: seat -> occupant
    occupants: dict[int, _Occupant] = field(default_factory=dict)
    #: AudioBridge participant id -> (display, muted)
    audio: dict[int, tuple[str, bool]] = field(default_factory=dict)
    #: AudioBridge id -> (actor, time) of an announced mute or unmute of it
    mutes: dict[int, tuple[str, float]] = field(default_factory=dict)
    #: seat -> (actor, time) of an announced kick
    kicks: dict[int, tuple[str, float]] = field(default_factory=dict)
    #: plugin events that came before the handle's own join answer, replayed on top of it
    early: dict[str, list[dict]] = field(default_factory=lambda: {"audio": [], "member": []})
    joined: set[str] = field(default_factory=set)
    #: seat snapshots go out once the VideoRoom join answered, and stop when leaving begins
    live: bool = False
    version: int = 0


def _display(**fields: object) -> str:
    return orjson.dumps(fields).decode()


def _read_display(display: object) -> dict:
    """A display name written by this driver, or {} for anyone else's."""
    if not isinstance(display, str) or not display.startswith("{"):
        return {}
    try:
        fields = orjson.loads(display)
    except orjson.JSONDecodeError:
        return {}
    return fields if isinstance(fields, dict) else {}


def _janus_id(value: object) -> int:
    """A session, handle or participant id Janus gave, which later requests carry back: a JSON integer."""
    if type(value) is not int or not 0 <= value < 2**64:
        raise ValueError(f"not an id Janus could give: {value!r}")
    return value


def _time(value: object) -> float:
    """An actor's time from a display name: a finite number, or ValueError."""
    when = float(value)  # type: ignore[arg-type]
    if not math.isfinite(when):
        raise ValueError(f"a time of {value!r}")
    return when


def _data(reply: dict) -> dict:
    """The plugin's answer in a Janus reply; its error as a _PluginError."""
    data = reply["plugindata"]["data"]
    number = data.get("error_code")
    if number is not None:
        raise _PluginError(int(number), str(data.get("error", "")))
    return data


class JanusDriver(Driver):
    """Speaks the Janus API (``janus-protocol``) for one connection: one Janus session.

    ``monotonic`` times keepalives, ``wall`` stamps what Janus does not; both are
    injectable for tests. ``apisecret`` and ``admin_key`` are Janus' own: the first goes into
    every request, the second into room creation.
    """

    subprotocols = ("janus-protocol",)
    supports = frozenset(
        (
            "session.login",
            "session.logout",
            "room.join",
            "room.leave",
            "seat.take",
            "seat.leave",
            "seat.mute",
            "seat.kick",
        )
    )

    def __init__(
        self,
        *,
        apisecret: str | None = None,
        admin_key: str | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.apisecret = apisecret
        self.admin_key = admin_key
        self.monotonic = monotonic
        self.wall = wall
        self.user = ""
        self.session_id: int | None = None
        self._ids = itertools.count(1)
        self._transactions = itertools.count(1)
        self._waiting: dict[str, _Step] = {}
        self._outbox: list[bytes] = []
        #: (request id, flow) of a logout waiting for the connection to be quiet
        self._parked: list[tuple[int, Flow]] = []
        self._last_ended = float("-inf")
        self._last_sent = monotonic()
        self._rooms: dict[str, _Room] = {}
        #: handle id -> (room, role): "audio", "member" or "seat"
        self._handles: dict[int, tuple[_Room, str]] = {}

    @classmethod
    def configure(cls, url: str) -> tuple[Callable[[], Driver], str]:
        """``janus+ws://host:8188/?apisecret=S&admin_key=K``: Janus' secrets from the query."""
        _, url = super().configure(url)
        parts = urlsplit(url)
        options: dict[str, str] = {}
        kept = []
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key in ("apisecret", "admin_key"):
                options[key] = value
            else:
                kept.append((key, value))
        return functools.partial(cls, **options), urlunsplit(parts._replace(query=urlencode(kept)))

    # -- operations -------------------------------------------------------------------

    def login(self, user: str, token: str) -> Outgoing:
        self.user = user
        return self._start(self._login(user))

    def logout(self) -> Outgoing:
        return self._start(self._logout())

    def join(self, room: str) -> Outgoing:
        return self.join_room(room)

    def join_room(self, room: str, *, seats: int | None = None, as_host: bool = False) -> Outgoing:
        # Janus rooms have no host: a host joins like anyone else
        return self._start(self._join_room(room, seats or DEFAULT_SEATS))

    def leave(self, room: str) -> Outgoing:
        return self._start(self._leave_room(room))

    def room_op(self, op: str, room: str, sent_at: float, **fields: object) -> Outgoing:
        if op == "seat.take":
            return self._start(self._take_seat(room, int(fields["seat"]), sent_at))
        if op == "seat.leave":
            return self._start(self._leave_seat_op(room, sent_at))
        if op == "seat.mute":
            return self._start(self._mute(room, int(fields["seat"]), bool(fields.get("muted", True)), sent_at))
        if op == "seat.kick":
            return self._start(self._kick(room, int(fields["seat"]), sent_at))
        raise Unsupported(op)

    def send(self, room: str, cseq: int, sent_at: float, body: str) -> Outgoing:
        raise Unsupported("msg.send")

    def direct(self, to: str, cseq: int, sent_at: float, body: str) -> Outgoing:
        raise Unsupported("dm.send")

    def read(self, room: str, seq: int) -> Outgoing:
        raise Unsupported("msg.read")

    def history(self, stream: str, since: int, limit: int) -> Outgoing:
        raise Unsupported("history.fetch")

    def clock(self, t0: float) -> Outgoing:
        raise Unsupported("clock.sync")

    def pending(self) -> list[bytes]:
        if self._parked and self._quiet():
            parked, self._parked = self._parked, []
            for request_id, flow in parked:
                # a parked flow (a logout) goes on to a request, never straight to its end
                self._drive(request_id, flow, None)
        if self.session_id is not None and self.monotonic() - self._last_sent >= KEEPALIVE_SECONDS:
            self._queue({"janus": "keepalive"})
        frames, self._outbox = self._outbox, []
        return frames

    # -- the flows --------------------------------------------------------------------

    def _login(self, user: str) -> Flow:
        reply = yield {"janus": "create"}
        self.session_id = _janus_id(reply["data"]["id"])
        # Janus tells no time: the local clock stands in, and clock sync is unsupported
        return LoginResult(user, 0, self.wall())

    def _logout(self) -> Flow:
        if not self._quiet():
            # a multi-step operation under way would send its next step to a destroyed session
            yield {"janus": "keepalive"}
            yield _AFTER_OTHERS
        yield {"janus": "destroy"}
        self.session_id = None
        self._rooms.clear()
        self._handles.clear()
        return LogoutResult({}, 0)

    def _join_room(self, name: str, seats: int) -> Flow:
        if name in self._rooms:
            yield from self._refuse("already_member", f"already in {name}")
        room = _Room(name, room_number(name), seats)
        self._rooms[name] = room
        try:
            room.audio_handle = yield from self._attach(AUDIOBRIDGE, room, "audio")
            create = {"request": "create", "room": room.number, "description": name}
            me = _display(u=self.user)
            audio = yield from self._enter(
                room.audio_handle,
                {"request": "join", "room": room.number, "display": me, "muted": False},
                create,
                AUDIOBRIDGE_NO_SUCH_ROOM,
                AUDIOBRIDGE_ROOM_EXISTS,
            )
            room.my_audio_id = _janus_id(audio["id"])
            room.audio = {int(p["id"]): (p.get("display", ""), bool(p.get("muted"))) for p in audio["participants"]}
            # the list leaves out the joiner, whose own mutes come as events like anyone's
            room.audio[room.my_audio_id] = (me, False)
            self._replay(room, "audio")
            room.member_handle = yield from self._attach(VIDEOROOM, room, "member")
            video = yield from self._enter(
                room.member_handle,
                {"request": "join", "ptype": "publisher", "room": room.number, "display": _display(u=self.user)},
                {**create, "publishers": seats, "notify_joining": True},
                VIDEOROOM_NO_SUCH_ROOM,
                VIDEOROOM_ROOM_EXISTS,
            )
        except _Refusal:
            self._forget(room)
            raise
        if "attendees" not in video:
            self._forget(room)
            raise _Refusal(
                "unsupported_room",
                f"VideoRoom {room.number} was created without notify_joining: seat changes would not be seen",
            )
        for participant in (*video.get("publishers", ()), *video["attendees"]):
            self._seat_joined(room, participant)
        self._replay(room, "member")
        room.live = True
        return JoinResult(name, 0, len(room.audio), None, self._snapshot(room, None), False)

    def _leave_room(self, name: str) -> Flow:
        room = self._rooms.get(name)
        if room is None:
            yield from self._refuse("not_member", f"not in {name}")
        try:
            if room.seat_handle is not None:
                yield from self._leave_seat(room, self.wall())
            room.live = False
            yield from self._ask(room.member_handle, {"request": "leave"})
            yield from self._ask(room.audio_handle, {"request": "leave"})
        finally:
            # whatever Janus answered, the handles go: detaching leaves what is left to leave
            self._forget(room)
        return LeaveResult(name, 0)

    def _take_seat(self, name: str, seat: int, sent_at: float) -> Flow:
        room = yield from self._member_of(name)
        if room.seat_handle is not None:
            yield from self._refuse("already_seated", f"already on seat {room.my_seat}")
        if not 0 <= seat < room.seats:
            yield from self._refuse("bad_request", f"seat {seat} outside 0 … {room.seats - 1}")
        # a VideoRoom handle that left its room cannot join again: one handle per turn on a seat
        handle = yield from self._attach(VIDEOROOM, room, "seat")
        room.seat_handle = handle
        join = {"request": "join", "ptype": "publisher", "room": room.number, "id": seat + 1,
                "display": _display(u=self.user, ts=sent_at, ab=room.my_audio_id)}  # fmt: skip
        try:
            yield from self._ask(handle, join)
        except _Refusal as exc:
            self._drop_seat_handle(room)
            if isinstance(exc, _PluginError) and exc.number == VIDEOROOM_ID_EXISTS:
                raise _Refusal("seat_taken", f"seat {seat} is taken") from None
            raise
        room.my_seat = seat
        return SeatResult(name, seat, None)

    def _leave_seat_op(self, name: str, sent_at: float) -> Flow:
        room = yield from self._member_of(name)
        if room.seat_handle is None:
            yield from self._refuse("not_seated", "on no seat")
        seat = yield from self._leave_seat(room, sent_at)
        return SeatResult(name, seat, None)

    def _leave_seat(self, room: _Room, sent_at: float) -> Generator[dict, dict, int]:
        """Announce the leave's time in the seat's display name, then leave; the leave carries none."""
        handle, seat = room.seat_handle, room.my_seat
        display = _display(u=self.user, ts=sent_at, ab=room.my_audio_id, leave=True)
        try:
            yield from self._ask(handle, {"request": "configure", "display": display})
            yield from self._ask(handle, {"request": "leave"})
        finally:
            self._drop_seat_handle(room)
        return seat

    def _mute(self, name: str, seat: int, muted: bool, sent_at: float) -> Flow:
        room = yield from self._member_of(name)
        occupant = room.occupants.get(seat)
        if occupant is None or occupant.audio_id is None:
            yield from self._refuse("not_seated", f"nobody this driver can mute on seat {seat}")
        # the mute event shows the muted member's display name, not the actor's: announce first
        target = occupant.audio_id
        display = _display(u=self.user, ts=sent_at, mute=target)
        yield from self._ask(room.audio_handle, {"request": "configure", "display": display})
        room.mutes[target] = (self.user, sent_at)
        try:
            yield from self._ask(
                room.audio_handle, {"request": "mute" if muted else "unmute", "room": room.number, "id": target}
            )
        except _PluginError as exc:
            if exc.number == AUDIOBRIDGE_NO_SUCH_USER:
                raise _Refusal("not_seated", f"seat {seat}'s occupant has left the room") from None
            raise
        return SeatResult(name, seat, None)

    def _kick(self, name: str, seat: int, sent_at: float) -> Flow:
        room = yield from self._member_of(name)
        if seat not in room.occupants:
            yield from self._refuse("not_seated", f"seat {seat} is empty")
        display = _display(u=self.user, ts=sent_at, kick=seat + 1)
        yield from self._ask(room.member_handle, {"request": "configure", "display": display})
        room.kicks[seat] = (self.user, sent_at)
        try:
            yield from self._ask(room.member_handle, {"request": "kick", "room": room.number, "id": seat + 1})
        except _PluginError as exc:
            if exc.number == VIDEOROOM_NO_SUCH_FEED:
                raise _Refusal("not_seated", f"seat {seat} was left meanwhile") from None
            raise
        return SeatResult(name, seat, None)

    # -- flow building blocks ---------------------------------------------------------

    def _attach(self, plugin: str, room: _Room, role: str) -> Generator[dict, dict, int]:
        reply = yield {"janus": "attach", "plugin": plugin}
        handle = _janus_id(reply["data"]["id"])
        self._handles[handle] = (room, role)
        return handle

    def _enter(
        self, handle: int, join: dict, create: dict, no_such_room: int, room_exists: int
    ) -> Generator[dict, dict, dict]:
        """Join, creating the room first if Janus has none by that number (a race to create is fine)."""
        try:
            return (yield from self._ask(handle, join))
        except _PluginError as exc:
            if exc.number != no_such_room:
                raise
        if self.admin_key is not None:
            create = {**create, "admin_key": self.admin_key}
        try:
            yield from self._ask(handle, create)
        except _PluginError as exc:
            if exc.number != room_exists:
                raise
        return (yield from self._ask(handle, join))

    def _member_of(self, name: str) -> Generator[dict, dict, _Room]:
        room = self._rooms.get(name)
        if room is None or not room.live:
            yield from self._refuse("not_member", f"not in {name}")
        return room

    def _refuse(self, code: str, message: str) -> Generator[dict, dict, None]:
        """Refuse without asking Janus, over a keepalive's round trip: every operation gets its reply from a frame."""
        yield {"janus": "keepalive"}
        raise _Refusal(code, message)

    def _ask(self, handle: int | None, body: dict) -> Generator[dict, dict, dict]:
        """A plugin request; its answer's data, or its error raised as a _PluginError."""
        return _data((yield {"janus": "message", "handle_id": handle, "body": body}))

    def _drop_seat_handle(self, room: _Room) -> None:
        handle = room.seat_handle
        room.seat_handle = room.my_seat = None
        if handle is not None:
            self._handles.pop(handle, None)
            self._queue({"janus": "detach", "handle_id": handle})

    def _forget(self, room: _Room) -> None:
        """Let go of a room and detach its handles; their last events are ignored."""
        room.live = False
        if self._rooms.get(room.name) is room:
            del self._rooms[room.name]
        for handle in (room.seat_handle, room.member_handle, room.audio_handle):
            if handle is not None:
                self._handles.pop(handle, None)
                self._queue({"janus": "detach", "handle_id": handle})
        room.seat_handle = room.member_handle = room.audio_handle = None

    # -- frames -----------------------------------------------------------------------

    def _start(self, flow: Flow) -> Outgoing:
        request_id = next(self._ids)
        request = next(flow)
        return Outgoing(request_id, self._encode(request, _Step(flow, request_id, request["janus"])))

    def _queue(self, request: dict) -> None:
        """A request whose answer nobody waits for (keepalive, detach)."""
        self._outbox.append(self._encode(request, _Step(None, 0, request["janus"])))

    def _encode(self, request: dict, step: _Step) -> bytes:
        transaction = str(next(self._transactions))
        request["transaction"] = transaction
        if self.session_id is not None and request["janus"] != "create":
            request["session_id"] = self.session_id
        if self.apisecret is not None:
            request["apisecret"] = self.apisecret
        self._waiting[transaction] = step
        self._last_sent = self.monotonic()
        return orjson.dumps(request)

    def receive(self, data: bytes, binary: bool) -> list[Event]:
        if binary:
            return [Malformed("binary frame: the Janus API is JSON text", data, "binary")]
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            return [unreadable(data, "bad_json", f"not JSON: {exc}")]
        if type(message) is not dict:
            return [Malformed(f"JSON {type(message).__name__}, not an object", data, "not_object")]
        try:
            kind = message["janus"]
            transaction = message.get("transaction")
            step = self._waiting.get(transaction) if isinstance(transaction, str) else None
            # an asynchronous request is acknowledged first; its answer comes later as an event
            if step is not None and (kind != "ack" or step.verb == "keepalive"):
                del self._waiting[transaction]
                return self._advance(step, message)
            if kind == "event":
                return self._plugin_event(message)
            if kind == "timeout":
                self.session_id = None
                return [Failure(None, "session_timeout", "Janus ended the session: no keepalive in time")]
            if kind == "error":
                error = message["error"]
                return [Failure(None, f"janus_{error['code']}", str(error.get("reason", "")))]
            if kind in _IGNORED:
                return []
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            return [Malformed(f"{type(exc).__name__}: {exc}", data, "unexpected_shape")]
        return [Malformed(f"unknown Janus message {kind!r:.40}", data, "unknown_event")]

    def _advance(self, step: _Step, message: dict) -> list[Event]:
        """Hand a flow the answer it waited for; queue its next request or end it."""
        if step.flow is None:
            return []
        events = self._drive(step.request_id, step.flow, message)
        if events:
            self._last_ended = self.monotonic()
        return events

    def _drive(self, request_id: int, flow: Flow, message: dict | None) -> list[Event]:
        """Run a flow to its next request, which is queued, or to its end: the reply or failure."""
        try:
            if message is not None and message["janus"] == "error":
                error = message["error"]
                request = flow.throw(_Refusal(f"janus_{error['code']}", str(error.get("reason", ""))))
            else:
                request = flow.send(message)
            if request is _AFTER_OTHERS:
                # pending() lets it go on once the connection has been quiet a while
                self._parked.append((request_id, flow))
                return []
        except StopIteration as done:
            return [Reply(request_id, done.value)]
        except _Refusal as exc:
            return [Failure(request_id, exc.code, exc.message)]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # the operation must still end, or its caller would wait for the timeout
            return [Failure(request_id, MALFORMED_REPLY, f"{type(exc).__name__}: {exc}")]
        self._outbox.append(self._encode(request, _Step(flow, request_id, request["janus"])))
        return []

    def _quiet(self) -> bool:
        """No operation waits for Janus, and none ended in the last moment (its caller may go on)."""
        busy = any(step.flow is not None for step in self._waiting.values())
        return not busy and self.monotonic() - self._last_ended >= QUIET_SECONDS

    # -- events -----------------------------------------------------------------------

    def _plugin_event(self, message: dict) -> list[Event]:
        owner = self._handles.get(message.get("sender"))
        if owner is None:
            return []  # a handle already let go of
        room, role = owner
        data = message["plugindata"]["data"]
        if role == "seat":
            if data.get("leaving") == "ok" and data.get("reason") == "kicked":
                # the member handle sees the kick itself; this handle is dead now
                self._drop_seat_handle(room)
            return []
        if role not in room.joined:
            room.early[role].append(data)
            return []
        out: list[Event] = []
        (self._audio_event if role == "audio" else self._member_event)(room, data, out)
        return out

    def _replay(self, room: _Room, role: str) -> None:
        """Apply events that overtook the handle's join answer: its lists may predate them."""
        room.joined.add(role)
        early, room.early[role] = room.early[role], []
        for data in early:
            (self._audio_event if role == "audio" else self._member_event)(room, data, [])

    def _member_event(self, room: _Room, data: dict, out: list[Event]) -> None:
        """VideoRoom events of the member's own participant: seats taken, left, kicked; displays."""
        if "joining" in data:
            self._seat_joined(room, data["joining"], out)
        for publisher in data.get("publishers", ()):
            # a client sending media on a seat id shows up here rather than in "joining"
            seat = int(publisher["id"]) - 1
            if 0 <= seat < room.seats and seat not in room.occupants:
                self._seat_joined(room, publisher, out)
        if "display" in data and "id" in data:
            seat = int(data["id"]) - 1
            fields = _read_display(data["display"])
            occupant = room.occupants.get(seat)
            if occupant is not None and fields.get("leave"):
                occupant.left_at = _time(fields["ts"])
            elif "kick" in fields:
                room.kicks[int(fields["kick"]) - 1] = (str(fields.get("u")), _time(fields["ts"]))
        for key, kind in (("leaving", "leave"), ("kicked", "kick")):
            if isinstance(data.get(key), int):
                self._seat_left(room, data[key] - 1, kind, out)

    def _seat_joined(self, room: _Room, participant: dict, out: list[Event] | None = None) -> None:
        seat = int(participant["id"]) - 1
        if not 0 <= seat < room.seats:
            return  # a member, not a seat
        display = participant.get("display", "")
        fields = _read_display(display)
        user = str(fields.get("u", display or f"janus-{seat + 1}"))
        audio_id = fields.get("ab")
        room.occupants[seat] = _Occupant(user, int(audio_id) if isinstance(audio_id, int) else None)
        room.kicks.pop(seat, None)
        if out is not None:
            ts = fields.get("ts")
            change = None if ts is None else SeatChange("take", seat, user, user, _time(ts))
            self._changed(room, change, out)

    def _seat_left(self, room: _Room, seat: int, kind: str, out: list[Event]) -> None:
        occupant = room.occupants.pop(seat, None)
        if occupant is None:
            return
        change = None
        if kind == "kick" and seat in room.kicks:
            actor, ts = room.kicks.pop(seat)
            change = SeatChange("kick", seat, occupant.user, actor, ts)
        elif occupant.left_at is not None:
            change = SeatChange("leave", seat, occupant.user, occupant.user, occupant.left_at)
        elif occupant.user == self.user:
            # this user's seat taken from it unannounced: the view must still see it go; the
            # time is when it was seen, as Janus carries none
            change = SeatChange(kind, seat, occupant.user, None, self.wall())
        self._changed(room, change, out)

    def _audio_event(self, room: _Room, data: dict, out: list[Event]) -> None:
        """AudioBridge events: members joining and leaving, mutes, announcements in display names."""
        for participant in data.get("participants", ()):
            audio_id = int(participant["id"])
            display = participant.get("display", "")
            muted = bool(participant.get("muted"))
            before = room.audio.get(audio_id)
            room.audio[audio_id] = (display, muted)
            if before is None or before[0] != display:
                fields = _read_display(display)
                if "mute" in fields:
                    room.mutes[int(fields["mute"])] = (str(fields.get("u")), _time(fields["ts"]))
            if before is not None and before[1] != muted:
                self._mute_changed(room, audio_id, muted, out)
        if isinstance(data.get("leaving"), int):
            room.audio.pop(data["leaving"], None)

    def _mute_changed(self, room: _Room, audio_id: int, muted: bool, out: list[Event]) -> None:
        seat = next((n for n, o in room.occupants.items() if o.audio_id == audio_id), None)
        announced = room.mutes.pop(audio_id, None)
        if seat is None:
            return
        occupant = room.occupants[seat]
        kind = "mute" if muted else "unmute"
        change = None if announced is None else SeatChange(kind, seat, occupant.user, announced[0], announced[1])
        self._changed(room, change, out)

    def _changed(self, room: _Room, change: SeatChange | None, out: list[Event]) -> None:
        """One seat change seen: the next version. A change whose actor time is unknown has none."""
        if not room.live:
            return
        room.version += 1
        out.append(self._snapshot(room, change))

    def _snapshot(self, room: _Room, change: SeatChange | None) -> SeatSnapshot:
        seats = []
        for n in range(room.seats):
            occupant = room.occupants.get(n)
            if occupant is None:
                seats.append(Seat(n, None))
            else:
                audio = room.audio.get(occupant.audio_id) if occupant.audio_id is not None else None
                seats.append(Seat(n, occupant.user, bool(audio and audio[1])))
        return SeatSnapshot(room.name, room.version, tuple(seats), change)
