"""How the archiver tells archive_command a file is stored, without starting Python.

archive_command (see `invocation.wal_archive_command`) is a shell line that tries, in order:

1. `rm <dir>/<name>`: the archiver stored the file before PostgreSQL asked and left this
   empty marker (pgBackRest's asynchronous archiving answers from `.ok` files the same way);
2. `timeout T grep -qx ok <dir>/<name>.wait`: PostgreSQL asked while the upload was still
   running (the usual case: it runs archive_command the moment it marks a file ready).
   `<name>.wait` is a FIFO the archiver made when it saw the `.ready` marker; it writes
   `ok` into it once the file is stored, so the shell waits without polling and without
   a Python process, and wakes the moment the upload ends (the marker it does not take
   goes when the archiver sees the `.ready` gone);
3. `rm <dir>/<name>` again (stored between 1 and 2), and finally the Python client, which
   asks the agent over its socket or goes to storage directly.

The FIFO only ever appears under its name while the archiver holds it open for writing
(it is made under a temporary name, opened, then renamed), and it is unlinked before it
is closed. A reader thus never blocks in open() on a live agent; a failed upload closes it
without `ok` (the reader sees end of file and falls through to the client), and `T`
bounds the wait on an agent that died or froze holding it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

from pgwarden.invocation import WAIT_SUFFIX
from pgwarden.logs import get_logger

log = get_logger("wal.acks")

_OK = b"ok\n"


class Acknowledgements:
    """Markers and FIFOs in one directory, owned by PostgreSQL's user (`owner`)."""

    def __init__(self, directory: Path, owner: tuple[int, int] | None = None) -> None:
        self.directory = directory
        self.owner = owner
        self._waiters: dict[str, tuple[int, float]] = {}  # name -> (write end, since)

    def reset(self) -> None:
        """Start empty: markers of an earlier run prove nothing now, and its FIFOs have
        no writer any more."""
        self.release_all()
        if self.directory.is_dir():
            shutil.rmtree(self.directory)

    def _ensure_directory(self) -> None:
        if not self.directory.is_dir():
            self.directory.mkdir(mode=0o700, parents=True)
            if self.owner is not None:  # PostgreSQL's user removes the markers
                os.chown(self.directory, *self.owner)

    def expect(self, name: str) -> None:
        """PostgreSQL marked `name` ready: give archive_command a FIFO to wait on."""
        if name in self._waiters:
            return
        temporary = self.directory / f".{name}{WAIT_SUFFIX}"
        try:
            self._ensure_directory()
            temporary.unlink(missing_ok=True)
            os.mkfifo(temporary, 0o600)
            if self.owner is not None:
                os.chown(temporary, *self.owner)
            fd = os.open(temporary, os.O_RDWR | os.O_NONBLOCK)  # never blocks on a FIFO
            try:
                temporary.rename(self.directory / f"{name}{WAIT_SUFFIX}")
            except OSError:
                os.close(fd)
                raise
        except OSError as exc:  # the client path still answers
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)
            log.warning("wal.wait_fifo_failed", name=name, reason=str(exc))
            return
        self._waiters[name] = (fd, time.monotonic())

    def stored(self, name: str) -> None:
        """`name` is archived: leave its marker, then wake whoever waits on its FIFO."""
        try:
            self._ensure_directory()
            (self.directory / name).touch()
        except OSError as exc:  # the client path still answers
            log.warning("wal.acknowledge_failed", name=name, reason=str(exc))
            self.release(name, ok=False)
            return
        self.release(name, ok=True)

    def release(self, name: str, *, ok: bool) -> None:
        """Close `name`'s FIFO, with `ok` written into it first or not (a reader then
        sees end of file and asks the agent through the client)."""
        waiter = self._waiters.pop(name, None)
        if waiter is None:
            return
        fd, _ = waiter
        try:
            if ok:
                with contextlib.suppress(OSError):
                    os.write(fd, _OK)
            # Unlinked before closed: a FIFO without a writer must never be found by name.
            with contextlib.suppress(OSError):
                (self.directory / f"{name}{WAIT_SUFFIX}").unlink(missing_ok=True)
        finally:
            os.close(fd)

    def release_older(self, seconds: float) -> None:
        """Release (without ok) FIFOs waited on longer than `seconds`: their uploads hang."""
        now = time.monotonic()
        old = [name for name, (_, since) in self._waiters.items() if now - since > seconds]
        for name in old:
            self.release(name, ok=False)

    def forget(self, name: str) -> None:
        """PostgreSQL archived `name` (its `.ready` went): drop its marker and FIFO."""
        self.release(name, ok=False)
        with contextlib.suppress(OSError):
            (self.directory / name).unlink(missing_ok=True)

    def release_all(self) -> None:
        for name in list(self._waiters):
            self.release(name, ok=False)
