"""A WebSocket echo server on picows and uvloop: every text or binary message comes back as it came.

    python bench/echo_server.py PORT_FILE [--port N]

Listens on 127.0.0.1 (a free port unless --port), writes the port to PORT_FILE, and
serves until terminated. Pings are answered by picows itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from pathlib import Path

import uvloop
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_create_server

_ECHOED = (WSMsgType.TEXT, WSMsgType.BINARY)


class Echo(WSListener):
    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type in _ECHOED:
            transport.send(frame.msg_type, frame.get_payload_as_memoryview())
        elif frame.msg_type == WSMsgType.CLOSE:
            code = frame.get_close_code()
            # a close frame without a code reads as 1005, which must not go on the wire
            transport.send_close(code if code not in (WSCloseCode.NO_INFO, 0) else WSCloseCode.OK)
            transport.disconnect()


async def serve(port_file: Path, port: int) -> None:
    server = await ws_create_server(lambda _request: Echo(), "127.0.0.1", port, backlog=4096)
    port_file.write_text(str(server.sockets[0].getsockname()[1]))
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    await stopped.wait()
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("port_file", type=Path)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    uvloop.run(serve(args.port_file, args.port))
    os._exit(0)


if __name__ == "__main__":
    main()
