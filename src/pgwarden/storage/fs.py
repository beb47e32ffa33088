"""`FsStore`: objects as files under one directory (the embedded default, and for tests).

An object `a/b/c` is the file `<directory>/a/b/c` holding exactly its bytes, so an
operator can read or copy it with ordinary tools. Crash safety:

- Every write goes to a hidden temporary file in the target's directory, is fsynced, then
  renamed (or, with `if_absent`, hard-linked: `link` fails if the name exists, which makes
  the check and the write one atomic step) and the directory is fsynced. A crash leaves
  the old object or the new one, never part of one; at worst a hidden `.*.tmp` file.
- Metadata lives in a hidden JSON sidecar `.<name>.<inode>.meta` written *before* the
  data file appears. Naming it by the data file's inode (which rename and link keep) ties
  it to exactly that version of the object: a crash or a concurrent writer can leave a
  stale sidecar behind, but never one that `head()` would attribute to other data.
- Empty directories are removed on delete; a write that loses that race recreates them.

Hidden names (a part starting with '.') are never keys (see `base.check_key`), so
temporary files and sidecars never show in `list()`. A key cannot be both an object and
a "directory" of other objects here (`a` and `a/b`), unlike on S3.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import stat
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path

from pgwarden.storage.base import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_PAGE_SIZE,
    ObjectExists,
    ObjectInfo,
    ObjectNotFound,
    StorageError,
    check_key,
    check_metadata,
    check_prefix,
)

FILE_MODE = 0o640
DIRECTORY_MODE = 0o750
_ATTEMPTS = 3  # against a concurrent delete removing the directory we are writing into


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)


def _modified(mtime_ns: int) -> datetime:
    return datetime.fromtimestamp(mtime_ns / 1e9, tz=UTC)


class FsStore:
    """An `ObjectStore` in a local or mounted directory, created on the first write."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self._owner: tuple[int, int] | None = None
        self._owner_known = False

    def _store_owner(self) -> tuple[int, int] | None:
        """Run as root, new files and directories go to the store directory's owner, so that
        `pgwarden` run by root and archive_command run by postgres can share one store."""
        if not self._owner_known and os.geteuid() == 0:
            try:
                info = self.directory.stat()
            except OSError:
                return None  # not created yet: look again next time
            self._owner_known = True
            if info.st_uid != 0:
                self._owner = (info.st_uid, info.st_gid)
        return self._owner

    def _adopt(self, target: int | Path) -> None:
        owner = self._store_owner()
        if owner is None:
            return
        if isinstance(target, int):
            os.fchown(target, *owner)
        else:
            os.chown(target, *owner)

    def __repr__(self) -> str:
        return f"FsStore({str(self.directory)!r})"

    # ------------------------------------------------------------------ paths
    def _path(self, key: str) -> Path:
        return self.directory.joinpath(*check_key(key).split("/"))

    def _sidecar(self, path: Path, inode: int) -> Path:
        return path.with_name(f".{path.name}.{inode}.meta")

    def _temporary(self, path: Path) -> Path:
        return path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")

    def _error(self, action: str, key: str, exc: OSError) -> StorageError:
        if exc.errno in (errno.ENOTDIR, errno.EISDIR, errno.EEXIST):
            reason = "a part of the key is already an object, or the key is a directory"
        else:
            reason = exc.strerror or str(exc)
        return StorageError(f"cannot {action} {key} in {self.directory}: {reason}")

    def _make_directories(self, directory: Path) -> None:
        """Create `directory` and missing parents, each made durable in its parent."""
        missing: list[Path] = []
        current = directory
        while not current.is_dir():
            missing.append(current)
            if current == current.parent:
                break
            current = current.parent
        for path in reversed(missing):
            try:
                path.mkdir(DIRECTORY_MODE)
            except FileExistsError:
                if not path.is_dir():
                    raise
                continue
            self._adopt(path)
            _fsync_directory(path.parent)

    # ------------------------------------------------------------------ writes
    def put(
        self,
        key: str,
        data: bytes,
        metadata: Mapping[str, str] | None = None,
        *,
        if_absent: bool = False,
    ) -> None:
        """Store `data` at `key` atomically; see `ObjectStore.put`."""
        self._write(key, (data,), metadata, if_absent=if_absent)

    def put_stream(
        self,
        key: str,
        chunks: Iterable[bytes],
        metadata: Mapping[str, str] | None = None,
        *,
        if_absent: bool = False,
    ) -> int:
        """Store the chunks atomically and return the bytes written."""
        return self._write(key, chunks, metadata, if_absent=if_absent)

    def _open_temporary(self, key: str, path: Path) -> tuple[int, Path]:
        for attempt in range(_ATTEMPTS):
            temporary = self._temporary(path)
            try:
                self._make_directories(path.parent)
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                fd = os.open(temporary, flags, FILE_MODE)
            except FileNotFoundError as exc:
                if attempt == _ATTEMPTS - 1:
                    raise self._error("write", key, exc) from exc
            except OSError as exc:
                raise self._error("write", key, exc) from exc
            else:
                self._adopt(fd)
                return fd, temporary
        raise AssertionError("unreachable")  # pragma: no cover

    def _write(
        self,
        key: str,
        chunks: Iterable[bytes],
        metadata: Mapping[str, str] | None,
        *,
        if_absent: bool,
    ) -> int:
        path = self._path(key)
        sidecar_text = json.dumps({"metadata": check_metadata(key, metadata)}).encode()
        if if_absent and path.is_file():
            raise ObjectExists(key)  # cheap early answer; the link below is the real check
        fd, temporary = self._open_temporary(key, path)
        leftovers = [temporary]
        written = 0
        try:
            with os.fdopen(fd, "wb") as out:
                # The caller's iterator may raise anything: that propagates unchanged.
                for chunk in chunks:
                    try:
                        out.write(chunk)
                    except OSError as exc:
                        raise self._error("write", key, exc) from exc
                    written += len(chunk)
                try:
                    out.flush()
                    os.fsync(out.fileno())
                    inode = os.fstat(out.fileno()).st_ino
                except OSError as exc:
                    raise self._error("write", key, exc) from exc
            sidecar = self._sidecar(path, inode)
            leftovers.append(sidecar)
            try:
                self._write_sidecar(path, sidecar, sidecar_text)
                replaced = _inode(path)
                if if_absent:
                    path.hardlink_to(temporary)  # the temporary name goes in `finally`
                    leftovers.remove(sidecar)
                else:
                    temporary.replace(path)
                    leftovers.clear()
                _fsync_directory(path.parent)
            except FileExistsError as exc:
                if if_absent and not path.is_dir():
                    raise ObjectExists(key) from None
                raise self._error("write", key, exc) from exc
            except OSError as exc:
                raise self._error("write", key, exc) from exc
        finally:
            for leftover in leftovers:
                _remove(leftover)
        if replaced is not None and replaced != inode:
            _remove(self._sidecar(path, replaced))
        return written

    def _write_sidecar(self, path: Path, sidecar: Path, text: bytes) -> None:
        temporary = self._temporary(path)
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
            self._adopt(fd)
            with os.fdopen(fd, "wb") as out:
                out.write(text)
                out.flush()
                os.fsync(out.fileno())
            temporary.replace(sidecar)
        except BaseException:
            _remove(temporary)
            raise

    # ------------------------------------------------------------------ reads
    def get(self, key: str) -> bytes:
        """The whole object; ObjectNotFound if there is none."""
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(key) from None
        except OSError as exc:
            raise self._error("read", key, exc) from exc

    def get_stream(self, key: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
        """The object in chunks of at most `chunk_size` bytes."""
        path = self._path(key)
        return self._read_chunks(key, path, chunk_size)

    def _read_chunks(self, key: str, path: Path, chunk_size: int) -> Iterator[bytes]:
        try:
            source = path.open("rb", buffering=0)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(key) from None
        except OSError as exc:
            raise self._error("read", key, exc) from exc
        with source:
            while True:
                try:
                    chunk = source.read(chunk_size)
                except OSError as exc:
                    raise self._error("read", key, exc) from exc
                if not chunk:
                    return
                yield chunk

    def head(self, key: str) -> ObjectInfo:
        """Size, metadata and modification time of the object at `key`."""
        path = self._path(key)
        for _ in range(_ATTEMPTS):
            try:
                status = path.stat()
                if not stat.S_ISREG(status.st_mode):
                    raise ObjectNotFound(key)
                metadata = self._read_sidecar(key, self._sidecar(path, status.st_ino))
                # A writer may have replaced the object (and removed our sidecar) meanwhile.
                if path.stat().st_ino != status.st_ino:
                    continue
            except (FileNotFoundError, NotADirectoryError):
                raise ObjectNotFound(key) from None
            except OSError as exc:
                raise self._error("read", key, exc) from exc
            return ObjectInfo(key, status.st_size, metadata, _modified(status.st_mtime_ns))
        raise StorageError(f"cannot read {key} in {self.directory}: it keeps changing")

    def _read_sidecar(self, key: str, sidecar: Path) -> dict[str, str]:
        try:
            document = json.loads(sidecar.read_bytes())
        except FileNotFoundError:
            return {}  # a file put here by other means than FsStore
        except ValueError:
            raise StorageError(
                f"the metadata of {key} in {self.directory} ({sidecar.name}) is not valid JSON"
            ) from None
        metadata = document.get("metadata") if isinstance(document, dict) else None
        if not isinstance(metadata, dict) or not all(
            isinstance(name, str) and isinstance(value, str) for name, value in metadata.items()
        ):
            raise StorageError(
                f"the metadata of {key} in {self.directory} ({sidecar.name}) is malformed"
            )
        return metadata

    def exists(self, key: str) -> bool:
        """Whether an object is stored at `key`."""
        return self._path(key).is_file()

    def list(self, prefix: str = "", *, page_size: int = DEFAULT_PAGE_SIZE) -> Iterator[ObjectInfo]:
        """Objects whose key starts with `prefix`, sorted by key, one directory at a time.

        `page_size` is accepted for the protocol; directories are read whole.
        """
        check_prefix(prefix)
        head, _, name_prefix = prefix.rpartition("/")
        directory = self.directory.joinpath(*head.split("/")) if head else self.directory
        return self._walk(directory, f"{head}/" if head else "", name_prefix)

    def _walk(self, directory: Path, key_prefix: str, name_prefix: str) -> Iterator[ObjectInfo]:
        try:
            with os.scandir(directory) as scan:
                entries = [
                    entry
                    for entry in scan
                    if not entry.name.startswith(".") and entry.name.startswith(name_prefix)
                ]
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise StorageError(
                f"cannot list {key_prefix or '/'} in {self.directory}: {exc.strerror}"
            ) from exc
        # Sort as S3 does, by the whole key: `a/x` sorts with "a/", after "a-b", before "a0".
        sorted_entries = sorted(
            ((entry.name + "/" if entry.is_dir(follow_symlinks=False) else entry.name), entry)
            for entry in entries
        )
        for sort_name, entry in sorted_entries:
            if sort_name.endswith("/"):
                yield from self._walk(Path(entry.path), key_prefix + sort_name, "")
                continue
            try:
                status = entry.stat()
            except FileNotFoundError:
                continue  # deleted since the directory was read
            if entry.is_file():
                yield ObjectInfo(
                    key_prefix + entry.name, status.st_size, None, _modified(status.st_mtime_ns)
                )

    # ------------------------------------------------------------------ deletes
    def delete(self, key: str) -> None:
        """Remove the object at `key` (and its metadata); nothing if there is none."""
        self._delete(key, self._path(key))

    def delete_many(self, keys: Iterable[str]) -> None:
        """Remove every object named; the keys are all checked before any is removed."""
        paths = [(key, self._path(key)) for key in keys]
        for key, path in paths:
            self._delete(key, path)

    def _delete(self, key: str, path: Path) -> None:
        try:
            inode = _inode(path)
            if inode is None:
                return
            path.unlink()
            _remove(self._sidecar(path, inode))
            _fsync_directory(path.parent)
        except (FileNotFoundError, NotADirectoryError):
            return
        except IsADirectoryError:
            return  # only other objects' "directory": there is no object `key`
        except OSError as exc:
            raise self._error("delete", key, exc) from exc
        self._prune(path.parent)

    def _prune(self, directory: Path) -> None:
        """Remove empty directories from `directory` up to (not including) the root."""
        while directory != self.directory and directory.is_relative_to(self.directory):
            try:
                directory.rmdir()
            except OSError:
                return  # not empty (or gone): stop here
            directory = directory.parent
