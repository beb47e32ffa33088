"""The object codec: round trips, the byte layout, tampering, keys and bounded memory."""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgwarden.codec import (
    HEADER_SIZE,
    CodecError,
    Key,
    decode,
    decode_bytes,
    encode,
    encode_bytes,
    load_key,
    parse_key,
    read_header,
)
from pgwarden.codec.format import FINAL_FLAG, LENGTH, Seal
from pgwarden.errors import PgwardenError

KEY = Key(bytes(range(32)))
OTHER_KEY = Key(bytes(range(1, 33)))
SMALL_CHUNK = 256
MODES = [
    pytest.param("none", None, id="plain"),
    pytest.param("zstd", None, id="zstd"),
    pytest.param("none", KEY, id="aes"),
    pytest.param("zstd", KEY, id="zstd+aes"),
]


def mixed(size: int, seed: int = 0) -> bytes:
    """Repetitive text with a varying number in every line: compresses well, not to nothing."""
    lines = b"".join(
        b"tuple %08d filler %d\n" % (i * 7919 % 100_003, seed) for i in range(size // 20 + 1)
    )
    return lines[:size]


def encode_all(data: bytes, compression: str, key: Key | None, **options: int) -> bytes:
    return b"".join(encode([data], compression=compression, key=key, **options))


def decode_all(blob: bytes, keys: Mapping[str, Key] | Key | None = KEY, **options: str) -> bytes:
    return b"".join(decode([blob], keys=keys, **options))


def split_records(blob: bytes) -> tuple[bytes, list[bytes]]:
    """The header and the records (length word included) of an encoded object."""
    records, offset = [], HEADER_SIZE
    while offset < len(blob):
        (word,) = LENGTH.unpack_from(blob, offset)
        end = offset + LENGTH.size + (word & ~FINAL_FLAG)
        records.append(blob[offset:end])
        offset = end
    return blob[:HEADER_SIZE], records


def cut(data: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *sorted(points), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# ---------------------------------------------------------------------------- round trips

PAYLOADS = {
    "empty": b"",
    "tiny": b"x",
    "one chunk": os.urandom(SMALL_CHUNK),
    "many chunks": mixed(SMALL_CHUNK * 40 + 17),
    "incompressible": os.urandom(SMALL_CHUNK * 12 + 5),
}


@pytest.mark.parametrize(("compression", "key"), MODES)
@pytest.mark.parametrize("name", list(PAYLOADS))
def test_round_trip_gives_back_the_plaintext_and_its_digest(
    compression: str, key: Key | None, name: str
) -> None:
    data = PAYLOADS[name]
    stream = encode([data[:7], data[7:]], compression=compression, key=key, chunk_size=SMALL_CHUNK)
    blob = b"".join(stream)
    assert stream.digest.sha256 == hashlib.sha256(data).hexdigest()
    assert stream.digest.plaintext_bytes == len(data)
    assert stream.digest.encoded_bytes == len(blob)

    decoded = decode([blob], keys=key, expected_sha256=stream.digest.sha256)
    pieces = list(decoded)
    assert b"".join(pieces) == data
    assert all(0 < len(piece) <= SMALL_CHUNK for piece in pieces)
    assert decoded.digest == stream.digest


def test_an_unencrypted_uncompressed_chunk_costs_a_length_word_and_a_crc() -> None:
    blob = encode_all(PAYLOADS["one chunk"], "none", None, chunk_size=SMALL_CHUNK)
    header, records = split_records(blob)
    assert [len(r) for r in records] == [4 + SMALL_CHUNK + 4, 4 + 40 + 4]
    assert records[0][4 : 4 + SMALL_CHUNK] == PAYLOADS["one chunk"]
    assert len(header) == 64


def test_encryption_hides_the_plaintext_and_costs_a_tag_per_chunk() -> None:
    data = mixed(SMALL_CHUNK * 3)
    blob = encode_all(data, "none", KEY, chunk_size=SMALL_CHUNK)
    _, records = split_records(blob)
    assert [len(r) for r in records] == [4 + SMALL_CHUNK + 16] * 3 + [4 + 40 + 16]
    assert b"tuple tuple" not in blob


def test_compression_shrinks_repetitive_data() -> None:
    data = mixed(1 << 20)
    assert len(encode_all(data, "zstd", None)) < len(data) // 10
    assert len(encode_all(data, "zstd", None, level=19)) < len(encode_all(data, "zstd", None))


def test_zstd_threads_give_the_same_plaintext_back() -> None:
    data = mixed(3 << 20, seed=1)
    assert decode_all(encode_all(data, "zstd", KEY, threads=2)) == data


def test_encode_bytes_and_decode_bytes_round_trip() -> None:
    blob, digest = encode_bytes(b"00000002.history contents", key=KEY)
    assert digest.plaintext_bytes == 25
    assert decode_bytes(blob, keys={KEY.key_id: KEY}) == b"00000002.history contents"


@pytest.mark.parametrize(("compression", "key"), MODES)
def test_the_header_describes_the_object(compression: str, key: Key | None) -> None:
    header = read_header(encode_all(b"abc", compression, key, plaintext_length=3))
    assert (header.compression, header.plaintext_length) == (compression, 3)
    assert header.encryption == ("none" if key is None else "aes-256-gcm")
    assert header.key_id == (None if key is None else key.key_id)
    assert read_header(encode_all(b"abc", compression, key)).plaintext_length is None


def test_two_encodings_of_the_same_data_differ_but_decode_alike() -> None:
    first, second = (encode_all(b"same", "zstd", KEY) for _ in range(2))
    assert first != second
    assert decode_all(first) == decode_all(second) == b"same"


@given(
    data=st.binary(max_size=3000),
    compression=st.sampled_from(["none", "zstd"]),
    encrypted=st.booleans(),
    chunk_size=st.sampled_from([64, 100, 1 << 20]),
    draw=st.data(),
)
def test_any_bytes_in_any_chunking_round_trip(
    data: bytes, compression: str, encrypted: bool, chunk_size: int, draw: st.DataObject
) -> None:
    key = KEY if encrypted else None
    points = draw.draw(st.lists(st.integers(0, len(data)), max_size=8), label="input cuts")
    stream = encode(cut(data, points), compression=compression, key=key, chunk_size=chunk_size)
    blob = b"".join(stream)
    points = draw.draw(st.lists(st.integers(0, len(blob)), max_size=8), label="encoded cuts")
    decoded = decode(cut(blob, points), keys=key, expected_sha256=stream.digest.sha256)
    assert b"".join(decoded) == data
    assert decoded.digest == stream.digest


# ------------------------------------------------------------------------------ tampering

PLAINTEXT = os.urandom(SMALL_CHUNK * 6)
OBJECTS = {
    (compression, key): encode_all(PLAINTEXT, compression, key, chunk_size=SMALL_CHUNK)
    for compression in ("none", "zstd")
    for key in (None, KEY)
}


def decoded_until_error(blob: bytes, key: Key | None) -> tuple[bytes, CodecError]:
    """What decode yields before it raises, and what it raises."""
    out = bytearray()
    with pytest.raises(CodecError) as caught:
        for piece in decode([blob], keys=key):
            out += piece
    return bytes(out), caught.value


@pytest.mark.parametrize(("compression", "key"), MODES)
@given(draw=st.data(), mask=st.integers(1, 255))
def test_any_flipped_bits_are_detected_and_no_wrong_byte_is_yielded(
    compression: str, key: Key | None, draw: st.DataObject, mask: int
) -> None:
    original = OBJECTS[compression, key]
    position = draw.draw(st.integers(0, len(original) - 1), label="position")
    tampered = bytearray(original)
    tampered[position] ^= mask
    yielded, _ = decoded_until_error(bytes(tampered), key)
    assert PLAINTEXT.startswith(yielded)


@pytest.mark.parametrize(("compression", "key"), MODES)
def test_every_byte_of_an_object_is_protected(compression: str, key: Key | None) -> None:
    original = OBJECTS[compression, key]
    for position in range(len(original)):
        tampered = bytearray(original)
        tampered[position] ^= 0x01
        with pytest.raises(CodecError):
            b"".join(decode([bytes(tampered)], keys=key))


@pytest.mark.parametrize(("compression", "key"), MODES)
@given(length=st.integers(min_value=0))
def test_any_truncation_is_detected(compression: str, key: Key | None, length: int) -> None:
    original = OBJECTS[compression, key]
    decoded_until_error(original[: length % len(original)], key)


@pytest.mark.parametrize(("compression", "key"), MODES)
def test_dropping_the_final_chunk_is_reported_as_truncation(
    compression: str, key: Key | None
) -> None:
    header, records = split_records(OBJECTS[compression, key])
    _, error = decoded_until_error(header + b"".join(records[:-1]), key)
    assert "object is truncated" in str(error)
    assert "before its final chunk" in str(error)


@pytest.mark.parametrize(("compression", "key"), MODES)
def test_dropping_the_last_data_chunk_is_detected(compression: str, key: Key | None) -> None:
    header, records = split_records(OBJECTS[compression, key])
    assert len(records) > 2
    decoded_until_error(header + b"".join(records[:-2] + records[-1:]), key)


@pytest.mark.parametrize(("compression", "key"), MODES)
def test_swapped_chunks_are_detected(compression: str, key: Key | None) -> None:
    header, records = split_records(OBJECTS[compression, key])
    records[0], records[1] = records[1], records[0]
    _, error = decoded_until_error(header + b"".join(records), key)
    expected = "checksum mismatch in chunk 0" if key is None else "authentication failed in chunk 0"
    assert str(error).startswith(expected)


@pytest.mark.parametrize(("compression", "key"), MODES)
def test_a_chunk_from_another_object_is_detected(compression: str, key: Key | None) -> None:
    data = mixed(SMALL_CHUNK * 3)
    header, records = split_records(encode_all(data, compression, key, chunk_size=SMALL_CHUNK))
    _, others = split_records(encode_all(data, compression, key, chunk_size=SMALL_CHUNK))
    decoded_until_error(header + b"".join([others[0], *records[1:]]), key)


@pytest.mark.parametrize(("compression", "key"), MODES)
def test_data_after_the_final_chunk_is_detected(compression: str, key: Key | None) -> None:
    _, error = decoded_until_error(OBJECTS[compression, key] + b"\0", key)
    assert "data follows its final chunk" in str(error)


def test_the_plaintext_checksum_catches_corruption_the_chunk_checks_missed() -> None:
    """A chunk rewritten with a valid CRC (a bug, or a deliberate edit of an unencrypted
    object) still fails on the SHA-256 of the plaintext recorded in the trailer."""
    blob = encode_all(b"A" * 100, "none", None)
    header, records = split_records(blob)
    forged = Seal(read_header(header), None).seal(0, b"B" * 100, final=False)
    _, error = decoded_until_error(header + forged + records[1], None)
    assert str(error).startswith("checksum mismatch: the object records ")


@pytest.mark.parametrize(("compression", "key"), MODES)
def test_a_different_object_fails_the_expected_checksum(compression: str, key: Key | None) -> None:
    expected = hashlib.sha256(b"what the manifest says").hexdigest()
    got = hashlib.sha256(b"what is stored").hexdigest()
    blob = encode_all(b"what is stored", compression, key)
    with pytest.raises(CodecError, match=f"^checksum mismatch: expected {expected}, got {got}$"):
        decode_all(blob, key, expected_sha256=expected.upper())


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "object is empty"),
        (b"PK\x03\x04 a zip file", r"not a pgwarden object \(bad magic\)"),
        (b"\x89PGW\r\n", "object is truncated: it ends at byte 6, inside its header"),
        (b"\x89PGW\r\n\x1a\n\x02" + bytes(60), "unknown format version 2"),
    ],
)
def test_objects_that_are_not_ours_are_named_so(blob: bytes, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        decode_all(blob)


def test_a_corrupted_header_is_named_as_such() -> None:
    blob = bytearray(OBJECTS["none", KEY])
    blob[30] ^= 1  # inside the key id
    with pytest.raises(CodecError, match=r"^object header is corrupted"):
        decode_all(bytes(blob))


def test_codec_errors_are_pgwarden_errors() -> None:
    assert issubclass(CodecError, PgwardenError)


# ----------------------------------------------------------------------------------- keys


def test_decoding_with_the_wrong_key_names_both_key_ids() -> None:
    blob = encode_all(b"secret", "zstd", KEY)
    with pytest.raises(CodecError) as caught:
        decode_all(blob, OTHER_KEY)
    assert str(caught.value) == (
        f"object is encrypted with key id {KEY.key_id}, "
        f"but the key given has key id {OTHER_KEY.key_id}"
    )
    with pytest.raises(CodecError, match=f"key id {KEY.key_id}, but the keys given have key ids "):
        b"".join(decode([blob], keys={OTHER_KEY.key_id: OTHER_KEY}))
    with pytest.raises(CodecError, match=f"key id {KEY.key_id}, but no key was given"):
        decode_all(blob, None)


def test_a_key_ring_finds_the_key_an_object_needs() -> None:
    ring = {k.key_id: k for k in (OTHER_KEY, KEY)}
    assert decode_all(encode_all(b"old backup", "zstd", KEY), ring) == b"old backup"


def test_a_key_id_is_the_start_of_the_keys_sha256() -> None:
    assert KEY.key_id == hashlib.sha256(bytes(range(32))).hexdigest()[:16]
    assert repr(KEY) == f"Key(key_id='{KEY.key_id}')"  # never the secret


def write_key(tmp_path: Path, content: bytes, mode: int = 0o600) -> Path:
    path = tmp_path / "pgwarden.key"
    path.write_bytes(content)
    path.chmod(mode)
    return path


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(bytes(range(32)), id="raw"),
        pytest.param(bytes(range(32)).hex().encode() + b"\n", id="hex"),
        pytest.param(bytes(range(32)).hex().upper().encode(), id="HEX"),
        pytest.param(base64.b64encode(bytes(range(32))) + b"\n", id="base64"),
    ],
)
def test_a_key_file_holds_raw_hex_or_base64_bytes(tmp_path: Path, content: bytes) -> None:
    assert load_key(write_key(tmp_path, content)).key_id == KEY.key_id


@pytest.mark.parametrize(
    "content",
    [b"", bytes(31), bytes(33), b"z" * 64, b"secret-passphrase\n", b"=" * 44, bytes(range(32)) * 2],
)
def test_a_key_file_of_the_wrong_shape_is_refused_without_echoing_it(
    tmp_path: Path, content: bytes
) -> None:
    path = write_key(tmp_path, content)
    with pytest.raises(CodecError, match="neither 32 raw bytes, 64 hex characters nor 44 base64"):
        load_key(path)
    with pytest.raises(CodecError) as caught:
        parse_key(content)
    assert "passphrase" not in str(caught.value)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606])
def test_a_key_file_others_can_access_is_refused(tmp_path: Path, mode: int) -> None:
    path = write_key(tmp_path, bytes(32), mode)
    with pytest.raises(CodecError) as caught:
        load_key(path)
    assert str(caught.value) == (
        f"key file {path} is accessible by group or others (mode {mode:04o}); run chmod 600 {path}"
    )


def test_a_read_only_key_file_is_fine(tmp_path: Path) -> None:
    assert load_key(write_key(tmp_path, bytes(range(32)), 0o400)).key_id == KEY.key_id


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file away")
def test_a_key_file_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    path = write_key(tmp_path, bytes(32))
    os.chown(path, 4321, 4321)
    with pytest.raises(CodecError, match=r"is owned by uid 4321; it must be owned by the user"):
        load_key(path)


def test_a_missing_odd_or_huge_key_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(CodecError) as caught:
        load_key(tmp_path / "absent")
    assert str(caught.value) == f"key file {tmp_path}/absent does not exist"
    with pytest.raises(CodecError, match="is not a regular file"):
        load_key(tmp_path)
    with pytest.raises(CodecError, match="is larger than 4096 bytes"):
        load_key(write_key(tmp_path, bytes(1 << 20)))


# ------------------------------------------------------------------------ bad arguments


@pytest.mark.parametrize(
    "options",
    [{"level": 0}, {"level": 23}, {"compression": "lz4"}, {"chunk_size": 1}, {"threads": -1}],
)
def test_bad_options_fail_at_once(options: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"must be|cannot be"):
        encode([b"x"], **options)


@pytest.mark.parametrize(("declared", "actual"), [(10, 9), (10, 11), (0, 1)])
@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_input_that_does_not_match_its_declared_length_fails(
    declared: int, actual: int, compression: str
) -> None:
    with pytest.raises(CodecError, match=f"{declared} bytes? declared|declared as its length"):
        b"".join(encode([b"x" * actual], compression=compression, plaintext_length=declared))


def test_the_digest_is_not_known_before_the_end() -> None:
    stream = encode([b"abc"])
    next(stream)
    with pytest.raises(RuntimeError, match="exhausted"):
        stream.digest  # noqa: B018


def test_a_bad_expected_checksum_is_refused() -> None:
    with pytest.raises(ValueError, match="64 hex"):
        decode([b""], keys=None, expected_sha256="abc")


# ------------------------------------------------------------------------ memory, imports


def random_chunks(total: int, size: int = 1 << 20) -> Iterator[bytes]:
    for _ in range(total // size):
        yield os.urandom(size)


def peak_allocation(work: object) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        assert callable(work)
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_encoding_64_mib_holds_a_few_chunks_at_most(compression: str) -> None:
    def encode_size(total: int) -> int:
        def drain() -> None:
            for _ in encode(random_chunks(total), compression=compression, level=1, key=KEY):
                pass

        return peak_allocation(drain)

    small, large = encode_size(8 << 20), encode_size(64 << 20)
    assert large < 8 << 20  # 1 MiB chunks: the input chunk, its compressed and sealed forms
    assert large < small + (256 << 10)  # and it does not grow with the input


def test_an_encode_decode_pipeline_of_64_mib_stays_bounded() -> None:
    def pipeline() -> None:
        stream = encode(random_chunks(64 << 20), level=1, key=KEY)
        assert sum(len(piece) for piece in decode(stream, keys=KEY)) == 64 << 20

    assert peak_allocation(pipeline) < 12 << 20


def test_a_highly_compressed_object_decodes_in_bounded_pieces() -> None:
    zeros = (bytes(1 << 20) for _ in range(256))  # 256 MiB of zeros: a few kB encoded
    blob = b"".join(encode(zeros, key=KEY))
    assert len(blob) < 64 << 10

    def drain() -> None:
        for piece in decode([blob], keys=KEY):
            assert len(piece) <= 1 << 20

    assert peak_allocation(drain) < 6 << 20


def test_importing_the_codec_loads_neither_zstandard_nor_cryptography() -> None:
    code = (
        "import sys, pgwarden.codec; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('zstandard', 'cryptography', 'typing', 'dataclasses')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
