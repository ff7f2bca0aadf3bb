"""Driver for XMPP over WebSocket (RFC 7395), as Prosody and other XMPP servers speak it.

What maps to what (docs/drivers-xmpp.md has the whole table):

- login: the stream is opened, the user registers in-band (XEP-0077) unless ``auth`` says
  otherwise, authenticates with SASL PLAIN (or ANONYMOUS), binds a resource and sends its
  initial presence; the login is answered when the server reflects that presence. The JID's
  local part is ``prefix`` + the user id, the password is the user's token.
- rooms are multi-user chat rooms (XEP-0045) on the ``muc`` service, joined with the user id as
  nick and without the room's history replayed; room messages are ``groupchat`` messages,
  direct messages ``chat`` messages to the recipient's bare JID.
- read receipts are XEP-0184 ``<received/>`` sent as a chat message to the author;
  history is the room's archive or the user's own (XEP-0313).

Accounting: XMPP stamps no per-room sequence, so this driver is sender-sequenced. Every message
carries ``<stamp xmlns='urn:loadgen:stamp' cseq='…' ts='…'/>`` beside its body: the sender's
own counter for the room (or recipient) and its intended send time. A receiver follows each
sender on its own stream (``room#sender``) from the first message it sees; a gap between two
messages of one sender is a hole, and after a reconnect the archives fill what was missed.
A message lost before the first or after the last one a receiver sees of its sender is not
visible this way.

XML is parsed with expat directly and anything RFC 6120 §11.1 forbids on a stream (a document
type declaration, and with it every entity that could expand, comments, processing
instructions) is refused before it is read.
"""

from __future__ import annotations

import base64
import functools
import itertools
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import parse_qsl, urlsplit, urlunsplit
from xml.etree.ElementTree import Element, TreeBuilder
from xml.parsers import expat
from xml.sax.saxutils import escape

from loadgen.drivers.base import (
    INBOX,
    MALFORMED_REPLY,
    SENDER_SEPARATOR,
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
    Unsupported,
    sender_stream,
    unreadable,
)
from loadgen.errors import ConfigError

NS_CLIENT = "jabber:client"
NS_FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
NS_STREAMS = "http://etherx.jabber.org/streams"
NS_STREAM_ERRORS = "urn:ietf:params:xml:ns:xmpp-streams"
NS_STANZA_ERRORS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_REGISTER = "jabber:iq:register"
NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"
NS_MUC_OWNER = "http://jabber.org/protocol/muc#owner"
NS_DATA_FORMS = "jabber:x:data"
NS_MAM = "urn:xmpp:mam:2"
NS_RSM = "http://jabber.org/protocol/rsm"
NS_FORWARD = "urn:xmpp:forward:0"
NS_DELAY = "urn:xmpp:delay"
NS_RECEIPTS = "urn:xmpp:receipts"
NS_HINTS = "urn:xmpp:hints"
NS_PING = "urn:xmpp:ping"
#: the accounting stamp every message of the toolkit carries
NS_STAMP = "urn:loadgen:stamp"

AUTH_MODES = ("register", "plain", "anonymous")
#: query keys of an ``xmpp+ws://`` URL
URL_OPTIONS = ("domain", "muc", "auth", "prefix")
#: message ids are ``lg.<cseq>.<room>``: a reader rebuilds the id its receipt names from what it saw
ID_PREFIX = "lg"
#: seconds the server's clock may lag ours when history asks for what was archived since a time
ARCHIVE_CLOCK_SLACK = 10.0


# -- XML in ---------------------------------------------------------------------------


class Refused(ValueError):
    """XML that an XMPP stream must never carry (RFC 6120 §11.1)."""


class _Unmatched(ValueError):
    """An answer to nothing this stream asked, or asked for a login no longer under way."""


def _refuse(what: str) -> Callable[..., None]:
    def handler(*_args: object) -> None:
        raise Refused(f"{what} is not allowed on an XMPP stream")

    return handler


def _clark(name: str) -> str:
    # expat joins namespace and local name with the separator asked for; ElementTree's
    # "{namespace}local" then needs only the opening brace
    return "{" + name if "}" in name else name


def parse(frame: bytes) -> Element:
    """The one element of one frame (RFC 7395 §3.3.3), or ``expat.ExpatError``/``Refused``.

    A document type declaration is refused the moment it starts, so no entity is ever
    declared, let alone expanded; references to undeclared entities are expat errors.
    """
    builder = TreeBuilder()
    parser = expat.ParserCreate(namespace_separator="}")
    parser.buffer_text = True
    parser.StartElementHandler = lambda name, attrs: builder.start(
        _clark(name), {_clark(key): value for key, value in attrs.items()}
    )
    parser.EndElementHandler = lambda name: builder.end(_clark(name))
    parser.CharacterDataHandler = builder.data
    parser.StartDoctypeDeclHandler = _refuse("a document type declaration")
    parser.EntityDeclHandler = _refuse("an entity declaration")
    parser.CommentHandler = _refuse("a comment")
    parser.ProcessingInstructionHandler = _refuse("a processing instruction")
    parser.Parse(frame, True)
    return builder.close()


def _q(namespace: str, local: str) -> str:
    return f"{{{namespace}}}{local}"


def _condition(element: Element, namespace: str) -> tuple[str, str]:
    """The defined condition and text of an error element (stanza, stream or SASL)."""
    condition, text = "error", ""
    for child in element:
        local = child.tag.rpartition("}")[2]
        if local == "text":
            text = child.text or ""
        elif child.tag.startswith(f"{{{namespace}}}"):
            condition = local
    return condition, text


def _stanza_error(stanza: Element) -> tuple[str, str]:
    error = stanza.find(_q(NS_CLIENT, "error"))
    return ("error", "") if error is None else _condition(error, NS_STANZA_ERRORS)


def _timestamp(stamp: str) -> float:
    """An XEP-0082 date-time as Unix seconds."""
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except (OverflowError, OSError) as exc:
        # a date the platform's time functions cannot place (year 1 in a zone east of UTC …)
        raise ValueError(f"date-time {stamp!r} out of range: {exc}") from exc


# -- XML out ----------------------------------------------------------------------------


def _text(value: str) -> str:
    return escape(value)


def _attr(value: str) -> str:
    # attributes are written in single quotes
    return escape(value, {"'": "&apos;", '"': "&quot;"})


#: characters a JID's local part cannot hold, escaped as XEP-0106 says
_NODE_UNSAFE = " \"&'/:<>@\\"
_NODE_ESCAPE = re.compile(r"\\(20|22|26|27|2f|3a|3c|3e|40|5c)")


def node(name: str) -> str:
    """A name (user id, room) as a JID local part (XEP-0106)."""
    return "".join(f"\\{ord(c):02x}" if c in _NODE_UNSAFE else c for c in name)


def unnode(local: str) -> str:
    return _NODE_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), local)


# -- the driver -------------------------------------------------------------------------


@dataclass(slots=True)
class _Iq:
    """An iq we sent: the request it belongs to and how to read its result."""

    request_id: int
    on_result: Callable[[Element], list[Event]]
    #: None: an error answer fails the request with the error's condition
    on_error: Callable[[Element], list[Event]] | None = None


@dataclass(slots=True)
class _Join:
    request_id: int
    room: str
    #: occupants the room announced before our own presence came back
    members: int = 0


@dataclass(slots=True)
class _Query:
    stream: str
    deliveries: list[Delivery] = field(default_factory=list)


class XmppDriver(Driver):
    """One XMPP client stream over one WebSocket; the module docstring has the mapping."""

    subprotocols = ("xmpp",)
    # no mic seats, gifts, danmaku, co-hosts, PK or calls in XMPP; the server's clock
    # (XEP-0202, XEP-0082) reads in whole seconds, too coarse to measure an offset with
    supports = frozenset(
        {
            "session.login",
            "session.logout",
            "room.join",
            "room.leave",
            "msg.send",
            "dm.send",
            "msg.read",
            "history.fetch",
        }
    )
    sender_sequenced = True

    @classmethod
    def configure(cls, url: str) -> tuple[Callable[[], Driver], str]:
        """``xmpp+ws://host:port/path?domain=…&muc=…&auth=…&prefix=…`` → a driver factory and ``ws://host:port/path``."""
        parts = urlsplit(url)
        options = dict(parse_qsl(parts.query, keep_blank_values=True))
        for key in options:
            if key not in URL_OPTIONS:
                raise ConfigError("--host", None, key, f"not an option of the XMPP driver ({', '.join(URL_OPTIONS)})")
        auth = options.get("auth", "register")
        if auth not in AUTH_MODES:
            raise ConfigError("--host", None, "auth", f"{auth!r} is none of {', '.join(AUTH_MODES)}")
        domain = options.get("domain") or "localhost"
        factory = functools.partial(
            cls,
            domain=domain,
            muc=options.get("muc") or f"conference.{domain}",
            auth=auth,
            prefix=options.get("prefix", "loadgen-"),
            # archives outlive runs: what was archived before this process started is not ours
            archived_after=time.time(),
        )
        scheme = parts.scheme.rpartition("+")[2]
        return factory, urlunsplit((scheme, parts.netloc, parts.path, "", ""))

    def __init__(
        self,
        *,
        domain: str = "localhost",
        muc: str | None = None,
        auth: str = "register",
        prefix: str = "loadgen-",
        archived_after: float = 0.0,
    ) -> None:
        if auth not in AUTH_MODES:
            raise ValueError(f"auth must be one of {AUTH_MODES}, not {auth!r}")
        self.domain = domain
        self.muc = muc or f"conference.{domain}"
        self.auth = auth
        self.prefix = prefix
        self.archived_after = archived_after
        self.user: str | None = None
        #: the full JID the server bound this stream to
        self.jid: str | None = None
        self._ids = itertools.count(1)
        self._outbox: list[bytes] = []
        # the login under way: its request id and password; None when none is
        self._login: tuple[int, str] | None = None
        self._registered = False
        self._authenticated = False
        self._mechanisms: set[str] = set()
        self._iqs: dict[str, _Iq] = {}
        # keyed by the room's bare JID as the server writes it back (lowercase)
        self._joins: dict[str, _Join] = {}
        self._leaves: dict[str, int] = {}
        self._rooms: dict[str, str] = {}
        self._sends: dict[str, int] = {}
        self._queries: dict[str, _Query] = {}
        # our own presences awaiting their reflection: id -> (request id, result)
        self._presences: dict[str, tuple[int, object]] = {}
        self._handlers: dict[str, Callable[[Element], list[Event]]] = {
            _q(NS_FRAMING, "open"): lambda _element: [],
            _q(NS_FRAMING, "close"): lambda _element: [],
            _q(NS_STREAMS, "features"): self._on_features,
            _q(NS_STREAMS, "error"): self._on_stream_error,
            _q(NS_SASL, "success"): self._on_sasl_success,
            _q(NS_SASL, "failure"): self._on_sasl_failure,
            _q(NS_CLIENT, "iq"): self._on_iq,
            _q(NS_CLIENT, "message"): self._on_message,
            _q(NS_CLIENT, "presence"): self._on_presence,
        }

    # -- addresses ------------------------------------------------------------------

    def _next(self) -> tuple[int, str]:
        request_id = next(self._ids)
        return request_id, f"{ID_PREFIX}{request_id}"

    def _local_part(self, user: str | None = None) -> str:
        """The JID local part of ``user``, this connection's own by default."""
        return node(self.prefix + (user if user is not None else self.user or ""))

    def _user_jid(self, user: str) -> str:
        return f"{self._local_part(user)}@{self.domain}"

    def _room_jid(self, room: str) -> str:
        jid = f"{node(room)}@{self.muc}"
        self._rooms[jid.lower()] = room
        return jid

    def _room_of(self, bare: str) -> str:
        return self._rooms.get(bare.lower()) or unnode(bare.partition("@")[0])

    def _user_of(self, jid: str) -> str:
        local, at, _domain = jid.partition("@")
        if not at:
            raise ValueError(f"{jid!r} is not a user's JID")
        return unnode(local).removeprefix(self.prefix)

    # -- operations -----------------------------------------------------------------

    def login(self, user: str, token: str) -> Outgoing:
        request_id, _ = self._next()
        self.user = user
        self._login = (request_id, token)
        self._registered = self.auth != "register"
        self._authenticated = False
        return Outgoing(request_id, self._open())

    def _open(self) -> bytes:
        return f"<open xmlns='{NS_FRAMING}' to='{_attr(self.domain)}' version='1.0'/>".encode()

    def join(self, room: str) -> Outgoing:
        request_id, stanza_id = self._next()
        jid = self._room_jid(room)
        self._joins[jid.lower()] = _Join(request_id, room)
        payload = (
            f"<presence xmlns='{NS_CLIENT}' id='{stanza_id}' to='{_attr(jid)}/{_attr(self.user or '')}'>"
            # the archive, not a replay on joining, is where missed messages come from
            f"<x xmlns='{NS_MUC}'><history maxstanzas='0'/></x></presence>"
        )
        return Outgoing(request_id, payload.encode())

    def leave(self, room: str) -> Outgoing:
        request_id, stanza_id = self._next()
        jid = self._room_jid(room)
        self._leaves[jid.lower()] = request_id
        payload = (
            f"<presence xmlns='{NS_CLIENT}' type='unavailable' id='{stanza_id}'"
            f" to='{_attr(jid)}/{_attr(self.user or '')}'/>"
        )
        return Outgoing(request_id, payload.encode())

    def _stamped(self, kind: str, to: str, message_id: str, cseq: int, sent_at: float, body: str) -> bytes:
        return (
            f"<message xmlns='{NS_CLIENT}' type='{kind}' id='{_attr(message_id)}' to='{_attr(to)}'>"
            f"<body>{_text(body)}</body><stamp xmlns='{NS_STAMP}' cseq='{cseq}' ts='{sent_at!r}'/></message>"
        ).encode()

    def send(self, room: str, cseq: int, sent_at: float, body: str) -> Outgoing:
        """Answered when the room reflects the message back to its author (XEP-0045 §7.4)."""
        request_id, _ = self._next()
        message_id = f"{ID_PREFIX}.{cseq}.{room}"
        self._sends[message_id] = request_id
        return Outgoing(request_id, self._stamped("groupchat", self._room_jid(room), message_id, cseq, sent_at, body))

    def direct(self, to: str, cseq: int, sent_at: float, body: str) -> Outgoing:
        """Fire and forget: a chat message has no answer; a bounce arrives as a failure of no request."""
        request_id, _ = self._next()
        message_id = f"{ID_PREFIX}.{cseq}.@{to}"
        payload = self._stamped("chat", self._user_jid(to), message_id, cseq, sent_at, body)
        return Outgoing(request_id, payload, done=SendResult(sender_stream(INBOX, to), cseq, 0.0))

    def read(self, room: str, seq: int) -> Outgoing:
        """A receipt for message ``seq`` of the sender stream ``room``, to that message's author."""
        parent, separator, author = room.partition(SENDER_SEPARATOR)
        if not separator:
            raise ValueError(f"{room!r} is not a sender stream: a receipt goes to the message's author")
        request_id, stanza_id = self._next()
        payload = (
            f"<message xmlns='{NS_CLIENT}' type='chat' id='{stanza_id}' to='{_attr(self._user_jid(author))}'>"
            f"<received xmlns='{NS_RECEIPTS}' id='{_attr(f'{ID_PREFIX}.{seq}.{parent}')}'/>"
            # a receipt is a live signal: archiving it would crowd messages out of history pages
            f"<no-store xmlns='{NS_HINTS}'/></message>"
        )
        return Outgoing(request_id, payload.encode(), done=ReadResult(room, seq))

    def history(self, stream: str, since: int, limit: int) -> Outgoing:
        """The latest ``limit`` archived messages of a room, or of the user's own archive for ``INBOX``.

        ``since`` is not used: archives have no sequence of the toolkit's to start from, and
        the sender streams tell what is new.
        """
        request_id, stanza_id = self._next()
        to = "" if stream == INBOX else f" to='{_attr(self._room_jid(stream))}'"
        self._queries[stanza_id] = _Query(stream)
        self._iqs[stanza_id] = _Iq(request_id, functools.partial(self._history_done, request_id, stanza_id))
        window = ""
        if self.archived_after > 0:
            # the server leaves out what earlier runs archived, with slack for its clock; the
            # stamps' own times then decide exactly (see _archived)
            start = datetime.fromtimestamp(self.archived_after - ARCHIVE_CLOCK_SLACK, timezone.utc)
            window = (
                f"<x xmlns='{NS_DATA_FORMS}' type='submit'>"
                f"<field var='FORM_TYPE' type='hidden'><value>{NS_MAM}</value></field>"
                f"<field var='start'><value>{start:%Y-%m-%dT%H:%M:%SZ}</value></field></x>"
            )
        payload = (
            f"<iq xmlns='{NS_CLIENT}' type='set' id='{stanza_id}'{to}>"
            f"<query xmlns='{NS_MAM}' queryid='{stanza_id}'>{window}"
            # an empty <before/> asks for the last page: the newest messages, oldest first
            f"<set xmlns='{NS_RSM}'><max>{max(limit, 0)}</max><before/></set></query></iq>"
        )
        return Outgoing(request_id, payload.encode())

    def clock(self, t0: float) -> Outgoing:
        raise Unsupported("clock.sync")

    def logout(self) -> Outgoing:
        """Unavailable presence: the server leaves every room for us and reflects it back."""
        request_id, stanza_id = self._next()
        self._presences[stanza_id] = (request_id, LogoutResult({}, 0))
        return Outgoing(request_id, f"<presence xmlns='{NS_CLIENT}' type='unavailable' id='{stanza_id}'/>".encode())

    def pending(self) -> list[bytes]:
        frames, self._outbox = self._outbox, []
        return frames

    # -- frames in ------------------------------------------------------------------

    def receive(self, data: bytes, binary: bool) -> list[Event]:
        if binary:
            return [Malformed("binary frame: XMPP over WebSocket is text", data, "binary")]
        try:
            element = parse(data)
        except Refused as exc:
            return [Malformed(str(exc), data, "bad_xml")]
        except expat.ExpatError as exc:
            return [unreadable(data, "bad_xml", f"not one XML element: {exc}")]
        handler = self._handlers.get(element.tag)
        if handler is None:
            return [Malformed(f"unexpected element {element.tag}", data, "unknown_event")]
        try:
            return handler(element)
        except _Unmatched as exc:
            return [Malformed(str(exc), data, "unmatched_reply")]
        except (KeyError, TypeError, ValueError) as exc:
            return [Malformed(f"{element.tag}: {type(exc).__name__}: {exc}", data, "unexpected_shape")]

    def _login_under_way(self) -> tuple[int, str]:
        """The login's request id and password; an answer of the login chain after it ended is unmatched."""
        if self._login is None:
            raise _Unmatched("an answer of the login chain, with no login under way")
        return self._login

    def _fail(self, request_id: int, code: str, message: str) -> list[Event]:
        if self._login is not None and self._login[0] == request_id:
            self._login = None
        return [Failure(request_id, code, message)]

    # the login chain: features → [register] → auth → restart → features → bind → presence

    def _on_features(self, features: Element) -> list[Event]:
        if self._login is None:
            return []
        request_id = self._login[0]
        if self._authenticated:
            if features.find(_q(NS_BIND, "bind")) is None:
                return self._fail(request_id, "bind_unsupported", "the server offers no resource binding")
            _, stanza_id = self._next()
            self._iqs[stanza_id] = _Iq(request_id, self._on_bound)
            self._outbox.append(
                f"<iq xmlns='{NS_CLIENT}' type='set' id='{stanza_id}'><bind xmlns='{NS_BIND}'/></iq>".encode()
            )
            return []
        self._mechanisms = {
            (mechanism.text or "").strip()
            for mechanism in features.iterfind(f"{_q(NS_SASL, 'mechanisms')}/{_q(NS_SASL, 'mechanism')}")
        }
        if self._registered:
            return self._authenticate()
        self._registered = True
        _, stanza_id = self._next()
        self._iqs[stanza_id] = _Iq(request_id, lambda _result: self._authenticate(), self._on_registration_refused)
        # XEP-0077 §3.1 without asking for the form first: username and password are the fields
        # every server takes, and the round trip saved is one per login
        self._outbox.append(
            f"<iq xmlns='{NS_CLIENT}' type='set' id='{stanza_id}' to='{_attr(self.domain)}'>"
            f"<query xmlns='{NS_REGISTER}'><username>{_text(self._local_part())}</username>"
            f"<password>{_text(self._login[1])}</password></query></iq>".encode()
        )
        return []

    def _on_registration_refused(self, answer: Element) -> list[Event]:
        condition, text = _stanza_error(answer)
        if condition == "conflict":
            # registered on an earlier connection or run: the token is still its password
            return self._authenticate()
        request_id, _ = self._login_under_way()
        return self._fail(request_id, "register_failed", f"{condition}: {text}" if text else condition)

    def _authenticate(self) -> list[Event]:
        request_id, password = self._login_under_way()
        mechanism = "ANONYMOUS" if self.auth == "anonymous" else "PLAIN"
        if mechanism not in self._mechanisms:
            offered = ", ".join(sorted(self._mechanisms)) or "none"
            return self._fail(request_id, "auth_unsupported", f"SASL {mechanism} not offered ({offered})")
        if mechanism == "ANONYMOUS":
            self._outbox.append(f"<auth xmlns='{NS_SASL}' mechanism='ANONYMOUS'/>".encode())
            return []
        credentials = base64.b64encode(f"\0{self._local_part()}\0{password}".encode()).decode()
        self._outbox.append(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{credentials}</auth>".encode())
        return []

    def _on_sasl_success(self, _success: Element) -> list[Event]:
        if self._login is None:
            return []
        self._authenticated = True
        # RFC 7395 §3.5: after SASL the client opens the stream anew
        self._outbox.append(self._open())
        return []

    def _on_sasl_failure(self, failure: Element) -> list[Event]:
        if self._login is None:
            return []
        condition, text = _condition(failure, NS_SASL)
        return self._fail(self._login[0], "auth_failed", f"{condition}: {text}" if text else condition)

    def _on_bound(self, result: Element) -> list[Event]:
        jid = result.findtext(f"{_q(NS_BIND, 'bind')}/{_q(NS_BIND, 'jid')}")
        if not jid:
            raise ValueError("bind result without a JID")
        request_id, _ = self._login_under_way()
        self.jid = jid.strip()
        _, stanza_id = self._next()
        self._presences[stanza_id] = (request_id, LoginResult(self.user or "", 0, 0.0))
        # only an available resource gets chat messages addressed to the bare JID
        self._outbox.append(f"<presence xmlns='{NS_CLIENT}' id='{stanza_id}'/>".encode())
        return []

    def _on_stream_error(self, error: Element) -> list[Event]:
        condition, text = _condition(error, NS_STREAM_ERRORS)
        if self._login is not None:
            return self._fail(self._login[0], condition, text)
        return [Failure(None, condition, text)]

    # stanzas

    def _on_iq(self, iq: Element) -> list[Event]:
        kind = iq.get("type")
        if kind in ("get", "set"):
            self._answer(iq)
            return []
        stanza_id = iq.get("id", "")
        sent = self._iqs.pop(stanza_id, None)
        if sent is None:
            raise _Unmatched(f"answer to no iq of ours ({stanza_id!r})")
        try:
            if kind != "error":
                return sent.on_result(iq)
            if sent.on_error is not None:
                return sent.on_error(iq)
            self._queries.pop(stanza_id, None)
            return self._fail(sent.request_id, *_stanza_error(iq))
        except _Unmatched:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            # the request must still end, or its caller would wait for the timeout
            self._queries.pop(stanza_id, None)
            return self._fail(sent.request_id, MALFORMED_REPLY, f"{type(exc).__name__}: {exc}")

    def _answer(self, iq: Element) -> None:
        """Every get or set must be answered (RFC 6120 §8.2.3): pings, and a refusal for the rest."""
        to = iq.get("from")
        head = f"<iq xmlns='{NS_CLIENT}' id='{_attr(iq.get('id', ''))}'" + (f" to='{_attr(to)}'" if to else "")
        if iq.get("type") == "get" and iq.find(_q(NS_PING, "ping")) is not None:
            self._outbox.append(f"{head} type='result'/>".encode())
        else:
            self._outbox.append(
                f"{head} type='error'><error type='cancel'><service-unavailable xmlns='{NS_STANZA_ERRORS}'/>"
                "</error></iq>".encode()
            )

    def _history_done(self, request_id: int, stanza_id: str, _fin: Element) -> list[Event]:
        query = self._queries.pop(stanza_id)
        return [Reply(request_id, HistoryResult(query.stream, 0, tuple(query.deliveries)))]

    def _on_presence(self, presence: Element) -> list[Event]:
        origin = presence.get("from", "")
        kind = presence.get("type", "available")
        if origin == self.jid:
            awaited = self._presences.pop(presence.get("id", ""), None)
            if awaited is None:
                return []
            request_id, result = awaited
            if isinstance(result, LoginResult):
                self._login = None
            return [Reply(request_id, result)]
        bare = origin.partition("/")[0].lower()
        if kind == "error":
            # only a room's refusal answers a request: the server also sends our unavailable
            # presence to every room we ever addressed, and one that forgot us bounces it
            join = self._joins.pop(bare, None)
            request_id = join.request_id if join is not None else self._leaves.pop(bare, None)
            return [] if request_id is None else self._fail(request_id, *_stanza_error(presence))
        codes = {
            status.get("code") for status in presence.iterfind(f"{_q(NS_MUC_USER, 'x')}/{_q(NS_MUC_USER, 'status')}")
        }
        if "110" not in codes:
            join = self._joins.get(bare)
            if join is not None and kind == "available":
                join.members += 1
            return []
        if kind == "unavailable":
            request_id = self._leaves.pop(bare, None)
            return [] if request_id is None else [Reply(request_id, LeaveResult(self._room_of(bare), 0))]
        join = self._joins.pop(bare, None)
        if join is None:
            return []
        if "201" in codes:
            # a room just made: a server that locks new rooms opens it on the owner's instant
            # configuration (XEP-0045 §10.1.2); one that does not takes the empty form as is
            _, stanza_id = self._next()
            self._iqs[stanza_id] = _Iq(join.request_id, lambda _result: [], lambda _error: [])
            self._outbox.append(
                f"<iq xmlns='{NS_CLIENT}' type='set' id='{stanza_id}' to='{_attr(origin.partition('/')[0])}'>"
                f"<query xmlns='{NS_MUC_OWNER}'><x xmlns='{NS_DATA_FORMS}' type='submit'/></query></iq>".encode()
            )
        return [Reply(join.request_id, JoinResult(join.room, 0, join.members + 1))]

    def _on_message(self, message: Element) -> list[Event]:
        result = message.find(_q(NS_MAM, "result"))
        if result is not None:
            self._archived(result)
            return []
        kind = message.get("type", "normal")
        if kind == "error":
            return self._bounced(message)
        received = message.find(_q(NS_RECEIPTS, "received"))
        if received is not None:
            return [self._receipt(message, received)]
        stamp = message.find(_q(NS_STAMP, "stamp"))
        # a delayed copy is a replay (offline storage, room history): the archives are the one
        # place missed messages are counted from
        if stamp is None or message.find(_q(NS_DELAY, "delay")) is not None:
            return []
        if kind == "groupchat":
            return self._groupchat(message, stamp)
        return [self._direct(message, stamp, 0.0)]

    def _groupchat(self, message: Element, stamp: Element) -> list[Event]:
        bare, _, nick = message.get("from", "").partition("/")
        room = self._room_of(bare)
        cseq, sent_at = self._stamp(stamp)
        if nick == self.user:
            request_id = self._sends.pop(message.get("id", ""), None)
            if request_id is None:
                return []
            return [Reply(request_id, SendResult(sender_stream(room, nick), cseq, 0.0))]
        body = message.findtext(_q(NS_CLIENT, "body")) or ""
        return [Delivery(sender_stream(room, nick), cseq, nick, cseq, sent_at, 0.0, body, False)]

    def _direct(self, message: Element, stamp: Element, server_ts: float) -> Delivery:
        sender = self._user_of(message.get("from", ""))
        cseq, sent_at = self._stamp(stamp)
        body = message.findtext(_q(NS_CLIENT, "body")) or ""
        return Delivery(sender_stream(INBOX, sender), cseq, sender, cseq, sent_at, server_ts, body, True)

    @staticmethod
    def _stamp(stamp: Element) -> tuple[int, float]:
        cseq, sent_at = stamp.get("cseq"), stamp.get("ts")
        if cseq is None or sent_at is None:
            raise ValueError("stamp without cseq or ts")
        when = float(sent_at)
        if not math.isfinite(when):
            raise ValueError(f"stamp with a time of {sent_at!r}")
        return int(cseq), when

    def _receipt(self, message: Element, received: Element) -> Receipt:
        prefix, _, rest = received.get("id", "").partition(".")
        cseq, _, room = rest.partition(".")
        if prefix != ID_PREFIX or not room:
            raise ValueError(f"receipt for a message id not of this toolkit: {received.get('id')!r}")
        return Receipt(room, int(cseq), self._user_of(message.get("from", "")))

    def _bounced(self, message: Element) -> list[Event]:
        condition, text = _stanza_error(message)
        request_id = self._sends.pop(message.get("id", ""), None)
        if request_id is not None:
            return [Failure(request_id, condition, text)]
        # a direct message or receipt that could not be delivered (no such user, say)
        return [Failure(None, condition, f"{message.get('from', '')}: {text}" if text else message.get("from", ""))]

    def _archived(self, result: Element) -> None:
        query = self._queries.get(result.get("queryid", ""))
        if query is None:
            return
        forwarded = result.find(_q(NS_FORWARD, "forwarded"))
        message = None if forwarded is None else forwarded.find(_q(NS_CLIENT, "message"))
        if message is None:
            raise ValueError("archive result without a forwarded message")
        stamp = message.find(_q(NS_STAMP, "stamp"))
        if stamp is None:
            return
        delay = forwarded.find(_q(NS_DELAY, "delay"))
        server_ts = _timestamp(delay.get("stamp", "")) if delay is not None else 0.0
        cseq, sent_at = self._stamp(stamp)
        if sent_at < self.archived_after:
            return
        if query.stream != INBOX:
            nick = message.get("from", "").partition("/")[2]
            body = message.findtext(_q(NS_CLIENT, "body")) or ""
            query.deliveries.append(
                Delivery(sender_stream(query.stream, nick), cseq, nick, cseq, sent_at, server_ts, body, False)
            )
            return
        delivery = self._direct(message, stamp, server_ts)
        # the personal archive also keeps what this user sent
        if message.get("type") != "groupchat" and delivery.sender != self.user:
            query.deliveries.append(delivery)


__all__ = ["XmppDriver", "parse"]
