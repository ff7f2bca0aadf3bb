"""Options of the reference backend, validated once."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

FAULT_KINDS = ("drop", "duplicate", "reorder", "disconnect")
# Invariants of voice rooms and PKs the backend can break on purpose (``--bug KIND P``).
BUG_KINDS = ("seat-double-grant", "seat-version-regress", "pk-score-skew")
# Broken frames the backend can write (``--malformed P``); docs/protocol.md shows each on the wire.
MALFORMED_KINDS = ("bad_json", "not_object", "unknown_event", "binary", "bad_utf8", "oversized")
# Faults of the frames written to a connection, as counted in refserver_injected_faults_total.
FRAME_FAULT_KINDS = (*(f"malformed_{kind}" for kind in MALFORMED_KINDS), "close_mid_frame")


@dataclass(frozen=True)
class ServerConfig:
    """Every option of the reference backend, including its fault injection.

    The field names match the command-line flags (``max_body`` is ``--max-body``). Invalid
    values raise ``ValueError`` naming the field. ``bugs`` maps a kind of ``BUG_KINDS`` to
    its probability; a mapping or (kind, P) pairs are accepted and kept as pairs in
    ``BUG_KINDS`` order (a repeated kind keeps its last P).
    """

    host: str = "127.0.0.1"
    port: int = 8765
    port_file: str | None = None
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None
    secret: str | None = None
    max_body: int = 65536
    history: int = 1000
    drop: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    disconnect_rate: float = 0.0
    seed: int | None = None
    bugs: tuple[tuple[str, float], ...] = ()
    ring_timeout: float = 15.0
    store: str | None = None
    store_fsync: bool = False
    max_frame: int = 1 << 20
    rate_limit: float = 500.0
    rate_burst: int = 1000
    malformed: float = 0.0
    malformed_kinds: tuple[str, ...] = MALFORMED_KINDS
    close_mid_frame: float = 0.0
    media_port: int = 0
    media_top_k: int = 0
    media_loss: float = 0.0
    media_delay_ms: float = 0.0
    media_jitter_ms: float = 0.0

    def __post_init__(self) -> None:
        for name in ("port", "metrics_port"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and 0 <= value <= 65535):
                raise ValueError(f"{name} must be a port number between 0 and 65535, got {value!r}")
        for name in ("max_body", "history"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        for name in ("drop", "duplicate", "reorder"):
            value = getattr(self, name)
            if not _is_real(value) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability between 0 and 1, got {value!r}")
        for name in ("delay_ms", "jitter_ms", "disconnect_rate"):
            value = getattr(self, name)
            if not _is_real(value) or value < 0.0:
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")
        if self.seed is not None and not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if not _is_real(self.ring_timeout) or self.ring_timeout <= 0:
            raise ValueError(f"ring_timeout must be a positive number of seconds, got {self.ring_timeout!r}")
        object.__setattr__(self, "bugs", _bugs(self.bugs))
        if self.store is not None and (not isinstance(self.store, str) or not self.store):
            raise ValueError(f"store must be a directory path, got {self.store!r}")
        if not isinstance(self.store_fsync, bool):
            raise ValueError(f"store_fsync must be a boolean, got {self.store_fsync!r}")
        if self.store_fsync and self.store is None:
            raise ValueError("store_fsync needs store (a directory to keep history in)")
        for name in ("max_frame", "rate_burst"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not _is_real(self.rate_limit) or self.rate_limit < 0.0:
            raise ValueError(f"rate_limit must be a non-negative number (0 turns it off), got {self.rate_limit!r}")
        for name in ("malformed", "close_mid_frame"):
            value = getattr(self, name)
            if not _is_real(value) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability between 0 and 1, got {value!r}")
        object.__setattr__(self, "malformed_kinds", _malformed_kinds(self.malformed_kinds))
        port, top_k = self.media_port, self.media_top_k
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise ValueError(f"media_port must be a port number between 0 and 65535, got {port!r}")
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0:
            raise ValueError(f"media_top_k must be a non-negative integer (0 forwards all), got {top_k!r}")
        if not _is_real(self.media_loss) or not 0.0 <= self.media_loss <= 1.0:
            raise ValueError(f"media_loss must be a probability between 0 and 1, got {self.media_loss!r}")
        for name in ("media_delay_ms", "media_jitter_ms"):
            value = getattr(self, name)
            if not _is_real(value) or value < 0.0:
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")

    def bug(self, kind: str) -> float:
        """The probability of the bug ``kind`` (0 when off)."""
        return dict(self.bugs).get(kind, 0.0)

    @property
    def delivery_faults(self) -> bool:
        """Whether any fault or delay touches message deliveries."""
        return bool(self.drop or self.duplicate or self.reorder or self.delay_ms or self.jitter_ms)

    @property
    def frame_faults(self) -> bool:
        """Whether any fault touches the frames written to connections."""
        return bool(self.malformed or self.close_mid_frame)

    def describe_limits(self) -> str:
        """The per-connection limits, for the start-up log."""
        rate = f"rate limit {self.rate_limit:g}/s burst {self.rate_burst}" if self.rate_limit else "no rate limit"
        return f"{rate}, max frame {self.max_frame} bytes"

    def describe_faults(self) -> str:
        """One line naming the faults that are on, for the start-up log."""
        parts = [f"{name}={getattr(self, name):g}" for name in ("drop", "duplicate", "reorder") if getattr(self, name)]
        if self.delay_ms or self.jitter_ms:
            parts.append(f"delay={self.delay_ms:g}±{self.jitter_ms:g}ms")
        if self.disconnect_rate:
            parts.append(f"disconnect-rate={self.disconnect_rate:g}/s")
        if self.malformed:
            parts.append(f"malformed={self.malformed:g} ({','.join(self.malformed_kinds)})")
        if self.close_mid_frame:
            parts.append(f"close-mid-frame={self.close_mid_frame:g}")
        if self.media_loss:
            parts.append(f"media-loss={self.media_loss:g}")
        if self.media_delay_ms or self.media_jitter_ms:
            parts.append(f"media-delay={self.media_delay_ms:g}±{self.media_jitter_ms:g}ms")
        parts.extend(f"bug {kind}={p:g}" for kind, p in self.bugs if p)
        if not parts:
            return "no faults injected"
        seed = "random seed" if self.seed is None else f"seed={self.seed}"
        return f"injecting faults: {' '.join(parts)} ({seed})"


def _is_real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _bugs(value: object) -> tuple[tuple[str, float], ...]:
    if isinstance(value, Mapping):
        value = value.items()
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise ValueError(f"bugs must map a bug kind to a probability, got {value!r}")
    chosen: dict[str, float] = {}
    for pair in value:
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise ValueError(f"bugs must hold (kind, probability) pairs, got {pair!r}")
        kind, p = pair
        if kind not in BUG_KINDS:
            raise ValueError(f"bugs: unknown kind {kind!r}, expected one of {', '.join(BUG_KINDS)}")
        if not _is_real(p) or not 0.0 <= p <= 1.0:
            raise ValueError(f"bugs: {kind} must have a probability between 0 and 1, got {p!r}")
        chosen[kind] = float(p)
    return tuple((kind, chosen[kind]) for kind in BUG_KINDS if kind in chosen)


def _malformed_kinds(value: object) -> tuple[str, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise ValueError(f"malformed_kinds must be a list of kinds, got {value!r}")
    kinds = set()
    for kind in value:
        if kind not in MALFORMED_KINDS:
            raise ValueError(f"malformed_kinds: unknown kind {kind!r}, expected one of {', '.join(MALFORMED_KINDS)}")
        kinds.add(kind)
    if not kinds:
        raise ValueError("malformed_kinds must name at least one kind")
    return tuple(kind for kind in MALFORMED_KINDS if kind in kinds)
