"""Encoding: plaintext chunks in, the object's bytes out, with the plaintext's digest."""

from __future__ import annotations

import hashlib
import os

from pgwarden.codec.format import (
    DEFAULT_CHUNK_SIZE,
    MAX_CHUNK_SIZE,
    MIN_CHUNK_SIZE,
    SALT_SIZE,
    TRAILER,
    CodecError,
    ObjectHeader,
    Seal,
)
from pgwarden.codec.keys import Key, object_cipher

TYPE_CHECKING = False  # typing costs milliseconds to import; the codec must load fast
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

MAX_ZSTD_LEVEL = 22


class Digest:
    """What an encoded or decoded stream held: SHA-256 (hex) and size of the plaintext, and
    the size of the encoded object.

    `sha256` is always computed from the plaintext. A stream decoded with verify="frame"
    that relied on zstd's frame checksum instead did not compute it: `sha256_computed` is
    then False and reading `sha256` raises RuntimeError (the trailer's recorded SHA-256 is
    not offered in its place: nothing compared it with the data)."""

    __slots__ = ("_sha256", "encoded_bytes", "plaintext_bytes")

    def __init__(self, sha256: str | None, plaintext_bytes: int, encoded_bytes: int) -> None:
        self._sha256 = sha256
        self.plaintext_bytes = plaintext_bytes
        self.encoded_bytes = encoded_bytes

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            raise RuntimeError(
                "the plaintext's SHA-256 was not computed: the object was decoded with "
                'verify="frame", checked by its zstd frame checksum instead'
            )
        return self._sha256

    @property
    def sha256_computed(self) -> bool:
        return self._sha256 is not None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Digest):
            return NotImplemented
        return (self._sha256, self.plaintext_bytes, self.encoded_bytes) == (
            other._sha256,
            other.plaintext_bytes,
            other.encoded_bytes,
        )

    def __hash__(self) -> int:
        return hash((self._sha256, self.plaintext_bytes, self.encoded_bytes))

    def __repr__(self) -> str:
        return (
            f"Digest(sha256={self._sha256!r}, plaintext_bytes={self.plaintext_bytes}, "
            f"encoded_bytes={self.encoded_bytes})"
        )


class EncodeStream:
    """The encoded object, chunk by chunk; `digest` once the stream is exhausted.

    Holds a few chunk sizes of data at a time, whatever the input size (input chunk,
    compressed piece, sealed record: about 6 MiB with 1 MiB chunks, measured)."""

    def __init__(
        self,
        chunks: Iterable[bytes],
        header: ObjectHeader,
        *,
        key: Key | None,
        level: int,
        threads: int,
    ) -> None:
        self.header = header
        self._key = key
        self._level = level
        self._threads = threads
        self._sha256 = hashlib.sha256()
        self._plaintext_bytes = 0
        self._encoded_bytes = 0
        self._digest: Digest | None = None
        self._records = self._generate(chunks)

    def __iter__(self) -> EncodeStream:
        return self

    def __next__(self) -> bytes:
        return next(self._records)

    @property
    def digest(self) -> Digest:
        """SHA-256 and sizes; known only once the stream is exhausted."""
        if self._digest is None:
            raise RuntimeError("the digest is known only once the encoded stream is exhausted")
        return self._digest

    def _generate(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        header = self.header
        aead = object_cipher(self._key, header.salt) if self._key is not None else None
        seal = Seal(header, aead)
        self._encoded_bytes = len(header.raw)
        yield header.raw
        index = 0
        for body in self._body(chunks):
            record = seal.seal(index, body, final=False)
            index += 1
            self._encoded_bytes += len(record)
            yield record
        sha256 = self._sha256.digest()
        record = seal.seal(index, TRAILER.pack(sha256, self._plaintext_bytes), final=True)
        self._encoded_bytes += len(record)
        self._digest = Digest(sha256.hex(), self._plaintext_bytes, self._encoded_bytes)
        yield record

    def _plaintext(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        declared = self.header.plaintext_length
        for chunk in chunks:
            if not chunk:
                continue
            self._sha256.update(chunk)
            self._plaintext_bytes += len(chunk)
            if declared is not None and self._plaintext_bytes > declared:
                raise CodecError(
                    f"input is longer than the {declared} bytes declared as its length"
                )
            yield chunk
        if declared is not None and self._plaintext_bytes != declared:
            raise CodecError(
                f"input ended after {self._plaintext_bytes} bytes, "
                f"but {declared} were declared as its length"
            )

    def _body(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        size = self.header.chunk_size
        if self.header.compression == "none":
            yield from _rechunk(self._plaintext(chunks), size)
            return
        import zstandard  # noqa: PLC0415 - costs ~8 ms to import; WAL pushes must start fast

        declared = self.header.plaintext_length
        compressor = zstandard.ZstdCompressor(
            level=self._level,
            threads=self._threads,
            # XXH64 of the plaintext at the end of the frame (~1 ms per 16 MiB): lets a
            # reader trust zstd's check instead of computing SHA-256 (decode verify="frame").
            # Objects written before had none; the frame header says which it is.
            write_checksum=True,
            write_content_size=declared is not None,
        )
        chunker = compressor.chunker(size=-1 if declared is None else declared, chunk_size=size)
        try:
            for chunk in self._plaintext(chunks):
                yield from chunker.compress(chunk)
            yield from chunker.finish()  # type: ignore[no-untyped-call]  # unannotated stub
        except zstandard.ZstdError as exc:
            raise CodecError(f"zstd compression failed: {exc}") from exc


def _rechunk(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """The same bytes in pieces of exactly `size` (the last may be shorter)."""
    pending = bytearray()
    for chunk in chunks:
        if not pending and len(chunk) == size:
            yield chunk
            continue
        view = memoryview(chunk)
        start = 0
        if pending:
            start = min(size - len(pending), len(view))
            pending += view[:start]
            if len(pending) < size:
                continue
            yield bytes(pending)
            pending.clear()
        while len(view) - start >= size:
            yield bytes(view[start : start + size])
            start += size
        pending += view[start:]
    if pending:
        yield bytes(pending)


def encode(
    chunks: Iterable[bytes],
    *,
    compression: str = "zstd",
    level: int = 3,
    key: Key | None = None,
    plaintext_length: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    threads: int = 0,
) -> EncodeStream:
    """Encode plaintext chunks into an object, streaming: compressed with zstd at `level`
    (1..22) unless `compression="none"`, then encrypted with AES-256-GCM when `key` is given.

    `plaintext_length`, when known, is recorded in the header, and the input must match it.
    `threads` > 0 lets zstd compress on that many extra threads."""
    if compression not in ("none", "zstd"):
        raise ValueError(f"compression must be 'none' or 'zstd', not {compression!r}")
    if not 1 <= level <= MAX_ZSTD_LEVEL:
        raise ValueError(f"zstd level must be between 1 and {MAX_ZSTD_LEVEL}, not {level}")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(
            f"chunk size must be between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE}, not {chunk_size}"
        )
    if plaintext_length is not None and plaintext_length < 0:
        raise ValueError(f"plaintext length cannot be negative ({plaintext_length})")
    if threads < 0:
        raise ValueError(f"threads cannot be negative ({threads})")
    header = ObjectHeader(
        compression=compression,
        encryption="none" if key is None else "aes-256-gcm",
        chunk_size=chunk_size,
        plaintext_length=plaintext_length,
        key_id=None if key is None else key.key_id,
        salt=os.urandom(SALT_SIZE),
    )
    return EncodeStream(chunks, header, key=key, level=level, threads=threads)


def encode_bytes(
    data: bytes, *, compression: str = "zstd", level: int = 3, key: Key | None = None
) -> tuple[bytes, Digest]:
    """Encode a whole small object (a history file, a manifest) in memory."""
    stream = encode(
        [data], compression=compression, level=level, key=key, plaintext_length=len(data)
    )
    return b"".join(stream), stream.digest
