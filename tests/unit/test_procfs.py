"""Reading /proc: when a process counts as gone."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from pgwarden import procfs

# The main thread ends (pthread_exit) while another thread goes on: the leader shows as a
# zombie in /proc/<pid>/stat, yet the process runs (as a JVM can while shutting down).
MAIN_THREAD_ENDS_FIRST = (
    "import ctypes, threading, time\n"
    "threading.Thread(target=time.sleep, args=(60,)).start()\n"
    "ctypes.CDLL(None).pthread_exit(None)\n"
)


def leader_state(pid: int) -> str:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2 :].split()[0]


def test_a_process_whose_main_thread_ended_is_still_alive() -> None:
    child = subprocess.Popen([sys.executable, "-c", MAIN_THREAD_ENDS_FIRST])
    try:
        deadline = time.monotonic() + 10
        while leader_state(child.pid) != "Z":
            assert time.monotonic() < deadline, "the main thread never ended"
            time.sleep(0.01)
        assert procfs.alive(child.pid)
        assert child.pid in procfs.group_members(procfs.stat(child.pid).pgid)  # type: ignore[union-attr]
    finally:
        child.kill()
        child.wait()
    assert not procfs.alive(child.pid)


def test_a_zombie_is_gone() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while leader_state(child.pid) != "Z":  # exited, not yet reaped
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        assert not procfs.alive(child.pid)
        assert procfs.start_ticks(child.pid) is None
    finally:
        child.wait()
