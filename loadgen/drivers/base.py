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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

INBOX = "@inbox"
#: joins a room (or the inbox) and a sender into a sender stream: "room#sender"
SENDER_SEPARATOR = "#"


def sender_stream(stream: str, sender: str) -> str:
    """The stream of one sender's messages in a room (or inbox), for backends with no stream sequence.

    A driver for such a backend numbers a sender's messages by the sender's own counter
    (``cseq``) and delivers them on this stream; see docs/drivers.md.
    """
    return f"{stream}{SENDER_SEPARATOR}{sender}"


def parent_stream(stream: str) -> str:
    """The room (or inbox) of a sender stream; a plain stream is its own parent."""
    return stream.split(SENDER_SEPARATOR, 1)[0]


# Outgoing and Reply exist once per round trip: not frozen, whose __init__ costs four times as
# much (bench/). Nothing changes them after they are made.
@dataclass(slots=True)
class Outgoing:
    """One frame to send, and the id its reply will carry.

    ``done``: for a frame the backend does not answer (a receipt, a presence), the operation's
    result at once; the session sends the frame, applies the result as it would a reply and
    waits for nothing.
    """

    request_id: int
    payload: bytes
    binary: bool = False
    done: object | None = None


# Typed results of operations.


@dataclass(frozen=True, slots=True)
class LoginResult:
    user: str
    inbox_head: int
    server_time: float


@dataclass(frozen=True, slots=True)
class Seat:
    n: int
    user: str | None
    muted: bool = False
    locked: bool = False


@dataclass(frozen=True, slots=True)
class SeatChange:
    """What made a snapshot: ``kind`` is take, leave, lock, unlock, mute, unmute, kick, accept or cohost."""

    kind: str
    seat: int
    user: str | None
    by: str | None
    sent_at: float


@dataclass(frozen=True, slots=True)
class SeatSnapshot:
    """The full seat state of a room at ``version``; ``change`` is None in a join reply."""

    room: str
    version: int
    seats: tuple[Seat, ...]
    change: SeatChange | None = None


@dataclass(frozen=True, slots=True)
class JoinResult:
    room: str
    head: int
    members: int
    host: str | None = None
    seats: SeatSnapshot | None = None
    live: bool = False


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


@dataclass(frozen=True, slots=True)
class SeatResult:
    room: str
    seat: int
    version: int | None = None


@dataclass(frozen=True, slots=True)
class Done:
    """An operation that returns nothing but its identifiers (``room``, ``pk``, ``call``)."""

    room: str | None = None
    pk: str | None = None
    call: str | None = None


@dataclass(frozen=True, slots=True)
class MediaSession:
    """A media session in a room (docs/media.md): the stream source the backend gave us and where to send.

    ``token`` proves the UDP address that sends it in a bind packet; ``udp_port`` is None for
    the websocket transport, where frames ride the signalling connection.
    """

    room: str
    ssrc: int
    token: bytes
    udp_port: int | None = None


# Events decoded from frames.


@dataclass(slots=True)
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
class RoomEvent:
    """A room-wide broadcast that is not a message: gift, danmaku, settings, stream.

    ``kind`` names it; ``sender`` is who caused it; ``sent_at`` the actor's intended time.
    """

    kind: str
    room: str
    sender: str | None
    sent_at: float
    fields: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Invitation:
    """Something addressed to this user that wants an answer.

    ``kind``: ``seat_invite`` (fields: seat), ``cohost_request`` (from a member, to the host),
    ``cohost_rejected``, ``pk_invite`` (fields: pk, target, duration), ``pk_rejected``.
    """

    kind: str
    room: str
    sender: str | None
    sent_at: float
    fields: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PkUpdate:
    """``state`` is started, score or ended; ``sent_at`` is the time of the action behind it."""

    pk: str
    state: str
    rooms: tuple[str, ...]
    scores: Mapping[str, int]
    version: int
    sent_at: float
    winner: str | None = None


@dataclass(frozen=True, slots=True)
class CallUpdate:
    """``state`` is ringing, connected, rejected, timeout or ended; ``sent_at`` the invite's time."""

    call: str
    state: str
    caller: str
    callee: str
    sent_at: float
    by: str | None = None


@dataclass(slots=True)
class MediaFrame:
    """An audio packet that came over the signalling connection (the websocket media transport)."""

    data: bytes


#: every kind of protocol error a backend can commit, as the summary and the metrics count them.
#: Drivers find most (the frame is skipped, the connection goes on); the transport finds
#: ``oversized``, ``bad_frame`` and ``truncated``, and a close reason that is not UTF-8, after
#: which the connection cannot go on
PROTOCOL_ERROR_KINDS: dict[str, str] = {
    "bad_json": "a text frame that is not JSON",
    "bad_xml": "a text frame that is not one well-formed XML element, or XML an XMPP stream must not carry",
    "bad_utf8": "text that is not UTF-8: a text frame, or a close frame's reason (the connection fails with 1007)",
    "binary": "a binary frame where the protocol has text",
    "not_object": "JSON that is not an object",
    "unknown_event": "an event, message or element the protocol does not have",
    "unexpected_shape": "a known event with a field missing or of the wrong type",
    "unmatched_reply": "an answer to no request in flight",
    "oversized": "a message over the client's size limit: the connection fails with 1009",
    "bad_frame": "a WebSocket frame breaking RFC 6455 (reserved bits, opcode, masking, fragments, close frame): "
    "the connection fails with 1002",
    "truncated": "the connection ended in the middle of a frame or of a fragmented message",
}


@dataclass(frozen=True, slots=True)
class Malformed:
    """A frame from the backend that the driver could not make sense of.

    ``kind`` is one of :data:`PROTOCOL_ERROR_KINDS` (what the run counts); ``reason`` says
    what exactly was wrong, for the log.
    """

    reason: str
    frame: bytes = field(repr=False, default=b"")
    kind: str = "unexpected_shape"


#: the failure code of a request whose reply the driver could not read; the session counts
#: such a reply as an ``unexpected_shape`` protocol error besides failing the request
MALFORMED_REPLY = "malformed_reply"


def unreadable(data: bytes, kind: str, reason: str) -> Malformed:
    """A text frame its parser refused: ``bad_utf8`` when it is not UTF-8 at all, else ``kind`` (``bad_json`` …)."""
    try:
        data.decode()
    except UnicodeDecodeError as exc:
        return Malformed(f"not UTF-8: {exc.reason} at byte {exc.start}", data, "bad_utf8")
    return Malformed(reason, data, kind)


Event = (
    Reply
    | Failure
    | Delivery
    | Receipt
    | SeatSnapshot
    | RoomEvent
    | Invitation
    | PkUpdate
    | CallUpdate
    | MediaFrame
    | Malformed
)


#: operations a driver may leave out even when ``supports`` is None, by the method that makes them: a
#: protocol that can express all of docs/protocol.md may still have its audio elsewhere
OPTIONAL_OPERATIONS = {"media.open": "media_open"}


class Unsupported(NotImplementedError):
    """The backend's protocol has no such operation."""


class Driver(abc.ABC):
    """Turns client operations into frames and frames into events, for one connection.

    A driver instance keeps the per-connection state its protocol needs (request ids, which
    request was which operation) and nothing else.
    """

    #: WebSocket subprotocols to offer in the handshake, or None.
    subprotocols: Sequence[str] | None = None
    #: the operations (as the session names them: ``msg.send``, ``seat.take`` …) this protocol
    #: can express; None for all. Scenarios skip behaviours that need any other.
    supports: frozenset[str] | None = None
    #: True when the backend has no per-stream sequence: messages come on sender streams
    #: numbered by their senders' own counters (see :func:`sender_stream`)
    sender_sequenced: bool = False

    @classmethod
    def does(cls, op: str) -> bool:
        """Whether the protocol can express ``op``: named in ``supports``; with ``supports`` None, every
        operation but an optional one (:data:`OPTIONAL_OPERATIONS`) whose method is still the base's."""
        if cls.supports is not None:
            return op in cls.supports
        method = OPTIONAL_OPERATIONS.get(op)
        return method is None or getattr(cls, method) is not getattr(Driver, method)

    @classmethod
    def configure(cls, url: str) -> tuple[Callable[[], Driver], str]:
        """From the ``--host`` URL: a factory of per-connection drivers and the WebSocket URL.

        The base drops a ``name+`` prefix of the scheme (``xmpp+ws://`` → ``ws://``); a driver
        with options in the URL's query reads them here.
        """
        scheme, sep, rest = url.partition("://")
        return cls, (scheme.rsplit("+", 1)[-1] + sep + rest) if sep else url

    def pending(self) -> list[bytes]:
        """Frames the driver wants sent on its own (the next step of a login, a keepalive).

        The session asks after every received message and at least once a second.
        """
        return []

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

    # Voice rooms, live streams and calls. A driver for a chat-only backend leaves these
    # alone; scenarios that need them then fail at once with Unsupported.

    def join_room(self, room: str, *, seats: int | None = None, as_host: bool = False) -> Outgoing:
        """Join a room with seats (voice room or live stream); the reply carries its state."""
        if seats is None and not as_host:
            return self.join(room)
        raise Unsupported("join_room")

    def room_op(self, op: str, room: str, sent_at: float, **fields: object) -> Outgoing:
        """A room operation of docs/protocol.md (``seat.take``, ``gift``, ``cohost.accept`` …)."""
        raise Unsupported(op)

    def call_op(self, op: str, sent_at: float, **fields: object) -> Outgoing:
        """A call operation (``call.invite``, ``call.accept``, ``call.reject``, ``call.hangup``)."""
        raise Unsupported(op)

    def echo(self, sent_at: float, body: str) -> Outgoing:
        """A request the backend answers at once, doing nothing else: a round trip and no more."""
        raise Unsupported("echo")

    # Audio (docs/media.md). A backend whose media goes elsewhere (WebRTC to an SFU) leaves
    # these alone; rooms then carry no synthetic audio.

    def media_open(self, room: str, transport: str) -> Outgoing:
        """Start a media session in ``room`` over ``udp`` or ``websocket``; the reply is a :class:`MediaSession`."""
        raise Unsupported("media.open")
