"""The agent's backups: on its cron schedule from the chosen replica, on request through the
API, and new replicas restored from the latest backup plus archived WAL."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from pgwarden.lab.ha import HaCluster
from pgwarden.peers import request_json

CLI_TIMEOUT = 120.0


def pgwarden(cluster: HaCluster, *args: str) -> subprocess.CompletedProcess[str]:
    config = cluster.lab.agent_config_path(cluster.names()[0])
    return subprocess.run(
        [sys.executable, "-m", "pgwarden", *args, "-c", str(config)],
        capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False,
    )  # fmt: skip


def events(cluster: HaCluster, kind: str) -> list[dict[str, Any]]:
    done = pgwarden(cluster, "events", "-o", "json")
    assert done.returncode == 0, done.stderr
    return [e for e in json.loads(done.stdout) if e["kind"] == kind]


def wait_event(
    cluster: HaCluster, kind: str, match: Callable[[dict[str, Any]], bool], timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in events(cluster, kind) if match(e["data"])]
        if found:
            return found[-1]["data"]
        time.sleep(1.0)
    raise AssertionError(f"no {kind} event within {timeout} s: {events(cluster, kind)}")


def test_scheduled_backup_from_a_replica_then_a_replica_restored_from_it(
    make_ha_cluster: Callable[..., HaCluster],
) -> None:
    overrides = {
        "backup": {"schedule": "* * * * *", "member": "node2"},
        "postgres": {"create_replica_methods": ["backup", "basebackup"]},
    }
    cluster = make_ha_cluster(nodes=2, synchronous_mode="off", agent_overrides=overrides)
    primary = cluster.wait_converged()
    (replica,) = cluster.replicas()
    # No backup existed when the replica joined: it fell back to pg_basebackup.
    created = wait_event(cluster, "replica_created", lambda d: d["member"] == replica, 30)
    assert created["method"] == "basebackup"

    # Within a minute the schedule fires; node2 takes it, from its standby if a replica.
    backup = wait_event(cluster, "backup", lambda d: d["member"] == "node2", 75)
    assert backup["from_standby"] is (replica == "node2") and backup["kind"] == "full"
    listed = json.loads(pgwarden(cluster, "backup", "list", "-o", "json").stdout)
    assert [b["id"] for b in listed] == [backup["id"]]

    # Rebuilding the replica now restores that backup and replays the archive before streaming.
    with cluster.lab.connect(primary, autocommit=True) as conn:
        conn.execute("CREATE TABLE after_backup AS SELECT 1 AS one")
        conn.execute("SELECT pg_switch_wal()")
    assert pgwarden(cluster, "reinit", replica).returncode == 0
    rebuilt = wait_event(
        cluster, "replica_created", lambda d: d["member"] == replica and d["method"] == "backup", 60
    )
    assert rebuilt["backup"] == backup["id"]
    cluster.wait_converged()
    deadline = time.monotonic() + 30
    while True:
        try:
            with cluster.lab.connect(replica, autocommit=True) as conn:
                if conn.execute("SELECT count(*) FROM after_backup").fetchone() == (1,):
                    break
        except Exception:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.5)

    # An on-demand incremental through the primary's API, reported like scheduled ones.
    token = cluster.lab.api_token_file.read_text().strip()
    status, body = request_json(
        cluster.lab.agent_url(primary) + "/backup",
        body={"type": "incr"}, token=token, method="POST", timeout=5.0,
    )  # fmt: skip
    assert status == 202, body
    incr = wait_event(cluster, "backup", lambda d: d["kind"] == "incr", 60)
    assert incr["member"] == primary and incr["from_standby"] is False
