"""The reference backend's network side: WebSocket serving, writer tasks, injected disconnects."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from collections.abc import Coroutine
from types import TracebackType
from typing import Any

from prometheus_client import CollectorRegistry
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from ._config import BUG_KINDS, FAULT_KINDS, ServerConfig
from ._hub import Connection, Hub, Outbox
from ._metrics import Gauges, MetricsServer, ServerCollector, ServerStats

log = logging.getLogger("loadgen.server")

MAX_FRAME_BYTES = 1 << 20
CLOSE_REPLACED = 4001


class ReferenceServer:
    """The reference backend of ``docs/protocol.md``, run on the current event loop.

    ``registry`` receives the ``refserver_*`` metrics (a fresh one when omitted); they are
    served over HTTP only when ``config.metrics_port`` is set.
    """

    def __init__(self, config: ServerConfig | None = None, *, registry: CollectorRegistry | None = None) -> None:
        self.config = config if config is not None else ServerConfig()
        self.registry = registry if registry is not None else CollectorRegistry()
        self._stats = ServerStats()
        self._hub: Hub | None = None
        self._server: Server | None = None
        self._metrics: MetricsServer | None = None
        self._sockets: dict[Connection, ServerConnection] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._address: tuple[str, int] | None = None
        self._collector = ServerCollector(
            self._stats,
            Gauges(
                connections=lambda: len(self._hub.connections) if self._hub else 0,
                logged_in_users=lambda: len(self._hub.sessions) if self._hub else 0,
                rooms=lambda: self._hub.active_rooms() if self._hub else 0,
                outbox_frames=lambda: self._hub.queued_frames() if self._hub else 0,
                seated_users=lambda: self._hub.seated_users() if self._hub else 0,
                live_streams=lambda: self._hub.live_streams() if self._hub else 0,
                pks=lambda: len(self._hub.pks) if self._hub else 0,
                calls_in_progress=lambda: len(self._hub.calls) if self._hub else 0,
            ),
        )
        self.registry.register(self._collector)

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the WebSocket server is bound to."""
        if self._address is None:
            raise RuntimeError("the server is not started")
        return self._address

    @property
    def url(self) -> str:
        host, port = self.address
        return f"ws://{_url_host(host)}:{port}/"

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """The (host, port) of ``/metrics``, or None when metrics are not served."""
        return self._metrics.address if self._metrics is not None else None

    @property
    def injected(self) -> dict[str, int]:
        """Faults injected so far, by kind (drop, duplicate, reorder, disconnect)."""
        return dict(self._stats.faults)

    @property
    def injected_bugs(self) -> dict[str, int]:
        """Bugs injected so far (``--bug``), by kind (seat-double-grant, seat-version-regress, pk-score-skew)."""
        return dict(self._stats.bugs)

    async def start(self) -> tuple[str, int]:
        """Listen, serve metrics if asked, write the port file; return the bound (host, port)."""
        if self._server is not None:
            raise RuntimeError("the server is already started")
        config = self.config
        loop = asyncio.get_running_loop()
        self._hub = Hub(config, loop, self._stats, on_replaced=self._close_replaced)
        self._server = await serve(
            self._handle,
            config.host,
            config.port,
            max_size=MAX_FRAME_BYTES,
            # Per-connection compression would defeat encoding each push once for all recipients.
            compression=None,
            # The protocol promises not to ping idle clients; pings are answered regardless.
            ping_interval=None,
            ping_timeout=None,
            logger=logging.getLogger("loadgen.server.websockets"),
        )
        host, port = next(iter(self._server.sockets)).getsockname()[:2]
        self._address = (host, port)
        try:
            if config.metrics_port is not None:
                self._metrics = MetricsServer(self.registry, config.metrics_host, config.metrics_port)
                self._metrics.start()
            if config.disconnect_rate:
                self._spawn(self._inject_disconnects())
            self._log_listening()
            if config.port_file is not None:
                _write_atomically(config.port_file, f"{port}\n")
        except BaseException:
            await self._teardown()
            raise
        return self._address

    async def stop(self) -> None:
        """Close every connection (code 1001), stop serving and log the injected fault counts."""
        if self._server is None:
            return
        await self._teardown()
        if self.config.port_file is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.config.port_file)
        counts = " ".join(
            [f"{kind}={self._stats.faults[kind]}" for kind in FAULT_KINDS]
            + [f"{kind}={self._stats.bugs[kind]}" for kind in BUG_KINDS]
        )
        log.info("injected faults: %s", counts)

    async def __aenter__(self) -> ReferenceServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _teardown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            # Returns once every connection handler has, so each connection's state is released.
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._hub is not None:
            self._hub.shutdown()
        if self._metrics is not None:
            await asyncio.to_thread(self._metrics.stop)
            self._metrics = None

    def _log_listening(self) -> None:
        metrics = ""
        if self._metrics is not None:
            host, port = self._metrics.address
            metrics = f" (metrics on http://{_url_host(host)}:{port}/metrics)"
        log.info(
            "reference backend listening on %s%s; %s; ring timeout %gs",
            self.url.rstrip("/"),
            metrics,
            self.config.describe_faults(),
            self.config.ring_timeout,
        )

    async def _handle(self, ws: ServerConnection) -> None:
        hub = self._hub
        assert hub is not None
        peer = ws.remote_address
        conn = Connection(Outbox(asyncio.get_running_loop()), peer=f"{peer[0]}:{peer[1]}" if peer else "")
        hub.open(conn)
        self._sockets[conn] = ws
        writer = asyncio.create_task(_write(ws, conn.outbox))
        log.debug("%s connected", conn.peer)
        try:
            async for raw in ws:
                hub.handle(conn, raw)
        except ConnectionClosed:
            pass
        finally:
            hub.close(conn)
            del self._sockets[conn]
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            log.debug("%s disconnected (code %s)", conn.peer, ws.close_code)

    def _close_replaced(self, conn: Connection) -> None:
        conn.outbox.close()
        self._spawn(self._sockets[conn].close(CLOSE_REPLACED, "replaced"))

    async def _inject_disconnects(self) -> None:
        hub = self._hub
        assert hub is not None
        config = self.config
        # Its own generator, so the timing of disconnects does not shift the delivery dice.
        rng = random.Random(None if config.seed is None else f"disconnect-{config.seed}")
        while True:
            # R per connection per second is, summed over n connections, one Poisson process of
            # rate n*R; memorylessness lets the draw restart whenever n may have changed
            live = len(hub.sessions)
            if not live:
                await asyncio.sleep(0.1)
                continue
            wait = rng.expovariate(config.disconnect_rate * live)
            if wait > 0.5:
                await asyncio.sleep(0.5)
                continue
            await asyncio.sleep(wait)
            if not hub.sessions:
                continue
            conn = rng.choice(list(hub.sessions.values()))
            # Ended here, not when the handler notices, so nothing more is queued or counted for it.
            hub.close(conn)
            self._stats.faults["disconnect"] += 1
            log.debug("%s aborted by the disconnect fault", conn.peer)
            self._sockets[conn].transport.abort()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _write(ws: ServerConnection, outbox: Outbox) -> None:
    """Write the connection's frames in order; a slow reader only ever stalls this task."""
    ready = outbox.ready
    wake = outbox.wake
    try:
        while True:
            while ready:
                await ws.send(ready.popleft(), text=True)
            wake.clear()
            await wake.wait()
    except ConnectionClosed:
        pass


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _write_atomically(path: str, text: str) -> None:
    """Readers polling for the file never see it half-written."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
