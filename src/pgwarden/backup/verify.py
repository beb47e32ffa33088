"""`pgwarden backup verify`: re-read every object a backup needs and check every checksum.

Each object is downloaded, decrypted and decompressed; each file's plaintext must match
its SHA-256 and size in the manifest. The WAL range the backup needs must be in the
archive. Every problem is reported with the exact object (and file) it concerns.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pgwarden.backup.manifest import FileEntry, Manifest
from pgwarden.backup.objects import ObjectDamaged, bundle, whole
from pgwarden.codec import Key
from pgwarden.storage import ObjectStore, StorageError
from pgwarden.storage.layout import Layout
from pgwarden.wal.names import parse_segment_name, segment_name


@dataclass(frozen=True)
class Problem:
    backup: str
    object: str
    file: str | None
    reason: str

    def sentence(self) -> str:
        of = f" (file {self.file})" if self.file else ""
        return f"backup {self.backup}: {self.object}{of}: {self.reason}"


@dataclass(frozen=True)
class VerifyReport:
    backup: str
    objects: int
    files: int
    bytes: int
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_object(
    store: ObjectStore,
    layout: Layout,
    key: Key | None,
    manifest: Manifest,
    entries: list[FileEntry],
) -> tuple[int, list[Problem]]:
    checked = 0
    try:
        if entries[0].offset is None:
            for piece in whole(store, layout, entries[0], key):
                checked += len(piece)
        else:
            for _, data in bundle(store, layout, entries, key):
                checked += len(data)
    except ObjectDamaged as exc:
        return checked, [Problem(manifest.id, exc.key, exc.path, exc.reason)]
    except StorageError as exc:
        name = layout.backup_object(entries[0].object)
        return checked, [Problem(manifest.id, name, None, str(exc))]
    return checked, []


def missing_wal(store: ObjectStore, layout: Layout, manifest: Manifest) -> list[Problem]:
    timeline, first = parse_segment_name(manifest.start_wal, manifest.segment_size)
    _, last = parse_segment_name(manifest.stop_wal, manifest.segment_size)
    problems = []
    for number in range(first, last + 1):
        name = segment_name(timeline, number, manifest.segment_size)
        key = layout.wal_segment(timeline, name)
        if not store.exists(key):
            problems.append(
                Problem(manifest.id, key, None, "WAL segment the backup needs is not archived")
            )
    return problems


def verify_backup(
    store: ObjectStore, layout: Layout, key: Key | None, manifest: Manifest, jobs: int = 2
) -> VerifyReport:
    objects = manifest.objects()
    problems: deque[Problem] = deque()
    total = 0
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for checked, found in pool.map(
            lambda entries: _check_object(store, layout, key, manifest, entries),
            objects.values(),
        ):
            total += checked
            problems.extend(found)
    problems.extend(missing_wal(store, layout, manifest))
    ordered = tuple(sorted(problems, key=lambda p: (p.object, p.file or "")))
    return VerifyReport(manifest.id, len(objects), len(manifest.files), total, ordered)
