"""What every backup, restore and WAL command needs, built once from the settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pgwarden.backup.catalog import Catalog
from pgwarden.codec import Key, load_key
from pgwarden.storage import ObjectStore, open_store
from pgwarden.storage.layout import Layout
from pgwarden.wal.archive import WalArchive

if TYPE_CHECKING:
    from pgwarden.config import Settings

# WAL is compressed fast: a push must keep up with PostgreSQL, and WAL compresses well
# even at level 1 (see docs/codec.md).
WAL_LEVEL = 1


@dataclass(frozen=True)
class Encoding:
    """How objects are encoded: compression, its level, the encryption key."""

    compression: str
    level: int
    key: Key | None


@dataclass(frozen=True)
class BackupContext:
    store: ObjectStore
    layout: Layout
    key: Key | None
    encoding: Encoding

    @classmethod
    def from_settings(cls, settings: Settings, store: ObjectStore | None = None) -> BackupContext:
        """The configured store, key and compression (the key file is read and checked)."""
        backup = settings.backup
        key = None if backup.encryption_key_file is None else load_key(backup.encryption_key_file)
        encoding = Encoding(backup.compression.algorithm, backup.compression.level, key)
        return cls(
            store if store is not None else open_store(settings.storage),
            Layout(settings.cluster),
            key,
            encoding,
        )

    @property
    def catalog(self) -> Catalog:
        return Catalog(self.store, self.layout, self.key)

    @property
    def wal(self) -> WalArchive:
        return WalArchive(self.store, self.layout, self.key, self.encoding.compression, WAL_LEVEL)
