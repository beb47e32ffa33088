"""Restore a base backup into a directory: `pgwarden restore` and replica creation.

Objects are downloaded, decrypted, decompressed and checked by `jobs` threads; each file
is written under a temporary name, fsynced and renamed only once its object checked out.
`global/pg_control` is put in place last, after everything else is durable: a restore
that stops midway (full disk, storage gone) leaves a directory PostgreSQL refuses to
start, never one it would start from half the data. `--delta` restores over an existing
directory, keeping files whose content already matches and removing files the backup
does not have. Recovery settings (restore_command through `pgwarden wal-fetch`) go into
postgresql.auto.conf, with recovery.signal or standby.signal.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from pgwarden.backup.manifest import FileEntry, Manifest
from pgwarden.backup.objects import ObjectDamaged, bundle, whole
from pgwarden.backup.parallel import run_all
from pgwarden.backup.scan import file_sha256
from pgwarden.backup.upload import READ_SIZE, Counters
from pgwarden.codec import Key
from pgwarden.errors import PgwardenError
from pgwarden.logs import get_logger
from pgwarden.postgres.conf import quote_value
from pgwarden.storage import ObjectStore, StorageError
from pgwarden.storage.layout import Layout

log = get_logger("restore")

PG_CONTROL = "global/pg_control"
TEMP_SUFFIX = ".pgwarden-restore"


class RestoreError(PgwardenError):
    """The restore did not complete; the message says what is left and what to do."""


@dataclass(frozen=True)
class RestoreRequest:
    target_dir: Path
    delta: bool = False
    jobs: int = 2
    # When running as root: the OS user who must own the restored files.
    owner: tuple[int, int] | None = None
    # Written to postgresql.auto.conf; None leaves recovery settings alone.
    restore_command: str | None = None
    standby: bool = False
    # More recovery settings (targets, archive_mode for drills), already validated text.
    settings: Mapping[str, str] = field(default_factory=dict)
    tablespace_dirs: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RestoreResult:
    backup: str
    files_written: int
    files_kept: int
    files_removed: int
    downloaded_bytes: int
    written_bytes: int
    seconds: float


def _is_empty(path: Path) -> bool:
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


def _check_target(manifest: Manifest, request: RestoreRequest) -> None:
    target = request.target_dir
    if target.exists() and not target.is_dir():
        raise RestoreError(f"{target} exists and is not a directory")
    if (target / "postmaster.pid").exists():
        raise RestoreError(f"PostgreSQL may be running in {target} (postmaster.pid): stop it first")
    if not request.delta and not _is_empty(target):
        raise RestoreError(
            f"{target} is not empty; pass --delta to restore over it (files whose content "
            "matches are kept, others replaced or removed)"
        )
    for tablespace in manifest.tablespaces:
        where = Path(request.tablespace_dirs.get(tablespace.oid, tablespace.location))
        if not request.delta and not _is_empty(where):
            raise RestoreError(
                f"tablespace {tablespace.oid} would be restored into {where}, which is not "
                "empty; map it elsewhere or pass --delta"
            )


def _same_content(path: Path, entry: FileEntry) -> bool:
    try:
        if path.stat().st_size != entry.size:
            return False
        return file_sha256(path, READ_SIZE) == (entry.size, entry.sha256)
    except (FileNotFoundError, IsADirectoryError):
        return False


class RestoreRun:
    def __init__(
        self,
        store: ObjectStore,
        layout: Layout,
        key: Key | None,
        manifest: Manifest,
        request: RestoreRequest,
        progress: Callable[[Counters, int], None] | None = None,
    ) -> None:
        self.store = store
        self.layout = layout
        self.key = key
        self.manifest = manifest
        self.request = request
        self.progress = progress
        self.counters = Counters()
        self._temps: set[Path] = set()
        self._kept = 0

    def run(self) -> RestoreResult:
        started = time.monotonic()
        _check_target(self.manifest, self.request)
        target = self.request.target_dir
        try:
            removed = self._prepare(target)
            self._download()
            self._finish(target)
        except OSError as exc:
            self._remove_temps()
            if exc.errno == errno.ENOSPC:
                raise RestoreError(
                    f"restore into {target} stopped: no space left on device; free space and "
                    "run it again with --delta (the directory cannot start as it is)"
                ) from exc
            raise RestoreError(f"restore into {target} stopped: {exc}") from exc
        except (ObjectDamaged, StorageError) as exc:
            self._remove_temps()
            raise RestoreError(
                f"restore into {target} stopped: {exc} (the directory cannot start as it is)"
            ) from exc
        written = len(self.manifest.files) - self._kept
        result = RestoreResult(
            backup=self.manifest.id,
            files_written=written,
            files_kept=self._kept,
            files_removed=removed,
            downloaded_bytes=self.counters.stored_bytes,
            written_bytes=self.counters.read_bytes,
            seconds=round(time.monotonic() - started, 3),
        )
        log.info("restore.finished", **result.__dict__, target=str(target))
        return result

    # --- steps ---------------------------------------------------------------------------

    def _prepare(self, target: Path) -> int:
        """Directories, tablespace links, and (delta) files the backup does not have."""
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
        target.chmod(0o700)
        # Until the restore completes, the directory must not be startable.
        (target / PG_CONTROL).unlink(missing_ok=True)
        for tablespace in self.manifest.tablespaces:
            where = Path(self.request.tablespace_dirs.get(tablespace.oid, tablespace.location))
            where.mkdir(mode=0o700, parents=True, exist_ok=True)
            link = target / "pg_tblspc" / tablespace.oid
            link.parent.mkdir(mode=0o700, exist_ok=True)
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(where)
        for relative, mode in self.manifest.directories:
            path = target / relative
            if path.is_symlink() and relative.startswith("pg_tblspc/"):
                continue
            path.mkdir(mode=mode, parents=True, exist_ok=True)
        return self._remove_strays(target) if self.request.delta else 0

    def _remove_strays(self, target: Path) -> int:
        wanted = {entry.path for entry in self.manifest.files}
        directories = {relative for relative, _ in self.manifest.directories}
        removed = 0
        for root, dirnames, filenames in os.walk(target, followlinks=True):
            relative_root = os.path.relpath(root, target)
            for name in filenames:
                relative = name if relative_root == "." else f"{relative_root}/{name}"
                if relative not in wanted:
                    (Path(root) / name).unlink()
                    removed += 1
            for name in list(dirnames):
                relative = name if relative_root == "." else f"{relative_root}/{name}"
                if relative not in directories and not relative.startswith("pg_tblspc/"):
                    shutil.rmtree(Path(root) / name)
                    dirnames.remove(name)
        return removed

    def _download(self) -> None:
        total = sum(entry.size for entry in self.manifest.files)
        progress = self.progress
        run_all(
            self.request.jobs,
            [
                partial(self._restore_object, entries)
                for entries in self.manifest.objects().values()
            ],
            tick=None if progress is None else lambda: progress(self.counters, total),
        )

    def _restore_object(self, entries: list[FileEntry]) -> None:
        target = self.request.target_dir
        if self.request.delta:
            needed = [
                e for e in entries if e.path == PG_CONTROL or not _same_content(target / e.path, e)
            ]
            for entry in entries:
                if entry not in needed:
                    self._set_attributes(target / entry.path, entry)
            self._count_kept(len(entries) - len(needed))
        else:
            needed = entries
        if not needed:
            return
        counted = self._downloaded
        if needed[0].offset is None:
            self._write(needed[0], whole(self.store, self.layout, needed[0], self.key, counted))
        else:
            for entry, data in bundle(self.store, self.layout, needed, self.key, counted):
                self._write(entry, iter([data]))

    def _downloaded(self, count: int) -> None:
        self.counters.add(stored=count)

    def _count_kept(self, count: int) -> None:
        with self.counters.lock:
            self._kept += count

    def _write(self, entry: FileEntry, pieces: object) -> None:
        final = self.request.target_dir / entry.path
        temp = final.with_name(final.name + TEMP_SUFFIX)
        with self.counters.lock:
            self._temps.add(temp)
        with temp.open("wb") as out:
            for piece in pieces:  # type: ignore[attr-defined]
                out.write(piece)
                self.counters.add(read=len(piece))
            out.flush()
            os.fsync(out.fileno())
        self.counters.add(files=1)
        self._set_attributes(temp, entry)
        if entry.path != PG_CONTROL:  # put in place last, by _finish
            temp.replace(final)
            with self.counters.lock:
                self._temps.discard(temp)

    def _set_attributes(self, path: Path, entry: FileEntry) -> None:
        path.chmod(entry.mode)
        os.utime(path, (entry.mtime, entry.mtime))

    def _finish(self, target: Path) -> None:
        """Recovery files, directory fsyncs, ownership, and finally pg_control."""
        manifest = self.manifest
        (target / "backup_label").write_text(manifest.backup_label)
        if manifest.tablespace_map:
            lines = []
            for line in manifest.tablespace_map.splitlines():
                oid, _, location = line.partition(" ")
                lines.append(f"{oid} {self.request.tablespace_dirs.get(oid, location)}")
            (target / "tablespace_map").write_text("\n".join(lines) + "\n")
        signal = "standby.signal" if self.request.standby else "recovery.signal"
        (target / signal).write_text("")
        self._write_settings(target)
        if self.request.owner is not None:
            self._chown(target)
        self._sync_tree(target)
        control = target / PG_CONTROL
        temp = control.with_name(control.name + TEMP_SUFFIX)
        if temp.exists():
            temp.replace(control)
            self._temps.discard(temp)
        _fsync_dir(control.parent)

    def _write_settings(self, target: Path) -> None:
        settings = dict(self.request.settings)
        if self.request.restore_command is not None:
            settings["restore_command"] = quote_value(self.request.restore_command)
        if not settings:
            return
        auto = target / "postgresql.auto.conf"
        text = auto.read_text() if auto.exists() else ""
        block = [f"# added by pgwarden restore of backup {self.manifest.id}"]
        block += [f"{name} = {value}" for name, value in settings.items()]
        auto.write_text(text.rstrip("\n") + ("\n" if text else "") + "\n".join(block) + "\n")
        if not text:
            auto.chmod(0o600)

    def _chown(self, target: Path) -> None:
        assert self.request.owner is not None
        uid, gid = self.request.owner
        os.chown(target, uid, gid)
        for root, dirnames, filenames in os.walk(target, followlinks=True):
            for name in dirnames + filenames:
                os.chown(Path(root) / name, uid, gid, follow_symlinks=False)
        for tablespace in self.manifest.tablespaces:
            where = self.request.tablespace_dirs.get(tablespace.oid, tablespace.location)
            os.chown(where, uid, gid)

    def _sync_tree(self, target: Path) -> None:
        for root, _, filenames in os.walk(target, followlinks=True):
            for name in filenames:
                if name in ("backup_label", "tablespace_map", "postgresql.auto.conf"):
                    _fsync_file(Path(root) / name)
            _fsync_dir(Path(root))

    def _remove_temps(self) -> None:
        for temp in list(self._temps):
            temp.unlink(missing_ok=True)
        self._temps.clear()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
