"""Streaming compression, encryption and checksums for every object pgwarden stores.

An object is self-describing: a 64-byte header (format version, compression, encryption,
key id, chunk size, plaintext length when known), then records of at most one chunk size
(1 MiB by default) of the zstd stream, each sealed with AES-256-GCM or, unencrypted, a
CRC-32, then a final record holding the SHA-256 and length of the plaintext. The byte
layout is in `pgwarden.codec.format`, the key file rules in `pgwarden.codec.keys`.

    stream = encode(file_chunks, level=3, key=key)
    upload(stream)                      # iterate it
    stream.digest.sha256                # for the manifest, once exhausted
    for piece in decode(download(), keys=key, expected_sha256=sha):
        ...                             # valid only once exhausted without CodecError

`decode(..., verify="frame")` relies on zstd's frame checksum, which objects written now
carry, instead of computing the plaintext's SHA-256 (the larger part of decoding's CPU):
see `decode`.

Importing this package loads only hashlib, struct, zlib and binascii: about 3 ms here,
2 of them OpenSSL's hashlib. zstandard and cryptography (about 8 and 11 ms) are imported
on first use, so `wal-push` pays for them only when it has to encode.
"""

from pgwarden.codec.decoder import DecodeStream, decode, decode_bytes
from pgwarden.codec.encoder import Digest, EncodeStream, encode, encode_bytes
from pgwarden.codec.format import (
    DEFAULT_CHUNK_SIZE,
    FORMAT_VERSION,
    HEADER_SIZE,
    CodecError,
    ObjectHeader,
    read_header,
)
from pgwarden.codec.keys import Key, load_key, parse_key

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "CodecError",
    "DecodeStream",
    "Digest",
    "EncodeStream",
    "Key",
    "ObjectHeader",
    "decode",
    "decode_bytes",
    "encode",
    "encode_bytes",
    "load_key",
    "parse_key",
    "read_header",
]
