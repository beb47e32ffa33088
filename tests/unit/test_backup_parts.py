"""The backup engine's parts without PostgreSQL: ids, manifests, what a backup copies,
bundles read back from a real fs store, and how the agent reads a backup's result."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgwarden.agent.backups import _outcome
from pgwarden.backup.manifest import (
    FileEntry,
    Manifest,
    ManifestError,
    backup_id,
    parse_backup_id,
)
from pgwarden.backup.objects import ObjectDamaged, _Skipper, bundle, whole
from pgwarden.backup.scan import scan
from pgwarden.backup.upload import BUNDLE_FILE_LIMIT, BUNDLE_SIZE, plan_bundles
from pgwarden.codec import Key, encode_bytes
from pgwarden.storage import FsStore
from pgwarden.storage.layout import Layout

NOW = datetime(2026, 11, 24, 6, 50, 15, tzinfo=UTC)


def manifest(**changes: object) -> Manifest:
    values: dict[str, object] = {
        "id": "20261124T065015I",
        "kind": "incr",
        "cluster": "main",
        "member": "db1",
        "from_standby": False,
        "system_identifier": "7300000000000000001",
        "pg_version": 150010,
        "timeline": 2,
        "start_lsn": 0x3000028,
        "stop_lsn": 0x3000138,
        "start_wal": "000000020000000000000003",
        "stop_wal": "000000020000000000000003",
        "segment_size": 16 * 1024 * 1024,
        "start_time": NOW,
        "stop_time": NOW,
        "compression": "zstd",
        "level": 3,
        "key_id": None,
        "data_checksums": True,
        "backup_label": "START WAL LOCATION: 0/3000028 (file 000000020000000000000003)\n",
        "tablespace_map": "",
        "files": (
            FileEntry("base/5/1259", 8192, 1.5, 0o600, "a" * 64, "20261124T065015I/b/0", 0, 90),
            FileEntry("base/5/16384", 9 << 20, 2.5, 0o600, "b" * 64, "20261123T010000F/f/0"),
        ),
        "directories": (("base", 0o700), ("pg_wal", 0o700)),
        "bad_pages": {"base/5/16384": (7,)},
    }
    return Manifest(**(values | changes))  # type: ignore[arg-type]


def test_backup_ids_are_utc_start_seconds_and_kind() -> None:
    assert backup_id(NOW, "full") == "20261124T065015F"
    assert parse_backup_id("20261124T065015I") == (NOW, "incr")
    with pytest.raises(ManifestError, match="is not a backup id"):
        parse_backup_id("20261124T065015X")


def test_a_manifest_survives_json_and_knows_its_references() -> None:
    original = manifest()
    again = Manifest.from_json(original.to_json(), "k")
    assert again == original
    assert again.references == {"20261123T010000F"}
    assert again.db_bytes == 8192 + (9 << 20)
    assert list(again.objects()) == ["20261124T065015I/b/0", "20261123T010000F/f/0"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"not json", "manifest k is malformed"),
        (b"[]", "manifest k is malformed"),
        (b'{"version": 9}', "manifest k has version 9; this pgwarden reads version 1"),
        (b'{"version": 1, "id": "x"}', "manifest k is malformed"),
    ],
)
def test_a_bad_manifest_is_one_sentence(raw: bytes, message: str) -> None:
    with pytest.raises(ManifestError, match=f"^{message}"):
        Manifest.from_json(raw, "k")


def test_scan_copies_what_pg_basebackup_copies(tmp_path: Path) -> None:
    data = tmp_path / "data"
    files = {
        "PG_VERSION": b"15\n",
        "postgresql.conf": b"",
        "postmaster.pid": b"123",
        "backup_label": b"old",
        "standby.signal": b"",
        "base/5/16384": b"x" * 8192,
        "base/5/pg_internal.init": b"cache",
        "base/pgsql_tmp/pgsql_tmp1.0": b"tmp",
        "global/pg_control": b"c" * 8192,
        "pg_wal/000000010000000000000001": b"w",
        "pg_wal/archive_status/000000010000000000000001.done": b"",
        "pg_replslot/db2/state": b"s",
        "pg_stat_tmp/global.stat": b"s",
    }
    for name, content in files.items():
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_bytes(content)
    outside = tmp_path / "tablespace"
    (outside / "PG_15_202209061" / "5").mkdir(parents=True)
    (outside / "PG_15_202209061" / "5" / "16390").write_bytes(b"t" * 100)
    (data / "pg_tblspc").mkdir()
    os.symlink(outside, data / "pg_tblspc" / "16389")
    (data / "stray-link").symlink_to(outside)

    found = scan(data)
    assert [f.path for f in found.files] == [
        "base/5/16384",
        "global/pg_control",
        "pg_tblspc/16389/PG_15_202209061/5/16390",
        "PG_VERSION",
        "postgresql.conf",
    ]
    directories = [d for d, _ in found.directories]
    assert "pg_wal" in directories and "pg_wal/archive_status" in directories
    assert "pg_replslot" in directories and "pg_replslot/db2" not in directories
    assert "base/pgsql_tmp" not in directories
    assert [(t.oid, t.location) for t in found.tablespaces] == [("16389", str(outside))]


def test_small_files_are_bundled_and_large_ones_stand_alone(tmp_path: Path) -> None:
    from pgwarden.backup.scan import ScannedFile  # noqa: PLC0415

    def file(name: str, size: int) -> ScannedFile:
        return ScannedFile(name, tmp_path / name, size, 0.0, 0o600)

    small = [file(f"s{i:03}", BUNDLE_FILE_LIMIT - 1) for i in range(40)]
    large, bundles = plan_bundles([file("big", BUNDLE_FILE_LIMIT), *small])
    assert [f.path for f in large] == ["big"]
    assert sum(len(b) for b in bundles) == 40
    assert all(sum(f.size for f in b) <= BUNDLE_SIZE for b in bundles)
    assert [f.path for b in bundles for f in b] == sorted(f.path for f in small)


@given(
    st.lists(st.binary(min_size=0, max_size=50), min_size=1, max_size=8),
    st.integers(min_value=1, max_value=17),
    st.data(),
)
def test_the_skipper_reads_any_increasing_ranges(
    parts: list[bytes], chunk: int, data: st.DataObject
) -> None:
    stream = b"".join(parts)
    chunks = [stream[i : i + chunk] for i in range(0, len(stream), chunk)]
    reader = _Skipper(chunks)
    position = 0
    while position < len(stream):
        offset = data.draw(st.integers(position, len(stream)))
        length = data.draw(st.integers(0, len(stream) - offset + 3))
        assert reader.read_at(offset, length) == stream[offset : offset + length]
        position = offset + length


def stored_bundle(
    store: FsStore, layout: Layout, contents: list[bytes], key: Key | None
) -> tuple[list[FileEntry], bytes]:
    entries, blob = [], b""
    for number, content in enumerate(contents):
        encoded, digest = encode_bytes(content, key=key)
        entries.append(
            FileEntry(f"f{number}", len(content), 0.0, 0o600, digest.sha256, "X/b/0",
                      len(blob), len(encoded))
        )  # fmt: skip
        blob += encoded
    store.put(layout.backup_object("X/b/0"), blob)
    return entries, blob


def test_a_bundle_gives_back_the_files_asked_for(tmp_path: Path) -> None:
    store, layout, key = FsStore(tmp_path), Layout("main"), Key.generate()
    contents = [os.urandom(n) for n in (10, 0, 5000, 77)]
    entries, _ = stored_bundle(store, layout, contents, key)
    wanted = [entries[3], entries[1]]
    assert [(e.path, d) for e, d in bundle(store, layout, wanted, key)] == [
        ("f1", contents[1]),
        ("f3", contents[3]),
    ]


def test_a_damaged_bundle_names_the_object_and_file(tmp_path: Path) -> None:
    store, layout = FsStore(tmp_path), Layout("main")
    entries, blob = stored_bundle(store, layout, [b"a" * 100, b"b" * 100], None)
    damaged = bytearray(blob)
    damaged[entries[1].offset + 70] ^= 1  # type: ignore[operator]
    store.put(layout.backup_object("X/b/0"), bytes(damaged))
    with pytest.raises(ObjectDamaged) as raised:
        list(bundle(store, layout, entries, None))
    assert raised.value.key == "main/basebackups/X/b/0" and raised.value.path == "f1"
    store.put(layout.backup_object("X/b/0"), blob[:-5])
    with pytest.raises(ObjectDamaged, match="file f1\\) is damaged: it is shorter"):
        list(bundle(store, layout, entries, None))


def test_a_missing_whole_object_is_named(tmp_path: Path) -> None:
    store, layout = FsStore(tmp_path), Layout("main")
    entry = FileEntry("base/1/1", 1, 0.0, 0o600, "0" * 64, "X/f/3")
    with pytest.raises(ObjectDamaged, match=r"^object main/basebackups/X/f/3 \(file base/1/1\) "
                                            "is damaged: it is missing from storage$"):  # fmt: skip
        list(whole(store, layout, entry, None))


def test_the_agent_reads_a_backup_result_or_its_one_sentence() -> None:
    done = _outcome("full", 0, '{"id": "20261124T065015F", "db_bytes": 5}', "", NOW)
    assert done.ok and done.backup == "20261124T065015F" and done.summary["db_bytes"] == 5
    failed = _outcome("full", 1, "", '{"event": "backup.failed"}\nerror: storage is down\n', NOW)
    assert not failed.ok and failed.reason == "storage is down"
    crashed = _outcome("incr", -9, "", "", NOW)
    assert crashed.reason == "exited with code -9"
