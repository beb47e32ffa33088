"""The work of one backup worker: read files, check pages, encode, store.

Large files become one object each, streamed with bounded memory; small ones are packed
into bundles so a data directory of a thousand catalog files costs a few requests, not a
thousand. An incremental backup first compares a file with the entry of the backup it is
based on (size and mtime, then the SHA-256 of the bytes) and, when equal, reuses that
entry's object instead of storing the file again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import BinaryIO

from pgwarden.backup.context import Encoding
from pgwarden.backup.manifest import FileEntry
from pgwarden.backup.pages import PageChecker, is_relation_file, recheck
from pgwarden.backup.scan import ScannedFile, file_sha256
from pgwarden.codec import encode, encode_bytes
from pgwarden.storage import ObjectStore
from pgwarden.storage.layout import Layout

READ_SIZE = 1024 * 1024
# A file this large is compressed by zstd on a thread of its own as well: a big table's
# file is one task, and the other workers run out of files long before it is done.
ZSTD_THREAD_FROM = 64 * 1024 * 1024
# Files below this size are bundled; a bundle holds about this much plaintext.
BUNDLE_FILE_LIMIT = 1024 * 1024
BUNDLE_SIZE = 16 * 1024 * 1024


@dataclass
class Counters:
    """Shared by the workers and the progress display; int updates under a lock."""

    read_bytes: int = 0
    stored_bytes: int = 0
    reused_bytes: int = 0
    files_done: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, *, read: int = 0, stored: int = 0, reused: int = 0, files: int = 0) -> None:
        with self.lock:
            self.read_bytes += read
            self.stored_bytes += stored
            self.reused_bytes += reused
            self.files_done += files


@dataclass(frozen=True)
class FileResult:
    entry: FileEntry | None  # None: the file vanished while the backup ran (a dropped table)
    bad_blocks: tuple[int, ...] = ()


@dataclass
class Uploader:
    """Everything a worker needs; one per backup, shared by its threads."""

    store: ObjectStore
    layout: Layout
    backup_id: str
    encoding: Encoding
    start_lsn: int
    check_pages: bool
    basis: Mapping[str, FileEntry]
    counters: Counters
    cancelled: threading.Event = field(default_factory=threading.Event)

    def _checker(self, scanned: ScannedFile) -> PageChecker | None:
        if self.check_pages and is_relation_file(scanned.path):
            return PageChecker(scanned.path, self.start_lsn)
        return None

    def _bad_blocks(self, scanned: ScannedFile, checker: PageChecker | None) -> tuple[int, ...]:
        if checker is None:
            return ()
        # A page written while we read it looks torn: read it again before calling it bad.
        return tuple(
            b for b in checker.finish() if not recheck(scanned.source, b, start_lsn=self.start_lsn)
        )

    def reusable(self, scanned: ScannedFile) -> FileEntry | None:
        """The basis entry for an unchanged file: same size and mtime, then same bytes."""
        old = self.basis.get(scanned.path)
        if old is None or old.size != scanned.size or old.mtime != scanned.mtime:
            return None
        try:
            size, sha256 = file_sha256(scanned.source, READ_SIZE)
        except FileNotFoundError:
            return None
        self.counters.add(read=size)
        if size != old.size or sha256 != old.sha256:
            return None
        self.counters.add(reused=size, files=1)
        return FileEntry(
            scanned.path, old.size, scanned.mtime, scanned.mode, old.sha256, old.object,
            old.offset, old.length,
        )  # fmt: skip

    def _read(self, source: BinaryIO, checker: PageChecker | None) -> Iterator[bytes]:
        while chunk := source.read(READ_SIZE):
            if self.cancelled.is_set():
                raise InterruptedError("the backup was cancelled")
            if checker is not None:
                checker.feed(chunk)
            self.counters.add(read=len(chunk))
            yield chunk

    def upload_file(self, scanned: ScannedFile, number: int) -> FileResult:
        """Store one large file as its own object."""
        reused = self.reusable(scanned)
        if reused is not None:
            return FileResult(reused)
        name = f"{self.backup_id}/f/{number}"
        checker = self._checker(scanned)
        try:
            source = scanned.source.open("rb")
        except FileNotFoundError:
            return FileResult(None)
        with source:
            stream = encode(
                self._read(source, checker),
                compression=self.encoding.compression,
                level=self.encoding.level,
                key=self.encoding.key,
                threads=1 if scanned.size >= ZSTD_THREAD_FROM else 0,
            )
            stored = self.store.put_stream(self.layout.backup_object(name), stream)
        digest = stream.digest
        self.counters.add(stored=stored, files=1)
        entry = FileEntry(
            scanned.path, digest.plaintext_bytes, scanned.mtime, scanned.mode, digest.sha256, name
        )
        return FileResult(entry, self._bad_blocks(scanned, checker))

    def upload_bundle(self, files: list[ScannedFile], number: int) -> list[FileResult]:
        """Store small files as one bundle object; unchanged ones are reused instead."""
        name = f"{self.backup_id}/b/{number}"
        results: list[FileResult] = []
        pending: list[ScannedFile] = []
        for scanned in files:
            reused = self.reusable(scanned)
            if reused is not None:
                results.append(FileResult(reused))
            else:
                pending.append(scanned)
        if not pending:
            return results
        written: list[FileResult] = []

        def parts() -> Iterator[bytes]:
            offset = 0
            for scanned in pending:
                checker = self._checker(scanned)
                try:
                    with scanned.source.open("rb") as source:
                        data = b"".join(self._read(source, checker))
                except FileNotFoundError:
                    written.append(FileResult(None))
                    continue
                encoded, digest = encode_bytes(
                    data,
                    compression=self.encoding.compression,
                    level=self.encoding.level,
                    key=self.encoding.key,
                )
                entry = FileEntry(
                    scanned.path, len(data), scanned.mtime, scanned.mode, digest.sha256,
                    name, offset, len(encoded),
                )  # fmt: skip
                written.append(FileResult(entry, self._bad_blocks(scanned, checker)))
                offset += len(encoded)
                yield encoded

        stored = self.store.put_stream(self.layout.backup_object(name), parts())
        self.counters.add(stored=stored, files=len(pending))
        return results + written


def plan_bundles(files: list[ScannedFile]) -> tuple[list[ScannedFile], list[list[ScannedFile]]]:
    """Split scanned files into large ones (own object) and bundles of small ones."""
    large = [f for f in files if f.size >= BUNDLE_FILE_LIMIT]
    small = sorted((f for f in files if f.size < BUNDLE_FILE_LIMIT), key=lambda f: f.path)
    bundles: list[list[ScannedFile]] = []
    current: list[ScannedFile] = []
    size = 0
    for scanned in small:
        if current and size + scanned.size > BUNDLE_SIZE:
            bundles.append(current)
            current, size = [], 0
        current.append(scanned)
        size += scanned.size
    if current:
        bundles.append(current)
    return large, bundles


Task = Callable[[], list[FileResult]]
