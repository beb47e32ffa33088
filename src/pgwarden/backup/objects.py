"""Reading a backup's stored objects back: whole-file objects and bundles, checked.

Shared by restore and verify. Every failure is an `ObjectDamaged` naming the object key
(and the file, for a bundle part), which is what `verify` and `restore` print.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

from pgwarden.backup.manifest import FileEntry
from pgwarden.codec import CodecError, Key, decode, decode_bytes
from pgwarden.errors import PgwardenError
from pgwarden.storage import ObjectNotFound, ObjectStore
from pgwarden.storage.layout import Layout


class ObjectDamaged(PgwardenError):  # noqa: N818 - named after what the caller checks for
    """A stored object is missing, unreadable or does not match the manifest."""

    def __init__(self, key: str, reason: str, path: str | None = None) -> None:
        self.key = key
        self.path = path
        self.reason = reason
        of = f" (file {path})" if path else ""
        super().__init__(f"object {key}{of} is damaged: {reason}")


def _counting(chunks: Iterable[bytes], counted: Callable[[int], None] | None) -> Iterator[bytes]:
    for chunk in chunks:
        if counted is not None:
            counted(len(chunk))
        yield chunk


def whole(
    store: ObjectStore,
    layout: Layout,
    entry: FileEntry,
    key: Key | None,
    counted: Callable[[int], None] | None = None,
) -> Iterator[bytes]:
    """The plaintext of a file stored as its own object, checked against its SHA-256.

    The last piece is yielded only after the whole object checked out, so a consumer that
    renames its output after the loop never keeps damaged data."""
    name = layout.backup_object(entry.object)
    try:
        chunks = _counting(store.get_stream(name), counted)
        stream = decode(chunks, keys=key, expected_sha256=entry.sha256)
        held: bytes | None = None
        for piece in stream:
            if held is not None:
                yield held
            held = piece
        if stream.digest.plaintext_bytes != entry.size:
            raise ObjectDamaged(
                name, f"holds {stream.digest.plaintext_bytes} bytes, expected {entry.size}"
            )
        if held is not None:
            yield held
    except ObjectNotFound:
        raise ObjectDamaged(name, "it is missing from storage", entry.path) from None
    except CodecError as exc:
        raise ObjectDamaged(name, str(exc), entry.path) from exc


def bundle(
    store: ObjectStore,
    layout: Layout,
    entries: Sequence[FileEntry],
    key: Key | None,
    counted: Callable[[int], None] | None = None,
) -> Iterator[tuple[FileEntry, bytes]]:
    """The plaintext of each of `entries` (parts of one bundle, by offset), checked."""
    if not entries:
        return
    name = layout.backup_object(entries[0].object)
    try:
        reader = _Skipper(_counting(store.get_stream(name), counted))
        for entry in sorted(entries, key=lambda e: e.offset or 0):
            assert entry.offset is not None and entry.length is not None
            encoded = reader.read_at(entry.offset, entry.length)
            if len(encoded) != entry.length:
                raise ObjectDamaged(name, "it is shorter than the manifest says", entry.path)
            try:
                data = decode_bytes(encoded, keys=key, expected_sha256=entry.sha256)
            except CodecError as exc:
                raise ObjectDamaged(name, str(exc), entry.path) from exc
            yield entry, data
    except ObjectNotFound:
        raise ObjectDamaged(name, "it is missing from storage") from None


class _Skipper:
    """Reads chosen byte ranges, in increasing order, from a stream of chunks."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buffer = bytearray()
        self._position = 0  # stream offset of _buffer[0]

    def read_at(self, offset: int, length: int) -> bytes:
        """The bytes at [offset, offset + length), shorter if the stream ends first."""
        if offset < self._position:
            raise ValueError("ranges must be read in increasing order")
        while True:
            drop = min(offset - self._position, len(self._buffer))
            del self._buffer[:drop]
            self._position += drop
            if self._position == offset:
                break
            chunk = next(self._chunks, None)
            if chunk is None:
                return b""
            self._buffer += chunk
        while len(self._buffer) < length:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        data = bytes(self._buffer[:length])
        del self._buffer[: len(data)]
        self._position += len(data)
        return data
