"""The object format: header, records and trailer, and how each record is sealed.

Layout (all integers big-endian):

    header, 64 bytes
      0  8  magic b"\\x89PGW\\r\\n\\x1a\\n"
      8  1  format version (1)
      9  1  compression: 0 none, 1 zstd
     10  1  encryption: 0 none, 1 aes-256-gcm
     11  1  flags: bit 0 set when the plaintext length is recorded; other bits zero
     12  4  chunk size: the most body bytes one record carries (before its tag)
     16  8  plaintext length (0 when not recorded)
     24  8  key id (its 16 hex characters as 8 bytes), zeros when not encrypted
     32 28  salt: random per object
     60  4  CRC-32 of bytes 0..59
    records, each
         4  length of what follows; bit 31 set on the final record
         n  sealed body bytes: AES-256-GCM ciphertext and 16-byte tag, or the bytes and a
            4-byte CRC-32 when not encrypted
    the final record's body is the trailer: SHA-256 of the plaintext (32), its length (8)

The body is the plaintext, zstd-compressed or not, cut into chunk-size pieces. Every
record's tag covers the associated data `header || record index (8) || final flag (1)`,
so a record moved, dropped, repeated or taken from another object (whose salt differs)
fails its check. Encrypted records use a key derived from the master key and the salt,
with the record index as nonce (see keys.py).

A compressed body is one zstd frame. Frames written now carry zstd's content checksum
(XXH64 of the plaintext, the frame's last 4 bytes), which zstd verifies as it decodes the
frame's end, so a reader may rely on it instead of recomputing the trailer's SHA-256
(decode's verify="frame"). Objects written before have frames without one and decode as
they always did. The frame header's Content_Checksum_flag says which kind an object is,
so this is not a format version change.
"""

from __future__ import annotations

import struct
import zlib

from pgwarden.errors import PgwardenError

TYPE_CHECKING = False  # typing costs milliseconds to import; the codec must load fast
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"\x89PGW\r\n\x1a\n"
FORMAT_VERSION = 1
HEADER_SIZE = 64
SALT_SIZE = 28
DEFAULT_CHUNK_SIZE = 1 << 20
MIN_CHUNK_SIZE = 64
MAX_CHUNK_SIZE = 16 << 20
COMPRESSIONS = ("none", "zstd")  # position = code in the header
ENCRYPTIONS = ("none", "aes-256-gcm")
TAG_SIZES = {"none": 4, "aes-256-gcm": 16}
FINAL_FLAG = 0x8000_0000
LENGTH = struct.Struct(">I")
TRAILER = struct.Struct(">32sQ")

_HEADER = struct.Struct(">8sBBBBIQ8s28s")
_CRC = struct.Struct(">I")
_RECORD_POSITION = struct.Struct(">QB")
_LENGTH_KNOWN = 0x01


class CodecError(PgwardenError):
    """An object cannot be encoded or decoded; the message says what is wrong in one sentence."""


class ObjectHeader:
    """The parsed header of an encoded object."""

    __slots__ = (
        "chunk_size",
        "compression",
        "encryption",
        "key_id",
        "plaintext_length",
        "raw",
        "salt",
        "version",
    )

    def __init__(
        self,
        *,
        compression: str,
        encryption: str,
        chunk_size: int,
        plaintext_length: int | None,
        key_id: str | None,
        salt: bytes,
        version: int = FORMAT_VERSION,
    ) -> None:
        self.version = version
        self.compression = compression
        self.encryption = encryption
        self.chunk_size = chunk_size
        self.plaintext_length = plaintext_length
        self.key_id = key_id
        self.salt = salt
        fields = _HEADER.pack(
            MAGIC,
            version,
            COMPRESSIONS.index(compression),
            ENCRYPTIONS.index(encryption),
            _LENGTH_KNOWN if plaintext_length is not None else 0,
            chunk_size,
            plaintext_length or 0,
            bytes.fromhex(key_id) if key_id else bytes(8),
            salt,
        )
        self.raw = fields + _CRC.pack(zlib.crc32(fields))

    def __repr__(self) -> str:
        return (
            f"ObjectHeader(compression={self.compression!r}, encryption={self.encryption!r}, "
            f"key_id={self.key_id!r}, plaintext_length={self.plaintext_length!r}, "
            f"chunk_size={self.chunk_size})"
        )


def read_header(data: bytes) -> ObjectHeader:
    """Parse the first HEADER_SIZE bytes of an object (more are ignored)."""
    if not data:
        raise CodecError("object is empty")
    start = bytes(data[: len(MAGIC)])
    if start != MAGIC[: len(start)]:
        raise CodecError("not a pgwarden object (bad magic)")
    if len(data) > len(MAGIC) and data[len(MAGIC)] != FORMAT_VERSION:
        raise CodecError(
            f"object has unknown format version {data[len(MAGIC)]} (this pgwarden reads "
            f"version {FORMAT_VERSION}): written by a newer pgwarden, or corrupted"
        )
    if len(data) < HEADER_SIZE:
        raise CodecError(f"object is truncated: it ends at byte {len(data)}, inside its header")
    fields = bytes(data[: _HEADER.size])
    (stored_crc,) = _CRC.unpack_from(data, _HEADER.size)
    if zlib.crc32(fields) != stored_crc:
        raise CodecError("object header is corrupted (its CRC-32 does not match)")
    _, version, compression, encryption, flags, chunk_size, length, key_id, salt = _HEADER.unpack(
        fields
    )
    # The CRC passed, so anything below was written by another program or a newer format.
    if compression >= len(COMPRESSIONS) or encryption >= len(ENCRYPTIONS):
        raise CodecError(
            f"object uses compression code {compression} and encryption code {encryption}, "
            "which this pgwarden does not know"
        )
    if flags & ~_LENGTH_KNOWN or not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise CodecError("object header holds values this pgwarden does not support")
    encrypted = encryption != 0
    return ObjectHeader(
        version=version,
        compression=COMPRESSIONS[compression],
        encryption=ENCRYPTIONS[encryption],
        chunk_size=chunk_size,
        plaintext_length=length if flags & _LENGTH_KNOWN else None,
        key_id=key_id.hex() if encrypted else None,
        salt=salt,
    )


class Seal:
    """Protects records of one object: CRC-32 when not encrypted (accidents), else GCM."""

    __slots__ = ("_aead", "_header", "_header_crc", "tag_size")

    def __init__(self, header: ObjectHeader, aead: AESGCM | None) -> None:
        self._header = header.raw
        self._header_crc = zlib.crc32(header.raw)
        self._aead = aead
        self.tag_size = TAG_SIZES[header.encryption]

    def seal(self, index: int, body: bytes, *, final: bool) -> bytes:
        """The record for `body` at position `index`: length word and sealed bytes."""
        position = _RECORD_POSITION.pack(index, final)
        if self._aead is None:
            crc = zlib.crc32(body, zlib.crc32(position, self._header_crc))
            word = (len(body) + 4) | (FINAL_FLAG if final else 0)
            return b"".join((LENGTH.pack(word), body, _CRC.pack(crc)))
        sealed = self._aead.encrypt(_nonce(index), body, self._header + position)
        return LENGTH.pack(len(sealed) | (FINAL_FLAG if final else 0)) + sealed

    def open(self, index: int, sealed: bytes, *, final: bool, offset: int) -> bytes:
        """The body of a record read at byte `offset`, once its tag checks out."""
        position = _RECORD_POSITION.pack(index, final)
        if self._aead is None:
            body = sealed[:-4]
            (stored,) = _CRC.unpack_from(sealed, len(sealed) - 4)
            if zlib.crc32(body, zlib.crc32(position, self._header_crc)) != stored:
                raise CodecError(
                    f"checksum mismatch in chunk {index} (at byte {offset}): corrupted data"
                )
            return body
        from cryptography.exceptions import InvalidTag  # noqa: PLC0415 - loaded with the cipher

        try:
            return self._aead.decrypt(_nonce(index), sealed, self._header + position)
        except InvalidTag:
            raise CodecError(
                f"authentication failed in chunk {index} (at byte {offset}): "
                "wrong key or corrupted data"
            ) from None


def _nonce(index: int) -> bytes:
    # The key is unique to the object (derived from its random salt), so a counter never
    # repeats a nonce under one key.
    return index.to_bytes(12, "big")
