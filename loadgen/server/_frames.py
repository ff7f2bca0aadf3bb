"""Frame faults of the reference backend: broken frames (``--malformed``) and frames cut off
mid-way (``--close-mid-frame``), for testing how clients cope. Bytes only; the server writes them.
"""

from __future__ import annotations

import random

from ._config import ServerConfig

# One byte over the toolkit's own client limit (loadgen.transport: max_size 2**24).
OVERSIZED_BYTES = (1 << 24) + 1
_UNKNOWN_EVENT = b'{"ev":"malformed"}'
# 0xFF never occurs in UTF-8.
_BAD_UTF8 = b'{"ev":"malformed","body":"\xff"}'
_OVERSIZED_HEAD = b'{"ev":"malformed","body":"'
_OVERSIZED_TAIL = b'"}'


def malformed_frame(kind: str, frame: bytes) -> tuple[bytes, bool]:
    """The broken frame of ``kind`` made from the real ``frame`` (JSON text): (payload, whether a text frame)."""
    if kind == "bad_json":
        # Cut between characters, so the text stays UTF-8 and only the JSON is broken; a
        # proper prefix of an object never parses, as its closing brace is missing.
        text = frame.decode()
        return text[: len(text) // 2].encode(), True
    if kind == "not_object":
        return b"[" + frame + b"]", True
    if kind == "unknown_event":
        return _UNKNOWN_EVENT, True
    if kind == "binary":
        return frame, False
    if kind == "bad_utf8":
        return _BAD_UTF8, True
    if kind == "oversized":
        padding = OVERSIZED_BYTES - len(_OVERSIZED_HEAD) - len(_OVERSIZED_TAIL)
        return _OVERSIZED_HEAD + b"x" * padding + _OVERSIZED_TAIL, True
    raise ValueError(f"unknown malformed frame kind {kind!r}")


def cut_frame(frame: bytes) -> bytes:
    """The first bytes of ``frame`` as an unmasked text frame: the whole header, half the payload."""
    length = len(frame)
    if length < 126:
        header = bytes((0x81, length))
    elif length < 1 << 16:
        header = bytes((0x81, 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + length.to_bytes(8, "big")
    return header + frame[: length // 2]


class FrameFaults:
    """Rolls the frame fault dice for each frame written to a connection.

    Its own generator, seeded from ``--seed``, so these faults shift neither the delivery
    fault dice nor the bug dice.
    """

    def __init__(self, config: ServerConfig) -> None:
        self._rng = random.Random(None if config.seed is None else f"frames-{config.seed}")
        self._malformed = config.malformed
        self._kinds = config.malformed_kinds
        self._cut = config.close_mid_frame

    def malformed(self) -> str | None:
        """The kind of broken frame to write before the next frame, or None."""
        if self._malformed and self._rng.random() < self._malformed:
            return self._rng.choice(self._kinds)
        return None

    def cut(self) -> bool:
        """Whether to cut the next frame off mid-way and close the connection under it."""
        return bool(self._cut) and self._rng.random() < self._cut
