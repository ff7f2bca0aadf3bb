"""Record the fuzz corpus: real sessions against real backends, taped at two levels.

    python -m tests.fuzz.record reference                      # starts its own reference backend
    python -m tests.fuzz.record xmpp --host xmpp+ws://127.0.0.1:5280/xmpp-websocket
    python -m tests.fuzz.record janus --host janus+ws://127.0.0.1:8188

(scripts/servers/prosody.sh and janus.sh start the other two.) Each writes
``tests/fuzz/corpus/<driver>.json``:

- ``tapes``: for each user, every call its session made on the driver, in order, with what
  went out and what came in (``receive`` with the frame), and the driver's clock readings,
  so that :func:`tests.fuzz.fuzzing.replay` drives a fresh driver through the same states;
- ``wire``: for each connection, the bytes the backend sent after the upgrade response,
  exactly as they crossed TCP (frames, pings, the close frame), taken by a relay in between.

The sessions are short scripts of every operation the driver supports; refusals and errors
the backend answers with are part of the corpus too.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
import gevent.server
import gevent.socket

from loadgen import drivers
from loadgen.accounting import Accounting
from loadgen.drivers.base import Driver, Outgoing, sender_stream
from loadgen.session import OperationFailed, Session
from loadgen.transport import TransportError

CORPUS = Path(__file__).with_name("corpus")
_order = itertools.count()


def encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class Tape:
    """One user's calls on its driver, and the clock readings the driver took."""

    def __init__(self) -> None:
        self.calls: list[list[Any]] = []
        self.monotonic: list[float] = []
        self.wall: list[float] = []

    def clock(self, readings: list[float], source: Callable[[], float]) -> Callable[[], float]:
        def read() -> float:
            value = source()
            readings.append(value)
            return value

        return read

    def as_json(self) -> dict:
        return {"calls": self.calls, "monotonic": self.monotonic, "wall": self.wall}


class TapingDriver(Driver):
    """A driver that writes down every call made on the one it wraps, for replaying."""

    def __init__(self, inner: Driver, tape: Tape) -> None:
        self.inner = inner
        self.tape = tape
        self.subprotocols = inner.subprotocols
        self.supports = inner.supports
        self.sender_sequenced = inner.sender_sequenced

    def _op(self, name: str, *args: Any, **kwargs: Any) -> Outgoing:
        outgoing = getattr(self.inner, name)(*args, **kwargs)
        self.tape.calls.append([next(_order), name, list(args), kwargs, encode(outgoing.payload)])
        return outgoing

    def login(self, user: str, token: str) -> Outgoing:
        return self._op("login", user, token)

    def join(self, room: str) -> Outgoing:
        return self._op("join", room)

    def join_room(self, room: str, *, seats: int | None = None, as_host: bool = False) -> Outgoing:
        return self._op("join_room", room, seats=seats, as_host=as_host)

    def leave(self, room: str) -> Outgoing:
        return self._op("leave", room)

    def send(self, room: str, cseq: int, sent_at: float, body: str) -> Outgoing:
        return self._op("send", room, cseq, sent_at, body)

    def direct(self, to: str, cseq: int, sent_at: float, body: str) -> Outgoing:
        return self._op("direct", to, cseq, sent_at, body)

    def read(self, room: str, seq: int) -> Outgoing:
        return self._op("read", room, seq)

    def history(self, stream: str, since: int, limit: int) -> Outgoing:
        return self._op("history", stream, since, limit)

    def clock(self, t0: float) -> Outgoing:
        return self._op("clock", t0)

    def logout(self) -> Outgoing:
        return self._op("logout")

    def echo(self, sent_at: float, body: str) -> Outgoing:
        return self._op("echo", sent_at, body)

    def room_op(self, op: str, room: str, sent_at: float, **fields: object) -> Outgoing:
        return self._op("room_op", op, room, sent_at, **fields)

    def call_op(self, op: str, sent_at: float, **fields: object) -> Outgoing:
        return self._op("call_op", op, sent_at, **fields)

    def receive(self, data: bytes, binary: bool):
        self.tape.calls.append([next(_order), "receive", encode(data), binary])
        return self.inner.receive(data, binary)

    def pending(self) -> list[bytes]:
        frames = self.inner.pending()
        self.tape.calls.append([next(_order), "pending", [encode(frame) for frame in frames]])
        return frames


class Relay:
    """A TCP relay on 127.0.0.1 that keeps what the backend sent on each connection."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.received: list[bytearray] = []
        self.server = gevent.server.StreamServer(("127.0.0.1", 0), self._relay)
        self.server.start()
        self.port = self.server.server_port

    def _relay(self, client: gevent.socket.socket, _address: Any) -> None:
        backend = gevent.socket.create_connection(self.upstream)
        taped = bytearray()
        self.received.append(taped)

        def pump(source: Any, target: Any, keep: bytearray | None) -> None:
            try:
                while data := source.recv(65536):
                    if keep is not None:
                        keep += data
                    target.sendall(data)
            except OSError:
                pass
            finally:
                # the other direction learns of the end as a real peer would
                try:
                    target.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

        gevent.joinall([gevent.spawn(pump, client, backend, None), gevent.spawn(pump, backend, client, taped)])
        client.close()
        backend.close()

    def wire(self) -> list[str]:
        # only the frames: the upgrade response is HTTP
        return [encode(bytes(taped[taped.index(b"\r\n\r\n") + 4 :])) for taped in self.received if b"\r\n\r\n" in taped]

    def stop(self) -> None:
        self.server.stop(timeout=1)


def _attempt(step: Callable[[], object]) -> None:
    try:
        step()
    except (OperationFailed, TransportError):
        pass  # a refusal is as much part of the corpus as a success


def _sessions(url: str, factory: Callable[[Tape], Driver], names: list[str]) -> tuple[list[Session], list[Tape]]:
    accounting = Accounting()
    tapes = [Tape() for _ in names]
    sessions = []
    for name, tape in zip(names, tapes, strict=True):
        session = Session(
            url,
            TapingDriver(factory(tape), tape),
            accounting.receiver(),
            reporter=lambda *_: None,
            request_timeout=5.0,
            ping_interval=None,
        )
        session.connect()
        session.login(name, f"token-{name}")
        sessions.append(session)
    return sessions, tapes


def _reference(url: str) -> tuple[list[Tape], dict]:
    (a, b, c), tapes = _sessions(url, lambda tape: drivers.load("reference")(), ["ann", "bob", "cid"])
    now = time.time
    for session in (a, b, c):
        _attempt(lambda s=session: s.join("r1"))
    _attempt(lambda: a.join_room("v1", seats=8, as_host=True))
    _attempt(lambda: b.join_room("v1", seats=8))
    _attempt(lambda: c.join_room("l1", seats=4, as_host=True))
    for n in range(3):
        _attempt(lambda n=n: a.send("r1", f"hello {n}", now()))
        _attempt(lambda n=n: b.send("r1", f"hi {n} \u00e9\u4e2d", now()))
    _attempt(lambda: b.direct("ann", "psst", now()))
    _attempt(lambda: c.direct("nobody", "lost", now()))
    gevent.sleep(0.2)
    _attempt(lambda: a.read("r1", 2))
    _attempt(lambda: a.history("r1", 0))
    _attempt(lambda: a.history("@inbox", 0))
    _attempt(lambda: a.sync_clock(2))
    _attempt(lambda: a.echo("ping", now()))
    for op, session, fields in (
        ("seat.take", b, {"seat": 2}),
        ("seat.take", a, {"seat": 2}),
        ("seat.mute", a, {"seat": 2, "muted": True}),
        ("seat.lock", a, {"seat": 5, "locked": True}),
        ("seat.invite", a, {"seat": 3, "user": "cid"}),
        ("seat.kick", a, {"seat": 2}),
        ("gift", b, {"gift": "rose", "count": 3, "value": 10}),
        ("danmaku", b, {"text": "wow"}),
        ("settings", a, {"title": "night talk"}),
        ("stream.start", a, {}),
        ("seat.leave", b, {}),
    ):
        _attempt(lambda op=op, session=session, fields=fields: session.room_op(op, "v1", now(), **fields))
    _attempt(lambda: c.room_op("stream.start", "l1", now()))
    _attempt(lambda: a.room_op("pk.invite", "v1", now(), target="l1", duration=5))
    gevent.sleep(0.2)
    _attempt(lambda: c.room_op("pk.accept", "l1", now(), pk="pk1"))
    _attempt(lambda: b.room_op("gift", "v1", now(), gift="rocket", count=1, value=100))
    _attempt(lambda: c.call_op("call.invite", now(), to="bob"))
    gevent.sleep(0.2)
    _attempt(lambda: b.call_op("call.accept", now(), call="c1"))
    _attempt(lambda: c.call_op("call.hangup", now(), call="c1"))
    _attempt(lambda: c.room_op("stream.stop", "l1", now()))
    _attempt(lambda: b.leave("r1"))
    gevent.sleep(0.3)
    for session in (a, b, c):
        _attempt(session.logout)
        session.close()
    return tapes, {}


def _xmpp(url: str) -> tuple[list[Tape], dict]:
    factory, ws_url = drivers.load("xmpp").configure(url)
    (a, b), tapes = _sessions(ws_url, lambda tape: factory(), [f"fz{int(time.time())}a", f"fz{int(time.time())}b"])
    now = time.time
    for session in (a, b):
        _attempt(lambda s=session: s.join("fuzzroom"))
    for n in range(3):
        _attempt(lambda n=n: a.send("fuzzroom", f"hello {n} <&>", now()))
    _attempt(lambda: b.direct(a.user or "", "psst", now()))
    gevent.sleep(0.3)
    _attempt(lambda: b.read(sender_stream("fuzzroom", a.user or ""), 1))
    _attempt(lambda: a.history("fuzzroom", 0))
    _attempt(lambda: a.history("@inbox", 0))
    _attempt(lambda: b.leave("fuzzroom"))
    gevent.sleep(0.3)
    for session in (a, b):
        _attempt(session.logout)
        session.close()
    # the driver's options, its archive window among them, as the factory gave them
    return tapes, dict(factory.keywords)


def _janus(url: str) -> tuple[list[Tape], dict]:
    factory, ws_url = drivers.load("janus").configure(url)

    def taped(tape: Tape) -> Driver:
        return factory(monotonic=tape.clock(tape.monotonic, time.monotonic), wall=tape.clock(tape.wall, time.time))

    (a, b), tapes = _sessions(ws_url, taped, ["ann", "bob"])
    now = time.time
    for session in (a, b):
        _attempt(lambda s=session: s.join_room("4242", seats=4))
    _attempt(lambda: a.room_op("seat.take", "4242", now(), seat=1))
    _attempt(lambda: b.room_op("seat.take", "4242", now(), seat=1))
    _attempt(lambda: b.room_op("seat.take", "4242", now(), seat=2))
    gevent.sleep(0.3)
    _attempt(lambda: a.room_op("seat.mute", "4242", now(), seat=2, muted=True))
    gevent.sleep(0.3)
    _attempt(lambda: a.room_op("seat.kick", "4242", now(), seat=2))
    gevent.sleep(0.3)
    _attempt(lambda: a.room_op("seat.leave", "4242", now()))
    _attempt(lambda: b.leave("4242"))
    gevent.sleep(0.3)
    for session in (a, b):
        _attempt(session.logout)
        session.close()
    return tapes, dict(factory.keywords)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("driver", choices=("reference", "xmpp", "janus"))
    parser.add_argument("--host", help="the backend's --host URL (reference: started here when not given)")
    args = parser.parse_args()
    backend = None
    host = args.host
    if args.driver == "reference" and host is None:
        from loadgen.embedded import EmbeddedBackend

        backend = EmbeddedBackend()
        host = backend.start()
    if host is None:
        parser.error(f"--host is needed for {args.driver}")
    scheme, _, rest = host.partition("://")
    address, _, path = rest.partition("/")
    server, _, port = address.rpartition(":")
    relay = Relay((server.strip("[]"), int(port)))
    try:
        tapes, config = {"reference": _reference, "xmpp": _xmpp, "janus": _janus}[args.driver](
            f"{scheme}://127.0.0.1:{relay.port}/{path}"
        )
        gevent.sleep(0.5)
    finally:
        relay.stop()
        if backend is not None:
            backend.close()
    tapes_json = [tape.as_json() for tape in tapes]
    corpus = {"driver": args.driver, "config": config, "tapes": tapes_json, "wire": relay.wire()}
    CORPUS.mkdir(exist_ok=True)
    target = CORPUS / f"{args.driver}.json"
    target.write_text(json.dumps(corpus, indent=1) + "\n")
    calls = sum(len(tape.calls) for tape in tapes)
    print(f"{target}: {len(tapes)} tapes, {calls} calls, {len(corpus['wire'])} connections")


if __name__ == "__main__":
    main()
