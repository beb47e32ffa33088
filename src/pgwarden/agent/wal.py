"""The agent's WAL services: the archiver, the fetcher and the socket they answer on."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pgwarden.agent.walserver import WalServer
from pgwarden.backup.context import BackupContext
from pgwarden.errors import PgwardenError
from pgwarden.postgres.instance import Instance
from pgwarden.wal.archiver import Archiver
from pgwarden.wal.fetcher import Fetcher
from pgwarden.wal.names import DEFAULT_SEGMENT_SIZE

if TYPE_CHECKING:
    from pgwarden.config import Settings


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
        self._segment_size: int | None = None
        data_dir = instance.spec.data_dir
        pg_wal = data_dir / "pg_wal"
        self.archiver = Archiver(context.wal, pg_wal, event=event)
        self.fetcher = Fetcher(
            context.wal,
            data_dir.with_name(data_dir.name + ".wal-spool"),
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

    def start(self) -> None:
        self.server.start()
        self.archiver.start()

    def stop(self) -> None:
        self.server.stop()
        self.archiver.stop()
        self.fetcher.stop()

    def snapshot(self) -> dict[str, Any]:
        return {"archive": self.archiver.snapshot(), "fetch": self.fetcher.snapshot()}
