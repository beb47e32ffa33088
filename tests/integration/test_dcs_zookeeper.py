"""The ZooKeeper store against a real ZooKeeper: the shared contract, sessions, faults."""

from __future__ import annotations

import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from kazoo.client import KazooClient

from dcs_contract import Calls, StoreContract, wait_until
from pgwarden.dcs.base import ConsensusStore, SessionState, StoreError
from pgwarden.dcs.zookeeper import ZooKeeperStore
from pgwarden.lab import Lab, LabSpec, faults, scratch_directory
from pgwarden.lab.faults import Cut
from pgwarden.lab.net import free_port

pytestmark = pytest.mark.integration


class ZooKeeperHarness:
    """Stores on one ZooKeeper, in a cluster of their own, removed afterwards."""

    def __init__(self, hosts: str) -> None:
        self.hosts = hosts
        self.cluster = f"test-{uuid.uuid4().hex[:12]}"
        self.stores: list[ZooKeeperStore] = []

    def store(self, **options: object) -> ZooKeeperStore:
        store = ZooKeeperStore(self.hosts, self.cluster, **options)  # type: ignore[arg-type]
        self.stores.append(store)
        store.start(timeout=10)
        return store

    def expire(self, store: ConsensusStore) -> None:
        assert isinstance(store, ZooKeeperStore)
        faults.expire_session(store._client)

    def kazoo(self) -> KazooClient:
        client = KazooClient(hosts=self.hosts, timeout=4)
        client.start(timeout=10)
        return client

    def corrupt(self, key: str, raw: bytes) -> None:
        path = f"/pgwarden/{self.cluster}/{key}"
        client = self.kazoo()
        try:
            if client.exists(path):
                client.set(path, raw)
            else:
                client.create(path, raw, makepath=True)
        finally:
            client.stop()
            client.close()

    def close(self) -> None:
        for store in self.stores:
            store.stop()
        client = self.kazoo()
        try:
            client.delete(f"/pgwarden/{self.cluster}", recursive=True)
        finally:
            client.stop()
            client.close()


@pytest.fixture
def harness(services: Lab) -> Iterator[ZooKeeperHarness]:
    h = ZooKeeperHarness(services.zookeeper_hosts)
    yield h
    h.close()


class TestZooKeeperStoreContract(StoreContract):
    pass


def four_letter_word(hosts: str, word: bytes) -> str:
    host, port = hosts.split(",", maxsplit=1)[0].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=2) as sock:
        sock.sendall(word)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def server_connection(hosts: str, session_id: int | None) -> str:
    """The server's `cons` line for a session: `/addr:port[1](...,sid=0x..,...,to=...)`."""
    assert session_id is not None
    lines = [
        line
        for line in four_letter_word(hosts, b"cons").splitlines()
        if f"sid={session_id:#x}," in line
    ]
    assert len(lines) == 1, lines
    return lines[0]


# --------------------------------------------------------------------- connections
def test_connections_leave_from_the_source_address(harness: ZooKeeperHarness) -> None:
    store = harness.store(source_address="127.0.0.31")
    local = store._client._connection._socket.getsockname()
    assert local[0] == "127.0.0.31"
    assert (
        server_connection(harness.hosts, store.session_id)
        .strip()
        .startswith(f"/127.0.0.31:{local[1]}[")
    )


@pytest.mark.parametrize(("requested", "granted"), [(0.5, 1.0), (2.0, 2.0), (90.0, 60.0)])
def test_session_timeout_is_the_one_the_server_granted(
    harness: ZooKeeperHarness, requested: float, granted: float
) -> None:
    # The lab's ZooKeeper bounds session timeouts to [1 s, 60 s].
    store = harness.store(session_timeout=requested)
    assert store.session_timeout == granted
    line = server_connection(harness.hosts, store.session_id)
    assert re.search(rf"[(,]to={int(granted * 1000)}[,)]", line), line


def test_unreachable_zookeeper_fails_start_in_one_sentence() -> None:
    hosts = f"127.0.0.2:{free_port('127.0.0.2')}"
    store = ZooKeeperStore(hosts, "main", connect_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(StoreError, match=rf"could not connect to ZooKeeper at {hosts} within 1 s"):
        store.start(timeout=1.0)
    assert time.monotonic() - started < 3
    assert store.session_state is SessionState.LOST
    with pytest.raises(StoreError, match="not started"):
        store.read()


# --------------------------------------------------------------------- faults
def test_cut_off_member_is_suspended_then_reconnects(
    harness: ZooKeeperHarness, network: Callable[[str, str], Cut]
) -> None:
    address = "127.0.0.32"
    a = harness.store(source_address=address, session_timeout=2.0)
    b = harness.store()
    states: list[SessionState] = []
    a.watch(lambda: states.append(a.session_state))

    cut = network(address, harness.hosts.split(":")[0])
    wait_until(lambda: a.session_state is SessionState.SUSPENDED, timeout=5)
    started = time.monotonic()
    assert a.confirm_session() is None
    with pytest.raises(StoreError, match="not connected to ZooKeeper"):
        a.read()
    assert time.monotonic() - started < 1.0  # both fail fast, not after connect_timeout
    assert b.read() is not None  # the other member, not cut off, carries on

    faults.heal(cut)
    wait_until(lambda: a.session_state is SessionState.CONNECTED, timeout=10)
    assert SessionState.SUSPENDED in states
    assert a.confirm_session() is not None
    calls = Calls()
    a.watch(calls)
    calls.settle(0.1)
    calls.expect_after(lambda: b.acquire_leader("node2"))  # watches were re-armed


def test_frozen_zookeeper_suspends_the_session() -> None:
    directory = scratch_directory("zkfreeze")
    lab = Lab.create(directory, LabSpec(zookeeper_nodes=1, s3=False, postgres_nodes=0))
    store = ZooKeeperStore(lab.zookeeper_hosts, "main", session_timeout=2.0, connect_timeout=0.5)
    try:
        store.start(timeout=10)
        states: list[SessionState] = []
        store.watch(lambda: states.append(store.session_state))
        assert store.session_timeout == 2.0
        faults.freeze(lab.process("zookeeper1"))
        try:
            started = time.monotonic()
            with pytest.raises(StoreError, match=r"did not answer within 0.5 s|not connected"):
                store.read()
            assert time.monotonic() - started < 1.0
            started = time.monotonic()
            assert store.confirm_session() is None
            assert time.monotonic() - started < 2.0 / 3 + 0.3  # a third of the session
            wait_until(lambda: store.session_state is SessionState.SUSPENDED, timeout=5)
        finally:
            faults.thaw(lab.process("zookeeper1"))
        wait_until(lambda: store.session_state is SessionState.CONNECTED, timeout=10)
        assert SessionState.SUSPENDED in states
        assert store.confirm_session() is not None
        store.read()
    finally:
        store.stop()
        lab.down()
