"""The agent's WAL services: the archiver, the fetcher and the socket they answer on."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pgwarden.agent.walserver import WalServer
from pgwarden.backup.context import BackupContext
from pgwarden.errors import PgwardenError
from pgwarden.logs import get_logger
from pgwarden.postgres.instance import Instance
from pgwarden.wal.archive import ArchiveError
from pgwarden.wal.archiver import Archiver
from pgwarden.wal.continuity import backfill
from pgwarden.wal.fetcher import Fetcher
from pgwarden.wal.names import DEFAULT_SEGMENT_SIZE, history_file_name, parse_history
from pgwarden.wal.precompress import Precompressor

if TYPE_CHECKING:
    from pgwarden.config import Settings


log = get_logger("agent.wal")


def wal_spool_path(data_dir: Path) -> Path:
    """Beside the data directory, never in it: `fetched/` holds WAL the fetcher prefetched,
    `pushed/` the markers of files the archiver stored before PostgreSQL asked."""
    return data_dir.with_name(data_dir.name + ".wal-spool")


def restored_wal_paths(data_dir: Path, socket: Path | None = None) -> tuple[Path, Path]:
    """The WAL socket and fetch spool of the instance on `data_dir`: the agent's own layout,
    so an agent that later runs the directory serves the same restore_command."""
    spool = wal_spool_path(data_dir) / "fetched"
    return socket or data_dir.with_name(data_dir.name + ".wal.sock"), spool


class WalService:
    def __init__(
        self,
        settings: Settings,
        instance: Instance,
        socket_path: Path,
        owner: tuple[int, int] | None,
        event: Callable[[str, dict[str, Any]], None],
    ) -> None:
        context = BackupContext.from_settings(settings)
        self.instance = instance
        self.event = event
        self._segment_size: int | None = None
        data_dir = instance.spec.data_dir
        pg_wal = data_dir / "pg_wal"
        wal = context.wal
        ahead = Precompressor(
            pg_wal, self.segment_size, compression=wal.compression, level=wal.level, key=wal.key
        )
        spool = wal_spool_path(data_dir)
        spool.mkdir(mode=0o700, parents=True, exist_ok=True)
        if owner is not None:  # archive_command and restore_command work in it
            os.chown(spool, *owner)
        self.archiver = Archiver(
            wal,
            pg_wal,
            event=event,
            max_backlog_bytes=settings.wal.max_backlog_bytes,
            precompress=ahead,
            acknowledged=spool / "pushed",
            owner=owner,
        )
        self.fetcher = Fetcher(
            context.wal,
            spool / "fetched",
            segment_size=self.segment_size,
            owner=owner,
        )
        self.server = WalServer(socket_path, self.archiver, self.fetcher, pg_wal, owner)

    def segment_size(self) -> int:
        """The instance's WAL segment size (pg_control), read once."""
        if self._segment_size is None:
            try:
                text = self.instance.controldata().get("Bytes per WAL segment", "")
                self._segment_size = int(text)
            except (ValueError, PgwardenError):
                return DEFAULT_SEGMENT_SIZE
        return self._segment_size

    def backfill(self, timeline: int) -> None:
        """After this member's promotion to `timeline`: archive, in the background, the
        old-timeline segments it holds that the archive lacks (the old primary may have
        died before archiving them)."""
        threading.Thread(target=self._backfill, args=(timeline,), name="wal-backfill",
                         daemon=True).start()  # fmt: skip

    def _backfill(self, timeline: int) -> None:
        pg_wal = self.instance.spec.data_dir / "pg_wal"
        archive = self.archiver.archive
        try:
            history = parse_history((pg_wal / history_file_name(timeline)).read_text())
            names = backfill(
                (p.name for p in pg_wal.iterdir()), history, timeline, self.segment_size()
            )
            pushed = []
            for name in names:
                if archive.store.exists(archive.object_key(name)):
                    continue
                try:
                    archive.push(pg_wal / name)
                except ArchiveError as exc:
                    if not (pg_wal / name).exists():
                        continue  # recycled by a checkpoint meanwhile: nothing to save
                    raise exc from None
                pushed.append(name)
        except (PgwardenError, OSError, ValueError) as exc:
            log.error("wal.backfill_failed", timeline=timeline, reason=str(exc))
            self.event("archive_backfill_failed", {"timeline": timeline, "reason": str(exc)})
            return
        log.info("wal.backfilled", timeline=timeline, checked=len(names), pushed=len(pushed))
        if pushed:
            self.event("archive_backfilled", {"timeline": timeline, "segments": pushed})

    def start(self) -> None:
        self.server.start()
        self.archiver.start()

    def stop(self) -> None:
        self.server.stop()
        self.archiver.stop()
        self.fetcher.stop()

    def snapshot(self) -> dict[str, Any]:
        ahead = self.archiver.precompress
        return {
            "archive": self.archiver.snapshot(),
            "precompressed": None
            if ahead is None
            else {"used": ahead.hits, "redone": ahead.misses},
            "fetch": self.fetcher.snapshot(),
        }
