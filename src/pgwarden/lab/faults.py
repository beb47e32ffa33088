"""Fault injection for tests and benchmarks: signals, network cuts, session expiry.

Network cuts are iptables rules on the loopback interface, each tagged with a comment
naming its lab (`pgwarden-lab:<lab id>`), so `remove_all_cuts` and `lab down` find and
delete every rule a lab added even after the process that added it died.

A rule matches packets by source and destination address. Servers are told apart by the
address they listen on; clients that should be cut by their own address must bind their
sockets to it (PostgreSQL's walreceiver cannot, so a replica's stream is cut by cutting
the primary's address).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pgwarden.lab.procs import (
    LabError,
    ProcessRecord,
    descendants,
    group_members,
    is_running,
)

COMMENT_PREFIX = "pgwarden-lab:"


def signal_process(record: ProcessRecord, sig: int, *, group: bool = True) -> list[int]:
    """Send `sig` to a recorded process and, with `group`, to its process group and all
    its descendants (a postmaster's backends lead sessions of their own); return the PIDs
    signalled, the recorded process first."""
    if not group_members(record.pid) and not is_running(record):
        raise LabError(f"{record.name} is not running")
    pids = [record.pid]
    if group:
        pids += [p for p in group_members(record.pid) + descendants(record.pid) if p not in pids]
        pids = list(dict.fromkeys(pids))
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            continue
    return pids


def kill(record: ProcessRecord, *, group: bool = True) -> list[int]:
    """SIGKILL a service, by default with every process in its group (e.g. backends)."""
    return signal_process(record, signal.SIGKILL, group=group)


def freeze(record: ProcessRecord, *, group: bool = True) -> list[int]:
    """SIGSTOP a service: it stays alive and holds its sockets but answers nothing."""
    return signal_process(record, signal.SIGSTOP, group=group)


def thaw(record: ProcessRecord, *, group: bool = True) -> list[int]:
    """SIGCONT a frozen service."""
    return signal_process(record, signal.SIGCONT, group=group)


@dataclass(frozen=True)
class Cut:
    """A bidirectional drop of packets between two loopback addresses; with `refuse`, TCP
    connections are reset at once instead (a service that is down, not one unreachable)."""

    lab_id: str
    a: str
    b: str
    refuse: bool = False

    def rules(self) -> list[list[str]]:
        comment = ["-m", "comment", "--comment", f"{COMMENT_PREFIX}{self.lab_id}"]
        action = ["-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"]
        return [
            [
                "INPUT",
                "-i",
                "lo",
                "-s",
                src,
                "-d",
                dst,
                *comment,
                *(action if self.refuse else ["-j", "DROP"]),
            ]
            for src, dst in ((self.a, self.b), (self.b, self.a))
        ]


def _iptables(args: list[str]) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("iptables")
    if binary is None:
        raise LabError("iptables is not installed; run: apt-get install -y iptables")
    return subprocess.run(
        [binary, "-w", "5", *args], capture_output=True, text=True, check=False, timeout=30
    )


def cut(lab_id: str, a: str, b: str, *, refuse: bool = False) -> Cut:
    """Drop all packets (with `refuse`: reset TCP) between `a` and `b` until healed."""
    handle = Cut(lab_id, a, b, refuse)
    added: list[list[str]] = []
    for rule in handle.rules():
        done = _iptables(["-I", *rule])
        if done.returncode != 0:
            for undo in added:
                _iptables(["-D", *undo])
            raise LabError(f"iptables refused a rule: {done.stderr.strip()}")
        added.append(rule)
    return handle


def heal(handle: Cut) -> None:
    """Remove the rules of one cut (each rule once; missing rules are fine)."""
    for rule in handle.rules():
        _iptables(["-D", *rule])


def lab_rules(lab_id: str | None = None) -> list[str]:
    """The `iptables -S` lines a lab (or any lab, when lab_id is None) added."""
    if shutil.which("iptables") is None:
        return []
    done = _iptables(["-S"])
    if done.returncode != 0:
        return []
    tag = f"{COMMENT_PREFIX}{lab_id}" if lab_id else COMMENT_PREFIX
    return [line for line in done.stdout.splitlines() if line.startswith("-A ") and tag in line]


def remove_all_cuts(lab_id: str) -> int:
    """Delete every rule tagged with `lab_id`; return how many were removed."""
    removed = 0
    for line in lab_rules(lab_id):
        # "-A CHAIN spec..." -> "-D CHAIN spec..."; the spec round-trips through -S.
        args = shlex.split(line)
        args[0] = "-D"
        if _iptables(args).returncode == 0:
            removed += 1
    leftover = lab_rules(lab_id)
    if leftover:
        raise LabError(f"could not remove iptables rules: {leftover[0]}")
    return removed


def expire_session(client: Any) -> None:
    """Expire a kazoo client's ZooKeeper session as the server would after a timeout.

    Opens a second connection with the first one's session id and password and closes
    it; the server then ends the session, and its ephemeral nodes vanish.
    """
    from kazoo.client import KazooClient  # noqa: PLC0415 - tests only

    session_id, password = client.client_id
    hosts = ",".join(f"{host}:{port}" for host, port in client.hosts)
    twin = KazooClient(hosts=hosts, client_id=(session_id, password))
    twin.start(timeout=10)
    twin.stop()
    twin.close()


def cuts_between(lab_id: str, group_a: Iterable[str], group_b: Iterable[str]) -> list[Cut]:
    """Cut every address of `group_a` off from every address of `group_b`."""
    handles = []
    try:
        for a in group_a:
            for b in group_b:
                handles.append(cut(lab_id, a, b))
    except LabError:
        for handle in handles:
            heal(handle)
        raise
    return handles
