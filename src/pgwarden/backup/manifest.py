"""The manifest: everything needed to restore and verify one base backup.

It is the last object a backup writes (`<cluster>/basebackups/<id>/manifest.json`, encoded
like every other object, so compressed, encrypted when a key is configured, and checked),
so a backup without a manifest is incomplete by definition and never offered for restore.

Each file entry names the object holding its bytes. Large files get an object of their
own (`<id>/f/<n>`); small ones are packed into bundles (`<id>/b/<n>`), each an unbroken
run of independently encoded objects, found by `offset` and `length`. An incremental
backup's entries may name objects of an earlier backup: the first part of the object
name is always the backup that owns it, so `references` follows from the entries.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pgwarden.errors import PgwardenError
from pgwarden.model import Lsn

MANIFEST_VERSION = 1
BackupKind = Literal["full", "incr"]
_ID = re.compile(r"(\d{8}T\d{6})([FI])")
_KIND_LETTER: dict[str, BackupKind] = {"F": "full", "I": "incr"}


class ManifestError(PgwardenError):
    """A manifest could not be read or does not describe a usable backup."""


def backup_id(started: datetime, kind: BackupKind) -> str:
    """`20261124T065015F`: the UTC start second and the kind; ids sort by time."""
    letter = "F" if kind == "full" else "I"
    return started.astimezone(UTC).strftime("%Y%m%dT%H%M%S") + letter


def is_backup_id(text: str) -> bool:
    return _ID.fullmatch(text) is not None


def parse_backup_id(text: str) -> tuple[datetime, BackupKind]:
    match = _ID.fullmatch(text)
    if match is None:
        raise ManifestError(f"{text!r} is not a backup id (like 20261124T065015F)")
    started = datetime.strptime(match.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    return started, _KIND_LETTER[match.group(2)]


@dataclass(frozen=True)
class FileEntry:
    """One file of the data directory (or of a tablespace, under `pg_tblspc/<oid>/`)."""

    path: str
    size: int
    mtime: float
    mode: int
    sha256: str
    # The object holding the bytes, relative to `<cluster>/basebackups/`.
    object: str
    # Where in a bundle the encoded file starts and how long it is; None for a whole object.
    offset: int | None = None
    length: int | None = None

    @property
    def owner(self) -> str:
        """The backup whose objects hold this file's bytes."""
        return self.object.split("/", 1)[0]


@dataclass(frozen=True)
class Tablespace:
    oid: str
    location: str


@dataclass(frozen=True)
class Manifest:
    id: str
    kind: BackupKind
    cluster: str
    member: str
    from_standby: bool
    system_identifier: str
    pg_version: int
    timeline: int
    start_lsn: int
    stop_lsn: int
    start_wal: str
    stop_wal: str
    segment_size: int
    start_time: datetime
    stop_time: datetime
    compression: str
    level: int
    key_id: str | None
    data_checksums: bool
    backup_label: str
    tablespace_map: str
    files: tuple[FileEntry, ...]
    directories: tuple[tuple[str, int], ...]
    tablespaces: tuple[Tablespace, ...] = ()
    # Relation pages whose checksum failed twice while reading: path -> block numbers.
    bad_pages: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    version: int = MANIFEST_VERSION

    @property
    def references(self) -> frozenset[str]:
        """The other backups whose objects this backup's files are stored in."""
        return frozenset(entry.owner for entry in self.files) - {self.id}

    @property
    def db_bytes(self) -> int:
        return sum(entry.size for entry in self.files)

    def objects(self) -> dict[str, list[FileEntry]]:
        """Every object needed to restore, with the files stored in it (in bundle order)."""
        found: dict[str, list[FileEntry]] = {}
        for entry in self.files:
            found.setdefault(entry.object, []).append(entry)
        for entries in found.values():
            entries.sort(key=lambda e: e.offset or 0)
        return found

    def to_json(self) -> bytes:
        data = asdict(self)
        data["start_time"] = self.start_time.isoformat()
        data["stop_time"] = self.stop_time.isoformat()
        data["files"] = [_compact(entry) for entry in data["files"]]
        data["bad_pages"] = {path: list(blocks) for path, blocks in self.bad_pages.items()}
        return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> Manifest:
        try:
            data = json.loads(raw)
            version = data.get("version")
        except (ValueError, AttributeError) as exc:
            raise ManifestError(f"manifest {where} is malformed: {exc}") from exc
        if version != MANIFEST_VERSION:
            raise ManifestError(
                f"manifest {where} has version {version!r}; "
                f"this pgwarden reads version {MANIFEST_VERSION}"
            )
        try:
            return cls(
                **{
                    **data,
                    "start_time": datetime.fromisoformat(data["start_time"]),
                    "stop_time": datetime.fromisoformat(data["stop_time"]),
                    "files": tuple(FileEntry(**entry) for entry in data["files"]),
                    "directories": tuple((p, m) for p, m in data["directories"]),
                    "tablespaces": tuple(Tablespace(**t) for t in data["tablespaces"]),
                    "bad_pages": {p: tuple(b) for p, b in data["bad_pages"].items()},
                }
            )
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ManifestError(f"manifest {where} is malformed: {exc}") from exc

    def summary(self) -> dict[str, Any]:
        """What `backup list` and the agent's events show."""
        return {
            "id": self.id,
            "kind": self.kind,
            "member": self.member,
            "from_standby": self.from_standby,
            "timeline": self.timeline,
            "start_lsn": str(Lsn(self.start_lsn)),
            "stop_lsn": str(Lsn(self.stop_lsn)),
            "wal": f"{self.start_wal}..{self.stop_wal}",
            "start_time": self.start_time.isoformat(),
            "stop_time": self.stop_time.isoformat(),
            "duration_s": round((self.stop_time - self.start_time).total_seconds(), 3),
            "db_bytes": self.db_bytes,
            "files": len(self.files),
            "references": sorted(self.references),
            "encrypted": self.key_id is not None,
            "bad_pages": sum(len(blocks) for blocks in self.bad_pages.values()),
        }


def _compact(entry: dict[str, Any]) -> dict[str, Any]:
    """Leave out a whole object's null offset/length: manifests of big clusters stay small."""
    return {k: v for k, v in entry.items() if v is not None}


def newest(manifests: Sequence[Manifest]) -> Manifest | None:
    return max(manifests, key=lambda m: m.id, default=None)
