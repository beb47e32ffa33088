"""Take a base backup of the local instance: `pgwarden backup create` and the agent's schedule.

A non-exclusive backup: `pg_backup_start` and `pg_backup_stop` on one connection held for
the whole run (if it drops, PostgreSQL ends the backup itself). Files are read by `jobs`
threads (zstd, AES-GCM, SHA-256 and the page checks release the GIL), then the backup
waits until every WAL segment it needs is in the archive, and only then writes the
manifest. Any failure before that leaves no manifest, so nothing half done is listed; the
objects already stored are removed at once, or by the next backup's cleanup when storage
was the thing that failed.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import psycopg

from pgwarden.backup.catalog import Catalog
from pgwarden.backup.context import Encoding
from pgwarden.backup.manifest import BackupKind, FileEntry, Manifest, backup_id
from pgwarden.backup.parallel import run_all
from pgwarden.backup.scan import ScannedFile, scan
from pgwarden.backup.upload import Counters, FileResult, Uploader, plan_bundles
from pgwarden.errors import PgwardenError
from pgwarden.logs import get_logger
from pgwarden.model import Lsn
from pgwarden.postgres.conf import InstanceSpec
from pgwarden.postgres.sql import connect
from pgwarden.storage import StorageError
from pgwarden.wal.archive import ArchiveConflictError, ArchiveError, WalArchive
from pgwarden.wal.names import segment_name, segment_number

log = get_logger("backup")

_START_WAL = re.compile(r"^START WAL LOCATION: [0-9A-F]+/[0-9A-F]+ \(file ([0-9A-F]{24})\)$", re.M)
_START_TIMELINE = re.compile(r"^START TIMELINE: (\d+)$", re.M)

Progress = Callable[[Counters, int], None]


class BackupError(PgwardenError):
    """The backup did not complete; nothing of it is offered for restore."""


@dataclass(frozen=True)
class BackupRequest:
    kind: BackupKind = "full"
    from_standby: bool = False
    jobs: int = 2
    # How long to wait for the WAL the backup needs to reach the archive.
    archive_timeout: float = 60.0


@dataclass(frozen=True)
class _Server:
    in_recovery: bool
    data_checksums: bool
    segment_size: int
    system_identifier: str
    version: int
    data_directory: str


def _server(conn: psycopg.Connection[Any]) -> _Server:
    row = conn.execute(
        "SELECT pg_is_in_recovery(), current_setting('data_checksums') = 'on',"
        " (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'),"
        " (SELECT system_identifier::text FROM pg_control_system()),"
        " current_setting('server_version_num')::int, current_setting('data_directory')"
    ).fetchone()
    assert row is not None
    return _Server(*row)


def _check_target(server: _Server, spec: InstanceSpec, request: BackupRequest) -> None:
    if Path(server.data_directory).resolve() != spec.data_dir.resolve():
        raise BackupError(
            f"the instance at {spec.host}:{spec.port} serves {server.data_directory}, "
            f"not the configured data directory {spec.data_dir}"
        )
    if request.from_standby and not server.in_recovery:
        raise BackupError(f"--from-standby was given but {spec.name} is the primary")
    if server.in_recovery and not request.from_standby:
        raise BackupError(f"{spec.name} is a standby: pass --from-standby to back it up")


def _basis(catalog: Catalog, server: _Server, kind: BackupKind) -> Manifest | None:
    if kind == "full":
        return None
    for manifest in reversed(catalog.manifests()):
        if manifest.system_identifier == server.system_identifier:
            return manifest
    log.info("backup.no_basis", reason="no earlier backup of this cluster: taking a full one")
    return None


def _switch_wal_on_primary(conn: psycopg.Connection[Any], spec: InstanceSpec) -> None:
    """From a standby, ask the primary to finish the current segment so it gets archived."""
    row = conn.execute("SELECT sender_host, sender_port FROM pg_stat_wal_receiver").fetchone()
    if row is None or row[0] is None:
        return
    try:
        with psycopg.connect(
            host=row[0], port=row[1], user=spec.superuser, password=spec.superuser_password,
            dbname="postgres", connect_timeout=2, autocommit=True,
        ) as primary:  # fmt: skip
            primary.execute("SELECT pg_switch_wal()")
    except psycopg.Error as exc:
        log.warning("backup.switch_wal_failed", reason=str(exc).strip())


def _archive_needed_wal(
    catalog: Catalog,
    archive: WalArchive | None,
    pg_wal: Path,
    timeline: int,
    first: int,
    last: int,
    segment_size: int,
    timeout: float,
) -> None:
    """Make sure the WAL the backup needs is archived. On a primary (`archive` given),
    pg_backup_stop has just completed the last segment: push what the archive lacks
    straight from pg_wal rather than wait for archive_command (a push racing the archiver
    is harmless: identical content is accepted). Otherwise wait for the archiver."""
    missing = [segment_name(timeline, n, segment_size) for n in range(first, last + 1)]
    deadline = time.monotonic() + timeout
    while True:
        left = []
        for name in missing:
            if catalog.store.exists(catalog.layout.wal_segment(timeline, name)):
                continue
            if archive is not None and (pg_wal / name).is_file():
                try:
                    archive.push(pg_wal / name)
                except ArchiveConflictError:
                    raise
                except ArchiveError:
                    if (pg_wal / name).exists():
                        raise
                else:
                    continue  # else: archived and recycled meanwhile; the store has it
            left.append(name)
        missing = left
        if not missing:
            return
        if time.monotonic() >= deadline:
            raise BackupError(
                f"WAL segment {missing[0]} that the backup needs did not reach the archive "
                f"within {timeout:g} s; is archive_command set to 'pgwarden wal-push %p'?"
            )
        time.sleep(0.05)


class BackupRun:
    """One backup from start to manifest; `run()` returns the manifest written."""

    def __init__(
        self,
        *,
        cluster: str,
        spec: InstanceSpec,
        catalog: Catalog,
        encoding: Encoding,
        request: BackupRequest,
        progress: Progress | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        wal: WalArchive | None = None,
    ) -> None:
        self.wal = wal
        self.cluster = cluster
        self.spec = spec
        self.catalog = catalog
        self.encoding = encoding
        self.request = request
        self.progress = progress
        self.clock = clock
        self.counters = Counters()

    def run(self) -> Manifest:
        try:
            conn = connect(self.spec, timeout=10)
        except PgwardenError as exc:
            raise BackupError(f"cannot start a backup: {exc}") from exc
        with conn:
            server = _server(conn)
            _check_target(server, self.spec, self.request)
            basis = _basis(self.catalog, server, self.request.kind)
            kind: BackupKind = "incr" if basis is not None else "full"
            started = self.clock()
            ident = backup_id(started, kind)
            while self.catalog.has_objects(ident):  # one per second at most: ids are times
                time.sleep(1)
                started = self.clock()
                ident = backup_id(started, kind)
            log.info("backup.started", backup=ident, kind=kind, member=self.spec.name)
            try:
                return self._take(conn, server, ident, kind, started, basis)
            except BaseException as exc:
                if isinstance(exc, BackupError):
                    failure: BaseException = exc
                elif isinstance(exc, PgwardenError | psycopg.Error | OSError):
                    failure = BackupError(f"backup {ident} failed: {str(exc).strip()}")
                else:
                    self._discard(ident)
                    raise
                log.error("backup.failed", backup=ident, reason=str(failure))
                self._discard(ident)
                if failure is exc:
                    raise
                raise failure from exc

    def _discard(self, ident: str) -> None:
        try:
            self.catalog.delete_objects(ident)
        except StorageError as exc:
            log.warning("backup.cleanup_deferred", backup=ident, reason=str(exc))

    def _take(
        self,
        conn: psycopg.Connection[Any],
        server: _Server,
        ident: str,
        kind: BackupKind,
        started: datetime,
        basis: Manifest | None,
    ) -> Manifest:
        row = conn.execute("SELECT pg_backup_start(%s, true)", [f"pgwarden {ident}"]).fetchone()
        assert row is not None
        start_lsn = int(Lsn.parse(str(row[0])))
        found = scan(self.spec.data_dir)
        uploader = Uploader(
            store=self.catalog.store,
            layout=self.catalog.layout,
            backup_id=ident,
            encoding=self.encoding,
            start_lsn=start_lsn,
            check_pages=server.data_checksums,
            basis={} if basis is None else {e.path: e for e in basis.files},
            counters=self.counters,
        )
        results = self._upload(uploader, found.files)
        if server.in_recovery:
            _switch_wal_on_primary(conn, self.spec)
        stop = conn.execute(
            "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)"
        ).fetchone()
        assert stop is not None
        stop_lsn = int(Lsn.parse(stop[0]))
        label, spcmap = str(stop[1]), str(stop[2] or "")
        timeline = int(_search(_START_TIMELINE, label))
        start_wal = _search(_START_WAL, label)
        first = segment_number(start_lsn, server.segment_size)
        last = segment_number(max(stop_lsn - 1, start_lsn), server.segment_size)
        if server.in_recovery:
            _switch_wal_on_primary(conn, self.spec)
        _archive_needed_wal(
            self.catalog,
            None if server.in_recovery else self.wal,
            self.spec.data_dir / "pg_wal",
            timeline,
            first,
            last,
            server.segment_size,
            self.request.archive_timeout,
        )
        entries = sorted((r.entry for r in results if r.entry is not None), key=lambda e: e.path)
        bad = {r.entry.path: r.bad_blocks for r in results if r.bad_blocks and r.entry}
        manifest = Manifest(
            id=ident,
            kind=kind,
            cluster=self.cluster,
            member=self.spec.name,
            from_standby=server.in_recovery,
            system_identifier=server.system_identifier,
            pg_version=server.version,
            timeline=timeline,
            start_lsn=start_lsn,
            stop_lsn=stop_lsn,
            start_wal=start_wal,
            stop_wal=segment_name(timeline, last, server.segment_size),
            segment_size=server.segment_size,
            start_time=started,
            stop_time=self.clock(),
            compression=self.encoding.compression,
            level=self.encoding.level,
            key_id=None if self.encoding.key is None else self.encoding.key.key_id,
            data_checksums=server.data_checksums,
            backup_label=label,
            tablespace_map=spcmap,
            files=tuple(entries),
            directories=found.directories,
            tablespaces=found.tablespaces,
            bad_pages=bad,
        )
        self.catalog.save(manifest, level=self.encoding.level)
        if bad:
            log.warning("backup.bad_pages", backup=ident, pages=sum(len(b) for b in bad.values()))
        log.info(
            "backup.finished",
            backup=ident,
            kind=kind,
            db_bytes=manifest.db_bytes,
            stored_bytes=self.counters.stored_bytes,
            reused_bytes=self.counters.reused_bytes,
            seconds=round((manifest.stop_time - started).total_seconds(), 3),
        )
        return manifest

    def _upload(self, uploader: Uploader, files: tuple[ScannedFile, ...]) -> list[FileResult]:
        large, bundles = plan_bundles(list(files))
        total = sum(f.size for f in files)
        tasks: list[Callable[[], list[FileResult]]] = [
            partial(_as_list, uploader.upload_file, f, n) for n, f in enumerate(large)
        ]
        tasks += [partial(uploader.upload_bundle, b, n) for n, b in enumerate(bundles)]
        progress = self.progress
        done = run_all(
            self.request.jobs,
            tasks,
            tick=None if progress is None else lambda: progress(self.counters, total),
            on_failure=uploader.cancelled.set,
        )
        return [result for results in done for result in results]


def _as_list(
    upload: Callable[[ScannedFile, int], FileResult], f: ScannedFile, n: int
) -> list[FileResult]:
    return [upload(f, n)]


def _search(pattern: re.Pattern[str], label: str) -> str:
    match = pattern.search(label)
    if match is None:
        raise BackupError(f"PostgreSQL returned a backup label without {pattern.pattern!r}")
    return match.group(1)


def reused_entries(manifest: Manifest) -> list[FileEntry]:
    """Files an incremental backup took from earlier backups instead of storing them."""
    return [entry for entry in manifest.files if entry.owner != manifest.id]
