"""pgwarden.postgres against real PostgreSQL 15: bootstrap, clone, promote, rewind, stop, kill."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest

from pgwarden.lab import scratch_directory
from pgwarden.lab.net import free_port, member_address
from pgwarden.postgres import (
    Endpoint,
    Instance,
    InstanceSpec,
    PgError,
    RewindError,
    sql,
    sync_standby_names,
)
from pgwarden.postgres.conf import passfile_path

pytestmark = pytest.mark.integration

BIN = Path(os.environ.get("PGWARDEN_PG_BIN", "/usr/lib/postgresql/15/bin"))
OS_USER = "postgres" if os.geteuid() == 0 else None
SUPERUSER_PASSWORD = "su-" + secrets.token_hex(8) + "'\\:x"  # quoting and passfile escapes
REPLICATION_PASSWORD = "repl-" + secrets.token_hex(8)
LOG_LINE_PREFIX = "%m [%p] it's \\ "  # PostgreSQL must read our quoting back exactly
T = TypeVar("T")

if not (BIN / "postgres").exists():
    pytest.skip(f"PostgreSQL server programs not found in {BIN}", allow_module_level=True)


class Cluster:
    """Members made in one scratch directory; everything started is killed at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.instances: list[Instance] = []
        self.timings: dict[str, float] = {}

    def spec(self, index: int, **overrides: Any) -> InstanceSpec:
        host = member_address(index)
        values: dict[str, Any] = {
            "name": f"node{index}",
            "bin_dir": BIN,
            "data_dir": self.root / f"node{index}",
            "host": host,
            "port": free_port(host),
            "os_user": OS_USER,
            "superuser": "postgres",
            "superuser_password": SUPERUSER_PASSWORD,
            "replication_user": "replicator",
            "replication_password": REPLICATION_PASSWORD,
            "parameters": {
                "shared_buffers": "16MB",
                "max_connections": "30",
                "log_line_prefix": LOG_LINE_PREFIX,
            },
        }
        return InstanceSpec(**(values | overrides))

    def instance(self, spec: InstanceSpec) -> Instance:
        inst = Instance(spec, self.root / f"{spec.name}.log")
        self.instances.append(inst)
        return inst

    def timed(self, label: str, action: Callable[[], T]) -> T:
        started = time.monotonic()
        result = action()
        self.timings[label] = round(time.monotonic() - started, 3)
        return result


def _cleanup(cluster: Cluster) -> None:
    for inst in cluster.instances:
        with contextlib.suppress(Exception):
            inst.kill()
    print("timings (s):", cluster.timings)  # shown with -s; figures for the report
    shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    root = scratch_directory("pgtest")
    root.mkdir(mode=0o755)
    made = Cluster(root)
    try:
        yield made
    finally:
        _cleanup(made)


@pytest.fixture(scope="module")
def single() -> Iterator[tuple[Cluster, InstanceSpec]]:
    """One initialized (stopped) instance shared by the lifecycle tests."""
    root = scratch_directory("pgtest")
    root.mkdir(mode=0o755)
    made = Cluster(root)
    try:
        spec = made.spec(5)
        inst = made.instance(spec)
        made.timed("initdb", inst.initdb)
        inst.configure(leader=None)
        yield made, spec
    finally:
        _cleanup(made)


def execute(spec: InstanceSpec, query: str) -> list[tuple[Any, ...]]:
    with sql.connect(spec) as conn:
        cur = conn.execute(query)
        return cur.fetchall() if cur.description else []


def wait_for(check: Callable[[], T | None], timeout: float = 15.0, what: str = "") -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


def start(cluster: Cluster, inst: Instance, label: str = "") -> None:
    def run() -> None:
        inst.start()
        inst.wait_ready(30)

    if label:
        cluster.timed(label, run)
    else:
        run()


def test_bootstrap_clone_sync_promote_rewind(cluster: Cluster) -> None:
    old = cluster.instance(cluster.spec(1))
    new = cluster.instance(cluster.spec(2))

    # A primary: initdb, configure, start.
    cluster.timed("initdb", old.initdb)
    old.configure(leader=None)
    start(cluster, old, "start")
    observed = sql.observe(old.spec)
    assert observed is not None
    assert (observed.in_recovery, observed.timeline, observed.streaming_from) == (False, 1, None)
    assert observed.current_lsn is not None
    identifier = old.system_identifier()
    assert identifier is not None and identifier.isdigit()
    assert old.controldata()["Data page checksum version"] == "1"
    assert (passfile_path(old.spec).stat().st_mode & 0o777) == 0o600
    assert execute(old.spec, "SHOW log_line_prefix") == [(LOG_LINE_PREFIX,)]
    execute(old.spec, "CREATE TABLE t (id int PRIMARY KEY, note text)")
    execute(old.spec, "INSERT INTO t VALUES (1, 'before clone')")

    # A replica cloned from it streams through the slot the primary made for it.
    sql.ensure_slots(old.spec, ["node1", "node2"])
    assert sql.slots(old.spec) == {"node2": False}
    cluster.timed("clone", lambda: new.clone(old.spec.endpoint))
    assert new.system_identifier() == identifier
    new.configure(leader=old.spec.endpoint)
    assert (new.spec.data_dir / "standby.signal").exists()
    start(cluster, new, "start_replica")
    primary_at = f"{old.spec.host}:{old.spec.port}"
    before = wait_for(lambda: _streaming(new.spec, primary_at), what="replica streams")
    execute(old.spec, "INSERT INTO t VALUES (2, 'streamed')")
    written = sql.observe(old.spec)
    assert written is not None and written.current_lsn is not None
    after = wait_for(
        lambda: _received_at_least(new.spec, written.current_lsn or 0), what="WAL received"
    )
    assert before.received_lsn is not None and after > before.received_lsn
    assert sql.slots(old.spec) == {"node2": True}

    # Synchronous replication: the primary names the replica and reloads. An ALTER SYSTEM
    # value for a managed setting would win over postgresql.conf: configure removes it.
    execute(old.spec, "ALTER SYSTEM SET synchronous_standby_names = 'nobody'")
    old.configure(leader=None, synchronous_standby_names=sync_standby_names(["node2"]))
    sql.reload(old.spec)
    wait_for(
        lambda: [r for r in sql.replicas(old.spec) if (r.name, r.sync_state) == ("node2", "sync")],
        what="sync_state sync",
    )
    execute(old.spec, "INSERT INTO t VALUES (3, 'synchronous')")
    old.configure(leader=None)  # back to asynchronous: the old primary must diverge alone
    sql.reload(old.spec)
    wait_for(
        lambda: [r for r in sql.replicas(old.spec) if r.sync_state == "async"],
        what="sync_state async",
    )

    # Promote the replica; the old primary takes a write the new one never sees.
    cluster.timed("promote", new.promote)
    promoted = sql.observe(new.spec)
    assert promoted is not None
    assert (promoted.in_recovery, promoted.timeline) == (False, 2)
    execute(old.spec, "INSERT INTO t VALUES (4, 'diverged')")
    with pytest.raises(RewindError, match="runs with PID"):
        old.rewind(new.spec.endpoint)
    old.stop("fast")
    assert old.postmaster_pid() is None

    # Rewind the old primary from the new one and make it a standby on timeline 2.
    sql.checkpoint(new.spec.endpoint, old.spec)
    cluster.timed("rewind", lambda: old.rewind(new.spec.endpoint))
    old.configure(leader=new.spec.endpoint)
    sql.ensure_slots(new.spec, ["node1", "node2"])
    start(cluster, old, "start_rewound")
    rejoined = wait_for(
        lambda: _streaming(old.spec, f"{new.spec.host}:{new.spec.port}"), what="rewound streams"
    )
    assert (rejoined.in_recovery, rejoined.timeline) == (True, 2)
    execute(new.spec, "INSERT INTO t VALUES (5, 'after failover')")
    wait_for(lambda: execute(old.spec, "SELECT 1 FROM t WHERE id = 5"), what="row 5 replicated")
    assert [r[0] for r in execute(old.spec, "SELECT id FROM t ORDER BY id")] == [1, 2, 3, 5]
    assert [(r.name, r.state) for r in sql.replicas(new.spec)] == [("node1", "streaming")]
    assert old.system_identifier() == identifier


def _streaming(spec: InstanceSpec, sender: str) -> sql.Observation | None:
    observed = sql.observe(spec)
    if observed is None or observed.streaming_from != sender or observed.received_lsn is None:
        return None
    return observed


def _received_at_least(spec: InstanceSpec, lsn: int) -> int | None:
    observed = sql.observe(spec)
    if observed is None or observed.received_lsn is None or observed.received_lsn < lsn:
        return None
    return observed.received_lsn


def test_stop_modes_and_escalation(single: tuple[Cluster, InstanceSpec]) -> None:
    cluster, spec = single
    inst = cluster.instance(spec)
    inst.stop()  # not running: no-op
    for mode in ("smart", "immediate", "fast"):
        start(cluster, inst, f"start_after_{mode}" if mode == "fast" else "")
        pid = inst.postmaster_pid()
        assert pid is not None
        cluster.timed(f"stop_{mode}", lambda mode=mode: inst.stop(mode))  # type: ignore[misc]
        assert inst.postmaster_pid() is None
        assert not Path(f"/proc/{pid}").exists()  # our child: reaped, not left a zombie

    # A postmaster started by another Instance object is found through postmaster.pid.
    start(cluster, inst)
    other = Instance(spec, cluster.root / "other.log")
    assert other.postmaster_pid() == inst.postmaster_pid()
    # Smart shutdown waits for clients; after the timeout it escalates to immediate.
    with sql.connect(spec) as conn:
        started = time.monotonic()
        other.stop("smart", timeout=1.0)
        assert 1.0 <= time.monotonic() - started < 5.0
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    assert inst.postmaster_pid() is None and other.postmaster_pid() is None


def _stat_fields(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def children(pid: int) -> list[int]:
    pids = [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit()]
    return [p for p in pids if (f := _stat_fields(p)) and int(f[1]) == pid]


def alive(pid: int) -> bool:
    """Running, that is: neither gone nor a zombie."""
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] not in ("Z", "X")


def signal_all(postmaster: int, sig: int) -> None:
    """Signal the postmaster and its children (each backend leads its own session)."""
    for child in children(postmaster):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, sig)
    os.kill(postmaster, sig)


def test_kill_stops_writes_within_a_second(single: tuple[Cluster, InstanceSpec]) -> None:
    cluster, spec = single
    inst = cluster.instance(spec)
    start(cluster, inst)
    execute(spec, "CREATE TABLE IF NOT EXISTS w (at float8)")
    last_commit = [0.0]
    stop = threading.Event()

    def writer() -> None:
        with contextlib.suppress(psycopg.Error), sql.connect(spec) as conn:
            while not stop.is_set():
                conn.execute("INSERT INTO w VALUES (extract(epoch FROM now()))")
                last_commit[0] = time.monotonic()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        wait_for(lambda: last_commit[0], what="writer commits")
        pid = inst.postmaster_pid() or 0
        processes = [pid, *children(pid)]
        # Frozen or not, every process goes: fencing must not wait on PostgreSQL.
        signal_all(pid, signal.SIGSTOP)
        killed_at = time.monotonic()
        inst.kill()
        returned_at = time.monotonic()
        time.sleep(0.3)
        assert not thread.is_alive()  # its connection broke
    finally:
        stop.set()
        thread.join(10)
    cluster.timings["kill"] = round(returned_at - killed_at, 3)
    assert returned_at - killed_at < 1.0
    assert last_commit[0] < returned_at  # nothing commits once kill() has returned
    assert inst.postmaster_pid() is None
    assert [p for p in processes if alive(p)] == []
    assert sql.observe(spec, timeout=1.0) is None
    start(cluster, inst)  # crash recovery after the kill
    inst.stop()


def test_wait_ready_fails_fast_with_the_log_tail(single: tuple[Cluster, InstanceSpec]) -> None:
    cluster, spec = single
    broken_spec = cluster.spec(5, port=spec.port, parameters={"shared_buffers": "64TB"})
    broken = cluster.instance(broken_spec)
    with pytest.raises(PgError, match="node5 is not running") as not_started:
        broken.wait_ready(5)
    broken.configure(leader=None)
    broken.start()
    started = time.monotonic()
    with pytest.raises(PgError) as failed:
        broken.wait_ready(30)
    assert time.monotonic() - started < 3.0
    message = str(failed.value)
    assert "exited with code" in message and "shared_buffers" in message
    for error in (message, str(not_started.value)):
        assert SUPERUSER_PASSWORD not in error and REPLICATION_PASSWORD not in error
    # Restored parameters: it starts again.
    inst = cluster.instance(spec)
    inst.configure(leader=None)
    start(cluster, inst)
    inst.stop()


def test_timeouts_hold_against_a_frozen_server(single: tuple[Cluster, InstanceSpec]) -> None:
    cluster, spec = single
    inst = cluster.instance(spec)
    start(cluster, inst)
    pid = inst.postmaster_pid()
    assert pid is not None
    with sql.connect(spec) as conn:
        signal_all(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with (
                pytest.raises(sql.SqlError, match="did not answer within 1 s"),
                sql.deadline(conn, 1.0, "probing node5"),
            ):
                conn.execute("SELECT 1")
            assert time.monotonic() - started < 2.0
            started = time.monotonic()
            assert sql.observe(spec, timeout=1.0) is None
            assert time.monotonic() - started < 3.5  # libpq connects take at least 2 s
        finally:
            signal_all(pid, signal.SIGCONT)
    inst.stop()


def test_a_session_keeps_its_connection_and_replaces_one_postgresql_ended(
    single: tuple[Cluster, InstanceSpec],
) -> None:
    cluster, spec = single
    inst = cluster.instance(spec)
    start(cluster, inst)
    session = sql.Session()

    def backend() -> int:
        with session.connection(spec.endpoint, spec, 2.0, "asking node5") as conn:
            row = conn.execute("SELECT pg_backend_pid()").fetchone()
            assert row is not None
            return int(row[0])

    try:
        first = backend()
        assert sql.observe(spec, session=session) is not None
        assert sql.replicas(spec, session=session) == []
        assert backend() == first  # one connection for all of them
        execute(spec, f"SELECT pg_terminate_backend({first}, 5000)")
        assert sql.observe(spec, session=session) is not None  # replaced before use
        second = backend()
        assert second != first
        inst.stop()
        start(cluster, inst)
        assert sql.observe(spec, session=session) is not None  # after a restart too
        third = backend()
        assert third != second
        pid = inst.postmaster_pid()
        assert pid is not None
        signal_all(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            assert sql.observe(spec, timeout=1.0, session=session) is None
            assert time.monotonic() - started < 2.0  # the deadline held on the kept one
        finally:
            signal_all(pid, signal.SIGCONT)
        assert backend() != third  # the connection the deadline cut was dropped
    finally:
        session.close()
    inst.stop()


def test_failed_clone_leaves_no_cluster_behind(single: tuple[Cluster, InstanceSpec]) -> None:
    cluster, _ = single
    spec = cluster.spec(6)
    replica = cluster.instance(spec)
    nobody = Endpoint("node9", member_address(9), free_port(member_address(9)))
    with pytest.raises(PgError, match="pg_basebackup from node9 for node6 failed") as failed:
        replica.clone(nobody)
    assert REPLICATION_PASSWORD not in str(failed.value)
    assert not replica.is_initialized() and replica.system_identifier() is None
    assert list(spec.data_dir.iterdir()) == []
    with pytest.raises(PgError, match="holds no complete database cluster"):
        replica.start()
