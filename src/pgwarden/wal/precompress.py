"""Compressing the WAL segment PostgreSQL is writing, while it is being written.

Most of a push is compressing 16 MiB; done when the segment turns ready, it is on the
critical path of archive_command. So the archiver also follows the segment in progress
and feeds its completed pages to an encoder as they appear. A page is complete once the
next page carries a valid header for its own position (PostgreSQL writes WAL pages in
order; only the last, partial page is ever rewritten), and its bytes are read again once
that is seen: a read racing PostgreSQL's write can catch a page half written and the next
one already begun (seen once in about 250 segments under pgbench, each costing a
compression from scratch on the critical path). Recycled segments hold old pages
whose header names another position, so they are never taken for new WAL.

When the segment turns ready, the file is read once more and the part already fed is
compared byte for byte with what was fed: only if it is identical is the tail fed and the
result used. Anything else (a crash rewrote the segment, a page was torn while read) falls
back to compressing the file from scratch, so this can only ever be faster, never wrong.
"""

from __future__ import annotations

import os
import queue
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pgwarden.codec import Key, encode
from pgwarden.codec.encoder import EncodeStream
from pgwarden.wal.names import kind_of, parse_segment_name, segment_start_lsn

PAGE = 8192
_PAGEADDR = struct.Struct("<Q")  # XLogPageHeaderData.xlp_pageaddr at offset 8
_READ = 4 * 1024 * 1024  # per poll at most: 400 MB/s of WAL at a 10 ms poll
# The first read of a poll; each further one doubles while every page read is valid, so a
# segment that has not moved costs one small read, not _READ bytes every poll. (Before,
# reading _READ bytes each poll cost an idle agent 4% of a core.)
_PROBE = 64 * 1024


@dataclass
class _Progress:
    name: str
    start_lsn: int
    fed: bytearray = field(default_factory=bytearray)
    chunks: queue.Queue[bytes | None] = field(default_factory=queue.Queue)
    output: list[bytes] = field(default_factory=list)
    stream: EncodeStream | None = None
    thread: threading.Thread | None = None
    failed: bool = False


class Precompressor:
    """Follows segments in progress in one pg_wal; `finish(path)` gives the encoded file."""

    def __init__(
        self,
        pg_wal: Path,
        segment_size: Callable[[], int],
        *,
        compression: str,
        level: int,
        key: Key | None,
    ) -> None:
        self.pg_wal = pg_wal
        self._segment_size = segment_size
        self.compression = compression
        self.level = level
        self.key = key
        self._lock = threading.RLock()
        self._progress: dict[str, _Progress] = {}
        # The segment-sized buffer `finish` reads into (under the lock), kept: a fresh
        # 16 MiB allocation costs thousands of page faults on the critical path.
        self._scratch = bytearray()
        self.hits = 0
        self.misses = 0

    @property
    def segment_size(self) -> int:
        return self._segment_size()

    # --- following the segment being written ---------------------------------------------
    def follow(self, candidates: list[str]) -> None:
        """Feed new complete pages of the segments being written (`candidates`: segment
        names without a status marker, i.e. not yet complete)."""
        for name in candidates:
            if kind_of(name) != "segment":
                continue
            try:
                self._advance(name)
            except OSError:
                continue  # removed or recycled meanwhile

    def _start(self, name: str, start_lsn: int) -> _Progress:
        state = _Progress(name, start_lsn)
        state.stream = encode(
            iter(state.chunks.get, None),
            compression=self.compression,
            level=self.level,
            key=self.key,
        )

        def drain() -> None:
            try:
                assert state.stream is not None
                state.output.extend(state.stream)
            except Exception:  # noqa: BLE001 - a failed precompression only falls back
                state.failed = True

        state.thread = threading.Thread(target=drain, name=f"precompress-{name}", daemon=True)
        state.thread.start()
        return state

    def _advance(self, name: str) -> None:
        with self._lock:  # held throughout: `finish` must not see a half-fed state
            self._advance_locked(name)

    def _advance_locked(self, name: str) -> None:
        state = self._progress.get(name)
        path = self.pg_wal / name
        offset = 0 if state is None else len(state.fed)
        if state is not None:
            start_lsn = state.start_lsn
        else:
            _, segno = parse_segment_name(name, self.segment_size)
            start_lsn = segment_start_lsn(segno, self.segment_size)
        with path.open("rb", buffering=0) as source:
            length = _complete_length(source.fileno(), offset, start_lsn)
            # Read again: the first read may have caught a page while PostgreSQL was
            # writing it (torn), and seen the page after it written a moment later. Now
            # that the next page is known to be written, this page is final.
            chunk = os.pread(source.fileno(), length, offset) if length else b""
        if not chunk or len(chunk) != length:
            return
        if state is None:
            state = self._start(name, start_lsn)
            self._progress[name] = state
        state.fed += chunk
        state.chunks.put(chunk)

    # --- when the segment is ready ------------------------------------------------------
    def finish(self, path: Path) -> tuple[bytes, str] | None:
        """(encoded object, plaintext SHA-256) for the ready file at `path`, if what was fed
        ahead is exactly its beginning; None to compress it from scratch."""
        with self._lock:
            state = self._progress.pop(path.name, None)
            if state is None:
                return None
            buffer = self._buffer()
            try:
                size = _read_into(path, buffer)
            except OSError:
                self._abandon(state)
                return None
            fed = len(state.fed)
            # bytearray.startswith is a memcmp; comparing a memoryview goes element by
            # element (48 ms for 16 MiB here, against 1.5 ms).
            if state.failed or size is None or size < fed or not buffer.startswith(state.fed):
                self._abandon(state)
                self.misses += 1
                return None
            if size > fed:
                state.chunks.put(bytes(memoryview(buffer)[fed:size]))
            state.chunks.put(None)
        assert state.thread is not None and state.stream is not None
        state.thread.join()
        if state.failed:
            self.misses += 1
            return None
        self.hits += 1
        return b"".join(state.output), state.stream.digest.sha256

    def warm(self) -> None:
        """Pay the first segment's one-time costs now, not on its push's critical path:
        the segment-sized buffer (first-touching 16 MiB here costs ~30 ms in page faults)
        and the compressor's import."""
        for _ in encode(iter([b""]), compression=self.compression, level=self.level, key=self.key):
            pass
        with self._lock:
            self._buffer()

    def _buffer(self) -> bytearray:
        """The buffer of the segment size (under the lock)."""
        if len(self._scratch) != self.segment_size:
            self._scratch = bytearray(self.segment_size)
        return self._scratch

    def _abandon(self, state: _Progress) -> None:
        state.chunks.put(None)

    def forget(self, keep: set[str]) -> None:
        """Drop segments no longer in progress and not about to be archived."""
        with self._lock:
            gone = [name for name in self._progress if name not in keep]
            states = [self._progress.pop(name) for name in gone]
        for state in states:
            self._abandon(state)


def _complete_length(fd: int, offset: int, start_lsn: int) -> int:
    """How many bytes from `offset` on are complete pages, up to about _READ: pages with a
    valid header for their own position followed by another such page (PostgreSQL writes
    WAL pages in order, so it no longer writes to them). Read in growing steps, stopping
    at the first page that is not valid."""
    total, step = 0, _PROBE
    while total < _READ:
        wanted = min(step, _READ - total + PAGE)  # the last page is looked at again
        data = os.pread(fd, wanted, offset + total)
        valid = 0
        for at in range(0, len(data) - PAGE + 1, PAGE):
            (address,) = _PAGEADDR.unpack_from(data, at + 8)
            if address != start_lsn + offset + total + at:
                break
            valid += PAGE
        total += max(0, valid - PAGE)
        if valid < wanted:  # an invalid page, or the end of the file
            break
        step *= 2
    return total


def _read_into(path: Path, buffer: bytearray) -> int | None:
    """Read the file at `path` into `buffer`: its size, or None if it does not fit."""
    view = memoryview(buffer)
    size = 0
    with path.open("rb", buffering=0) as source:
        while size < len(buffer):
            count = source.readinto(view[size:])
            if not count:
                return size
            size += count
        return None if source.read(1) else size
