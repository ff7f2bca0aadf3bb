"""The reference backend's network side: WebSocket serving, writer tasks, injected disconnects."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Coroutine
from types import TracebackType
from typing import Any

from prometheus_client import CollectorRegistry
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.protocol import State

from ._config import BUG_KINDS, FAULT_KINDS, ServerConfig
from ._frames import FrameFaults, cut_frame, malformed_frame
from ._hub import Connection, Hub, Outbox
from ._limits import RateLimiter
from ._media import MediaFrame
from ._metrics import Gauges, MetricsServer, ServerCollector, ServerStats
from ._store import Store

log = logging.getLogger("loadgen.server")

CLOSE_REPLACED = 4001
CLOSE_GOING_AWAY = 1001
# With --store what was acknowledged survives, so clients are told to come back.
CLOSE_RESTART = 1012
# How long a stop waits for connections' outboxes to be written before closing them.
STOP_DRAIN_S = 5.0
_DRAIN_POLL_S = 0.01
# How long a connection closed for flooding may take to receive what is queued for it.
FLOOD_FLUSH_S = 1.0


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
        self._store: Store | None = None
        self._stopping = False
        self._frame_faults = FrameFaults(self.config) if self.config.frame_faults else None
        self._rate_limited = (
            f"Over the rate limit of {self.config.rate_limit:g} requests per second "
            f"(burst {self.config.rate_burst}); the request was not performed."
        )
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
                media_sessions=lambda: len(self._hub.media.sessions) if self._hub else 0,
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
    def media_address(self) -> tuple[str, int]:
        """The (host, port) the media relay's UDP endpoint is bound to."""
        address = self._hub.media.address if self._hub is not None else None
        if address is None:
            raise RuntimeError("the server is not started")
        return address

    @property
    def media_frames(self) -> dict[str, int]:
        """Media frames so far, by outcome (received, forwarded, not_seated, not_selected, malformed, injected_loss)."""
        return dict(self._stats.media_frames)

    @property
    def injected(self) -> dict[str, int]:
        """Faults injected so far, by kind (drop, duplicate, reorder, disconnect)."""
        return dict(self._stats.faults)

    @property
    def injected_bugs(self) -> dict[str, int]:
        """Bugs injected so far (``--bug``), by kind (seat-double-grant, seat-version-regress, pk-score-skew)."""
        return dict(self._stats.bugs)

    @property
    def injected_frame_faults(self) -> dict[str, int]:
        """Frame faults injected so far, by kind: malformed_KIND (``--malformed``), close_mid_frame."""
        return dict(self._stats.frame_faults)

    async def start(self) -> tuple[str, int]:
        """Listen, serve metrics if asked, write the port file; return the bound (host, port)."""
        if self._server is not None:
            raise RuntimeError("the server is already started")
        config = self.config
        loop = asyncio.get_running_loop()
        self._stopping = False
        store = Store(config.store, fsync=config.store_fsync) if config.store is not None else None
        self._hub = Hub(config, loop, self._stats, on_replaced=self._close_replaced, store=store)
        if store is not None:
            self._open_store(store, self._hub)
            self._store = store
        try:
            self._server = await serve(
                self._handle,
                config.host,
                config.port,
                max_size=config.max_frame,
                # Per-connection compression would defeat encoding each push once for all recipients.
                compression=None,
                # The protocol promises not to ping idle clients; pings are answered regardless.
                ping_interval=None,
                ping_timeout=None,
                logger=logging.getLogger("loadgen.server.websockets"),
            )
        except BaseException:
            if self._store is not None:
                self._store.close()
                self._store = None
            raise
        host, port = next(iter(self._server.sockets)).getsockname()[:2]
        self._address = (host, port)
        try:
            # On the WebSocket's address: clients send media to the host they connected to.
            relay = self._hub.media
            try:
                await loop.create_datagram_endpoint(lambda: relay, local_addr=(host, config.media_port))
            except OSError as exc:
                raise OSError(f"media_port (--media-port) {config.media_port}: cannot bind udp {host}: {exc}") from exc
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
        """Stop accepting, let outboxes drain, close every connection and log the injected fault counts.

        Connections are closed with code 1012 (service restart) when history is stored
        (``--store``, flushed and fsync'd here), else 1001 (going away).
        """
        if self._server is None:
            return
        await self._teardown()
        if self.config.port_file is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.config.port_file)
        counts = " ".join(
            [f"{kind}={self._stats.faults[kind]}" for kind in FAULT_KINDS]
            + [f"{kind}={self._stats.bugs[kind]}" for kind in BUG_KINDS]
            + [f"{kind}={count}" for kind, count in self._stats.frame_faults.items()]
            + [f"media_injected_loss={self._stats.media_frames['injected_loss']}"]
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
            self._stopping = True
            # Stops listening; the connections are closed here, once their outboxes are written.
            self._server.close(close_connections=False)
            await self._drain()
            code, reason = (CLOSE_RESTART, "service restart") if self._store is not None else (CLOSE_GOING_AWAY, "")
            await asyncio.gather(*(ws.close(code, reason) for ws in list(self._sockets.values())))
            # Returns once every connection handler has, so each connection's state is released.
            await self._server.wait_closed()
            self._server = None
        if self._hub is not None:
            self._hub.shutdown()
            await self._hub.media.close_endpoint()
        if self._metrics is not None:
            await asyncio.to_thread(self._metrics.stop)
            self._metrics = None
        if self._store is not None:
            store, self._store = self._store, None
            store.close()

    def _open_store(self, store: Store, hub: Hub) -> None:
        started = time.monotonic()
        try:
            records = store.open(hub.restore, hub.records)
        except BaseException:
            store.close()
            raise
        messages = sum(len(room.history) for room in hub.rooms.values())
        direct = sum(len(inbox.history) for inbox in hub.inboxes.values())
        log.info(
            "store %s: rooms: %d, with %d messages kept; inboxes: %d, with %d messages kept; %d records read in %.2f s",
            store.path,
            len(hub.rooms),
            messages,
            len(hub.inboxes),
            direct,
            records,
            time.monotonic() - started,
        )

    async def _drain(self) -> None:
        """Wait, at most ``STOP_DRAIN_S``, until every connection's queued frames are written."""
        hub = self._hub
        assert hub is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_DRAIN_S
        while hub.queued_frames() and loop.time() < deadline:
            await asyncio.sleep(_DRAIN_POLL_S)

    def _log_listening(self) -> None:
        metrics = ""
        if self._metrics is not None:
            host, port = self._metrics.address
            metrics = f" (metrics on http://{_url_host(host)}:{port}/metrics)"
        media_host, media_port = self.media_address
        top_k = self.config.media_top_k
        log.info(
            "reference backend listening on %s%s; media on udp %s:%d, forwarding %s; %s; %s; ring timeout %gs",
            self.url.rstrip("/"),
            metrics,
            _url_host(media_host),
            media_port,
            f"the {top_k} loudest per room" if top_k else "every speaker",
            self.config.describe_limits(),
            self.config.describe_faults(),
            self.config.ring_timeout,
        )

    async def _handle(self, ws: ServerConnection) -> None:
        hub = self._hub
        assert hub is not None
        if self._stopping:
            # Opened just before listening stopped, after the open connections were counted for closing.
            await ws.close(CLOSE_RESTART if self._store is not None else CLOSE_GOING_AWAY)
            return
        peer = ws.remote_address
        conn = Connection(Outbox(asyncio.get_running_loop()), peer=f"{peer[0]}:{peer[1]}" if peer else "")
        hub.open(conn)
        self._sockets[conn] = ws
        writer = asyncio.create_task(
            _write(ws, conn.outbox) if self._frame_faults is None else self._write_with_faults(ws, conn)
        )
        config = self.config
        clock = asyncio.get_running_loop().time
        limiter = RateLimiter(config.rate_limit, config.rate_burst, clock) if config.rate_limit else None
        log.debug("%s connected", conn.peer)
        try:
            async for raw in ws:
                if limiter is None or limiter.allow():
                    hub.handle(conn, raw)
                elif limiter.tolerate():
                    hub.refuse(conn, raw, "rate_limited", self._rate_limited)
                else:
                    await self._close_flooding(ws, conn)
                    break
        except ConnectionClosed:
            pass
        finally:
            # websockets itself fails a connection whose frame is over max_size, with 1009.
            close_sent = ws.protocol.close_sent
            if close_sent is not None and close_sent.code == CloseCode.MESSAGE_TOO_BIG:
                self._stats.limit_closes["too_big"] += 1
            hub.close(conn)
            del self._sockets[conn]
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            log.debug("%s disconnected (code %s)", conn.peer, ws.close_code)

    async def _close_flooding(self, ws: ServerConnection, conn: Connection) -> None:
        """Close with 1008 a connection that kept sending far over the rate cap, once its queued frames are written."""
        hub = self._hub
        assert hub is not None
        self._stats.limit_closes["flood"] += 1
        log.info("%s closed for flooding past the rate limit", conn.peer)
        # Nothing more is queued for it, and every refusal it was sent reaches it before the close.
        hub.end_session(conn)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FLOOD_FLUSH_S
        while conn.outbox.ready and loop.time() < deadline:
            await asyncio.sleep(_DRAIN_POLL_S)
        await ws.close(CloseCode.POLICY_VIOLATION, "rate limit exceeded")

    async def _write_with_faults(self, ws: ServerConnection, conn: Connection) -> None:
        """``_write`` with the frame faults: a broken frame slipped in before a frame, or a frame cut off mid-way."""
        faults = self._frame_faults
        assert faults is not None
        counts = self._stats.frame_faults
        ready = conn.outbox.ready
        wake = conn.outbox.wake
        try:
            while True:
                while ready:
                    frame = ready.popleft()
                    if isinstance(frame, MediaFrame):
                        # Frame faults break JSON frames; media packets go out as they are.
                        await ws.send(frame, text=False)
                        continue
                    kind = faults.malformed()
                    if kind is not None and ws.protocol.state is State.OPEN:
                        payload, text = malformed_frame(kind, frame)
                        # Counted as it is handed over: on an open connection send() writes before it awaits.
                        counts[f"malformed_{kind}"] += 1
                        await ws.send(payload, text=text)
                    if faults.cut():
                        self._cut_off(ws, conn, frame)
                        return
                    await ws.send(frame, text=True)
                wake.clear()
                await wake.wait()
        except ConnectionClosed:
            pass

    def _cut_off(self, ws: ServerConnection, conn: Connection, frame: bytes) -> None:
        """Write the header and half the payload of ``frame``, then close the TCP connection without a close frame."""
        hub = self._hub
        assert hub is not None
        if ws.protocol.state is not State.OPEN:
            return
        # Ended here, not when the handler notices, so nothing more is queued or counted for it.
        hub.close(conn)
        self._stats.frame_faults["close_mid_frame"] += 1
        log.debug("%s cut off mid-frame by the close-mid-frame fault", conn.peer)
        # close() rather than abort(): the frames before it and the cut one are flushed first.
        ws.transport.write(cut_frame(frame))
        ws.transport.close()

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
                frame = ready.popleft()
                await ws.send(frame, text=not isinstance(frame, MediaFrame))
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
