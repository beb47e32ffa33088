"""The behaviour every `ObjectStore` shares, run against each backend.

A backend's test module subclasses `ObjectStoreContract` and provides a `harness` fixture:
an object with `store()` (a store whose keys are private to the test), `part_size` (the
size above which `put_stream` of that store splits its upload into parts) and
`atomic_if_absent` (whether the backend guarantees exactly one winner among concurrent
`if_absent` writers; S3 does, moto's check is not under a lock).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Protocol

import pytest

from pgwarden.storage import ObjectExists, ObjectNotFound, ObjectStore, StorageError


class Harness(Protocol):
    part_size: int
    atomic_if_absent: bool

    def store(self) -> ObjectStore: ...


class BoomError(Exception):
    """Raised by a chunk iterator to fail an upload midway."""


def chunked(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def failing_after(data: bytes, size: int, limit: int) -> Iterator[bytes]:
    """The chunks of `data`, then BoomError once `limit` bytes were given."""
    given = 0
    for chunk in chunked(data, size):
        if given >= limit:
            raise BoomError("source file became unreadable")
        given += len(chunk)
        yield chunk


BAD_KEYS = ["", "/etc/passwd", "../outside", "a/../../b", "a/./b", "a//b", "a/", ".meta", "a/.x"]


class ObjectStoreContract:
    # ----------------------------------------------------------------- round trips
    def test_bytes_round_trip_and_overwrite(self, harness: Harness) -> None:
        store = harness.store()
        store.put("wal/00000001/000000010000000000000001", b"first")
        assert store.get("wal/00000001/000000010000000000000001") == b"first"
        store.put("wal/00000001/000000010000000000000001", b"second, longer")
        assert store.get("wal/00000001/000000010000000000000001") == b"second, longer"
        store.put("empty", b"")
        assert store.get("empty") == b""
        assert store.head("empty").size == 0

    def test_stream_round_trip_over_several_parts(self, harness: Harness) -> None:
        store = harness.store()
        data = os.urandom(2 * harness.part_size + 123_457)  # three parts on S3
        written = store.put_stream("basebackups/b1/base/16384/2619", chunked(data, 999_983))
        assert written == len(data)
        assert store.head("basebackups/b1/base/16384/2619").size == len(data)
        chunks = list(store.get_stream("basebackups/b1/base/16384/2619", chunk_size=256 * 1024))
        assert all(0 < len(chunk) <= 256 * 1024 for chunk in chunks)
        assert hashlib.sha256(b"".join(chunks)).digest() == hashlib.sha256(data).digest()
        assert store.get("basebackups/b1/base/16384/2619") == data

    def test_small_and_empty_streams(self, harness: Harness) -> None:
        store = harness.store()
        assert store.put_stream("small", [b"ab", b"", b"cd"]) == 4
        assert store.get("small") == b"abcd"
        assert store.put_stream("nothing", iter(())) == 0
        assert store.get("nothing") == b""
        assert list(store.get_stream("nothing")) == []

    def test_keys_with_unusual_characters_round_trip(self, harness: Harness) -> None:
        store = harness.store()
        keys = ["with space", "plus+equals=percent%", "accent-é", "tilde~and,comma"]
        for index, key in enumerate(keys):
            store.put(f"odd/{key}", bytes([index]))
        assert [info.key for info in store.list("odd/")] == sorted(f"odd/{key}" for key in keys)
        for index, key in enumerate(keys):
            assert store.get(f"odd/{key}") == bytes([index])

    # ----------------------------------------------------------------- metadata
    def test_metadata_round_trips_and_is_replaced_with_the_object(self, harness: Harness) -> None:
        store = harness.store()
        metadata = {"sha256": "ab" * 32, "compression": "zstd", "key-id": "k1"}
        store.put("manifest.json", b"{}", metadata)
        assert store.head("manifest.json").metadata == metadata
        store.put("manifest.json", b"{}")
        assert store.head("manifest.json").metadata == {}

        data = os.urandom(2 * harness.part_size + 1)
        store.put_stream("big", chunked(data, 1 << 20), {"sha256": "cd" * 32})
        assert store.head("big").metadata == {"sha256": "cd" * 32}

    @pytest.mark.parametrize(
        "metadata",
        [
            {"Upper": "x"},
            {"under_score": "x"},
            {"ok": "caf\u00e9"},
            {"ok": "two\nlines"},
            {"": "x"},
        ],
    )
    def test_unstorable_metadata_is_refused_and_nothing_is_written(
        self, harness: Harness, metadata: dict[str, str]
    ) -> None:
        store = harness.store()
        with pytest.raises(StorageError, match="metadata"):
            store.put("x", b"data", metadata)
        assert not store.exists("x")

    # ----------------------------------------------------------------- head, exists, list
    def test_head_and_exists(self, harness: Harness) -> None:
        store = harness.store()
        before = datetime.now(UTC)
        store.put("a/b", b"12345")
        info = store.head("a/b")
        assert (info.key, info.size) == ("a/b", 5)
        assert info.modified.tzinfo is not None
        assert before - timedelta(seconds=5) <= info.modified <= datetime.now(UTC)
        assert store.exists("a/b")
        assert not store.exists("a")  # only a "directory" of other objects
        assert not store.exists("a/c")

    def test_list_is_sorted_by_whole_key_and_filters_by_string_prefix(
        self, harness: Harness
    ) -> None:
        store = harness.store()
        keys = ["b", "a0", "a/y/z", "a-b", "a/x", "wal/00000002/s", "wal/00000001/s", "wal/x"]
        for key in keys:
            store.put(key, key.encode())
        everything = list(store.list())
        assert [info.key for info in everything] == sorted(keys)
        assert [info.size for info in everything] == [len(key) for key in sorted(keys)]
        assert all(info.metadata is None for info in everything)
        assert [i.key for i in store.list("a/")] == ["a/x", "a/y/z"]
        assert [i.key for i in store.list("a")] == ["a-b", "a/x", "a/y/z", "a0"]
        assert [i.key for i in store.list("wal/0000000")] == ["wal/00000001/s", "wal/00000002/s"]
        assert [i.key for i in store.list("a/y/z")] == ["a/y/z"]
        assert list(store.list("nothing/")) == []
        assert list(store.list("wal/00000003")) == []

    def test_list_pages_through_many_objects(self, harness: Harness) -> None:
        store = harness.store()
        keys = [f"wal/00000001/{n:024X}" for n in range(23)]
        for key in reversed(keys):
            store.put(key, b"x")
        assert [info.key for info in store.list("wal/", page_size=5)] == keys
        listing = store.list("wal/", page_size=5)
        assert next(listing).key == keys[0]  # lazy: a generator, not a list

    # ----------------------------------------------------------------- delete
    def test_delete_is_idempotent(self, harness: Harness) -> None:
        store = harness.store()
        store.put("a/b/c", b"x")
        store.delete("a/b/c")
        store.delete("a/b/c")
        store.delete("never/was")
        assert not store.exists("a/b/c")
        with pytest.raises(ObjectNotFound):
            store.get("a/b/c")
        assert list(store.list()) == []
        store.put("a/b/c", b"again")  # its "directory" can be used again
        assert store.get("a/b/c") == b"again"

    def test_delete_many(self, harness: Harness) -> None:
        store = harness.store()
        for n in range(5):
            store.put(f"d/{n}", b"x")
        store.delete_many(["d/0", "d/2", "d/missing", "d/4"])
        assert [info.key for info in store.list()] == ["d/1", "d/3"]
        store.delete_many(iter(["d/1", "d/3"]))
        store.delete_many([])
        assert list(store.list()) == []

    def test_delete_many_with_a_bad_key_deletes_nothing(self, harness: Harness) -> None:
        store = harness.store()
        store.put("keep", b"x")
        with pytest.raises(StorageError, match=r"\.\./keep"):
            store.delete_many(["keep", "../keep"])
        assert store.exists("keep")

    # ----------------------------------------------------------------- if_absent
    def test_if_absent_refuses_to_overwrite(self, harness: Harness) -> None:
        store = harness.store()
        store.put("wal/00000001/seg", b"original", {"sha256": "aa"}, if_absent=True)
        with pytest.raises(ObjectExists, match="wal/00000001/seg") as raised:
            store.put("wal/00000001/seg", b"different", {"sha256": "bb"}, if_absent=True)
        assert raised.value.key == "wal/00000001/seg"
        with pytest.raises(ObjectExists):
            big = chunked(os.urandom(3 * harness.part_size), 1 << 20)
            store.put_stream("wal/00000001/seg", big, if_absent=True)
        assert store.get("wal/00000001/seg") == b"original"
        assert store.head("wal/00000001/seg").metadata == {"sha256": "aa"}
        assert store.put_stream("fresh", [b"a", b"b"], if_absent=True) == 2

    def test_if_absent_stream_loses_to_a_writer_that_finished_first(self, harness: Harness) -> None:
        store = harness.store()
        data = os.urandom(2 * harness.part_size + 10)

        def chunks() -> Iterator[bytes]:
            for index, chunk in enumerate(chunked(data, 1 << 20)):
                if index == 1:  # another writer stores the key while we upload
                    store.put("seg", b"the other writer", if_absent=True)
                yield chunk

        with pytest.raises(ObjectExists, match="seg"):
            store.put_stream("seg", chunks(), if_absent=True)
        assert store.get("seg") == b"the other writer"
        assert [info.key for info in store.list()] == ["seg"]

    def test_concurrent_if_absent_writers(self, harness: Harness) -> None:
        store = harness.store()
        writers = 6
        for round_ in range(5):
            key = f"race/{round_}"
            start = threading.Barrier(writers)
            outcomes: list[str] = []

            def write(
                index: int,
                key: str = key,
                start: threading.Barrier = start,
                outcomes: list[str] = outcomes,
            ) -> None:
                start.wait()
                try:
                    store.put(key, bytes([index]) * 200_000, {"writer": str(index)}, if_absent=True)
                except ObjectExists:
                    outcomes.append("exists")
                else:
                    outcomes.append(f"won {index}")

            threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            winners = [outcome for outcome in outcomes if outcome.startswith("won")]
            assert len(outcomes) == writers
            if harness.atomic_if_absent:
                assert len(winners) == 1, outcomes
            assert winners, outcomes
            stored = store.get(key)
            assert len(set(stored)) == 1  # one writer's bytes, never a mix
            assert store.head(key).metadata == {"writer": str(stored[0])}

    # ----------------------------------------------------------------- failures
    def test_failed_stream_leaves_no_object(self, harness: Harness) -> None:
        store = harness.store()
        data = os.urandom(3 * harness.part_size)
        with pytest.raises(BoomError):  # the caller's own error, unchanged
            store.put_stream(
                "basebackups/b2/file",
                failing_after(data, harness.part_size // 4, 2 * harness.part_size + 1),
            )
        assert not store.exists("basebackups/b2/file")
        assert list(store.list()) == []

    def test_failed_stream_keeps_the_previous_object(self, harness: Harness) -> None:
        store = harness.store()
        store.put("file", b"previous", {"sha256": "00"})
        data = os.urandom(2 * harness.part_size)
        with pytest.raises(BoomError):
            store.put_stream(
                "file", failing_after(data, harness.part_size // 4, harness.part_size + 1)
            )
        assert store.get("file") == b"previous"
        assert store.head("file").metadata == {"sha256": "00"}
        with pytest.raises(BoomError):
            store.put_stream("small", failing_after(b"tiny", 2, 2))
        assert not store.exists("small")

    def test_missing_object_is_named(self, harness: Harness) -> None:
        store = harness.store()
        key = "wal/00000001/000000010000000000000009"
        for read in (store.get, store.head, lambda k: list(store.get_stream(k))):
            with pytest.raises(ObjectNotFound, match=key) as raised:
                read(key)
            assert raised.value.key == key
            message = str(raised.value)
            assert "\n" not in message
            assert message.endswith("does not exist")

    @pytest.mark.parametrize("key", BAD_KEYS)
    def test_bad_keys_are_refused(self, harness: Harness, key: str) -> None:
        store = harness.store()
        for attempt in (
            lambda: store.put(key, b"x"),
            lambda: store.put_stream(key, [b"x"]),
            lambda: store.get(key),
            lambda: store.head(key),
            lambda: store.delete(key),
            lambda: store.exists(key),
        ):
            with pytest.raises(StorageError, match="object key") as raised:
                attempt()
            assert type(raised.value) is StorageError
        assert list(store.list()) == []

    def test_bad_list_prefix_is_refused(self, harness: Harness) -> None:
        store = harness.store()
        for prefix in ("../", "/abs", "a/../", ".hidden"):
            with pytest.raises(StorageError, match="object key"):
                list(store.list(prefix))
