"""The backups in storage: which are complete, loading manifests, deleting safely."""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pgwarden.backup.manifest import Manifest, ManifestError, is_backup_id
from pgwarden.codec import CodecError, Key, decode_bytes, encode_bytes
from pgwarden.storage import ObjectNotFound, ObjectStore
from pgwarden.storage.layout import Layout


class BackupNotFound(ManifestError):  # noqa: N818 - named after what the caller checks for
    """No complete backup answers to the id asked for."""


@dataclass(frozen=True)
class StoredBackups:
    """One listing: complete backups (with a manifest) and ids with objects but none."""

    complete: tuple[str, ...]
    incomplete: tuple[str, ...]


class Catalog:
    """Backups of one cluster in one store, read with the configured key."""

    def __init__(self, store: ObjectStore, layout: Layout, key: Key | None) -> None:
        self.store = store
        self.layout = layout
        self.key = key

    def scan(self) -> StoredBackups:
        """List the store once; a manifest is what makes a backup complete."""
        prefix = self.layout.backups_prefix
        seen: set[str] = set()
        complete: set[str] = set()
        for info in self.store.list(prefix):
            backup, _, rest = info.key[len(prefix) :].partition("/")
            if not is_backup_id(backup):
                continue
            seen.add(backup)
            if rest == "manifest.json":
                complete.add(backup)
        return StoredBackups(tuple(sorted(complete)), tuple(sorted(seen - complete)))

    def has_objects(self, backup_id: str) -> bool:
        """Whether anything is stored under the backup's prefix (complete or not)."""
        listing = self.store.list(self.layout.backup_prefix(backup_id), page_size=1)
        return next(iter(listing), None) is not None

    def load(self, backup_id: str) -> Manifest:
        key = self.layout.manifest(backup_id)
        try:
            raw = self.store.get(key)
        except ObjectNotFound:
            raise BackupNotFound(f"there is no complete backup {backup_id}") from None
        try:
            plain = decode_bytes(raw, keys=self.key)
        except CodecError as exc:
            raise ManifestError(f"manifest {key} cannot be read: {exc}") from exc
        manifest = Manifest.from_json(plain, key)
        if manifest.id != backup_id:
            raise ManifestError(f"manifest {key} describes backup {manifest.id}, not {backup_id}")
        return manifest

    def manifests(self, ids: Iterable[str] | None = None) -> list[Manifest]:
        """The manifests of `ids` (default: every complete backup), oldest first."""
        wanted = list(self.scan().complete if ids is None else ids)
        with ThreadPoolExecutor(max_workers=8) as pool:
            return sorted(pool.map(self.load, wanted), key=lambda m: m.id)

    def resolve(self, selector: str) -> Manifest:
        """`latest` or a backup id, as a complete backup's manifest."""
        if selector == "latest":
            complete = self.scan().complete
            if not complete:
                raise BackupNotFound(
                    f"there is no complete backup of cluster {self.layout.cluster} yet"
                )
            return self.load(complete[-1])
        if not is_backup_id(selector):
            raise BackupNotFound(f"{selector!r} is not a backup id (like 20261124T065015F)")
        return self.load(selector)

    def save(self, manifest: Manifest, *, level: int) -> None:
        """Write the manifest: the step that makes the backup complete."""
        encoded, _ = encode_bytes(manifest.to_json(), level=level, key=self.key)
        self.store.put(self.layout.manifest(manifest.id), encoded, if_absent=True)

    def dependents(self, backup_id: str, manifests: Iterable[Manifest]) -> list[str]:
        return sorted(m.id for m in manifests if backup_id in m.references)

    def delete(self, backup_id: str, *, others: Iterable[Manifest] = ()) -> int:
        """Remove a backup: its manifest first (so it stops being offered), then its objects.

        Refused when a backup in `others` still stores files in it. Returns the number of
        objects removed."""
        users = self.dependents(backup_id, others)
        if users:
            raise ManifestError(
                f"backup {backup_id} holds files that {', '.join(users)} still use; "
                "delete those first"
            )
        self.store.delete(self.layout.manifest(backup_id))
        return self.delete_objects(backup_id)

    def delete_objects(self, backup_id: str) -> int:
        """Remove every object under the backup's prefix (also of an incomplete one)."""
        keys = [info.key for info in self.store.list(self.layout.backup_prefix(backup_id))]
        self.store.delete_many(keys)
        return len(keys)
