"""The archiver's wake-up: a file appearing in archive_status ends the wait at once."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from pgwarden.wal.dirwatch import IN_MODIFY, DirectoryWatch, Wakeup, wait_any


@pytest.fixture
def status_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "archive_status"
    directory.mkdir()
    return directory


@pytest.fixture
def watch(status_dir: Path) -> Iterator[DirectoryWatch]:
    watcher = DirectoryWatch(status_dir)
    yield watcher
    watcher.close()


def create_soon(path: Path) -> threading.Timer:
    timer = threading.Timer(0.05, path.write_text, args=("",))
    timer.start()
    return timer


def test_a_new_marker_ends_the_wait(watch: DirectoryWatch, status_dir: Path) -> None:
    assert watch.wait(0.01) is False  # nothing yet
    assert watch.active
    timer = create_soon(status_dir / "000000010000000000000001.ready")
    # A wait of a minute returns as soon as the marker exists.
    assert watch.wait(60) is True
    timer.join()
    assert (status_dir / "000000010000000000000001.ready").exists()


def test_a_marker_renamed_into_place_ends_the_wait(
    watch: DirectoryWatch, status_dir: Path, tmp_path: Path
) -> None:
    watch.wait(0)
    (tmp_path / "x.ready").write_text("")
    (tmp_path / "x.ready").replace(status_dir / "x.ready")
    assert watch.wait(60) is True
    assert watch.wait(0.01) is False  # the events were drained: no second wake-up


def test_a_directory_made_anew_is_watched_again(watch: DirectoryWatch, status_dir: Path) -> None:
    watch.wait(0)
    shutil.rmtree(status_dir)  # the data directory was cloned again
    watch.wait(0.01)
    assert not watch.active
    status_dir.mkdir()
    watch.wait(0)
    assert watch.active
    timer = create_soon(status_dir / "y.ready")
    assert watch.wait(60) is True
    timer.join()


def test_a_missing_directory_falls_back_to_sleeping(tmp_path: Path) -> None:
    watcher = DirectoryWatch(tmp_path / "not-yet")
    try:
        assert watcher.wait(0.01) is False
        assert not watcher.active
    finally:
        watcher.close()


def test_a_write_to_a_file_ends_a_wait_that_asks_for_modifications(tmp_path: Path) -> None:
    (tmp_path / "segment").write_bytes(b"page 1")
    watcher = DirectoryWatch(tmp_path, mask=IN_MODIFY)
    try:
        assert wait_any([watcher], 0.01) == []
        timer = threading.Timer(0.05, lambda: (tmp_path / "segment").open("ab").write(b"2"))
        timer.start()
        assert wait_any([watcher], 60) == [watcher]
        timer.join()
        assert wait_any([watcher], 0.01) == []  # drained
    finally:
        watcher.close()


def test_a_wakeup_ends_a_wait_on_directories(watch: DirectoryWatch) -> None:
    wakeup = Wakeup()
    try:
        assert wait_any([watch, wakeup], 0.01) == []
        timer = threading.Timer(0.05, wakeup.set)
        timer.start()
        assert wait_any([watch, wakeup], 60) == [wakeup]
        timer.join()
        assert wait_any([watch, wakeup], 0.01) == []  # drained
    finally:
        wakeup.close()


def test_a_path_that_comes_to_name_another_directory_is_watched_anew(tmp_path: Path) -> None:
    first, second = tmp_path / "disk1", tmp_path / "disk2"
    first.mkdir()
    second.mkdir()
    link = tmp_path / "pg_wal"  # pg_wal on another mount, cloned again: a new link
    link.symlink_to(first)
    watcher = DirectoryWatch(link)
    try:
        assert watcher.watching()
        assert watcher.take_added()
        assert not watcher.take_added()
        link.unlink()  # the old target stays: no event ends the old watch
        link.symlink_to(second)
        assert watcher.watching()
        assert watcher.take_added()  # the caller learns to look for what came before
        watcher.wait(0.01)  # the old watch's end, as an event
        timer = create_soon(second / "000000010000000000000001.ready")
        assert watcher.wait(60) is True
        timer.join()
        (first / "stale.ready").write_text("")  # the old directory wakes nobody now
        assert watcher.wait(0.05) is False
    finally:
        watcher.close()


def test_setting_a_wakeup_after_it_was_closed_does_nothing() -> None:
    wakeup = Wakeup()
    wakeup.close()
    wakeup.set()
    assert not wakeup.watching()
    assert wait_any([wakeup], 0.01) == []


def test_a_directory_that_cannot_be_watched_is_polled_and_said_so_once(
    status_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    watcher = DirectoryWatch(status_dir)
    monkeypatch.setattr(watcher, "_add_watch", lambda *_: -1)  # the watch limit reached
    try:
        with capture_logs() as logged:
            assert watcher.wait(0.01) is False
            assert watcher.wait(0.01) is False
        assert not watcher.active
        warnings = [e for e in logged if e["event"] == "dirwatch.unavailable"]
        assert len(warnings) == 1
        assert warnings[0]["directory"] == str(status_dir)
    finally:
        watcher.close()
