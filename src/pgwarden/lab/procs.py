"""Processes the lab starts: spawn, record, identify by PID and start time, stop.

Every process is written to a registry file in the lab directory *right after* it is
spawned and before anything waits on it, so `lab down --dir` can stop it even when the
process that ran `lab up` was killed half-way. A PID is only ever signalled when its
start time in /proc still matches the recorded one: a PID reused by an unrelated
process after a reboot or a long pause is never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from pgwarden.errors import PgwardenError
from pgwarden.procfs import descendants, group_members, start_ticks

__all__ = ["descendants", "group_members", "start_ticks"]  # re-exported for lab users


class LabError(PgwardenError):
    """A lab service failed to start or stop; the message carries its log tail."""


@dataclass(frozen=True)
class ProcessRecord:
    """One process the lab started. `pgid` equals `pid`: each runs in its own session."""

    name: str
    pid: int
    start_ticks: int
    argv: tuple[str, ...]
    log: str
    stop_signal: int = signal.SIGTERM


def is_running(record: ProcessRecord) -> bool:
    """Whether the recorded process still runs (same PID and same start time)."""
    return start_ticks(record.pid) == record.start_ticks


def tagged_processes(name: str, value: str) -> list[int]:
    """PIDs of live processes whose environment has `name=value` (readable ones only)."""
    needle = f"{name}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and start_ticks(int(entry.name)) is not None:
            found.append(int(entry.name))
    return found


class Registry:
    """The processes of one lab directory, one JSON file per process."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory / "procs"

    def add(self, record: ProcessRecord) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{record.name}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(record)))
        tmp.replace(path)

    def remove(self, name: str) -> None:
        (self.directory / f"{name}.json").unlink(missing_ok=True)

    def get(self, name: str) -> ProcessRecord | None:
        path = self.directory / f"{name}.json"
        if not path.exists():
            return None
        return _load(path)

    def all(self) -> list[ProcessRecord]:
        if not self.directory.is_dir():
            return []
        return [_load(p) for p in sorted(self.directory.glob("*.json"))]


def _load(path: Path) -> ProcessRecord:
    data = json.loads(path.read_text())
    data["argv"] = tuple(data["argv"])
    return ProcessRecord(**data)


def os_user_ids(user: str | None) -> tuple[int, int] | None:
    """(uid, gid) to drop to for `user`, or None to keep the current identity."""
    if user is None:
        return None
    entry = pwd.getpwnam(user)
    if entry.pw_uid == os.geteuid():
        return None
    return entry.pw_uid, entry.pw_gid


def spawn(
    registry: Registry,
    name: str,
    argv: Sequence[str],
    log: Path,
    *,
    user: str | None = None,
    env: Mapping[str, str] | None = None,
    stop_signal: int = signal.SIGTERM,
) -> tuple[subprocess.Popen[bytes], ProcessRecord]:
    """Start a long-running service in its own session, logging to `log`, and record it."""
    ids = os_user_ids(user)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(env) if env is not None else None,
            user=ids[0] if ids else None,
            group=ids[1] if ids else None,
            extra_groups=[] if ids else None,
        )
    ticks = start_ticks(proc.pid)
    record = ProcessRecord(name, proc.pid, ticks or 0, tuple(argv), str(log), stop_signal)
    registry.add(record)
    return proc, record


def run(
    argv: Sequence[str],
    *,
    user: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 120.0,
    what: str | None = None,
    registry: Registry | None = None,
) -> str:
    """Run a short command to completion; raise LabError with its output if it fails.

    With a registry, the command is recorded while it runs, so a lab torn down from
    another process also stops an initdb or pg_basebackup left running by a killed parent.
    """
    ids = os_user_ids(user)
    label = what or Path(argv[0]).name
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=dict(env) if env is not None else None,
        user=ids[0] if ids else None,
        group=ids[1] if ids else None,
        extra_groups=[] if ids else None,
    )
    name = f"run-{proc.pid}"
    if registry is not None:
        registry.add(ProcessRecord(name, proc.pid, start_ticks(proc.pid) or 0, tuple(argv), ""))
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise LabError(f"{label} did not finish within {timeout:.0f} s") from None
    finally:
        if registry is not None and proc.returncode is not None:
            registry.remove(name)
    if proc.returncode != 0:
        output = (stderr or stdout).strip().splitlines()[-10:]
        raise LabError(f"{label} failed with exit code {proc.returncode}: " + " | ".join(output))
    return stdout


def log_tail(path: str | Path, lines: int = 15) -> str:
    """The last lines of a log file, joined for an error message."""
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return "(no log written)"
    tail = text.strip().splitlines()[-lines:]
    return "\n".join(tail) if tail else "(log is empty)"


def stop(record: ProcessRecord, timeout: float = 15.0) -> None:
    """Stop a recorded process and everything in its process group.

    Sends the record's stop signal, waits up to `timeout`, then SIGKILLs the group. Only
    signals the group when the leader is verified as ours or already gone; members left
    behind by a dead leader share its PGID, which no unrelated process can have while
    any of them lives.
    """
    ticks = start_ticks(record.pid)
    if ticks is not None and ticks != record.start_ticks:
        return  # the PID now belongs to an unrelated process: ours is long gone
    if ticks is not None:
        _signal_group(record.pid, record.stop_signal)
        # A stopped (SIGSTOP) process cannot act on the signal until it continues.
        _signal_group(record.pid, signal.SIGCONT)
        _wait_gone(record, timeout)
    if group_members(record.pid):
        _signal_group(record.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10.0
        while group_members(record.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
    if group_members(record.pid):
        raise LabError(f"process group {record.pid} ({record.name}) survived SIGKILL")


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _wait_gone(record: ProcessRecord, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(record.pid)
        if not group_members(record.pid):
            return
        time.sleep(0.02)


def _reap(pid: int) -> None:
    """Collect the exit status if `pid` is our child, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
