"""Scheduled base backups, taken by the agent one at a time.

Each backup runs as a child process (`pgwarden backup create`, which also applies the
retention policy), so a backup's memory and CPU never touch the HA loop's thread or the
lease keeper. Which member takes it is decided when it is due: the leader by default,
or the member `backup.member` names (from its standby). Results go to the cluster's
events (`backup`, `backup_failed`) and the agent's status.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pgwarden.backup.schedule import next_backup
from pgwarden.logs import get_logger

log = get_logger("agent.backups")

Source = Literal["primary", "standby"]


@dataclass(frozen=True)
class BackupOutcome:
    kind: str
    ok: bool
    finished_at: datetime
    backup: str | None
    reason: str | None
    summary: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "ok": self.ok,
            "finished_at": self.finished_at.isoformat(),
            "backup": self.backup,
            "reason": self.reason,
        }


class BackupScheduler:
    """Runs `pgwarden backup create` when the schedule says so and this member is the one."""

    def __init__(
        self,
        *,
        config_path: Path,
        member: str,
        full_schedule: str | None,
        incremental_schedule: str | None,
        source: Callable[[], Source | None],
        event: Callable[[str, dict[str, Any]], None],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config_path = config_path
        self.member = member
        self.full_schedule = full_schedule
        self.incremental_schedule = incremental_schedule
        self.source = source
        self.event = event
        self.clock = clock
        self.last: BackupOutcome | None = None
        self.running: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._busy = threading.Lock()  # one backup at a time, scheduled or requested
        self._child: subprocess.Popen[str] | None = None
        self._thread = threading.Thread(target=self._run, name="backups", daemon=True)

    def start(self) -> None:
        if self.full_schedule is None and self.incremental_schedule is None:
            return
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            child = self._child
        if child is not None and child.poll() is None:
            child.terminate()  # the backup aborts; nothing incomplete is listed
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def status(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "last": None if self.last is None else self.last.to_json(),
        }

    def _run(self) -> None:
        while not self._stop.is_set():
            due = next_backup(self.full_schedule, self.incremental_schedule, self.clock())
            if due is None:
                return
            while not self._stop.is_set():
                left = (due.at - self.clock()).total_seconds()
                if left <= 0:
                    break
                self._stop.wait(min(left, 60.0))
            if self._stop.is_set():
                return
            source = self.source()
            if source is None:
                log.info(
                    "backup.not_mine", member=self.member, kind=due.kind, due=due.at.isoformat()
                )
                continue
            self.take(due.kind, source)

    def start_now(self, kind: str, source: Source) -> bool:
        """Start a backup in the background (POST /backup); False if one is running."""
        if not self._busy.acquire(blocking=False):
            return False

        def work() -> None:
            try:
                self._take(kind, source)
            finally:
                self._busy.release()

        threading.Thread(target=work, name="backup-now", daemon=True).start()
        return True

    def take(self, kind: str, source: Source) -> BackupOutcome:
        """Take one backup now, after any running one, in a child process; report it."""
        with self._busy:
            return self._take(kind, source)

    def _take(self, kind: str, source: Source) -> BackupOutcome:
        argv = [sys.executable, "-m", "pgwarden", "backup", "create"]
        argv += ["-c", str(self.config_path), "--type", kind, "-o", "json"]
        if source == "standby":
            argv.append("--from-standby")
        log.info("backup.scheduled_start", member=self.member, kind=kind, source=source)
        self.running = kind
        try:
            with self._lock:
                self._child = subprocess.Popen(
                    argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                )
            out, err = self._child.communicate()
            code = self._child.returncode
        finally:
            with self._lock:
                self._child = None
            self.running = None
        outcome = _outcome(kind, code, out, err, self.clock())
        self.last = outcome
        if outcome.ok:
            self.event("backup", {"member": self.member, **outcome.summary})
        else:
            log.error(
                "backup.scheduled_failed", member=self.member, kind=kind, reason=outcome.reason
            )
            self.event(
                "backup_failed", {"member": self.member, "kind": kind, "reason": outcome.reason}
            )
        return outcome


def _outcome(kind: str, code: int, out: str, err: str, now: datetime) -> BackupOutcome:
    if code == 0:
        try:
            summary = json.loads(out)
        except ValueError:
            summary = {}
        keys = ("id", "kind", "db_bytes", "stored_bytes", "duration_s", "from_standby", "expired")
        picked = {k: summary.get(k) for k in keys}
        return BackupOutcome(kind, True, now, summary.get("id"), None, picked)
    lines = [line for line in err.strip().splitlines() if line.startswith("error: ")]
    reason = lines[-1].removeprefix("error: ") if lines else f"exited with code {code}"
    return BackupOutcome(kind, False, now, None, reason, {})
