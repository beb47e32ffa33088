"""Codec objects built record by record, with valid record tags around whatever body is
given: zstd frames without a content checksum (as pgwarden wrote them before frames
carried one), damaged frames, trailers that lie. The encoder writes none of these.
Also a stand-in for the decoder's hashlib that counts what it hashes."""

from __future__ import annotations

import hashlib
import os
import types

import pytest
import zstandard

from pgwarden.codec import HEADER_SIZE, Key, decoder, read_header
from pgwarden.codec.format import FINAL_FLAG, LENGTH, SALT_SIZE, TRAILER, ObjectHeader, Seal
from pgwarden.codec.keys import object_cipher


def zstd_frame(data: bytes, *, checksum: bool, content_size: bool = False, level: int = 3) -> bytes:
    compressor = zstandard.ZstdCompressor(
        level=level, write_checksum=checksum, write_content_size=content_size
    )
    return compressor.compress(data)


def seal_object(
    body: bytes,
    *,
    plaintext: bytes,
    compression: str = "zstd",
    key: Key | None = None,
    chunk_size: int = 256,
    declared: int | None = None,
    sha256: bytes | None = None,
) -> bytes:
    """An object whose records carry `body` (a zstd frame, or the plaintext itself) and
    whose trailer records `plaintext`'s length and SHA-256 (or `sha256` if given)."""
    header = ObjectHeader(
        compression=compression,
        encryption="none" if key is None else "aes-256-gcm",
        chunk_size=chunk_size,
        plaintext_length=declared,
        key_id=None if key is None else key.key_id,
        salt=os.urandom(SALT_SIZE),
    )
    seal = Seal(header, None if key is None else object_cipher(key, header.salt))
    records = [
        seal.seal(index, body[start : start + chunk_size], final=False)
        for index, start in enumerate(range(0, len(body), chunk_size))
    ]
    digest = hashlib.sha256(plaintext).digest() if sha256 is None else sha256
    records.append(seal.seal(len(records), TRAILER.pack(digest, len(plaintext)), final=True))
    return header.raw + b"".join(records)


def old_object(data: bytes, *, key: Key | None = None, chunk_size: int = 256) -> bytes:
    """`data` encoded as pgwarden did before zstd frames carried a content checksum."""
    return seal_object(
        zstd_frame(data, checksum=False), plaintext=data, key=key, chunk_size=chunk_size
    )


def zstd_body(blob: bytes, key: Key | None = None) -> bytes:
    """The zstd frame an encoded object's records carry, opened record by record."""
    header = read_header(blob)
    seal = Seal(header, None if key is None else object_cipher(key, header.salt))
    bodies: list[bytes] = []
    offset, index = HEADER_SIZE, 0
    while True:
        (word,) = LENGTH.unpack_from(blob, offset)
        final = bool(word & FINAL_FLAG)
        end = offset + LENGTH.size + (word & ~FINAL_FLAG)
        sealed = blob[offset + LENGTH.size : end]
        if final:
            return b"".join(bodies)
        bodies.append(seal.open(index, sealed, final=False, offset=offset))
        offset, index = end, index + 1


class CountingSha256:
    """hashlib.sha256 as the decoder uses it, adding up the bytes it is given."""

    def __init__(self, counts: list[int]) -> None:
        self._counts = counts
        self._inner = hashlib.sha256()

    def update(self, data: bytes) -> None:
        self._counts.append(len(data))
        self._inner.update(data)

    def hexdigest(self) -> str:
        return self._inner.hexdigest()


def count_hashing(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From now on, the sizes of what the decoder puts through SHA-256, in order."""
    counts: list[int] = []
    fake = types.SimpleNamespace(sha256=lambda: CountingSha256(counts))
    monkeypatch.setattr(decoder, "hashlib", fake)
    return counts
