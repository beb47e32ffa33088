"""WAL archiving through the agents: no hole across a failover under load, and an archive
that survives a storage outage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pgwarden.lab.ha import HaCluster
from pgwarden.retry import poll_until

CLI_TIMEOUT = 120.0


def pgwarden(cluster: HaCluster, *args: str, member: str | None = None) -> Any:
    config = cluster.lab.agent_config_path(member or cluster.names()[0])
    done = subprocess.run(
        [sys.executable, "-m", "pgwarden", *args, "-c", str(config), "-o", "json"],
        capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False,
    )  # fmt: skip
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else None, done.stderr


def events(cluster: HaCluster, kind: str) -> list[dict[str, Any]]:
    _, found, _ = pgwarden(cluster, "events")
    return [e["data"] for e in found if e["kind"] == kind]


def sql(cluster: HaCluster, member: str, query: str) -> list[tuple[Any, ...]]:
    with cluster.lab.connect(member, autocommit=True) as conn:
        cursor = conn.execute(query)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []


def archived_up_to_now(cluster: HaCluster, member: str, timeout: float = 60.0) -> None:
    (segment,) = sql(cluster, member, "SELECT pg_walfile_name(pg_switch_wal())")[0]
    poll_until(
        lambda: (sql(cluster, member, "SELECT last_archived_wal FROM pg_stat_archiver")[0][0]
                 or "") >= segment,
        timeout,
    )  # fmt: skip


def leader_archive(cluster: HaCluster, *, failing: bool) -> dict[str, Any] | None:
    """The leader's archive status in `pgwarden list`, once it is (not) failing."""
    _, listed, _ = pgwarden(cluster, "list")
    (leader,) = [m for m in listed["members"] if m["role"] == "leader"]
    archive = leader["archive"]
    if archive is None or (archive["failing_since"] is not None) != failing:
        return None
    return archive  # type: ignore[no-any-return]


@contextmanager
def pgbench(cluster: HaCluster, member: str, seconds: int) -> Iterator[None]:
    """pgbench against `member` in the background (it stops at the failover)."""
    argv = [str(cluster.lab.bin_dir / "pgbench"), "-n", "-c", "2", "-T", str(seconds)]
    env = dict(os.environ) | {"PGPASSWORD": cluster.lab.credentials.superuser_password}
    dsn = cluster.lab.member(member).dsn()
    subprocess.run([argv[0], "-i", "-q", "-s", "1", dsn], env=env, check=True, capture_output=True)
    process = subprocess.Popen([*argv, dsn], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        yield
    finally:
        process.kill()
        process.wait()


def test_a_failover_under_load_leaves_no_gap_in_the_archive(
    make_ha_cluster: Callable[..., HaCluster],
) -> None:
    cluster = make_ha_cluster(nodes=3)
    old = cluster.wait_converged()
    with pgbench(cluster, old, 60):
        code, backup, err = pgwarden(cluster, "backup", "create", member=old)
        assert code == 0, err
        # The old primary's agent freezes: its archiver stops, and archive_command waits
        # on its socket. Segments completed now reach the replicas, not the archive.
        os.kill(cluster.agent_pid(old), signal.SIGSTOP)
        try:
            for _ in range(3):
                sql(cluster, old, "SELECT pg_switch_wal()")
            new = cluster.wait_primary(30, not_=old)
        finally:
            os.kill(cluster.agent_pid(old), signal.SIGCONT)
    cluster.wait_converged()
    archived_up_to_now(cluster, new)

    backfilled = poll_until(lambda: events(cluster, "archive_backfilled") or None, 30)
    assert backfilled[-1]["timeline"] == 2 and backfilled[-1]["segments"]
    code, report, err = pgwarden(cluster, "check")
    assert code == 0, (report, err)
    assert report["timelines"] == [1, 2] and report["gaps"] == []
    assert report["oldest_backup"] == backup["id"]


def test_an_archive_outage_keeps_wal_and_catches_up(
    make_ha_cluster: Callable[..., HaCluster],
) -> None:
    cluster = make_ha_cluster(nodes=2, agent_storage="s3")
    endpoint = cluster.lab.s3
    assert endpoint is not None
    primary = cluster.wait_converged()
    archived_up_to_now(cluster, primary)
    assert events(cluster, "archive_failing") == []

    cut = cluster.lab.cut("127.0.0.1", endpoint.host, refuse=True)
    cut_at = time.monotonic()
    try:
        sql(cluster, primary, "CREATE TABLE t (n int)")
        for n in range(3):
            sql(cluster, primary, f"INSERT INTO t VALUES ({n}); SELECT pg_switch_wal()")
        failing = poll_until(lambda: events(cluster, "archive_failing") or None, 30)
        assert failing[-1]["reason"]
        ready = list((cluster.lab.member(primary).data_dir / "pg_wal" / "archive_status").glob(
            "*.ready"))  # fmt: skip
        assert len(ready) >= 3  # still safely in pg_wal
        shown = poll_until(lambda: leader_archive(cluster, failing=True), 10)
        assert shown["pending_segments"] >= 3
        time.sleep(max(0.0, 30.0 - (time.monotonic() - cut_at)))  # storage down for 30 s
    finally:
        cluster.lab.heal(cut)
    archived_up_to_now(cluster, primary, timeout=90)
    assert poll_until(lambda: events(cluster, "archive_recovered") or None, 30)
    shown = poll_until(lambda: leader_archive(cluster, failing=False), 10)
    assert shown["pending_segments"] == 0 and shown["last_archived"]
    code, report, err = pgwarden(cluster, "check")
    assert code == 0 and report["gaps"] == [], (report, err)


def test_with_archive_mode_always_a_standby_archives_what_it_received(
    make_ha_cluster: Callable[..., HaCluster],
) -> None:
    cluster = make_ha_cluster(
        nodes=2, synchronous_mode="off", agent_overrides={"wal": {"archive_mode": "always"}}
    )
    primary = cluster.wait_converged()
    (replica,) = [name for name in cluster.names() if name != primary]
    assert sql(cluster, replica, "SHOW archive_mode") == [("always",)]
    # The primary's agent freezes, so its archive_command waits: only the replica's agent
    # can store this WAL.
    os.kill(cluster.agent_pid(primary), signal.SIGSTOP)
    try:
        sql(cluster, primary, "CREATE TABLE t AS SELECT generate_series(1, 1000) AS n")
        (segment,) = sql(cluster, primary, "SELECT pg_walfile_name(pg_switch_wal())")[0]
        poll_until(
            lambda: (sql(cluster, replica, "SELECT last_archived_wal FROM pg_stat_archiver")[0][0]
                     or "") >= segment,
            30,
        )  # fmt: skip
        primary_archived = sql(cluster, primary, "SELECT last_archived_wal FROM pg_stat_archiver")
        assert (primary_archived[0][0] or "") < segment
    finally:
        os.kill(cluster.agent_pid(primary), signal.SIGCONT)
    # The primary's own push of the same segments later finds them stored, identical.
    archived_up_to_now(cluster, primary)
    assert events(cluster, "archive_conflict") == []
