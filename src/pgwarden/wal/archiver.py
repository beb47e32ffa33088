"""The agent's archiver: uploads WAL as soon as PostgreSQL marks it ready.

PostgreSQL writes `pg_wal/archive_status/<name>.ready` when a segment (or a history file,
a `.partial` segment at promotion, a backup history file) is complete, then runs
archive_command for it, one at a time. The archiver watches for those markers and uploads
in parallel ahead of it, so when `pgwarden wal-push` asks, the answer is usually "already
stored" at once. An upload that fails (storage down) is retried with backoff; the WAL stays
safely in pg_wal meanwhile, PostgreSQL keeps retrying archive_command, and an
`archive_failing` event fires once per outage.

With `acknowledged` set, archive_command learns that a file is stored without starting
Python: from a marker left there when the upload ended before PostgreSQL asked, or from a
FIFO it waits on while the upload runs (see `acks.py`). A marker whose `.ready` went
(PostgreSQL archived it through the client meanwhile) is removed by the next scan.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgwarden.errors import PgwardenError
from pgwarden.logs import get_logger
from pgwarden.wal.acks import Acknowledgements
from pgwarden.wal.archive import ArchiveConflictError, WalArchive
from pgwarden.wal.dirwatch import (
    IN_CREATE,
    IN_MODIFY,
    IN_MOVED_TO,
    DirectoryWatch,
    Wakeup,
    wait_any,
)
from pgwarden.wal.names import kind_of
from pgwarden.wal.precompress import Precompressor

log = get_logger("wal.archiver")

# How many names of stored files to remember (a day of busy WAL is far fewer).
REMEMBERED = 4096
# How often the segment PostgreSQL is writing is looked at for pages to precompress, while
# it is being written (and how often everything is looked at where inotify is missing).
POLL_INTERVAL = 0.01
# How long the archiver waits when nothing is written and no marker appears (it looked
# every POLL_INTERVAL before: 3.5% of a core for an agent with nothing to do).
IDLE_INTERVAL = 0.5
RETRY_MIN, RETRY_MAX = 0.5, 10.0
# An upload still running after this long counts as a failure for alerting: storage that
# drops packets makes each attempt wait for its timeouts before it fails.
STALLED_AFTER = 10.0


@dataclass
class ArchiveStatus:
    last_archived: str | None = None
    last_archived_at: float | None = None
    archived_count: int = 0
    failed_count: int = 0
    last_failure: str | None = None
    last_failure_at: float | None = None
    failing_since: float | None = None

    def to_json(self, pending: int, oldest_pending_at: float | None) -> dict[str, Any]:
        now = time.time()
        return {
            "last_archived": self.last_archived,
            "last_archived_at": self.last_archived_at,
            "archived": self.archived_count,
            "failed": self.failed_count,
            "last_failure": self.last_failure,
            "failing_since": self.failing_since,
            "pending_segments": pending,
            "lag_seconds": None if oldest_pending_at is None else round(now - oldest_pending_at, 3),
        }


class Archiver:
    """Uploads ready WAL files of one data directory with `workers` threads."""

    def __init__(
        self,
        archive: WalArchive,
        pg_wal: Path,
        *,
        workers: int = 2,
        event: Callable[[str, dict[str, Any]], None] = lambda kind, data: None,
        max_backlog_bytes: int | None = None,
        precompress: Precompressor | None = None,
        acknowledged: Path | None = None,
        owner: tuple[int, int] | None = None,
    ) -> None:
        self.archive = archive
        self.acks = None if acknowledged is None else Acknowledgements(acknowledged, owner)
        self.precompress = precompress
        self.max_backlog_bytes = max_backlog_bytes
        self.dropped: list[str] = []
        self.pg_wal = pg_wal
        self.status_dir = pg_wal / "archive_status"
        self.event = event
        self.status = ArchiveStatus()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="archiver")
        self._lock = threading.Lock()
        self._stored: OrderedDict[str, None] = OrderedDict()
        self._inflight: dict[str, Future[bool]] = {}
        self._started: dict[str, float] = {}  # in-flight name -> monotonic start
        self._conflicts: set[str] = set()
        self._retry_at: dict[str, float] = {}
        self._retry_delay: dict[str, float] = {}
        self._pending: dict[str, float] = {}  # ready name -> when we first saw it
        self._stop = threading.Event()
        # Wakes the scan the moment PostgreSQL writes a .ready marker; WAL written to pg_wal
        # wakes it too (no sooner than POLL_INTERVAL after the last look), for the
        # precompressor's pages. Nothing happening: a look every IDLE_INTERVAL.
        self._marker_watch = DirectoryWatch(self.status_dir)
        self._wal_watch = DirectoryWatch(pg_wal, mask=IN_MODIFY | IN_CREATE | IN_MOVED_TO)
        self._wake = Wakeup()  # an upload ended (an outage may have, a retry is due), or stop
        self._thread = threading.Thread(target=self._watch, name="archiver-watch", daemon=True)

    # --- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        if self.acks is not None:
            self.acks.reset()
        threading.Thread(target=self._warm, name="archiver-warm", daemon=True).start()
        self._thread.start()

    def _warm(self) -> None:
        """One-time costs of the first upload, paid before there is one (measured: the
        first push after start took 65-80 ms against 25-30 ms for the next ones). Storage
        that does not answer only makes this thread wait."""
        try:
            if self.precompress is not None:
                self.precompress.warm()
            self.archive.warm()
        except Exception as exc:  # noqa: BLE001 - warming is an optimisation only
            log.debug("archiver.warm_failed", reason=str(exc))

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if not self._thread.is_alive():  # else it may still wait on the descriptors
            self._marker_watch.close()
            self._wal_watch.close()
            self._wake.close()
        if self.acks is not None:  # whoever waits on a FIFO asks the client instead
            with self._lock:
                self.acks.release_all()
        # Not waiting: an upload hanging on unreachable storage must not hold up shutdown.
        self._pool.shutdown(wait=False, cancel_futures=True)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            pending = len(self._pending)
            oldest = min(self._pending.values(), default=None)
        return self.status.to_json(pending, oldest)

    # --- what wal-push asks -------------------------------------------------------------
    def push(self, path: Path) -> None:
        """Make sure `path` is archived: at once if stored already, else wait for (or
        start) its upload. Raises ArchiveError (or StorageError) if it cannot be, unless
        the backlog passed `max_backlog_bytes`: then the file is given up (see `_drop`)."""
        name = path.name
        with self._lock:
            if name in self._stored:
                return
            future = self._inflight.get(name)
            if future is None:
                future = self._submit_locked(name, path)
        try:
            future.result()
        except (PgwardenError, OSError) as exc:
            if isinstance(exc, ArchiveConflictError) or not self._over_limit():
                raise
            self._drop(name, str(exc))

    def _backlog_bytes(self) -> int:
        total = 0
        with self._lock:
            names = list(self._pending)
        for name in names:
            try:
                total += (self.pg_wal / name).stat().st_size
            except OSError:
                continue
        return total

    def _over_limit(self) -> bool:
        return self.max_backlog_bytes is not None and (
            self._backlog_bytes() > self.max_backlog_bytes
        )

    def _drop(self, name: str, reason: str) -> None:
        """Protect the primary's disk: tell PostgreSQL this file is archived although it is
        not, so it can be removed. The archive now has a gap until the next base backup;
        `pgwarden check` names it."""
        self.dropped.append(name)
        log.error(
            "wal.archive_dropped",
            name=name,
            reason=f"WAL backlog over wal.max_backlog_bytes ({self.max_backlog_bytes}) while "
            f"storage fails ({reason}); {name} is NOT archived and point-in-time recovery "
            "across it is impossible until the next base backup",
        )
        self.event("archive_dropped", {"name": name, "reason": reason})

    # --- watching archive_status ------------------------------------------------------
    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                self._scan()
                self._check_health()
            except OSError as exc:  # pg_wal not there yet (a replica being created)
                log.debug("archiver.scan_failed", reason=str(exc))
            self._wait_for_change()

    def _wait_for_change(self) -> None:
        """Until a marker appears (at once), WAL is written (POLL_INTERVAL after the last
        look at the earliest), a retry or a stall check is due, or IDLE_INTERVAL passed.
        Without inotify on both directories: POLL_INTERVAL, a marker ending it at once."""
        following = self.precompress is not None
        if not self._marker_watch.watching() or (following and not self._wal_watch.watching()):
            self._marker_watch.wait(POLL_INTERVAL)
            return
        start = time.monotonic()
        look_at = start + POLL_INTERVAL
        until = start + self._idle_for(start)
        written = False
        while not self._stop.is_set():
            # A watch just (re)added: a marker or WAL written before it woke nobody, so the
            # next look comes within POLL_INTERVAL (never at once: a watch re-added on every
            # call must not make this a busy loop).
            added = self._marker_watch.take_added() | self._wal_watch.take_added()
            written = written or added
            left = (look_at if written else until) - time.monotonic()
            if left <= 0:
                return
            watches: list[DirectoryWatch | Wakeup] = [self._marker_watch, self._wake]
            if following and not written:
                watches.append(self._wal_watch)
            fired = wait_any(watches, left)
            if self._marker_watch in fired or self._wake in fired:
                return
            written = written or self._wal_watch in fired

    def _idle_for(self, now: float) -> float:
        """Seconds until the next look when nothing happens: a retry or a stall check due
        sooner than IDLE_INTERVAL comes first."""
        with self._lock:
            due = [*self._retry_at.values(), *(t + STALLED_AFTER for t in self._started.values())]
        return max(POLL_INTERVAL, min([IDLE_INTERVAL, *(t - now for t in due if t > now)]))

    def _scan(self) -> None:
        markers = [entry.name for entry in self.status_dir.iterdir()]
        ready = {name[: -len(".ready")] for name in markers if name.endswith(".ready")}
        now = time.monotonic()
        wall = time.time()
        with self._lock:
            for name in list(self._pending):
                if name not in ready:
                    del self._pending[name]  # PostgreSQL archived it (marked .done)
                    self._retry_at.pop(name, None)
                    self._retry_delay.pop(name, None)
                    if self.acks is not None:
                        self.acks.forget(name)
            for name in sorted(ready, key=_upload_order):
                known = kind_of(name) != "unknown"
                if name not in self._pending:
                    self._pending[name] = wall
                    if self.acks is not None and known and name not in self._stored:
                        self.acks.expect(name)
                if not known:
                    continue
                if name in self._stored or name in self._inflight:
                    continue
                if self._retry_at.get(name, 0.0) > now:
                    continue
                self._submit_locked(name, self.pg_wal / name)
        # After the uploads are on their way: following the next segment reads up to
        # megabytes, and PostgreSQL is waiting for the ready one.
        if self.precompress is not None:
            self._follow(markers, ready)

    def _follow(self, markers: list[str], ready: set[str]) -> None:
        """Feed the segment(s) after the newest complete one to the precompressor."""
        assert self.precompress is not None
        marked = {name.rsplit(".", 1)[0] for name in markers}
        newest = max((n for n in marked if kind_of(n) == "segment"), default="")
        following = sorted(
            entry.name
            for entry in self.pg_wal.iterdir()
            if entry.name > newest and entry.name not in marked and kind_of(entry.name) == "segment"
        )[:2]
        self.precompress.follow(following)
        self.precompress.forget(set(following) | ready)

    def _submit_locked(self, name: str, path: Path) -> Future[bool]:
        future = self._pool.submit(self._upload, name, path)
        self._inflight[name] = future
        self._started[name] = time.monotonic()
        return future

    def _check_health(self) -> None:
        """Declare an outage on a stalled upload, and its end once nothing fails or hangs."""
        now = time.monotonic()
        with self._lock:
            stalled = [n for n, t in self._started.items() if now - t > STALLED_AFTER]
            if self.acks is not None:  # archive_command waiting on them asks the client
                self.acks.release_older(STALLED_AFTER)
            status = self.status
            first = bool(stalled) and status.failing_since is None
            if first:
                status.failing_since = time.time()
                status.last_failure = f"uploading {stalled[0]} has taken over {STALLED_AFTER:g} s"
                status.last_failure_at = time.time()
            recovered = status.failing_since is not None and not stalled and not self._retry_at
            if recovered:
                status.failing_since = None
        if first:
            log.error("wal.archive_stalled", name=stalled[0], reason=status.last_failure)
            self.event("archive_failing", {"name": stalled[0], "reason": status.last_failure})
        if recovered:
            log.info("wal.archive_recovered", last_archived=status.last_archived)
            self.event("archive_recovered", {"last_archived": status.last_archived})

    def _upload(self, name: str, path: Path) -> bool:
        started = time.monotonic()
        try:
            ahead = self.precompress.finish(path) if self.precompress is not None else None
            if ahead is not None:
                stored_now = self.archive.store_encoded(name, *ahead)
            else:
                stored_now = self.archive.push(path)
        except ArchiveConflictError as exc:
            self._failed(name, str(exc), conflict=True)
            raise
        except (PgwardenError, OSError) as exc:
            self._failed(name, str(exc), conflict=False)
            raise
        else:
            self._succeeded(name, started, stored_now)
            return stored_now
        finally:
            with self._lock:
                self._inflight.pop(name, None)
                self._started.pop(name, None)
            self._wake.set()

    def _succeeded(self, name: str, started: float, stored_now: bool) -> None:
        with self._lock:
            self._stored[name] = None
            while len(self._stored) > REMEMBERED:
                self._stored.popitem(last=False)
            self._retry_at.pop(name, None)
            self._retry_delay.pop(name, None)
            self._started.pop(name, None)
            status = self.status
            if kind_of(name) in ("segment", "partial") and (
                status.last_archived is None or name > status.last_archived
            ):
                status.last_archived = name
            status.last_archived_at = time.time()
            status.archived_count += 1
            if name in self._pending and self.acks is not None:
                self.acks.stored(name)
        log.debug("wal.archived", name=name, stored_now=stored_now,
                  seconds=round(time.monotonic() - started, 3))  # fmt: skip

    def _failed(self, name: str, reason: str, *, conflict: bool) -> None:
        first = False
        with self._lock:
            delay = min(RETRY_MAX, self._retry_delay.get(name, RETRY_MIN / 2) * 2)
            self._retry_delay[name] = delay
            self._retry_at[name] = time.monotonic() + delay
            status = self.status
            status.failed_count += 1
            status.last_failure = reason
            status.last_failure_at = time.time()
            if status.failing_since is None:
                status.failing_since = time.time()
                first = True
            if self.acks is not None:  # no ok: archive_command asks the client instead
                self.acks.release(name, ok=False)
        log.error("wal.archive_failed", name=name, reason=reason)
        if conflict and name not in self._conflicts:
            self._conflicts.add(name)
            self.event("archive_conflict", {"name": name, "reason": reason})
        elif first:
            self.event("archive_failing", {"name": name, "reason": reason})


def _upload_order(name: str) -> tuple[int, str]:
    """History files first (a restore needs them to choose its timeline), then by name."""
    return (0 if name.endswith(".history") else 1, name)
