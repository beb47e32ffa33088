"""Agents running as the postgres OS user, as systemd runs them in production."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pgwarden.lab import Lab, LabSpec, agents, scratch_directory
from pgwarden.lab.ha import HaCluster, finish
from pgwarden.lab.writer import Writer

pytestmark = pytest.mark.integration


def _postgres_can_run_pgwarden() -> str | None:
    """Why agents cannot run as postgres here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root to start processes as the postgres user"
    probe = subprocess.run(
        ["runuser", "-u", "postgres", "--", sys.executable, "-c", "import pgwarden.agent.main"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        return f"the postgres user cannot run this checkout's venv: {probe.stderr.strip()[-200:]}"
    return None


def _uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


def test_agents_as_postgres_bootstrap_and_fail_over() -> None:
    reason = _postgres_can_run_pgwarden()
    if reason is not None:
        pytest.skip(reason)
    lab = Lab.create(
        scratch_directory("asuser"),
        LabSpec(
            zookeeper_nodes=1,
            s3=False,
            postgres_nodes=3,
            agents=True,
            synchronous_mode="on",
            agents_user="postgres",
        ),
    )
    writer = None
    try:
        cluster = HaCluster(lab)
        old = cluster.wait_converged()
        postgres_uid = int(subprocess.check_output(["id", "-u", "postgres"]).strip())
        for name in cluster.names():
            assert _uid(cluster.agent_pid(name)) == postgres_uid
        Writer.prepare(cluster.conninfo(old))
        writer = Writer(cluster.names(), cluster.conninfo)
        writer.start()
        time.sleep(1)
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
        assert agents.api_get(f"{lab.agent_url(old)}/replica")[0] == 200
    finally:
        if writer is not None:
            writer.stop()
        lab.down()
