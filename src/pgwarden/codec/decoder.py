"""Decoding: the object's bytes in, checked plaintext out."""

from __future__ import annotations

import hashlib

from pgwarden.codec.encoder import Digest
from pgwarden.codec.format import (
    FINAL_FLAG,
    HEADER_SIZE,
    LENGTH,
    TRAILER,
    CodecError,
    ObjectHeader,
    Seal,
    read_header,
)
from pgwarden.codec.keys import Key, object_cipher
from pgwarden.codec.zstdframe import FrameFollower

TYPE_CHECKING = False  # typing costs milliseconds to import; the codec must load fast
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping
    from typing import Literal

    Verify = Literal["sha256", "frame"]

VERIFY_MODES = ("sha256", "frame")


class DecodeStream:
    """The plaintext of an object, chunk by chunk (each at most the object's chunk size).

    Every chunk is authenticated (or CRC-checked) before it is yielded, but truncation and
    the whole-object checksum are known only at the end: treat the output as valid only
    once the stream is exhausted without an error. `digest` is then available."""

    def __init__(
        self,
        chunks: Iterable[bytes],
        keys: Mapping[str, Key] | Key | None,
        expected_sha256: str | None,
        verify: Verify = "sha256",
    ) -> None:
        self.header: ObjectHeader | None = None  # set once the header has been read
        self._digest: Digest | None = None
        self._trust_frame = verify == "frame" and expected_sha256 is None
        self._plaintext = self._generate(chunks, keys, expected_sha256)

    def __iter__(self) -> DecodeStream:
        return self

    def __next__(self) -> bytes:
        return next(self._plaintext)

    @property
    def digest(self) -> Digest:
        """SHA-256 and sizes; known only once the stream is exhausted. In frame mode the
        SHA-256 may not have been computed: see `Digest.sha256_computed`."""
        if self._digest is None:
            raise RuntimeError("the digest is known only once the decoded stream is exhausted")
        return self._digest

    def _generate(
        self,
        chunks: Iterable[bytes],
        keys: Mapping[str, Key] | Key | None,
        expected_sha256: str | None,
    ) -> Iterator[bytes]:
        source = _Input(chunks)
        header = self.header = read_header(source.read(HEADER_SIZE))
        key = _key_for(header, keys)
        seal = Seal(header, None if key is None else object_cipher(key, header.salt))
        records = _Records(source, header, seal)
        sha256 = hashlib.sha256()
        hashing: bool | None = None  # decided on the first piece, when zstd has read the header
        count = 0
        declared = header.plaintext_length
        frame: FrameFollower | None = None
        if header.compression == "zstd":
            frame = FrameFollower(records.read)
            pieces = _decompress(frame, header.chunk_size)
        else:
            pieces = records.bodies()
        for piece in pieces:
            if hashing is None:
                hashing = self._must_hash(frame)
            if hashing:
                sha256.update(piece)
            count += len(piece)
            if declared is not None and count > declared:
                raise CodecError(
                    f"object is corrupted: it decodes to more than the {declared} bytes "
                    "its header records"
                )
            yield piece
        recorded_sha256, recorded_length = records.finish()
        if frame is not None:
            _check_frame_end(frame)
        if count != recorded_length:
            raise CodecError(
                f"object is corrupted: it decodes to {count} bytes, "
                f"but its trailer records {recorded_length}"
            )
        if declared not in (None, recorded_length):
            raise CodecError(
                f"object is corrupted: its header records {declared} bytes, "
                f"its trailer {recorded_length}"
            )
        if not (self._must_hash(frame) if hashing is None else hashing):
            # zstd verified the frame's XXH64 of the plaintext as it ended (a mismatch
            # raised above); the trailer's SHA-256 was compared with nothing.
            self._digest = Digest(None, count, source.offset)
            return
        actual = sha256.hexdigest()
        if actual != recorded_sha256.hex():
            raise CodecError(
                f"checksum mismatch: the object records {recorded_sha256.hex()}, "
                f"its data has {actual}"
            )
        if expected_sha256 is not None and actual != expected_sha256:
            raise CodecError(f"checksum mismatch: expected {expected_sha256}, got {actual}")
        self._digest = Digest(actual, count, source.offset)

    def _must_hash(self, frame: FrameFollower | None) -> bool:
        """Whether the plaintext's SHA-256 is computed: always, unless frame mode may trust
        a zstd frame that carries a content checksum."""
        return not (self._trust_frame and frame is not None and frame.checksum)


def decode(
    chunks: Iterable[bytes],
    *,
    keys: Mapping[str, Key] | Key | None,
    expected_sha256: str | None = None,
    verify: Verify = "sha256",
) -> DecodeStream:
    """Decode an object streamed in chunks of any size, checking every record, the trailer
    and, when given, the plaintext's SHA-256 (hex); raises CodecError on any mismatch.

    `keys` maps key ids to keys (a single key is accepted too); an unencrypted object
    decodes whatever is given.

    `verify` says how the plaintext as a whole is checked. "sha256" (the default) computes
    its SHA-256 and compares it with the one the trailer records. "frame" saves that
    (~9.5 ms of CPU per 16 MiB) when the object is zstd-compressed and its frame carries
    zstd's content checksum (XXH64 of the plaintext, which zstd verifies as the frame
    ends): the records' tags, the lengths and truncation are checked as ever, the
    trailer's SHA-256 is not, and `digest.sha256` is then not available. Objects without
    a frame checksum (written before pgwarden wrote one, or not compressed) and calls with
    `expected_sha256` are checked by SHA-256 in either mode."""
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be 'sha256' or 'frame', not {verify!r}")
    if expected_sha256 is not None:
        expected_sha256 = expected_sha256.lower()
        if len(expected_sha256) != 64 or expected_sha256.strip("0123456789abcdef"):
            raise ValueError(f"expected SHA-256 is not 64 hex characters: {expected_sha256!r}")
    return DecodeStream(chunks, keys, expected_sha256, verify)


def decode_bytes(
    data: bytes, *, keys: Mapping[str, Key] | Key | None, expected_sha256: str | None = None
) -> bytes:
    """Decode a whole small object in memory."""
    return b"".join(decode([data], keys=keys, expected_sha256=expected_sha256))


def _key_for(header: ObjectHeader, keys: Mapping[str, Key] | Key | None) -> Key | None:
    wanted = header.key_id
    if wanted is None:
        return None
    if keys is None:
        raise CodecError(f"object is encrypted with key id {wanted}, but no key was given")
    if isinstance(keys, Key):
        if keys.key_id != wanted:
            raise CodecError(
                f"object is encrypted with key id {wanted}, "
                f"but the key given has key id {keys.key_id}"
            )
        return keys
    key = keys.get(wanted)
    if key is None or key.key_id != wanted:
        have = ", ".join(sorted(k.key_id for k in keys.values())) or "none"
        raise CodecError(
            f"object is encrypted with key id {wanted}, but the keys given have key ids {have}"
        )
    return key


def _decompress(frame: FrameFollower, piece_size: int) -> Iterator[bytes]:
    import zstandard  # noqa: PLC0415 - costs ~8 ms to import; WAL fetches must start fast

    # A stream reader bounds each piece, however well the data compressed: 1 MiB of
    # zeros-only records can expand to gigabytes. Measured against it on 16 MiB WAL
    # segments: a decompressobj fed the records costs ~1 ms more (it copies its output once
    # more, and is bounded only if fed a few blocks at a time); a one-shot decompress into a
    # buffer of the recorded length saves under 1 ms, but holds the whole object in memory.
    reader = zstandard.ZstdDecompressor().stream_reader(
        frame,  # type: ignore[arg-type]  # any object with read() will do
        read_size=piece_size,
        read_across_frames=False,
    )
    try:
        while piece := reader.read(piece_size):
            yield piece
    except zstandard.ZstdError as exc:
        raise CodecError(f"object is corrupted: zstd decompression failed ({exc})") from None


def _check_frame_end(frame: FrameFollower) -> None:
    """zstd's reader stops quietly when its input ends inside the frame, before the frame's
    checksum (if any) is verified: the follower says whether it got the whole frame."""
    if frame.extra:
        raise CodecError(
            "object is corrupted: compressed data continues after the end of its zstd frame"
        )
    if not frame.complete:
        raise CodecError("object is corrupted: its compressed data ends inside its zstd frame")


class _Records:
    """Reads, checks and opens records; also the file-like source zstd pulls from (through
    a FrameFollower)."""

    def __init__(self, source: _Input, header: ObjectHeader, seal: Seal) -> None:
        self._source = source
        self._seal = seal
        self._largest = header.chunk_size + seal.tag_size
        self._index = 0
        self._trailer: tuple[bytes, int] | None = None
        self._pending = b""
        self._position = 0

    def _next_body(self) -> bytes | None:
        """The next data record's body; None once the final record has been read."""
        if self._trailer is not None:
            return None
        index, offset = self._index, self._source.offset
        word = self._source.read(LENGTH.size)
        if len(word) < LENGTH.size:
            where = "before its final chunk" if not word else f"inside chunk {index}"
            raise CodecError(f"object is truncated: it ends at byte {self._source.offset}, {where}")
        (length,) = LENGTH.unpack(word)
        final = bool(length & FINAL_FLAG)
        length &= ~FINAL_FLAG
        if not self._seal.tag_size <= length <= self._largest:
            raise CodecError(
                f"object is corrupted: chunk {index} (at byte {offset}) claims {length} bytes, "
                f"outside {self._seal.tag_size}..{self._largest}"
            )
        sealed = self._source.read(length)
        if len(sealed) < length:
            raise CodecError(
                f"object is truncated: it ends at byte {self._source.offset}, inside chunk {index}"
            )
        body = self._seal.open(index, sealed, final=final, offset=offset)
        self._index += 1
        if not final:
            return body
        if len(body) != TRAILER.size:
            raise CodecError(f"object is corrupted: its final chunk {index} is not a trailer")
        self._trailer = TRAILER.unpack(body)
        if self._source.read(1):
            raise CodecError(
                f"object is corrupted: data follows its final chunk, from byte {offset}"
            )
        return None

    def bodies(self) -> Iterator[bytes]:
        """Every data record's body, in order."""
        while (body := self._next_body()) is not None:
            if body:
                yield body

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes of the body stream; b"" at its end."""
        while self._position >= len(self._pending):
            body = self._next_body()
            if body is None:
                return b""
            self._pending, self._position = body, 0
        end = len(self._pending) if size < 0 else self._position + size
        piece = self._pending[self._position : end]
        self._position += len(piece)
        return piece

    def finish(self) -> tuple[bytes, int]:
        """Read up to the final record: the trailer's SHA-256 and plaintext length."""
        unread = len(self._pending) - self._position
        while (body := self._next_body()) is not None:
            unread += len(body)
        if unread:
            raise CodecError(
                "object is corrupted: compressed data continues after the end of its zstd frame"
            )
        assert self._trailer is not None  # _next_body returns None only after the trailer
        return self._trailer


class _Input:
    """Exact-size reads over an iterable of chunks of any size, copying each byte once."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._current = memoryview(b"")
        self.offset = 0  # bytes handed out so far

    def read(self, size: int) -> bytes:
        """Exactly `size` bytes, or fewer at the end of the input."""
        if len(self._current) >= size:
            piece = bytes(self._current[:size])
            self._current = self._current[size:]
        else:
            parts = [self._current]
            missing = size - len(self._current)
            self._current = memoryview(b"")
            while missing > 0:
                chunk = next(self._chunks, None)
                if chunk is None:
                    break
                view = memoryview(chunk if isinstance(chunk, bytes) else bytes(chunk))
                parts.append(view[:missing])
                self._current = view[missing:]
                missing -= len(parts[-1])
            piece = b"".join(parts)
        self.offset += len(piece)
        return piece
