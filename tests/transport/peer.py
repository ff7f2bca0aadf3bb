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
  write as the 101 response, and closes TCP once the client answers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
