"""Frame faults: the broken frames a client receives match ``refserver_injected_faults_total`` exactly, by kind."""

from __future__ import annotations

import base64
import contextlib
import inspect
import os
import signal
import socket
from urllib.parse import urlsplit

import orjson
import pytest

from loadgen.server._config import MALFORMED_KINDS
from loadgen.server._frames import cut_frame
from loadgen.transport import WebSocketClient

TS = 1764133200.5
# Every ev of docs/protocol.md; anything else is a frame no client can make sense of.
EVENTS = {
    "ack", "error", "msg", "dm", "receipt", "seats", "gift", "danmaku", "settings", "stream", "seat_invite",
    "cohost_request", "cohost_rejected", "pk_invite", "pk_rejected", "pk", "call",
}  # fmt: skip
CLIENT_LIMIT = inspect.signature(WebSocketClient.connect).parameters["max_size"].default
SMALL_KINDS = tuple(kind for kind in MALFORMED_KINDS if kind != "oversized")


class Truncated(Exception):
    """The connection ended inside a frame: ``header`` announced ``length`` bytes, ``payload`` arrived."""

    def __init__(self, header: bytes, length: int, payload: bytes) -> None:
        super().__init__(f"frame of {length} bytes cut after {len(payload)}")
        self.header = header
        self.length = length
        self.payload = payload


class RawClient:
    """A WebSocket client on a bare socket, seeing each frame exactly as the server wrote it.

    websockets' and websocket-client's clients decode text, refuse frames over their size limit
    and report a frame cut short as a lost connection; these tests need all three as they are.
    """

    def __init__(self, url: str, timeout: float) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
        self.ids = iter(range(1, 1_000_000))
        self.buffer = bytearray()
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET / HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        self.buffer = bytearray(rest)

    def close(self) -> None:
        self.sock.close()

    def _fill(self) -> bool:
        data = self.sock.recv(1 << 16)
        self.buffer += data
        return bool(data)

    def send(self, op: str, **fields: object) -> int:
        """Send a request (a masked text frame, as clients must); its id."""
        rid = next(self.ids)
        payload = orjson.dumps({"op": op, "id": rid, **fields})
        assert len(payload) < 126
        mask = os.urandom(4)
        masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
        self.sock.sendall(bytes((0x81, 0x80 | len(payload))) + mask + masked)
        return rid

    def frame(self) -> tuple[int, bytes]:
        """The next frame as (opcode, payload); Truncated when the connection ends inside one, EOFError between."""
        while len(self.buffer) < 2:
            if not self._fill():
                if self.buffer:
                    raise Truncated(bytes(self.buffer), -1, b"")
                raise EOFError("connection closed between frames")
        first, second = self.buffer[0], self.buffer[1]
        assert first & 0x80 and not second & 0x80, self.buffer[:2]
        length, start = second & 0x7F, 2
        if length == 126:
            length, start = int.from_bytes(self._need(4)[2:4], "big"), 4
        elif length == 127:
            length, start = int.from_bytes(self._need(10)[2:10], "big"), 10
        try:
            data = self._need(start + length)
        except Truncated as cut:
            raise Truncated(cut.header[:start], length, cut.header[start:]) from None
        del self.buffer[: start + length]
        return first & 0x0F, data[start:]

    def _need(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not self._fill():
                raise Truncated(bytes(self.buffer), -1, b"")
        return bytes(self.buffer[:size])

    def until_reply(self, rid: int) -> tuple[dict, list[str]]:
        """Read up to the reply to ``rid``: (that reply, the kind of every frame read on the way, in order)."""
        kinds = []
        while True:
            opcode, payload = self.frame()
            kind = classify(opcode, payload)
            kinds.append(kind)
            if kind == "frame":
                reply = orjson.loads(payload)
                if reply["ev"] in ("ack", "error") and reply["re"] == rid:
                    return reply, kinds

    def request(self, op: str, **fields: object) -> tuple[dict, list[str]]:
        return self.until_reply(self.send(op, **fields))


def classify(opcode: int, payload: bytes) -> str:
    """What a frame is to a client: "frame" for a good one, else the kind of broken frame it is."""
    if opcode == 0x2:
        return "binary"
    assert opcode == 0x1, opcode
    if len(payload) > CLIENT_LIMIT:
        return "oversized"
    try:
        payload.decode()
    except UnicodeDecodeError:
        return "bad_utf8"
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return "bad_json"
    if not isinstance(value, dict):
        return "not_object"
    if value.get("ev") not in EVENTS:
        return "unknown_event"
    return "frame"


@pytest.fixture
def raw(timeout):
    """Open raw clients to a server URL; all are closed after the test."""
    opened: list[RawClient] = []

    def open_raw(url: str) -> RawClient:
        client = RawClient(url, timeout)
        opened.append(client)
        return client

    yield open_raw
    for client in opened:
        client.close()


def _injected(server) -> dict[str, int]:
    return {kind: server.injected(f"malformed_{kind}") for kind in MALFORMED_KINDS}


def _tally(kinds: list[str]) -> dict[str, int]:
    return {kind: kinds.count(kind) for kind in MALFORMED_KINDS}


def test_broken_frames_received_match_the_injected_counts_by_kind(spawn, raw):
    """With --malformed 0.5, the broken frames two clients receive, by kind, equal the backend's counts exactly."""
    server = spawn("--malformed", "0.5", "--malformed-kinds", ",".join(SMALL_KINDS), "--seed", "5")
    sender, receiver = raw(server.url), raw(server.url)
    seen: list[str] = []
    for client, user in ((sender, "s"), (receiver, "r")):
        for op, fields in (("login", {"user": user, "token": "t"}), ("join", {"room": "r"})):
            reply, kinds = client.request(op, **fields)
            assert reply["ev"] == "ack", reply
            seen += kinds
    posts = 60
    for i in range(posts):
        reply, kinds = sender.request("send", room="r", cseq=i + 1, ts=TS, body=f"m{i + 1}")
        assert (reply["ev"], reply["seq"]) == ("ack", i + 1)
        seen += kinds
    fence = receiver.send("time", t0=TS)
    pushes = []
    while True:
        opcode, payload = receiver.frame()
        kind = classify(opcode, payload)
        seen.append(kind)
        if kind == "frame":
            frame = orjson.loads(payload)
            if frame["ev"] == "ack" and frame["re"] == fence:
                break
            pushes.append(frame["seq"])
    assert pushes == list(range(1, posts + 1))
    injected = _injected(server)
    assert _tally(seen) == injected
    assert injected["oversized"] == 0 and all(injected[kind] > 0 for kind in SMALL_KINDS), injected
    # Each broken frame goes out just before a real one, which therefore always follows it.
    assert seen[-1] == "frame" and all(b == "frame" for a, b in zip(seen, seen[1:], strict=False) if a != "frame")
    assert seen.count("frame") == 4 + posts + posts + 1
    assert server.injected("close_mid_frame") == 0


def test_each_kind_looks_as_documented_on_the_wire(spawn, raw):
    """Each broken frame is built as documented, from the real frame that follows it where it is made from one."""
    server = spawn("--malformed", "1", "--malformed-kinds", ",".join(SMALL_KINDS))
    c = raw(server.url)
    wire: dict[str, tuple[int, bytes, bytes]] = {}
    for _ in range(100):
        rid = c.send("time", t0=TS)
        opcode, broken = c.frame()
        real_opcode, real = c.frame()
        assert classify(real_opcode, real) == "frame" and orjson.loads(real)["re"] == rid
        wire.setdefault(classify(opcode, broken), (opcode, broken, real))
        if len(wire) == len(SMALL_KINDS):
            break
    assert set(wire) == set(SMALL_KINDS)
    opcode, broken, real = wire["bad_json"]
    assert (opcode, broken) == (0x1, real[: len(real) // 2])
    opcode, broken, real = wire["not_object"]
    assert (opcode, broken) == (0x1, b"[" + real + b"]")
    opcode, broken, real = wire["binary"]
    assert (opcode, broken) == (0x2, real)
    assert wire["unknown_event"][:2] == (0x1, b'{"ev":"malformed"}')
    assert wire["bad_utf8"][:2] == (0x1, b'{"ev":"malformed","body":"\xff"}')


def test_an_oversized_frame_is_one_byte_over_the_toolkit_clients_limit(spawn, raw):
    """An oversized frame is a JSON text frame of the client's max_size plus one byte, and the real frame follows."""
    server = spawn("--malformed", "1", "--malformed-kinds", "oversized")
    c = raw(server.url)
    rid = c.send("time", t0=TS)
    opcode, payload = c.frame()
    assert (opcode, len(payload), orjson.loads(payload)["ev"]) == (0x1, CLIENT_LIMIT + 1, "malformed")
    opcode, payload = c.frame()
    assert orjson.loads(payload)["re"] == rid
    assert server.injected("malformed_oversized") == 1


def test_close_mid_frame_writes_half_a_frame_then_closes_the_connection(spawn, raw):
    """With --close-mid-frame 1 a client gets the header and half the payload of its reply, then the connection ends."""
    server = spawn("--close-mid-frame", "1")
    for n in range(1, 3):
        c = raw(server.url)
        c.send("time", t0=TS)
        with pytest.raises(Truncated) as cut:
            c.frame()
        assert cut.value.header[0] == 0x81
        assert len(cut.value.payload) == cut.value.length // 2 > 0
        assert cut.value.payload.startswith(b'{"ev":"ack","re":1')
        assert server.injected("close_mid_frame") == n
    assert sum(_injected(server).values()) == 0


def test_connections_cut_mid_frame_match_the_injected_count(spawn, raw):
    """With --close-mid-frame 0.2, the connections whose reply was cut equal the backend's count exactly."""
    server = spawn("--close-mid-frame", "0.2", "--seed", "3")
    cut = 0
    for _ in range(6):
        c = raw(server.url)
        for _ in range(20):
            c.send("time", t0=TS)
            try:
                opcode, payload = c.frame()
            except Truncated:
                cut += 1
                break
            assert classify(opcode, payload) == "frame"
    assert cut == server.injected("close_mid_frame") > 0


def test_probability_zero_changes_nothing(spawn, raw):
    """With --malformed 0 and --close-mid-frame 0 every frame is a real one and nothing is counted or logged."""
    server = spawn("--malformed", "0", "--close-mid-frame", "0", "--malformed-kinds", "binary")
    c = raw(server.url)
    seen = []
    for op, fields in (("login", {"user": "u", "token": "t"}), ("join", {"room": "r"})):
        seen += c.request(op, **fields)[1]
    for _ in range(30):
        seen += c.request("time", t0=TS)[1]
    assert seen == ["frame"] * 32
    assert sum(_injected(server).values()) == server.injected("close_mid_frame") == 0
    line = next(line for line in server.log().splitlines() if "listening on" in line)
    assert "no faults injected" in line


def test_the_same_seed_breaks_the_same_frames_the_same_way(spawn, raw):
    """Two backends with one --seed inject the same kinds before the same frames of the same requests."""
    runs = []
    for _ in range(2):
        server = spawn("--malformed", "0.3", "--malformed-kinds", ",".join(SMALL_KINDS), "--seed", "11")
        c = raw(server.url)
        runs.append([c.request("time", t0=TS)[1] for _ in range(30)])
        server.stop()
    assert runs[0] == runs[1]
    assert any(kinds != ["frame"] for kinds in runs[0])


def test_start_and_exit_lines_name_the_frame_faults(spawn, raw):
    """The start-up line names --malformed with its kinds and --close-mid-frame; the exit line counts every kind."""
    server = spawn(
        "--malformed", "1", "--malformed-kinds", "binary,bad_json", "--close-mid-frame", "0.5", "--seed", "2"
    )
    line = next(line for line in server.log().splitlines() if "listening on" in line)
    assert "malformed=1 (bad_json,binary)" in line and "close-mid-frame=0.5" in line and "seed=2" in line
    c = raw(server.url)
    c.send("time", t0=TS)
    # Up to the reply, or the end of the connection inside it: every die for it has been rolled.
    with contextlib.suppress(Truncated):
        for _ in range(2):
            c.frame()
    counts = _injected(server)
    cut = server.injected("close_mid_frame")
    assert server.stop(signal.SIGTERM) == 0
    exit_line = " ".join(f"malformed_{kind}={n}" for kind, n in counts.items()) + f" close_mid_frame={cut}"
    assert exit_line in server.log()


@pytest.mark.parametrize(("length", "header"), [(125, b"\x81\x7d"), (200, b"\x81\x7e\x00\xc8"), (70_000, None)])
def test_a_cut_frame_keeps_the_whole_header_of_each_length_form(length, header):
    """cut_frame writes the 2, 4 or 10 byte header that announces the whole payload, then half the payload."""
    frame = b"y" * length
    cut = cut_frame(frame)
    if header is None:
        header = b"\x81\x7f" + length.to_bytes(8, "big")
    assert cut == header + frame[: length // 2]
