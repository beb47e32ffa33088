"""The agent's fetcher: serves restore_command, prefetching the segments replay needs next.

The archive is a real fs store filled with `WalArchive.push`; a thin wrapper counts reads,
fails them, or holds them on request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from pgwarden.storage import FsStore, ObjectInfo, StorageError
from pgwarden.storage.layout import Layout
from pgwarden.wal.archive import WalArchive
from pgwarden.wal.fetcher import Fetcher
from pgwarden.wal.names import segment_name

MiB = 1024 * 1024
S = 16 * MiB


def seg(timeline: int, segno: int, segment_size: int = S) -> str:
    return segment_name(timeline, segno, segment_size)


class WatchedStore:
    """An FsStore whose reads are counted per key, fail while `down` is set, and wait
    while the key is in `held` (until `release` is set)."""

    def __init__(self, inner: FsStore) -> None:
        self.inner = inner
        self.down = False
        self.reads: list[str] = []
        self.failures: list[str] = []
        self.held: set[str] = set()
        self.holding = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()

    def get_stream(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        with self._lock:
            self.reads.append(key)
        if key in self.held:
            self.holding.set()
            self.release.wait(10)
        if self.down:
            self.failures.append(key)
            raise StorageError(f"storage is down: cannot read {key}")
        return self.inner.get_stream(key, chunk_size)

    def put(
        self,
        key: str,
        data: bytes,
        metadata: Mapping[str, str] | None = None,
        *,
        if_absent: bool = False,
    ) -> None:
        self.inner.put(key, data, metadata, if_absent=if_absent)

    def head(self, key: str) -> ObjectInfo:
        return self.inner.head(key)

    def read_count(self, name: str) -> int:
        with self._lock:
            return sum(key.endswith(f"/{name}") for key in self.reads)


def wait_for(condition: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {condition}")
        time.sleep(0.005)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[WatchedStore]:
    watched = WatchedStore(FsStore(tmp_path / "store"))
    yield watched
    watched.release.set()


@pytest.fixture
def wal(store: WatchedStore) -> WalArchive:
    return WalArchive(store, Layout("main"), key=None)


@pytest.fixture
def archived(wal: WalArchive, tmp_path: Path) -> Callable[..., dict[str, bytes]]:
    """Archive files under the given names; returns their contents by name."""
    source = tmp_path / "source"
    source.mkdir()

    def archive(*names: str) -> dict[str, bytes]:
        contents = {}
        for name in names:
            path = source / name
            path.write_bytes(f"contents of {name}\n".encode() * 50)
            wal.push(path)
            contents[name] = path.read_bytes()
        return contents

    return archive


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "data.wal-spool"


@pytest.fixture
def pg_wal(tmp_path: Path) -> Path:
    directory = tmp_path / "pg_wal"
    directory.mkdir()
    return directory


@pytest.fixture
def make_fetcher(wal: WalArchive, spool: Path) -> Iterator[Callable[..., Fetcher]]:
    made: list[Fetcher] = []

    def make(*, depth: int = 3, segment_size: int = S, workers: int = 4) -> Fetcher:
        fetcher = Fetcher(
            wal, spool, segment_size=lambda: segment_size, depth=depth, workers=workers
        )
        made.append(fetcher)
        return fetcher

    yield make
    for fetcher in made:
        fetcher.stop()


def spooled(spool: Path) -> set[str]:
    return {path.name for path in spool.iterdir() if path.is_file()} if spool.is_dir() else set()


# --- serving restore_command ------------------------------------------------------------


def test_an_archived_segment_is_put_where_postgresql_asked(
    make_fetcher: Callable[..., Fetcher], archived: Callable[..., dict[str, bytes]], pg_wal: Path
) -> None:
    contents = archived(seg(1, 1))
    fetcher = make_fetcher(depth=0)
    assert fetcher.fetch(seg(1, 1), pg_wal / "RECOVERYXLOG") is True
    assert (pg_wal / "RECOVERYXLOG").read_bytes() == contents[seg(1, 1)]
    assert fetcher.snapshot() == {"served": 1, "prefetch_hits": 0}


def test_history_and_partial_files_are_served_too(
    make_fetcher: Callable[..., Fetcher], archived: Callable[..., dict[str, bytes]], pg_wal: Path
) -> None:
    contents = archived("00000002.history", f"{seg(1, 5)}.partial")
    fetcher = make_fetcher()
    for name, data in contents.items():
        assert fetcher.fetch(name, pg_wal / "RECOVERYHISTORY") is True
        assert (pg_wal / "RECOVERYHISTORY").read_bytes() == data


def test_a_name_not_archived_is_missing_and_leaves_no_file(
    make_fetcher: Callable[..., Fetcher],
    archived: Callable[..., dict[str, bytes]],
    pg_wal: Path,
    spool: Path,
) -> None:
    archived(seg(1, 1))
    fetcher = make_fetcher(depth=0)
    assert fetcher.fetch(seg(1, 2), pg_wal / "RECOVERYXLOG") is False
    assert fetcher.fetch("00000002.history", pg_wal / "RECOVERYHISTORY") is False
    assert list(pg_wal.iterdir()) == []
    assert spooled(spool) == set()
    assert fetcher.snapshot()["served"] == 0


def test_a_storage_error_is_raised_not_reported_as_missing(
    make_fetcher: Callable[..., Fetcher],
    archived: Callable[..., dict[str, bytes]],
    store: WatchedStore,
    pg_wal: Path,
    spool: Path,
) -> None:
    archived(seg(1, 1))
    store.down = True
    fetcher = make_fetcher()
    with pytest.raises(StorageError, match="storage is down"):
        fetcher.fetch(seg(1, 1), pg_wal / "RECOVERYXLOG")
    assert list(pg_wal.iterdir()) == []
    assert spooled(spool) == set()  # no half-written download either


# --- prefetching ------------------------------------------------------------------------


def test_the_next_segments_are_prefetched_and_served_from_the_spool(
    make_fetcher: Callable[..., Fetcher],
    archived: Callable[..., dict[str, bytes]],
    store: WatchedStore,
    pg_wal: Path,
    spool: Path,
) -> None:
    contents = archived(*(seg(1, n) for n in range(1, 8)))
    fetcher = make_fetcher(depth=3)
    assert fetcher.fetch(seg(1, 1), pg_wal / "RECOVERYXLOG")
    wait_for(lambda: spooled(spool) == {seg(1, 2), seg(1, 3), seg(1, 4)})
    for n in (2, 3):
        assert fetcher.fetch(seg(1, n), pg_wal / "RECOVERYXLOG")
        assert (pg_wal / "RECOVERYXLOG").read_bytes() == contents[seg(1, n)]
    assert fetcher.snapshot() == {"served": 3, "prefetch_hits": 2}
    wait_for(lambda: spooled(spool) == {seg(1, 4), seg(1, 5), seg(1, 6)})
    assert [store.read_count(seg(1, n)) for n in range(1, 8)] == [1, 1, 1, 1, 1, 1, 0]


def test_prefetching_past_the_end_of_the_archive_finds_nothing(
    make_fetcher: Callable[..., Fetcher],
    archived: Callable[..., dict[str, bytes]],
    pg_wal: Path,
    spool: Path,
) -> None:
    archived(seg(1, 1), seg(1, 2))
    fetcher = make_fetcher(depth=3)
    assert fetcher.fetch(seg(1, 1), pg_wal / "RECOVERYXLOG")
    wait_for(lambda: spooled(spool) == {seg(1, 2)})
    assert fetcher.fetch(seg(1, 2), pg_wal / "RECOVERYXLOG")
    assert fetcher.fetch(seg(1, 3), pg_wal / "RECOVERYXLOG") is False


def test_a_segment_archived_after_a_prefetch_missed_it_is_found_on_demand(
    make_fetcher: Callable[..., Fetcher],
    archived: Callable[..., dict[str, bytes]],
    store: WatchedStore,
    pg_wal: Path,
    spool: Path,
) -> None:
    archived(seg(1, 1))
    fetcher = make_fetcher(depth=1)
    assert fetcher.fetch(seg(1, 1), pg_wal / "RECOVERYXLOG")
    # The prefetch has looked and found nothing (its temporary file is gone again).
    wait_for(lambda: store.read_count(seg(1, 2)) == 1 and not spooled(spool))
    archived(seg(1, 2))  # the primary archived it meanwhile: a standby keeps asking
    assert fetcher.fetch(seg(1, 2), pg_wal / "RECOVERYXLOG") is True
    assert store.read_count(seg(1, 2)) == 2


def test_a_failed_prefetch_is_retried_when_postgresql_asks(
    make_fetcher: Callable[..., Fetcher],
    archived: Callable[..., dict[str, bytes]],
    store: WatchedStore,
    pg_wal: Path,
) -> None:
    contents = archived(seg(1, 1), seg(1, 2))
    fetcher = make_fetcher(depth=1)
    store.held = {f"main/wal/00000001/{seg(1, 2)}"}
    assert fetcher.fetch(seg(1, 1), pg_wal / "RECOVERYXLOG")
    assert store.holding.wait(5)
    store.down = True  # the prefetch of segment 2 fails
    store.release.set()
    wait_for(lambda: store.failures)
    store.down, store.held = False, set()
    assert fetcher.fetch(seg(1, 2), pg_wal / "RECOVERYXLOG") is True
    assert (pg_wal / "RECOVERYXLOG").read_bytes() == contents[seg(1, 2)]
    assert store.read_count(seg(1, 2)) == 2
    assert fetcher.snapshot()["prefetch_hits"] == 0


def test_asking_for_a_segment_being_prefetched_waits_for_that_download(
    make_fetcher: Callable[..., Fetcher],
    archived: Callable[..., dict[str, bytes]],
    store: WatchedStore,
    pg_wal: Path,
) -> None:
    contents = archived(seg(1, 1), seg(1, 2))
    fetcher = make_fetcher(depth=1)
    store.held = {f"main/wal/00000001/{seg(1, 2)}"}
    assert fetcher.fetch(seg(1, 1), pg_wal / "RECOVERYXLOG")
    assert store.holding.wait(5)
    answers: list[bool] = []
    asker = threading.Thread(
        target=lambda: answers.append(fetcher.fetch(seg(1, 2), pg_wal / "RECOVERYXLOG"))
    )
    asker.start()
    time.sleep(0.1)
    assert answers == []
    store.release.set()
    asker.join(5)
    assert answers == [True]
    assert (pg_wal / "RECOVERYXLOG").read_bytes() == contents[seg(1, 2)]
    assert store.read_count(seg(1, 2)) == 1
    assert fetcher.snapshot()["prefetch_hits"] == 1


def test_later_timelines_are_prefetched_once_their_history_was_fetched(
    make_fetcher: Callable[..., Fetcher],
    archived: Callable[..., dict[str, bytes]],
    pg_wal: Path,
    spool: Path,
) -> None:
    # Timeline 1 was promoted to timeline 2 in segment 3.
    archived("00000002.history", seg(1, 1), seg(1, 2), seg(2, 3), seg(2, 4), seg(2, 5))
    fetcher = make_fetcher(depth=3)
    assert fetcher.fetch("00000002.history", pg_wal / "RECOVERYHISTORY")
    assert fetcher.fetch(seg(1, 1), pg_wal / "RECOVERYXLOG")
    wait_for(lambda: spooled(spool) == {seg(1, 2), seg(2, 3), seg(2, 4)})
    assert fetcher.fetch(seg(1, 2), pg_wal / "RECOVERYXLOG")
    assert fetcher.fetch(seg(2, 3), pg_wal / "RECOVERYXLOG")
    assert fetcher.snapshot()["prefetch_hits"] == 2


def test_without_a_history_only_the_current_timeline_is_prefetched(
    make_fetcher: Callable[..., Fetcher],
    archived: Callable[..., dict[str, bytes]],
    store: WatchedStore,
    pg_wal: Path,
    spool: Path,
) -> None:
    archived(seg(1, 1), seg(1, 2), seg(2, 3), seg(2, 4))
    fetcher = make_fetcher(depth=3)
    assert fetcher.fetch(seg(1, 1), pg_wal / "RECOVERYXLOG")
    wait_for(lambda: store.read_count(seg(1, 4)) == 1)
    time.sleep(0.02)
    assert spooled(spool) == {seg(1, 2)}
    assert not any("/00000002/" in key for key in store.reads)


def test_older_timelines_are_not_prefetched(
    make_fetcher: Callable[..., Fetcher],
    archived: Callable[..., dict[str, bytes]],
    store: WatchedStore,
    pg_wal: Path,
) -> None:
    archived("00000002.history", seg(2, 3), seg(2, 4))
    fetcher = make_fetcher(depth=2)
    assert fetcher.fetch("00000002.history", pg_wal / "RECOVERYHISTORY")
    assert fetcher.fetch(seg(2, 3), pg_wal / "RECOVERYXLOG")
    wait_for(lambda: store.read_count(seg(2, 5)) == 1)
    time.sleep(0.02)
    assert not any("/00000001/" in key for key in store.reads)


def test_a_history_file_that_is_not_archived_adds_no_timeline_to_prefetch(
    make_fetcher: Callable[..., Fetcher],
    archived: Callable[..., dict[str, bytes]],
    store: WatchedStore,
    pg_wal: Path,
) -> None:
    archived(seg(1, 1), seg(1, 2))
    fetcher = make_fetcher(depth=2)
    assert fetcher.fetch("00000002.history", pg_wal / "RECOVERYHISTORY") is False
    assert fetcher.fetch(seg(1, 1), pg_wal / "RECOVERYXLOG")
    wait_for(lambda: store.read_count(seg(1, 3)) == 1)
    time.sleep(0.02)
    assert not any("/00000002/" in key for key in store.reads)


def test_prefetching_crosses_to_the_next_xlogid_with_the_instances_segment_size(
    make_fetcher: Callable[..., Fetcher],
    archived: Callable[..., dict[str, bytes]],
    pg_wal: Path,
    spool: Path,
) -> None:
    # 4096 one-MiB segments per xlogid: after ...00000FFF comes ...0100000000.
    last, first = "000000010000000000000FFF", "000000010000000100000000"
    archived(last, first)
    fetcher = make_fetcher(depth=1, segment_size=MiB)
    assert fetcher.fetch(last, pg_wal / "RECOVERYXLOG")
    wait_for(lambda: spooled(spool) == {first})


# --- the spool ----------------------------------------------------------------------------


def test_the_spool_drops_segments_replay_has_passed(
    make_fetcher: Callable[..., Fetcher],
    archived: Callable[..., dict[str, bytes]],
    pg_wal: Path,
    spool: Path,
) -> None:
    archived(*(seg(1, n) for n in range(1, 12)))
    fetcher = make_fetcher(depth=2)
    assert fetcher.fetch(seg(1, 1), pg_wal / "RECOVERYXLOG")
    wait_for(lambda: spooled(spool) == {seg(1, 2), seg(1, 3)})
    # Recovery restarted from a later backup: it asks for segment 8 next.
    assert fetcher.fetch(seg(1, 8), pg_wal / "RECOVERYXLOG")
    wait_for(lambda: spooled(spool) == {seg(1, 9), seg(1, 10)})


def test_a_segment_restore_command_took_with_mv_moves_the_prefetch_on(
    make_fetcher: Callable[..., Fetcher],
    archived: Callable[..., dict[str, bytes]],
    pg_wal: Path,
    spool: Path,
) -> None:
    contents = archived(*(seg(1, n) for n in range(1, 8)))
    fetcher = make_fetcher(depth=3)
    assert fetcher.fetch(seg(1, 1), pg_wal / "RECOVERYXLOG")
    wait_for(lambda: spooled(spool) == {seg(1, 2), seg(1, 3), seg(1, 4)})
    # restore_command's `mv` takes the next two without asking the fetcher.
    for n in (2, 3):
        (spool / seg(1, n)).replace(pg_wal / "RECOVERYXLOG")
        assert (pg_wal / "RECOVERYXLOG").read_bytes() == contents[seg(1, n)]
    wait_for(lambda: spooled(spool) == {seg(1, 4), seg(1, 5), seg(1, 6)})
    assert fetcher.snapshot() == {"served": 3, "prefetch_hits": 2}


def test_the_spool_starts_empty(
    make_fetcher: Callable[..., Fetcher], pg_wal: Path, spool: Path
) -> None:
    # Left by an earlier run, perhaps of a cluster since bootstrapped again: never served.
    spool.mkdir()
    (spool / seg(1, 2)).write_bytes(b"stale")
    fetcher = make_fetcher(depth=3)
    assert spooled(spool) == set()
    assert fetcher.fetch(seg(1, 2), pg_wal / "RECOVERYXLOG") is False


def test_a_destination_that_cannot_be_written_is_an_error(
    make_fetcher: Callable[..., Fetcher],
    archived: Callable[..., dict[str, bytes]],
    tmp_path: Path,
    spool: Path,
) -> None:
    archived(seg(1, 1))
    fetcher = make_fetcher(depth=1)
    with pytest.raises(FileNotFoundError):
        fetcher.fetch(seg(1, 1), tmp_path / "no-such-dir" / "RECOVERYXLOG")
    assert spooled(spool) == {seg(1, 1)}  # kept for the next ask
