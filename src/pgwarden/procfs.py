"""Reading /proc: a process's state, parent, group and start time.

Standard library only: the fence process imports it and must start fast. A zombie
counts as gone everywhere here: it no longer runs and only waits to be reaped (PID 1 on
some machines reaps orphans only every second or so, so `kill -0` is no liveness check).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

_GONE = ("Z", "X")


class ProcStat(NamedTuple):
    pid: int
    comm: str
    state: str
    ppid: int
    pgid: int
    start_ticks: int  # clock ticks since boot: with the PID, identifies one process


def stat(pid: int) -> ProcStat | None:
    """The process's /proc/<pid>/stat fields we use, or None if it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The name is in parentheses and may contain spaces; the fields follow the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    state = fields[0]
    if state == "Z":
        state = _live_thread_state(pid) or state
    return ProcStat(pid, comm, state, int(fields[1]), int(fields[2]), int(fields[19]))


def _live_thread_state(pid: int) -> str | None:
    """The state of a thread still running in a process whose main thread ended: its
    leader shows as a zombie, but the process lives on (and holds its sockets)."""
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            raw = (task / "stat").read_text()
            state = raw[raw.rindex(")") + 2 :].split()[0]
            if state not in _GONE:
                return state
    except OSError:
        return None
    return None


def start_ticks(pid: int) -> int | None:
    """The start time of a live process, or None if it is gone (or a zombie)."""
    st = stat(pid)
    return None if st is None or st.state in _GONE else st.start_ticks


def alive(pid: int, ticks: int | None = None) -> bool:
    """Whether `pid` runs, and is the same process as when `ticks` was read, if given."""
    found = start_ticks(pid)
    return found is not None and (ticks is None or found == ticks)


def processes() -> Iterator[ProcStat]:
    """Every live process."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = stat(int(entry.name))
            if st is not None and st.state not in _GONE:
                yield st


def children(pid: int) -> list[int]:
    return [p.pid for p in processes() if p.ppid == pid]


def group_members(pgid: int) -> list[int]:
    """Live processes in process group `pgid`."""
    return [p.pid for p in processes() if p.pgid == pgid]


def descendants(pid: int) -> list[int]:
    """Live descendants of `pid`, children first. PostgreSQL's children each lead their
    own session, so a process-group signal misses them."""
    by_parent: dict[int, list[int]] = {}
    for p in processes():
        by_parent.setdefault(p.ppid, []).append(p.pid)
    found: list[int] = []
    queue = [pid]
    while queue:
        kids = by_parent.get(queue.pop(0), [])
        found.extend(kids)
        queue.extend(kids)
    return found
