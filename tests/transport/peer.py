"""WebSocket peer for the transport tests, run as a subprocess.

It runs in a process of its own because the test process may be gevent-monkey-patched
(importing locust patches it), where an asyncio server in a thread is not to be trusted.

Listeners, on 127.0.0.1 and port 0; their ports are written as JSON to --port-file once
all of them are accepting:

- ``ws``: a websockets server; the request path picks the behaviour:
  ``/echo`` echoes every message with its type; ``/close/CODE`` closes with CODE and
  reason "closing with CODE"; ``/vanish`` aborts TCP after the first message;
  ``/ping`` pings three times, then sends "pongs:3"; ``/subproto`` sends the negotiated
  subprotocol (one of chat.v2, chat.v1); ``/headers`` sends the request headers as a
  JSON list of pairs; ``/fragmented`` sends "frag"+"ment"+"ed" as one fragmented text
  message and b"\\x00\\x01"+b"\\x02" as one fragmented binary message;
  ``/status/CODE`` refuses the upgrade with that HTTP status.
- ``wss``: the same over TLS, when --certfile and --keyfile are given.
- ``raw``: a plain TCP server that speaks just enough HTTP to misbehave:
  ``/hang`` never answers the upgrade; ``/noping`` completes it, then reads and discards
  everything (no pong, no close frame); ``/deaf`` completes it, then never reads again;
  ``/early`` sends a text message "hello" and a close frame 4002 "early" in the same
  write as the 101 response, and closes TCP once the client answers;
  ``/stream/SEED`` waits for one message, then sends :func:`scripted_stream` of SEED in
  small random pieces and closes TCP on the client's answer; ``/bad/KIND`` waits for one
  message, then sends a good text frame "ok" followed by the malformed frame KIND of
  :data:`BAD_FRAMES`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import ssl
import struct
from http import HTTPStatus

from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol
from websockets.utils import accept_key

SUBPROTOCOLS = (Subprotocol("chat.v2"), Subprotocol("chat.v1"))


def select_subprotocol(connection: ServerConnection, offered: list[Subprotocol]) -> Subprotocol | None:
    for name in SUBPROTOCOLS:
        if name in offered:
            return name
    return None


def process_request(connection: ServerConnection, request: Request) -> Response | None:
    if request.path.startswith("/status/"):
        return connection.respond(HTTPStatus(int(request.path.rsplit("/", 1)[1])), "refused by peer\n")
    return None


async def drain(ws: ServerConnection) -> None:
    async for _ in ws:
        pass


async def handle(ws: ServerConnection) -> None:
    assert ws.request is not None
    kind, _, arg = ws.request.path.strip("/").partition("/")
    if kind == "echo":
        async for message in ws:
            await ws.send(message)
    elif kind == "close":
        await ws.close(int(arg), f"closing with {arg}")
    elif kind == "vanish":
        await ws.recv()
        ws.transport.abort()
    elif kind == "ping":
        for _ in range(3):
            pong = await ws.ping()
            await asyncio.wait_for(pong, 30)
        await ws.send("pongs:3")
        await drain(ws)
    elif kind == "subproto":
        await ws.send(ws.subprotocol or "")
        await drain(ws)
    elif kind == "headers":
        await ws.send(json.dumps(list(ws.request.headers.raw_items())))
        await drain(ws)
    elif kind == "fragmented":
        await ws.send(["frag", "ment", "ed"])
        await ws.send([b"\x00\x01", b"\x02"])
        await drain(ws)


def server_frame(opcode: int, payload: bytes, fin: bool = True, first: int | None = None) -> bytes:
    """A server frame (unmasked), as a server writes it; ``first`` overrides its whole first byte."""
    head = bytes((((0x80 if fin else 0) | opcode) if first is None else first,))
    length = len(payload)
    if length < 126:
        return head + bytes((length,)) + payload
    if length < 65536:
        return head + bytes((126,)) + struct.pack("!H", length) + payload
    return head + bytes((127,)) + struct.pack("!Q", length) + payload


def scripted_stream(seed: int) -> tuple[bytes, list[tuple[bytes, bool]]]:
    """Messages of every length class, some fragmented with pings between the pieces, then a close 1000."""
    rng = random.Random(seed)
    stream, expected = bytearray(), []
    for n in range(40):
        binary = rng.random() < 0.5
        payload = bytes(rng.randrange(256) for _ in range(rng.choice((0, 1, 125, 126, 300)))) if binary else (
            f"m{n}-".encode() * rng.choice((0, 1, 30, 40, 3000, 20000)))  # fmt: skip
        expected.append((payload, binary))
        pieces = rng.choice((1, 1, 2, 4))
        cut = sorted(rng.randrange(len(payload) + 1) for _ in range(pieces - 1))
        parts = [payload[a:b] for a, b in zip([0, *cut], [*cut, len(payload)], strict=True)]
        for k, part in enumerate(parts):
            stream += server_frame((2 if binary else 1) if k == 0 else 0, part, fin=k == len(parts) - 1)
            if rng.random() < 0.3:
                stream += server_frame(9, b"ping %d" % n)
    stream += server_frame(8, struct.pack("!H", 1000))
    return bytes(stream), expected


#: malformed server frames, each of which fails the connection with 1002
BAD_FRAMES = {
    "masked": b"\x81\x82abcd" + bytes(a ^ b for a, b in zip(b"hi", b"ab", strict=True)),
    "reserved-bits": b"\xc1\x02hi",
    "lone-continuation": b"\x80\x02hi",
    "text-inside-fragments": server_frame(1, b"a", fin=False) + server_frame(1, b"b"),
    "long-ping": server_frame(9, b"x" * 126),
    "fragmented-ping": server_frame(9, b"x", fin=False),
    "unknown-opcode": server_frame(3, b"x"),
    "close-inside-fragments": server_frame(1, b"a", fin=False) + server_frame(8, struct.pack("!H", 1000)),
}


async def send_in_pieces(writer: asyncio.StreamWriter, data: bytes, seed: int) -> None:
    rng = random.Random(seed)
    position = 0
    while position < len(data):
        step = rng.choice((1, 2, 3, 7, 64, 300, 5000))
        writer.write(data[position : position + step])
        position += step
        await writer.drain()
        if rng.random() < 0.2:
            await asyncio.sleep(0.001)


async def handle_raw(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        path = lines[0].split(" ")[1]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if path == "/hang":
            await reader.read()
            return
        response = (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_key(headers["sec-websocket-key"]).encode() + b"\r\n\r\n"
        )
        if path == "/early":
            response += b"\x81\x05hello" + b"\x88\x07" + struct.pack("!H", 4002) + b"early"
        writer.write(response)
        await writer.drain()
        if path == "/early":
            await reader.read(65536)
        elif path == "/noping":
            while await reader.read(65536):
                pass
        elif path == "/deaf":
            await asyncio.Event().wait()
        elif path.startswith(("/stream/", "/bad/")):
            await reader.read(65536)
            kind = path.rsplit("/", 1)[1]
            if path.startswith("/stream/"):
                await send_in_pieces(writer, scripted_stream(int(kind))[0], int(kind))
            else:
                writer.write(server_frame(1, b"ok") + BAD_FRAMES[kind])
            # the client's close frame, then TCP goes, as a server ends the closing handshake
            await reader.read(65536)
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--certfile")
    parser.add_argument("--keyfile")
    args = parser.parse_args()

    options = dict(
        process_request=process_request,
        select_subprotocol=select_subprotocol,
        compression=None,
        ping_interval=None,
        max_size=None,
    )
    ports = {}
    ws_server = await serve(handle, "127.0.0.1", 0, **options)
    ports["ws"] = ws_server.sockets[0].getsockname()[1]
    raw_server = await asyncio.start_server(handle_raw, "127.0.0.1", 0)
    ports["raw"] = raw_server.sockets[0].getsockname()[1]
    if args.certfile:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.certfile, args.keyfile)
        tls_server = await serve(handle, "127.0.0.1", 0, ssl=context, **options)
        ports["wss"] = tls_server.sockets[0].getsockname()[1]
    # Written whole, then renamed, so the test never reads half a file.
    with open(args.port_file + ".tmp", "w") as f:
        json.dump(ports, f)
    os.replace(args.port_file + ".tmp", args.port_file)
    await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main())
