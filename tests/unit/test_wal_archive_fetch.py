"""What fetching a WAL file from the archive checks: zstd's frame checksum where the
archived object has one, its SHA-256 where it has none (archived by an earlier pgwarden).
The archive is a real fs store."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from codec_objects import count_hashing, seal_object, zstd_body, zstd_frame

from pgwarden.storage import FsStore
from pgwarden.storage.layout import Layout
from pgwarden.wal.archive import ArchiveError, WalArchive

SEGMENT = "000000010000000000000001"
MiB = 1 << 20


@pytest.fixture
def wal(tmp_path: Path) -> WalArchive:
    return WalArchive(FsStore(tmp_path / "store"), Layout("main"), key=None)


@pytest.fixture
def archived(wal: WalArchive, tmp_path: Path) -> bytes:
    """A segment pushed by this pgwarden; its contents."""
    path = tmp_path / SEGMENT
    path.write_bytes(b"".join(b"record %08d of a segment\n" % i for i in range(40_000)))
    assert wal.push(path) is True
    return path.read_bytes()


def test_a_fetch_relies_on_the_frame_checksum_and_computes_no_sha256(
    wal: WalArchive, archived: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hashed = count_hashing(monkeypatch)
    assert wal.fetch(SEGMENT, tmp_path / "RECOVERYXLOG") is True
    assert (tmp_path / "RECOVERYXLOG").read_bytes() == archived
    assert hashed == []


def test_a_segment_whose_frame_checksum_is_damaged_is_refused_and_leaves_no_file(
    wal: WalArchive, archived: bytes, tmp_path: Path
) -> None:
    key = wal.object_key(SEGMENT)
    frame = bytearray(zstd_body(wal.store.get(key)))
    frame[-4:] = bytes(byte ^ 0xFF for byte in frame[-4:])
    wal.store.put(key, seal_object(bytes(frame), plaintext=archived, chunk_size=MiB))
    destination = tmp_path / "RECOVERYXLOG"
    with pytest.raises(
        ArchiveError, match=rf"^archived {key} is damaged: object is corrupted: zstd .*checksum"
    ):
        wal.fetch(SEGMENT, destination)
    assert not destination.exists()
    assert not destination.with_name("RECOVERYXLOG.pgwarden-fetch").exists()


@pytest.mark.parametrize("trailer", ["right", "wrong"])
def test_a_segment_archived_before_frame_checksums_is_checked_by_its_sha256(
    wal: WalArchive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trailer: str
) -> None:
    data = b"a segment archived by an earlier pgwarden\n" * 1000
    wrong = hashlib.sha256(b"something else").digest() if trailer == "wrong" else None
    key = wal.object_key(SEGMENT)
    frame = zstd_frame(data, checksum=False)
    wal.store.put(key, seal_object(frame, plaintext=data, chunk_size=MiB, sha256=wrong))
    hashed = count_hashing(monkeypatch)
    destination = tmp_path / "RECOVERYXLOG"
    if wrong is None:
        assert wal.fetch(SEGMENT, destination) is True
        assert destination.read_bytes() == data
    else:
        with pytest.raises(ArchiveError, match=rf"^archived {key} is damaged: checksum mismatch"):
            wal.fetch(SEGMENT, destination)
        assert not destination.exists()
    assert sum(hashed) == len(data)
