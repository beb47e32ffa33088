"""Waking up the moment a file appears in a directory (Linux inotify, through libc).

The archiver must notice `archive_status/<name>.ready` at once: PostgreSQL runs
archive_command right after writing it, and every millisecond the upload starts later is
a millisecond the push waits. Polling every 10 ms costs 5 ms on average and a wake-up per
poll; inotify wakes the watcher when the marker is created. Where inotify is not available
(another OS, the watch limit reached) `wait` simply sleeps its timeout, as polling did.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import struct
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from pgwarden.logs import get_logger

log = get_logger("wal.dirwatch")

IN_CREATE = 0x00000100
IN_MODIFY = 0x00000002
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_DELETE = 0x00000200
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
IN_IGNORED = 0x00008000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name


class DirectoryWatch:
    """`wait(timeout)` returns as soon as a file is created in (or moved into) `directory`
    (or whatever `mask` names), or after `timeout` seconds; True if something happened."""

    def __init__(self, directory: Path, mask: int = 0) -> None:
        self.directory = directory
        self.mask = mask or IN_CREATE | IN_MOVED_TO
        self._fd: int | None = None
        self._watching = False
        self._wd = -1
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) when added
        self._added = False
        self._warned = False
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            self._add_watch = libc.inotify_add_watch
            self._rm_watch = libc.inotify_rm_watch
            fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        except (OSError, AttributeError):
            return
        if fd >= 0:
            self._fd = fd

    @property
    def active(self) -> bool:
        """True once the kernel watches the directory (it may not exist at first)."""
        return self._watching

    def wait(self, timeout: float) -> bool:
        return bool(wait_any([self], timeout))

    def _drain(self) -> None:
        assert self._fd is not None
        with contextlib.suppress(BlockingIOError):
            while data := os.read(self._fd, 65536):  # drain: one wake-up is enough
                if _removed(data, self._wd):
                    # The directory went (a data directory cloned anew): watch its successor.
                    self._watching = False

    def watching(self) -> bool:
        """Watch the directory if it exists now; True if the kernel watches it. A path
        that now names another directory (a symlinked pg_wal whose link was replaced, not
        its target removed) is watched anew."""
        if self._fd is None:
            return False
        if self._watching and _identity(self.directory) != self._identity:
            self._rm_watch(self._fd, self._wd)  # may be gone already: nothing to undo then
            self._watching = False
        return self._watch()

    def take_added(self) -> bool:
        """True if the watch was (re)added since the last call: what happened in the
        directory before then woke nobody."""
        added, self._added = self._added, False
        return added

    def _watch(self) -> bool:
        if self._watching:
            return True
        assert self._fd is not None
        identity = _identity(self.directory)  # before adding: a later change is then seen
        wd = self._add_watch(self._fd, os.fsencode(self.directory), self.mask)
        if wd >= 0:
            self._watching, self._wd, self._identity, self._added = True, wd, identity, True
        elif identity is not None and not self._warned:  # there, and yet not watched
            self._warned = True
            log.warning(
                "dirwatch.unavailable", directory=str(self.directory),
                reason=os.strerror(ctypes.get_errno()),
                consequence="polling it instead (is fs.inotify.max_user_watches reached?)",
            )  # fmt: skip
        return self._watching

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._watching = False


def _identity(directory: Path) -> tuple[int, int] | None:
    try:
        info = directory.stat()
    except OSError:
        return None
    return info.st_dev, info.st_ino


class Wakeup:
    """Something for `wait_any` to wait on besides directories: `set` ends the wait. Safe
    to set from any thread, also while or after another closes it. Without an eventfd
    (the descriptor limit reached) it never fires: waits then last their timeout."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fd: int | None = None
        with contextlib.suppress(OSError):
            self._fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def set(self) -> None:
        with self._lock:  # not a descriptor closed meanwhile and reused for something else
            if self._fd is not None:
                with contextlib.suppress(OSError):  # the counter is full: it is set anyway
                    os.eventfd_write(self._fd, 1)

    def watching(self) -> bool:
        return self._fd is not None

    def _drain(self) -> None:
        with self._lock, contextlib.suppress(BlockingIOError):
            if self._fd is not None:
                os.eventfd_read(self._fd)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def wait_any(
    watches: Sequence[DirectoryWatch | Wakeup], timeout: float
) -> list[DirectoryWatch | Wakeup]:
    """Wait until one of `watches` sees an event, at most `timeout` seconds; the ones that
    did (their events drained). Sleeps the whole `timeout` if none of them can watch."""
    poller = select.poll()  # not select(): an agent may hold descriptors past 1024
    watching: dict[int, DirectoryWatch | Wakeup] = {}
    for watch in watches:
        if watch.watching():
            assert watch._fd is not None
            poller.register(watch._fd, select.POLLIN)
            watching[watch._fd] = watch
    if not watching:
        time.sleep(max(0.0, timeout))
        return []
    fired = [watching[fd] for fd, _ in poller.poll(max(0.0, timeout) * 1000)]
    for watch in fired:
        watch._drain()
    return fired


def _removed(data: bytes, wd: int) -> bool:
    """True if the events in `data` say watch `wd` ended (its directory was removed); the
    end of a watch replaced before is no news."""
    offset = 0
    while offset + _EVENT.size <= len(data):
        event_wd, mask, _, length = _EVENT.unpack_from(data, offset)
        if mask & IN_IGNORED and event_wd == wd:
            return True
        offset += _EVENT.size + length
    return False
