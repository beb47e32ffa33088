"""The agent's archiver: uploads WAL PostgreSQL marked ready, answers wal-push, reports outages.

A fake pg_wal (small files with real WAL names and archive_status markers) and a real fs
store; outages come from a thin store wrapper that fails or blocks on request.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from pgwarden.codec import decode_bytes
from pgwarden.invocation import wal_archive_command
from pgwarden.storage import FsStore, ObjectInfo, StorageError
from pgwarden.storage.layout import Layout
from pgwarden.wal import archiver as archiver_module
from pgwarden.wal.archive import ArchiveConflictError, WalArchive
from pgwarden.wal.archiver import Archiver

SEG1, SEG2, SEG3 = (f"0000000100000000000000{n:02X}" for n in (1, 2, 3))
HISTORY = "00000002.history"


class FlakyStore:
    """An FsStore that fails every call while `down` is set and holds writes while `gate`
    is clear; `puts` lists the keys written, in order."""

    def __init__(self, inner: FsStore) -> None:
        self.inner = inner
        self.down = False
        self.gate = threading.Event()
        self.gate.set()
        self.writing = threading.Event()  # set once a write has begun
        self.puts: list[str] = []

    def _check(self, key: str) -> None:
        if self.down:
            raise StorageError(f"storage is down: cannot reach {key}")

    def put(
        self,
        key: str,
        data: bytes,
        metadata: Mapping[str, str] | None = None,
        *,
        if_absent: bool = False,
    ) -> None:
        self.writing.set()
        self.gate.wait(10)
        self._check(key)
        self.inner.put(key, data, metadata, if_absent=if_absent)
        self.puts.append(key)

    def head(self, key: str) -> ObjectInfo:
        self._check(key)
        return self.inner.head(key)

    def get(self, key: str) -> bytes:
        self._check(key)
        return self.inner.get(key)

    def get_stream(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        self._check(key)
        return self.inner.get_stream(key, chunk_size)

    def exists(self, key: str) -> bool:
        self._check(key)
        return self.inner.exists(key)


def wait_for(condition: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {condition}")
        time.sleep(0.005)


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archiver_module, "RETRY_MIN", 0.02)
    monkeypatch.setattr(archiver_module, "RETRY_MAX", 0.05)


@pytest.fixture
def store(tmp_path: Path) -> FlakyStore:
    return FlakyStore(FsStore(tmp_path / "store"))


@pytest.fixture
def wal(store: FlakyStore) -> WalArchive:
    return WalArchive(store, Layout("main"), key=None)


@pytest.fixture
def pg_wal(tmp_path: Path) -> Path:
    directory = tmp_path / "pg_wal"
    (directory / "archive_status").mkdir(parents=True)
    return directory


Events = list[tuple[str, dict[str, Any]]]


@pytest.fixture
def events() -> Events:
    return []


@pytest.fixture
def make_archiver(
    store: FlakyStore, wal: WalArchive, pg_wal: Path, events: Events
) -> Iterator[Callable[..., Archiver]]:
    made: list[Archiver] = []

    def make(**options: Any) -> Archiver:
        archiver = Archiver(
            wal, pg_wal, event=lambda kind, data: events.append((kind, data)), **options
        )
        made.append(archiver)
        return archiver

    yield make
    store.gate.set()  # a test that failed while holding writes must not hang stop()
    for archiver in made:
        archiver.stop()


def write_wal(pg_wal: Path, name: str, *, ready: bool = True, size: int = 1000) -> bytes:
    data = (name.encode() + b"|") * (size // (len(name) + 1) + 1)
    data = data[:size]
    (pg_wal / name).write_bytes(data)
    if ready:
        (pg_wal / "archive_status" / f"{name}.ready").touch()
    return data


def mark_done(pg_wal: Path, name: str) -> None:
    """What PostgreSQL does once archive_command succeeded for `name`."""
    status = pg_wal / "archive_status"
    (status / f"{name}.ready").rename(status / f"{name}.done")


def stored_plaintext(wal: WalArchive, name: str) -> bytes:
    return decode_bytes(wal.store.get(wal.object_key(name)), keys=None)


def kinds(events: Events) -> list[str]:
    return [kind for kind, _ in events]


# --- uploading ahead of PostgreSQL ------------------------------------------------------


def test_ready_files_are_uploaded_before_postgresql_asks(
    make_archiver: Callable[..., Archiver], wal: WalArchive, pg_wal: Path
) -> None:
    names = [SEG1, SEG2, HISTORY, f"{SEG1}.partial", f"{SEG1}.00000028.backup"]
    contents = {name: write_wal(pg_wal, name) for name in names}
    write_wal(pg_wal, SEG3, ready=False)  # still being written: not PostgreSQL's to archive yet
    archiver = make_archiver()
    archiver.start()
    wait_for(lambda: archiver.snapshot()["archived"] == len(names))
    for name, data in contents.items():
        assert stored_plaintext(wal, name) == data
    assert not wal.store.inner.exists(wal.object_key(SEG3))
    snapshot = archiver.snapshot()
    assert snapshot["last_archived"] == SEG2
    assert (snapshot["failed"], snapshot["failing_since"]) == (0, None)


def test_storage_that_hangs_when_warmed_up_at_start_holds_up_no_upload(
    make_archiver: Callable[..., Archiver],
    store: FlakyStore,
    wal: WalArchive,
    pg_wal: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answer = threading.Event()
    asked = threading.Event()

    def hanging_lookup(key: str) -> bool:
        asked.set()
        answer.wait(10)
        return False

    monkeypatch.setattr(store, "exists", hanging_lookup)
    data = write_wal(pg_wal, SEG1)
    archiver = make_archiver()
    archiver.start()
    try:
        wait_for(lambda: archiver.snapshot()["archived"] == 1)
        assert asked.is_set()  # the warm-up's lookup is still waiting
        assert stored_plaintext(wal, SEG1) == data
    finally:
        answer.set()


def test_history_files_are_uploaded_first(
    make_archiver: Callable[..., Archiver], store: FlakyStore, wal: WalArchive, pg_wal: Path
) -> None:
    for name in (SEG3, SEG1, HISTORY, SEG2):
        write_wal(pg_wal, name)
    archiver = make_archiver(workers=1)
    archiver.start()
    wait_for(lambda: len(store.puts) == 4)
    assert store.puts == [wal.object_key(name) for name in (HISTORY, SEG1, SEG2, SEG3)]


def test_markers_of_unknown_files_are_ignored(
    make_archiver: Callable[..., Archiver], store: FlakyStore, wal: WalArchive, pg_wal: Path
) -> None:
    write_wal(pg_wal, "not-a-wal-file")
    write_wal(pg_wal, SEG1)
    archiver = make_archiver()
    archiver.start()
    wait_for(lambda: archiver.snapshot()["archived"] == 1)
    time.sleep(0.05)  # a few more scans
    assert store.puts == [wal.object_key(SEG1)]
    assert archiver.snapshot()["failed"] == 0


def test_a_pg_wal_that_appears_later_is_watched(
    make_archiver: Callable[..., Archiver], wal: WalArchive, tmp_path: Path
) -> None:
    # A replica being created: the agent starts before pg_basebackup wrote pg_wal.
    pg_wal = tmp_path / "later" / "pg_wal"
    archiver = Archiver(wal, pg_wal)
    try:
        archiver.start()
        time.sleep(0.05)
        (pg_wal / "archive_status").mkdir(parents=True)
        data = write_wal(pg_wal, SEG1)
        wait_for(lambda: archiver.snapshot()["archived"] == 1)
        assert stored_plaintext(wal, SEG1) == data
    finally:
        archiver.stop()


# --- answering wal-push -----------------------------------------------------------------


def test_push_uploads_a_file_not_yet_seen_and_returns_once_it_is_stored(
    make_archiver: Callable[..., Archiver], store: FlakyStore, wal: WalArchive, pg_wal: Path
) -> None:
    data = write_wal(pg_wal, SEG1, ready=False)
    archiver = make_archiver()  # not started: nothing uploads ahead
    archiver.push(pg_wal / SEG1)
    assert stored_plaintext(wal, SEG1) == data
    archiver.push(pg_wal / SEG1)
    assert store.puts == [wal.object_key(SEG1)]


def test_push_of_a_file_uploaded_ahead_returns_without_another_upload(
    make_archiver: Callable[..., Archiver], store: FlakyStore, wal: WalArchive, pg_wal: Path
) -> None:
    write_wal(pg_wal, SEG1)
    archiver = make_archiver()
    archiver.start()
    wait_for(lambda: archiver.snapshot()["archived"] == 1)
    store.down = True  # proves the answer comes from memory, not from storage
    archiver.push(pg_wal / SEG1)
    assert store.puts == [wal.object_key(SEG1)]


def test_push_during_an_upload_waits_for_it_instead_of_uploading_again(
    make_archiver: Callable[..., Archiver], store: FlakyStore, wal: WalArchive, pg_wal: Path
) -> None:
    data = write_wal(pg_wal, SEG1)
    store.gate.clear()
    archiver = make_archiver()
    archiver.start()
    assert store.writing.wait(5)
    pushed = threading.Event()
    pusher = threading.Thread(target=lambda: (archiver.push(pg_wal / SEG1), pushed.set()))
    pusher.start()
    assert not pushed.wait(0.2), "push returned before the upload in flight finished"
    store.gate.set()
    pusher.join(5)
    assert pushed.is_set()
    assert store.puts == [wal.object_key(SEG1)]
    assert stored_plaintext(wal, SEG1) == data


def test_push_of_a_file_archived_identically_by_the_direct_path_succeeds(
    make_archiver: Callable[..., Archiver], wal: WalArchive, pg_wal: Path
) -> None:
    data = write_wal(pg_wal, SEG1, ready=False)
    wal.push(pg_wal / SEG1)  # `pgwarden wal-push` went direct while the agent restarted
    make_archiver().push(pg_wal / SEG1)
    assert stored_plaintext(wal, SEG1) == data


def test_push_of_different_content_under_an_archived_name_is_a_conflict(
    make_archiver: Callable[..., Archiver], wal: WalArchive, pg_wal: Path, events: Events
) -> None:
    original = write_wal(pg_wal, SEG1, ready=False)
    wal.push(pg_wal / SEG1)
    write_wal(pg_wal, SEG1, ready=False, size=2000)  # e.g. a diverged former primary
    archiver = make_archiver()
    with pytest.raises(ArchiveConflictError, match=f"{SEG1} is already archived"):
        archiver.push(pg_wal / SEG1)
    assert stored_plaintext(wal, SEG1) == original
    assert kinds(events) == ["archive_conflict"]
    assert events[0][1]["name"] == SEG1
    assert "different content" in events[0][1]["reason"]


def test_push_while_storage_is_down_raises_the_storage_error(
    make_archiver: Callable[..., Archiver], store: FlakyStore, pg_wal: Path
) -> None:
    write_wal(pg_wal, SEG1, ready=False)
    store.down = True
    archiver = make_archiver()
    with pytest.raises(StorageError, match="storage is down"):
        archiver.push(pg_wal / SEG1)
    assert archiver.snapshot()["last_failure"].startswith("storage is down")


# --- status -----------------------------------------------------------------------------


def test_pending_files_and_lag_clear_when_postgresql_marks_them_done(
    make_archiver: Callable[..., Archiver], pg_wal: Path
) -> None:
    for name in (SEG1, SEG2):
        write_wal(pg_wal, name)
    archiver = make_archiver()
    archiver.start()
    wait_for(lambda: archiver.snapshot()["archived"] == 2)
    time.sleep(0.05)
    snapshot = archiver.snapshot()
    # Uploaded, but PostgreSQL has not run archive_command for them yet.
    assert snapshot["pending_segments"] == 2
    assert snapshot["lag_seconds"] >= 0.05
    mark_done(pg_wal, SEG1)
    wait_for(lambda: archiver.snapshot()["pending_segments"] == 1)
    mark_done(pg_wal, SEG2)
    wait_for(lambda: archiver.snapshot()["pending_segments"] == 0)
    assert archiver.snapshot()["lag_seconds"] is None


# --- outages ----------------------------------------------------------------------------


def test_an_outage_is_reported_once_and_its_end_once(
    make_archiver: Callable[..., Archiver],
    store: FlakyStore,
    wal: WalArchive,
    pg_wal: Path,
    events: Events,
) -> None:
    archiver = make_archiver()
    archiver.start()
    for outage, name in enumerate((SEG1, SEG2), start=1):
        store.down = True
        data = write_wal(pg_wal, name)
        failed_before = archiver.snapshot()["failed"]
        reported = 2 * outage - 1
        wait_for(  # retried, and reported
            lambda failures=failed_before + 3, n=reported: (
                archiver.snapshot()["failed"] >= failures and len(events) == n
            )
        )
        snapshot = archiver.snapshot()
        assert snapshot["failing_since"] is not None
        assert snapshot["last_failure"].startswith("storage is down")
        assert kinds(events) == ["archive_failing", "archive_recovered"] * (outage - 1) + [
            "archive_failing"
        ]
        assert events[-1][1]["name"] == name
        store.down = False
        wait_for(lambda n=reported + 1: len(events) == n)
        assert events[-1] == ("archive_recovered", {"last_archived": name})
        assert stored_plaintext(wal, name) == data
        assert archiver.snapshot()["failing_since"] is None
        mark_done(pg_wal, name)


def test_the_outage_ends_even_if_a_failed_file_was_archived_by_another_path(
    make_archiver: Callable[..., Archiver],
    store: FlakyStore,
    wal: WalArchive,
    pg_wal: Path,
    events: Events,
) -> None:
    archiver = make_archiver()
    archiver.start()
    store.down = True
    write_wal(pg_wal, SEG1)
    wait_for(lambda: kinds(events) == ["archive_failing"])
    store.down = False
    # The agent was slow to answer, so `pgwarden wal-push` went direct and succeeded.
    wal.push(pg_wal / SEG1)
    mark_done(pg_wal, SEG1)
    write_wal(pg_wal, SEG2)
    wait_for(lambda: archiver.snapshot()["archived"] == 1)
    time.sleep(0.05)
    assert kinds(events) == ["archive_failing", "archive_recovered"]
    assert archiver.snapshot()["failing_since"] is None


def test_an_upload_that_hangs_is_reported_as_failing(
    make_archiver: Callable[..., Archiver],
    store: FlakyStore,
    pg_wal: Path,
    events: Events,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(archiver_module, "STALLED_AFTER", 0.15)
    store.gate.clear()  # storage that drops packets: the write neither ends nor fails
    write_wal(pg_wal, SEG1)
    archiver = make_archiver()
    archiver.start()
    assert store.writing.wait(5)
    time.sleep(0.05)
    assert events == []
    wait_for(lambda: events)
    time.sleep(0.05)
    assert kinds(events) == ["archive_failing"]
    assert events[0][1]["name"] == SEG1
    assert "has taken over 0.15 s" in events[0][1]["reason"]
    assert archiver.snapshot()["failing_since"] is not None
    store.gate.set()


def test_a_hung_upload_that_completes_ends_the_outage(
    make_archiver: Callable[..., Archiver],
    store: FlakyStore,
    pg_wal: Path,
    events: Events,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(archiver_module, "STALLED_AFTER", 0.15)
    store.gate.clear()
    write_wal(pg_wal, SEG1)
    archiver = make_archiver()
    archiver.start()
    wait_for(lambda: events)
    store.gate.set()
    wait_for(lambda: archiver.snapshot()["archived"] == 1)
    time.sleep(0.05)
    assert kinds(events) == ["archive_failing", "archive_recovered"]
    assert archiver.snapshot()["failing_since"] is None


def test_push_gives_a_file_up_when_the_backlog_passes_the_limit(
    make_archiver: Callable[..., Archiver], store: FlakyStore, pg_wal: Path, events: Events
) -> None:
    store.down = True
    for name in (SEG1, SEG2, SEG3):
        write_wal(pg_wal, name, size=1000)
    archiver = make_archiver(max_backlog_bytes=2500)
    archiver.start()
    wait_for(lambda: archiver.snapshot()["pending_segments"] == 3)
    archiver.push(pg_wal / SEG1)  # 3000 bytes waiting, over the limit: does not raise
    assert archiver.dropped == [SEG1]
    assert ("archive_dropped", {"name": SEG1, "reason": "storage is down: cannot reach "
            f"main/wal/00000001/{SEG1}"}) in events  # fmt: skip


def test_push_under_the_backlog_limit_keeps_failing(
    make_archiver: Callable[..., Archiver], store: FlakyStore, pg_wal: Path, events: Events
) -> None:
    store.down = True
    for name in (SEG1, SEG2):
        write_wal(pg_wal, name, size=1000)
    archiver = make_archiver(max_backlog_bytes=2500)
    archiver.start()
    wait_for(lambda: archiver.snapshot()["pending_segments"] == 2)
    with pytest.raises(StorageError):
        archiver.push(pg_wal / SEG1)
    assert archiver.dropped == []
    assert "archive_dropped" not in kinds(events)


def test_a_conflict_is_never_given_up_whatever_the_backlog(
    make_archiver: Callable[..., Archiver], wal: WalArchive, pg_wal: Path
) -> None:
    write_wal(pg_wal, SEG1, ready=False)
    wal.push(pg_wal / SEG1)
    write_wal(pg_wal, SEG1, size=5000)
    archiver = make_archiver(max_backlog_bytes=1)
    archiver.start()
    wait_for(lambda: archiver.snapshot()["pending_segments"] == 1)
    with pytest.raises(ArchiveConflictError):
        archiver.push(pg_wal / SEG1)
    assert archiver.dropped == []


# --- lifecycle ------------------------------------------------------------------------


def test_stop_returns_promptly_and_nothing_is_uploaded_after_it(
    store: FlakyStore, wal: WalArchive, pg_wal: Path
) -> None:
    archiver = Archiver(wal, pg_wal)
    archiver.start()
    write_wal(pg_wal, SEG1)
    wait_for(lambda: archiver.snapshot()["archived"] == 1)
    started = time.monotonic()
    archiver.stop()
    assert time.monotonic() - started < 0.5
    write_wal(pg_wal, SEG2)
    time.sleep(0.1)
    assert store.puts == [wal.object_key(SEG1)]


# --- acknowledging through markers ------------------------------------------------------


def run_archive_command(command: str, name: str, pg_wal: Path) -> int:
    """archive_command as PostgreSQL runs it (through a shell, %f and %p filled in)."""
    filled = command.replace("%f", name).replace("%p", str(pg_wal / name))
    return subprocess.run(["/bin/sh", "-c", filled], check=False, timeout=60).returncode


def test_a_file_stored_before_postgresql_asks_is_acknowledged_by_a_marker(
    make_archiver: Callable[..., Archiver], wal: WalArchive, pg_wal: Path, tmp_path: Path
) -> None:
    pushed = tmp_path / "data.wal-spool" / "pushed"
    data = write_wal(pg_wal, SEG1)
    archiver = make_archiver(acknowledged=pushed)
    archiver.start()
    wait_for((pushed / SEG1).exists)
    assert stored_plaintext(wal, SEG1) == data
    # The agent's socket does not exist: only the marker can answer this push.
    command = wal_archive_command(tmp_path / "none.yml", str(tmp_path / "no.sock"), pushed)
    assert run_archive_command(command, SEG1, pg_wal) == 0
    assert not (pushed / SEG1).exists()


def test_a_marker_postgresql_did_not_use_goes_with_its_ready_file(
    make_archiver: Callable[..., Archiver], pg_wal: Path, tmp_path: Path
) -> None:
    pushed = tmp_path / "pushed"
    write_wal(pg_wal, SEG1)
    archiver = make_archiver(acknowledged=pushed)
    archiver.start()
    wait_for((pushed / SEG1).exists)
    archiver.push(pg_wal / SEG1)  # PostgreSQL asked through the client instead
    mark_done(pg_wal, SEG1)
    wait_for(lambda: not (pushed / SEG1).exists())


def test_no_marker_for_a_file_that_failed_or_that_postgresql_already_archived(
    make_archiver: Callable[..., Archiver], store: FlakyStore, pg_wal: Path, tmp_path: Path
) -> None:
    pushed = tmp_path / "pushed"
    (pushed).mkdir()
    (pushed / SEG3).touch()  # left by an earlier run: proves nothing now
    store.down = True
    write_wal(pg_wal, SEG1)
    archiver = make_archiver(acknowledged=pushed)
    archiver.start()
    assert not (pushed / SEG3).exists()
    wait_for(lambda: archiver.snapshot()["failed"] >= 1)
    assert not (pushed / SEG1).exists()
    # Pushed through the client while storage was down: a direct path stored it.
    write_wal(pg_wal, SEG2, ready=False)
    store.down = False
    archiver.push(pg_wal / SEG2)
    assert not (pushed / SEG2).exists()  # PostgreSQL did not mark it ready: nobody to ask


# --- archive_command waiting on a FIFO while the upload runs ------------------------------


def start_archive_command(command: str, name: str, pg_wal: Path) -> subprocess.Popen[bytes]:
    filled = command.replace("%f", name).replace("%p", str(pg_wal / name))
    return subprocess.Popen(["/bin/sh", "-c", filled], stderr=subprocess.PIPE)


def test_archive_command_asked_during_the_upload_waits_on_the_fifo_and_needs_no_client(
    make_archiver: Callable[..., Archiver],
    store: FlakyStore,
    wal: WalArchive,
    pg_wal: Path,
    tmp_path: Path,
) -> None:
    pushed = tmp_path / "pushed"
    store.gate.clear()  # the upload starts and is held
    data = write_wal(pg_wal, SEG1)
    archiver = make_archiver(acknowledged=pushed)
    archiver.start()
    store.writing.wait(5)
    assert (pushed / f"{SEG1}.wait").exists()
    # No socket and no configuration: the Python client could only fail.
    command = wal_archive_command(tmp_path / "none.yml", str(tmp_path / "no.sock"), pushed)
    shell = start_archive_command(command, SEG1, pg_wal)
    time.sleep(0.2)
    assert shell.poll() is None  # waiting for the upload, not answered yet
    store.gate.set()
    assert shell.wait(timeout=10) == 0, shell.stderr.read() if shell.stderr else ""
    assert stored_plaintext(wal, SEG1) == data
    assert not (pushed / f"{SEG1}.wait").exists()
    mark_done(pg_wal, SEG1)  # the marker nobody took goes with the .ready
    wait_for(lambda: not any(pushed.iterdir()))


def test_archive_command_waiting_on_a_failed_upload_falls_through_to_the_client(
    make_archiver: Callable[..., Archiver], store: FlakyStore, pg_wal: Path, tmp_path: Path
) -> None:
    pushed = tmp_path / "pushed"
    store.gate.clear()
    store.down = True
    write_wal(pg_wal, SEG1)
    archiver = make_archiver(acknowledged=pushed)
    archiver.start()
    store.writing.wait(5)
    command = wal_archive_command(tmp_path / "none.yml", str(tmp_path / "no.sock"), pushed)
    shell = start_archive_command(command, SEG1, pg_wal)
    time.sleep(0.2)
    assert shell.poll() is None
    store.gate.set()  # the upload fails: no ok, the shell goes on to the client
    assert shell.wait(timeout=30) != 0
    stderr = shell.stderr.read().decode() if shell.stderr else ""
    assert "none.yml" in stderr  # the client (direct path) ran and named what it lacks
    assert not (pushed / SEG1).exists()


def test_stopping_the_agent_releases_archive_command_to_the_client(
    make_archiver: Callable[..., Archiver], store: FlakyStore, pg_wal: Path, tmp_path: Path
) -> None:
    pushed = tmp_path / "pushed"
    store.gate.clear()
    write_wal(pg_wal, SEG1)
    archiver = make_archiver(acknowledged=pushed)
    archiver.start()
    store.writing.wait(5)
    command = wal_archive_command(tmp_path / "none.yml", str(tmp_path / "no.sock"), pushed)
    shell = start_archive_command(command, SEG1, pg_wal)
    time.sleep(0.2)
    archiver.stop()
    assert shell.wait(timeout=30) != 0  # went on to the client, which had no agent
    assert not (pushed / f"{SEG1}.wait").exists()


def test_a_fifo_left_by_a_dead_agent_holds_archive_command_only_for_the_wait_timeout(
    monkeypatch: pytest.MonkeyPatch, pg_wal: Path, tmp_path: Path
) -> None:
    import os  # noqa: PLC0415

    from pgwarden import invocation  # noqa: PLC0415

    monkeypatch.setattr(invocation, "WAIT_TIMEOUT", 1)
    pushed = tmp_path / "pushed"
    pushed.mkdir()
    os.mkfifo(pushed / f"{SEG1}.wait")  # nobody will ever write or close it
    write_wal(pg_wal, SEG1)
    command = invocation.wal_archive_command(
        tmp_path / "none.yml", str(tmp_path / "no.sock"), pushed
    )
    assert "timeout 1 " in command
    shell = start_archive_command(command, SEG1, pg_wal)
    assert shell.wait(timeout=30) != 0  # not stuck in open(): the client ran and failed


def test_archive_command_too_long_for_postgresql_leaves_out_the_wait(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 200) / ("e" * 200)
    command = wal_archive_command(tmp_path / "none.yml", str(tmp_path / "no.sock"), deep)
    assert ".wait" not in command
    assert command.startswith(f"rm {deep}/%f 2>/dev/null || exec ")
    short = wal_archive_command(tmp_path / "none.yml", str(tmp_path / "no.sock"), tmp_path)
    assert f"grep -qx ok {tmp_path}/%f.wait" in short


# --- looking only when something happens --------------------------------------------------


class RecordingPrecompressor:
    """Stands in for the precompressor: records each look at the segment being written and
    compresses nothing (the upload then reads the file itself)."""

    def __init__(self) -> None:
        self.looks: list[list[str]] = []

    def warm(self) -> None:
        pass

    def follow(self, candidates: list[str]) -> None:
        self.looks.append(list(candidates))

    def forget(self, keep: set[str]) -> None:
        pass

    def finish(self, path: Path) -> None:
        return None


def test_an_idle_archiver_looks_again_only_when_wal_is_written_or_a_marker_appears(
    make_archiver: Callable[..., Archiver],
    store: FlakyStore,
    wal: WalArchive,
    pg_wal: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(archiver_module, "IDLE_INTERVAL", 60.0)
    recorder = RecordingPrecompressor()
    write_wal(pg_wal, SEG1, ready=False)  # the segment PostgreSQL is writing
    archiver = make_archiver(precompress=recorder)
    archiver.start()
    wait_for(lambda: recorder.looks)
    time.sleep(0.1)  # a second look once its watches are in place
    settled = len(recorder.looks)
    time.sleep(0.3)
    assert settled <= 2
    assert len(recorder.looks) == settled  # nothing written: no look (every 10 ms before)
    with (pg_wal / SEG1).open("ab") as segment:  # PostgreSQL writes WAL
        segment.write(b"more WAL")
    wait_for(lambda: len(recorder.looks) > settled, timeout=2)
    (pg_wal / "archive_status" / f"{SEG1}.ready").touch()  # the segment is complete
    wait_for(lambda: store.puts == [wal.object_key(SEG1)], timeout=2)
    started = time.monotonic()
    archiver.stop()
    assert time.monotonic() - started < 0.5  # stopping does not wait out the idle look
