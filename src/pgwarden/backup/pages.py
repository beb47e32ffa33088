"""Data page checksums of relation files, verified as an online base backup reads them.

The checksum is PostgreSQL's (src/include/storage/checksum_impl.h): each 8 KiB page is 64
rows of 32 little-endian 32-bit words, each column folded into its own FNV-1a-like sum
(`h = (h ^ w) * FNV_PRIME ^ ((h ^ w) >> 17)`) with pd_checksum taken as zero, two more
rounds with zero, the 32 sums xor-ed, then the block number mixed in and the result reduced
to 1..65535. Words are read little-endian: clusters from big-endian hosts are not supported.

numpy runs the 32 sums of hundreds of pages in one operation per row, so the Python
overhead is ~66 x 4 calls per batch of 1024 pages (8 MiB), not per page: several GB/s on
one core here (benchmarks/pages.py), and the big operations release the GIL.

A page is bad, as pgBackRest judges it during an online backup, when it is not all zeros
(a new page), its pd_lsn is older than the backup's start LSN (a newer page is rewritten by
WAL replay, and may have been read half-written), and its pd_checksum is not the computed
one. A bad page can still be a torn read: `recheck` it before reporting. The caller must
also know that the cluster has data checksums on (pg_control's data_checksum_version).

    checker = PageChecker("base/5/16384.1", start_lsn)
    for chunk in file_chunks:
        checker.feed(chunk)
    suspects = [b for b in checker.finish() if not recheck(data_dir / path, b, start_lsn=lsn)]
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import numpy.typing as npt

BLOCK_SIZE = 8192
RELATION_SEGMENT_BLOCKS = 131072  # 1 GiB / 8 KiB: RELSEG_SIZE of a default build

_N_SUMS = 32
_ROWS = BLOCK_SIZE // (4 * _N_SUMS)
_FNV_PRIME = np.uint32(16777619)
# fmt: off
_BASE_OFFSETS = np.array(
    [
        0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2,
        0x83E13D2C, 0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C,
        0xF718902A, 0x0B1C9CDB, 0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979,
        0xCCA6C0B2, 0x304A0979, 0x85AA43D4, 0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E,
        0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
    ],
    dtype=np.uint32,
)
# fmt: on
# pd_checksum is the low half (little-endian) of the page's third 32-bit word.
_CHECKSUM_WORD = 2
_CHECKSUM_MASK = np.uint32(0xFFFF0000)
# Each batch costs ~264 numpy calls, and each call hands the GIL over twice. Measured
# here on 1 MiB chunks, 1 thread / 2 threads: 512 pages 2.65 / 2.26 GB/s, 1024 pages
# 2.45 / 2.85, 2048 pages 2.45 / 3.35 (with 16 MiB held per checker); 128 pages ~2 / -.
_BATCH_PAGES = 1024
_BATCH_BYTES = _BATCH_PAGES * BLOCK_SIZE

_FILE_NAME = r"(?P<node>[1-9]\d*)(?:_(?:fsm|vm|init))?(?:\.(?P<segno>[1-9]\d*))?"
_RELATION_FILE = re.compile(rf"(?:base/\d+|global|pg_tblspc/\d+/PG_[^/]+/\d+)/{_FILE_NAME}")
_SEGMENT_FILE = re.compile(_FILE_NAME)

_U32 = npt.NDArray[np.uint32]


def is_relation_file(relative_path: str) -> bool:
    """Whether a path relative to the data directory is a relation fork segment with checksums."""
    return _RELATION_FILE.fullmatch(relative_path) is not None


def first_block_number(relative_path: str) -> int:
    """The block number of a segment file's first page: segment number x 131072."""
    match = _SEGMENT_FILE.fullmatch(relative_path.rsplit("/", 1)[-1])
    if match is None:
        raise ValueError(f"{relative_path!r} is not a relation segment file")
    return int(match["segno"] or 0) * RELATION_SEGMENT_BLOCKS


def page_checksums(
    data: bytes | bytearray | memoryview, first_block: int
) -> npt.NDArray[np.uint16]:
    """The checksums PostgreSQL computes for each whole 8 KiB page of `data`."""
    view = memoryview(data).cast("B")
    pages = len(view) // BLOCK_SIZE
    result = np.empty(pages, dtype=np.uint16)
    for start in range(0, pages, _BATCH_PAGES):
        stop = min(start + _BATCH_PAGES, pages)
        batch = view[start * BLOCK_SIZE : stop * BLOCK_SIZE]
        result[start:stop] = _batch_checksums(batch, first_block + start)
    return result


def _batch_checksums(batch: memoryview, first_block: int) -> npt.NDArray[np.uint16]:
    pages = len(batch) // BLOCK_SIZE
    words = np.frombuffer(batch, dtype="<u4").reshape(pages, _ROWS, _N_SUMS)
    sums: _U32 = np.empty((pages, _N_SUMS), dtype=np.uint32)
    sums[:] = _BASE_OFFSETS
    mixed: _U32 = np.empty_like(sums)
    # In place with out=: no allocation per row, and the (pages, 32) views of each row
    # need no copy (128 contiguous bytes per page).
    for row in range(_ROWS):
        np.bitwise_xor(sums, words[:, row, :], out=mixed)
        if row == 0:
            first_words = words[:, 0, _CHECKSUM_WORD] & _CHECKSUM_MASK
            mixed[:, _CHECKSUM_WORD] = sums[:, _CHECKSUM_WORD] ^ first_words
        np.multiply(mixed, _FNV_PRIME, out=sums)
        mixed >>= 17
        sums ^= mixed
    for _ in range(2):
        np.right_shift(sums, 17, out=mixed)
        sums *= _FNV_PRIME
        sums ^= mixed
    folded: _U32 = np.bitwise_xor.reduce(sums, axis=1)
    folded ^= np.arange(first_block, first_block + pages, dtype=np.uint32)
    return (folded % 65535 + 1).astype(np.uint16)


def _bad_blocks(data: memoryview, first_block: int, start_lsn: int | None) -> list[int]:
    """Block numbers of the bad pages among the whole pages of `data` (see module doc)."""
    pages = len(data) // BLOCK_SIZE
    if pages == 0:
        return []
    computed = page_checksums(data, first_block)
    halves = np.frombuffer(data, dtype="<u2", count=pages * BLOCK_SIZE // 2)
    stored = halves.reshape(pages, BLOCK_SIZE // 2)[:, 4]
    suspects = np.flatnonzero(stored != computed)
    if suspects.size == 0:
        return []
    # Only mismatching pages get per-page work: new (all-zero) pages never match, since a
    # computed checksum is never 0, and pages changed after the backup started are rare.
    words = np.frombuffer(data, dtype="<u4", count=pages * BLOCK_SIZE // 4)
    words = words.reshape(pages, BLOCK_SIZE // 4)
    if start_lsn is not None:
        page_lsns = words[suspects, 0].astype(np.uint64) << np.uint64(32) | words[suspects, 1]
        suspects = suspects[page_lsns < np.uint64(start_lsn)]
    suspects = suspects[words[suspects].any(axis=1)]
    return [first_block + int(index) for index in suspects]


class PageChecker:
    """Checks pages of one relation file as its chunks stream by (chunks of any size)."""

    def __init__(self, relative_path: str, start_lsn: int) -> None:
        self.relative_path = relative_path
        self.start_lsn = start_lsn
        self.partial_tail = False  # set by finish(): a file being extended as it was read
        self._next_block = first_block_number(relative_path)
        self._bad: list[int] = []
        # Small chunks gather here into whole batches; big ones are checked in place. It
        # grows as needed: most relation files are a few pages, and there are thousands.
        self._pending = bytearray()

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        """Check the whole batches of pages that `chunk` completes; keep the rest for later."""
        view = memoryview(chunk).cast("B")
        if self._pending:
            take = min(len(view), _BATCH_BYTES - len(self._pending))
            self._pending += view[:take]
            view = view[take:]
            if len(self._pending) < _BATCH_BYTES:
                return
            self._check(memoryview(self._pending))
            self._pending = bytearray()
        direct = len(view) - len(view) % _BATCH_BYTES
        if direct:
            self._check(view[:direct])
        self._pending += view[direct:]

    def finish(self) -> list[int]:
        """Check what is left; return the block numbers of all bad pages, in file order."""
        whole = len(self._pending) - len(self._pending) % BLOCK_SIZE
        self._check(memoryview(self._pending)[:whole])
        self.partial_tail = len(self._pending) != whole
        self._pending = bytearray()
        return list(self._bad)

    def _check(self, pages: memoryview) -> None:
        self._bad.extend(_bad_blocks(pages, self._next_block, self.start_lsn))
        self._next_block += len(pages) // BLOCK_SIZE


def recheck(path: str | Path, block: int, *, start_lsn: int | None = None) -> bool:
    """Re-read block `block` of the segment file at `path`: is it valid now?

    A page that was bad only because it was read while PostgreSQL wrote it is valid on a
    second read. A block beyond the end of the file counts as valid: the relation was
    truncated since, and WAL replay truncates it again.
    """
    path = Path(path)
    index = block - first_block_number(path.name)
    if not 0 <= index < RELATION_SEGMENT_BLOCKS:
        raise ValueError(f"block {block} is not in segment file {path}")
    with path.open("rb") as segment:
        segment.seek(index * BLOCK_SIZE)
        page = segment.read(BLOCK_SIZE)
    if len(page) < BLOCK_SIZE:
        return True
    return not _bad_blocks(memoryview(page), block, start_lsn)
