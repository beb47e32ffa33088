"""Each real service of the lab answers, and each fault of the toolkit takes effect."""

from __future__ import annotations

import signal
import socket
import threading
import time
import uuid

import psycopg
import pytest
from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import NoNodeError

from pgwarden.lab import Lab, faults, s3
from pgwarden.lab.faults import lab_rules
from pgwarden.lab.net import free_port, member_address
from pgwarden.lab.procs import is_running

pytestmark = pytest.mark.integration


def kazoo(lab: Lab) -> KazooClient:
    client = KazooClient(hosts=lab.zookeeper_hosts, timeout=4)
    client.start(timeout=10)
    return client


def test_znode_written_and_read_through_kazoo(services: Lab) -> None:
    path = f"/test/{uuid.uuid4().hex}"
    client = kazoo(services)
    try:
        client.create(path, b"hello", makepath=True)
        value, stat = client.get(path)
    finally:
        client.stop()
        client.close()
    assert value == b"hello"
    assert stat.version == 0


def test_object_put_and_read_through_boto3(services: Lab) -> None:
    endpoint = services.s3
    assert endpoint is not None
    client = s3.client(endpoint)
    key = f"test/{uuid.uuid4().hex}"
    body = bytes(range(256)) * 4096
    client.put_object(Bucket=endpoint.bucket, Key=key, Body=body)
    assert client.get_object(Bucket=endpoint.bucket, Key=key)["Body"].read() == body
    listed = client.list_objects_v2(Bucket=endpoint.bucket, Prefix="test/")
    assert key in [o["Key"] for o in listed["Contents"]]


def test_row_written_on_primary_is_read_on_every_replica(make_cluster) -> None:
    lab = make_cluster(nodes=3)
    primary, *replicas = lab.members
    with lab.connect(primary.name, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO t VALUES (1, 'replicated')")
        lsn = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
    for replica in replicas:
        with lab.connect(replica.name, autocommit=True) as conn:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                caught_up = conn.execute(
                    "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)
                ).fetchone()[0]
                if caught_up:
                    break
                time.sleep(0.02)
            assert conn.execute("SELECT note FROM t WHERE id = 1").fetchone() == ("replicated",)
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                conn.execute("INSERT INTO t VALUES (2, 'must fail')")
    statuses = {s["member"]: s["role"] for s in lab.status()["services"] if "member" in s}
    assert statuses == {"node1": "primary", "node2": "replica", "node3": "replica"}


def test_archiving_is_configured(make_cluster) -> None:
    lab = make_cluster(nodes=1)
    with lab.connect("node1", autocommit=True) as conn:
        segment = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
        conn.execute("SELECT pg_switch_wal()")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (lab.archive_dir / segment).exists():
            time.sleep(0.05)
    assert (lab.archive_dir / segment).exists()


def test_sigkill_stops_a_member_and_sigstop_freezes_it(make_cluster) -> None:
    lab = make_cluster(nodes=2)
    replica = lab.process("postgres-node2")
    faults.freeze(replica)
    try:
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(lab.member("node2").conninfo(lab.credentials), connect_timeout=1)
    finally:
        faults.thaw(replica)
    with lab.connect("node2") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)

    primary = lab.process("postgres-node1")
    faults.kill(primary)
    deadline = time.monotonic() + 5
    while is_running(primary) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not is_running(primary)
    roles = {s["member"]: s["running"] for s in lab.status()["services"] if "member" in s}
    assert roles == {"node1": False, "node2": True}


def _serve_once(host: str, port: int, ready: threading.Event) -> None:
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((host, port))
        server.listen()
        server.settimeout(15)
        ready.set()
        for _ in range(2):
            try:
                conn, _ = server.accept()
            except TimeoutError:
                return
            conn.close()


def _connects(src: str, host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1, source_address=(src, 0)):
            return True
    except OSError:
        return False


def test_network_cut_drops_traffic_between_two_addresses_until_healed(services, network) -> None:
    a, b = member_address(1), member_address(2)
    port = free_port(b)
    ready = threading.Event()
    server = threading.Thread(target=_serve_once, args=(b, port, ready), daemon=True)
    server.start()
    ready.wait(5)
    handle = network(a, b)
    assert len(lab_rules(services.lab_id)) == 2
    assert not _connects(a, b, port), "a cut address still reached the other"
    assert _connects(member_address(3), b, port), "a third address was cut too"
    services.heal(handle)
    assert lab_rules(services.lab_id) == []
    assert _connects(a, b, port)
    server.join(5)


def test_expired_zookeeper_session_loses_its_ephemeral_nodes(services: Lab) -> None:
    path = f"/test/ephemeral-{uuid.uuid4().hex}"
    owner, observer = kazoo(services), kazoo(services)
    states: list[str] = []
    owner.add_listener(states.append)
    try:
        owner.create(path, b"lease", ephemeral=True, makepath=True)
        assert observer.exists(path) is not None
        faults.expire_session(owner)
        deadline = time.monotonic() + 5
        while observer.exists(path) is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(NoNodeError):
            observer.get(path)
        deadline = time.monotonic() + 5
        while KazooState.LOST not in states and time.monotonic() < deadline:
            time.sleep(0.01)
        assert KazooState.LOST in states
    finally:
        for client in (owner, observer):
            client.stop()
            client.close()


def test_sigkill_of_postgres_is_reported_in_lab_status(make_cluster) -> None:
    lab = make_cluster(nodes=1)
    record = lab.process("postgres-node1")
    faults.signal_process(record, signal.SIGKILL, group=False)
    deadline = time.monotonic() + 5
    while is_running(record) and time.monotonic() < deadline:
        time.sleep(0.02)
    service = next(s for s in lab.status()["services"] if s.get("member") == "node1")
    assert service["running"] is False
    assert service["role"] == "down"
