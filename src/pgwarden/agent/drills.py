"""Scheduled restore drills, run by one member of the cluster, one at a time.

Every agent follows `drill.schedule`; when a drill is due, each evaluates the same pure
choice (`drill.plan.choose_drill_member`) over its view of the cluster and only the
member chosen runs it, as a child process (`pgwarden drill run`), so the restore, the
scratch PostgreSQL and the checks never touch the HA loop. The child checks free space
first and stops itself at `drill.max_duration`; past that plus a grace period the agent
stops it (SIGTERM, then SIGKILL). The outcome goes to the agent's status and to the
cluster's events (`drill`, `drill_failed`; `drill_skipped`, recorded by the leader, when no
member may run it). POST /drill starts one now.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pgwarden.drill.plan import (
    MemberChoice,
    choose_drill_member,
    failed_checks_sentence,
    next_drill,
    time_verdict,
)
from pgwarden.logs import get_logger
from pgwarden.model import ClusterState
from pgwarden.peers import request_json

if TYPE_CHECKING:
    from pgwarden.agent.main import Agent

log = get_logger("agent.drills")

# The child stops itself at max_duration; the agent steps in only if it has not.
GRACE_S = 60.0
TERM_WAIT_S = 30.0


@dataclass(frozen=True)
class DrillOutcome:
    ok: bool
    finished_at: datetime
    id: str | None
    backup: str | None
    rto_s: float | None
    rpo_s: float | None
    failed_checks: tuple[dict[str, str], ...]
    error: str | None

    @property
    def reason(self) -> str | None:
        """Why the drill failed, in one sentence; None if it passed."""
        if self.ok:
            return None
        if self.error is not None:
            return self.error
        return failed_checks_sentence(self.failed_checks)

    def to_json(self, now: datetime) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "id": self.id,
            "backup": self.backup,
            "rto_s": self.rto_s,
            "rpo_s": self.rpo_s,
            "failed_checks": list(self.failed_checks),
            "error": self.error,
            "finished_at": self.finished_at.isoformat(),
            "age_s": round((now - self.finished_at).total_seconds(), 1),
        }


class DrillScheduler:
    """Runs `pgwarden drill run` when the schedule says so and this member is the one."""

    def __init__(
        self,
        *,
        config_path: Path,
        member: str,
        schedule: str | None,
        configured_member: str | None,
        max_duration: float,
        cluster: Callable[[], ClusterState],
        event: Callable[[str, dict[str, Any]], None],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        command: list[str] | None = None,
        grace_s: float = GRACE_S,
    ) -> None:
        self.config_path = config_path
        self.member = member
        self.schedule = schedule
        self.configured_member = configured_member
        self.max_duration = max_duration
        self.cluster = cluster
        self.event = event
        self.clock = clock
        self.command = command or [sys.executable, "-m", "pgwarden"]
        self.grace_s = grace_s
        self.last: DrillOutcome | None = None
        self.started_at: datetime | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._busy = threading.Lock()  # one drill at a time, scheduled or requested
        self._child: subprocess.Popen[str] | None = None
        self._thread = threading.Thread(target=self._run, name="drills", daemon=True)

    def start(self) -> None:
        if self.schedule is not None:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            child = self._child
        if child is not None and child.poll() is None:
            child.terminate()  # the drill stops its scratch instance, removes it, reports
            try:
                child.wait(TERM_WAIT_S)
            except subprocess.TimeoutExpired:
                child.kill()
        if self._thread.is_alive():
            self._thread.join(timeout=TERM_WAIT_S)

    def status(self) -> dict[str, Any]:
        now = self.clock()
        started = self.started_at
        return {
            "running": started is not None,
            "started_at": None if started is None else started.isoformat(),
            "schedule": self.schedule,
            "last": None if self.last is None else self.last.to_json(now),
        }

    def choice(self) -> MemberChoice:
        """Which member runs the cluster's drill now, in this agent's view."""
        cluster = self.cluster()
        leader = cluster.leader.name if cluster.leader else None
        return choose_drill_member(cluster.members, leader, self.configured_member)

    def _run(self) -> None:
        while not self._stop.is_set():
            due = next_drill(self.schedule, self.clock())
            if due is None:
                return
            while not self._stop.is_set():
                left = (due - self.clock()).total_seconds()
                if left <= 0:
                    break
                self._stop.wait(min(left, 60.0))
            if self._stop.is_set():
                return
            self.run_due(due)

    def run_due(self, due: datetime) -> DrillOutcome | None:
        """The drill due at `due`: run it if this member is the one chosen."""
        choice = self.choice()
        if choice.member == self.member:
            log.info("drill.mine", member=self.member, reason=choice.reason)
            return self.take()
        log.info("drill.not_mine", member=self.member, chosen=choice.member, reason=choice.reason)
        cluster = self.cluster()
        if choice.member is None and cluster.leader and cluster.leader.name == self.member:
            self.event("drill_skipped", {"due": due.isoformat(), "reason": choice.reason})
        return None

    def start_now(self) -> bool:
        """Start a drill on this member in the background; False if one is running."""
        if not self._busy.acquire(blocking=False):
            return False

        def work() -> None:
            try:
                self._take()
            finally:
                self._busy.release()

        threading.Thread(target=work, name="drill-now", daemon=True).start()
        return True

    def take(self) -> DrillOutcome:
        """Run one drill now, after any running one, in a child process; report it."""
        with self._busy:
            return self._take()

    def _take(self) -> DrillOutcome:
        argv = [*self.command, "drill", "run", "-c", str(self.config_path), "-o", "json"]
        argv += ["--max-duration", f"{self.max_duration:g}"]
        log.info("drill.started", member=self.member)
        self.started_at = self.clock()
        began = time.monotonic()
        stopped: str | None = None
        try:
            with self._lock:
                self._child = self._spawn(argv)
            out, err, stopped = self._wait(self._child, began)
            code = self._child.returncode
        except OSError as exc:
            out, err, code = "", f"error: cannot start the drill: {exc}", 1
        finally:
            with self._lock:
                self._child = None
            self.started_at = None
        outcome = _outcome(code, out, err, self.clock(), stopped)
        if self._stop.is_set():
            # Aborted by the agent's own shutdown: not a verdict on the backups, so neither a
            # failure event nor the last result (the drill stored no report either).
            log.warning("drill.aborted", member=self.member, reason=outcome.reason)
            self.event("drill_aborted", {"member": self.member, "reason": outcome.reason})
            return outcome
        self.last = outcome
        if outcome.ok:
            log.info("drill.passed", member=self.member, id=outcome.id, rto_s=outcome.rto_s)
            self.event("drill", {
                "member": self.member, "id": outcome.id, "backup": outcome.backup,
                "rto_s": outcome.rto_s, "rpo_s": outcome.rpo_s,
            })  # fmt: skip
        else:
            log.error("drill.failed", member=self.member, id=outcome.id, reason=outcome.reason)
            self.event("drill_failed", {
                "member": self.member, "id": outcome.id, "backup": outcome.backup,
                "reason": outcome.reason, "failed_checks": list(outcome.failed_checks),
                "error": outcome.error,
            })  # fmt: skip
        return outcome

    def _spawn(self, argv: list[str]) -> subprocess.Popen[str]:
        """The drill's child process (called under the lock `stop` takes)."""
        if self._stop.is_set():  # the agent is stopping: start nothing it would orphan
            raise OSError("the agent is stopping")
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip

    def _wait(self, child: subprocess.Popen[str], began: float) -> tuple[str, str, str | None]:
        """The child's output; past the limit and grace it is stopped, and why is returned."""
        limit = self.max_duration + self.grace_s
        try:
            out, err = child.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            pass
        else:
            return out, err, None
        reason = time_verdict(time.monotonic() - began, self.max_duration).reason
        log.error("drill.overdue", member=self.member, reason=reason)
        child.terminate()
        try:
            out, err = child.communicate(timeout=TERM_WAIT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            out, err = child.communicate()
        return out, err, reason


def _outcome(code: int, out: str, err: str, now: datetime, stopped: str | None) -> DrillOutcome:
    try:
        report = json.loads(out) if out.strip() else None
    except ValueError:
        report = None
    if isinstance(report, dict) and "checks" in report:
        failed = tuple(
            {"name": str(c["name"]), "detail": str(c["detail"])}
            for c in report["checks"]
            if not c.get("ok")
        )
        error = stopped or report.get("error")
        return DrillOutcome(
            ok=code == 0 and bool(report.get("ok")) and stopped is None, finished_at=now,
            id=report.get("id"), backup=report.get("backup"), rto_s=report.get("rto_s"),
            rpo_s=report.get("rpo_s"), failed_checks=failed, error=error,
        )  # fmt: skip
    lines = [line for line in err.strip().splitlines() if line.startswith("error: ")]
    error = stopped or (lines[-1].removeprefix("error: ") if lines else f"exited with code {code}")
    return DrillOutcome(False, now, None, None, None, None, (), error)


def drill_handler(agent: Agent) -> Callable[[dict[str, Any]], tuple[int, Any]]:
    """POST /drill: start the cluster's drill now on the member the plan chooses (this
    agent forwards the request to it), or on this member with `{"here": true}`."""

    def post_drill(body: dict[str, Any]) -> tuple[int, Any]:
        scheduler = agent.drills
        if scheduler is None:
            return 409, {"error": f"{agent.me} runs without a configuration file to drill with"}
        if body.get("here"):
            member, reason = agent.me, "asked to run it here"
        else:
            choice = scheduler.choice()
            if choice.member is None:
                return 409, {"error": f"no member may run a drill now: {choice.reason}"}
            member, reason = choice.member, choice.reason
        if member == agent.me:
            if not scheduler.start_now():
                return 409, {"error": f"a drill is already running on {agent.me}"}
            return 202, {"result": f"drill started on {agent.me}", "member": member,
                         "reason": reason}  # fmt: skip
        return _forward(agent, member, reason)

    return post_drill


def _forward(agent: Agent, member: str, reason: str) -> tuple[int, Any]:
    """Ask `member`'s agent to run the drill itself."""
    info = agent.loop.cluster.members.get(member)
    if info is None:
        return 409, {"error": f"{member} would run the drill but is not a member now"}
    token_file = agent.settings.api.token_file
    token = Path(token_file).read_text().strip() if token_file else None
    code, answer = request_json(
        f"{info.api_url}/drill", body={"here": True}, token=token, method="POST",
        timeout=10.0,
    )  # fmt: skip
    if code == 0:
        return 503, {"error": f"{member} would run the drill but its agent did not answer"}
    if isinstance(answer, dict):
        answer = {**answer, "reason": reason}
    return code, answer
