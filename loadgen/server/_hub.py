"""Protocol state of the reference backend: sessions, rooms, inboxes and fan-out.

Everything here runs synchronously on the event loop, so a request is handled atomically:
no other request can slip between stamping a sequence number and queueing its pushes,
which is what makes the ``head`` windows of ``join``, ``leave`` and ``logout`` exact. The
only I/O is appending encoded frames to each connection's ``Outbox``; the server's writer
tasks drain them.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson

from ._config import ServerConfig
from ._metrics import INVALID_OP, OPS, ServerStats

NAME_MAX = 64
HISTORY_PAGE_MAX = 500
REORDER_HOLD_S = 0.1
_OPEN_OPS = frozenset({"login", "time"})

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
        start = max(0, since + 1 - history[0][0])
        return [orjson.Fragment(frame) for _, _, frame in itertools.islice(history, start, start + limit)]


class Room(Stream):
    __slots__ = ("members",)

    def __init__(self, keep: int) -> None:
        super().__init__(keep)
        self.members: set[Connection] = set()


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


class Hub:
    """All rooms, inboxes and sessions of one server, and the request handlers."""

    def __init__(
        self,
        config: ServerConfig,
        loop: asyncio.AbstractEventLoop,
        stats: ServerStats,
        on_replaced: Callable[[Connection], None],
    ) -> None:
        self._config = config
        self._loop = loop
        self._stats = stats
        self._on_replaced = on_replaced
        self._secret = config.secret.encode() if config.secret is not None else None
        self._faults = FaultInjector(config, loop, stats.faults) if config.delivery_faults else None
        self.connections: set[Connection] = set()
        self.sessions: dict[str, Connection] = {}
        self.rooms: dict[str, Room] = {}
        self.inboxes: dict[str, Stream] = {}
        self._ops: dict[str, Callable[[Connection, dict[str, Any]], dict[str, Any]]] = {
            op: getattr(self, f"_op_{op}") for op in OPS
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
        """Log the connection out silently: no more pushes, held deliveries discarded."""
        for held in conn.held.values():
            held.timer.cancel()
        conn.held.clear()
        for name in conn.rooms:
            self.rooms[name].members.discard(conn)
        conn.rooms.clear()
        if conn.user is not None:
            del self.sessions[conn.user]
            conn.user = None

    def active_rooms(self) -> int:
        return sum(1 for room in list(self.rooms.values()) if room.members)

    def queued_frames(self) -> int:
        return sum(len(conn.outbox) for conn in list(self.connections))

    # Requests

    def handle(self, conn: Connection, raw: str | bytes) -> None:
        """Handle one frame from ``conn`` and queue its reply."""
        stats = self._stats
        if isinstance(raw, bytes):
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
        conn.outbox.put(_encode({"ev": "ack", "re": rid, **result}))

    def _error(self, conn: Connection, rid: int | None, code: str, message: str) -> None:
        self._stats.errors[code] += 1
        conn.outbox.put(_encode({"ev": "error", "re": rid, "code": code, "message": message}))

    def _member_room(self, conn: Connection, name: str) -> Room:
        if name not in conn.rooms:
            raise RequestError("not_member", f"Not a member of room {name!r}.")
        return self.rooms[name]

    def _check_body(self, body: str) -> None:
        limit = self._config.max_body
        # Characters never outnumber UTF-8 bytes, so most bodies are judged without encoding.
        if len(body) > limit or (len(body) * 4 > limit and len(body.encode()) > limit):
            raise RequestError("too_large", f"The body is longer than {limit} bytes.")

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
        room = self.rooms.get(name)
        if room is None:
            room = self.rooms[name] = Room(self._config.history)
        head = conn.rooms.get(name)
        if head is None:
            head = conn.rooms[name] = room.seq
            room.members.add(conn)
        return {"room": name, "head": head, "members": len(room.members)}

    def _leave(self, conn: Connection, name: str) -> int:
        room = self.rooms[name]
        del conn.rooms[name]
        room.members.discard(conn)
        self._release_held(conn, name)
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

    def _op_logout(self, conn: Connection, req: dict[str, Any]) -> dict[str, Any]:
        user = conn.user
        assert user is not None
        heads = {name: self._leave(conn, name) for name in list(conn.rooms)}
        self._release_held(conn, None)
        del self.sessions[user]
        conn.user = None
        return {"heads": heads, "inbox_head": self._inbox_head(user)}
