"""Driver for the reference protocol (docs/protocol.md): JSON text frames."""

from __future__ import annotations

import itertools

import orjson

from loadgen.drivers.base import (
    INBOX,
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
)


def _login(ack: dict) -> LoginResult:
    return LoginResult(ack["user"], ack["inbox_head"], ack["server_time"])


def _join(ack: dict) -> JoinResult:
    state = ack.get("state")
    return JoinResult(
        ack["room"],
        ack["head"],
        ack.get("members", 0),
        ack.get("host"),
        None if state is None else _seats(state, ack["room"]),
        bool(ack.get("live", False)),
    )


def _seats(frame: dict, room: str | None = None) -> SeatSnapshot:
    change = frame.get("change")
    return SeatSnapshot(
        room or frame["room"],
        frame["version"],
        tuple(Seat(s["n"], s["user"], s.get("muted", False), s.get("locked", False)) for s in frame["seats"]),
        None
        if change is None
        else SeatChange(change["kind"], change["seat"], change.get("user"), change.get("by"), change["ts"]),
    )


def _seat_result(ack: dict) -> SeatResult:
    return SeatResult(ack["room"], ack["seat"], ack.get("version"))


def _done(ack: dict) -> Done:
    return Done(ack.get("room"), ack.get("pk"), ack.get("call"))


_ECHOED = Done()


def _echoed(ack: dict) -> Done:
    return _ECHOED


def _leave(ack: dict) -> LeaveResult:
    return LeaveResult(ack["room"], ack["head"])


def _send(ack: dict) -> SendResult:
    return SendResult(ack["room"], ack["seq"], ack["server_ts"])


def _direct(ack: dict) -> SendResult:
    return SendResult(INBOX, ack["seq"], ack["server_ts"], ack.get("online", True))


def _read(ack: dict) -> ReadResult:
    return ReadResult(ack["room"], ack["seq"])


def _history(ack: dict) -> HistoryResult:
    stream = INBOX if ack.get("inbox") else ack["room"]
    return HistoryResult(stream, ack["head"], tuple(_delivery(m) for m in ack["messages"]))


def _clock(ack: dict) -> ClockResult:
    return ClockResult(ack["t0"], ack["server_time"])


def _logout(ack: dict) -> LogoutResult:
    return LogoutResult(dict(ack["heads"]), ack["inbox_head"])


def _room_event(frame: dict) -> RoomEvent:
    kind = frame["ev"]
    fields = {k: v for k, v in frame.items() if k not in ("ev", "room", "from", "by", "ts")}
    return RoomEvent(kind, frame["room"], frame.get("from", frame.get("by")), frame["ts"], fields)


def _invitation(frame: dict) -> Invitation:
    fields = {k: v for k, v in frame.items() if k not in ("ev", "room", "from", "by", "ts")}
    return Invitation(frame["ev"], frame["room"], frame.get("from", frame.get("by")), frame["ts"], fields)


def _pk(frame: dict) -> PkUpdate:
    return PkUpdate(
        frame["pk"],
        frame["state"],
        tuple(frame["rooms"]),
        frame["scores"],
        frame.get("version", 0),
        frame["ts"],
        frame.get("winner"),
    )


def _call(frame: dict) -> CallUpdate:
    return CallUpdate(frame["call"], frame["state"], frame["from"], frame["to"], frame["ts"], frame.get("by"))


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


def _delivery(frame: dict) -> Delivery:
    direct = frame["ev"] == "dm"
    return Delivery(
        INBOX if direct else frame["room"],
        frame["seq"],
        frame["from"],
        frame["cseq"],
        frame["ts"],
        frame["server_ts"],
        frame.get("body", ""),
        direct,
    )


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

    def receive(self, data: bytes, binary: bool) -> list[Event]:
        if binary:
            return [Malformed("binary frame", data)]
        try:
            frame = orjson.loads(data)
            kind = frame["ev"]
            if kind == "msg" or kind == "dm":
                return [_delivery(frame)]
            if kind == "ack":
                request_id = frame["re"]
                parse = self._pending.pop(request_id, None)
                if parse is None:
                    return [Malformed(f"ack for unknown request {request_id!r}", data)]
                try:
                    return [Reply(request_id, parse(frame))]
                except (KeyError, TypeError, ValueError) as exc:
                    # the request must still end, or its caller would wait for the timeout
                    return [Failure(request_id, "malformed_reply", f"{type(exc).__name__}: {exc}")]
            if kind == "error":
                request_id = frame.get("re")
                self._pending.pop(request_id, None)
                return [Failure(request_id, frame["code"], frame.get("message", ""))]
            push = _PUSHES.get(kind)
            if push is not None:
                return [push(frame)]
            if kind == "receipt":
                return [Receipt(frame["room"], frame["seq"], frame["reader"])]
            return [Malformed(f"unknown event {kind!r}", data)]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            return [Malformed(f"{type(exc).__name__}: {exc}", data)]
