"""Command line of the reference backend: ``loadgen serve`` and ``python -m loadgen.server``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector

from ._config import BUG_KINDS, MALFORMED_KINDS, ServerConfig
from ._limits import FLOOD_BURSTS
from ._server import ReferenceServer
from ._store import StoreError

log = logging.getLogger("loadgen.server")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number between 0 and 65535, got {value}")
    return value


def _integer_at_least(lowest: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < lowest:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


_count = _integer_at_least(0, "a non-negative integer")
_positive_count = _integer_at_least(1, "a positive integer")


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text}")
    return value


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a probability, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability between 0 and 1, got {text}")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _malformed_kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(kind.strip() for kind in text.split(",") if kind.strip())
    unknown = [kind for kind in kinds if kind not in MALFORMED_KINDS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(
            f"expected kinds separated by commas from {', '.join(MALFORMED_KINDS)}, got {text!r}"
        )
    return kinds


class _AppendBug(argparse.Action):
    """``--bug KIND P``: appends (kind, probability), validating both as argparse errors."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        kind, text = values
        if kind not in BUG_KINDS:
            raise argparse.ArgumentError(self, f"unknown bug kind {kind!r} (choose from {', '.join(BUG_KINDS)})")
        try:
            p = _probability(text)
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentError(self, str(exc)) from None
        # A fresh list, as argparse's own "append" does, so the default is never mutated.
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or []), (kind, p)])


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the reference backend's flags to ``parser`` (a ``loadgen serve`` subparser or its own)."""
    net = parser.add_argument_group("listening")
    net.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    net.add_argument(
        "--port", type=_port, default=8765, help="WebSocket port; 0 picks a free one (default: %(default)s)"
    )
    net.add_argument(
        "--port-file",
        metavar="PATH",
        help="once listening, write the bound port to PATH (how other processes learn a "
        "--port 0 server is ready); removed on exit",
    )
    net.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address of the Prometheus /metrics endpoint (default: %(default)s)",
    )
    net.add_argument(
        "--metrics-port",
        type=_port,
        metavar="PORT",
        help="serve Prometheus metrics on PORT; 0 picks a free one (default: off)",
    )
    proto = parser.add_argument_group("protocol")
    proto.add_argument(
        "--secret",
        help="require login tokens to be hex(HMAC-SHA256(SECRET, user)); without it any non-empty token is accepted",
    )
    proto.add_argument(
        "--max-body",
        type=_count,
        default=65536,
        metavar="BYTES",
        help="longest message body accepted; longer ones get too_large (default: %(default)s)",
    )
    proto.add_argument(
        "--history",
        type=_count,
        default=1000,
        metavar="N",
        help="messages kept per room and per inbox for history and read (default: %(default)s)",
    )
    proto.add_argument(
        "--ring-timeout",
        type=_positive,
        default=15.0,
        metavar="SECONDS",
        help="a 1v1 call not answered within SECONDS ends with state timeout (default: %(default)g)",
    )
    durability = parser.add_argument_group("durability (see docs/protocol.md)")
    durability.add_argument(
        "--store",
        metavar="DIR",
        help="keep room and inbox history in DIR, so a restart (graceful or killed) keeps what was "
        "acknowledged; seats, PKs, calls and sessions are not kept (default: in memory only)",
    )
    durability.add_argument(
        "--store-fsync",
        action="store_true",
        help="fsync the store after every write, so acknowledged messages also survive a crash of the "
        "machine (default: fsync on a graceful stop only)",
    )
    limits = parser.add_argument_group("limits (per connection; see docs/protocol.md, Limits and security)")
    limits.add_argument(
        "--max-frame",
        type=_positive_count,
        default=1 << 20,
        metavar="BYTES",
        help="largest frame accepted; a larger one closes the connection with 1009 (default: %(default)s)",
    )
    limits.add_argument(
        "--rate-limit",
        type=_non_negative,
        default=500.0,
        metavar="N",
        help="requests per second a connection may send on average; a request over it is refused with "
        "rate_limited and not performed; 0 turns the cap off (default: %(default)g)",
    )
    limits.add_argument(
        "--rate-burst",
        type=_positive_count,
        default=1000,
        metavar="N",
        help="requests a connection may send at once over the rate; after "
        f"{FLOOD_BURSTS} x N refusals (less what the rate refills meanwhile) it is closed with 1008 "
        "(default: %(default)s)",
    )
    faults = parser.add_argument_group("fault injection (message deliveries only; see docs/protocol.md)")
    faults.add_argument(
        "--drop", type=_probability, default=0.0, metavar="P", help="discard each delivery with probability P"
    )
    faults.add_argument(
        "--duplicate",
        type=_probability,
        default=0.0,
        metavar="P",
        help="send each delivery twice with probability P",
    )
    faults.add_argument(
        "--reorder",
        type=_probability,
        default=0.0,
        metavar="P",
        help="hold each delivery back with probability P until the next one of its room "
        "or inbox has gone out (at most 100 ms)",
    )
    faults.add_argument(
        "--delay-ms",
        type=_non_negative,
        default=0.0,
        metavar="MS",
        help="delay each delivery by MS milliseconds, keeping their order",
    )
    faults.add_argument(
        "--jitter-ms",
        type=_non_negative,
        default=0.0,
        metavar="J",
        help="vary the delay uniformly by up to ±J milliseconds",
    )
    faults.add_argument(
        "--disconnect-rate",
        type=_non_negative,
        default=0.0,
        metavar="R",
        help="abort each logged-in connection R times per second on average (Poisson), as a lost link would",
    )
    faults.add_argument("--seed", type=int, metavar="N", help="seed the fault dice so a run can be repeated")
    frames = parser.add_argument_group("frame faults (every frame written to a connection; see docs/protocol.md)")
    frames.add_argument(
        "--malformed",
        type=_probability,
        default=0.0,
        metavar="P",
        help="with probability P per frame, write a broken frame just before it (the frame itself still goes out)",
    )
    frames.add_argument(
        "--malformed-kinds",
        type=_malformed_kinds,
        default=MALFORMED_KINDS,
        metavar="KINDS",
        help=f"kinds of broken frame, separated by commas, to choose from uniformly: {', '.join(MALFORMED_KINDS)} "
        "(default: all)",
    )
    frames.add_argument(
        "--close-mid-frame",
        type=_probability,
        default=0.0,
        metavar="P",
        help="with probability P per frame, write its header and half its payload, then close the TCP "
        "connection without a close frame",
    )
    media = parser.add_argument_group("media relay (audio of voice rooms and live streams; see docs/protocol.md)")
    media.add_argument(
        "--media-port",
        type=_port,
        default=0,
        metavar="PORT",
        help="UDP port of the media relay, on the --host address; 0 picks a free one, which media.open acks "
        "tell clients (default: %(default)s)",
    )
    media.add_argument(
        "--media-top-k",
        type=_count,
        default=0,
        metavar="K",
        help="forward only the K loudest streams of each room, chosen every 200 ms by their smoothed audio "
        "level; the others' frames are dropped and sequence numbers rewritten to stay contiguous; 0 forwards "
        "every speaker (default: %(default)s)",
    )
    media.add_argument(
        "--media-loss",
        type=_probability,
        default=0.0,
        metavar="P",
        help="drop each forwarded copy of a frame (one per recipient) with probability P, counted as "
        "injected_loss (default: %(default)g)",
    )
    media.add_argument(
        "--media-delay-ms",
        type=_non_negative,
        default=0.0,
        metavar="MS",
        help="hold each forwarded copy MS milliseconds before sending it (default: %(default)g)",
    )
    media.add_argument(
        "--media-jitter-ms",
        type=_non_negative,
        default=0.0,
        metavar="J",
        help="vary that hold uniformly by up to ±J milliseconds, never below 0; UDP copies may then overtake "
        "one another (default: %(default)g)",
    )
    bugs = parser.add_argument_group("bug injection (voice rooms and PKs; see docs/protocol.md)")
    bugs.add_argument(
        "--bug",
        action=_AppendBug,
        nargs=2,
        metavar=("KIND", "P"),
        default=[],
        help=f"break an invariant with probability P; repeatable; KIND is one of {', '.join(BUG_KINDS)}",
    )
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default="INFO",
        help="logging threshold (default: %(default)s)",
    )


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """The ``ServerConfig`` that parsed ``add_serve_arguments`` flags describe."""
    return ServerConfig(
        host=args.host,
        port=args.port,
        port_file=args.port_file,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        secret=args.secret,
        max_body=args.max_body,
        history=args.history,
        drop=args.drop,
        duplicate=args.duplicate,
        reorder=args.reorder,
        delay_ms=args.delay_ms,
        jitter_ms=args.jitter_ms,
        disconnect_rate=args.disconnect_rate,
        seed=args.seed,
        bugs=tuple(args.bug),
        ring_timeout=args.ring_timeout,
        store=args.store,
        store_fsync=args.store_fsync,
        max_frame=args.max_frame,
        rate_limit=args.rate_limit,
        rate_burst=args.rate_burst,
        malformed=args.malformed,
        malformed_kinds=args.malformed_kinds,
        close_mid_frame=args.close_mid_frame,
        media_port=args.media_port,
        media_top_k=args.media_top_k,
        media_loss=args.media_loss,
        media_delay_ms=args.media_delay_ms,
        media_jitter_ms=args.media_jitter_ms,
    )


def serve(args: argparse.Namespace) -> int:
    """Run the reference backend until SIGINT or SIGTERM; return the process exit code."""
    level = getattr(logging, args.log_level)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("loadgen.server").setLevel(level)
    # websockets logs its own "server listening" lines and, at DEBUG, every frame.
    logging.getLogger("loadgen.server.websockets").setLevel(logging.WARNING)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        log.error("invalid option: %s", exc)
        return 2
    return _runner()(_serve(config))


async def _serve(config: ServerConfig) -> int:
    registry = CollectorRegistry()
    ProcessCollector(namespace="refserver", registry=registry)
    server = ReferenceServer(config, registry=registry)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Installed before listening, so a signal that races the start-up still stops cleanly.
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    try:
        try:
            await server.start()
        except (OSError, StoreError) as exc:
            log.error("cannot start the reference backend: %s", exc)
            return 1
        await stopping.wait()
    finally:
        await server.stop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return 0


def _runner() -> Callable[[Coroutine[Any, Any, int]], int]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run
