"""`lab down` leaves nothing behind: no process, listening port, iptables rule or temp dir."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pgwarden.lab import Lab, LabError, LabSpec, scratch_directory
from pgwarden.lab.faults import lab_rules
from pgwarden.lab.net import is_listening
from pgwarden.lab.procs import descendants, group_members, is_running, start_ticks

pytestmark = pytest.mark.integration

CREATOR = """
import sys, time
from pgwarden.lab import Lab, LabSpec
agents = sys.argv[2] == "agents"
lab = Lab.create(sys.argv[1], LabSpec(zookeeper_nodes=1, s3=True, postgres_nodes=2, agents=agents))
lab.cut(lab.members[0].host, lab.members[1].host)
print("ready", flush=True)
time.sleep(600)
"""


def pgwarden(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pgwarden", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def listening_addresses(directory: Path) -> list[tuple[str, int]]:
    state = json.loads((directory / "lab.json").read_text())
    addresses = [(n["host"], n["client_port"]) for n in state["zookeeper"]]
    if state["s3"]:
        addresses.append((state["s3"]["host"], state["s3"]["port"]))
    if state["postgres"]:
        addresses += [(m["host"], m["port"]) for m in state["postgres"]["members"]]
    return addresses


def assert_nothing_left(directory: Path, records, addresses, lab_id: str, tmp_before) -> None:
    for record in records:
        assert not is_running(record), f"{record.name} (pid {record.pid}) still runs"
        assert group_members(record.pid) == [], f"{record.name} left processes behind"
    for host, port in addresses:
        assert not is_listening(host, port), f"{host}:{port} still accepts connections"
    assert lab_rules(lab_id) == []
    assert not directory.exists()
    # Only names the lab or its programs could create: other processes on the machine
    # may write to the temp directory meanwhile.
    suspects = ("pgwarden-", "hsperfdata_", "tmp", ".s.PGSQL", "zookeeper")
    new_entries = {
        name
        for name in set(os.listdir(tempfile.gettempdir())) - tmp_before
        if name.startswith(suspects)
    }
    assert new_entries == set(), f"temp entries left behind: {sorted(new_entries)}"


def cleanup(directory: Path) -> None:
    if (directory / "lab.json").exists():
        Lab.open(directory).down()
    shutil.rmtree(directory, ignore_errors=True)


def start_creator(directory: Path, kind: str = "plain") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CREATOR, str(directory), kind],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def test_lab_down_after_the_creating_process_was_killed() -> None:
    tmp_before = set(os.listdir(tempfile.gettempdir()))
    directory = scratch_directory("lifecycle")
    creator = start_creator(directory)
    try:
        assert creator.stdout is not None
        assert creator.stdout.readline().strip() == "ready"
        creator.send_signal(signal.SIGKILL)
        creator.wait(10)
        lab = Lab.open(directory)
        records, addresses = lab.registry.all(), listening_addresses(directory)
        assert len(records) == 4  # zookeeper, s3, two postgres
        assert all(is_running(r) for r in records)
        assert len(lab_rules(lab.lab_id)) == 2
        done = pgwarden("lab", "down", "--dir", str(directory))
        assert done.returncode == 0, done.stderr
        assert f"lab in {directory} is down" in done.stdout
        assert_nothing_left(directory, records, addresses, lab.lab_id, tmp_before)
    finally:
        creator.kill()
        creator.wait()
        cleanup(directory)


def test_lab_down_finds_what_a_killed_agent_left_running() -> None:
    tmp_before = set(os.listdir(tempfile.gettempdir()))
    directory = scratch_directory("orphans")
    creator = start_creator(directory, "agents")
    try:
        assert creator.stdout is not None
        assert creator.stdout.readline().strip() == "ready"
        creator.send_signal(signal.SIGKILL)
        creator.wait(10)
        lab = Lab.open(directory)
        records, addresses = lab.registry.all(), listening_addresses(directory)
        # An agent killed with SIGKILL leaves its postmaster and fence process behind.
        agent = lab.process("agent-node1")
        orphans = descendants(agent.pid)
        assert lab.postmaster_pid("node1") in orphans
        os.kill(agent.pid, signal.SIGKILL)
        done = pgwarden("lab", "down", "--dir", str(directory))
        assert done.returncode == 0, done.stderr
        assert_nothing_left(directory, records, addresses, lab.lab_id, tmp_before)
        alive = [pid for pid in orphans if start_ticks(pid) is not None]
        assert alive == [], f"processes left behind: {alive}"
    finally:
        creator.kill()
        creator.wait()
        cleanup(directory)


def test_lab_down_after_the_creator_was_killed_while_starting() -> None:
    tmp_before = set(os.listdir(tempfile.gettempdir()))
    directory = scratch_directory("midstart")
    creator = start_creator(directory)
    try:
        deadline = time.monotonic() + 30
        while not (directory / "lab.json").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.8)  # somewhere inside initdb, pg_basebackup or the readiness waits
        creator.send_signal(signal.SIGKILL)
        creator.wait(10)
        lab = Lab.open(directory)
        records, addresses = lab.registry.all(), listening_addresses(directory)
        assert records, "the creator was killed before it started anything"
        done = pgwarden("lab", "down", "--dir", str(directory))
        assert done.returncode == 0, done.stderr
        assert_nothing_left(directory, records, addresses, lab.lab_id, tmp_before)
    finally:
        creator.kill()
        creator.wait()
        cleanup(directory)


def test_failed_start_reports_the_log_tail_and_stops_everything() -> None:
    directory = scratch_directory("failing")
    try:
        with pytest.raises(LabError) as failure:
            Lab.create(
                directory,
                LabSpec(
                    zookeeper_nodes=1,
                    s3=False,
                    postgres_nodes=1,
                    postgres_settings=(("shared_buffers", "'64TB'"),),
                ),
            )
        message = str(failure.value)
        assert "PostgreSQL node1 exited during start" in message
        assert "FATAL" in message
        lab = Lab.open(directory)
        assert lab.registry.all() == []
        for host, port in listening_addresses(directory):
            assert not is_listening(host, port)
    finally:
        cleanup(directory)


def test_lab_cli_up_status_down() -> None:
    directory = scratch_directory("cli")
    try:
        up = pgwarden("lab", "up", "--dir", str(directory), "--nodes", "2", "--zk-nodes", "3")
        assert up.returncode == 0, up.stderr
        assert "node1" in up.stdout and "node2" in up.stdout and "primary" in up.stdout
        status = pgwarden("lab", "status", "--dir", str(directory), "-o", "json")
        assert status.returncode == 0, status.stderr
        data = json.loads(status.stdout)
        zk_roles = sorted(s["role"] for s in data["services"] if s["kind"] == "zookeeper")
        assert zk_roles == ["follower", "follower", "leader"]
        agents = [s for s in data["services"] if s["kind"] == "agent"]
        assert all(a["running"] and a["postmaster_pid"] for a in agents)
        pg_roles = sorted(a["role"] for a in agents)
        assert pg_roles == ["primary", "replica"]
        password = Lab.open(directory).credentials.superuser_password
        assert password not in status.stdout  # masked unless --show-secrets
        again = pgwarden("lab", "up", "--dir", str(directory))
        assert again.returncode == 1
        assert "already holds a lab" in again.stderr
    finally:
        down = pgwarden("lab", "down", "--dir", str(directory))
        assert down.returncode == 0, down.stderr
    gone = pgwarden("lab", "status", "--dir", str(directory))
    assert gone.returncode == 1
    assert gone.stderr.strip() == f"error: {directory} holds no lab (no lab.json)"
