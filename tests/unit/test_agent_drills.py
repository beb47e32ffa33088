"""The agent's drill scheduler and event notifier, with small real child processes standing
in for `pgwarden drill run` and for the notification command."""

from __future__ import annotations

import json
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from pgwarden.agent.drills import DrillScheduler
from pgwarden.agent.notify import CommandOutlet, Notifier
from pgwarden.model import ClusterState, Leader, Lsn, MemberInfo, PgState, Role

NOW = datetime(2026, 12, 2, 17, 0, tzinfo=UTC)

REPORT = {
    "id": "20261202T170000D", "backup": "20261202T160000F", "ok": True, "rto_s": 3.2,
    "rpo_s": 1.5, "error": None,
    "checks": [{"name": "consistent", "ok": True, "detail": "recovery finished; queries run"}],
}  # fmt: skip


def fake_drill(tmp_path: Path, body: str) -> list[str]:
    """A stand-in for `pgwarden`: records its arguments, then runs `body`."""
    script = tmp_path / "fake_pgwarden.py"
    script.write_text(
        "import json, signal, sys, time\n"
        f"open({str(tmp_path / 'argv.json')!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
        + textwrap.dedent(body)
    )
    return [sys.executable, str(script)]


def member(name: str, role: Role) -> MemberInfo:
    return MemberInfo(name, role, PgState.RUNNING, 1, Lsn(0x3000000), None, "http://x", "x", 1)


CLUSTER = ClusterState(
    leader=Leader("node1"),
    members={"node1": member("node1", Role.PRIMARY), "node2": member("node2", Role.REPLICA)},
)


def scheduler(
    tmp_path: Path,
    body: str,
    events: list[tuple[str, dict[str, Any]]],
    me: str = "node2",
    cluster: ClusterState = CLUSTER,
    **options: Any,
) -> DrillScheduler:
    return DrillScheduler(
        config_path=tmp_path / "pgwarden.yml", member=me, schedule="* * * * *",
        configured_member=None, max_duration=options.pop("max_duration", 600),
        cluster=lambda: cluster, event=lambda kind, data: events.append((kind, data)),
        clock=lambda: NOW, command=fake_drill(tmp_path, body), **options,
    )  # fmt: skip


def test_a_passing_drill_is_reported_in_status_and_as_an_event(tmp_path: Path) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    drills = scheduler(tmp_path, f"print(json.dumps({REPORT!r}))", events)

    outcome = drills.run_due(NOW)

    assert outcome is not None and outcome.ok
    argv = json.loads((tmp_path / "argv.json").read_text())
    assert argv == ["drill", "run", "-c", str(tmp_path / "pgwarden.yml"), "-o", "json",
                    "--max-duration", "600"]  # fmt: skip
    expected = {"member": "node2", "id": REPORT["id"], "backup": REPORT["backup"],
                "rto_s": 3.2, "rpo_s": 1.5}  # fmt: skip
    assert events == [("drill", expected)]
    drills.clock = lambda: NOW + timedelta(seconds=90)
    assert drills.status() == {
        "running": False, "started_at": None, "schedule": "* * * * *",
        "last": {"ok": True, "id": REPORT["id"], "backup": REPORT["backup"], "rto_s": 3.2,
                 "rpo_s": 1.5, "failed_checks": [], "error": None,
                 "finished_at": NOW.isoformat(), "age_s": 90.0},
    }  # fmt: skip


def test_failed_checks_are_named_in_the_event(tmp_path: Path) -> None:
    report = dict(REPORT, ok=False, checks=[
        *REPORT["checks"],  # type: ignore[list-item]
        {"name": "too-many", "ok": False, "detail": "returned 1, above the maximum 0"},
    ])  # fmt: skip
    events: list[tuple[str, dict[str, Any]]] = []
    drills = scheduler(tmp_path, f"print(json.dumps({report!r})); sys.exit(1)", events)

    outcome = drills.take()

    assert not outcome.ok
    assert outcome.reason == "failed checks: too-many: returned 1, above the maximum 0"
    [(kind, data)] = events
    assert kind == "drill_failed"
    assert data["reason"] == outcome.reason and data["id"] == REPORT["id"]
    assert data["failed_checks"] == [
        {"name": "too-many", "detail": "returned 1, above the maximum 0"}
    ]
    last = drills.status()["last"]
    assert last["ok"] is False and last["failed_checks"] == data["failed_checks"]


def test_a_drill_that_cannot_start_reports_its_error_line(tmp_path: Path) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    body = (
        "print('error: there is no complete backup of cluster lab', file=sys.stderr)\nsys.exit(1)"
    )
    drills = scheduler(tmp_path, body, events)

    outcome = drills.take()

    assert (outcome.ok, outcome.id) == (False, None)
    assert events[0][1]["reason"] == "there is no complete backup of cluster lab"


def test_a_drill_past_its_time_limit_is_stopped_and_reported_failed(tmp_path: Path) -> None:
    # The child ignores its own limit; on SIGTERM it reports, as `drill run` does.
    body = f"""
        def stopped(*_):
            print(json.dumps(dict({REPORT!r}, ok=False, error="stopped by SIGTERM")))
            sys.exit(1)
        signal.signal(signal.SIGTERM, stopped)
        time.sleep(60)
    """
    events: list[tuple[str, dict[str, Any]]] = []
    drills = scheduler(tmp_path, body, events, max_duration=0.5, grace_s=0.5)

    started = time.monotonic()
    outcome = drills.take()

    assert time.monotonic() - started < 10
    assert not outcome.ok and outcome.id == REPORT["id"]
    assert outcome.error == (
        "the drill ran past its time limit (drill.max_duration: 0.5 s) and was stopped"
    )
    assert events[0][0] == "drill_failed" and events[0][1]["reason"] == outcome.error


def test_only_the_chosen_member_runs_it_and_the_leader_reports_a_skip(tmp_path: Path) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    on_primary = scheduler(tmp_path, f"print(json.dumps({REPORT!r}))", events, me="node1")
    assert on_primary.run_due(NOW) is None
    assert events == [] and not (tmp_path / "argv.json").exists()

    lonely = ClusterState(
        leader=Leader("node1"),
        members={"node1": member("node1", Role.PRIMARY),
                 "node2": MemberInfo("node2", Role.REPLICA, PgState.STOPPED, 1, None, None,
                                     "http://x", "x", 1)},
    )  # fmt: skip
    for me in ("node1", "node2"):
        assert scheduler(tmp_path, "", events, me=me, cluster=lonely).run_due(NOW) is None
    assert events == [
        ("drill_skipped", {"due": NOW.isoformat(), "reason": (
            "no replica streams now (node2: not running or not streaming); "
            "the primary node1 is spared")}),
    ]  # fmt: skip


def test_one_drill_at_a_time(tmp_path: Path) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    drills = scheduler(tmp_path, f"time.sleep(1)\nprint(json.dumps({REPORT!r}))", events)

    assert drills.start_now()
    assert not drills.start_now()
    deadline = time.monotonic() + 10
    while drills.status()["running"] is False and time.monotonic() < deadline:
        time.sleep(0.02)
    assert drills.status()["running"] is True
    while not events and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [kind for kind, _ in events] == ["drill"]
    assert drills.start_now()  # free again
    drills.stop()


# --- notifications --------------------------------------------------------------------


def wait_for(path: Path, lines: int, timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(found := path.read_text().splitlines()) >= lines:
            return found
        time.sleep(0.02)
    raise AssertionError(f"{path} did not get {lines} line(s)")


def recorder(tmp_path: Path) -> list[str]:
    out = tmp_path / "events.jsonl"
    code = f"import sys; open({str(out)!r}, 'a').write(sys.stdin.read())"
    return [sys.executable, "-c", code]


def test_the_command_gets_each_wanted_event_as_json_on_stdin(tmp_path: Path) -> None:
    outlet = CommandOutlet(recorder(tmp_path), ["drill_failed", "failover"], timeout=10)
    notifier = Notifier("lab", "node2", [outlet], clock=lambda: NOW)
    notifier.start()

    notifier.publish("drill", {"id": "x"})  # not wanted
    notifier.publish("drill_failed", {"reason": "failed checks: rows: too few"})
    notifier.publish("failover", {"new_leader": "node2", "old_leader": "node1"})

    found = [json.loads(line) for line in wait_for(tmp_path / "events.jsonl", 2)]
    notifier.stop()
    assert found == [
        {"kind": "drill_failed", "time": NOW.isoformat(), "member": "node2", "cluster": "lab",
         "data": {"reason": "failed checks: rows: too few"}},
        {"kind": "failover", "time": NOW.isoformat(), "member": "node2", "cluster": "lab",
         "data": {"new_leader": "node2", "old_leader": "node1"}},
    ]  # fmt: skip
    assert (notifier.delivered, notifier.failed) == (2, 0)


def test_a_failing_or_hanging_command_is_logged_and_never_blocks(tmp_path: Path) -> None:
    failing = CommandOutlet(
        [sys.executable, "-c", "import sys; print('pager down', file=sys.stderr); sys.exit(3)"],
        ["drill_failed"], timeout=10,
    )  # fmt: skip
    hanging = CommandOutlet(
        [sys.executable, "-c", "import time; time.sleep(30)"], ["drill_failed"], timeout=0.3
    )
    after = CommandOutlet(recorder(tmp_path), ["drill_failed"], timeout=10)
    notifier = Notifier("lab", "node2", [failing, hanging, after], clock=lambda: NOW)

    with capture_logs() as logged:
        notifier.start()
        started = time.monotonic()
        notifier.publish("drill_failed", {"reason": "r"})
        assert time.monotonic() - started < 0.1  # publishing never waits for an outlet
        wait_for(tmp_path / "events.jsonl", 1)
        notifier.stop()

    assert (notifier.delivered, notifier.failed) == (1, 2)
    failures = [e["error"] for e in logged if e["event"] == "notify.failed"]
    assert failures == [
        f"{sys.executable} exited with code 3: pager down",
        f"{sys.executable} ran past 0.3 s and was killed",
    ]


def test_a_stopping_agent_starts_no_drill_and_reports_no_failure(tmp_path: Path) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    drills = scheduler(tmp_path, f"print(json.dumps({REPORT!r}))", events)
    drills.stop()

    outcome = drills.take()

    assert not (tmp_path / "argv.json").exists()  # no child was started
    assert [kind for kind, _ in events] == ["drill_aborted"]
    assert drills.status()["last"] is None and outcome is not None
