"""Room and inbox history on disk (``--store DIR``): an append-only file replayed at start-up.

Every record is ``<u32 body length><u32 CRC-32 of body><body>``, the body being ``<u8 kind>
<u64 seq><u16 name length><u16 author length>`` then the name, the author and the encoded
push frame, all after a magic line. Records are buffered and the buffer is written once at
the end of each handled request, before its ack is queued: a ``write`` that returned is in
the kernel's page cache and survives the process being killed; only a crash of the machine
can lose it, unless ``fsync`` is on. Rooms' seat counts are kept too (a ``ROOM`` record), so
a room keeps its size across a restart; seat occupants, hosts, PKs, calls and sessions are
not kept.

The file is kept bounded by compaction: once it holds ``COMPACT_FACTOR`` times the records
its last compaction kept, it is rewritten with what the rooms and inboxes still hold (their
last ``history`` entries, or their head alone when they hold none).
"""

from __future__ import annotations

import logging
import os
import struct
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

log = logging.getLogger("loadgen.server")

FILE_NAME = "history.store"
LOCK_NAME = "store.lock"
MAGIC = b"loadgen history store 1\n"

# Record kinds. A message record with an empty frame carries its stream's head alone.
ROOM = 1  # a room was created; ``seq`` is its seat count
ROOM_MESSAGE = 2
INBOX_MESSAGE = 3
_KINDS = frozenset({ROOM, ROOM_MESSAGE, INBOX_MESSAGE})

# The file may hold this many times what the last compaction kept before it is compacted again,
# so rewriting costs each appended record at most 1 / (COMPACT_FACTOR - 1) of a rewrite.
COMPACT_FACTOR = 4
# Small stores are not worth rewriting every few messages.
COMPACT_FLOOR = 256
_CHUNK = 1 << 20

_HEADER = struct.Struct("<II")
_BODY = struct.Struct("<BQHH")

# (kind, stream name, seq, author, frame)
Record = tuple[int, str, int, str, bytes]


class StoreError(Exception):
    """The store cannot be used: another backend holds it, or it is damaged before its last record."""


class Store:
    """The append-only history file in ``directory``; one backend process at a time may hold it."""

    def __init__(self, directory: str, fsync: bool = False) -> None:
        self.directory = directory
        self.path = os.path.join(directory, FILE_NAME)
        self._fsync = fsync
        self._buffer = bytearray()
        self._file: BinaryIO | None = None
        self._snapshot: Callable[[], Iterable[Record]] | None = None
        # records in the file, buffered ones included, and how many the last compaction kept
        self._records = 0
        self._kept = 0
        os.makedirs(directory, exist_ok=True)
        self._lock: int | None = _lock(os.path.join(directory, LOCK_NAME))

    def open(
        self, restore: Callable[[int, str, int, str, bytes], None], snapshot: Callable[[], Iterable[Record]]
    ) -> int:
        """Replay every record into ``restore``, then open the file for appending; the number replayed.

        ``snapshot`` yields what a compaction must keep. A torn last record (a process killed
        while writing it) is skipped with a warning and cut off; damage before it is a
        ``StoreError``.
        """
        data = _read(self.path)
        if data is None or (len(data) < len(MAGIC) and MAGIC.startswith(data)):
            _write_atomically(self.path, [MAGIC])
            data = MAGIC
        if not data.startswith(MAGIC):
            raise StoreError(f"{self.path} is not a loadgen history store (its first line is not {MAGIC!r})")
        count, end = self._replay(data, restore)
        if end < len(data):
            log.warning(
                "store %s: skipped a torn last record (%d bytes at byte %d) left by a process stopped while writing",
                self.path,
                len(data) - end,
                end,
            )
            os.truncate(self.path, end)
        self._file = open(self.path, "ab", buffering=0)
        self._snapshot = snapshot
        self._records = count
        self._kept = sum(1 for _ in snapshot())
        self._compact_if_due()
        return count

    def _replay(self, data: bytes, restore: Callable[[int, str, int, str, bytes], None]) -> tuple[int, int]:
        """Restore every whole record; the count and the offset where the whole records end."""
        view = memoryview(data)
        offset = len(MAGIC)
        size = len(data)
        count = 0
        while offset + _HEADER.size <= size:
            length, crc = _HEADER.unpack_from(view, offset)
            start = offset + _HEADER.size
            end = start + length
            if end > size:
                break
            body = view[start:end]
            record = _decode(body) if zlib.crc32(body) == crc else None
            if record is None:
                if end == size:
                    break
                raise StoreError(
                    f"{self.path}: damaged record at byte {offset}; move the file away to start with an empty store"
                )
            restore(*record)
            count += 1
            offset = end
        return count, offset

    def append(self, kind: int, name: str, seq: int, author: str = "", frame: bytes = b"") -> None:
        """Buffer one record; ``flush`` writes it."""
        self._buffer += _encode(kind, name, seq, author, frame)
        self._records += 1

    def flush(self) -> None:
        """Write what is buffered (fsync'd with ``fsync``); compact when the file has grown enough."""
        buffer = self._buffer
        if not buffer:
            return
        file = self._file
        assert file is not None, "the store is not open"
        try:
            # A short write leaves the rest buffered for the next flush to retry.
            while buffer:
                written = file.write(buffer)
                if not written:
                    raise OSError(f"wrote nothing of {len(buffer)} bytes")
                del buffer[:written]
            if self._fsync:
                os.fsync(file.fileno())
        except OSError as exc:
            log.error("store %s: cannot write: %s", self.path, exc)
            raise
        self._compact_if_due()

    def close(self) -> None:
        """Flush, fsync and release the file and its lock; idempotent."""
        if self._lock is None:
            return
        try:
            if self._file is not None:
                try:
                    self.flush()
                    os.fsync(self._file.fileno())
                finally:
                    self._file.close()
                    self._file = None
        finally:
            os.close(self._lock)
            self._lock = None

    def _compact_if_due(self) -> None:
        if self._records > COMPACT_FACTOR * max(self._kept, COMPACT_FLOOR):
            self._compact()

    def _compact(self) -> None:
        """Rewrite the file with the snapshot: written aside, fsync'd, then renamed over it.

        fsync'd whatever the ``fsync`` option says: a crash right after the rename must not
        leave an empty file where the whole history was.
        """
        assert self._snapshot is not None and self._file is not None and not self._buffer
        started = time.monotonic()
        before = self._records
        snapshot = self._snapshot
        count = 0

        def chunks() -> Iterator[bytes | bytearray]:
            nonlocal count
            yield MAGIC
            chunk = bytearray()
            for record in snapshot():
                chunk += _encode(*record)
                count += 1
                if len(chunk) >= _CHUNK:
                    yield chunk
                    chunk = bytearray()
            yield chunk

        _write_atomically(self.path, chunks())
        self._file.close()
        self._file = open(self.path, "ab", buffering=0)
        self._records = self._kept = count
        log.debug(
            "store %s: compacted %d records to %d in %.3f s", self.path, before, count, time.monotonic() - started
        )


def _encode(kind: int, name: str, seq: int, author: str, frame: bytes) -> bytes:
    name_bytes = name.encode()
    author_bytes = author.encode()
    body = b"".join((_BODY.pack(kind, seq, len(name_bytes), len(author_bytes)), name_bytes, author_bytes, frame))
    return _HEADER.pack(len(body), zlib.crc32(body)) + body


def _decode(body: memoryview) -> Record | None:
    """The record in ``body``, or None when it does not parse."""
    if len(body) < _BODY.size:
        return None
    kind, seq, name_length, author_length = _BODY.unpack_from(body)
    name_end = _BODY.size + name_length
    author_end = name_end + author_length
    if kind not in _KINDS or author_end > len(body):
        return None
    try:
        name = str(body[_BODY.size : name_end], "utf-8")
        author = str(body[name_end:author_end], "utf-8")
    except UnicodeDecodeError:
        return None
    return kind, name, seq, author, bytes(body[author_end:])


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as file:
            return file.read()
    except FileNotFoundError:
        return None


def _write_atomically(path: str, chunks: Iterable[bytes | bytearray]) -> None:
    """Replace ``path`` with ``chunks``: readers and a crash see the old file or the whole new one."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as file:
        for chunk in chunks:
            file.write(chunk)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)
    directory = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _lock(path: str) -> int:
    """Hold an exclusive lock on ``path`` for as long as the returned descriptor is open."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    if sys.platform != "win32":
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(f"{os.path.dirname(path)} is in use by another reference backend (--store)") from None
    return fd
