"""Pushing WAL files to the archive and fetching them back, straight to and from storage.

This is the direct path `pgwarden wal-push` / `wal-fetch` take (the agent-assisted path
builds on it). Segments are stored at `<cluster>/wal/<timeline>/<name>`, history files at
`<cluster>/wal/<name>`, encoded like every other object. A push never overwrites: an
archived file with identical plaintext is success (PostgreSQL retries pushes after a
crash), different content is an error that leaves the stored one in place.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from pgwarden.codec import CodecError, Key, decode, decode_bytes, encode_bytes
from pgwarden.errors import PgwardenError
from pgwarden.storage import ObjectExists, ObjectNotFound, ObjectStore
from pgwarden.storage.layout import Layout
from pgwarden.wal.names import kind_of


class ArchiveError(PgwardenError):
    """A WAL file could not be archived or fetched; the message names it."""


class ArchiveConflictError(ArchiveError):
    """The archive already holds different content under this name."""


@dataclass(frozen=True)
class WalArchive:
    store: ObjectStore
    layout: Layout
    key: Key | None
    compression: str = "zstd"
    level: int = 1

    def object_key(self, name: str) -> str:
        """Where a WAL file of this name is stored; ArchiveError for other names."""
        kind = kind_of(name)
        if kind == "history":
            return self.layout.wal_history(name)
        if kind in ("segment", "partial", "backup_label"):
            return self.layout.wal_segment(int(name[:8], 16), name)
        raise ArchiveError(f"{name!r} is not the name of a WAL segment or history file")

    def push(self, path: Path) -> bool:
        """Archive the file at `path`; True if stored now, False if already there identical."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ArchiveError(f"cannot read {path}: {exc.strerror or exc}") from exc
        encoded, digest = encode_bytes(
            data, compression=self.compression, level=self.level, key=self.key
        )
        return self.store_encoded(path.name, encoded, digest.sha256)

    def store_encoded(self, name: str, encoded: bytes, sha256: str) -> bool:
        """Store an already encoded WAL file, never overwriting; see `push`."""
        key = self.object_key(name)
        try:
            self.store.put(key, encoded, {"sha256": sha256}, if_absent=True)
        except ObjectExists:
            if self._stored_sha256(key) == sha256:
                return False
            raise ArchiveConflictError(
                f"{name} is already archived as {key} with different content; "
                "the archived file was kept and this push refused"
            ) from None
        return True

    def _stored_sha256(self, key: str) -> str:
        info = self.store.head(key)
        if info.metadata and "sha256" in info.metadata:
            return info.metadata["sha256"]
        plain = decode_bytes(self.store.get(key), keys=self.key)
        return hashlib.sha256(plain).hexdigest()

    def warm(self) -> None:
        """Open a connection to storage and load what its first request loads (a lookup
        of a name that is never stored), so the first push does not pay for it."""
        self.store.exists(self.layout.wal_history("00000000.history"))

    def fetch(self, name: str, destination: Path) -> bool:
        """Write the archived file `name` to `destination`; False if it is not archived.

        The plaintext is checked by zstd's frame checksum where the object has one (its
        SHA-256 would cost more CPU than decompressing it), else by its SHA-256."""
        key = self.object_key(name)
        temp = destination.with_name(destination.name + ".pgwarden-fetch")
        try:
            with temp.open("wb") as out:
                for piece in decode(self.store.get_stream(key), keys=self.key, verify="frame"):
                    out.write(piece)
            temp.replace(destination)
        except ObjectNotFound:
            temp.unlink(missing_ok=True)
            return False
        except CodecError as exc:
            temp.unlink(missing_ok=True)
            raise ArchiveError(f"archived {key} is damaged: {exc}") from exc
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return True
