"""The fence process: stops the postmaster when the primary's lease deadline passes.

The agent keeps its lease by confirming its consensus-store session; each confirmation
moves the deadline by which a primary must have stopped taking writes (see
`Lease.deadline`). The agent demotes itself when it sees the deadline coming, but an
agent that is dead, frozen (SIGSTOP) or stuck cannot. So a separate, tiny process holds
the last deadline it was told and SIGKILLs the postmaster's process group when the
deadline passes without a newer one. It uses the system-wide monotonic clock, the same
as the agent's, so the deadline needs no translation.

Protocol on its stdin, one line each:
    arm <deadline> <pid> <start_ticks>   kill that postmaster at <deadline> unless re-armed
    disarm                               forget the deadline (we are not a primary now)
At end of input (the agent died) the fence keeps its last instruction: it fires at the
deadline if armed, then exits; if disarmed it exits at once.

Standard library only: it must start fast and depend on nothing that can hang.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from typing import IO

from pgwarden.procfs import children, start_ticks


def _kill(pid: int, ticks: int) -> str:
    """SIGKILL the postmaster and every child of it. PostgreSQL's children each lead a
    session of their own, so a process-group kill would miss them; stopping the
    postmaster first keeps it from starting new ones while we collect them."""
    if start_ticks(pid) != ticks:
        return f"fence: postmaster {pid} already gone"
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGSTOP)
    for child in children(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return f"fence: lease deadline passed, killed postmaster {pid} and its children"


def run(stream: IO[str]) -> int:
    """Serve the protocol on `stream` until told to stop; returns the exit status."""
    now = time.monotonic
    armed: tuple[float, int, int] | None = None
    buffer = ""
    fd = stream.fileno()
    eof = False
    while True:
        if armed is not None and now() >= armed[0]:
            print(_kill(armed[1], armed[2]), file=sys.stderr, flush=True)
            armed = None
        if eof:
            if armed is None:
                return 0
            time.sleep(max(0.0, min(armed[0] - now(), 0.05)))
            continue
        timeout = None if armed is None else max(0.0, armed[0] - now())
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            continue
        chunk = os.read(fd, 4096).decode()
        if not chunk:
            eof = True
            continue
        buffer += chunk
        while "\n" in buffer:
            line, buffer = buffer.split("\n", 1)
            parts = line.split()
            if parts[:1] == ["arm"] and len(parts) == 4:
                armed = (float(parts[1]), int(parts[2]), int(parts[3]))
            elif parts[:1] == ["disarm"]:
                armed = None
            elif parts[:1] == ["exit"]:
                return 0


class FenceClient:
    """The agent's handle on its fence process."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "pgwarden.ha.fence"],
            stdin=subprocess.PIPE,
            text=True,
            # Its own group: signals aimed at the agent's group do not reach it.
            process_group=0,
        )
        self.armed_until: float | None = None

    @property
    def pid(self) -> int:
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc.poll() is None

    def arm(self, deadline: float, pid: int) -> None:
        ticks = start_ticks(pid)
        if ticks is None:
            return
        self._send(f"arm {deadline:.6f} {pid} {ticks}")
        self.armed_until = deadline

    def disarm(self) -> None:
        if self.armed_until is not None:
            self._send("disarm")
            self.armed_until = None

    def close(self) -> None:
        """Stop the fence after disarming it (a clean agent exit)."""
        self._send("disarm")
        self._send("exit")
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def _send(self, line: str) -> None:
        stdin = self._proc.stdin
        if stdin is None or self._proc.poll() is not None:
            return
        try:
            stdin.write(line + "\n")
            stdin.flush()
        except BrokenPipeError:
            pass


if __name__ == "__main__":
    # Ignore terminal signals aimed at the agent's session; SIGKILL still works.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(run(sys.stdin))
