"""Object storage: the `ObjectStore` protocol and its backends (see ../shared/DESIGN.md).

`open_store(settings.storage)` builds the configured backend. The S3 backend (boto3) is
imported only when configured, so the fs backend and the protocol stay standard library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pgwarden.storage.base import (
    ObjectExists,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    StorageError,
)
from pgwarden.storage.fs import FsStore

if TYPE_CHECKING:  # settings are only read here; the config module pulls in pydantic
    from pgwarden.config import FsStorage, S3Storage

__all__ = [
    "FsStore",
    "ObjectExists",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
    "StorageError",
    "open_store",
]


def open_store(settings: S3Storage | FsStorage) -> ObjectStore:
    """The object store described by the `storage` section of the settings."""
    if settings.type == "fs":
        return FsStore(settings.directory)
    from pgwarden.storage.s3 import S3Store  # noqa: PLC0415 - boto3 costs ~0.3 s to import

    return S3Store(
        settings.bucket,
        settings.prefix,
        endpoint_url=settings.endpoint_url,
        region=settings.region,
        profile=settings.profile,
        credentials_file=None
        if settings.credentials_file is None
        else str(settings.credentials_file),
        force_path_style=settings.force_path_style,
        sse=settings.sse,
        kms_key_id=settings.kms_key_id,
    )
