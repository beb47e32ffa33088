"""Agent status dicts for the /metrics tests: one with every value the metrics read."""

from __future__ import annotations

from typing import Any

from prometheus_client.core import Metric

from pgwarden.agent.metrics import metric_families

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def full_status(**changes: Any) -> dict[str, Any]:
    """A replica's metrics status with every optional part present (archive, stored
    backup and drill, scheduled backup, the drill scheduler's status)."""
    status: dict[str, Any] = {
        "cluster": "main",
        "name": "db-2",
        "state": "running",
        "role": "replica",
        "timeline": 3,
        "wal_position": "0/3000148",
        "lag_bytes": 4096,
        "replay_time": NOW - 2.5,
        "leader": "db-1",
        "holds_lease": False,
        "lease_seconds_left": None,
        "paused": False,
        "decision": "no action: I am db-2, a healthy replica following db-1",
        "ticked_at": 123.0,
        "loop_wait": 1.0,
        "failovers": 2,
        "backup": {
            "running": None,
            "last": {
                "kind": "full",
                "ok": True,
                "finished_at": "2027-01-15T01:00:12+00:00",
                "backup": "20270115T010000F",
                "reason": None,
            },
        },
        "wal": {
            "archive": {
                "last_archived": "000000030000000000000002",
                "last_archived_at": NOW - 30.0,
                "archived": 17,
                "failed": 1,
                "last_failure": "storage down",
                "failing_since": None,
                "pending_segments": 2,
                "lag_seconds": 3.5,
            },
            "precompressed": {"used": 1, "redone": 0},
            "fetch": {"served": 0, "prefetch_hits": 0},
        },
        "stored": {
            "read_at": NOW - 60.0,
            "error": None,
            "backups": 4,
            "backup": {
                "id": "20270115T010000F",
                "kind": "full",
                "stop_time": NOW - 7 * 3600.0,
                "db_bytes": 1_000_000,
                "stored_bytes": 250_000,
            },
            "drill": {
                "id": "20270114T030000D",
                "ok": True,
                "finished_at": "2027-01-14T03:05:00+00:00",
                "rto_s": 21.4,
                "rpo_s": 7.8,
                "checks_failed": 0,
                "backup": "20270114T010000F",
            },
        },
        "drill": {  # agent/drills.py DrillScheduler.status()
            "running": False,
            "started_at": None,
            "schedule": "0 3 * * *",
            "last": {
                "ok": False,
                "id": "20270115T030000D",
                "backup": "20270115T010000F",
                "rto_s": 30.0,
                "rpo_s": 5.0,
                "failed_checks": [{"name": "amcheck", "detail": "block 3 offset 2"}],
                "error": None,
                "finished_at": "2027-01-15T03:04:00+00:00",
                "age_s": 17760.0,
            },
        },
    }
    status.update(changes)
    return status


def sample_names(families: list[Metric]) -> set[str]:
    """Every sample name (as exposed: counters end in `_total`)."""
    return {sample.name for family in families for sample in family.samples}


def all_sample_names() -> set[str]:
    """What a member that knows everything exposes, primary and replica together."""
    replica = metric_families(full_status(), NOW)
    primary = metric_families(
        full_status(role="primary", holds_lease=True, lease_seconds_left=2.5, lag_bytes=0),
        NOW,
    )
    return sample_names(replica) | sample_names(primary)
