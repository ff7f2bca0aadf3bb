"""WebSocket client for Locust's gevent world.

The protocol itself is websockets' Sans-I/O ``ClientProtocol``: bytes go in through
``receive_data``, frames come out of ``events_received``, bytes to write come out of
``data_to_send``. This module only drives it over a gevent socket.

Why not a ready-made client: asyncio clients cannot run inside Locust's gevent hub, and
the websockets threading client (``websockets.sync``) runs a reader thread and a
keepalive thread per connection, which monkey-patching turns into two greenlets plus
their queues and buffers. A load generator holds thousands of connections per process,
so here a connection is one gevent socket, one ``ClientProtocol`` and one reader
greenlet; keepalive adds one event-loop timer and a greenlet that lives only while a
ping is being written. With 2000 idle connections to a local echo server (CPython 3.11,
gevent 26, websockets 17) that came to about 14 KiB of RSS per connection, against about
37 KiB for ``websockets.sync``.

Concurrency rules, which the rest of the module relies on:

- Once connected, only the reader greenlet calls ``receive_data``; ``on_message`` and
  ``on_close`` run there (``on_message`` in the impairment's greenlet on an impaired
  connection: see ``impair``).
- Every write is ``protocol.send_*`` + ``data_to_send`` + ``sendall`` under one lock, so
  two frames never interleave on the wire. Whoever holds the lock also writes whatever
  the protocol queued meanwhile (pongs, close frames), so the reader never has to wait
  behind a large send to answer a ping.
- Every way a connection can end (close handshake, network error, keepalive timeout,
  local close or abort) ends with the reader greenlet leaving its loop; the reader alone
  reports the end, which is why ``on_close`` runs exactly once.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import logging
import os
import socket
import ssl
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any

import gevent
import gevent.event
import gevent.lock
import gevent.socket
import gevent.ssl
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidStatus, InvalidURI, PayloadTooBig, ProtocolError
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import CLOSED, CONNECTING, OPEN, Protocol
from websockets.streams import StreamReader
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

try:
    from websockets.speedups import apply_mask
except ImportError:  # a build of websockets without its C extension
    from websockets.utils import apply_mask

__all__ = [
    "ConnectError",
    "ConnectTimeout",
    "ConnectionClosed",
    "HandshakeError",
    "TransportError",
    "WebSocketClient",
]

_LOGGER = logging.getLogger("loadgen.transport")

# Large enough that a big frame arrives in few reads, and only allocated per read: a
# receive buffer kept per connection would cost this much for every idle connection.
_RECV_SIZE = 65536
# One receive buffer for the process, copied out at the size read: recv(65536) allocates 64 KiB
# and shrinks it, which over a soak of millions of messages fragments the C heap into a steady
# RSS climb (bench/soak.py). Greenlets share one thread and nothing switches between the read
# and the copy, so one buffer serves every connection.
_RECEIVE_VIEW = memoryview(bytearray(_RECV_SIZE))

# Bound on waiting for the server to close TCP after it started the closing handshake;
# a client is expected to let the server close first (RFC 6455 7.1.1).
_CLOSE_TIMEOUT = 5.0

# Bound on writing our close frame when keepalive gives up on a peer that may be stuck.
_FAIL_FLUSH_TIMEOUT = 1.0

# The reader wakes as soon as its socket is closed; this only guards against an
# on_message callback that blocks while close() or abort() waits for the reader.
_READER_JOIN_TIMEOUT = 1.0

_CLEAN_CLOSE_CODES = frozenset({1000, 1001})

_TEXT, _BINARY, _CONT, _PONG = Opcode.TEXT, Opcode.BINARY, Opcode.CONT, Opcode.PONG

_connection_ids = itertools.count(1)

# where websockets' frame parser waits between frames (see _between_frames)
_AT_EOF = StreamReader.at_eof.__code__

# Client frames need unpredictable masks (RFC 6455, 5.3): one read of the kernel's random
# source serves a thousand frames here, where websockets' serializer makes a syscall per frame.
_MASK_POOL_BYTES = 4096
_mask_pool = b""
_mask_taken = _MASK_POOL_BYTES


def _next_mask() -> bytes:
    global _mask_pool, _mask_taken
    if _mask_taken == _MASK_POOL_BYTES:
        _mask_pool, _mask_taken = os.urandom(_MASK_POOL_BYTES), 0
    start = _mask_taken
    _mask_taken = start + 4
    return _mask_pool[start : start + 4]


def _data_frame(data: bytes, binary: bool) -> bytes:
    """One unfragmented, masked client data frame, as ``Frame.serialize`` writes it."""
    length = len(data)
    head1 = 0x82 if binary else 0x81
    if length < 126:
        header = bytes((head1, 0x80 | length))
    elif length < 65536:
        header = bytes((head1, 0xFE)) + length.to_bytes(2, "big")
    else:
        header = bytes((head1, 0xFF)) + length.to_bytes(8, "big")
    mask = _next_mask()
    return b"".join((header, mask, apply_mask(data, mask)))


class TransportError(Exception):
    """Base class of every error raised by this module."""


class ConnectError(TransportError):
    """The connection could not be established: refused, DNS, TLS, or a failed upgrade."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(url, reason)
        self.url = url
        self.reason = reason

    def __str__(self) -> str:
        return f"cannot connect to {self.url}: {self.reason}"


class ConnectTimeout(ConnectError):
    """TCP connect, TLS handshake and HTTP upgrade did not finish within the timeout."""


class HandshakeError(ConnectError):
    """The server answered the upgrade with something other than a valid 101 response."""

    def __init__(self, url: str, reason: str, status: int | None = None) -> None:
        super().__init__(url, reason)
        self.args = (url, reason, status)
        self.status = status


class ConnectionClosed(TransportError):
    """The connection is closed, or closing; passed to ``on_close`` and raised by sends.

    ``code`` is the close code the server sent; when there was none, it is the code this
    side failed the connection with (1009 message too big, 1011 keepalive timeout,
    1002 protocol error), else 1006. It is ``None`` only while a closing handshake is
    still in progress. ``clean`` is true when both sides exchanged close frames with
    1000 or 1001. ``protocol_error`` names what the server did wrong when that ended the
    connection: ``oversized``, ``bad_frame``, ``bad_utf8`` (a close reason) or
    ``truncated`` (the connection ended in the middle of a frame); else ``None``.
    """

    def __init__(self, code: int | None, reason: str, clean: bool = False, protocol_error: str | None = None) -> None:
        super().__init__(code, reason, clean)
        self.code = code
        self.reason = reason
        self.clean = clean
        self.protocol_error = protocol_error

    def __str__(self) -> str:
        if self.code is None:
            return f"connection closing ({self.reason})"
        return f"connection closed with code {self.code}" + (f" ({self.reason})" if self.reason else "")


class _ConnectionLogger(logging.LoggerAdapter):
    # An adapter rather than logger.getChild(id): child loggers are registered in the
    # logging manager forever, which leaks one logger per connection over a long soak.
    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        return f"{self.extra['conn']} {msg}", kwargs  # type: ignore[index]


@functools.cache
def _default_ssl_context() -> ssl.SSLContext:
    # One shared context: building one loads the CA store, too costly per connection.
    return ssl.create_default_context()


class WebSocketClient:
    """One WebSocket connection; create it with :meth:`connect`.

    ``closed`` turns true as soon as the connection stops being usable for sending (a
    closing handshake started, the link was lost or aborted); ``close_code`` and
    ``close_reason`` are set once the connection has ended, just before ``on_close``.
    ``callback_errors`` counts exceptions raised by ``on_message``. ``protocol_error`` is
    set when the server broke the protocol in a way that ends the connection (see
    :class:`ConnectionClosed`).
    """

    __slots__ = (
        "url",
        "subprotocol",
        "close_code",
        "close_reason",
        "callback_errors",
        "protocol_error",
        "_protocol",
        "_sock",
        "_logger",
        "_conn",
        "_adapter",
        "_on_message",
        "_on_close",
        "_send_lock",
        "_done",
        "_finished",
        "_reader",
        "_lost_reason",
        "_close_requested",
        "_result",
        "_fragments",
        "_fragments_binary",
        "_fragments_size",
        "_unparsed",
        "_unparsed_needed",
        "_parse_here",
        "_ping_interval",
        "_ping_timeout",
        "_timer",
        "_ping_payload",
        "_awaiting_pong",
        "_impairment",
    )

    def __init__(
        self,
        url: str,
        sock: gevent.socket.socket,
        protocol: ClientProtocol,
        logger: logging.Logger,
        conn: str,
        on_message: Callable[[bytes, bool], None],
        on_close: Callable[[ConnectionClosed], None] | None,
    ) -> None:
        self.url = url
        self.subprotocol: str | None = protocol.subprotocol
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.callback_errors = 0
        self.protocol_error: str | None = None
        self._protocol = protocol
        self._sock = sock
        self._logger = logger
        self._conn = conn
        self._adapter: _ConnectionLogger | None = None
        self._on_message = on_message
        self._on_close = on_close
        self._send_lock = gevent.lock.Semaphore()
        # made by the first caller that waits for the end: an idle connection holds no Event
        self._done: gevent.event.Event | None = None
        self._finished = False
        self._reader: Any = None
        self._lost_reason: str | None = None
        self._close_requested = False
        self._result: ConnectionClosed | None = None
        self._fragments: list[bytes | bytearray] = []
        self._fragments_binary = False
        self._fragments_size = 0
        # the tail of the reads that does not make a whole frame yet, and how long that frame is
        # once its header is known (see _parse)
        self._unparsed = bytearray()
        self._unparsed_needed = 0
        # data frames are parsed here (see _parse) until the protocol has to take over
        self._parse_here = False
        self._ping_interval: float | None = None
        self._ping_timeout: float | None = None
        self._timer: Any = None
        self._ping_payload = b""
        self._awaiting_pong = False
        # a weak network emulated on this connection (loadgen.network.Impairment); None for none
        self._impairment: Any = None

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        on_message: Callable[[bytes, bool], None],
        on_close: Callable[[ConnectionClosed], None] | None = None,
        timeout: float = 10.0,
        subprotocols: Sequence[str] | None = None,
        headers: Mapping[str, str] | None = None,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        ssl_context: ssl.SSLContext | None = None,
        max_size: int | None = 2**24,
        logger: logging.Logger | None = None,
    ) -> WebSocketClient:
        """Open a connection and start reading from it.

        ``on_message(payload, is_binary)`` runs in the connection's reader greenlet for
        each complete message, text as raw UTF-8 bytes; an exception from it is logged
        once per connection with its traceback, then only counted in ``callback_errors``.
        ``on_close(exc)`` runs exactly once when the connection ends, whatever the cause.
        ``timeout`` bounds DNS, TCP connect, TLS handshake and HTTP upgrade together.
        Headers given here replace default ones of the same name. With ``ping_interval``
        set, a ping goes out that often, and the connection fails with 1011 when no pong
        comes within ``ping_timeout``; keepalive is also what bounds a send to a peer that
        stopped reading. Raises :class:`ConnectError` or one of its subclasses, and
        ``ValueError`` for a malformed URL or an ``ssl_context`` with a ``ws://`` URL.
        """
        try:
            wsuri = parse_uri(url)
        except InvalidURI as exc:
            raise ValueError(str(exc)) from exc
        if ssl_context is not None and not wsuri.secure:
            raise ValueError(f"ssl_context given for a ws:// URL: {url}")

        logger = logger or _LOGGER
        conn = f"ws{next(_connection_ids)}"
        # websockets logs little but its frames at debug level; only then is the connection's
        # name worth an adapter per connection for the protocol to hold
        protocol = ClientProtocol(
            wsuri,
            subprotocols=[Subprotocol(name) for name in subprotocols] if subprotocols else None,
            max_size=max_size,
            logger=_ConnectionLogger(logger, {"conn": conn}) if logger.isEnabledFor(logging.DEBUG) else logger,
        )
        request = protocol.connect()
        for name, value in (headers or {}).items():
            if name in request.headers:
                del request.headers[name]
            request.headers[name] = value
        protocol.send_request(request)

        sock: Any = None
        deadline = gevent.Timeout(timeout)
        deadline.start()
        try:
            sock = _open_tcp(wsuri.host, wsuri.port)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if wsuri.secure:
                # gevent's SSLSocket with the caller's context, whether or not that context
                # came from a monkey-patched ssl module: the stdlib's own wrap_socket would
                # turn the socket back into a blocking one and stall the whole hub.
                sock = gevent.ssl.SSLSocket(
                    sock=sock,
                    server_hostname=wsuri.host,
                    do_handshake_on_connect=False,
                    _context=ssl_context or _default_ssl_context(),
                )
                sock.do_handshake()
            for chunk in protocol.data_to_send():
                sock.sendall(chunk)
            events = _read_handshake_response(url, sock, protocol)
        except BaseException as exc:
            if sock is not None:
                sock.close()
            if exc is deadline or isinstance(exc, TimeoutError):
                raise ConnectTimeout(url, f"no WebSocket connection within {timeout:g} s") from None
            if isinstance(exc, ssl.SSLError):
                raise ConnectError(url, _tls_problem(exc)) from exc
            if isinstance(exc, socket.gaierror):
                raise ConnectError(url, f"cannot resolve {wsuri.host}: {exc}") from exc
            if isinstance(exc, OSError):
                raise ConnectError(url, exc.strerror or str(exc)) from exc
            raise
        finally:
            deadline.close()

        client = cls(url, sock, protocol, logger, conn, on_message, on_close)
        if logger.isEnabledFor(logging.DEBUG):
            client._log.debug("connected to %s (subprotocol %s)", url, client.subprotocol)
        client._start(events, ping_interval, ping_timeout)
        return client

    @property
    def _log(self) -> _ConnectionLogger:
        # made when the connection first has something to say: an idle one holds no adapter
        if self._adapter is None:
            self._adapter = _ConnectionLogger(self._logger, {"conn": self._conn})
        return self._adapter

    @property
    def closed(self) -> bool:
        """Whether the connection can no longer send: closing, closed, lost or aborted."""
        return self._result is not None or self._lost_reason is not None or self._protocol.state is not OPEN

    def send_text(self, data: str | bytes) -> None:
        """Send a text message; ``bytes`` must already be UTF-8. Raises ConnectionClosed."""
        self._send(data.encode() if isinstance(data, str) else data, binary=False)

    def send_binary(self, data: bytes) -> None:
        """Send a binary message. Raises ConnectionClosed."""
        self._send(data, binary=True)

    def close(self, code: int = 1000, reason: str = "", timeout: float = 5.0) -> None:
        """Run the closing handshake, waiting at most ``timeout``, then close the socket.

        Idempotent. When the handshake does not finish in time the connection is dropped
        and ends with code 1006. Called from ``on_message``, it sends the close frame and
        returns; the reader finishes the handshake once the callback returns.
        """
        if self._result is not None:
            return
        in_reader = gevent.getcurrent() is self._reader
        with gevent.Timeout(timeout, False):
            self._send_close(code, reason, timeout)
            if not in_reader:
                self._wait_done()
        if self._result is not None:
            return
        if in_reader and self._protocol.state is not OPEN:
            return
        if self._lost_reason is None:
            self._lost_reason = f"no closing handshake within {timeout:g} s"
        self._drop()
        if not in_reader:
            self._wait_done(_READER_JOIN_TIMEOUT)

    def abort(self) -> None:
        """Drop the TCP connection without a close frame, as a lost link would."""
        if self._result is not None:
            return
        if self._lost_reason is None:
            self._lost_reason = "aborted locally"
        self._drop()
        if gevent.getcurrent() is not self._reader:
            self._wait_done(_READER_JOIN_TIMEOUT)

    def _wait_done(self, timeout: float | None = None) -> None:
        """Wait until the reader has finished the connection, on_close included."""
        if self._finished:
            return
        if self._done is None:
            self._done = gevent.event.Event()
        self._done.wait(timeout)

    def impair(self, impairment: Any) -> None:
        """Hold frames back each way as a weak network would (a :class:`loadgen.network.Impairment`).

        Given right after :meth:`connect`, before anything is sent. From then on every frame
        written and every message delivered passes through it, and ``on_message`` runs in the
        impairment's greenlet rather than the reader's; ``on_close`` still runs last, in the reader.
        """
        impairment.bind(self._write_locked, self._deliver)
        self._impairment = impairment

    def __repr__(self) -> str:
        state = "open" if not self.closed else f"closed {self.close_code}"
        return f"<WebSocketClient {self.url} {state}>"

    # Writing.

    def _send(self, data: bytes, binary: bool) -> None:
        with self._send_lock:
            protocol = self._protocol
            if self._lost_reason is not None or protocol.state is not OPEN:
                raise self._closed_error()
            try:
                if protocol.writes or protocol.extensions or protocol.debug:
                    if binary:
                        protocol.send_binary(data)
                    else:
                        protocol.send_text(data)
                    self._flush_locked()
                else:
                    # the common case, framed here: nothing else queued, no extension to apply
                    self._write_locked(_data_frame(data, binary))
                    # a pong or close frame the reader queued while sendall waited goes out now
                    self._flush_locked()
            except OSError as exc:
                raise self._closed_error() from exc

    def _flush_locked(self) -> None:
        protocol = self._protocol
        # Loop until empty: the reader may queue a pong or a close frame while this
        # greenlet waits in sendall, and leaves writing it to the lock holder.
        while protocol.writes:
            for chunk in protocol.data_to_send():
                # An empty chunk asks for a half-close; the socket is closed right
                # after in every case where the protocol asks for one.
                if chunk:
                    self._write_locked(chunk)

    def _write_locked(self, chunk: bytes) -> None:
        if self._impairment is not None and self._impairment.hold_up(chunk):
            return
        sock = self._sock
        try:
            if type(sock) is gevent.socket.socket:
                # one system call in the usual case, where the kernel takes the whole frame;
                # gevent's sendall spends more in Python than the call itself on small frames
                try:
                    sent = sock._sock.send(chunk)
                except BlockingIOError:
                    sent = 0
                if sent < len(chunk):
                    sock.sendall(memoryview(chunk)[sent:])
            else:
                sock.sendall(chunk)
        except BaseException as exc:
            # A frame cut short (error, or a greenlet killed mid-send, as Locust does when
            # it stops users) leaves a stream the server cannot parse: nothing more may go out.
            if isinstance(exc, OSError):
                self._connection_lost(f"send failed: {exc}")
            else:
                self._connection_lost(f"send interrupted by {type(exc).__name__}")
            raise

    def _send_close(self, code: int, reason: str, timeout: float) -> None:
        with self._send_lock:
            protocol = self._protocol
            if self._lost_reason is not None or protocol.state is not OPEN:
                return
            try:
                protocol.send_close(code, reason)
            except ProtocolError as exc:
                raise ValueError(f"cannot close with code {code} and reason {reason!r}: {exc}") from exc
            self._close_requested = True
            self._stop_keepalive()
            # Bounds the reader's wait for the server's answer even when close() was
            # called from on_message and so cannot wait itself.
            self._sock.settimeout(timeout)
            try:
                self._flush_locked()
            except OSError:
                pass

    def _connection_lost(self, reason: str) -> None:
        if self._lost_reason is None:
            self._lost_reason = reason
        self._drop()

    def _drop(self) -> None:
        # Closing a gevent socket wakes a greenlet blocked on it with EBADF, which is how
        # the reader (and a sender stuck in sendall) learn that the connection is gone.
        self._stop_keepalive()
        self._sock.close()

    # Reading.

    def _start(self, events: list[Any], ping_interval: float | None, ping_timeout: float | None) -> None:
        # A raw greenlet: a gevent.Greenlet adds links and bookkeeping that nothing here uses.
        self._reader = gevent.spawn_raw(self._read_loop, events)
        if ping_interval is not None:
            self._ping_interval = ping_interval
            self._ping_timeout = ping_timeout
            self._arm(ping_interval, self._ping_due)

    def _read_loop(self, events: list[Any]) -> None:
        protocol = self._protocol
        sock = self._sock
        recv = _plain_receiver(sock) or sock.recv
        try:
            # Frames and pings that arrived together with the handshake response.
            if protocol.writes:
                self._flush_from_reader()
            if events:
                self._dispatch(events)
            # Data frames are parsed here while the connection is open and the protocol holds
            # no partial frame of its own (one that came with the handshake response).
            self._parse_here = (
                protocol.state is OPEN
                and not protocol.reader.buffer
                and _between_frames(protocol)
                and protocol.current_size is None
                and not protocol.extensions
            )
            while True:
                data = recv(_RECV_SIZE)
                if not data:
                    self._received_eof()
                    break
                self._received(data)
        except TimeoutError:
            if self._lost_reason is None:
                self._lost_reason = "closing handshake timed out"
        except OSError as exc:
            if self._lost_reason is None:
                self._lost_reason = f"connection lost: {exc}"
                # lost, not dropped on purpose: whatever was half received was cut off
                self._note_cut()
        except Exception:
            self._log.exception("reader failed")
            if self._lost_reason is None:
                self._lost_reason = "reader failed"
        finally:
            if self._lost_reason is None and protocol.state is not CLOSED:
                self._lost_reason = "reader stopped"
            self._finish()

    def _received(self, data: bytes) -> None:
        """Bytes from the server: messages delivered, pings answered, a protocol error noted."""
        protocol = self._protocol
        if self._parse_here:
            self._parse_here = self._parse(data)
        else:
            protocol.receive_data(data)
            self._note_parser_failure()
        if protocol.writes:
            self._flush_from_reader()
        if protocol.events:
            self._dispatch(protocol.events_received())

    def _received_eof(self) -> None:
        """The server closed TCP: whatever the protocol state, nothing more can arrive."""
        self._note_cut()
        self._protocol.receive_eof()

    def _note_cut(self) -> None:
        """The stream ended in the middle of a frame, or of a fragmented message: it was truncated."""
        protocol = self._protocol
        if self.protocol_error is None and protocol.state is OPEN:
            if self._parse_here:
                cut = bool(self._unparsed or self._fragments)
            else:
                cut = bool(protocol.reader.buffer) or protocol.current_size is not None or not _between_frames(protocol)
            if cut:
                self.protocol_error = "truncated"
                if self._lost_reason is None:
                    self._lost_reason = "connection closed in the middle of a frame"

    def _note_parser_failure(self) -> None:
        """Name the protocol error websockets' parser failed the connection for, if it did."""
        failure = self._protocol.parser_exc
        if failure is not None and self.protocol_error is None:
            if isinstance(failure, PayloadTooBig):
                self.protocol_error = "oversized"
            elif isinstance(failure, UnicodeDecodeError):
                self.protocol_error = "bad_utf8"
            else:
                self.protocol_error = "bad_frame"

    def _parse(self, data: bytes) -> bool:
        """Deliver the whole data frames in ``data``; False once the protocol must take over.

        websockets' parser spends more per small frame than everything else on the receive
        path (three generator layers and a Frame object each); this does what it does for
        unmasked server data frames, with its checks and close codes. Control frames go to
        the protocol, one whole frame at a time, so it still answers pings and runs the
        closing handshake; once it leaves OPEN it reads all the rest itself.
        """
        protocol = self._protocol
        if self._unparsed:
            self._unparsed += data
            if len(self._unparsed) < self._unparsed_needed:
                return True
            data = bytes(self._unparsed)
            self._unparsed = bytearray()
        size = len(data)
        needed = 0
        limit = protocol.max_message_size
        pos = 0
        while size - pos >= 2:
            head1, head2 = data[pos], data[pos + 1]
            length = head2 & 0x7F
            start = pos + 2
            if length == 126:
                if size - pos < 4:
                    break
                length, start = int.from_bytes(data[pos + 2 : pos + 4], "big"), pos + 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, start = int.from_bytes(data[pos + 2 : pos + 10], "big"), pos + 10
            opcode = head1 & 0x0F
            # the usual frame (a whole unmasked text or binary message within the size limit)
            # needs no closer look
            usual = (
                (head1 == 0x81 or head1 == 0x82)
                and head2 < 0x80
                and not self._fragments
                and (limit is None or length <= limit)
            )
            if not usual and (problem := self._frame_problem(head1, head2, opcode, length)) is not None:
                self.protocol_error = "oversized" if problem[0] == CloseCode.MESSAGE_TOO_BIG else "bad_frame"
                protocol.fail(*problem)
                return False
            end = start + length
            if end > size:
                needed = end - pos
                break
            if opcode >= 8:
                if opcode == 8 and self._fragments:
                    self.protocol_error = "bad_frame"
                    protocol.fail(CloseCode.PROTOCOL_ERROR, "incomplete fragmented message")
                    return False
                protocol.receive_data(data[pos:end])
                if protocol.state is not OPEN:
                    # a close frame, or one the protocol refused (a bad close code, a reason not UTF-8)
                    self._note_parser_failure()
                    protocol.receive_data(data[end:])
                    return False
                if protocol.events:
                    self._dispatch(protocol.events_received())
            elif not head1 & 0x80:
                self._fragments.append(data[start:end])
                self._fragments_size += length
                if opcode:
                    self._fragments_binary = opcode == 2
            elif opcode:
                self._deliver(data[start:end], opcode == 2)
            else:
                self._fragments.append(data[start:end])
                payload = b"".join(self._fragments)
                self._fragments, self._fragments_size = [], 0
                self._deliver(payload, self._fragments_binary)
            pos = end
        if pos < size:
            self._unparsed = bytearray(data[pos:])
            self._unparsed_needed = needed
        return True

    def _frame_problem(self, head1: int, head2: int, opcode: int, length: int) -> tuple[int, str] | None:
        """What is wrong with a frame by its header, as websockets' parser would fail it; None if nothing.

        In websockets' order: the opcode, the mask bit and the size first (its size limit
        counts a control frame too, against what is left of a fragmented message), then the
        rest, which websockets looks at once the payload is in and this parser at once.
        """
        if 2 < opcode < 8 or opcode > 10:
            return CloseCode.PROTOCOL_ERROR, f"invalid opcode: {opcode}"
        if head2 & 0x80:
            return CloseCode.PROTOCOL_ERROR, "incorrect masking"
        limit = self._protocol.max_message_size
        if limit is not None and self._fragments_size + length > limit:
            left = limit - self._fragments_size
            return CloseCode.MESSAGE_TOO_BIG, f"frame with {length} bytes exceeds limit of {left} bytes"
        if head1 & 0x70:
            return CloseCode.PROTOCOL_ERROR, "reserved bits must be 0"
        if opcode >= 8:
            if length > 125:
                return CloseCode.PROTOCOL_ERROR, "control frame too long"
            if not head1 & 0x80:
                return CloseCode.PROTOCOL_ERROR, "fragmented control frame"
            return None
        if opcode and self._fragments:
            return CloseCode.PROTOCOL_ERROR, "expected a continuation frame"
        if not opcode and not self._fragments:
            return CloseCode.PROTOCOL_ERROR, "unexpected continuation frame"
        return None

    def _flush_from_reader(self) -> None:
        # When a sender holds the lock it writes what the protocol queued before releasing
        # it; waiting for the lock here would stop reading behind a large send.
        if not self._send_lock.locked():
            with self._send_lock:
                self._flush_locked()
        if self._protocol.close_expected():
            self._stop_keepalive()
            self._sock.settimeout(_CLOSE_TIMEOUT)

    def _dispatch(self, frames: list[Frame]) -> None:
        for frame in frames:
            opcode = frame.opcode
            if opcode is _TEXT or opcode is _BINARY:
                if not frame.fin:
                    self._fragments = [frame.data]
                    self._fragments_binary = opcode is _BINARY
                    continue
                # The parser hands out bytearrays; callers get the immutable type they expect.
                payload = bytes(frame.data)
                binary = opcode is _BINARY
            elif opcode is _CONT:
                self._fragments.append(frame.data)
                if not frame.fin:
                    continue
                payload = b"".join(self._fragments)
                self._fragments = []
                binary = self._fragments_binary
            else:
                if opcode is _PONG and self._awaiting_pong and frame.data == self._ping_payload:
                    self._pong_received()
                continue
            self._deliver(payload, binary)

    def _deliver(self, payload: bytes, binary: bool) -> None:
        if self._impairment is not None and self._impairment.hold_down(payload, binary):
            return
        try:
            self._on_message(payload, binary)
        except Exception:
            self.callback_errors += 1
            if self.callback_errors == 1:
                self._log.exception("on_message raised; further errors on this connection are only counted")

    def _finish(self) -> None:
        self._stop_keepalive()
        self._sock.close()
        if self._impairment is not None:
            # what the backend sent before it closed is still delivered; a lost link loses it
            self._impairment.finish(self._lost_reason is None)
        code, reason, clean = self._outcome()
        if code is None:
            code, reason = 1006, self._lost_reason or "connection closed without a close frame"
        self.close_code, self.close_reason = code, reason
        self._result = result = ConnectionClosed(code, reason, clean, self.protocol_error)
        if clean:
            self._log.debug("closed: %s", result)
        else:
            self._log.info("closed: %s", result)
        if self.callback_errors > 1:
            self._log.warning("on_message raised %d times on this connection", self.callback_errors)
        try:
            if self._on_close is not None:
                self._on_close(result)
        except Exception:
            self._log.exception("on_close raised")
        finally:
            # the callbacks are bound methods of the owner, which holds this client: a cycle that
            # only a full garbage collection frees, and a churning soak makes thousands of them
            self._on_message = _ignore_message
            self._on_close = None
            self._finished = True
            if self._done is not None:
                self._done.set()

    def _outcome(self) -> tuple[int | None, str, bool]:
        protocol = self._protocol
        received, sent = protocol.close_rcvd, protocol.close_sent
        if received is not None:
            clean = sent is not None and received.code in _CLEAN_CLOSE_CODES and sent.code in _CLEAN_CLOSE_CODES
            return received.code, received.reason, clean
        if sent is not None and not self._close_requested:
            # This side failed the connection (message too big, protocol error, keepalive).
            return sent.code, sent.reason, False
        if self._lost_reason is not None or protocol.state is CLOSED:
            return 1006, self._lost_reason or "connection closed without a close frame", False
        return None, "closing handshake in progress", False

    def _closed_error(self) -> ConnectionClosed:
        # A new instance each time: re-raising one instance would chain tracebacks onto it.
        if self._result is not None:
            result = self._result
            return ConnectionClosed(result.code, result.reason, result.clean, result.protocol_error)
        return ConnectionClosed(*self._outcome(), self.protocol_error)

    # Keepalive. One timer at a time: waiting for the next ping, or for a pong. A fresh
    # watcher each time, because restarting an expired libev timer fires it at once.
    # Timer callbacks run in the hub, which must never block, so anything that writes
    # runs in a greenlet of its own.

    def _arm(self, seconds: float, callback: Callable[[], None]) -> None:
        if self._timer is not None:
            self._timer.close()
        # ref=False: idle connections alone must not keep the event loop running.
        self._timer = gevent.get_hub().loop.timer(seconds, ref=False)
        self._timer.start(callback)

    def _ping_due(self) -> None:
        if self._ping_interval is None:
            return
        if self._ping_timeout is not None:
            # The pong deadline starts now rather than once the ping is written: when a
            # send is stuck on a peer that stopped reading, the ping cannot be written
            # either, and this deadline is what ends the wait.
            self._awaiting_pong = True
            self._arm(self._ping_timeout, self._pong_overdue)
        gevent.spawn_raw(self._send_ping)

    def _send_ping(self) -> None:
        payload = os.urandom(4)
        protocol = self._protocol
        try:
            with self._send_lock:
                if self._ping_interval is None or self._lost_reason is not None or protocol.state is not OPEN:
                    return
                self._ping_payload = payload
                protocol.send_ping(payload)
                self._flush_locked()
        except OSError:
            return
        if self._ping_timeout is None and self._ping_interval is not None:
            self._arm(self._ping_interval, self._ping_due)

    def _pong_received(self) -> None:
        self._awaiting_pong = False
        if self._ping_interval is not None:
            self._arm(self._ping_interval, self._ping_due)

    def _pong_overdue(self) -> None:
        gevent.spawn_raw(self._keepalive_failed)

    def _keepalive_failed(self) -> None:
        if not self._awaiting_pong:
            return
        self._log.info("no pong within %g s", self._ping_timeout)
        protocol = self._protocol
        if protocol.state is OPEN and self._lost_reason is None:
            protocol.fail(1011, "keepalive ping timeout")
            with gevent.Timeout(_FAIL_FLUSH_TIMEOUT, False):
                try:
                    with self._send_lock:
                        self._flush_locked()
                except OSError:
                    pass
        self._connection_lost("keepalive ping timeout")

    def _stop_keepalive(self) -> None:
        self._ping_interval = None
        self._awaiting_pong = False
        if self._timer is not None:
            self._timer.close()
            self._timer = None


#: what OpenSSL says when the other end of a TLS handshake answers in plain text
_NOT_TLS = frozenset({"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL", "PACKET_LENGTH_TOO_LONG",
                      "RECORD_LAYER_FAILURE"})  # fmt: skip


def _tls_problem(exc: ssl.SSLError) -> str:
    """A failed TLS handshake in words a user can act on."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS handshake failed: the server's certificate was refused: {exc.verify_message}"
    if exc.reason in _NOT_TLS:
        return f"TLS handshake failed: the server does not speak TLS ({exc.reason}); a plain one takes ws://"
    if isinstance(exc, ssl.SSLEOFError):
        return "TLS handshake failed: the server hung up in it (does it speak TLS? a plain one takes ws://)"
    return f"TLS handshake failed: {exc.reason or exc}"


def _between_frames(protocol: Protocol) -> bool:
    """Whether websockets' parser waits for the first byte of a frame, not for the rest of one.

    Its buffer alone does not tell: a frame's header is taken out of it as soon as it is
    whole, while the parser goes on waiting for the payload.
    """
    waiting = protocol.parser
    while waiting.gi_yieldfrom is not None:
        waiting = waiting.gi_yieldfrom
    return waiting.gi_code is _AT_EOF


def _ignore_message(payload: bytes, binary: bool) -> None:
    """What a finished connection does with a message: there is none, and no owner to tell."""


def _open_tcp(host: str, port: int) -> Any:
    """A connected gevent socket; an address given as digits is not looked up.

    gevent resolves every name in a thread pool, even "127.0.0.1": a sixth of a new
    connection's CPU in a reconnect storm (bench/connect_rate.py).
    """
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return gevent.socket.create_connection((host, port))
    sock = gevent.socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _plain_receiver(sock: Any) -> Callable[[int], bytes] | None:
    """``recv`` for a plain gevent socket that waits for readiness after a short read.

    gevent's own ``recv`` tries the system call first and waits only when it fails: after
    every message that is one failing syscall and one exception more than needed, since a
    short read almost always means the kernel's buffer is empty. TLS sockets keep gevent's.
    """
    if type(sock) is not gevent.socket.socket:
        return None
    wait, readable = sock._wait, sock._read_event
    drained = [False]

    def recv(size: int) -> bytes:
        if drained[0]:
            wait(readable)
        while True:
            try:
                # looked up on every call: gevent swaps in a closed stand-in when the socket is
                # closed, and the old object's descriptor number may already belong to another
                received = sock._sock.recv_into(_RECEIVE_VIEW, size)
            except BlockingIOError:
                received = None
            if received is not None:
                drained[0] = received < size
                return _RECEIVE_VIEW[:received].tobytes()
            # outside the except clause: waiting in it would keep the exception and its frames
            # alive for as long as the connection is idle
            wait(readable)

    return recv


def _read_handshake_response(url: str, sock: Any, protocol: ClientProtocol) -> list[Any]:
    """Read until the upgrade response is complete; return the frames that came with it."""
    while True:
        data = sock.recv(_RECV_SIZE)
        if data:
            protocol.receive_data(data)
        else:
            protocol.receive_eof()
        events = protocol.events_received()
        exc = protocol.handshake_exc
        if exc is not None:
            if isinstance(exc, InvalidStatus):
                status: int | None = exc.response.status_code
            elif events and isinstance(events[0], Response):
                status = events[0].status_code
            else:
                status = None
            raise HandshakeError(url, str(exc), status) from exc
        # Not "is OPEN": a close frame in the same read as the response already moved
        # the protocol on to CLOSING.
        if protocol.state is not CONNECTING:
            if protocol.state is OPEN and not protocol.reader.buffer and _between_frames(protocol):
                # The client parser stays suspended in the handshake's frame of its own for the
                # connection's life, holding the 101 response and its headers (1.3 KiB); the
                # frame parser alone has nothing to carry over while no byte is buffered and no
                # frame is half read.
                protocol.parser = Protocol.parse(protocol)
                next(protocol.parser)
                # a UUID for websockets' own connection classes and the handshake's key: the
                # Sans-I/O core never reads them again (0.3 KiB a connection)
                protocol.id = protocol.key = None
            return events[1:]
        if not data:
            raise HandshakeError(url, "connection closed during the opening handshake")
