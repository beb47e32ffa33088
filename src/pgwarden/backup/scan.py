"""Which files of a data directory a base backup copies, as pg_basebackup decides.

Left out: WAL (restore gets it from the archive), runtime state PostgreSQL rebuilds or
must not see again (postmaster.pid, temporary files, relation cache init files, the
contents of pg_stat_tmp, pg_replslot, pg_dynshmem, pg_notify, pg_serial, pg_snapshots,
pg_subtrans), and the files a restore writes itself (backup_label, tablespace_map, the
signal files). The directories are kept so a restored data directory is complete.
Tablespaces (symlinks in pg_tblspc) are followed; their files appear under
`pg_tblspc/<oid>/`.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from pgwarden.backup.manifest import Tablespace

EXCLUDED_FILES = frozenset(
    {
        "postmaster.pid",
        "postmaster.opts",
        "backup_label",
        "backup_label.old",
        "tablespace_map",
        "backup_manifest",
        "current_logfiles",
        "recovery.signal",
        "standby.signal",
        "postgresql.auto.conf.tmp",
    }
)
EXCLUDED_CONTENTS = frozenset(
    {
        "pg_wal",
        "pg_stat_tmp",
        "pg_replslot",
        "pg_dynshmem",
        "pg_notify",
        "pg_serial",
        "pg_snapshots",
        "pg_subtrans",
    }
)


@dataclass(frozen=True)
class ScannedFile:
    path: str  # relative to the data directory, '/'-separated
    source: Path  # where to read it
    size: int
    mtime: float
    mode: int


@dataclass(frozen=True)
class Scan:
    files: tuple[ScannedFile, ...]
    directories: tuple[tuple[str, int], ...]
    tablespaces: tuple[Tablespace, ...]


def file_sha256(path: Path, chunk_size: int = 1024 * 1024) -> tuple[int, str]:
    """(size, SHA-256 hex) of the file's bytes as read now."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as source:
        while chunk := source.read(chunk_size):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _excluded_file(relative: str, name: str) -> bool:
    if name == "pg_internal.init" or name.startswith("pgsql_tmp"):
        return True
    return "/" not in relative and name in EXCLUDED_FILES


def scan(data_dir: Path) -> Scan:
    """Every file and directory a backup of `data_dir` needs, files largest first."""
    files: list[ScannedFile] = []
    directories: list[tuple[str, int]] = []
    tablespaces: list[Tablespace] = []

    def walk(directory: Path, relative: str) -> None:
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:  # dropped while we walked (a database, a tablespace)
            return
        for entry in entries:
            path = f"{relative}/{entry.name}" if relative else entry.name
            try:
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISLNK(info.st_mode):
                    target = str(Path(entry.path).readlink())
                    if relative == "pg_tblspc":
                        tablespaces.append(Tablespace(entry.name, target))
                    elif path != "pg_wal":
                        continue  # other links are not PostgreSQL's
                    info = entry.stat(follow_symlinks=True)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(info.st_mode):
                if entry.name.startswith("pgsql_tmp"):
                    continue
                directories.append((path, stat.S_IMODE(info.st_mode)))
                if path in EXCLUDED_CONTENTS:
                    if path == "pg_wal":
                        directories.append(("pg_wal/archive_status", 0o700))
                    continue
                walk(Path(entry.path), path)
            elif stat.S_ISREG(info.st_mode) and not _excluded_file(path, entry.name):
                files.append(
                    ScannedFile(
                        path,
                        Path(entry.path),
                        info.st_size,
                        info.st_mtime,
                        stat.S_IMODE(info.st_mode),
                    )
                )

    walk(data_dir, "")
    files.sort(key=lambda f: (-f.size, f.path))
    directories.sort()
    return Scan(tuple(files), tuple(directories), tuple(sorted(tablespaces, key=lambda t: t.oid)))
