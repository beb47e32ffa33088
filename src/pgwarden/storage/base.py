"""The `ObjectStore` protocol every storage backend implements, its values and errors.

Keys are '/'-separated paths relative to the store's root (an S3 prefix, a directory):
`main/wal/00000001/000000010000000000000003`. The same rules hold on every backend so
that an archive can move between them: no empty, '.' or '..' parts, no leading or
trailing '/', and no part starting with '.' (the fs backend keeps its temporary files and
metadata there). Metadata keys are lowercase ASCII (S3 lowercases them anyway) and values
printable ASCII, at most 2 KiB in all (S3's limit).

Writes are all or nothing: after a failed or interrupted `put`/`put_stream` the key holds
its previous object or none, never a partial one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from pgwarden.errors import PgwardenError

DEFAULT_CHUNK_SIZE = 1024 * 1024
DEFAULT_PAGE_SIZE = 1000
MAX_METADATA_BYTES = 2048

_METADATA_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
_METADATA_VALUE = re.compile(r"[\x20-\x7e]*")


class StorageError(PgwardenError):
    """Object storage could not be reached or refused an operation; the message names the
    object key and the reason in one sentence."""


class ObjectNotFound(StorageError):  # noqa: N818 - named after what the caller checks for
    """The object does not exist."""

    def __init__(self, key: str, where: str | None = None) -> None:
        self.key = key
        super().__init__(f"object {where or key} does not exist")


class ObjectExists(StorageError):  # noqa: N818 - named after what the caller checks for
    """A write with `if_absent=True` found the key already taken."""

    def __init__(self, key: str, where: str | None = None) -> None:
        self.key = key
        super().__init__(f"object {where or key} already exists and was not overwritten")


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object. `metadata` is None in `list()` results (S3 does not return it
    there); `head()` always loads it."""

    key: str
    size: int
    metadata: Mapping[str, str] | None
    modified: datetime


class ObjectStore(Protocol):
    """What backups, WAL archiving and drills need from object storage."""

    def put(
        self,
        key: str,
        data: bytes,
        metadata: Mapping[str, str] | None = None,
        *,
        if_absent: bool = False,
    ) -> None:
        """Store `data` at `key`, replacing any object there. With `if_absent`, raise
        ObjectExists instead when the key is taken (atomically on both backends)."""

    def put_stream(
        self,
        key: str,
        chunks: Iterable[bytes],
        metadata: Mapping[str, str] | None = None,
        *,
        if_absent: bool = False,
    ) -> int:
        """Store the concatenated chunks with bounded memory; return the bytes written.
        If `chunks` raises, its exception propagates and nothing becomes visible."""

    def get(self, key: str) -> bytes:
        """The whole object; ObjectNotFound if there is none."""

    def get_stream(self, key: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
        """The object in chunks of at most `chunk_size` bytes. ObjectNotFound is raised
        by the first `next()`, not by this call."""

    def head(self, key: str) -> ObjectInfo:
        """Size, metadata and modification time; ObjectNotFound if there is none."""

    def exists(self, key: str) -> bool:
        """Whether an object is stored at `key`."""

    def list(self, prefix: str = "", *, page_size: int = DEFAULT_PAGE_SIZE) -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix` (a plain string prefix, not only a
        directory), sorted by key, fetched lazily `page_size` keys at a time."""

    def delete(self, key: str) -> None:
        """Remove the object; nothing happens if there is none."""

    def delete_many(self, keys: Iterable[str]) -> None:
        """Remove every object named; missing ones are ignored."""


def check_key(key: str) -> str:
    """Return `key` if it follows the key rules, else raise StorageError naming it."""
    if not isinstance(key, str) or not key:
        raise StorageError(f"object key {key!r} is empty or not a string")
    if key.startswith("/") or key.endswith("/"):
        raise StorageError(f"object key {key!r} must not start or end with '/'")
    if "\\" in key or any(ord(char) < 0x20 or char == "\x7f" for char in key):
        raise StorageError(f"object key {key!r} must not contain backslashes or control characters")
    for part in key.split("/"):
        if not part or part.startswith("."):
            raise StorageError(
                f"object key {key!r} must not contain empty parts or parts starting with '.'"
            )
    return key


def check_prefix(prefix: str) -> str:
    """Return `prefix` if it could begin a valid key ('' lists everything)."""
    if prefix:
        # A prefix ending in '/' (a "directory") is fine; check it as a key without it.
        check_key(prefix.removesuffix("/"))
    return prefix


def check_metadata(key: str, metadata: Mapping[str, str] | None) -> dict[str, str]:
    """A plain dict of `metadata` if every name and value is storable on every backend."""
    checked = dict(metadata or {})
    size = 0
    for name, value in checked.items():
        if not isinstance(name, str) or not _METADATA_NAME.fullmatch(name):
            raise StorageError(
                f"metadata name {name!r} for {key} must be lowercase letters, digits and '-'"
            )
        if not isinstance(value, str) or not _METADATA_VALUE.fullmatch(value):
            raise StorageError(f"metadata {name!r} for {key} must be printable ASCII text")
        size += len(name) + len(value)
    if size > MAX_METADATA_BYTES:
        raise StorageError(
            f"metadata for {key} is {size} bytes, more than the {MAX_METADATA_BYTES} allowed"
        )
    return checked
