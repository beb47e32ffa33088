"""Where each kind of object lives in the store: `<cluster>/basebackups/...`, `<cluster>/wal/...`.

The store's own root (an S3 bucket prefix, a directory) is below this; every cluster gets
its own subtree so that several clusters can share one bucket. See ../shared/DESIGN.md.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Layout:
    """Object keys for one cluster."""

    cluster: str

    @property
    def backups_prefix(self) -> str:
        return f"{self.cluster}/basebackups/"

    def backup_prefix(self, backup_id: str) -> str:
        return f"{self.backups_prefix}{backup_id}/"

    def manifest(self, backup_id: str) -> str:
        """Written last: a backup without one is incomplete by definition."""
        return f"{self.backup_prefix(backup_id)}manifest.json"

    def backup_object(self, name: str) -> str:
        """A data object named as in a manifest (`<backup_id>/f/12`, `<backup_id>/b/3`)."""
        return f"{self.backups_prefix}{name}"

    @property
    def wal_prefix(self) -> str:
        return f"{self.cluster}/wal/"

    def wal_segment(self, timeline: int, name: str) -> str:
        """A segment (or a `.partial` one) of `timeline`."""
        return f"{self.wal_prefix}{timeline:08X}/{name}"

    def wal_history(self, name: str) -> str:
        """A timeline history file (`00000002.history`)."""
        return f"{self.wal_prefix}{name}"

    @property
    def drills_prefix(self) -> str:
        return f"{self.cluster}/drills/"
