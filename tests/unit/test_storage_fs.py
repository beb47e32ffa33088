"""The fs object store: the shared storage contract, and what only a directory can show."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pgwarden.config import FsStorage, S3Storage
from pgwarden.storage import FsStore, ObjectExists, ObjectNotFound, StorageError, open_store
from storage_contract import BoomError, ObjectStoreContract, chunked, failing_after


class FsHarness:
    part_size = 1 << 20  # fs has no parts; big enough to make the streams meaningful
    atomic_if_absent = True

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.count = 0

    def store(self) -> FsStore:
        self.count += 1
        return FsStore(self.directory / f"store{self.count}")


@pytest.fixture
def harness(tmp_path: Path) -> FsHarness:
    return FsHarness(tmp_path)


class TestFsStoreContract(ObjectStoreContract):
    pass


def every_name(root: Path) -> list[str]:
    """Every file and directory under `root`, hidden ones included."""
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


def test_objects_are_plain_files_an_operator_can_read(tmp_path: Path) -> None:
    store = FsStore(tmp_path)
    store.put("main/wal/00000001/000000010000000000000001", b"segment", {"sha256": "ab"})
    assert (tmp_path / "main/wal/00000001/000000010000000000000001").read_bytes() == b"segment"
    visible = [name for name in every_name(tmp_path) if "/." not in f"/{name}"]
    assert visible == [
        "main",
        "main/wal",
        "main/wal/00000001",
        "main/wal/00000001/000000010000000000000001",
    ]


def test_the_directory_is_created_on_first_write(tmp_path: Path) -> None:
    store = FsStore(tmp_path / "not" / "yet")
    assert list(store.list()) == []
    with pytest.raises(ObjectNotFound):
        store.get("x")
    store.put("x", b"1")
    assert store.get("x") == b"1"


@pytest.mark.parametrize("key", ["../escaped", "a/../../escaped", "/tmp/escaped", "a/../b"])
def test_keys_cannot_escape_the_directory(tmp_path: Path, key: str) -> None:
    root = tmp_path / "store"
    store = FsStore(root)
    with pytest.raises(StorageError, match="object key"):
        store.put(key, b"x")
    with pytest.raises(StorageError, match="object key"):
        store.put_stream(key, [b"x"])
    assert every_name(tmp_path) == []
    assert not Path("/tmp/escaped").exists()


def test_failed_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    store = FsStore(tmp_path)
    store.put("dir/keep", b"k")
    before = every_name(tmp_path)
    with pytest.raises(BoomError):
        store.put_stream("dir/file", failing_after(b"x" * 100, 10, 50))
    with pytest.raises(BoomError):
        store.put_stream("dir/keep", failing_after(b"x" * 100, 10, 50))
    assert every_name(tmp_path) == before
    assert store.get("dir/keep") == b"k"


WRITER = """
import sys, time
from pgwarden.storage.fs import FsStore

def chunks():
    for _ in range(1000):
        yield b"new " * 16384
        print("chunk", flush=True)
        time.sleep(0.01)

FsStore(sys.argv[1]).put_stream("wal/seg", chunks(), {"sha256": "02"})
"""


def test_a_writer_killed_midway_leaves_the_old_object(tmp_path: Path) -> None:
    store = FsStore(tmp_path)
    store.put("wal/seg", b"old", {"sha256": "01"})
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE)
    assert writer.stdout is not None
    for _ in range(5):
        assert writer.stdout.readline() == b"chunk\n"
    writer.kill()
    writer.wait()
    writer.stdout.close()
    assert any(path.name.endswith(".tmp") for path in tmp_path.rglob(".*"))  # its leftover
    assert [info.key for info in store.list()] == ["wal/seg"]
    assert store.get("wal/seg") == b"old"
    assert store.head("wal/seg").metadata == {"sha256": "01"}


def test_leftovers_of_a_crash_are_invisible(tmp_path: Path) -> None:
    store = FsStore(tmp_path)
    store.put("a/seg", b"old", {"sha256": "01"})
    # What a crash midway through a write leaves: a temporary file and the new sidecar.
    (tmp_path / "a/.seg.0123456789abcdef.tmp").write_bytes(b"half of the new")
    (tmp_path / "a/.seg.999999999.meta").write_text('{"metadata": {"sha256": "02"}}')
    assert [info.key for info in store.list()] == ["a/seg"]
    assert store.get("a/seg") == b"old"
    assert store.head("a/seg").metadata == {"sha256": "01"}


def test_metadata_belongs_to_the_version_it_was_written_with(tmp_path: Path) -> None:
    store = FsStore(tmp_path)
    store.put("seg", b"written by pgwarden", {"sha256": "01"})
    # Another tool replaces the file: the old metadata must not describe the new bytes.
    replacement = tmp_path / "replacement"
    replacement.write_bytes(b"copied in by hand")
    replacement.replace(tmp_path / "seg")
    assert store.head("seg").metadata == {}
    assert store.get("seg") == b"copied in by hand"


def test_replacing_an_object_removes_its_old_metadata(tmp_path: Path) -> None:
    store = FsStore(tmp_path)
    for n in range(3):
        store.put("seg", bytes([n]), {"n": str(n)})
    assert store.head("seg").metadata == {"n": "2"}
    assert len([name for name in os.listdir(tmp_path) if name.endswith(".meta")]) == 1
    store.delete("seg")
    assert os.listdir(tmp_path) == []


def test_corrupt_metadata_is_reported_with_the_key(tmp_path: Path) -> None:
    store = FsStore(tmp_path)
    store.put("seg", b"x", {"a": "b"})
    (sidecar,) = tmp_path.glob(".seg.*.meta")
    sidecar.write_text("{not json")
    with pytest.raises(StorageError, match=r"metadata of seg .* not valid JSON"):
        store.head("seg")


def test_an_object_and_a_directory_cannot_share_a_name(tmp_path: Path) -> None:
    store = FsStore(tmp_path)
    store.put("a/b", b"x")
    with pytest.raises(StorageError, match=r"cannot write a in .*already an object"):
        store.put("a", b"y")
    with pytest.raises(StorageError, match=r"cannot write a in .*already an object") as raised:
        store.put("a", b"y", if_absent=True)
    assert not isinstance(raised.value, ObjectExists)  # no object `a` exists
    with pytest.raises(StorageError, match=r"cannot write a/b/c in .*already an object"):
        store.put("a/b/c", b"y")
    with pytest.raises(ObjectNotFound):
        store.get("a")
    store.delete("a")  # no such object: nothing happens, a/b stays
    assert store.get("a/b") == b"x"


def test_empty_directories_are_removed_with_their_last_object(tmp_path: Path) -> None:
    store = FsStore(tmp_path / "store")
    store.put("basebackups/b1/base/1/2", b"x")
    store.put("basebackups/b2/manifest.json", b"{}")
    store.delete_many(["basebackups/b1/base/1/2"])
    remaining = [name for name in every_name(tmp_path / "store") if "/." not in f"/{name}"]
    assert remaining == ["basebackups", "basebackups/b2", "basebackups/b2/manifest.json"]
    store.delete("basebackups/b2/manifest.json")
    assert every_name(tmp_path / "store") == []
    assert (tmp_path / "store").is_dir()  # the root itself stays


def test_more_than_a_thousand_objects_list_in_key_order(tmp_path: Path) -> None:
    store = FsStore(tmp_path)
    keys = [f"wal/{timeline:08X}/{n:024X}" for timeline in (1, 2) for n in range(560)]
    for key in reversed(keys):
        store.put(key, b"")
    listed = [info.key for info in store.list("wal/")]
    assert listed == keys
    assert [info.key for info in store.list("wal/00000002/")] == keys[560:]
    store.delete_many(keys)
    assert list(store.list()) == []


def test_a_write_error_names_the_key_and_the_reason(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    store = FsStore(blocker)  # the store's directory is a regular file
    with pytest.raises(StorageError, match=r"^cannot write wal/x in .*file: ") as raised:
        store.put_stream("wal/x", chunked(b"abc", 1))
    assert "\n" not in str(raised.value)


def test_open_store_builds_the_configured_backend(tmp_path: Path) -> None:
    fs = open_store(FsStorage(type="fs", directory=tmp_path))
    assert isinstance(fs, FsStore)
    assert fs.directory == tmp_path

    from pgwarden.storage.s3 import S3Store  # noqa: PLC0415

    s3 = open_store(
        S3Storage(
            type="s3",
            bucket="backups",
            prefix="prod/pg",
            endpoint_url="http://127.0.0.1:9",
            region="eu-west-1",
            force_path_style=True,
            sse="aws:kms",
            kms_key_id="alias/pgwarden",
        )
    )
    assert isinstance(s3, S3Store)
    assert (s3.bucket, s3.prefix, s3.endpoint) == ("backups", "prod/pg", "http://127.0.0.1:9")
