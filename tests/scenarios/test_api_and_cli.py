"""The agent's HTTP API and `pgwarden list` as load balancers and engineers use them, and a
graceful stop of the primary's agent."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from pgwarden.lab import Lab, LabSpec, agents, scratch_directory
from pgwarden.lab.ha import HaCluster
from pgwarden.lab.procs import is_running
from pgwarden.peers import request_json

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster() -> Iterator[HaCluster]:
    lab = Lab.create(
        scratch_directory("api"),
        LabSpec(zookeeper_nodes=1, s3=False, postgres_nodes=3, agents=True),
    )
    try:
        ha = HaCluster(lab)
        ha.wait_converged()
        yield ha
    finally:
        lab.down()


def get(cluster: HaCluster, member: str, path: str) -> tuple[int, object]:
    return agents.api_get(f"{cluster.lab.agent_url(member)}{path}")


def pgwarden(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pgwarden", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_health_endpoints_answer_like_patroni(cluster: HaCluster) -> None:
    primary = cluster.wait_converged()
    replicas = [n for n in cluster.names() if n != primary]
    expected = {
        "/primary": (200, 503),
        "/read-write": (200, 503),
        "/replica": (503, 200),
        "/replica?lag=16777216": (503, 200),
        "/replica?lag=nonsense": (503, 503),
        "/read-only": (200, 200),
        "/health": (200, 200),
        "/liveness": (200, 200),
        "/readiness": (200, 200),
    }
    for path, (on_primary, on_replica) in expected.items():
        assert get(cluster, primary, path)[0] == on_primary, path
        for replica in replicas:
            assert get(cluster, replica, path)[0] == on_replica, (path, replica)
    _, body = get(cluster, primary, "/primary")
    assert isinstance(body, dict)
    assert body["role"] == "primary" and body["holds_lease"] is True
    assert get(cluster, primary, "/nonexistent")[0] == 404


def test_cluster_history_and_status_endpoints(cluster: HaCluster) -> None:
    primary = cluster.wait_converged()
    replica = next(n for n in cluster.names() if n != primary)
    code, body = get(cluster, replica, "/cluster")
    assert code == 200 and isinstance(body, dict)
    assert body["leader"] == primary
    assert sorted(body["members"]) == sorted(cluster.names())
    code, history = get(cluster, replica, "/history")
    assert code == 200 and history == []
    code, status = get(cluster, replica, "/status")
    assert code == 200 and isinstance(status, dict)
    assert status["in_recovery"] is True
    assert status["wal_position"] is not None


def scrape(cluster: HaCluster, member: str) -> dict[tuple[str, str], float]:
    """GET /metrics of `member`, parsed: (sample name, role label or "") -> value."""
    url = f"{cluster.lab.agent_url(member)}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert sample.labels["cluster"] == "lab"
            assert sample.labels["member"] == member
            found[(sample.name, sample.labels.get("role", ""))] = sample.value
    return found


def test_metrics_say_who_is_primary_and_how_far_replicas_lag(cluster: HaCluster) -> None:
    primary = cluster.wait_converged()
    replica = next(n for n in cluster.names() if n != primary)
    on_primary = scrape(cluster, primary)
    assert on_primary[("pgwarden_role", "primary")] == 1
    assert on_primary[("pgwarden_role", "replica")] == 0
    assert on_primary[("pgwarden_leader", "")] == 1
    assert on_primary[("pgwarden_lease_seconds_left", "")] > 0
    assert on_primary[("pgwarden_postgres_up", "")] == 1
    assert on_primary[("pgwarden_timeline", "")] >= 1
    assert on_primary[("pgwarden_failovers_total", "")] == 0
    assert ("pgwarden_archive_pending_segments", "") in on_primary
    on_replica = scrape(cluster, replica)
    assert on_replica[("pgwarden_role", "replica")] == 1
    assert on_replica[("pgwarden_leader", "")] == 0
    assert on_replica[("pgwarden_replication_lag_bytes", "")] >= 0
    assert ("pgwarden_lease_seconds_left", "") not in on_replica
    assert on_replica[("pgwarden_drill_running", "")] == 0  # the drill scheduler's status
    # Backups and drills come from storage, read in the background after the first scrape.
    deadline = time.monotonic() + 5
    while ("pgwarden_backups", "") not in on_replica and time.monotonic() < deadline:
        time.sleep(0.1)
        on_replica = scrape(cluster, replica)
    assert on_replica[("pgwarden_backups", "")] == 0
    assert on_replica[("pgwarden_storage_read_ok", "")] == 1


def test_list_shows_every_member_with_its_role_and_decision(cluster: HaCluster) -> None:
    primary = cluster.wait_converged()
    config = str(cluster.lab.agent_config_path(primary))
    done = pgwarden("list", "-c", config, "-o", "json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["leader"] == primary
    roles = {m["member"]: m["role"] for m in data["members"]}
    assert roles == {n: ("leader" if n == primary else "replica") for n in cluster.names()}
    decisions = {m["member"]: m["decision"] for m in data["members"]}
    assert decisions[primary].startswith("I am the leader")
    text = pgwarden("list", "-c", config)
    assert text.returncode == 0
    assert f"cluster lab, leader {primary}" in text.stdout
    assert "LAST DECISION" in text.stdout


def test_list_with_zookeeper_unreachable_fails_in_one_sentence(tmp_path: Path, cluster) -> None:
    config = yaml.safe_load(cluster.lab.agent_config_path("node1").read_text())
    config["dcs"]["hosts"] = ["127.0.0.2:1"]
    path = tmp_path / "unreachable.yml"
    path.write_text(yaml.safe_dump(config))
    started = time.monotonic()
    done = pgwarden("list", "-c", str(path), timeout=30)
    assert done.returncode == 1
    assert time.monotonic() - started < 15
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), done.stderr
    assert "127.0.0.2:1" in lines[0]


def test_control_endpoints_require_the_bearer_token(cluster: HaCluster) -> None:
    primary = cluster.wait_converged()
    url = f"{cluster.lab.agent_url(primary)}/restart"
    token = cluster.lab.api_token_file.read_text().strip()
    assert request_json(url, body={})[0] == 401
    assert request_json(url, body={}, token="wrong")[0] == 401
    code, answer = request_json(url, body={"pending": True}, token=token)
    assert (code, answer) == (200, {"result": "no restart pending"})
    assert (
        request_json(f"{cluster.lab.agent_url(primary)}/nonexistent", body={}, token=token)[0]
        == 404
    )


def test_restart_reload_and_reinit_through_the_cli(cluster: HaCluster) -> None:
    primary = cluster.wait_converged()
    replica = next(n for n in cluster.names() if n != primary)
    config = str(cluster.lab.agent_config_path(primary))
    before = cluster.lab.postmaster_pid(replica)
    done = pgwarden("restart", replica, "-c", config)
    assert done.returncode == 0, done.stderr
    assert f"{replica}: restart scheduled" in done.stdout
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        after = cluster.lab.postmaster_pid(replica)
        if after not in (None, before) and replica in cluster.replicas():
            break
        time.sleep(0.1)
    assert cluster.lab.postmaster_pid(replica) not in (None, before)
    assert cluster.primary() == primary

    done = pgwarden("reload", "-c", config)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("configuration reloaded") == 3

    refused = pgwarden("reinit", primary, "-c", config)
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        f"error: {primary} is the primary; switch over first, then reinitialize it"
    )
    marker = cluster.lab.member(replica).data_dir / "reinit-marker"
    marker.write_text("gone after a re-clone")
    done = pgwarden("reinit", replica, "-c", config)
    assert done.returncode == 0, done.stderr
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (marker.exists() or replica not in cluster.replicas()):
        time.sleep(0.1)
    assert not marker.exists(), "the data directory was not re-cloned"
    assert cluster.wait_converged() == primary


def test_dynamic_parameters_reach_every_member(cluster: HaCluster) -> None:
    primary = cluster.wait_converged()
    config = str(cluster.lab.agent_config_path(primary))
    done = pgwarden("config", "set", "parameters.work_mem=12MB", "-c", config)
    assert done.returncode == 0, done.stderr
    deadline = time.monotonic() + 10
    seen: dict[str, str] = {}
    while time.monotonic() < deadline:
        for name in cluster.names():
            with cluster.lab.connect(name) as conn:
                seen[name] = conn.execute("SHOW work_mem").fetchone()[0]
        if set(seen.values()) == {"12MB"}:
            break
        time.sleep(0.2)
    assert seen == dict.fromkeys(cluster.names(), "12MB")
    refused = pgwarden("config", "set", "parameters.port=5999", "-c", config)
    assert refused.returncode == 1
    assert "parameters.port" in refused.stderr + refused.stdout


def test_patch_config_validates_and_writes(cluster: HaCluster) -> None:
    primary = cluster.wait_converged()
    url = f"{cluster.lab.agent_url(primary)}/config"
    token = cluster.lab.api_token_file.read_text().strip()
    assert request_json(url, body={"loop_wait": 2}, method="PATCH")[0] == 401
    code, answer = request_json(url, body={"ttl": 0, "nonsense": 1}, token=token, method="PATCH")
    assert code == 400
    assert "ttl: must be at least 2 seconds, got 0" in answer["problems"]
    assert any(p.startswith("nonsense:") for p in answer["problems"])
    code, answer = request_json(
        url, body={"maximum_lag_on_failover": 2097152}, token=token, method="PATCH"
    )
    assert code == 200, answer
    assert answer["written"] is True
    assert answer["config"]["maximum_lag_on_failover"] == 2097152
    _, shown = agents.api_get(f"{cluster.lab.agent_url(primary)}/cluster")
    deadline = time.monotonic() + 5
    while shown["config"]["maximum_lag_on_failover"] != 2097152 and time.monotonic() < deadline:
        time.sleep(0.1)
        _, shown = agents.api_get(f"{cluster.lab.agent_url(primary)}/cluster")
    assert shown["config"]["maximum_lag_on_failover"] == 2097152


def test_sigterm_on_the_primary_hands_the_lease_over(cluster: HaCluster) -> None:
    old = cluster.wait_converged()
    record = cluster.lab.process(agents.process_name(old))
    postmaster = cluster.lab.postmaster_pid(old)
    stopped = time.monotonic()
    cluster.kill_agent(old, signal.SIGTERM)
    new = cluster.wait_primary(10, not_=old)
    took = time.monotonic() - stopped
    deadline = time.monotonic() + 10
    while is_running(record) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not is_running(record), "the agent did not exit on SIGTERM"
    assert cluster.lab.postmaster_pid(old) is None, f"postmaster {postmaster} still runs"
    assert took < 4.0, f"the handover took {took:.1f} s, as long as a lease expiry"
    cluster.restart_agent(old)
    assert cluster.wait_converged(60) == new
