"""Driver for the reference protocol (docs/protocol.md): JSON text frames."""

from __future__ import annotations

import itertools

import orjson

from loadgen.drivers.base import (
    INBOX,
    MALFORMED_REPLY,
    CallUpdate,
    ClockResult,
    Delivery,
    Done,
    Driver,
    Event,
    Failure,
    HistoryResult,
    Invitation,
    JoinResult,
    LeaveResult,
    LoginResult,
    LogoutResult,
    Malformed,
    MediaFrame,
    MediaSession,
    Outgoing,
    PkUpdate,
    ReadResult,
    Receipt,
    Reply,
    RoomEvent,
    Seat,
    SeatChange,
    SeatResult,
    SeatSnapshot,
    SendResult,
    unreadable,
)

# A backend's frame is checked field by field as it is decoded: a value of the wrong type
# (a sequence number that is a string, a seat list that is an object) would otherwise travel
# into the accounting and fail there, far from the frame. ``float`` fields take integers too;
# no number field takes a boolean.

_NUMBER = (int, float)


class _Shape(TypeError):
    """A field of a frame missing or of the wrong type."""


def _wrong(frame: dict, key: str, wanted: str) -> _Shape:
    if key not in frame:
        return _Shape(f"field {key!r} is missing")
    return _Shape(f"field {key!r} should be {wanted}, not {type(frame[key]).__name__}")


def _typed(frame: dict, key: str, kinds: tuple[type, ...], wanted: str, default: object = None):
    value = frame.get(key, default)
    if type(value) not in kinds:
        raise _wrong(frame, key, wanted)
    return value


def _str(frame: dict, key: str) -> str:
    return _typed(frame, key, (str,), "a string")


def _int(frame: dict, key: str, default: int | None = None) -> int:
    return _typed(frame, key, (int,), "an integer", default)


def _number(frame: dict, key: str) -> float:
    return _typed(frame, key, _NUMBER, "a number")


def _bool(frame: dict, key: str) -> bool:
    return _typed(frame, key, (bool,), "a boolean", False)


def _optional_str(frame: dict, key: str) -> str | None:
    return _typed(frame, key, (str, type(None)), "a string or null")


def _optional_int(frame: dict, key: str) -> int | None:
    return _typed(frame, key, (int, type(None)), "an integer or null")


def _object(frame: dict, key: str) -> dict:
    return _typed(frame, key, (dict,), "an object")


def _list(frame: dict, key: str) -> list:
    return _typed(frame, key, (list,), "an array")


def _login(ack: dict) -> LoginResult:
    return LoginResult(_str(ack, "user"), _int(ack, "inbox_head"), _number(ack, "server_time"))


def _join(ack: dict) -> JoinResult:
    room = _str(ack, "room")
    state = ack.get("state")
    return JoinResult(
        room,
        _int(ack, "head"),
        _int(ack, "members", 0),
        _optional_str(ack, "host"),
        None if state is None else _seats(_object(ack, "state"), room),
        _bool(ack, "live"),
    )


def _seat(entry: object) -> Seat:
    if type(entry) is not dict:
        raise _Shape(f"a seat should be an object, not {type(entry).__name__}")
    return Seat(_int(entry, "n"), _optional_str(entry, "user"), _bool(entry, "muted"), _bool(entry, "locked"))


def _seats(frame: dict, room: str | None = None) -> SeatSnapshot:
    change = frame.get("change")
    if change is not None:
        change = _object(frame, "change")
        change = SeatChange(
            _str(change, "kind"),
            _int(change, "seat"),
            _optional_str(change, "user"),
            _optional_str(change, "by"),
            _number(change, "ts"),
        )
    return SeatSnapshot(
        room or _str(frame, "room"),
        _int(frame, "version"),
        tuple(_seat(entry) for entry in _list(frame, "seats")),
        change,
    )


def _seat_result(ack: dict) -> SeatResult:
    return SeatResult(_str(ack, "room"), _int(ack, "seat"), _optional_int(ack, "version"))


def _done(ack: dict) -> Done:
    return Done(_optional_str(ack, "room"), _optional_str(ack, "pk"), _optional_str(ack, "call"))


_ECHOED = Done()


def _echoed(ack: dict) -> Done:
    return _ECHOED


def _leave(ack: dict) -> LeaveResult:
    return LeaveResult(_str(ack, "room"), _int(ack, "head"))


def _send(ack: dict) -> SendResult:
    return SendResult(_str(ack, "room"), _int(ack, "seq"), _number(ack, "server_ts"))


def _direct(ack: dict) -> SendResult:
    online = ack.get("online", True)
    if type(online) is not bool:
        raise _wrong(ack, "online", "a boolean")
    return SendResult(INBOX, _int(ack, "seq"), _number(ack, "server_ts"), online)


def _read(ack: dict) -> ReadResult:
    return ReadResult(_str(ack, "room"), _int(ack, "seq"))


def _history(ack: dict) -> HistoryResult:
    stream = INBOX if ack.get("inbox") else _str(ack, "room")
    deliveries = []
    for message in _list(ack, "messages"):
        if type(message) is not dict:
            raise _Shape(f"a history message should be an object, not {type(message).__name__}")
        deliveries.append(_delivery(message))
    return HistoryResult(stream, _int(ack, "head"), tuple(deliveries))


def _clock(ack: dict) -> ClockResult:
    return ClockResult(_number(ack, "t0"), _number(ack, "server_time"))


def _logout(ack: dict) -> LogoutResult:
    heads = _object(ack, "heads")
    for room, head in heads.items():
        if type(head) is not int:
            raise _Shape(f"the head of room {room!r} should be an integer, not {type(head).__name__}")
    return LogoutResult(dict(heads), _int(ack, "inbox_head"))


def _actor(frame: dict) -> str | None:
    return _optional_str(frame, "from") if "from" in frame else _optional_str(frame, "by")


#: fields the scenarios read from a room event or invitation, by its name, and their types
_EVENT_FIELDS: dict[str, tuple[tuple[str, type, bool], ...]] = {
    "gift": (("count", int, False), ("value", int, False)),
    "seat_invite": (("seat", int, True),),
    "pk_invite": (("pk", str, True),),
}


def _event_fields(frame: dict, kind: str) -> dict:
    for key, wanted, required in _EVENT_FIELDS.get(kind, ()):
        if (required or key in frame) and type(frame.get(key)) is not wanted:
            raise _wrong(frame, key, "an integer" if wanted is int else "a string")
    return {k: v for k, v in frame.items() if k not in ("ev", "room", "from", "by", "ts")}


def _room_event(frame: dict) -> RoomEvent:
    kind = frame["ev"]
    return RoomEvent(kind, _str(frame, "room"), _actor(frame), _number(frame, "ts"), _event_fields(frame, kind))


def _invitation(frame: dict) -> Invitation:
    kind = frame["ev"]
    return Invitation(kind, _str(frame, "room"), _actor(frame), _number(frame, "ts"), _event_fields(frame, kind))


def _pk(frame: dict) -> PkUpdate:
    rooms = _list(frame, "rooms")
    if any(type(room) is not str for room in rooms):
        raise _Shape("field 'rooms' should hold strings only")
    scores = _object(frame, "scores")
    if any(type(score) is not int for score in scores.values()):
        raise _Shape("field 'scores' should hold integers only")
    return PkUpdate(
        _str(frame, "pk"),
        _str(frame, "state"),
        tuple(rooms),
        scores,
        _int(frame, "version", 0),
        _number(frame, "ts"),
        _optional_str(frame, "winner"),
    )


def _call(frame: dict) -> CallUpdate:
    return CallUpdate(
        _str(frame, "call"),
        _str(frame, "state"),
        _str(frame, "from"),
        _str(frame, "to"),
        _number(frame, "ts"),
        _optional_str(frame, "by"),
    )


def _receipt(frame: dict) -> Receipt:
    return Receipt(_str(frame, "room"), _int(frame, "seq"), _str(frame, "reader"))


#: push event name -> decoder, for everything but messages and replies
_PUSHES = {
    "seats": _seats,
    "gift": _room_event,
    "danmaku": _room_event,
    "settings": _room_event,
    "stream": _room_event,
    "seat_invite": _invitation,
    "cohost_request": _invitation,
    "cohost_rejected": _invitation,
    "pk_invite": _invitation,
    "pk_rejected": _invitation,
    "pk": _pk,
    "call": _call,
}

#: operation -> how to read its ack
_ROOM_OPS = {
    "seat.take": _seat_result,
    "seat.leave": _seat_result,
    "seat.lock": _seat_result,
    "seat.mute": _seat_result,
    "seat.kick": _seat_result,
    "seat.invite": _seat_result,
    "seat.accept": _seat_result,
    "cohost.accept": _seat_result,
    "cohost.leave": _seat_result,
    "gift": _done,
    "danmaku": _done,
    "settings": _done,
    "stream.start": _done,
    "stream.stop": _done,
    "cohost.request": _done,
    "cohost.reject": _done,
    "pk.invite": _done,
    "pk.accept": _done,
    "pk.reject": _done,
}
_CALL_OPS = ("call.invite", "call.accept", "call.reject", "call.hangup")


def _media_session(ack: dict) -> MediaSession:
    token = _str(ack, "token")
    try:
        secret = bytes.fromhex(token)
    except ValueError:
        raise _wrong(ack, "token", "hex digits") from None
    return MediaSession(_str(ack, "room"), _int(ack, "ssrc"), secret, _optional_int(ack, "udp_port"))


#: the first bytes of an audio packet (docs/media.md): version 2 in the flags, kind 1
_AUDIO_HEADER_BYTES = 32
_AUDIO_KIND = 1


def _delivery(frame: dict) -> Delivery:
    direct = frame.get("ev") == "dm"
    stream = INBOX if direct else frame.get("room")
    seq, sender, cseq = frame.get("seq"), frame.get("from"), frame.get("cseq")
    sent_at, server_ts, body = frame.get("ts"), frame.get("server_ts"), frame.get("body", "")
    # one test for the message every member gets, then one per field to say which was wrong
    if not (
        type(seq) is int
        and type(cseq) is int
        and type(stream) is str
        and type(sender) is str
        and type(body) is str
        and type(sent_at) in _NUMBER
        and type(server_ts) in _NUMBER
    ):
        for key, check in (("seq", _int), ("cseq", _int), ("from", _str), ("ts", _number), ("server_ts", _number)):
            check(frame, key)
        if not direct:
            _str(frame, "room")
        raise _wrong(frame, "body", "a string")
    return Delivery(stream, seq, sender, cseq, sent_at, server_ts, body, direct)


class ReferenceDriver(Driver):
    """Speaks the reference protocol; one instance per connection."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        # request id -> how to read its ack; an id leaves the map when its reply arrives
        self._pending: dict[int, object] = {}

    def _request(self, parse, op: str, **fields) -> Outgoing:
        request_id = next(self._ids)
        self._pending[request_id] = parse
        fields["op"] = op
        fields["id"] = request_id
        return Outgoing(request_id, orjson.dumps(fields))

    def login(self, user: str, token: str) -> Outgoing:
        return self._request(_login, "login", user=user, token=token)

    def join(self, room: str) -> Outgoing:
        return self._request(_join, "join", room=room)

    def join_room(self, room: str, *, seats: int | None = None, as_host: bool = False) -> Outgoing:
        fields: dict[str, object] = {"room": room}
        if seats is not None:
            fields["seats"] = seats
        if as_host:
            fields["as_host"] = True
        return self._request(_join, "join", **fields)

    def room_op(self, op: str, room: str, sent_at: float, **fields: object) -> Outgoing:
        parse = _ROOM_OPS.get(op)
        if parse is None:
            raise ValueError(f"unknown room operation {op!r}")
        return self._request(parse, op, room=room, ts=sent_at, **fields)

    def call_op(self, op: str, sent_at: float, **fields: object) -> Outgoing:
        if op not in _CALL_OPS:
            raise ValueError(f"unknown call operation {op!r}")
        return self._request(_done, op, ts=sent_at, **fields)

    def leave(self, room: str) -> Outgoing:
        return self._request(_leave, "leave", room=room)

    def send(self, room: str, cseq: int, sent_at: float, body: str) -> Outgoing:
        return self._request(_send, "send", room=room, cseq=cseq, ts=sent_at, body=body)

    def direct(self, to: str, cseq: int, sent_at: float, body: str) -> Outgoing:
        return self._request(_direct, "dm", to=to, cseq=cseq, ts=sent_at, body=body)

    def read(self, room: str, seq: int) -> Outgoing:
        return self._request(_read, "read", room=room, seq=seq)

    def history(self, stream: str, since: int, limit: int) -> Outgoing:
        if stream == INBOX:
            return self._request(_history, "history", inbox=True, since=since, limit=limit)
        return self._request(_history, "history", room=stream, since=since, limit=limit)

    def clock(self, t0: float) -> Outgoing:
        return self._request(_clock, "time", t0=t0)

    def logout(self) -> Outgoing:
        return self._request(_logout, "logout")

    def echo(self, sent_at: float, body: str) -> Outgoing:
        # written as its own ack, so that a bare echo server answers it as the backend does
        request_id = next(self._ids)
        self._pending[request_id] = _echoed
        frame = {"op": "echo", "id": request_id, "ev": "ack", "re": request_id, "ts": sent_at, "body": body}
        return Outgoing(request_id, orjson.dumps(frame))

    def media_open(self, room: str, transport: str) -> Outgoing:
        return self._request(_media_session, "media.open", room=room, transport=transport)

    def receive(self, data: bytes, binary: bool) -> list[Event]:
        if binary:
            if len(data) >= _AUDIO_HEADER_BYTES and data[0] & 0xC0 == 0x80 and data[1] == _AUDIO_KIND:
                return [MediaFrame(data)]
            return [Malformed("binary frame that is no audio packet: the reference protocol is JSON text", data,
                              "binary")]  # fmt: skip
        try:
            frame = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            return [unreadable(data, "bad_json", f"not JSON: {exc}")]
        if type(frame) is not dict:
            return [Malformed(f"JSON {type(frame).__name__}, not an object", data, "not_object")]
        kind = frame.get("ev")
        try:
            if kind == "msg" or kind == "dm":
                return [_delivery(frame)]
            if kind == "ack":
                return self._ack(frame, data)
            if kind == "error":
                request_id, message = _optional_int(frame, "re"), frame.get("message", "")
                if type(message) is not str:
                    raise _wrong(frame, "message", "a string")
                code = _str(frame, "code")
                if not code:
                    raise _Shape("field 'code' is empty")
                failure = Failure(request_id, code, message)
                self._pending.pop(request_id, None)
                return [failure]
            if type(kind) is not str:
                raise _wrong(frame, "ev", "a string")
            push = _PUSHES.get(kind)
            if push is not None:
                return [push(frame)]
            if kind == "receipt":
                return [_receipt(frame)]
        except (KeyError, TypeError, ValueError) as exc:
            return [Malformed(f"event {kind!r:.40}: {exc}", data, "unexpected_shape")]
        return [Malformed(f"unknown event {kind!r}", data, "unknown_event")]

    def _ack(self, frame: dict, data: bytes) -> list[Event]:
        request_id = frame.get("re")
        parse = self._pending.pop(request_id, None) if type(request_id) is int else None
        if parse is None:
            return [Malformed(f"ack for no request in flight: {request_id!r}", data, "unmatched_reply")]
        try:
            return [Reply(request_id, parse(frame))]
        except (KeyError, TypeError, ValueError) as exc:
            # the request must still end, or its caller would wait for the timeout
            return [Failure(request_id, MALFORMED_REPLY, f"ack of request {request_id}: {exc}")]
