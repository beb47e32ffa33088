"""Page checksum verification against pages written by a real PostgreSQL 15.

`data/pg15_pages.json` holds 7 pages (zlib, base64) with their relation paths and block
numbers: heap blocks 0, 1, 417 and 808 of a 60,000-row table, a B-tree leaf page, and the
table's free space map and visibility map pages. They were copied once from a cluster made
with `initdb -k` (x86-64) after CHECKPOINT and a clean stop, which `pg_checksums --check`
passed with 0 bad checksums.
"""

from __future__ import annotations

import base64
import itertools
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgwarden.backup.pages import (
    BLOCK_SIZE,
    RELATION_SEGMENT_BLOCKS,
    PageChecker,
    first_block_number,
    is_relation_file,
    page_checksums,
    recheck,
)

VECTORS = json.loads((Path(__file__).parent / "data" / "pg15_pages.json").read_text())["pages"]
REAL_PAGES = [
    (v["path"], v["block"], zlib.decompress(base64.b64decode(v["page"]))) for v in VECTORS
]
NO_LSN_LIMIT = 2**64 - 1  # every page is older than this backup start: none is skipped


def reference_checksum(page: bytes, block: int) -> int:
    """pg_checksum_page, transcribed word for word from checksum_impl.h."""
    base = [
        0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2,
        0x83E13D2C, 0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C,
        0xF718902A, 0x0B1C9CDB, 0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979,
        0xCCA6C0B2, 0x304A0979, 0x85AA43D4, 0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E,
        0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
    ]  # fmt: skip
    words = list(struct.unpack("<2048I", page[:8] + b"\0\0" + page[10:]))
    sums = list(base)

    def comp(checksum: int, value: int) -> int:
        tmp = checksum ^ value
        return ((tmp * 16777619) & 0xFFFFFFFF) ^ (tmp >> 17)

    for i in range(64):
        for j in range(32):
            sums[j] = comp(sums[j], words[i * 32 + j])
    for _ in range(2):
        for j in range(32):
            sums[j] = comp(sums[j], 0)
    result = 0
    for s in sums:
        result ^= s
    return (result ^ block) % 65535 + 1


def stored_checksum(page: bytes | bytearray) -> int:
    return int(struct.unpack_from("<H", page, 8)[0])


def with_checksum(page: bytearray, block: int) -> bytearray:
    struct.pack_into("<H", page, 8, int(page_checksums(page, block)[0]))
    return page


def bad_blocks(data: bytes, relative_path: str, start_lsn: int = NO_LSN_LIMIT) -> list[int]:
    checker = PageChecker(relative_path, start_lsn)
    checker.feed(data)
    return checker.finish()


def at_its_block(block: int, page: bytes) -> bytes:
    """A segment-0 file with `page` at `block` after zero (new) pages, which are skipped."""
    return bytes(block * BLOCK_SIZE) + page


def page_lsn(page: bytes) -> int:
    high, low = struct.unpack_from("<II", page, 0)
    return int(high) << 32 | int(low)


@pytest.mark.parametrize(("path", "block", "page"), REAL_PAGES, ids=[v["path"] for v in VECTORS])
def test_real_pages_have_the_checksum_postgresql_wrote(path: str, block: int, page: bytes) -> None:
    assert page_checksums(page, block).tolist() == [stored_checksum(page)]
    assert reference_checksum(page, block) == stored_checksum(page)
    assert bad_blocks(at_its_block(block, page), path) == []


def test_the_block_number_is_part_of_the_checksum() -> None:
    for path, block, page in REAL_PAGES:
        for other in (block + 1, block + 2, block + RELATION_SEGMENT_BLOCKS, 2**32 - 1):
            assert page_checksums(page, other)[0] != stored_checksum(page), (path, other)


@pytest.mark.parametrize(("path", "block", "page"), REAL_PAGES, ids=[v["path"] for v in VECTORS])
def test_a_page_moved_to_another_block_is_bad(path: str, block: int, page: bytes) -> None:
    moved = block + 1
    assert bad_blocks(at_its_block(moved, page), path) == [moved]


def test_inverting_any_byte_of_a_real_page_changes_its_checksum_almost_always() -> None:
    # Exhaustive over the 8,192 positions of each page. page_checksums numbers consecutive
    # pages, so copy i (byte i inverted) is compared with the intact page at block + i.
    misses = 0
    positions = np.arange(BLOCK_SIZE)
    for path, block, page in REAL_PAGES:
        intact = np.tile(np.frombuffer(page, dtype=np.uint8), (BLOCK_SIZE, 1))
        damaged = intact.copy()
        damaged[positions, positions] ^= 0xFF
        baseline = page_checksums(intact.tobytes(), block)
        computed = page_checksums(damaged.tobytes(), block)
        unchanged = set(np.flatnonzero(computed == baseline).tolist())
        assert {8, 9} <= unchanged, path  # pd_checksum itself is left out of the sum
        misses += len(unchanged) - 2
    # A 16-bit checksum lets about 1 change in 65,535 through: 0.9 expected of these
    # 57,330, 2 seen. A word or row left out of the sum would miss hundreds.
    assert misses <= 5


@settings(max_examples=150, deadline=None)
@given(
    which=st.integers(0, len(REAL_PAGES) - 1),
    position=st.integers(0, BLOCK_SIZE - 1),
    xor=st.integers(1, 255),
)
def test_changing_one_byte_makes_a_real_page_bad(which: int, position: int, xor: int) -> None:
    path, block, page = REAL_PAGES[which]
    damaged = bytearray(page)
    damaged[position] ^= xor
    # A 16-bit checksum misses about 1 change in 65,535 (see above): the independent
    # transcription of checksum_impl.h says which.
    missed = reference_checksum(bytes(damaged), block) == stored_checksum(damaged)
    assert not (missed and position in (8, 9))  # a new pd_checksum is always a mismatch
    expected = [] if missed else [block]
    assert bad_blocks(at_its_block(block, bytes(damaged)), path) == expected


@given(stored=st.integers(0, 0xFFFF))
def test_pd_checksum_is_left_out_of_the_computation(stored: int) -> None:
    _, block, page = REAL_PAGES[0]
    changed = bytearray(page)
    struct.pack_into("<H", changed, 8, stored)
    assert page_checksums(changed, block)[0] == stored_checksum(page)


def test_zero_pages_are_new_pages_and_pass() -> None:
    assert bad_blocks(bytes(5 * BLOCK_SIZE), "base/5/16384") == []
    almost_zero = bytearray(BLOCK_SIZE)
    almost_zero[4000] = 1
    assert bad_blocks(bytes(almost_zero), "base/5/16384") == [0]


def test_pages_changed_since_the_backup_started_are_skipped() -> None:
    path, block, page = REAL_PAGES[2]
    damaged = bytearray(page)
    damaged[5000] ^= 0xFF
    data = at_its_block(block, bytes(damaged))
    lsn = page_lsn(page)
    assert bad_blocks(data, path, start_lsn=lsn) == []
    assert bad_blocks(data, path, start_lsn=lsn - 1) == []
    assert bad_blocks(data, path, start_lsn=lsn + 1) == [block]


def test_page_lsn_compares_both_halves() -> None:
    page = bytearray(BLOCK_SIZE)
    page[100] = 7
    struct.pack_into("<II", page, 0, 2, 5)  # LSN 2/5, bad checksum (0)
    assert bad_blocks(bytes(page), "base/5/16384", start_lsn=(1 << 32) | 9) == []
    assert bad_blocks(bytes(page), "base/5/16384", start_lsn=(3 << 32) | 1) == [0]


def test_batched_checksums_equal_page_by_page_ones() -> None:
    rng = np.random.default_rng(7)
    data = rng.integers(0, 256, size=1100 * BLOCK_SIZE, dtype=np.uint8).tobytes()
    first = 5 * RELATION_SEGMENT_BLOCKS - 3
    batched = page_checksums(memoryview(data), first)
    one_by_one = [
        int(page_checksums(data[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE], first + i)[0])
        for i in range(1100)
    ]
    assert batched.tolist() == one_by_one
    for i in (0, 1023, 1024, 1099):
        page = data[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE]
        assert one_by_one[i] == reference_checksum(page, first + i)
    assert page_checksums(data[: BLOCK_SIZE - 1], 0).size == 0


SEGMENT = "pg_tblspc/16400/PG_15_202209061/5/16401.3"
SEGMENT_FIRST = 3 * RELATION_SEGMENT_BLOCKS
CORRUPT = (3, 511, 1000, 1023, 1024, 1099)


def synthetic_segment() -> tuple[bytes, list[int]]:
    """1,100 random valid pages with zero pages, corrupt pages and a new page, plus a tail."""
    rng = np.random.default_rng(2024)
    pages = []
    for index in range(1100):
        page = bytearray(rng.integers(0, 256, size=BLOCK_SIZE, dtype=np.uint8).tobytes())
        struct.pack_into("<II", page, 0, 0, 0x100000 + index)
        pages.append(with_checksum(page, SEGMENT_FIRST + index))
    for index in (7, 600):
        pages[index] = bytearray(BLOCK_SIZE)
    for index in (*CORRUPT, 800):
        pages[index][4096] ^= 0x5A
    struct.pack_into("<II", pages[800], 0, 1, 0)  # changed after the backup started
    data = b"".join(pages) + b"\x01" * 100
    return data, [SEGMENT_FIRST + index for index in CORRUPT]


SEGMENT_DATA, SEGMENT_BAD = synthetic_segment()
SEGMENT_START_LSN = 1 << 32


def test_one_feed_finds_the_corrupt_pages_and_the_partial_tail() -> None:
    checker = PageChecker(SEGMENT, SEGMENT_START_LSN)
    checker.feed(SEGMENT_DATA)
    assert checker.finish() == SEGMENT_BAD
    assert checker.partial_tail
    whole = PageChecker(SEGMENT, SEGMENT_START_LSN)
    whole.feed(SEGMENT_DATA[:-100])
    assert whole.finish() == SEGMENT_BAD
    assert not whole.partial_tail


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(0, len(SEGMENT_DATA)), max_size=25))
def test_chunk_boundaries_do_not_change_the_result(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(SEGMENT_DATA)]
    checker = PageChecker(SEGMENT, SEGMENT_START_LSN)
    view = memoryview(SEGMENT_DATA)
    for start, stop in itertools.pairwise(bounds):
        checker.feed(view[start:stop])
    assert checker.finish() == SEGMENT_BAD
    assert checker.partial_tail


@pytest.mark.parametrize("size", [1, 7, 4096, BLOCK_SIZE - 1, BLOCK_SIZE, BLOCK_SIZE + 1])
def test_small_chunks_of_a_small_file(size: int) -> None:
    data = SEGMENT_DATA[: 20 * BLOCK_SIZE] + b"\x02" * 10
    checker = PageChecker(SEGMENT, SEGMENT_START_LSN)
    for start in range(0, len(data), size):
        checker.feed(bytearray(data[start : start + size]))
    assert checker.finish() == [SEGMENT_FIRST + 3]
    assert checker.partial_tail


@pytest.mark.parametrize(
    "path",
    [
        "base/5/16384",
        "base/5/16384.1",
        "base/5/16384_fsm",
        "base/5/16384_vm",
        "base/5/16384_init",
        "base/5/16384_fsm.2",
        "global/1262",
        "global/1262_vm",
        "pg_tblspc/16400/PG_15_202209061/5/16401",
        "pg_tblspc/16400/PG_15_202209061/5/16401_vm.12",
    ],
)
def test_relation_files(path: str) -> None:
    assert is_relation_file(path)


@pytest.mark.parametrize(
    "path",
    [
        "base/5/pg_filenode.map",
        "global/pg_filenode.map",
        "global/pg_control",
        "base/5/PG_VERSION",
        "base/5/pg_internal.init",
        "base/5/16384_ptrack",
        "base/5/t3_16384",
        "base/5/t3_16384.1",
        "base/5/16384.",
        "base/5/16384_fsm_vm",
        "base/pgsql_tmp/pgsql_tmp1234.0",
        "pg_tblspc/16400/PG_15_202209061/pgsql_tmp/pgsql_tmp1234.0",
        "pg_wal/000000010000000000000001",
        "pg_xact/0000",
        "pg_multixact/offsets/0000",
        "base/5",
        "/base/5/16384",
        "16384",
    ],
)
def test_not_relation_files(path: str) -> None:
    assert not is_relation_file(path)


def test_first_block_number() -> None:
    assert first_block_number("base/5/16384") == 0
    assert first_block_number("base/5/16384.1") == RELATION_SEGMENT_BLOCKS
    assert first_block_number("pg_tblspc/1/PG_15_2/5/16401_fsm.2") == 2 * 131072
    with pytest.raises(ValueError, match="not a relation segment"):
        first_block_number("base/5/PG_VERSION")
    with pytest.raises(ValueError, match="not a relation segment"):
        PageChecker("global/pg_control", 0)


def test_recheck_reads_the_block_again(tmp_path: Path) -> None:
    page = REAL_PAGES[0][2]
    first = RELATION_SEGMENT_BLOCKS
    good = with_checksum(bytearray(page), first)
    bad = bytearray(good)
    bad[3000] ^= 1
    segment = tmp_path / "16384.1"
    segment.write_bytes(bytes(good) + bytes(bad) + bytes(BLOCK_SIZE))
    assert recheck(segment, first)
    assert not recheck(segment, first + 1)
    assert recheck(segment, first + 1, start_lsn=page_lsn(page))
    assert recheck(segment, first + 2)  # a new page
    assert recheck(segment, first + 9)  # truncated since the first read
    segment.write_bytes(bytes(good) + with_checksum(bad, first + 1))  # the write completed
    assert recheck(str(segment), first + 1)
    with pytest.raises(ValueError, match="not in segment"):
        recheck(segment, 0)
