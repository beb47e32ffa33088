"""wal.max_backlog_bytes: with storage down and too much WAL waiting, the oldest segment is
given up loudly instead of filling the primary's disk."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from pgwarden.storage import FsStore, StorageError
from pgwarden.storage.layout import Layout
from pgwarden.wal.archive import WalArchive
from pgwarden.wal.archiver import Archiver

SEGMENT = 1024 * 1024


class DownStore(FsStore):
    """An fs store whose writes fail, as storage that is down."""

    def put(self, key: str, data: bytes, metadata: Mapping[str, str] | None = None, *,
            if_absent: bool = False) -> None:  # fmt: skip
        raise StorageError(f"cannot write {key}: storage is down")

    def put_stream(self, key: str, chunks: Iterable[bytes], metadata: Any = None, *,
                   if_absent: bool = False) -> int:  # fmt: skip
        raise StorageError(f"cannot write {key}: storage is down")


@pytest.fixture
def pg_wal(tmp_path: Path) -> Iterator[Path]:
    wal = tmp_path / "pg_wal"
    (wal / "archive_status").mkdir(parents=True)
    for n in range(1, 5):
        name = f"0000000100000000000000{n:02X}"
        (wal / name).write_bytes(bytes([n]) * SEGMENT)
        (wal / "archive_status" / f"{name}.ready").touch()
    yield wal


def archiver(tmp_path: Path, pg_wal: Path, limit: int | None, events: list[Any]) -> Archiver:
    archive = WalArchive(DownStore(tmp_path / "store"), Layout("main"), None)
    return Archiver(archive, pg_wal, event=lambda k, d: events.append((k, d)),
                    max_backlog_bytes=limit)  # fmt: skip


def wait_pending(worker: Archiver, count: int) -> None:
    deadline = time.monotonic() + 5
    while worker.snapshot()["pending_segments"] != count:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_without_a_limit_wal_waits_in_pg_wal(tmp_path: Path, pg_wal: Path) -> None:
    events: list[Any] = []
    worker = archiver(tmp_path, pg_wal, None, events)
    worker.start()
    try:
        wait_pending(worker, 4)
        with pytest.raises(StorageError, match="storage is down"):
            worker.push(pg_wal / "000000010000000000000001")
    finally:
        worker.stop()
    assert worker.dropped == []
    assert [kind for kind, _ in events] == ["archive_failing"]


def test_past_the_limit_the_oldest_segment_is_given_up_loudly(tmp_path: Path, pg_wal: Path) -> None:
    events: list[Any] = []
    worker = archiver(tmp_path, pg_wal, 3 * SEGMENT, events)
    worker.start()
    try:
        wait_pending(worker, 4)
        worker.push(pg_wal / "000000010000000000000001")  # 4 MiB waiting > 3 MiB: dropped
        (pg_wal / "archive_status" / "000000010000000000000001.ready").rename(
            pg_wal / "archive_status" / "000000010000000000000001.done"
        )
        wait_pending(worker, 3)
        with pytest.raises(StorageError):  # 3 MiB waiting is not over the limit
            worker.push(pg_wal / "000000010000000000000002")
    finally:
        worker.stop()
    assert worker.dropped == ["000000010000000000000001"]
    dropped = [data for kind, data in events if kind == "archive_dropped"]
    assert [data["name"] for data in dropped] == ["000000010000000000000001"]
    assert "storage is down" in dropped[0]["reason"]
