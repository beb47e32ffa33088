"""The mapping from an agent's status to Prometheus metrics, and its exposition."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from metrics_samples import NOW, all_sample_names, full_status
from pgwarden import __version__
from pgwarden.agent.api import ApiServer
from pgwarden.agent.metrics import (
    StoredSummary,
    metric_families,
    read_stored_summary,
    registry_for,
)

Key = tuple[str, tuple[tuple[str, str], ...]]


def values(families: list[Metric]) -> dict[Key, float]:
    """sample name and its labels other than cluster/member -> value."""
    found: dict[Key, float] = {}
    for family in families:
        for sample in family.samples:
            labels = tuple(
                sorted((k, v) for k, v in sample.labels.items() if k not in ("cluster", "member"))
            )
            found[(sample.name, labels)] = sample.value
    return found


def one(status: dict[str, Any], name: str, **labels: str) -> float | None:
    return values(metric_families(status, NOW)).get((name, tuple(sorted(labels.items()))))


def names(status: dict[str, Any]) -> set[str]:
    return {name for name, _ in values(metric_families(status, NOW))}


def test_every_sample_carries_the_cluster_and_member() -> None:
    for family in metric_families(full_status(), NOW):
        assert family.name.startswith("pgwarden_")
        assert family.documentation
        for sample in family.samples:
            assert sample.labels["cluster"] == "main"
            assert sample.labels["member"] == "db-2"


def test_a_replica_reports_its_role_lag_and_timeline() -> None:
    status = full_status()
    assert one(status, "pgwarden_role", role="replica") == 1
    assert one(status, "pgwarden_role", role="primary") == 0
    assert one(status, "pgwarden_role", role="unknown") == 0
    assert one(status, "pgwarden_leader") == 0
    assert one(status, "pgwarden_postgres_up") == 1
    assert one(status, "pgwarden_paused") == 0
    assert one(status, "pgwarden_timeline") == 3
    assert one(status, "pgwarden_replication_lag_bytes") == 4096
    assert one(status, "pgwarden_replication_lag_seconds") == 2.5
    assert one(status, "pgwarden_failovers_total") == 2
    assert one(status, "pgwarden_info", version=__version__) == 1
    assert "pgwarden_lease_seconds_left" not in names(status)


def test_the_leader_reports_its_lease() -> None:
    status = full_status(role="primary", holds_lease=True, lease_seconds_left=2.75, lag_bytes=0)
    assert one(status, "pgwarden_role", role="primary") == 1
    assert one(status, "pgwarden_role", role="replica") == 0
    assert one(status, "pgwarden_leader") == 1
    assert one(status, "pgwarden_lease_seconds_left") == 2.75
    assert one(status, "pgwarden_replication_lag_bytes") == 0
    assert "pgwarden_replication_lag_seconds" not in names(status)


@pytest.mark.parametrize(
    ("role", "holds_lease", "leader"),
    [("primary", True, 1), ("primary", False, 0), ("replica", True, 0), ("unknown", True, 0)],
)
def test_leader_needs_the_lease_and_the_primary_role(
    role: str, holds_lease: bool, leader: int
) -> None:
    assert one(full_status(role=role, holds_lease=holds_lease), "pgwarden_leader") == leader


@pytest.mark.parametrize(
    ("lag_bytes", "replay_time", "seconds"),
    [
        (0, NOW - 3600.0, 0.0),  # caught up: an idle primary is no lag
        (0, None, 0.0),
        (10, NOW - 3600.0, 3600.0),
        (10, NOW + 5.0, 0.0),  # clocks apart: never negative
        (10, None, None),  # nothing replayed yet: unknown
        (None, NOW - 1.0, None),  # no leader position: unknown
    ],
)
def test_replication_lag_seconds(
    lag_bytes: int | None, replay_time: float | None, seconds: float | None
) -> None:
    status = full_status(lag_bytes=lag_bytes, replay_time=replay_time)
    assert one(status, "pgwarden_replication_lag_seconds") == seconds


def test_a_starting_agent_reports_only_what_it_knows() -> None:
    status = {"name": "db-3", "state": "starting", "ticked_at": None, "cluster": "main"}
    assert names(status) == {
        "pgwarden_info",
        "pgwarden_role",
        "pgwarden_postgres_up",
        "pgwarden_leader",
        "pgwarden_paused",
    }
    assert one(status, "pgwarden_role", role="unknown") == 1
    assert one(status, "pgwarden_postgres_up") == 0


@pytest.mark.parametrize("role", ["demoting", None, 3])
def test_an_unexpected_role_is_unknown(role: object) -> None:
    assert one(full_status(role=role), "pgwarden_role", role="unknown") == 1


@pytest.mark.parametrize("state", ["stopped", "not answering", "starting", None])
def test_postgres_is_up_only_when_running(state: str | None) -> None:
    assert one(full_status(state=state), "pgwarden_postgres_up") == 0


def test_values_of_the_wrong_type_are_left_out() -> None:
    status = full_status(lag_bytes=True, timeline="3", failovers=None, lease_seconds_left="1")
    assert not {
        "pgwarden_replication_lag_bytes",
        "pgwarden_replication_lag_seconds",
        "pgwarden_timeline",
        "pgwarden_failovers_total",
        "pgwarden_lease_seconds_left",
    } & names(status)


def test_archive_figures() -> None:
    status = full_status()
    assert one(status, "pgwarden_archive_last_archived_age_seconds") == 30.0
    assert one(status, "pgwarden_archive_pending_segments") == 2
    assert one(status, "pgwarden_archive_lag_seconds") == 3.5
    assert one(status, "pgwarden_archive_failing") == 0
    assert one(status, "pgwarden_archive_failures_total") == 1
    assert one(status, "pgwarden_archived_total") == 17


def test_archive_failing_and_idle() -> None:
    status = full_status()
    archive = status["wal"]["archive"]
    archive.update(failing_since=NOW - 100.0, lag_seconds=None, last_archived_at=None)
    assert one(status, "pgwarden_archive_failing") == 1
    assert one(status, "pgwarden_archive_lag_seconds") == 0.0
    assert "pgwarden_archive_last_archived_age_seconds" not in names(status)


@pytest.mark.parametrize("wal", [None, {}, {"archive": None}, {"archive": "x"}, "x"])
def test_no_archiver_no_archive_metrics(wal: object) -> None:
    assert not any(name.startswith("pgwarden_archive") for name in names(full_status(wal=wal)))


def test_newest_stored_backup() -> None:
    status = full_status()
    assert one(status, "pgwarden_backup_last_age_seconds", kind="full") == 7 * 3600.0
    assert one(status, "pgwarden_backup_last_size_bytes", kind="full") == 1_000_000
    assert one(status, "pgwarden_backup_last_stored_bytes", kind="full") == 250_000
    assert one(status, "pgwarden_backups") == 4
    assert one(status, "pgwarden_storage_read_age_seconds") == 60.0
    assert one(status, "pgwarden_storage_read_ok") == 1
    assert one(status, "pgwarden_backup_scheduled_last_success") == 1


def test_a_failed_storage_read_is_reported_with_the_values_read_before() -> None:
    status = full_status()
    status["stored"]["error"] = "storage unreachable"
    assert one(status, "pgwarden_storage_read_ok") == 0
    assert one(status, "pgwarden_backup_last_age_seconds", kind="full") == 7 * 3600.0


def test_no_backup_in_storage() -> None:
    status = full_status()
    status["stored"]["backup"] = None
    status["stored"]["backups"] = 0
    assert one(status, "pgwarden_backups") == 0
    assert not {"pgwarden_backup_last_age_seconds", "pgwarden_backup_last_size_bytes"} & names(
        status
    )


def test_storage_not_read_yet() -> None:
    status = full_status(stored=None, backup=None)
    assert not any(
        name.startswith(("pgwarden_backup", "pgwarden_storage")) for name in names(status)
    )


def test_a_failed_scheduled_backup() -> None:
    status = full_status()
    status["backup"]["last"]["ok"] = False
    assert one(status, "pgwarden_backup_scheduled_last_success") == 0
    status["backup"]["last"] = None
    assert "pgwarden_backup_scheduled_last_success" not in names(status)


def test_the_newest_drill_wins_agent_or_stored() -> None:
    status = full_status()  # the agent's own drill (failed) is newer than the stored one
    assert one(status, "pgwarden_drill_last_success") == 0
    assert one(status, "pgwarden_drill_last_age_seconds") == 4 * 3600 + 56 * 60
    assert one(status, "pgwarden_drill_last_rto_seconds") == 30.0
    assert one(status, "pgwarden_drill_last_rpo_seconds") == 5.0
    assert one(status, "pgwarden_drill_last_checks_failed") == 1
    status["drill"]["last"]["finished_at"] = "2027-01-13T00:00:00+00:00"
    assert one(status, "pgwarden_drill_last_success") == 1
    assert one(status, "pgwarden_drill_last_rto_seconds") == 21.4
    assert one(status, "pgwarden_drill_last_age_seconds") == 28 * 3600 + 55 * 60


def test_a_running_drill() -> None:
    status = full_status()
    assert one(status, "pgwarden_drill_running") == 0
    status["drill"].update(running=True, started_at="2027-01-15T07:59:00+00:00")
    assert one(status, "pgwarden_drill_running") == 1
    status["drill"]["running"] = "yes"
    assert "pgwarden_drill_running" not in names(status)


def test_a_drill_that_failed_with_an_error_and_no_checks() -> None:
    status = full_status(stored=None)
    status["drill"]["last"].update(failed_checks=[], error="the backup did not restore")
    assert one(status, "pgwarden_drill_last_success") == 0
    assert one(status, "pgwarden_drill_last_checks_failed") == 0


@pytest.mark.parametrize(
    "drill",
    [
        None,
        "idle",
        [],
        {},
        {"running": True, "last": None},
        {"last": None},
        {"last": {"finished_at": "2027-01-15T03:04:00+00:00"}},  # no result
        {"last": {"ok": False, "finished_at": "not a time"}},
        {"last": {"ok": False, "finished_at": "2027-01-15T03:04:00"}},  # no time zone
    ],
)
def test_the_drill_status_is_read_defensively(drill: object) -> None:
    status = full_status(drill=drill)
    assert one(status, "pgwarden_drill_last_success") == 1  # the stored report
    status["stored"]["drill"] = None
    assert not any(name.startswith("pgwarden_drill_last") for name in names(status))


def test_the_drill_status_as_a_report_with_an_epoch_time() -> None:
    drill = {"last": {"ok": True, "finished_at": NOW - 10.0, "rto_s": 1.5}}
    status = full_status(drill=drill, stored=None)
    assert one(status, "pgwarden_drill_last_success") == 1
    assert one(status, "pgwarden_drill_last_age_seconds") == 10.0
    assert one(status, "pgwarden_drill_last_rto_seconds") == 1.5
    assert "pgwarden_drill_last_checks_failed" not in names(status)


def test_the_exposition_parses_back_to_the_same_values() -> None:
    status = full_status()
    text = generate_latest(registry_for(lambda: status)).decode()
    parsed = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    expected = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in metric_families(status, time.time())
        for sample in family.samples
        if "age_seconds" not in sample.name and "lag_seconds" not in sample.name
    }
    assert expected.items() <= parsed.items()
    assert {name for name, _ in parsed} == all_sample_names() - {"pgwarden_lease_seconds_left"}


def test_each_scrape_reads_the_status_again() -> None:
    status = full_status()
    registry = registry_for(lambda: status)
    assert 'pgwarden_role{cluster="main",member="db-2",role="replica"} 1.0' in (
        generate_latest(registry).decode()
    )
    status.update(role="primary", holds_lease=True)
    text = generate_latest(registry).decode()
    assert 'pgwarden_role{cluster="main",member="db-2",role="primary"} 1.0' in text
    assert 'pgwarden_leader{cluster="main",member="db-2"} 1.0' in text


def test_registries_are_separate() -> None:
    first = registry_for(lambda: full_status(name="db-1"))
    second = registry_for(lambda: full_status(name="db-2"))
    assert 'member="db-2"' not in generate_latest(first).decode()
    assert 'member="db-1"' not in generate_latest(second).decode()


# --------------------------------------------------------------------- StoredSummary
def test_stored_summary_reads_in_the_background_at_most_every_ttl() -> None:
    calls: list[int] = []
    release = threading.Event()

    def read() -> dict[str, Any]:
        release.wait(5)
        calls.append(1)
        return {"backups": len(calls), "error": None}

    stored = StoredSummary(read, ttl=0.3)
    assert stored.get() is None  # never waits for storage
    assert stored.get() is None
    release.set()
    deadline = time.monotonic() + 5
    while stored.get() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stored.get() == {"backups": 1, "error": None}
    assert len(calls) == 1  # within the ttl: no second read
    time.sleep(0.35)
    stored.get()
    deadline = time.monotonic() + 5
    while (stored.get() or {}).get("backups") != 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stored.get() == {"backups": 2, "error": None}


def test_stored_summary_keeps_the_last_values_when_a_read_fails() -> None:
    answers: list[Any] = [{"backups": 3, "error": None}, OSError("storage unreachable")]

    def read() -> dict[str, Any]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return dict(answer)

    stored = StoredSummary(read, ttl=0.0)
    stored.get()
    wait_for(lambda: stored.get() is not None and stored.get() != {})
    wait_for(lambda: (stored.get() or {}).get("error") is not None)
    assert stored.get() == {"backups": 3, "error": "storage unreachable"}


def wait_for(condition: Any) -> None:
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


@dataclass
class _Info:
    key: str
    size: int


@dataclass
class _Manifest:
    id: str
    kind: str
    stop_time: datetime
    db_bytes: int


class _Store:
    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects

    def list(self, prefix: str) -> list[_Info]:
        return [_Info(k, len(v)) for k, v in sorted(self.objects.items()) if k.startswith(prefix)]

    def get(self, key: str) -> bytes:
        return self.objects[key]


class _Layout:
    backups_prefix = "main/basebackups/"
    drills_prefix = "main/drills/"


class _Catalog:
    def load(self, backup_id: str) -> _Manifest:
        stop = datetime(2027, 1, 15, 1, 0, 12, tzinfo=UTC)
        return _Manifest(backup_id, "incr", stop, 9000)


@dataclass
class _Context:
    store: _Store
    layout: _Layout
    catalog: _Catalog


def test_read_stored_summary_takes_the_newest_complete_backup_and_drill() -> None:
    store = _Store(
        {
            "main/basebackups/20270114T010000F/manifest.json": b"m" * 10,
            "main/basebackups/20270114T010000F/data.0": b"x" * 1000,
            "main/basebackups/20270115T010000I/manifest.json": b"m" * 10,
            "main/basebackups/20270115T010000I/data.0": b"x" * 90,
            "main/basebackups/20270116T010000F/data.0": b"x" * 5,  # incomplete: no manifest
            "main/basebackups/not-a-backup/manifest.json": b"",
            "main/drills/20270113T030000D.json": b'{"ok": false, "finished_at": "x"}',
            "main/drills/20270114T030000D.json": (
                b'{"id": "20270114T030000D", "ok": true, "rto_s": 2.0, "rpo_s": 1.0,'
                b' "finished_at": "2027-01-14T03:05:00+00:00", "checks_failed": 0,'
                b' "checks": [], "backup": "20270114T010000F"}'
            ),
        }
    )
    summary = read_stored_summary(_Context(store, _Layout(), _Catalog()))
    assert summary["error"] is None
    assert summary["backups"] == 2
    assert summary["backup"] == {
        "id": "20270115T010000I",
        "kind": "incr",
        "stop_time": datetime(2027, 1, 15, 1, 0, 12, tzinfo=UTC).timestamp(),
        "db_bytes": 9000,
        "stored_bytes": 100,
    }
    assert summary["drill"] == {
        "id": "20270114T030000D",
        "ok": True,
        "finished_at": "2027-01-14T03:05:00+00:00",
        "rto_s": 2.0,
        "rpo_s": 1.0,
        "checks_failed": 0,
        "backup": "20270114T010000F",
    }


def test_read_stored_summary_of_an_empty_store() -> None:
    summary = read_stored_summary(_Context(_Store({}), _Layout(), _Catalog()))
    assert (summary["backups"], summary["backup"], summary["drill"]) == (0, None, None)


# --------------------------------------------------------------------- the HTTP endpoint
def serve(source: Any) -> ApiServer:
    api = ApiServer("127.0.0.1", 0, dict, dict, dict, metrics=source)
    api.start()
    return api


def test_get_metrics_serves_the_text_format() -> None:
    api = serve(full_status)
    try:
        url = f"http://127.0.0.1:{api.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            text = response.read().decode()
        families = {f.name for f in text_string_to_metric_families(text)}
        assert {"pgwarden_role", "pgwarden_failovers", "pgwarden_leader"} <= families
    finally:
        api.stop()


def test_a_failing_status_source_answers_503() -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("no status")

    api = serve(broken)
    try:
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(f"http://127.0.0.1:{api.port}/metrics", timeout=5)
        assert raised.value.code == 503
        assert b"no status" in raised.value.read()
    finally:
        api.stop()


def test_without_a_source_metrics_is_not_found() -> None:
    api = ApiServer("127.0.0.1", 0, dict, dict, dict)
    api.start()
    try:
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(f"http://127.0.0.1:{api.port}/metrics", timeout=5)
        assert raised.value.code == 404
    finally:
        api.stop()
