"""The commands that only talk to ZooKeeper, run as an operator runs them, on a real ZooKeeper:
pause/resume, config show/set/edit (validated, compare-and-set), history, events."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from kazoo.client import KazooClient

from pgwarden.cli.dynamic_cmd import update_config
from pgwarden.dcs.zookeeper import ZooKeeperStore
from pgwarden.dynamic_config import apply_assignments, parse_assignment
from pgwarden.lab import Lab
from pgwarden.model import ClusterState, DynamicConfig, HistoryEntry, Lsn, SyncMode

pytestmark = pytest.mark.integration

ROOT = "/pgwarden"
UNREACHABLE = "127.0.0.2:1"


def write_config(path: Path, cluster: str, hosts: list[str]) -> Path:
    storage = {"type": "fs", "directory": "/tmp/x"}
    data = {"cluster": cluster, "member": "ctl", "dcs": {"hosts": hosts}, "storage": storage}
    path.write_text(yaml.safe_dump(data))
    return path


def pgwarden(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`pgwarden ARGS` as a separate process, as the operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "pgwarden", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


@dataclass
class Ctl:
    """A cluster of its own on the session's ZooKeeper, a config file naming it, a store."""

    cluster: str
    config: Path
    store: ZooKeeperStore
    tmp_path: Path

    def run(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return pgwarden(*args, "-c", str(self.config), env=env)

    def stored(self) -> tuple[DynamicConfig, int]:
        cluster = self.store.read()
        return cluster.config, cluster.config_version

    def seed(self, config: DynamicConfig | None = None) -> None:
        """What an agent's bootstrap leaves: a first configuration."""
        assert self.store.set_config(config or DynamicConfig(), -1)

    def editor(self, body: str) -> dict[str, str]:
        """An environment whose $EDITOR runs `body` with `path` and `text` (the file's)."""
        script = self.tmp_path / f"editor-{uuid.uuid4().hex[:8]}.py"
        prologue = "import pathlib, subprocess, sys\npath = pathlib.Path(sys.argv[1])\n"
        prologue += "text = path.read_text()\n"
        script.write_text(prologue + textwrap.dedent(body))
        env = {k: v for k, v in os.environ.items() if k != "VISUAL"}
        env["EDITOR"] = f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}"
        return env


@pytest.fixture
def ctl(services: Lab, tmp_path: Path) -> Iterator[Ctl]:
    cluster = f"ctl-{uuid.uuid4().hex[:10]}"
    hosts = services.zookeeper_hosts
    config = write_config(tmp_path / "pgwarden.yml", cluster, hosts.split(","))
    store = ZooKeeperStore(hosts, cluster, root=ROOT)
    store.start(timeout=10)
    try:
        yield Ctl(cluster, config, store, tmp_path)
    finally:
        store.stop()
        client = KazooClient(hosts=hosts, timeout=4)
        client.start(timeout=10)
        try:
            client.delete(f"{ROOT}/{cluster}", recursive=True)
        finally:
            client.stop()
            client.close()


# --------------------------------------------------------------------- pause / resume
def test_pause_shows_in_list_and_resume_lifts_it(ctl: Ctl) -> None:
    ctl.seed()

    paused = ctl.run("pause")
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout.strip() == (
        f"the cluster {ctl.cluster} is paused: no automatic failover until `pgwarden resume`"
    )
    assert ctl.stored()[0].paused is True
    listed = ctl.run("list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0].startswith("MAINTENANCE MODE: the cluster is paused")
    assert json.loads(ctl.run("list", "-o", "json").stdout)["paused"] is True

    resumed = ctl.run("resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "is resumed: automatic failover is on again" in resumed.stdout
    assert ctl.stored()[0].paused is False
    assert "MAINTENANCE MODE" not in ctl.run("list").stdout


def test_pause_and_resume_are_idempotent(ctl: Ctl) -> None:
    ctl.seed(DynamicConfig(ttl=6.0))
    assert ctl.run("pause").returncode == 0
    version = ctl.stored()[1]

    again = ctl.run("pause")
    assert (again.returncode, again.stdout) == (0, "the cluster is already paused\n")
    assert json.loads(ctl.run("pause", "-o", "json").stdout) == {
        "cluster": ctl.cluster,
        "paused": True,
        "changed": False,
    }
    assert ctl.stored() == (DynamicConfig(ttl=6.0, paused=True), version)

    assert ctl.run("resume").returncode == 0
    not_paused = ctl.run("resume")
    assert (not_paused.returncode, not_paused.stdout) == (0, "the cluster is not paused\n")


def test_commands_refuse_to_write_a_cluster_that_was_never_bootstrapped(ctl: Ctl) -> None:
    # A mistyped cluster name must not pause a cluster nobody runs, or preempt the bootstrap.
    for args in (("pause",), ("config", "set", "ttl=6")):
        result = ctl.run(*args)
        assert result.returncode == 1
        assert result.stderr.startswith(
            f"error: cluster '{ctl.cluster}' has no dynamic configuration at "
            f"{ROOT}/{ctl.cluster}/config: it is not bootstrapped yet"
        )
        assert len(result.stderr.splitlines()) == 1
    assert ctl.stored()[1] == -1


# --------------------------------------------------------------------- config show / set
def test_config_set_writes_valid_values_that_show_then_shows(ctl: Ctl) -> None:
    ctl.seed()

    result = ctl.run("config", "set", "ttl=6", "synchronous_mode=on", "parameters.work_mem=64MB")

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "ttl: 4 -> 6",
        "synchronous_mode: off -> on",
        "parameters.work_mem: (not set) -> 64MB",
        f"dynamic configuration of cluster {ctl.cluster} written",
    ]
    shown = json.loads(ctl.run("config", "show", "-o", "json").stdout)
    assert (shown["ttl"], shown["synchronous_mode"], shown["parameters"]) == (
        6,
        "on",
        {"work_mem": "64MB"},
    )
    text = ctl.run("config", "show").stdout
    assert text.splitlines()[0].startswith(f"# dynamic configuration of cluster {ctl.cluster}")
    assert "ttl: 6\n" in text
    assert ctl.stored()[0] == DynamicConfig(
        ttl=6.0, synchronous_mode=SyncMode.ON, parameters={"work_mem": "64MB"}
    )


def test_config_set_with_an_invalid_value_writes_nothing(ctl: Ctl) -> None:
    ctl.seed(DynamicConfig(ttl=6.0, parameters={"work_mem": "4MB"}))
    before = ctl.stored()

    result = ctl.run(
        "config",
        "set",
        "ttl=8",  # valid alone: must not be written either
        "synchronous_mode=maybe",
        "parameters.port=5433",
    )

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "synchronous_mode: must be one of 'off', 'on', 'strict', got 'maybe'",
        "parameters.port: is managed by pgwarden; use postgres.port instead",
        "error: the dynamic configuration is not valid; nothing was written",
    ]
    assert ctl.stored() == before

    as_json = ctl.run("config", "set", "loop_wait=6", "-o", "json")
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout) == {
        "written": False,
        "errors": [
            {"path": "loop_wait", "message": "must be less than ttl (6 seconds), got 6 seconds"}
        ],
    }
    assert ctl.stored() == before


def test_config_set_of_the_current_values_changes_nothing(ctl: Ctl) -> None:
    ctl.seed(DynamicConfig(ttl=6.0))
    before = ctl.stored()

    result = ctl.run("config", "set", "ttl=6")

    assert (result.returncode, result.stdout) == (
        0,
        "no change: the configuration already has these values\n",
    )
    assert ctl.stored() == before


def test_a_malformed_set_argument_is_a_usage_error(ctl: Ctl) -> None:
    ctl.seed()

    result = ctl.run("config", "set", "ttl")

    assert result.returncode == 2
    assert "'ttl' is not KEY=VALUE" in result.stderr


class RacingStore:
    """A store whose first compare-and-set loses to another writer that gets in just before."""

    def __init__(self, store: ZooKeeperStore) -> None:
        self.store, self.cluster, self.keys = store, store.cluster, store.keys
        self.attempts = 0

    def read(self) -> ClusterState:
        return self.store.read()

    def set_config(self, config: DynamicConfig, version: int) -> bool:
        self.attempts += 1
        if self.attempts == 1:
            rival = DynamicConfig(loop_wait=2.0, parameters={"jit": "off"})
            assert self.store.set_config(rival, self.store.read().config_version)
        return self.store.set_config(config, version)


def test_config_set_reapplies_its_changes_after_losing_a_race(ctl: Ctl) -> None:
    ctl.seed()
    racing = RacingStore(ctl.store)
    changes = [parse_assignment("ttl=6"), parse_assignment("parameters.work_mem=64MB")]

    update = update_config(
        racing,  # type: ignore[arg-type]
        lambda config: apply_assignments(config, changes),
        "setting it",
    )

    assert (racing.attempts, update.written) == (2, True)
    # Both writers' changes survive: ours was applied again to the rival's configuration.
    assert ctl.stored()[0] == DynamicConfig(
        ttl=6.0, loop_wait=2.0, parameters={"jit": "off", "work_mem": "64MB"}
    )


# --------------------------------------------------------------------- config edit
def test_config_edit_writes_a_valid_edit(ctl: Ctl) -> None:
    ctl.seed()
    env = ctl.editor(
        """
        assert text.startswith("# Dynamic configuration of cluster ")
        text = text.replace("ttl: 4\\n", "ttl: 6\\n")
        path.write_text(text.replace("parameters: {}", "parameters: {jit: 'off'}"))
        """
    )

    result = ctl.run("config", "edit", env=env)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "ttl: 4 -> 6",
        "parameters.jit: (not set) -> off",
        f"dynamic configuration of cluster {ctl.cluster} written",
    ]
    assert ctl.stored()[0] == DynamicConfig(ttl=6.0, parameters={"jit": "off"})


def test_config_edit_with_invalid_values_lists_them_and_writes_nothing(ctl: Ctl) -> None:
    ctl.seed()
    before = ctl.stored()
    env = ctl.editor(
        """
        path.write_text(text.replace("ttl: 4\\n", "ttl: 0\\n") + "colour: blue\\n")
        """
    )

    result = ctl.run("config", "edit", env=env)

    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "ttl: must be at least 2 seconds, got 0",
        "colour: unknown key; the keys here are: ttl, loop_wait, safety_margin, "
        "maximum_lag_on_failover, synchronous_mode, synchronous_node_count, paused, parameters",
        "error: the dynamic configuration is not valid; nothing was written",
    ]
    assert ctl.stored() == before


@pytest.mark.parametrize(
    "body",
    [
        "pass  # quit without saving\n",
        "path.write_text(text)  # saved as it was\n",
        "path.write_text('# comments only changed\\n' + text)\n",
    ],
)
def test_config_edit_without_a_change_writes_nothing(ctl: Ctl, body: str) -> None:
    ctl.seed()
    before = ctl.stored()

    result = ctl.run("config", "edit", env=ctl.editor(body))

    assert (result.returncode, result.stdout, result.stderr) == (0, "no change\n", "")
    assert ctl.stored() == before


def test_config_edit_refuses_when_the_configuration_changed_meanwhile(ctl: Ctl) -> None:
    ctl.seed()
    # While the editor is open, another operator sets loop_wait; then this one saves.
    env = ctl.editor(
        f"""
        other = subprocess.run(
            [sys.executable, "-m", "pgwarden", "config", "set", "loop_wait=2",
             "-c", {str(ctl.config)!r}],
            capture_output=True, text=True,
        )
        assert other.returncode == 0, other.stderr
        path.write_text(text.replace("ttl: 4\\n", "ttl: 6\\n"))
        """
    )

    result = ctl.run("config", "edit", env=env)

    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error: the configuration changed while you edited it; nothing was written "
        "(run `pgwarden config edit` again to start from the current values)"
    ]
    # The other operator's change stands; this edit was not applied over it.
    assert ctl.stored()[0] == DynamicConfig(loop_wait=2.0)


# --------------------------------------------------------------------- history, events
def test_history_lists_timeline_switches_oldest_first(ctl: Ctl) -> None:
    first = HistoryEntry(2, Lsn.parse("0/3000060"), 1_700_000_000.0, "failover", "node1", "node2")
    second = HistoryEntry(3, Lsn.parse("1/A0"), 1_700_000_100.5, "switchover", "node2", "node3")
    ctl.store.append_history(first)
    ctl.store.append_history(second)

    text = ctl.run("history")

    assert text.returncode == 0, text.stderr
    assert [line.split() for line in text.stdout.splitlines()] == [
        ["TL", "LSN", "TIME", "(UTC)", "OLD", "LEADER", "NEW", "LEADER", "REASON"],
        ["2", "0/3000060", "2023-11-14", "22:13:20", "node1", "node2", "failover"],
        ["3", "1/A0", "2023-11-14", "22:15:00", "node2", "node3", "switchover"],
    ]
    as_json = json.loads(ctl.run("history", "-o", "json").stdout)
    assert [entry["timeline"] for entry in as_json] == [2, 3]
    assert as_json[1] == {**second.to_json(), "at": "2023-11-14T22:15:00.500+00:00"}


def test_history_of_a_cluster_without_switches_says_so(ctl: Ctl) -> None:
    result = ctl.run("history")

    assert (result.returncode, result.stdout) == (
        0,
        f"no timeline switches recorded for cluster {ctl.cluster}\n",
    )
    assert json.loads(ctl.run("history", "-o", "json").stdout) == []


def test_events_show_kind_member_and_details_filtered_and_limited(ctl: Ctl) -> None:
    ctl.store.add_event("bootstrap", {"member": "node1", "system_identifier": "742"})
    ctl.store.add_event("failover", {"new_leader": "node2", "old_leader": "node1"})
    ctl.store.add_event("fence", {"member": "node1", "reason": "lease deadline passed"})
    ctl.store.add_event("failover", {"new_leader": "node3", "old_leader": "node2"})

    text = ctl.run("events")

    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].split() == ["TIME", "(UTC)", "KIND", "MEMBER", "DETAILS"]
    assert [line.split()[2:] for line in lines[1:]] == [
        ["bootstrap", "node1", "system_identifier=742"],
        ["failover", "node2", "old_leader=node1"],
        ["fence", "node1", "lease", "deadline", "passed"],
        ["failover", "node3", "old_leader=node2"],
    ]
    kinds = ctl.run("events", "--kind", "failover", "--limit", "1", "-o", "json")
    assert kinds.returncode == 0, kinds.stderr
    (only,) = json.loads(kinds.stdout)
    assert (only["kind"], only["data"]) == (
        "failover",
        {"new_leader": "node3", "old_leader": "node2"},
    )
    assert only["at"].endswith("+00:00")
    assert abs(only["time"] - time.time()) < 60
    none = ctl.run("events", "--kind", "backup")
    assert none.stdout == f"no events of kind backup recorded for cluster {ctl.cluster}\n"


# --------------------------------------------------------------------- unreachable store
def test_every_command_fails_fast_in_one_sentence_when_zookeeper_is_unreachable(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path / "pgwarden.yml", "nowhere", [UNREACHABLE])
    names = ("pause", "resume", "history", "events", "list", "config show", "config set ttl=6")
    commands = [name.split() for name in (*names, "config edit")]
    started = time.monotonic()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "pgwarden", *args, "-c", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in commands
    ]
    results = [(proc.wait(timeout=30), *proc.communicate()) for proc in procs]
    elapsed = time.monotonic() - started

    for args, (code, stdout, stderr) in zip(commands, results, strict=True):
        assert (code, stdout) == (1, ""), args
        assert stderr.splitlines() == [
            f"error: could not connect to ZooKeeper at {UNREACHABLE} within 5 s"
        ], args
    assert elapsed < 10  # all at once: each gives up after 5 s
