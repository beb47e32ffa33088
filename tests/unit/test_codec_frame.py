"""zstd frame checksums: every frame written now carries one, decode(verify="frame") trusts
it instead of computing the plaintext's SHA-256, and nothing trusts a frame checksum that
is missing, damaged or cut off. Objects written before frames carried one still decode,
checked by SHA-256 in both modes."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import pytest
import zstandard
from codec_objects import count_hashing, old_object, seal_object, zstd_body, zstd_frame
from hypothesis import given
from hypothesis import strategies as st

from pgwarden.codec import CodecError, Key, decode, encode
from pgwarden.codec.zstdframe import FrameFollower

KEY = Key(bytes(range(32)))
KEYS = [pytest.param(None, id="plain"), pytest.param(KEY, id="aes")]
Verify = Literal["sha256", "frame"]
VERIFY: list[Verify] = ["sha256", "frame"]
DATA = b"".join(b"row %06d of the frame tests\n" % (i * 7919 % 100_003) for i in range(200))
SHA256 = hashlib.sha256(DATA).hexdigest()

# Written by the codec before frames carried a checksum (see the file's "about").
OLD = json.loads((Path(__file__).parent / "data" / "codec_v1_objects.json").read_text())
OLD_PLAINTEXT = b"".join(
    b"tuple %08d filler %d\n" % (i * 7919 % 100_003, i % 7) for i in range(200)
)


def encode_all(data: bytes, key: Key | None, **options: int) -> bytes:
    return b"".join(encode([data], key=key, chunk_size=256, **options))  # type: ignore[arg-type]


def decode_all(blob: bytes, key: Key | None, verify: Verify, **options: str) -> bytes:
    return b"".join(decode([blob], keys=key, verify=verify, **options))


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    """How many plaintext bytes the decoder has put through SHA-256 so far."""
    counts = count_hashing(monkeypatch)
    return lambda: sum(counts)


# ------------------------------------------------------------- old objects, new objects


def test_the_old_objects_are_what_this_file_says() -> None:
    assert hashlib.sha256(OLD_PLAINTEXT).hexdigest() == OLD["plaintext_sha256"]
    for name, key in (("zstd+plain", None), ("zstd+aes", KEY)):
        frame = zstd_body(base64.b64decode(OLD["objects"][name]), key)
        assert zstandard.get_frame_parameters(frame).has_checksum is False


@pytest.mark.parametrize("verify", VERIFY)
@pytest.mark.parametrize("name", sorted(OLD["objects"]))
def test_objects_written_before_frame_checksums_decode_checked_by_sha256(
    name: str, verify: Verify, hashed: Callable[[], int]
) -> None:
    key = KEY if name.endswith("+aes") else None
    stream = decode([base64.b64decode(OLD["objects"][name])], keys=key, verify=verify)
    assert b"".join(stream) == OLD_PLAINTEXT
    assert hashed() == len(OLD_PLAINTEXT)
    assert stream.digest.sha256 == OLD["plaintext_sha256"]


@pytest.mark.parametrize(
    "options", [{}, {"plaintext_length": len(DATA)}, {"threads": 2}, {"level": 19}]
)
@pytest.mark.parametrize("key", KEYS)
def test_every_zstd_frame_written_now_carries_a_content_checksum(
    key: Key | None, options: dict[str, int]
) -> None:
    frame = zstd_body(encode_all(DATA, key, **options), key)
    assert zstandard.get_frame_parameters(frame).has_checksum is True


# ----------------------------------------------------------- which check runs, and when


@pytest.mark.parametrize("key", KEYS)
def test_frame_mode_trusts_the_frame_checksum_and_computes_no_sha256(
    key: Key | None, hashed: Callable[[], int]
) -> None:
    blob = encode_all(DATA, key)
    stream = decode([blob], keys=key, verify="frame")
    assert b"".join(stream) == DATA
    assert hashed() == 0
    digest = stream.digest
    assert (digest.sha256_computed, digest.plaintext_bytes, digest.encoded_bytes) == (
        False,
        len(DATA),
        len(blob),
    )
    with pytest.raises(RuntimeError, match="SHA-256 was not computed"):
        _ = digest.sha256


@pytest.mark.parametrize(
    ("compression", "verify", "expected"),
    [
        pytest.param("zstd", "sha256", None, id="sha256 mode"),
        pytest.param("none", "frame", None, id="frame mode, not compressed"),
        pytest.param("zstd", "frame", SHA256, id="frame mode, expected sha256 given"),
    ],
)
def test_sha256_is_computed_in_every_other_case(
    compression: str, verify: Verify, expected: str | None, hashed: Callable[[], int]
) -> None:
    stream = decode(
        encode([DATA], compression=compression, chunk_size=256),
        keys=None,
        verify=verify,
        expected_sha256=expected,
    )
    assert b"".join(stream) == DATA
    assert hashed() == len(DATA)
    assert stream.digest.sha256_computed is True
    assert stream.digest.sha256 == SHA256


def test_frame_mode_still_compares_an_expected_sha256() -> None:
    other = hashlib.sha256(b"what the manifest says").hexdigest()
    with pytest.raises(CodecError, match=f"^checksum mismatch: expected {other}, got {SHA256}$"):
        decode_all(encode_all(DATA, KEY), KEY, "frame", expected_sha256=other)


@pytest.mark.parametrize("verify", VERIFY)
@pytest.mark.parametrize("key", KEYS)
def test_without_a_frame_checksum_a_wrong_trailer_sha256_fails_in_both_modes(
    key: Key | None, verify: Verify
) -> None:
    frame = zstd_frame(DATA, checksum=False)
    assert decode_all(seal_object(frame, plaintext=DATA, key=key), key, verify) == DATA
    wrong = hashlib.sha256(b"something else").digest()
    blob = seal_object(frame, plaintext=DATA, key=key, sha256=wrong)
    with pytest.raises(
        CodecError, match=f"^checksum mismatch: the object records {wrong.hex()}, its data has "
    ):
        decode_all(blob, key, verify)


@pytest.mark.parametrize("key", KEYS)
def test_with_a_frame_checksum_only_sha256_mode_compares_the_trailers_sha256(
    key: Key | None,
) -> None:
    wrong = hashlib.sha256(b"something else").digest()
    blob = seal_object(zstd_frame(DATA, checksum=True), plaintext=DATA, key=key, sha256=wrong)
    with pytest.raises(CodecError, match=r"^checksum mismatch: the object records "):
        decode_all(blob, key, "sha256")
    assert decode_all(blob, key, "frame") == DATA


def test_an_unknown_verify_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="verify must be 'sha256' or 'frame'"):
        decode([b""], keys=None, verify="xxh64")  # type: ignore[arg-type]


# ------------------------------------------------------------------- damage, in both modes

CHECKSUM_FAILED = r"^object is corrupted: zstd decompression failed \(.*checksum"


@pytest.mark.parametrize("verify", VERIFY)
@pytest.mark.parametrize("key", KEYS)
def test_a_frame_whose_checksum_bytes_are_damaged_fails(key: Key | None, verify: Verify) -> None:
    frame = bytearray(zstd_frame(DATA, checksum=True))
    frame[-4:] = bytes(byte ^ 0xFF for byte in frame[-4:])
    blob = seal_object(bytes(frame), plaintext=DATA, key=key)  # records and trailer are right
    with pytest.raises(CodecError, match=CHECKSUM_FAILED):
        decode_all(blob, key, verify)


@pytest.mark.parametrize("verify", VERIFY)
@pytest.mark.parametrize("key", KEYS)
def test_a_frame_whose_data_changed_before_sealing_fails_on_its_checksum(
    key: Key | None, verify: Verify
) -> None:
    """Only the frame checksum can catch this one in frame mode: records, lengths and even
    the trailer's SHA-256 all describe the changed plaintext."""
    data = os.urandom(3000)  # incompressible: stored as a raw block, copied out verbatim
    frame = bytearray(zstd_frame(data, checksum=True))
    assert frame[-4 - len(data) : -4] == data
    frame[-10] ^= 0x01
    changed = bytes(frame[-4 - len(data) : -4])
    blob = seal_object(bytes(frame), plaintext=changed, key=key)
    with pytest.raises(CodecError, match=CHECKSUM_FAILED):
        decode_all(blob, key, verify)


@pytest.mark.parametrize("verify", VERIFY)
@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("missing", [1, 4, 5, 40])
def test_a_frame_missing_its_last_bytes_fails(
    key: Key | None, verify: Verify, missing: int
) -> None:
    """zstd's reader stops quietly where its input ends; with the checksum (4 bytes) gone,
    nothing would have checked the data."""
    frame = zstd_frame(DATA, checksum=True)
    blob = seal_object(frame[:-missing], plaintext=DATA, key=key)
    with pytest.raises(
        CodecError, match=r"^object is corrupted: its compressed data ends inside its zstd frame$"
    ):
        decode_all(blob, key, verify)


@pytest.mark.parametrize("verify", VERIFY)
@pytest.mark.parametrize(
    "extra",
    [b"\0", b"junk" * 100, b"\x28\xb5\x2f", zstd_frame(b"more", checksum=True)],
    ids=["byte", "junk", "part of a magic", "frame"],
)
def test_data_after_the_frame_fails(verify: Verify, extra: bytes) -> None:
    """zstd itself fails on bytes that cannot start another frame, if it reads them."""
    blob = seal_object(zstd_frame(DATA, checksum=True) + extra, plaintext=DATA)
    after = "compressed data continues after the end of its zstd frame"
    with pytest.raises(CodecError, match=f"^object is corrupted: ({after}|zstd decompression)"):
        decode_all(blob, None, verify)


@pytest.mark.parametrize("verify", VERIFY)
def test_a_body_that_is_not_a_zstd_frame_fails(verify: Verify) -> None:
    blob = seal_object(DATA, plaintext=DATA)  # compression says zstd, the body is plain
    with pytest.raises(
        CodecError, match=r"^object is corrupted: its compressed data does not start with a zstd"
    ):
        decode_all(blob, None, verify)


@pytest.mark.parametrize("key", KEYS)
def test_in_frame_mode_every_byte_of_an_object_is_protected(key: Key | None) -> None:
    blob = encode_all(DATA[:1500], key)
    for position in range(len(blob)):
        tampered = bytearray(blob)
        tampered[position] ^= 0x01
        with pytest.raises(CodecError):
            decode_all(bytes(tampered), key, "frame")


@pytest.mark.parametrize("key", KEYS)
def test_in_frame_mode_any_truncation_and_any_dropped_record_fails(key: Key | None) -> None:
    blob = encode_all(DATA, key)
    for length in range(len(blob)):
        with pytest.raises(CodecError):
            decode_all(blob[:length], key, "frame")
    header, records = blob[:64], []
    offset = 64
    while offset < len(blob):
        end = offset + 4 + (int.from_bytes(blob[offset : offset + 4], "big") & 0x7FFF_FFFF)
        records.append(blob[offset:end])
        offset = end
    assert len(records) > 2
    for dropped in range(len(records) - 1):  # the final record: the truncation above
        with pytest.raises(CodecError):
            decode_all(header + b"".join(records[:dropped] + records[dropped + 1 :]), key, "frame")


# ------------------------------------------------------------------------- round trips


@given(
    data=st.binary(max_size=2000) | st.sampled_from([DATA, bytes(300_000), DATA * 200]),
    chunk_size=st.integers(64, 1024),
    old=st.booleans(),
    key=st.sampled_from([None, KEY]),
    verify=st.sampled_from(VERIFY),
    cuts=st.lists(st.integers(0, 1 << 20), max_size=4),
)
def test_any_object_old_or_new_round_trips_in_both_modes_in_any_chunking(
    data: bytes, chunk_size: int, old: bool, key: Key | None, verify: Verify, cuts: list[int]
) -> None:
    if old:
        blob = old_object(data, key=key, chunk_size=chunk_size)
    else:
        blob = b"".join(encode([data], key=key, chunk_size=chunk_size))
    bounds = [0, *sorted(cut % (len(blob) + 1) for cut in cuts), len(blob)]
    pieces = [blob[a:b] for a, b in itertools.pairwise(bounds)]
    stream = decode(pieces, keys=key, verify=verify)
    assert b"".join(stream) == data
    assert stream.digest.sha256_computed is (old or verify == "sha256")


# ------------------------------------------------------------------ the frame follower

KINDS: dict[str, Callable[[int], bytes]] = {
    "random": os.urandom,
    "zeros": bytes,  # RLE blocks
    "text": lambda size: (DATA * (size // len(DATA) + 1))[:size],
}


@given(
    kind=st.sampled_from(sorted(KINDS)),
    size=st.integers(0, 400_000),
    checksum=st.booleans(),
    content_size=st.booleans(),
    level=st.sampled_from([1, 3, 19]),
    cuts=st.lists(st.integers(0, 1 << 20), max_size=6),
)
def test_the_frame_follower_finds_the_end_zstd_finds(
    kind: str, size: int, checksum: bool, content_size: bool, level: int, cuts: list[int]
) -> None:
    frame = zstd_frame(KINDS[kind](size), checksum=checksum, content_size=content_size, level=level)
    bounds = [0, *sorted(cut % (len(frame) + 1) for cut in cuts), len(frame)]
    follower = FrameFollower(lambda size: b"")
    for start, end in itertools.pairwise(bounds):
        assert not (follower.complete and end > start), "complete before its last bytes"
        follower.follow(frame[start:end])
    assert (follower.complete, follower.extra, follower.checksum) == (True, 0, checksum)

    short = FrameFollower(lambda size: b"")
    short.follow(frame[:-1])
    assert not short.complete
    longer = FrameFollower(lambda size: b"")
    longer.follow(frame + b"xyz")
    assert (longer.complete, longer.extra) == (True, 3)


def test_the_frame_follower_passes_the_bytes_on_unchanged() -> None:
    frame = zstd_frame(DATA, checksum=True)
    pieces = [frame[:3], frame[3:10], frame[10:]]
    follower = FrameFollower(lambda size: pieces.pop(0) if pieces else b"")
    assert b"".join(iter(lambda: follower.read(100), b"")) == frame
    assert follower.complete
