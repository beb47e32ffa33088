"""The in-memory store: the shared store contract, and its test hooks."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from dcs_contract import Calls, StoreContract, member
from pgwarden.dcs.base import ConsensusStore, SessionState, StoreError
from pgwarden.dcs.memory import MemoryServer, MemoryStore


class MemoryHarness:
    def __init__(self, cluster: str = "main") -> None:
        self.server = MemoryServer()
        self.cluster = cluster
        self.stores: list[MemoryStore] = []

    def store(self, cluster: str | None = None) -> MemoryStore:
        store = MemoryStore(self.server, cluster or self.cluster)
        store.start(timeout=1.0)
        self.stores.append(store)
        return store

    def expire(self, store: ConsensusStore) -> None:
        assert isinstance(store, MemoryStore)
        store.expire_session()

    def corrupt(self, key: str, raw: bytes) -> None:
        self.server.put_raw(f"/pgwarden/{self.cluster}/{key}", raw)

    def close(self) -> None:
        for store in self.stores:
            store.stop()


@pytest.fixture
def harness() -> Iterator[MemoryHarness]:
    h = MemoryHarness()
    yield h
    h.close()


class TestMemoryStoreContract(StoreContract):
    pass


def test_the_memory_store_satisfies_the_protocol(harness: MemoryHarness) -> None:
    store: ConsensusStore = harness.store()  # mypy-checked assignment documents the intent
    assert isinstance(store, MemoryStore)


def test_suspended_client_fails_fast_and_keeps_its_session(harness: MemoryHarness) -> None:
    a, b = harness.store(), harness.store()
    a.publish_member(member("node1"))
    assert a.acquire_leader("node1")
    session = a.session_id
    calls = Calls()
    a.watch(calls)

    calls.expect_after(a.suspend)
    assert a.session_state is SessionState.SUSPENDED
    assert a.confirm_session() is None
    with pytest.raises(StoreError, match="suspended"):
        a.read()
    with pytest.raises(StoreError):
        a.holds_leader()
    state = b.read()  # the session lives on the server: its lease and member too
    assert state.leader is not None
    assert state.leader.session_id == session
    assert "node1" in state.members

    calls.expect_after(a.resume)
    assert a.session_state is SessionState.CONNECTED
    assert a.session_id == session
    assert a.holds_leader()
    assert a.confirm_session() is not None


def test_expiry_while_suspended_is_noticed_on_resume(harness: MemoryHarness) -> None:
    a, b = harness.store(), harness.store()
    assert a.acquire_leader("node1")
    old = a.session_id
    states: list[SessionState] = []
    a.watch(lambda: states.append(a.session_state))

    a.suspend()
    a.expire_session()
    assert b.read().leader is None  # the server ended the session at once
    assert a.session_state is SessionState.SUSPENDED  # the client cannot know yet
    assert b.acquire_leader("node2")

    a.resume()
    assert states == [SessionState.SUSPENDED, SessionState.LOST, SessionState.CONNECTED]
    assert a.session_id not in (None, old)
    assert not a.holds_leader()


def test_expiry_without_reconnect_stays_lost_until_resumed(harness: MemoryHarness) -> None:
    store = harness.store()
    old = store.session_id
    store.expire_session(reconnect=False)
    assert store.session_state is SessionState.LOST
    assert store.session_id is None
    assert store.confirm_session() is None
    with pytest.raises(StoreError, match="lost"):
        store.read()
    store.resume()
    assert store.session_state is SessionState.CONNECTED
    assert store.session_id not in (None, old)


def test_watchers_of_a_suspended_client_hear_nothing_until_resume(
    harness: MemoryHarness,
) -> None:
    a, b = harness.store(), harness.store()
    calls = Calls()
    a.watch(calls)
    a.suspend()
    seen = calls.count
    b.acquire_leader("node2")
    assert calls.count == seen
    calls.expect_after(a.resume)


def test_clusters_on_one_server_are_independent(harness: MemoryHarness) -> None:
    main, other = harness.store("main"), harness.store("other")
    assert main.acquire_leader("node1")
    assert other.acquire_leader("node1")
    other.publish_member(member("node1"))
    assert main.read().members == {}


def test_callbacks_may_call_back_into_the_store(harness: MemoryHarness) -> None:
    a, b = harness.store(), harness.store()
    seen: list[object] = []
    b.watch(lambda: seen.append(b.read().leader))
    a.acquire_leader("node1")
    assert seen
    assert seen[-1] is not None


def test_many_threads_share_one_server_safely(harness: MemoryHarness) -> None:
    stores = [harness.store() for _ in range(8)]

    def churn(index: int) -> None:
        store = stores[index]
        for n in range(200):
            store.publish_member(member(f"node{index}", index, timeline=n))
            if store.acquire_leader(f"node{index}"):
                store.release_leader(f"node{index}")
            store.add_event("tick", {"n": n})

    threads = [threading.Thread(target=churn, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    state = stores[0].read()
    assert {name: m.timeline for name, m in state.members.items()} == {
        f"node{i}": 199 for i in range(8)
    }
    assert state.leader is None
    assert len(stores[0].events()) == 200


def test_operations_before_start_raise_store_error() -> None:
    store = MemoryStore(MemoryServer(), "main")
    assert store.session_id is None
    assert store.confirm_session() is None
    with pytest.raises(StoreError):
        store.read()


def test_bad_cluster_name_is_refused() -> None:
    with pytest.raises(StoreError, match="cluster name"):
        MemoryStore(MemoryServer(), "a/b")
