"""Driver for the reference protocol (docs/protocol.md): JSON text frames."""

from __future__ import annotations

import itertools

import orjson

from loadgen.drivers.base import (
    INBOX,
    ClockResult,
    Delivery,
    Driver,
    Event,
    Failure,
    HistoryResult,
    JoinResult,
    LeaveResult,
    LoginResult,
    LogoutResult,
    Malformed,
    Outgoing,
    ReadResult,
    Receipt,
    Reply,
    SendResult,
)


def _login(ack: dict) -> LoginResult:
    return LoginResult(ack["user"], ack["inbox_head"], ack["server_time"])


def _join(ack: dict) -> JoinResult:
    return JoinResult(ack["room"], ack["head"], ack.get("members", 0))


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
            if kind == "receipt":
                return [Receipt(frame["room"], frame["seq"], frame["reader"])]
            return [Malformed(f"unknown event {kind!r}", data)]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            return [Malformed(f"{type(exc).__name__}: {exc}", data)]
