"""Compressing a WAL segment while it is written: only complete pages are fed ahead, and
the result is used only when it matches the finished file byte for byte."""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import pytest

from pgwarden.codec import Key, decode_bytes
from pgwarden.wal import precompress
from pgwarden.wal.precompress import PAGE, Precompressor

SEGMENT = 1024 * 1024  # the smallest segment size PostgreSQL allows
NAME = "000000010000000000000002"  # starts at LSN 2 MiB with 1 MiB segments
START = 2 * SEGMENT


def page(address: int, body: bytes | None = None) -> bytes:
    header = struct.pack("<HHIQ", 0xD110, 0, 1, address)
    filler = body if body is not None else os.urandom(PAGE - len(header))
    return header + filler[: PAGE - len(header)]


@pytest.fixture
def segment(tmp_path: Path) -> Path:
    """A recycled segment: every page names a position of an older segment."""
    path = tmp_path / NAME
    path.write_bytes(b"".join(page(0x10000 + i * PAGE) for i in range(SEGMENT // PAGE)))
    return path


def write_pages(path: Path, first: int, count: int) -> None:
    with path.open("r+b") as out:
        for index in range(first, first + count):
            out.seek(index * PAGE)
            out.write(page(START + index * PAGE))


def ahead(path: Path, key: Key | None = None) -> Precompressor:
    return Precompressor(path.parent, lambda: SEGMENT, compression="zstd", level=1, key=key)


def test_a_recycled_segment_is_never_taken_for_new_wal(segment: Path) -> None:
    worker = ahead(segment)
    worker.follow([NAME])
    assert worker.finish(segment) is None  # nothing was fed, so nothing to finish


@pytest.mark.parametrize("key", [None, Key.generate()])
def test_pages_fed_ahead_give_the_same_object_as_the_whole_file(
    segment: Path, key: Key | None
) -> None:
    worker = ahead(segment, key)
    write_pages(segment, 0, 10)
    worker.follow([NAME])
    write_pages(segment, 10, 50)
    worker.follow([NAME])
    write_pages(segment, 60, SEGMENT // PAGE - 60)  # the segment is complete
    result = worker.finish(segment)
    assert result is not None
    encoded, sha256 = result
    data = segment.read_bytes()
    assert sha256 == hashlib.sha256(data).hexdigest()
    assert decode_bytes(encoded, keys=key, expected_sha256=sha256) == data
    assert (worker.hits, worker.misses) == (1, 0)


def test_the_page_still_filling_is_not_fed(segment: Path) -> None:
    worker = ahead(segment)
    write_pages(segment, 0, 3)
    worker.follow([NAME])
    # Pages 0 and 1 are complete (a valid page follows each); page 2 may still change.
    with segment.open("r+b") as out:
        out.seek(2 * PAGE)
        out.write(page(START + 2 * PAGE, b"\x01" * PAGE))
    write_pages(segment, 3, SEGMENT // PAGE - 3)
    with segment.open("r+b") as out:  # page 2 as finally written
        out.seek(2 * PAGE)
        out.write(page(START + 2 * PAGE, b"\x02" * PAGE))
    result = worker.finish(segment)
    assert result is not None
    assert decode_bytes(result[0], keys=None) == segment.read_bytes()


def test_a_page_changed_after_it_was_fed_falls_back_to_the_whole_file(segment: Path) -> None:
    worker = ahead(segment)
    write_pages(segment, 0, 20)
    worker.follow([NAME])
    write_pages(segment, 20, SEGMENT // PAGE - 20)
    with segment.open("r+b") as out:  # a crash and recovery rewrote page 5
        out.seek(5 * PAGE + 100)
        out.write(b"rewritten")
    assert worker.finish(segment) is None
    assert (worker.hits, worker.misses) == (0, 1)


def test_forgotten_segments_are_dropped(segment: Path) -> None:
    worker = ahead(segment)
    write_pages(segment, 0, 20)
    worker.follow([NAME])
    worker.forget(set())
    assert worker.finish(segment) is None


def test_a_file_shorter_than_what_was_fed_falls_back_to_the_whole_file(segment: Path) -> None:
    worker = ahead(segment)
    write_pages(segment, 0, SEGMENT // PAGE)
    worker.follow([NAME])
    assert worker.finish(segment) is not None  # its bytes stay in the reused buffer
    worker.follow([NAME])  # the same segment again (a restart), fed ahead once more
    with segment.open("r+b") as out:
        out.truncate(10 * PAGE)
    # What was fed matches the buffer's leftover bytes, not the file: no hit.
    assert worker.finish(segment) is None
    assert (worker.hits, worker.misses) == (1, 1)


def test_a_file_longer_than_a_segment_falls_back_to_the_whole_file(segment: Path) -> None:
    worker = ahead(segment)
    write_pages(segment, 0, SEGMENT // PAGE)
    worker.follow([NAME])
    with segment.open("ab") as out:
        out.write(b"x" * PAGE)
    assert worker.finish(segment) is None
    assert (worker.hits, worker.misses) == (0, 1)


def test_consecutive_segments_are_each_finished_from_what_was_fed(tmp_path: Path) -> None:
    """finish reuses one buffer: the second segment's result must be its own bytes."""
    worker = Precompressor(tmp_path, lambda: SEGMENT, compression="zstd", level=1, key=None)
    results = []
    for number in (2, 3):
        name = f"0000000100000000000000{number:02X}"
        start = number * SEGMENT
        path = tmp_path / name
        path.write_bytes(b"".join(page(start + i * PAGE) for i in range(SEGMENT // PAGE)))
        worker.follow([name])
        finished = worker.finish(path)
        assert finished is not None
        results.append((decode_bytes(finished[0], keys=None), path.read_bytes()))
    assert all(plain == data for plain, data in results)
    assert results[0][0] != results[1][0]
    assert (worker.hits, worker.misses) == (2, 0)


@pytest.mark.parametrize("written", [0, 1, 2, 7, 8, 9, 15, 16, 17, 100, SEGMENT // PAGE])
def test_complete_pages_are_counted_across_read_steps(segment: Path, written: int) -> None:
    write_pages(segment, 0, written)
    with segment.open("rb") as source:
        length = precompress._complete_length(source.fileno(), 0, START)
    assert length == max(0, written - 1) * PAGE  # the last valid page may still be filling


def test_complete_pages_are_counted_from_the_offset_given(segment: Path) -> None:
    write_pages(segment, 0, 40)
    with segment.open("rb") as source:
        assert precompress._complete_length(source.fileno(), 10 * PAGE, START) == 29 * PAGE


def test_a_page_torn_while_read_is_fed_as_it_ends_up(
    segment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first read catches page 3 half written and, a moment later, page 4 begun."""
    write_pages(segment, 0, 3)
    real = os.pread
    calls = 0

    def torn(fd: int, size: int, offset: int) -> bytes:
        nonlocal calls
        calls += 1
        if calls > 1:
            return real(fd, size, offset)
        before = real(fd, size, offset)
        write_pages(segment, 3, 3)
        after = real(fd, size, offset)
        half = 3 * PAGE + PAGE // 2
        return after[: 3 * PAGE + 2048] + before[3 * PAGE + 2048 : half] + after[half:]

    worker = ahead(segment)
    monkeypatch.setattr(precompress.os, "pread", torn)
    worker.follow([NAME])
    monkeypatch.undo()
    write_pages(segment, 6, SEGMENT // PAGE - 6)
    worker.follow([NAME])
    encoded = worker.finish(segment)
    assert encoded is not None and worker.misses == 0  # not compressed again from scratch
    assert decode_bytes(encoded[0], keys=None) == segment.read_bytes()


def test_a_segment_that_has_not_moved_costs_one_small_read(
    segment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_pages(segment, 0, 30)
    worker = ahead(segment)
    worker.follow([NAME])
    reads: list[int] = []
    real = os.pread

    def counted(fd: int, size: int, offset: int) -> bytes:
        reads.append(size)
        return real(fd, size, offset)

    monkeypatch.setattr(precompress.os, "pread", counted)
    worker.follow([NAME])  # nothing new since the last look
    assert reads == [precompress._PROBE]
    worker.forget(set())


def test_warming_up_prepares_the_buffer_the_first_finish_uses(segment: Path) -> None:
    worker = ahead(segment)
    worker.warm()
    prepared = worker._scratch
    assert len(prepared) == SEGMENT
    write_pages(segment, 0, SEGMENT // PAGE)
    worker.follow([NAME])
    encoded = worker.finish(segment)
    assert encoded is not None and decode_bytes(encoded[0], keys=None) == segment.read_bytes()
    assert worker._scratch is prepared
