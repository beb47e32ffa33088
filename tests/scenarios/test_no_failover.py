"""Events that must not fail over, and a candidate that must never be promoted."""

from __future__ import annotations

import os
import signal
import time

import psycopg
import pytest

from pgwarden.lab import agents, zookeeper
from pgwarden.lab.ha import finish
from pgwarden.lab.procs import descendants

pytestmark = pytest.mark.integration

TTL = 4.0  # the default dcs.ttl the lab agents run with


def test_zookeeper_leader_loss_and_a_replica_restart_do_not_fail_over(make_ha_cluster, make_writer):
    cluster = make_ha_cluster(zookeeper_nodes=3)
    writer = make_writer(cluster)
    primary = cluster.wait_converged()
    lab = cluster.lab
    leader = zookeeper.leader(lab.zookeeper_nodes)
    assert leader is not None
    lab.stop_zookeeper_node(leader.myid)
    time.sleep(2 * TTL)
    assert cluster.primary() == primary
    lab.start_zookeeper_node(leader.myid)

    replica = next(name for name in cluster.names() if name != primary)
    cluster.kill_agent(replica, signal.SIGTERM)
    cluster.restart_agent(replica)
    report = finish(cluster, writer)
    assert cluster.primary() == primary
    assert set(report.by_member) == {primary}, "another member accepted writes"
    assert report.lost_writes == []
    history = agents.api_get(f"{lab.agent_url(primary)}/history")[1]
    assert history == [], f"a failover happened: {history}"


def test_zookeeper_down_stops_writes_by_the_deadline_and_recovers(make_ha_cluster, make_writer):
    cluster = make_ha_cluster()
    writer = make_writer(cluster)
    primary = cluster.wait_converged()
    time.sleep(0.5)
    lab = cluster.lab
    fault = time.monotonic()
    lab.stop_zookeeper_node(1)
    time.sleep(2 * TTL)
    late = [a for a in writer.snapshot() if a.acked > fault + TTL]
    assert late == [], f"{len(late)} writes acknowledged after the lease deadline"
    assert all(a.member == primary for a in writer.snapshot()), "a replica took writes"
    lab.start_zookeeper_node(1)
    report = finish(cluster, writer)
    assert report.lost_writes == []
    assert report.split_brain == []
    assert writer.first_commit_after(fault + 2 * TTL) is not None


def _walreceiver(cluster, name: str) -> int:
    postmaster = cluster.lab.postmaster_pid(name)
    for pid in descendants(postmaster):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if b"walreceiver" in handle.read():
                    return pid
        except OSError:
            continue
    raise AssertionError(f"{name} has no walreceiver")


def test_a_replica_beyond_maximum_lag_is_never_promoted(make_ha_cluster):
    cluster = make_ha_cluster(synchronous_mode="off")
    primary = cluster.wait_converged()
    fresh, lagging = (n for n in cluster.names() if n != primary)
    stopped = _walreceiver(cluster, lagging)
    os.kill(stopped, signal.SIGSTOP)
    try:
        with psycopg.connect(cluster.conninfo(primary), autocommit=True) as conn:
            conn.execute("CREATE TABLE bulk (id int, pad text)")
            conn.execute(
                "INSERT INTO bulk SELECT g, repeat('x', 1000) FROM generate_series(1, 8000) g"
            )
        time.sleep(2)  # the leader publishes its WAL position every tick
        cluster.signal_host(fresh, signal.SIGKILL)
        cluster.signal_host(primary, signal.SIGKILL)
        time.sleep(3 * TTL)
        assert cluster.primary() is None, "the lagging replica was promoted"
        _, status = agents.api_get(f"{cluster.lab.agent_url(lagging)}/cluster")
        decision = status["members"][lagging]["decision"]
        assert "bytes behind" in decision, decision
    finally:
        os.kill(stopped, signal.SIGCONT)
    cluster.restart_agent(primary)
    cluster.restart_agent(fresh)
    assert cluster.wait_converged(60) == primary
