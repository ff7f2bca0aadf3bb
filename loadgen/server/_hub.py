"""Protocol state of the reference backend: sessions, rooms, inboxes and fan-out.

Everything here runs synchronously on the event loop, so a request is handled atomically:
no other request can slip between stamping a sequence number and queueing its pushes,
which is what makes the ``head`` windows of ``join``, ``leave`` and ``logout`` exact. The
only I/O is appending encoded frames to each connection's ``Outbox``; the server's writer
tasks drain them.

Voice rooms, live streams, PKs and calls live here too. Their broadcasts (seat snapshots,
gifts, danmaku, settings, stream and PK events) are encoded once and the same bytes go on
every member's outbox; they bypass the delivery faults, and the ``--bug`` dice, drawn from
their own generator, are their faults. Invite lapses, PK ends and ring timeouts are loop
timers, cancelled as soon as what they guard is resolved.

Media sessions (``media.open``) begin and end here, with the memberships they depend on;
the relay of ``_media`` forwards their frames.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import random
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from ._config import ServerConfig
from ._media import MEDIA_TRANSPORTS, MediaRelay
from ._metrics import INVALID_OP, OPS, ServerStats
from ._store import INBOX_MESSAGE, ROOM, ROOM_MESSAGE, Record, Store

NAME_MAX = 64
HISTORY_PAGE_MAX = 500
REORDER_HOLD_S = 0.1
_OPEN_OPS = frozenset({"login", "time", "echo"})
SEATS_DEFAULT = 8
SEATS_MAX = 16
RECENT_MESSAGES = 20
SEAT_INVITE_S = 30.0
PK_INVITE_S = 15.0
PK_DURATION_DEFAULT = 30
PK_DURATION_MAX = 600
# Bounds that keep a PK score far inside the 64-bit integers JSON encoding allows.
GIFT_COUNT_MAX = 1_000_000
GIFT_VALUE_MAX = 1_000_000
_BGM_OFF: dict[str, Any] = {"on": False, "track": ""}

# A history entry: (seq, author, encoded push frame). Tuples keep 1000 entries per room cheap.
Entry = tuple[int, str, bytes]


class RequestError(Exception):
    """A request failed with one of the protocol's error codes."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Outbox:
    """Frames waiting for one connection's writer task, in the order they must be written.

    ``ready`` frames go out as soon as the writer gets to them. Delayed deliveries wait in
    a second queue whose due times never decrease, so the head is always the next one due
    and one timer per connection is enough; acks and errors bypass them.
    """

    __slots__ = ("ready", "wake", "_later", "_timer", "_last_due", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.ready: deque[bytes] = deque()
        self.wake = asyncio.Event()
        self._later: deque[tuple[float, bytes]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._last_due = 0.0
        self._loop = loop

    def __len__(self) -> int:
        return len(self.ready) + len(self._later)

    def put(self, frame: bytes) -> None:
        self.ready.append(frame)
        self.wake.set()

    def put_at(self, due: float, frame: bytes, copies: int) -> None:
        """Queue ``copies`` of ``frame`` for loop time ``due``, or later to keep the order."""
        due = max(due, self._last_due)
        self._last_due = due
        for _ in range(copies):
            self._later.append((due, frame))
        if self._timer is None:
            self._timer = self._loop.call_at(due, self._release)

    def _release(self) -> None:
        self._timer = None
        later = self._later
        now = self._loop.time()
        # The timer was set for the head, so the head goes even if the loop woke a hair early.
        self.ready.append(later.popleft()[1])
        while later and later[0][0] <= now:
            self.ready.append(later.popleft()[1])
        if later:
            self._timer = self._loop.call_at(later[0][0], self._release)
        self.wake.set()

    def release_delayed(self) -> None:
        """Make every delayed frame ready now, in order."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # What is queued from now on need not wait for the due times of what went out early.
        self._last_due = 0.0
        if self._later:
            self.ready.extend(frame for _, frame in self._later)
            self._later.clear()
            self.wake.set()

    def close(self) -> None:
        """Discard everything queued; the connection is going away."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.ready.clear()
        self._later.clear()


class Held:
    """A delivery held back by the reorder fault."""

    __slots__ = ("frame", "copies", "timer")

    def __init__(self, frame: bytes, copies: int, timer: asyncio.TimerHandle) -> None:
        self.frame = frame
        self.copies = copies
        self.timer = timer


class Connection:
    """One WebSocket connection's protocol state."""

    __slots__ = ("outbox", "user", "rooms", "held", "peer")

    def __init__(self, outbox: Outbox, peer: str = "") -> None:
        self.outbox = outbox
        self.peer = peer
        self.user: str | None = None
        # room name -> head returned by the join that made this connection a member
        self.rooms: dict[str, int] = {}
        # stream (room name, or None for the inbox) -> the delivery the reorder fault holds
        self.held: dict[str | None, Held] = {}


class Stream:
    """A sequenced message stream with bounded history: a room or a user's inbox."""

    __slots__ = ("seq", "history")

    def __init__(self, keep: int) -> None:
        self.seq = 0
        self.history: deque[Entry] = deque(maxlen=keep)

    def find(self, seq: int) -> Entry | None:
        history = self.history
        if not history:
            return None
        index = seq - history[0][0]
        if 0 <= index < len(history):
            return history[index]
        return None

    def page(self, since: int, limit: int) -> list[orjson.Fragment]:
        history = self.history
        if not history:
            return []
        # clamped: islice takes no index past sys.maxsize, and a client may ask for any 64-bit "since"
        start = min(max(0, since + 1 - history[0][0]), len(history))
        return [orjson.Fragment(frame) for _, _, frame in itertools.islice(history, start, start + limit)]


class Seat:
    """One mic seat; ``cohost`` marks an occupant put on stage by ``cohost.accept``."""

    __slots__ = ("user", "muted", "locked", "cohost")

    def __init__(self) -> None:
        self.user: str | None = None
        self.muted = False
        self.locked = False
        self.cohost = False


class Room(Stream):
    """A room's messages, members, and its voice-room and live-stream state."""

    __slots__ = (
        "members",
        "seat_count",
        "_seats",
        "seated",
        "version",
        "host",
        "effects",
        "bgm",
        "live",
        "requests",
        "invites",
        "pk",
    )

    def __init__(self, keep: int, seats: int = SEATS_DEFAULT) -> None:
        super().__init__(keep)
        self.members: set[Connection] = set()
        self.seat_count = seats
        # Built on the first seat op, so rooms used only for messages stay small.
        self._seats: list[Seat] | None = None
        # user -> the seat it occupies, so "is this user seated" needs no scan
        self.seated: dict[str, int] = {}
        self.version = 0
        self.host: str | None = None
        self.effects: dict[str, str] = {}
        # Replaced, never mutated, so every room can start with the same object.
        self.bgm: dict[str, Any] = _BGM_OFF
        self.live = False
        # pending co-host requests: requester -> its request ts, oldest first
        self.requests: dict[str, float] = {}
        # pending seat invites: invitee -> seat -> the timer that lets it lapse
        self.invites: dict[str, dict[int, asyncio.TimerHandle]] = {}
        # the PK this room is in or invited to (either side)
        self.pk: Pk | None = None

    @property
    def seats(self) -> list[Seat]:
        seats = self._seats
        if seats is None:
            seats = self._seats = [Seat() for _ in range(self.seat_count)]
        return seats

    def seat_list(self) -> list[dict[str, Any]]:
        if self._seats is None:
            return [{"n": n, "user": None, "muted": False, "locked": False} for n in range(self.seat_count)]
        return [
            {"n": n, "user": seat.user, "muted": seat.muted, "locked": seat.locked}
            for n, seat in enumerate(self._seats)
        ]

    def free_seat(self) -> int | None:
        """The lowest seat that is neither occupied nor locked."""
        for n, seat in enumerate(self.seats):
            if seat.user is None and not seat.locked:
                return n
        return None

    def settings(self) -> dict[str, Any]:
        return {"effects": self.effects, "bgm": self.bgm}


class Pk:
    """A PK battle between two live rooms: invited, then running until ``ends_at``."""

    __slots__ = ("id", "rooms", "inviter", "duration", "scores", "version", "ends_at", "running", "timer")

    def __init__(self, pk_id: str, room: str, target: str, inviter: str, duration: float) -> None:
        self.id = pk_id
        self.rooms = (room, target)
        self.inviter = inviter
        self.duration = duration
        self.scores = {room: 0, target: 0}
        self.version = 0
        self.ends_at = 0.0
        self.running = False
        self.timer: asyncio.TimerHandle | None = None


class Call:
    """A 1v1 call: ringing until answered, then connected until hung up."""

    __slots__ = ("id", "caller", "callee", "ts", "connected", "timer")

    def __init__(self, call_id: str, caller: str, callee: str, ts: float) -> None:
        self.id = call_id
        self.caller = caller
        self.callee = callee
        self.ts = ts
        self.connected = False
        self.timer: asyncio.TimerHandle | None = None


def _stream_records(kind: int, name: str, stream: Stream) -> Iterator[Record]:
    if stream.history:
        for seq, author, frame in stream.history:
            yield kind, name, seq, author, frame
    elif stream.seq:
        yield kind, name, stream.seq, "", b""


class FaultInjector:
    """Rolls the delivery fault dice (drop, duplicate, reorder, delay) for each push."""

    def __init__(self, config: ServerConfig, loop: asyncio.AbstractEventLoop, counts: dict[str, int]) -> None:
        self._rng = random.Random(config.seed)
        self._loop = loop
        self._counts = counts
        self._drop = config.drop
        self._duplicate = config.duplicate
        self._reorder = config.reorder
        self._delay_s = config.delay_ms / 1000.0
        self._jitter_s = config.jitter_ms / 1000.0
        self._delayed = bool(config.delay_ms or config.jitter_ms)

    def deliver(self, conn: Connection, stream: str | None, frame: bytes) -> None:
        rng = self._rng
        if self._drop and rng.random() < self._drop:
            self._counts["drop"] += 1
            return
        copies = 2 if self._duplicate and rng.random() < self._duplicate else 1
        held = conn.held.pop(stream, None)
        if held is None:
            if self._reorder and rng.random() < self._reorder:
                timer = self._loop.call_later(REORDER_HOLD_S, self._release_alone, conn, stream)
                conn.held[stream] = Held(frame, copies, timer)
                return
            self._emit(conn, frame, copies)
            return
        held.timer.cancel()
        self._emit(conn, frame, copies)
        self._emit(conn, held.frame, held.copies)
        self._counts["reorder"] += 1

    def release(self, conn: Connection, stream: str | None) -> None:
        """Send the delivery held for ``stream`` on its own, uncounted, if there is one."""
        held = conn.held.pop(stream, None)
        if held is not None:
            held.timer.cancel()
            self._emit(conn, held.frame, held.copies)

    def _release_alone(self, conn: Connection, stream: str | None) -> None:
        held = conn.held.pop(stream, None)
        if held is not None:
            self._emit(conn, held.frame, held.copies)

    def _emit(self, conn: Connection, frame: bytes, copies: int) -> None:
        # Counted here rather than when rolled, so an extra copy discarded with its
        # connection while held back is not reported as delivered twice.
        if copies > 1:
            self._counts["duplicate"] += copies - 1
        outbox = conn.outbox
        if self._delayed:
            delay = (
                self._delay_s + self._rng.uniform(-self._jitter_s, self._jitter_s) if self._jitter_s else self._delay_s
            )
            outbox.put_at(self._loop.time() + max(0.0, delay), frame, copies)
        else:
            for _ in range(copies):
                outbox.put(frame)


def _now() -> float:
    return round(time.time(), 6)


def _encode(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj)


def _field(req: dict[str, Any], name: str) -> Any:
    try:
        return req[name]
    except KeyError:
        raise RequestError("bad_request", f"The field {name!r} is missing.") from None


def _name(req: dict[str, Any], name: str) -> str:
    value = _field(req, name)
    if not isinstance(value, str) or not 1 <= len(value) <= NAME_MAX:
        raise RequestError("bad_request", f"The field {name!r} must be a string of 1 to {NAME_MAX} characters.")
    return value


def _int(req: dict[str, Any], name: str, default: int | None = None) -> int:
    value = _field(req, name) if default is None else req.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise RequestError("bad_request", f"The field {name!r} must be an integer.")
    return value


def _number(req: dict[str, Any], name: str) -> int | float:
    value = _field(req, name)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise RequestError("bad_request", f"The field {name!r} must be a number.")
    return value


def _str(req: dict[str, Any], name: str) -> str:
    value = _field(req, name)
    if not isinstance(value, str):
        raise RequestError("bad_request", f"The field {name!r} must be a string.")
    return value


def _bool(req: dict[str, Any], name: str) -> bool:
    value = _field(req, name)
    if not isinstance(value, bool):
        raise RequestError("bad_request", f"The field {name!r} must be a boolean.")
    return value


def _given(req: dict[str, Any], name: str) -> bool:
    """Whether an optional field is present; null counts as absent."""
    return req.get(name) is not None


class Hub:
    """All rooms, inboxes and sessions of one server, and the request handlers."""

    def __init__(
        self,
        config: ServerConfig,
        loop: asyncio.AbstractEventLoop,
        stats: ServerStats,
        on_replaced: Callable[[Connection], None],
        store: Store | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._loop = loop
        self._stats = stats
        self._on_replaced = on_replaced
        self._secret = config.secret.encode() if config.secret is not None else None
        self._faults = FaultInjector(config, loop, stats.faults) if config.delivery_faults else None
        # The server binds its UDP endpoint; sessions open and close with memberships here.
        self.media = MediaRelay(config, loop, stats.media_frames)
        self.connections: set[Connection] = set()
        self.sessions: dict[str, Connection] = {}
        self.rooms: dict[str, Room] = {}
        self.inboxes: dict[str, Stream] = {}
        # PKs by id: pending invites, and those running
        self.pk_invites: dict[str, Pk] = {}
        self.pks: dict[str, Pk] = {}
        # calls by id, and each party's call (a user is in at most one)
        self.calls: dict[str, Call] = {}
        self._user_calls: dict[str, Call] = {}
        self._pk_ids = itertools.count(1)
        self._call_ids = itertools.count(1)
        # Their own generator, so rolling for bugs does not shift the delivery fault dice.
        self._bug_rng = random.Random(None if config.seed is None else f"bug-{config.seed}")
        self._bug_p = {kind: p for kind, p in config.bugs if p}
        self._ops: dict[str, Callable[[Connection, dict[str, Any]], dict[str, Any]]] = {
            op: getattr(self, f"_op_{op.replace('.', '_')}") for op in OPS
        }

    # Connection lifecycle

    def open(self, conn: Connection) -> None:
        self.connections.add(conn)

    def close(self, conn: Connection) -> None:
        """Forget a connection that is going away; idempotent."""
        self.end_session(conn)
        conn.outbox.close()
        self.connections.discard(conn)

    def end_session(self, conn: Connection) -> None:
        """Log the connection out: no more pushes to it, held deliveries discarded.

        What its user leaves behind is announced to the others: a freed seat to its
        rooms, the end of its call to the other party.
        """
        for held in conn.held.values():
            held.timer.cancel()
        conn.held.clear()
        user = conn.user
        for name in conn.rooms:
            room = self.rooms[name]
            room.members.discard(conn)
            self.media.close(conn, name)
            if user is not None:
                self._departed(name, room, user)
        conn.rooms.clear()
        if user is not None:
            self._hang_up_on_leaving(user)
            del self.sessions[user]
            conn.user = None

    def shutdown(self) -> None:
        """Cancel every timer (invite lapses, PK ends, ring timeouts); the server is stopping."""
        for room in list(self.rooms.values()):
            for timers in room.invites.values():
                for timer in timers.values():
                    timer.cancel()
            room.invites.clear()
        for pk in (*self.pk_invites.values(), *self.pks.values()):
            if pk.timer is not None:
                pk.timer.cancel()
        for call in self.calls.values():
            if call.timer is not None:
                call.timer.cancel()
        self.media.shutdown()

    # Durability (--store)

    def restore(self, kind: int, name: str, seq: int, author: str, frame: bytes) -> None:
        """Replay one record of the store: a room's seat count, or a message (or head alone) of a stream."""
        keep = self._config.history
        if kind == ROOM:
            if name not in self.rooms:
                self.rooms[name] = Room(keep, seq)
            return
        stream: Stream | None
        if kind == ROOM_MESSAGE:
            stream = self.rooms.get(name)
            if stream is None:
                stream = self.rooms[name] = Room(keep)
        else:
            stream = self.inboxes.get(name)
            if stream is None:
                stream = self.inboxes[name] = Stream(keep)
        stream.seq = seq
        if frame:
            stream.history.append((seq, author, frame))

    def records(self) -> Iterator[Record]:
        """What the store must keep: every room's seat count, and every stream's history or, if empty, its head."""
        for name, room in self.rooms.items():
            yield ROOM, name, room.seat_count, "", b""
            yield from _stream_records(ROOM_MESSAGE, name, room)
        for user, inbox in self.inboxes.items():
            yield from _stream_records(INBOX_MESSAGE, user, inbox)

    def active_rooms(self) -> int:
        return sum(1 for room in list(self.rooms.values()) if room.members)

    def queued_frames(self) -> int:
        return sum(len(conn.outbox) for conn in list(self.connections))

    def seated_users(self) -> int:
        return sum(len(room.seated) for room in list(self.rooms.values()))

    def live_streams(self) -> int:
        return sum(1 for room in list(self.rooms.values()) if room.live)

    # Requests

    def handle(self, conn: Connection, raw: str | bytes) -> None:
        """Handle one frame from ``conn`` and queue its reply."""
        stats = self._stats
        if isinstance(raw, bytes):
            if self.media.from_websocket(conn, raw):
                return
            stats.requests[INVALID_OP] += 1
            self._error(conn, None, "bad_request", "Frames must be text frames holding JSON.")
            return
        try:
            req = orjson.loads(raw)
        except orjson.JSONDecodeError:
            req = None
        if not isinstance(req, dict):
            stats.requests[INVALID_OP] += 1
            self._error(conn, None, "bad_json", "The frame is not a JSON object.")
            return
        op = req.get("op")
        handler = self._ops.get(op) if isinstance(op, str) else None
        stats.requests[op if handler is not None else INVALID_OP] += 1
        rid = req.get("id")
        if not isinstance(rid, int) or isinstance(rid, bool):
            self._error(conn, None, "bad_request", "The field 'id' must be an integer.")
            return
        if handler is None:
            if isinstance(op, str):
                self._error(conn, rid, "unknown_op", f"Unknown op {op[:NAME_MAX]!r}.")
            else:
                self._error(conn, rid, "bad_request", "The field 'op' must be a string.")
            return
        if conn.user is None and op not in _OPEN_OPS:
            self._error(conn, rid, "not_logged_in", f"The op {op!r} needs a login first.")
            return
        try:
            result = handler(conn, req)
        except RequestError as exc:
            self._error(conn, rid, exc.code, exc.message)
            return
        if self._store is not None:
            # Written before the ack (and the request's pushes) can leave: what was acknowledged survives a kill.
            self._store.flush()
        conn.outbox.put(_encode({"ev": "ack", "re": rid, **result}))

    def refuse(self, conn: Connection, raw: str | bytes, code: str, message: str) -> None:
        """Answer a frame with the error ``code`` without performing it; counted as a request all the same."""
        req = None
        if isinstance(raw, str):
            try:
                req = orjson.loads(raw)
            except orjson.JSONDecodeError:
                pass
        op = req.get("op") if isinstance(req, dict) else None
        self._stats.requests[op if isinstance(op, str) and op in self._ops else INVALID_OP] += 1
        rid = req.get("id") if isinstance(req, dict) else None
        self._error(conn, rid if isinstance(rid, int) and not isinstance(rid, bool) else None, code, message)

    def _error(self, conn: Connection, rid: int | None, code: str, message: str) -> None:
        self._stats.errors[code] += 1
        conn.outbox.put(_encode({"ev": "error", "re": rid, "code": code, "message": message}))

    def _member_room(self, conn: Connection, name: str) -> Room:
        if name not in conn.rooms:
            raise RequestError("not_member", f"Not a member of room {name!r}.")
        return self.rooms[name]

    def _check_body(self, body: str, name: str = "body") -> None:
        limit = self._config.max_body
        # Characters never outnumber UTF-8 bytes, so most bodies are judged without encoding.
        if len(body) > limit or (len(body) * 4 > limit and len(body.encode()) > limit):
            raise RequestError("too_large", f"The {name} is longer than {limit} bytes.")

    def _inbox_head(self, user: str) -> int:
        inbox = self.inboxes.get(user)
        return inbox.seq if inbox is not None else 0

    def _deliver(self, conn: Connection, stream: str | None, frame: bytes) -> None:
        if self._faults is None:
            conn.outbox.put(frame)
        else:
            self._faults.deliver(conn, stream, frame)

    def _release_held(self, conn: Connection, stream: str | None) -> None:
        if self._faults is not None:
            self._faults.release(conn, stream)

    def _op_login(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        user = _name(req, "user")
        token = _str(req, "token")
        if conn.user is not None:
            raise RequestError("already_logged_in", f"This connection is logged in as {conn.user!r}.")
        if not self._token_ok(user, token):
            raise RequestError("auth_failed", "The token is not valid for this user.")
        previous = self.sessions.get(user)
        if previous is not None:
            self.end_session(previous)
            self._on_replaced(previous)
        # Deliveries still delayed from an earlier session of this connection (login, logout,
        # login) go out before this ack, so nothing after it belongs to another user.
        conn.outbox.release_delayed()
        conn.user = user
        self.sessions[user] = conn
        return {"user": user, "inbox_head": self._inbox_head(user), "server_time": _now()}

    def _token_ok(self, user: str, token: str) -> bool:
        if self._secret is None:
            return token != ""
        expected = hmac.new(self._secret, user.encode(), hashlib.sha256).hexdigest()
        return hmac.compare_digest(token.encode(), expected.encode())

    def _op_join(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        name = _name(req, "room")
        seats = _int(req, "seats") if _given(req, "seats") else SEATS_DEFAULT
        if not 1 <= seats <= SEATS_MAX:
            raise RequestError("bad_request", f"The field 'seats' must be between 1 and {SEATS_MAX}.")
        as_host = _bool(req, "as_host") if _given(req, "as_host") else False
        user = conn.user
        room = self.rooms.get(name)
        if as_host and room is not None and room.host not in (None, user):
            raise RequestError("host_taken", f"Room {name!r} already has a host.")
        if room is None:
            room = self.rooms[name] = Room(self._config.history, seats)
            if self._store is not None:
                self._store.append(ROOM, name, seats)
        head = conn.rooms.get(name)
        if head is None:
            head = conn.rooms[name] = room.seq
            room.members.add(conn)
        if as_host:
            room.host = user
        history = room.history
        recent = itertools.islice(history, max(0, len(history) - RECENT_MESSAGES), None)
        return {
            "room": name,
            "head": head,
            "members": len(room.members),
            "host": room.host,
            "state": {"version": room.version, "seats": room.seat_list()},
            "settings": room.settings(),
            "live": room.live,
            "recent": [orjson.Fragment(frame) for _, _, frame in recent],
        }

    def _leave(self, conn: Connection, name: str) -> int:
        room = self.rooms[name]
        del conn.rooms[name]
        room.members.discard(conn)
        self.media.close(conn, name)
        self._release_held(conn, name)
        assert conn.user is not None
        self._departed(name, room, conn.user)
        return room.seq

    def _op_leave(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        name = _name(req, "room")
        self._member_room(conn, name)
        return {"room": name, "head": self._leave(conn, name)}

    def _op_send(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        name = _name(req, "room")
        cseq = _int(req, "cseq")
        ts = _number(req, "ts")
        body = _str(req, "body")
        room = self._member_room(conn, name)
        self._check_body(body)
        room.seq += 1
        seq = room.seq
        server_ts = _now()
        author = conn.user
        assert author is not None
        frame = _encode(
            {
                "ev": "msg",
                "room": name,
                "seq": seq,
                "from": author,
                "cseq": cseq,
                "ts": ts,
                "server_ts": server_ts,
                "body": body,
            }
        )
        room.history.append((seq, author, frame))
        if self._store is not None:
            self._store.append(ROOM_MESSAGE, name, seq, author, frame)
        self._stats.messages["room"] += 1
        self._stats.deliveries["room"] += len(room.members) - 1
        if self._faults is None:
            for member in room.members:
                if member is not conn:
                    member.outbox.put(frame)
        else:
            deliver = self._faults.deliver
            for member in room.members:
                if member is not conn:
                    deliver(member, name, frame)
        return {"room": name, "seq": seq, "server_ts": server_ts}

    def _op_dm(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        to = _name(req, "to")
        cseq = _int(req, "cseq")
        ts = _number(req, "ts")
        body = _str(req, "body")
        self._check_body(body)
        inbox = self.inboxes.get(to)
        if inbox is None:
            inbox = self.inboxes[to] = Stream(self._config.history)
        inbox.seq += 1
        seq = inbox.seq
        server_ts = _now()
        author = conn.user
        assert author is not None
        frame = _encode(
            {
                "ev": "dm",
                "seq": seq,
                "from": author,
                "to": to,
                "cseq": cseq,
                "ts": ts,
                "server_ts": server_ts,
                "body": body,
            }
        )
        inbox.history.append((seq, author, frame))
        if self._store is not None:
            self._store.append(INBOX_MESSAGE, to, seq, author, frame)
        self._stats.messages["dm"] += 1
        target = self.sessions.get(to)
        if target is not None:
            self._stats.deliveries["dm"] += 1
            self._deliver(target, None, frame)
        return {"to": to, "seq": seq, "server_ts": server_ts, "online": target is not None}

    def _op_read(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        name = _name(req, "room")
        seq = _int(req, "seq")
        room = self._member_room(conn, name)
        entry = room.find(seq)
        if entry is None:
            raise RequestError("not_found", f"Message {seq} of room {name!r} is not in history.")
        author = self.sessions.get(entry[1])
        if author is not None:
            author.outbox.put(
                _encode({"ev": "receipt", "room": name, "seq": seq, "reader": conn.user, "server_ts": _now()})
            )
        return {"room": name, "seq": seq}

    def _op_history(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        since = _int(req, "since", default=0)
        limit = _int(req, "limit", default=HISTORY_PAGE_MAX)
        if limit < 0:
            raise RequestError("bad_request", "The field 'limit' must not be negative.")
        limit = min(limit, HISTORY_PAGE_MAX)
        inbox = req.get("inbox", False)
        if not isinstance(inbox, bool):
            raise RequestError("bad_request", "The field 'inbox' must be a boolean.")
        if inbox:
            if "room" in req:
                raise RequestError("bad_request", "Ask for either a 'room' or the 'inbox', not both.")
            assert conn.user is not None
            stream = self.inboxes.get(conn.user)
            if stream is None:
                return {"inbox": True, "head": 0, "messages": []}
            return {"inbox": True, "head": stream.seq, "messages": stream.page(since, limit)}
        name = _name(req, "room")
        room = self._member_room(conn, name)
        return {"room": name, "head": room.seq, "messages": room.page(since, limit)}

    def _op_time(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        return {"t0": _number(req, "t0"), "server_time": _now()}

    def _op_echo(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        body = _str(req, "body")
        self._check_body(body)
        return {"op": "echo", "id": req["id"], "ts": _number(req, "ts"), "body": body}

    def _op_logout(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        user = conn.user
        assert user is not None
        heads = {name: self._leave(conn, name) for name in list(conn.rooms)}
        self._release_held(conn, None)
        self._hang_up_on_leaving(user)
        del self.sessions[user]
        conn.user = None
        return {"heads": heads, "inbox_head": self._inbox_head(user)}

    # Media sessions

    def _op_media_open(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        name = _name(req, "room")
        transport = _str(req, "transport")
        if transport not in MEDIA_TRANSPORTS:
            raise RequestError("bad_request", f"The field 'transport' must be one of {', '.join(MEDIA_TRANSPORTS)}.")
        room = self._member_room(conn, name)
        user = conn.user
        assert user is not None
        session = self.media.open(conn, user, name, room, transport)
        ack: dict[str, Any] = {"room": name, "ssrc": session.ssrc, "token": session.token.hex()}
        if session.udp:
            ack["udp_port"] = self.media.port
        return ack

    def _op_media_close(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        name = _name(req, "room")
        self._member_room(conn, name)
        self.media.close(conn, name)
        return {"room": name}

    # Voice rooms, live streams and calls: shared steps

    def _bug(self, kind: str) -> bool:
        """Roll for the bug ``kind`` if it is on; one that fires is counted."""
        p = self._bug_p.get(kind)
        if p is None or self._bug_rng.random() >= p:
            return False
        self._stats.bugs[kind] += 1
        return True

    def _broadcast(self, room: Room, frame: bytes) -> None:
        for member in room.members:
            member.outbox.put(frame)

    def _push(self, user: str | None, frame: bytes) -> None:
        """Queue ``frame`` for ``user``'s connection if the user is logged in."""
        if user is not None:
            conn = self.sessions.get(user)
            if conn is not None:
                conn.outbox.put(frame)

    @staticmethod
    def _check_seat(room: Room, n: int) -> None:
        if not 0 <= n < room.seat_count:
            raise RequestError("bad_request", f"The room has seats 0 to {room.seat_count - 1}, not {n}.")

    @staticmethod
    def _check_host(conn: Connection, room: Room) -> None:
        if room.host is None or room.host != conn.user:
            raise RequestError("forbidden", "Only the room's host may do this.")

    def _seat_request(
        self,
        conn: Connection,
        req: dict[str, Any],
        extra: tuple[Callable[[dict[str, Any], str], Any], str] | None = None,
        host: bool = False,
    ) -> tuple[str, Room, int, Any, float]:
        """Read ``room``, ``seat``, the ``extra`` field and ``ts``, then check membership, the seat and the host.

        The fields are read in the order the ops list them, so of several bad fields the first
        is the one the error names.
        """
        name = _name(req, "room")
        n = _int(req, "seat")
        value = extra[0](req, extra[1]) if extra is not None else None
        ts = _number(req, "ts")
        room = self._member_room(conn, name)
        self._check_seat(room, n)
        if host:
            self._check_host(conn, room)
        return name, room, n, value, ts

    def _room_request(
        self, conn: Connection, req: dict[str, Any], extra: str | None = None, host: bool = False
    ) -> tuple[str, Room, Any, float]:
        """Read ``room``, the name field ``extra`` and ``ts``, then check membership and, with ``host``, the host."""
        name = _name(req, "room")
        value = _name(req, extra) if extra is not None else None
        ts = _number(req, "ts")
        room = self._member_room(conn, name)
        if host:
            self._check_host(conn, room)
        return name, room, value, ts

    @staticmethod
    def _check_unseated(room: Room, user: str) -> None:
        if user in room.seated:
            raise RequestError("already_seated", f"Already on seat {room.seated[user]}.")

    @staticmethod
    def _check_vacant(room: Room, n: int) -> None:
        seat = room.seats[n]
        if seat.locked:
            raise RequestError("seat_locked", f"Seat {n} is locked.")
        if seat.user is not None:
            raise RequestError("seat_taken", f"Seat {n} is occupied.")

    @staticmethod
    def _sit(room: Room, n: int, user: str, cohost: bool = False) -> None:
        seat = room.seats[n]
        seat.user = user
        seat.muted = False
        seat.cohost = cohost
        room.seated[user] = n

    @staticmethod
    def _unseat(room: Room, n: int) -> str:
        seat = room.seats[n]
        user = seat.user
        assert user is not None
        seat.user = None
        seat.muted = False
        seat.cohost = False
        del room.seated[user]
        return user

    def _seat_change(
        self,
        name: str,
        room: Room,
        kind: str,
        n: int,
        user: str | None,
        by: str | None,
        ts: float,
        server_ts: float | None = None,
    ) -> int:
        """Count a change of the room's seats and broadcast the snapshot; return the new version."""
        room.version += 1
        version = room.version
        # A snapshot nobody receives cannot show the bug, so none is counted for it.
        stamped = version - 2 if room.members and self._bug("seat-version-regress") else version
        self._stats.seat_changes[kind] += 1
        frame = _encode(
            {
                "ev": "seats",
                "room": name,
                "version": stamped,
                "seats": room.seat_list(),
                "change": {"kind": kind, "seat": n, "user": user, "by": by, "ts": ts},
                "server_ts": _now() if server_ts is None else server_ts,
            }
        )
        self._broadcast(room, frame)
        return version

    def _seat_ack(
        self, name: str, room: Room, kind: str, n: int, user: str | None, by: str | None, ts: float
    ) -> dict[str, Any]:
        """Broadcast the one change of an acknowledged seat op, and its ``ack``."""
        return {"room": name, "seat": n, "version": self._seat_change(name, room, kind, n, user, by, ts)}

    def _departed(self, name: str, room: Room, user: str) -> None:
        """Tidy up after ``user`` stopped being a member: host role, requests, invites, seat."""
        if room.host == user:
            room.host = None
        room.requests.pop(user, None)
        timers = room.invites.pop(user, None)
        if timers:
            for timer in timers.values():
                timer.cancel()
        n = room.seated.get(user)
        if n is not None:
            self._unseat(room, n)
            now = _now()
            self._seat_change(name, room, "leave", n, user, user, now, now)

    # Seats

    def _op_seat_take(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        name = _name(req, "room")
        ts = _number(req, "ts")
        wanted = _int(req, "seat") if _given(req, "seat") else None
        room = self._member_room(conn, name)
        user = conn.user
        assert user is not None
        if wanted is not None:
            self._check_seat(room, wanted)
        self._check_unseated(room, user)
        if wanted is None:
            n = room.free_seat()
            if n is None:
                raise RequestError("no_free_seat", "Every seat is occupied or locked.")
        else:
            n = wanted
            seat = room.seats[n]
            if seat.locked:
                raise RequestError("seat_locked", f"Seat {n} is locked.")
            if seat.user is not None:
                if not self._bug("seat-double-grant"):
                    raise RequestError("seat_taken", f"Seat {n} is occupied.")
                # The bug: its occupant loses the seat, and no change tells anyone so.
                self._unseat(room, n)
        self._sit(room, n, user)
        return self._seat_ack(name, room, "take", n, user, user, ts)

    def _op_seat_leave(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        name, room, _, ts = self._room_request(conn, req)
        user = conn.user
        assert user is not None
        n = room.seated.get(user)
        if n is None:
            raise RequestError("not_seated", "Not on a seat of this room.")
        self._unseat(room, n)
        return self._seat_ack(name, room, "leave", n, user, user, ts)

    def _op_seat_lock(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        name, room, n, locked, ts = self._seat_request(conn, req, (_bool, "locked"), host=True)
        seat = room.seats[n]
        removed = self._unseat(room, n) if locked and seat.user is not None else None
        seat.locked = locked
        return self._seat_ack(name, room, "lock" if locked else "unlock", n, removed, conn.user, ts)

    def _op_seat_mute(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        name, room, n, muted, ts = self._seat_request(conn, req, (_bool, "muted"))
        seat = room.seats[n]
        if conn.user != room.host and conn.user != seat.user:
            raise RequestError("forbidden", "Only the seat's occupant or the host may mute it.")
        if seat.user is None:
            raise RequestError("not_seated", f"Seat {n} is empty.")
        seat.muted = muted
        return self._seat_ack(name, room, "mute" if muted else "unmute", n, seat.user, conn.user, ts)

    def _op_seat_kick(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        name, room, n, _, ts = self._seat_request(conn, req, host=True)
        if room.seats[n].user is None:
            raise RequestError("not_seated", f"Seat {n} is empty.")
        kicked = self._unseat(room, n)
        return self._seat_ack(name, room, "kick", n, kicked, conn.user, ts)

    def _op_seat_invite(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        name, room, n, invitee, ts = self._seat_request(conn, req, (_name, "user"), host=True)
        target = self.sessions.get(invitee)
        if target is None or name not in target.rooms:
            raise RequestError("not_member", f"User {invitee!r} is not a member of room {name!r}.")
        self._check_vacant(room, n)
        timers = room.invites.setdefault(invitee, {})
        previous = timers.get(n)
        if previous is not None:
            previous.cancel()
        timers[n] = self._loop.call_later(SEAT_INVITE_S, self._seat_invite_lapsed, room, invitee, n)
        target.outbox.put(_encode({"ev": "seat_invite", "room": name, "seat": n, "from": conn.user, "ts": ts}))
        return {"room": name, "seat": n}

    @staticmethod
    def _seat_invite_lapsed(room: Room, invitee: str, n: int) -> None:
        timers = room.invites.get(invitee)
        if timers is not None:
            timers.pop(n, None)
            if not timers:
                del room.invites[invitee]

    def _op_seat_accept(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        name, room, n, _, ts = self._seat_request(conn, req)
        user = conn.user
        assert user is not None
        timers = room.invites.get(user)
        if timers is None or n not in timers:
            raise RequestError("no_invite", f"No pending invite to seat {n}.")
        self._check_unseated(room, user)
        self._check_vacant(room, n)
        timers.pop(n).cancel()
        if not timers:
            del room.invites[user]
        self._sit(room, n, user)
        return self._seat_ack(name, room, "accept", n, user, user, ts)

    # Gifts, danmaku and settings

    def _op_gift(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        name = _name(req, "room")
        gift = _str(req, "gift")
        count = _int(req, "count")
        value = _int(req, "value")
        ts = _number(req, "ts")
        if not 1 <= count <= GIFT_COUNT_MAX:
            raise RequestError("bad_request", f"The field 'count' must be between 1 and {GIFT_COUNT_MAX}.")
        if not 0 <= value <= GIFT_VALUE_MAX:
            raise RequestError("bad_request", f"The field 'value' must be between 0 and {GIFT_VALUE_MAX}.")
        room = self._member_room(conn, name)
        self._check_body(gift, "gift")
        frame = _encode(
            {
                "ev": "gift",
                "room": name,
                "from": conn.user,
                "gift": gift,
                "count": count,
                "value": value,
                "ts": ts,
                "server_ts": _now(),
            }
        )
        self._stats.gifts += 1
        self._broadcast(room, frame)
        pk = room.pk
        if pk is not None and pk.running:
            self._pk_score(pk, name, count * value, ts)
        return {"room": name}

    def _op_danmaku(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        name = _name(req, "room")
        text = _str(req, "text")
        ts = _number(req, "ts")
        room = self._member_room(conn, name)
        self._check_body(text, "text")
        self._broadcast(
            room,
            _encode({"ev": "danmaku", "room": name, "from": conn.user, "text": text, "ts": ts, "server_ts": _now()}),
        )
        return {"room": name}

    def _op_settings(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        name = _name(req, "room")
        ts = _number(req, "ts")
        effect = _str(req, "effect") if _given(req, "effect") else None
        bgm = None
        if _given(req, "bgm"):
            raw = req["bgm"]
            if not isinstance(raw, dict):
                raise RequestError("bad_request", "The field 'bgm' must be an object with 'on' and 'track'.")
            bgm = {"on": _bool(raw, "on"), "track": _str(raw, "track")}
        room = self._member_room(conn, name)
        user = conn.user
        assert user is not None
        if user != room.host and user not in room.seated:
            raise RequestError("forbidden", "Only the host or a seated user may change the settings.")
        # Kept in the room and sent with every join ack and settings event, so bounded like a body.
        if effect is not None:
            self._check_body(effect, "effect")
        if bgm is not None:
            self._check_body(bgm["track"], "track")
        if effect is not None:
            room.effects[user] = effect
        if bgm is not None:
            room.bgm = bgm
        self._broadcast(
            room,
            _encode(
                {"ev": "settings", "room": name, "by": user, "settings": room.settings(), "ts": ts, "server_ts": _now()}
            ),
        )
        return {"room": name}

    # Live streams and co-hosts

    def _stream_event(self, name: str, room: Room, ts: float) -> None:
        self._broadcast(
            room,
            _encode(
                {"ev": "stream", "room": name, "live": room.live, "host": room.host, "ts": ts, "server_ts": _now()}
            ),
        )

    def _op_stream_start(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        name, room, _, ts = self._room_request(conn, req, host=True)
        room.live = True
        self._stream_event(name, room, ts)
        return {"room": name}

    def _op_stream_stop(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        name, room, _, ts = self._room_request(conn, req, host=True)
        room.live = False
        self._stream_event(name, room, ts)
        room.requests.clear()
        for n, seat in enumerate(room.seats):
            if seat.cohost:
                cohost = self._unseat(room, n)
                self._seat_change(name, room, "leave", n, cohost, conn.user, ts)
        pk = room.pk
        if pk is not None:
            if pk.running:
                self._pk_end(pk, ts)
            else:
                self._pk_forget(pk)
        return {"room": name}

    def _op_cohost_request(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        name, room, _, ts = self._room_request(conn, req)
        user = conn.user
        assert user is not None
        if user == room.host:
            raise RequestError("forbidden", "The host cannot ask to be its own co-host.")
        if not room.live:
            raise RequestError("not_live", f"Room {name!r} is not live.")
        self._check_unseated(room, user)
        # A repeated request replaces the pending one, and goes to the host again.
        room.requests.pop(user, None)
        room.requests[user] = ts
        self._push(room.host, _encode({"ev": "cohost_request", "room": name, "from": user, "ts": ts}))
        return {"room": name}

    def _op_cohost_accept(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        name, room, requester, ts = self._room_request(conn, req, "user", host=True)
        if requester not in room.requests:
            raise RequestError("no_request", f"No pending co-host request from {requester!r}.")
        if requester in room.seated:
            raise RequestError("already_seated", f"{requester!r} is already on seat {room.seated[requester]}.")
        n = room.free_seat()
        if n is None:
            raise RequestError("stage_full", "Every seat is occupied or locked.")
        del room.requests[requester]
        self._sit(room, n, requester, cohost=True)
        return self._seat_ack(name, room, "cohost", n, requester, conn.user, ts)

    def _op_cohost_reject(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        name, room, requester, ts = self._room_request(conn, req, "user", host=True)
        if room.requests.pop(requester, None) is None:
            raise RequestError("no_request", f"No pending co-host request from {requester!r}.")
        self._push(requester, _encode({"ev": "cohost_rejected", "room": name, "by": conn.user, "ts": ts}))
        return {"room": name}

    def _op_cohost_leave(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        return self._op_seat_leave(conn, req)

    # PK battles

    def _op_pk_invite(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        name = _name(req, "room")
        target = _name(req, "target")
        ts = _number(req, "ts")
        duration = _number(req, "duration") if _given(req, "duration") else PK_DURATION_DEFAULT
        if not 1 <= duration <= PK_DURATION_MAX:
            raise RequestError("bad_request", f"The field 'duration' must be between 1 and {PK_DURATION_MAX} seconds.")
        if target == name:
            raise RequestError("bad_request", "A room cannot PK itself.")
        room = self._member_room(conn, name)
        self._check_host(conn, room)
        if not room.live:
            raise RequestError("not_live", f"Room {name!r} is not live.")
        other = self.rooms.get(target)
        if other is None or other.host is None:
            raise RequestError("no_host", f"Room {target!r} has no host.")
        if room.pk is not None or other.pk is not None:
            raise RequestError("pk_busy", "One of the rooms is in a PK or has a PK invite pending.")
        user = conn.user
        assert user is not None
        pk = Pk(f"pk{next(self._pk_ids)}", name, target, user, duration)
        pk.timer = self._loop.call_later(PK_INVITE_S, self._pk_forget, pk)
        room.pk = other.pk = pk
        self.pk_invites[pk.id] = pk
        self._push(
            other.host,
            _encode(
                {
                    "ev": "pk_invite",
                    "pk": pk.id,
                    "room": name,
                    "target": target,
                    "from": user,
                    "duration": duration,
                    "ts": ts,
                }
            ),
        )
        return {"room": name, "pk": pk.id}

    def _invited_pk(self, conn: Connection, req: dict[str, Any]) -> tuple[str, Pk, float]:
        """The pending PK invite that ``req`` answers, for the host of the invited room."""
        name, _, pk_id, ts = self._room_request(conn, req, "pk", host=True)
        pk = self.pk_invites.get(pk_id)
        if pk is None or pk.rooms[1] != name:
            raise RequestError("no_invite", f"No pending PK invite {pk_id!r} to room {name!r}.")
        return name, pk, ts

    def _op_pk_accept(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        name, pk, ts = self._invited_pk(conn, req)
        del self.pk_invites[pk.id]
        if pk.timer is not None:
            pk.timer.cancel()
        pk.running = True
        self.pks[pk.id] = pk
        server_ts = _now()
        pk.ends_at = round(server_ts + pk.duration, 6)
        pk.timer = self._loop.call_later(pk.duration, self._pk_timed_out, pk)
        self._pk_broadcast(
            pk,
            {
                "ev": "pk",
                "pk": pk.id,
                "state": "started",
                "rooms": pk.rooms,
                "scores": pk.scores,
                "version": pk.version,
                "ends_at": pk.ends_at,
                "ts": ts,
                "server_ts": server_ts,
            },
        )
        return {"room": name, "pk": pk.id}

    def _op_pk_reject(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        name, pk, ts = self._invited_pk(conn, req)
        self._pk_forget(pk)
        self._push(
            pk.inviter,
            _encode({"ev": "pk_rejected", "pk": pk.id, "room": pk.rooms[0], "target": pk.rooms[1], "ts": ts}),
        )
        return {"room": name, "pk": pk.id}

    def _pk_forget(self, pk: Pk) -> None:
        """Drop a PK invite: it lapsed, was rejected, or a room's stream stopped."""
        if pk.timer is not None:
            pk.timer.cancel()
            pk.timer = None
        self.pk_invites.pop(pk.id, None)
        for name in pk.rooms:
            room = self.rooms[name]
            if room.pk is pk:
                room.pk = None

    def _pk_broadcast(self, pk: Pk, event: dict[str, Any]) -> None:
        """One copy to every member of either room, a member of both included."""
        frame = _encode(event)
        first, second = pk.rooms
        self._broadcast(self.rooms[first], frame)
        for member in self.rooms[second].members:
            if first not in member.rooms:
                member.outbox.put(frame)

    def _pk_score(self, pk: Pk, name: str, amount: int, ts: float) -> None:
        if self._bug("pk-score-skew"):
            amount += 1
        pk.scores[name] += amount
        pk.version += 1
        self._pk_broadcast(
            pk,
            {
                "ev": "pk",
                "pk": pk.id,
                "state": "score",
                "rooms": pk.rooms,
                "scores": pk.scores,
                "version": pk.version,
                "ts": ts,
                "server_ts": _now(),
            },
        )

    def _pk_timed_out(self, pk: Pk) -> None:
        pk.timer = None
        now = _now()
        self._pk_end(pk, now, now)

    def _pk_end(self, pk: Pk, ts: float, server_ts: float | None = None) -> None:
        if pk.timer is not None:
            pk.timer.cancel()
            pk.timer = None
        del self.pks[pk.id]
        for name in pk.rooms:
            self.rooms[name].pk = None
        first, second = pk.rooms
        a, b = pk.scores[first], pk.scores[second]
        self._pk_broadcast(
            pk,
            {
                "ev": "pk",
                "pk": pk.id,
                "state": "ended",
                "rooms": pk.rooms,
                "scores": pk.scores,
                "version": pk.version,
                "winner": first if a > b else second if b > a else None,
                "ts": ts,
                "server_ts": _now() if server_ts is None else server_ts,
            },
        )

    # 1v1 calls

    def _op_call_invite(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        callee = _name(req, "to")
        ts = _number(req, "ts")
        if _given(req, "room"):
            _name(req, "room")
        caller = conn.user
        assert caller is not None
        if callee == caller:
            raise RequestError("bad_request", "A user cannot call itself.")
        if callee not in self.sessions:
            raise RequestError("offline", f"User {callee!r} is not logged in.")
        for party in (callee, caller):
            if party in self._user_calls:
                self._stats.calls["busy"] += 1
                raise RequestError("busy", f"User {party!r} is in a call.")
        call = Call(f"c{next(self._call_ids)}", caller, callee, ts)
        self.calls[call.id] = call
        self._user_calls[caller] = self._user_calls[callee] = call
        call.timer = self._loop.call_later(self._config.ring_timeout, self._ring_timed_out, call)
        self._call_event(call, "ringing", ts)
        return {"call": call.id}

    def _own_call(self, conn: Connection, req: dict[str, Any], answering: bool) -> tuple[Call, float]:
        """The call ``req`` names, if ``conn``'s user may act on it: answer it, or hang it up."""
        call_id = _name(req, "call")
        ts = _number(req, "ts")
        call = self.calls.get(call_id)
        user = conn.user
        if answering:
            allowed = call is not None and user == call.callee and not call.connected
        else:
            allowed = call is not None and user in (call.caller, call.callee)
        if call is None or not allowed:
            raise RequestError("no_call", f"No call {call_id!r} for this user to do that to.")
        return call, ts

    def _op_call_accept(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        call, _ = self._own_call(conn, req, answering=True)
        if call.timer is not None:
            call.timer.cancel()
            call.timer = None
        call.connected = True
        self._stats.calls["connected"] += 1
        # The invite's ts, so both sides measure the call's setup time.
        self._call_event(call, "connected", call.ts)
        return {"call": call.id}

    def _op_call_reject(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        call, ts = self._own_call(conn, req, answering=True)
        self._stats.calls["rejected"] += 1
        self._end_call(call, "rejected", ts)
        return {"call": call.id}

    def _op_call_hangup(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        call, ts = self._own_call(conn, req, answering=False)
        if not call.connected:
            self._stats.calls["cancelled"] += 1
        self._end_call(call, "ended", ts, by=conn.user)
        return {"call": call.id}

    def _ring_timed_out(self, call: Call) -> None:
        call.timer = None
        self._stats.calls["timeout"] += 1
        now = _now()
        self._end_call(call, "timeout", now, server_ts=now)

    def _hang_up_on_leaving(self, user: str) -> None:
        """End the call of a user whose session ends; only the other party is told."""
        call = self._user_calls.get(user)
        if call is not None:
            if not call.connected:
                self._stats.calls["cancelled"] += 1
            now = _now()
            self._end_call(call, "ended", now, by=user, skip=user, server_ts=now)

    def _end_call(self, call: Call, state: str, ts: float, **event: Any) -> None:
        """Forget ``call`` and send its last event, with ``_call_event``'s options."""
        if call.timer is not None:
            call.timer.cancel()
            call.timer = None
        del self.calls[call.id]
        del self._user_calls[call.caller], self._user_calls[call.callee]
        self._call_event(call, state, ts, **event)

    def _call_event(
        self,
        call: Call,
        state: str,
        ts: float,
        by: str | None = None,
        skip: str | None = None,
        server_ts: float | None = None,
    ) -> None:
        event = {
            "ev": "call",
            "call": call.id,
            "state": state,
            "from": call.caller,
            "to": call.callee,
            "ts": ts,
            "server_ts": _now() if server_ts is None else server_ts,
        }
        if by is not None:
            event["by"] = by
        frame = _encode(event)
        for party in (call.caller, call.callee):
            if party != skip:
                self._push(party, frame)
