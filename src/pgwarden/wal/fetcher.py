"""The agent's WAL fetcher: serves restore_command from a spool it fills ahead of replay.

When PostgreSQL asks for segment N of timeline T, the fetcher hands it over (from the
spool if it was prefetched, else downloaded now) and starts downloading the next
`depth` segments in parallel, of T and of every later timeline whose history file
PostgreSQL asked for (recovery follows the newest timeline), so replay, not the download,
sets the pace. A name that is not archived is answered "missing" at once: PostgreSQL asks
for the segment after the end of the archive as a matter of course. The spool lives
beside the data directory, never in pg_wal, and only holds files newer than the last one
served.

A prefetched file appears in the spool only complete and owned by PostgreSQL's user (it is
downloaded into `.incoming/` and renamed), so restore_command takes it with a plain `mv`
before it starts the Python client at all (see `invocation.wal_restore_command`), like
pgBackRest's asynchronous spool. The fetcher notices such a file gone and prefetches on.
While a prefetch is in flight, its FIFO `<name>.wait` in the spool lets restore_command
wait for it without Python either: `ok` is written into it once the file is in place
(see `acks.py` for how such a FIFO is made safe to wait on).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pgwarden.logs import get_logger
from pgwarden.wal.acks import Acknowledgements
from pgwarden.wal.archive import WalArchive
from pgwarden.wal.dirwatch import IN_DELETE, IN_MOVED_FROM, DirectoryWatch
from pgwarden.wal.names import kind_of, parse_history_file_name, parse_segment_name, segment_name

log = get_logger("wal.fetcher")

DEPTH = 8
INCOMING = ".incoming"
# How often the spool is looked at, while it holds prefetched files, for ones restore_command
# took with `mv`: with inotify (woken at once) and without it.
WATCHED_POLL = 0.25
TAKEN_POLL = 0.01


class Fetcher:
    def __init__(
        self, archive: WalArchive, spool: Path, *, segment_size: Callable[[], int],
        owner: tuple[int, int] | None = None, depth: int = DEPTH, workers: int = 4,
    ) -> None:  # fmt: skip
        self.archive = archive
        self.spool = spool
        self._segment_size = segment_size
        self.owner = owner
        self.depth = depth
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fetcher")
        self._lock = threading.Lock()
        self._inflight: dict[str, Future[bool]] = {}
        self._timelines: set[int] = set()
        self._placed: set[str] = set()  # in the spool for restore_command to take
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.served = 0
        self.prefetched_hits = 0
        self._clear_spool()
        self._waits = Acknowledgements(spool, owner)  # FIFOs of prefetches in flight
        self._spool_watch = DirectoryWatch(spool, mask=IN_MOVED_FROM | IN_DELETE)
        self._watcher = threading.Thread(target=self._watch_taken, name="fetcher-watch",
                                         daemon=True)  # fmt: skip
        self._watcher.start()

    @property
    def segment_size(self) -> int:
        return self._segment_size()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._watcher.join(timeout=5)
        if not self._watcher.is_alive():
            self._spool_watch.close()
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:  # whoever still waits asks the client instead
            self._waits.release_all()

    def _clear_spool(self) -> None:
        """Start empty: files left by an earlier run may belong to an archive since replaced
        (a cluster bootstrapped again under the same name)."""
        if self.spool.is_dir():
            shutil.rmtree(self.spool)

    def snapshot(self) -> dict[str, Any]:
        return {"served": self.served, "prefetch_hits": self.prefetched_hits}

    def fetch(self, name: str, dest: Path) -> bool:
        """Put archived `name` at `dest`; False if it is not archived."""
        kind = kind_of(name)
        for attempt in (1, 2):
            if not self._get(name):
                return False  # no prefetching past the end of the archive
            try:
                self._hand_over(name, dest)
                break
            except FileNotFoundError:
                # restore_command's mv took the spooled file meanwhile: download it again,
                # once; anything else (dest's directory is gone) is an answer of its own.
                if attempt == 2 or self._spooled(name).exists():
                    raise
        if kind == "history":
            with self._lock:
                self._timelines.add(parse_history_file_name(name))
        with self._lock:
            self.served += 1
        if kind == "segment":
            self._prefetch_after(name)
        return True

    def _spooled(self, name: str) -> Path:
        return self.spool / name

    def _get(self, name: str) -> bool:
        """The file in the spool: prefetched, awaited from a prefetch, or downloaded now.
        Storage errors propagate (the caller answers with them, not with "missing")."""
        while True:
            with self._lock:
                future = self._inflight.get(name)
                if future is None:
                    if self._spooled(name).exists():
                        self.prefetched_hits += 1
                        return True
                    mine: Future[bool] = Future()
                    self._inflight[name] = mine
                    break
            with contextlib.suppress(Exception):
                future.result()  # a prefetch of it: wait, then look again
        try:
            found = self._download(name)
        except BaseException as exc:
            mine.set_exception(exc)
            raise
        else:
            mine.set_result(found)
            return found
        finally:
            with self._lock:
                self._inflight.pop(name, None)

    def _download(self, name: str) -> bool:
        incoming = self.spool / INCOMING
        if not incoming.is_dir():
            incoming.mkdir(mode=0o700, parents=True, exist_ok=True)
            if self.owner is not None:  # restore_command (PostgreSQL's user) moves files out
                os.chown(self.spool, *self.owner)
        temp = incoming / name
        if not self.archive.fetch(name, temp):
            return False
        if self.owner is not None:  # before it shows: an agent run as root serves postgres
            os.chown(temp, *self.owner)
        with self._lock:
            temp.replace(self._spooled(name))
            self._placed.add(name)
            self._waits.release(name, ok=True)
            self._wake.set()
        return True

    def _hand_over(self, name: str, dest: Path) -> None:
        source = self._spooled(name)
        with self._lock:
            self._placed.discard(name)
        try:
            source.replace(dest)
        except OSError:  # another file system: copy, then drop ours
            dest.write_bytes(source.read_bytes())
            source.unlink(missing_ok=True)
        if self.owner is not None:  # an agent run as root serves PostgreSQL's user
            os.chown(dest, *self.owner)

    def _prefetch_after(self, name: str) -> None:
        timeline, segno = parse_segment_name(name, self.segment_size)
        with self._lock:
            timelines = {timeline} | {t for t in self._timelines if t > timeline}
            wanted = [
                segment_name(t, segno + step, self.segment_size)
                for step in range(1, self.depth + 1)
                for t in sorted(timelines)
            ]
            for future_name in wanted:
                # Placed and gone: restore_command took it, the watcher has yet to notice.
                if future_name in self._inflight or future_name in self._placed:
                    continue
                if self._spooled(future_name).exists():
                    continue
                self._waits.expect(future_name)
                future = self._pool.submit(self._download_quietly, future_name)
                self._inflight[future_name] = future
        self._forget_older(timeline, segno)

    def _download_quietly(self, name: str) -> bool:
        try:
            found = self._download(name)
        except Exception as exc:  # noqa: BLE001 - a prefetch failing is retried on demand
            log.debug("wal.prefetch_failed", name=name, reason=str(exc))
            return False
        finally:
            with self._lock:
                self._inflight.pop(name, None)
                self._waits.release(name, ok=False)  # no-op once released with ok
        return found

    def _forget_older(self, timeline: int, segno: int) -> None:
        """Drop spooled segments replay has passed (a restart or a timeline change)."""
        if not self.spool.is_dir():
            return
        for path in self.spool.iterdir():
            if kind_of(path.name) != "segment":
                continue
            _, number = parse_segment_name(path.name, self.segment_size)
            if number <= segno:
                with self._lock:
                    self._placed.discard(path.name)
                path.unlink(missing_ok=True)

    def _watch_taken(self) -> None:
        """While prefetched files wait in the spool, notice the ones restore_command took
        with `mv` and prefetch past them, as if they had been asked for here."""
        while not self._stop.is_set():
            with self._lock:
                placed = set(self._placed)  # before listing: a file placed later is not gone
                if not placed:
                    self._wake.clear()
            if not placed:
                self._wake.wait()
                continue
            try:
                present = {entry.name for entry in self.spool.iterdir()}
            except OSError:
                self._stop.wait(TAKEN_POLL)
                continue
            with self._lock:
                taken = sorted(n for n in placed - present if n in self._placed)
                self._placed.difference_update(taken)
                self.served += len(taken)
                self.prefetched_hits += len(taken)
            segments = [name for name in taken if kind_of(name) == "segment"]
            if segments:
                self._prefetch_after(max(segments, key=self._position))
            # Woken when a file leaves the spool; a file nobody takes (a standby that went
            # on to stream) costs a look every WATCHED_POLL, not every TAKEN_POLL.
            self._spool_watch.wait(WATCHED_POLL if self._spool_watch.active else TAKEN_POLL)

    def _position(self, name: str) -> tuple[int, int]:
        timeline, segno = parse_segment_name(name, self.segment_size)
        return segno, timeline
