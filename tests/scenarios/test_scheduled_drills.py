"""The agent's restore drills: started through the primary's API, run on the replica the
schedule's plan chooses, reported in storage, in /status and as events; a failing drill
runs the notification command with the event as JSON on stdin."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pgwarden.lab.ha import HaCluster
from pgwarden.peers import request_json

CLI_TIMEOUT = 120.0


def pgwarden(cluster: HaCluster, *args: str) -> subprocess.CompletedProcess[str]:
    config = cluster.lab.agent_config_path(cluster.names()[0])
    return subprocess.run(
        [sys.executable, "-m", "pgwarden", *args, "-c", str(config)],
        capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False,
    )  # fmt: skip


def wait_event(cluster: HaCluster, kind: str, timeout: float, after: int = 0) -> dict[str, Any]:
    """The data of the first `kind` event beyond the first `after` ones."""
    deadline = time.monotonic() + timeout
    seen: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        done = pgwarden(cluster, "events", "-o", "json")
        assert done.returncode == 0, done.stderr
        seen = [e for e in json.loads(done.stdout) if e["kind"] == kind]
        if len(seen) > after:
            return seen[after]["data"]  # type: ignore[no-any-return]
        time.sleep(1.0)
    raise AssertionError(f"no new {kind} event within {timeout} s: {seen}")


def post(cluster: HaCluster, member: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    token = cluster.lab.api_token_file.read_text().strip()
    return request_json(
        cluster.lab.agent_url(member) + path, body=body, token=token, method="POST", timeout=15.0
    )


def drill_status(cluster: HaCluster, member: str) -> dict[str, Any]:
    status, body = request_json(cluster.lab.agent_url(member) + "/status", timeout=5.0)
    assert status == 200, body
    return body["drill"]  # type: ignore[no-any-return]


@pytest.fixture
def outside() -> Iterator[Path]:
    """A directory the PostgreSQL user can traverse: drill scratch space and the file the
    notification command writes."""
    base = Path(tempfile.mkdtemp(prefix="pgwarden-drill-scenario-"))
    base.chmod(0o755)
    (base / "scratch").mkdir(mode=0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def test_drills_run_on_the_replica_report_and_notify_on_failure(
    make_ha_cluster: Callable[..., HaCluster], outside: Path
) -> None:
    notified = outside / "notified.jsonl"
    record = f"import sys; open({str(notified)!r}, 'a').write(sys.stdin.read())"
    overrides = {
        "drill": {
            # Scheduled far away: the test starts the cluster's drill through the API,
            # which plans the member exactly as the schedule does.
            "schedule": "0 3 1 1 *",
            "scratch_dir": str(outside / "scratch"),
            "max_duration": 300,
            "checks": [{"name": "no-marker", "sql": "SELECT count(*) FROM marker", "max": 0}],
        },
        "events": {"notify_command": [sys.executable, "-c", record]},
    }
    cluster = make_ha_cluster(
        nodes=2, synchronous_mode="off", agent_overrides=overrides, agent_storage="s3"
    )
    primary = cluster.wait_converged()
    (replica,) = cluster.replicas()
    with cluster.lab.connect(primary, autocommit=True) as conn:
        conn.execute("CREATE TABLE marker (id int)")
    assert post(cluster, primary, "/backup", {"type": "full"})[0] == 202
    backup = wait_event(cluster, "backup", 60)

    # Asked on the primary, the drill runs on the replica.
    status, body = post(cluster, primary, "/drill", {})
    assert status == 202, body
    assert body["member"] == replica
    assert body["reason"] == f"{replica} is the running, streaming replica with the lowest name"
    passed = wait_event(cluster, "drill", 90)
    assert passed["member"] == replica and passed["backup"] == backup["id"]
    assert passed["rto_s"] > 0

    listed = json.loads(pgwarden(cluster, "drill", "list", "-o", "json").stdout)
    assert [(r["id"], r["ok"]) for r in listed] == [(passed["id"], True)]
    shown = drill_status(cluster, replica)
    assert shown["running"] is False
    last = shown["last"]
    assert (last["ok"], last["id"], last["rto_s"]) == (True, passed["id"], passed["rto_s"])
    assert last["failed_checks"] == [] and last["error"] is None
    assert 0 <= last["age_s"] < 60 and last["finished_at"]
    assert drill_status(cluster, primary)["last"] is None  # the primary ran nothing
    assert list((outside / "scratch").iterdir()) == []  # the scratch instance is gone

    # A row the check forbids reaches the archive: the next drill fails naming the check.
    with cluster.lab.connect(primary, autocommit=True) as conn:
        conn.execute("INSERT INTO marker VALUES (1)")
        (segment,) = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone() or ("",)
        deadline = time.monotonic() + 30
        archived = "SELECT last_archived_wal FROM pg_stat_archiver"
        while (conn.execute(archived).fetchone() or (None,))[0] != segment:
            assert time.monotonic() < deadline, f"{segment} was not archived"
            time.sleep(0.2)
    status, body = post(cluster, replica, "/drill", {})
    assert status == 202, body
    assert post(cluster, replica, "/drill", {"here": True}) == (
        409,
        {"error": f"a drill is already running on {replica}"},
    )
    failed = wait_event(cluster, "drill_failed", 90)
    detail = "'SELECT count(*) FROM marker' returned 1, above the maximum 0"
    assert failed["member"] == replica
    assert failed["reason"] == f"failed checks: no-marker: {detail}"
    assert failed["failed_checks"] == [{"name": "no-marker", "detail": detail}]
    last = drill_status(cluster, replica)["last"]
    assert last["ok"] is False and last["id"] == failed["id"] != passed["id"]
    assert last["failed_checks"] == [{"name": "no-marker", "detail": detail}]
    listing = pgwarden(cluster, "drill", "list").stdout.splitlines()
    assert listing[0].split() == ["ID", "BACKUP", "RESULT", "AGE", "RTO", "RPO", "CHECKS"]
    assert [line.split()[2] for line in listing[1:3]] == ["passed", "FAILED"]
    assert listing[3] == f"the latest drill FAILED: failed checks: no-marker: {detail}"

    # The notification command got the failure (and not the passed drill) on stdin.
    deadline = time.monotonic() + 30
    while not notified.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    sent = [json.loads(line) for line in notified.read_text().splitlines()]
    (event,) = [e for e in sent if e["kind"].startswith("drill")]
    assert event["kind"] == "drill_failed"
    assert (event["cluster"], event["member"]) == ("lab", replica)
    assert event["data"] == failed
    assert event["time"].endswith("+00:00")
