"""The behaviour every `ConsensusStore` shares, run against each backend.

A backend's test module subclasses `StoreContract` and provides a `harness` fixture: an
object with `store()` (a new started client, one session, of one cluster unique to the
test), `expire(store)` (end its session as the server would after a timeout) and
`corrupt(key, raw)` (write raw bytes to a key of that cluster).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

import pytest

from pgwarden.dcs.base import MAX_EVENTS, ConsensusStore, SessionState, StoreError
from pgwarden.model import (
    ClusterState,
    DynamicConfig,
    FailoverRequest,
    HistoryEntry,
    Leader,
    Lsn,
    MemberInfo,
    PgState,
    Role,
    SyncMode,
    Tags,
)


class Harness(Protocol):
    def store(self) -> ConsensusStore: ...

    def expire(self, store: ConsensusStore) -> None: ...

    def corrupt(self, key: str, raw: bytes) -> None: ...


def member(name: str, index: int = 1, **changes: object) -> MemberInfo:
    info = MemberInfo(
        name=name,
        role=Role.REPLICA,
        state=PgState.RUNNING,
        timeline=1,
        received_lsn=Lsn.parse("0/3000060"),
        replayed_lsn=Lsn.parse("0/3000028"),
        api_url=f"http://127.0.0.{10 + index}:8008",
        host=f"127.0.0.{10 + index}",
        port=5432,
        version="15.5",
        system_identifier="7300000000000000001",
    )
    return replace(info, **changes)  # type: ignore[arg-type]


def wait_until(check: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.01)


class Calls:
    """A watch callback that counts its calls."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def __call__(self) -> None:
        with self._lock:
            self.count += 1

    def settle(self, quiet: float = 0.3) -> None:
        """Wait until no call arrived for `quiet` seconds (start-up notifications)."""
        seen = -1
        while seen != self.count:
            seen = self.count
            time.sleep(quiet)

    def expect_after(self, action: Callable[[], object], timeout: float = 5.0) -> None:
        """Run `action` and wait for at least one call caused by it."""
        before = self.count
        action()
        wait_until(lambda: self.count > before, timeout)


class StoreContract:
    # ----------------------------------------------------------------- empty cluster
    def test_empty_cluster_reads_as_defaults(self, harness: Harness) -> None:
        store = harness.store()
        assert store.read() == ClusterState()
        assert store.events() == []
        assert store.session_state is SessionState.CONNECTED
        assert store.session_id is not None

    # ----------------------------------------------------------------- leader
    def test_one_session_holds_the_leader(self, harness: Harness) -> None:
        a, b = harness.store(), harness.store()
        assert a.acquire_leader("node1")
        assert not b.acquire_leader("node2")
        assert a.holds_leader()
        assert not b.holds_leader()
        assert b.read().leader == Leader("node1", a.session_id)
        assert a.acquire_leader("node1")  # already ours: still ours
        assert not a.acquire_leader("node9")

    def test_only_the_owner_releases_the_leader(self, harness: Harness) -> None:
        a, b = harness.store(), harness.store()
        assert a.acquire_leader("node1")
        assert not b.release_leader("node1")  # same name, other session
        assert not a.release_leader("node2")
        assert b.read().leader == Leader("node1", a.session_id)
        assert a.release_leader("node1")
        assert a.read().leader is None
        assert not a.holds_leader()
        assert not a.release_leader("node1")
        assert b.acquire_leader("node2")
        assert b.holds_leader()

    def test_racing_members_elect_exactly_one_leader(self, harness: Harness) -> None:
        stores = [harness.store() for _ in range(6)]
        won: list[str] = []
        barrier = threading.Barrier(len(stores))

        def race(index: int) -> None:
            barrier.wait()
            if stores[index].acquire_leader(f"node{index}"):
                won.append(f"node{index}")

        threads = [threading.Thread(target=race, args=(i,)) for i in range(len(stores))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(won) == 1
        leader = stores[0].read().leader
        assert leader is not None
        assert leader.name == won[0]
        assert [s.holds_leader() for s in stores].count(True) == 1

    # ----------------------------------------------------------------- members
    def test_member_is_published_and_updated(self, harness: Harness) -> None:
        a, b = harness.store(), harness.store()
        info = member("node1")
        a.publish_member(info)
        assert b.read().members == {"node1": info}
        updated = replace(
            info,
            role=Role.PRIMARY,
            timeline=2,
            received_lsn=Lsn.parse("1/A0"),
            replayed_lsn=None,
            tags=Tags(nofailover=True, failover_priority=3),
        )
        a.publish_member(updated)
        assert b.read().members == {"node1": updated}

    def test_stopped_member_leaves_leader_and_member_node(self, harness: Harness) -> None:
        a, b = harness.store(), harness.store()
        a.publish_member(member("node1", 1))
        b.publish_member(member("node2", 2))
        assert a.acquire_leader("node1")
        assert set(b.read().members) == {"node1", "node2"}
        a.stop()
        state = b.read()
        assert state.leader is None
        assert set(state.members) == {"node2"}
        assert b.acquire_leader("node2")
        with pytest.raises(StoreError):
            a.read()

    def test_restarted_member_replaces_its_stale_node(self, harness: Harness) -> None:
        old, new = harness.store(), harness.store()
        old.publish_member(member("node1"))
        new.publish_member(member("node1", state=PgState.STARTING))
        assert new.read().members["node1"].state is PgState.STARTING
        old.stop()  # the stale session ends; the node now belongs to the new one
        assert new.read().members["node1"].state is PgState.STARTING

    def test_member_name_used_by_another_host_is_refused(self, harness: Harness) -> None:
        a, b = harness.store(), harness.store()
        a.publish_member(member("node1", 1))
        with pytest.raises(StoreError, match="node1"):
            b.publish_member(member("node1", 2))
        assert a.read().members["node1"].host == "127.0.0.11"

    # ----------------------------------------------------------------- cluster keys
    def test_config_is_compare_and_set(self, harness: Harness) -> None:
        a, b = harness.store(), harness.store()
        assert a.set_config(DynamicConfig(ttl=10), -1)
        assert not b.set_config(DynamicConfig(ttl=20), -1)
        state = b.read()
        assert state.config == DynamicConfig(ttl=10)
        wanted = DynamicConfig(ttl=20, synchronous_mode=SyncMode.ON, parameters={"work_mem": "8MB"})
        assert b.set_config(wanted, state.config_version)
        assert not a.set_config(DynamicConfig(ttl=30), state.config_version)
        final = a.read()
        assert final.config == wanted
        assert final.config_version != state.config_version

    def test_sync_is_compare_and_set(self, harness: Harness) -> None:
        a, b = harness.store(), harness.store()
        assert a.set_sync("node1", frozenset({"node2"}), -1)
        assert not b.set_sync("node2", frozenset(), -1)
        sync = b.read().sync
        assert (sync.leader, sync.members) == ("node1", frozenset({"node2"}))
        assert b.set_sync("node1", frozenset({"node2", "node3"}), sync.version)
        assert not a.set_sync(None, frozenset(), sync.version)
        final = a.read().sync
        assert (final.leader, final.members) == ("node1", frozenset({"node2", "node3"}))
        assert final.version != sync.version
        assert not a.set_sync("node1", frozenset(), final.version + 7)

    def test_failover_is_created_changed_and_cleared(self, harness: Harness) -> None:
        a, b = harness.store(), harness.store()
        assert not a.clear_failover(-1)  # nothing to clear
        assert a.set_failover(FailoverRequest("node1", "node2"), -1)
        assert not b.set_failover(FailoverRequest(None, "node3"), -1)
        request = b.read().failover
        assert request is not None
        assert (request.from_, request.to, request.at) == ("node1", "node2", None)
        assert b.set_failover(FailoverRequest("node1", "node3", at=1.8e9), request.version)
        assert not a.clear_failover(request.version)  # stale
        current = a.read().failover
        assert current is not None
        assert (current.to, current.at) == ("node3", 1.8e9)
        assert a.clear_failover(current.version)
        assert b.read().failover is None
        assert a.set_failover(FailoverRequest(None, "node2"), -1)
        assert a.clear_failover(-1)
        assert a.read().failover is None

    def test_cluster_is_initialized_once(self, harness: Harness) -> None:
        a, b = harness.store(), harness.store()
        assert a.initialize("7300000000000000001")
        assert not b.initialize("7300000000000000002")
        assert b.read().initialize == "7300000000000000001"

    def test_optime_keeps_the_last_position(self, harness: Harness) -> None:
        store = harness.store()
        store.set_optime(Lsn.parse("0/3000000"))
        store.set_optime(Lsn.parse("2/A0000028"))
        assert store.read().optime == Lsn.parse("2/A0000028")

    def test_history_keeps_append_order(self, harness: Harness) -> None:
        a, b = harness.store(), harness.store()
        entries = [
            HistoryEntry(t, Lsn(0x3000000 * t), 1.7e9 + t, "failover", f"node{t}", f"node{t + 1}")
            for t in range(1, 5)
        ]
        for i, entry in enumerate(entries):
            (a if i % 2 else b).append_history(entry)
        assert a.read().history == tuple(entries)

    def test_concurrent_history_appends_are_all_kept(self, harness: Harness) -> None:
        stores = [harness.store() for _ in range(3)]

        def append(index: int) -> None:
            for n in range(8):
                stores[index].append_history(
                    HistoryEntry(index * 100 + n, Lsn(n), 0.0, "test", None, f"node{index}")
                )

        threads = [threading.Thread(target=append, args=(i,)) for i in range(len(stores))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        history = stores[0].read().history
        assert len(history) == 24
        for index in range(3):  # each writer's entries in its own order
            mine = [e.timeline for e in history if e.new_leader == f"node{index}"]
            assert mine == [index * 100 + n for n in range(8)]

    def test_events_are_capped_dropping_the_oldest(self, harness: Harness) -> None:
        store = harness.store()
        total = MAX_EVENTS + 3
        before = time.time()
        for i in range(total):
            store.add_event("backup" if i % 2 else "failover", {"n": i, "member": "node1"})
        events = store.events()
        assert len(events) == MAX_EVENTS
        assert [e["data"]["n"] for e in events] == list(range(3, total))
        assert events[0]["kind"] == "backup"  # n=3
        assert before <= events[-1]["time"] <= time.time()

    # ----------------------------------------------------------------- watches
    def test_watch_fires_on_every_change_the_agent_reacts_to(self, harness: Harness) -> None:
        a, b = harness.store(), harness.store()
        calls = Calls()
        b.watch(calls)
        calls.settle()
        calls.expect_after(lambda: a.acquire_leader("node1"))
        calls.expect_after(lambda: a.publish_member(member("node1")))
        calls.expect_after(lambda: a.release_leader("node1"))
        calls.expect_after(lambda: a.set_failover(FailoverRequest("node1", None), -1))
        calls.expect_after(lambda: a.set_sync("node1", frozenset(), -1))
        calls.expect_after(lambda: a.set_config(DynamicConfig(paused=True), -1))
        calls.expect_after(a.stop)  # its member node vanishes

    # ----------------------------------------------------------------- sessions
    def test_expired_session_loses_leader_and_member(self, harness: Harness) -> None:
        a, b = harness.store(), harness.store()
        states: list[SessionState] = []
        a.watch(lambda: states.append(a.session_state))
        calls = Calls()
        b.watch(calls)
        a.publish_member(member("node1"))
        assert a.acquire_leader("node1")
        old = a.session_id

        harness.expire(a)
        wait_until(lambda: a.session_state is SessionState.CONNECTED and a.session_id != old)
        assert a.session_id is not None
        state = b.read()
        assert state.leader is None
        assert "node1" not in state.members
        assert not a.holds_leader()
        assert SessionState.LOST in states
        # The new session holds nothing until the agent publishes and acquires again.
        a.publish_member(member("node1"))
        assert a.acquire_leader("node1")
        assert b.read().leader == Leader("node1", a.session_id)
        # Watches keep working across the new session.
        calls.settle(0.1)
        calls.expect_after(lambda: a.release_leader("node1"))

    def test_confirm_session_returns_the_time_before_the_round_trip(self, harness: Harness) -> None:
        store = harness.store()
        before = time.monotonic()
        confirmed = store.confirm_session()
        assert confirmed is not None
        assert before <= confirmed <= time.monotonic()
        assert store.session_timeout > 0
        store.stop()
        assert store.confirm_session() is None
        assert store.session_state is SessionState.LOST

    # ----------------------------------------------------------------- bad data
    @pytest.mark.parametrize("key", ["config", "leader", "history", "failover", "sync"])
    def test_malformed_key_is_reported_by_name(self, harness: Harness, key: str) -> None:
        store = harness.store()
        harness.corrupt(key, b"{not json")
        with pytest.raises(StoreError, match=key):
            store.read()

    def test_wrongly_shaped_values_are_reported_by_name(self, harness: Harness) -> None:
        store = harness.store()
        harness.corrupt("members/node1", b'{"role": "boss"}')
        with pytest.raises(StoreError, match="members/node1"):
            store.read()

    def test_names_that_are_not_one_path_component_are_refused(self, harness: Harness) -> None:
        store = harness.store()
        with pytest.raises(StoreError, match="member name"):
            store.acquire_leader("a/b")
        with pytest.raises(StoreError, match="member name"):
            store.publish_member(member(""))
