"""Supervision of the local postmaster: start, stop, kill, and notice its exit at once.

The agent is the postmaster's parent. A waiter thread blocks in `wait()` on it, so an
unexpected exit is seen the instant it happens (and the zombie reaped), and the HA loop
is woken to react, instead of noticing at its next tick.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Callable

from pgwarden.logs import get_logger
from pgwarden.model import PgState
from pgwarden.postgres.instance import Instance

log = get_logger("postmaster")

# A postmaster that ran this long since its last start is no longer "crash looping".
HEALTHY_RUN_SECONDS = 30.0


class Postmaster:
    """The state of the local PostgreSQL as far as process supervision knows it."""

    def __init__(self, instance: Instance, on_change: Callable[[], None]) -> None:
        self.instance = instance
        self._on_change = on_change
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._adopted_pid: int | None = None
        self._stopping = False
        self._started_at = 0.0
        self.state = PgState.STOPPED
        self.crash_count = 0
        self.last_exit_code: int | None = None

    @property
    def pid(self) -> int | None:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        if self._adopted_pid is not None:
            return self.instance.postmaster_pid()
        return None

    def adopt(self) -> bool:
        """Take over a postmaster left running by a previous agent; True if one runs."""
        pid = self.instance.postmaster_pid()
        if pid is None:
            return False
        self._adopted_pid = pid
        self.state = PgState.RUNNING
        log.info("postgres.adopted", pid=pid)
        return True

    def refresh(self) -> None:
        """Poll an adopted postmaster (not our child, so no waiter thread sees it exit)."""
        if self._adopted_pid is not None and self.instance.postmaster_pid() is None:
            self._adopted_pid = None
            if self.state in (PgState.RUNNING, PgState.STARTING) and not self._stopping:
                self.state = PgState.CRASHED
                self.crash_count += 1
                log.warning("postgres.exited", pid=None, adopted=True)

    def start(self) -> None:
        with self._lock:
            self._stopping = False
            proc = self.instance.start()
            self._proc = proc
            self._started_at = time.monotonic()
            self.state = PgState.STARTING
        threading.Thread(
            target=self._wait, args=(proc,), name="postmaster-wait", daemon=True
        ).start()
        log.info("postgres.started", pid=proc.pid)

    def mark_ready(self) -> None:
        if self.state is PgState.STARTING:
            self.state = PgState.RUNNING

    def _wait(self, proc: subprocess.Popen[bytes]) -> None:
        code = proc.wait()
        with self._lock:
            if self._proc is not proc:
                return
            self.last_exit_code = code
            if self._stopping:
                self.state = PgState.STOPPED
            else:
                self.state = PgState.CRASHED
                ran = time.monotonic() - self._started_at
                self.crash_count = 1 if ran >= HEALTHY_RUN_SECONDS else self.crash_count + 1
                log.warning("postgres.exited", pid=proc.pid, exit_code=code, ran_s=round(ran, 1))
        self._on_change()

    def stop(self, mode: str = "fast") -> None:
        with self._lock:
            self._stopping = True
        self.instance.stop(mode)  # type: ignore[arg-type]
        proc = self._proc
        if proc is not None:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.instance.kill()
                proc.wait()
        self._adopted_pid = None
        self.state = PgState.STOPPED
        log.info("postgres.stopped", mode=mode)

    def kill(self) -> None:
        """Fence: SIGKILL the postmaster and its backends now."""
        with self._lock:
            self._stopping = True
        self.instance.kill()
        proc = self._proc
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self._adopted_pid = None
        self.state = PgState.STOPPED

    def reset_crashes(self) -> None:
        self.crash_count = 0
