"""Failures of the primary: in each, writes resume, the old primary rejoins as a replica,
no acknowledged write is lost (synchronous mode) and no two members take writes at once."""

from __future__ import annotations

import itertools
import os
import signal
import time

import pytest

from pgwarden.lab import faults
from pgwarden.lab.ha import finish
from pgwarden.lab.net import ZOOKEEPER_ADDRESSES

pytestmark = pytest.mark.integration

TTL = 4.0  # the default dcs.ttl the lab agents run with


def test_postgres_crash_on_the_primary_is_restarted_in_place(make_ha_cluster, make_writer):
    cluster = make_ha_cluster()
    writer = make_writer(cluster)
    old = cluster.wait_converged()
    time.sleep(0.5)
    fault = time.monotonic()
    cluster.kill_postgres(old)
    assert writer.wait_for_commit_after(fault, 15) is not None
    report = finish(cluster, writer)
    assert cluster.primary() == old  # crash recovery in place, no failover
    assert report.lost_writes == []
    assert report.split_brain == []


def test_host_loss_fails_over_and_the_old_primary_rejoins(make_ha_cluster, make_writer):
    cluster = make_ha_cluster()
    writer = make_writer(cluster)
    old = cluster.wait_converged()
    time.sleep(0.5)
    fault = time.monotonic()
    cluster.signal_host(old, signal.SIGKILL)
    new = cluster.wait_primary(20, not_=old)
    assert writer.wait_for_commit_after(fault, 20) is not None
    cluster.restart_agent(old)
    report = finish(cluster, writer)
    assert cluster.primary() == new
    assert old in cluster.replicas()
    assert report.lost_writes == []
    assert report.split_brain == []
    assert report.by_member.get(new, 0) > 0


def test_agent_killed_on_the_primary_is_fenced_and_replaced(make_ha_cluster, make_writer):
    cluster = make_ha_cluster()
    writer = make_writer(cluster)
    old = cluster.wait_converged()
    time.sleep(0.5)
    fault = time.monotonic()
    cluster.kill_agent(old)  # postgres keeps running, orphaned: the fence must stop it
    new = cluster.wait_primary(20, not_=old)
    assert cluster.lab.postmaster_pid(old) is None, "the orphaned primary was not fenced"
    assert writer.wait_for_commit_after(fault, 20) is not None
    cluster.restart_agent(old)
    report = finish(cluster, writer)
    assert cluster.primary() == new
    assert report.lost_writes == []
    assert report.split_brain == []


def test_frozen_agent_on_the_primary_loses_nothing(make_ha_cluster, make_writer):
    cluster = make_ha_cluster()
    writer = make_writer(cluster)
    old = cluster.wait_converged()
    time.sleep(0.5)
    pid = cluster.agent_pid(old)
    fault = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    try:
        new = cluster.wait_primary(20, not_=old)
        time.sleep(max(0.0, 2 * TTL - (time.monotonic() - fault)))
    finally:
        os.kill(pid, signal.SIGCONT)
    assert writer.wait_for_commit_after(fault, 5) is not None
    report = finish(cluster, writer)
    late = [a for a in writer.snapshot() if a.member == old and a.acked > fault + TTL]
    assert late == [], f"{old} acknowledged {len(late)} commits after its lease deadline"
    assert cluster.primary() == new
    assert old in cluster.replicas()
    assert report.lost_writes == []
    assert report.split_brain == []


@pytest.mark.parametrize("synchronous_mode", ["on", "off"])
def test_primary_cut_off_from_zookeeper_rejoins_after_heal(
    make_ha_cluster, make_writer, synchronous_mode
):
    cluster = make_ha_cluster(synchronous_mode=synchronous_mode)
    writer = make_writer(cluster)
    old = cluster.wait_converged()
    time.sleep(0.5)
    lab = cluster.lab
    fault = time.monotonic()
    cut = lab.cut(lab.member(old).host, ZOOKEEPER_ADDRESSES[0])
    try:
        new = cluster.wait_primary(20, not_=old)
        assert writer.wait_for_commit_after(fault, 20) is not None
        time.sleep(2)  # the fenced old primary must stay down while it cannot prove a lease
    finally:
        lab.heal(cut)
    report = finish(cluster, writer)
    late = [a for a in writer.snapshot() if a.member == old and a.acked > fault + TTL]
    assert late == [], f"{old} acknowledged {len(late)} commits after its lease deadline"
    assert cluster.primary() == new
    assert old in cluster.replicas()
    assert faults.lab_rules(lab.lab_id) == []
    assert report.split_brain == []
    if synchronous_mode == "on":
        assert report.lost_writes == []


def test_losing_the_synchronous_standby_stalls_writes_only_briefly(make_ha_cluster, make_writer):
    cluster = make_ha_cluster()
    writer = make_writer(cluster)
    primary = cluster.wait_converged()
    standby = cluster.sync_members(primary)[0]
    time.sleep(0.5)
    fault = time.monotonic()
    cluster.signal_host(standby, signal.SIGKILL)
    time.sleep(3 * TTL)
    acks = sorted(a.acked for a in writer.snapshot() if a.acked > fault - 0.5)
    gaps = [b - a for a, b in itertools.pairwise(acks)]
    assert acks and acks[-1] > fault + 2 * TTL, "writes did not resume"
    assert max(gaps) < 2 * TTL, f"writes stalled {max(gaps):.1f} s after the standby died"
    assert cluster.primary() == primary
    cluster.restart_agent(standby)
    report = finish(cluster, writer)
    assert report.lost_writes == []
    assert report.split_brain == []
