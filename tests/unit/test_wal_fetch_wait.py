"""restore_command waiting on the fetcher's FIFO for a prefetch in flight, without Python.

A real fs store behind a wrapper that holds reads on request; restore_command runs through
/bin/sh as PostgreSQL runs it. The agent's socket and configuration do not exist, so the
Python client, if the shell got that far, could only fail: exit 0 proves the FIFO answered.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from pgwarden.invocation import wal_restore_command
from pgwarden.storage import FsStore, ObjectInfo
from pgwarden.storage.layout import Layout
from pgwarden.wal.archive import WalArchive
from pgwarden.wal.fetcher import Fetcher
from pgwarden.wal.names import segment_name

S = 16 * 1024 * 1024
SEG1, SEG2, SEG3 = (segment_name(1, n, S) for n in (1, 2, 3))


class HeldStore:
    """An FsStore whose reads of keys in `held` wait until `gate` is set."""

    def __init__(self, inner: FsStore) -> None:
        self.inner = inner
        self.held: set[str] = set()
        self.gate = threading.Event()
        self.holding = threading.Event()

    def get_stream(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        if key.rsplit("/", 1)[-1] in self.held:
            self.holding.set()
            self.gate.wait(10)
        return self.inner.get_stream(key, chunk_size)

    def put(
        self, key: str, data: bytes, metadata: Mapping[str, str] | None = None, *,
        if_absent: bool = False,
    ) -> None:  # fmt: skip
        self.inner.put(key, data, metadata, if_absent=if_absent)

    def head(self, key: str) -> ObjectInfo:
        return self.inner.head(key)


Restore = Callable[[str], "subprocess.Popen[bytes]"]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[HeldStore]:
    held = HeldStore(FsStore(tmp_path / "store"))
    yield held
    held.gate.set()


@pytest.fixture
def source(store: HeldStore, tmp_path: Path) -> Path:
    """SEG1 and SEG2 archived; SEG3 is not."""
    wal = WalArchive(store, Layout("main"), key=None)
    directory = tmp_path / "source"
    directory.mkdir()
    for name in (SEG1, SEG2):
        (directory / name).write_bytes(f"contents of {name}\n".encode() * 100)
        wal.push(directory / name)
    return directory


@pytest.fixture
def pg_wal(tmp_path: Path) -> Path:
    directory = tmp_path / "pg_wal"
    directory.mkdir()
    return directory


@pytest.fixture
def make_fetcher(store: HeldStore, tmp_path: Path) -> Iterator[Callable[..., Fetcher]]:
    made: list[Fetcher] = []

    def make(*, depth: int, workers: int) -> Fetcher:
        wal = WalArchive(store, Layout("main"), key=None)
        spool = tmp_path / "data.wal-spool" / "fetched"
        fetcher = Fetcher(wal, spool, segment_size=lambda: S, depth=depth, workers=workers)
        made.append(fetcher)
        return fetcher

    yield make
    store.gate.set()
    for fetcher in made:
        fetcher.stop()


@pytest.fixture
def restore(tmp_path: Path, pg_wal: Path) -> Restore:
    spool = tmp_path / "data.wal-spool" / "fetched"
    command = wal_restore_command(tmp_path / "none.yml", str(tmp_path / "no.sock"), spool)

    def run(name: str) -> subprocess.Popen[bytes]:
        filled = command.replace("%f", name).replace("%p", str(pg_wal / "RECOVERYXLOG"))
        return subprocess.Popen(["/bin/sh", "-c", filled], stderr=subprocess.PIPE)

    return run


def stderr_of(shell: subprocess.Popen[bytes]) -> str:
    return shell.stderr.read().decode() if shell.stderr else ""


def test_restore_command_waits_for_a_prefetch_in_flight_and_takes_it(
    make_fetcher: Callable[..., Fetcher],
    store: HeldStore,
    source: Path,
    pg_wal: Path,
    restore: Restore,
) -> None:
    fetcher = make_fetcher(depth=1, workers=1)
    store.held = {SEG2}
    assert fetcher.fetch(SEG1, pg_wal / "RECOVERYXLOG")  # sets off prefetching SEG2
    assert store.holding.wait(5)
    assert (fetcher.spool / f"{SEG2}.wait").exists()
    shell = restore(SEG2)
    time.sleep(0.2)
    assert shell.poll() is None  # waiting for the download, not failed over to the client
    store.gate.set()
    assert shell.wait(timeout=10) == 0, stderr_of(shell)
    assert (pg_wal / "RECOVERYXLOG").read_bytes() == (source / SEG2).read_bytes()
    assert not (fetcher.spool / f"{SEG2}.wait").exists()


def test_restore_command_for_a_prefetch_that_finds_nothing_goes_on_to_the_client(
    make_fetcher: Callable[..., Fetcher],
    store: HeldStore,
    source: Path,
    pg_wal: Path,
    restore: Restore,
) -> None:
    fetcher = make_fetcher(depth=1, workers=1)
    store.held = {SEG3}
    assert fetcher.fetch(SEG2, pg_wal / "RECOVERYXLOG")  # sets off prefetching SEG3
    assert store.holding.wait(5)
    shell = restore(SEG3)
    time.sleep(0.2)
    assert shell.poll() is None
    store.gate.set()  # SEG3 is not archived: no `ok`, the shell goes on to the client
    assert shell.wait(timeout=30) != 0
    assert "none.yml" in stderr_of(shell)  # the client ran, and lacked its configuration


def test_stopping_the_fetcher_releases_restore_command_waiting_on_a_queued_prefetch(
    make_fetcher: Callable[..., Fetcher],
    store: HeldStore,
    source: Path,
    pg_wal: Path,
    restore: Restore,
) -> None:
    fetcher = make_fetcher(depth=2, workers=1)
    store.held = {SEG2}
    assert fetcher.fetch(SEG1, pg_wal / "RECOVERYXLOG")  # SEG2 downloading, SEG3 queued
    assert store.holding.wait(5)
    assert (fetcher.spool / f"{SEG3}.wait").exists()
    shell = restore(SEG3)
    threading.Timer(0.3, store.gate.set).start()
    fetcher.stop()  # cancels the queued prefetch of SEG3
    assert shell.wait(timeout=30) != 0
    assert "none.yml" in stderr_of(shell)
    assert not any(p.name.endswith(".wait") for p in fetcher.spool.iterdir())
