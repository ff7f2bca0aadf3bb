"""The driver interface: a backend's protocol as frames in, typed events out, no sockets.

A driver is Sans-I/O. The session hands it an operation ("join room r7") and gets back the
bytes to send plus a request id to wait on; it hands the driver every frame that arrives and
gets back typed events: replies to requests, failures, message deliveries and receipts.
Nothing here knows about Locust, gevent or sockets, so a driver is tested with bytes alone.

Streams: every delivery belongs to a stream whose sequence the backend stamps in order: a
room (the stream is the room id) or the user's direct-message inbox (``INBOX``). Windows of
membership are opened and closed by the ``head`` the backend reports on join/login and
leave/logout; see docs/drivers.md.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

INBOX = "@inbox"


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One frame to send, and the id its reply will carry."""

    request_id: int
    payload: bytes
    binary: bool = False


# Typed results of operations.


@dataclass(frozen=True, slots=True)
class LoginResult:
    user: str
    inbox_head: int
    server_time: float


@dataclass(frozen=True, slots=True)
class JoinResult:
    room: str
    head: int
    members: int


@dataclass(frozen=True, slots=True)
class LeaveResult:
    room: str
    head: int


@dataclass(frozen=True, slots=True)
class SendResult:
    stream: str
    seq: int
    server_ts: float
    online: bool = True


@dataclass(frozen=True, slots=True)
class ReadResult:
    room: str
    seq: int


@dataclass(frozen=True, slots=True)
class HistoryResult:
    stream: str
    head: int
    deliveries: tuple[Delivery, ...]


@dataclass(frozen=True, slots=True)
class ClockResult:
    t0: float
    server_time: float


@dataclass(frozen=True, slots=True)
class LogoutResult:
    heads: Mapping[str, int]
    inbox_head: int


# Events decoded from frames.


@dataclass(frozen=True, slots=True)
class Reply:
    """A request succeeded; ``result`` is one of the typed results above."""

    request_id: int
    result: object


@dataclass(frozen=True, slots=True)
class Failure:
    """A request failed, or the backend rejected a frame it could not tie to a request."""

    request_id: int | None
    code: str
    message: str


@dataclass(slots=True)
class Delivery:
    """A message pushed to this user: a room message or a direct message.

    ``sent_at`` is the sender's intended send time (Unix seconds on the sender's corrected
    clock); ``seq`` is the backend's sequence within ``stream``.
    """

    stream: str
    seq: int
    sender: str
    cseq: int
    sent_at: float
    server_ts: float
    body: str = ""
    direct: bool = False


@dataclass(frozen=True, slots=True)
class Receipt:
    """Someone read a message this user wrote."""

    room: str
    seq: int
    reader: str


@dataclass(frozen=True, slots=True)
class Malformed:
    """A frame from the backend that the driver could not make sense of."""

    reason: str
    frame: bytes = field(repr=False, default=b"")


Event = Reply | Failure | Delivery | Receipt | Malformed


class Driver(abc.ABC):
    """Turns client operations into frames and frames into events, for one connection.

    A driver instance keeps the per-connection state its protocol needs (request ids, which
    request was which operation) and nothing else.
    """

    #: WebSocket subprotocols to offer in the handshake, or None.
    subprotocols: Sequence[str] | None = None

    @abc.abstractmethod
    def login(self, user: str, token: str) -> Outgoing: ...

    @abc.abstractmethod
    def join(self, room: str) -> Outgoing: ...

    @abc.abstractmethod
    def leave(self, room: str) -> Outgoing: ...

    @abc.abstractmethod
    def send(self, room: str, cseq: int, sent_at: float, body: str) -> Outgoing: ...

    @abc.abstractmethod
    def direct(self, to: str, cseq: int, sent_at: float, body: str) -> Outgoing: ...

    @abc.abstractmethod
    def read(self, room: str, seq: int) -> Outgoing: ...

    @abc.abstractmethod
    def history(self, stream: str, since: int, limit: int) -> Outgoing: ...

    @abc.abstractmethod
    def clock(self, t0: float) -> Outgoing: ...

    @abc.abstractmethod
    def logout(self) -> Outgoing: ...

    @abc.abstractmethod
    def receive(self, data: bytes, binary: bool) -> list[Event]:
        """Decode one incoming WebSocket message into events (usually one)."""
