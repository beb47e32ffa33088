"""GET /metrics: the agent's status in the Prometheus text format.

`metric_families(status, now)` is PURE: the dict the agent assembles on each scrape
(its `/status` plus the cluster name, the failover count, the newest backup and drill
read from storage, the drill scheduler's status) in, metric families out. Nothing is kept
between scrapes: `StatusCollector` calls the source every time, so values are live.

Reading storage on every scrape would make a scrape as slow as a listing of the bucket,
so `StoredSummary` reads the newest backup and drill report in the background, at most
once every `ttl` seconds, and scrapes see the last summary it read.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from pgwarden import __version__
from pgwarden.backup.manifest import is_backup_id
from pgwarden.logs import get_logger

log = get_logger("agent.metrics")

Status = Mapping[str, Any]
ROLES = ("primary", "replica", "unknown")
LABELS = ["cluster", "member"]


def metric_families(status: Status, now: float) -> list[Metric]:
    """The metric families for one scrape of a member's `status` at epoch time `now`.

    A value the agent does not know (no archiver, no backup seen yet, no drill) is left
    out rather than reported as 0, so alerts can tell "unknown" from "fine".
    """
    out = _Families(str(status.get("cluster") or ""), str(status.get("name") or ""))
    out.gauge("info", "The agent's version (always 1).", 1, version=__version__)
    _ha(out, status, now)
    _archive(out, _nested(status, "wal", "archive"), now)
    _backup(out, status, now)
    _drill(out, _newest_drill(status), now)
    scheduler = _nested(status, "drill")
    if scheduler is not None and isinstance(scheduler.get("running"), bool):
        out.gauge(
            "drill_running",
            "1 while this agent runs a scheduled restore drill.",
            int(scheduler["running"]),
        )
    return out.families()


def _ha(out: _Families, status: Status, now: float) -> None:
    role = status.get("role") if status.get("role") in ROLES else "unknown"
    for name in ROLES:
        out.gauge(
            "role",
            "1 for the role PostgreSQL runs in now, 0 for the others.",
            int(name == role),
            role=name,
        )
    out.gauge(
        "postgres_up",
        "1 if PostgreSQL runs and answers queries.",
        int(status.get("state") == "running"),
    )
    out.gauge(
        "leader",
        "1 if this member holds a fresh leader lease and runs as primary.",
        int(bool(status.get("holds_lease")) and role == "primary"),
    )
    out.gauge(
        "paused",
        "1 while the cluster is paused (no automatic failover).",
        int(bool(status.get("paused"))),
    )
    out.gauge(
        "lease_seconds_left",
        "Seconds until this member's lease deadline (it stops writes then unless "
        "renewed); only on the leader.",
        _number(status.get("lease_seconds_left")),
    )
    out.gauge("timeline", "PostgreSQL's current timeline.", _number(status.get("timeline")))
    lag = _number(status.get("lag_bytes"))
    out.gauge(
        "replication_lag_bytes",
        "Bytes of WAL this member is behind the leader's last reported position "
        "(0 on the primary).",
        lag,
    )
    if role == "replica" and lag is not None:
        replayed = _number(status.get("replay_time"))
        seconds = 0.0 if lag == 0 else (None if replayed is None else max(0.0, now - replayed))
        out.gauge(
            "replication_lag_seconds",
            "Seconds since the commit time of the last transaction this replica "
            "replayed; 0 when it has all the leader's WAL.",
            seconds,
        )
    failovers = _number(status.get("failovers"))
    if failovers is not None:
        out.counter(
            "failovers",
            "Promotions (failovers and switchovers) recorded in the cluster's timeline history.",
            failovers,
        )


def _archive(out: _Families, archive: Status | None, now: float) -> None:
    if archive is None:
        return
    archived_at = _number(archive.get("last_archived_at"))
    out.gauge(
        "archive_last_archived_age_seconds",
        "Seconds since this member last archived a WAL file; absent before its "
        "first (only the primary archives).",
        None if archived_at is None else max(0.0, now - archived_at),
    )
    out.gauge(
        "archive_pending_segments",
        "WAL files PostgreSQL has marked ready that are not archived yet.",
        _number(archive.get("pending_segments")),
    )
    out.gauge(
        "archive_lag_seconds",
        "Seconds the oldest WAL file waiting to be archived has waited (0: none waits).",
        _number(archive.get("lag_seconds")) or 0.0,
    )
    out.gauge(
        "archive_failing",
        "1 while WAL uploads fail.",
        int(archive.get("failing_since") is not None),
    )
    out.counter(
        "archive_failures",
        "Failed WAL uploads since the agent started.",
        _number(archive.get("failed")),
    )
    out.counter(
        "archived", "WAL files archived since the agent started.", _number(archive.get("archived"))
    )


def _backup(out: _Families, status: Status, now: float) -> None:
    stored = _nested(status, "stored")
    if stored is not None:
        read_at = _number(stored.get("read_at"))
        out.gauge(
            "storage_read_age_seconds",
            "Seconds since the newest backup and drill were read from storage "
            "(the agent reads them in the background every few minutes).",
            None if read_at is None else max(0.0, now - read_at),
        )
        out.gauge(
            "storage_read_ok",
            "1 if the last read of backups and drills from storage succeeded.",
            int(stored.get("error") is None),
        )
        out.gauge("backups", "Complete backups in storage.", _number(stored.get("backups")))
    backup = _nested(status, "stored", "backup")
    if backup is not None:
        kind = str(backup.get("kind") or "")
        finished = _epoch(backup.get("stop_time"))
        out.gauge(
            "backup_last_age_seconds",
            "Seconds since the newest complete backup in storage finished (any member took it).",
            None if finished is None else max(0.0, now - finished),
            kind=kind,
        )
        out.gauge(
            "backup_last_size_bytes",
            "Database bytes in the newest complete backup in storage.",
            _number(backup.get("db_bytes")),
            kind=kind,
        )
        out.gauge(
            "backup_last_stored_bytes",
            "Bytes the newest complete backup stored (an incremental backup reuses "
            "its parents' objects, which are not counted).",
            _number(backup.get("stored_bytes")),
            kind=kind,
        )
    scheduled = _nested(status, "backup", "last")
    if scheduled is not None:
        out.gauge(
            "backup_scheduled_last_success",
            "1 if the last backup this agent took on schedule or on request succeeded.",
            int(bool(scheduled.get("ok"))),
        )


def _newest_drill(status: Status) -> Status | None:
    """The newer of the newest stored drill report and the agent's own last drill."""
    found: list[Status] = []
    stored = _nested(status, "stored", "drill")
    if stored is not None:
        found.append(stored)
    agent = _nested(status, "drill")
    if agent is not None and isinstance(agent.get("last"), Mapping):
        found.append(agent["last"])
    dated = [(_epoch(d.get("finished_at")), d) for d in found if "ok" in d]
    dated = [(at, d) for at, d in dated if at is not None]
    if not dated:
        return None
    return max(dated, key=lambda pair: pair[0] or 0.0)[1]


def _drill(out: _Families, drill: Status | None, now: float) -> None:
    if drill is None:
        return
    finished = _epoch(drill.get("finished_at"))
    out.gauge(
        "drill_last_success",
        "1 if the newest restore drill passed, 0 if it failed.",
        int(bool(drill.get("ok"))),
    )
    out.gauge(
        "drill_last_age_seconds",
        "Seconds since the newest restore drill finished.",
        None if finished is None else max(0.0, now - finished),
    )
    out.gauge(
        "drill_last_rto_seconds",
        "Recovery time the newest restore drill measured (restore start to promoted).",
        _number(drill.get("rto_s")),
    )
    out.gauge(
        "drill_last_rpo_seconds",
        "Upper bound of the recovery point of the newest restore drill.",
        _number(drill.get("rpo_s")),
    )
    failed = drill.get("failed_checks")  # the drill scheduler lists them
    out.gauge(
        "drill_last_checks_failed",
        "Checks the newest restore drill failed.",
        float(len(failed)) if isinstance(failed, list) else _number(drill.get("checks_failed")),
    )


class _Families:
    """Metric families in the order first used, each sample labelled cluster and member."""

    def __init__(self, cluster: str, member: str) -> None:
        self.identity = [cluster, member]
        self._families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}

    def gauge(self, name: str, doc: str, value: float | None, **labels: str) -> None:
        self._add(GaugeMetricFamily, name, doc, value, labels)

    def counter(self, name: str, doc: str, value: float | None) -> None:
        self._add(CounterMetricFamily, name, doc, value, {})

    def _add(
        self,
        kind: type[GaugeMetricFamily] | type[CounterMetricFamily],
        name: str,
        doc: str,
        value: float | None,
        labels: dict[str, str],
    ) -> None:
        if value is None:
            return
        full = f"pgwarden_{name}"
        family = self._families.get(full)
        if family is None:
            family = kind(full, doc, labels=[*LABELS, *labels])
            self._families[full] = family
        family.add_metric([*self.identity, *labels.values()], float(value))

    def families(self) -> list[Metric]:
        return list(self._families.values())


def _nested(status: Status, *keys: str) -> Status | None:
    value: Any = status
    for key in keys:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value if isinstance(value, Mapping) else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _epoch(value: Any) -> float | None:
    """Epoch seconds from a number or an ISO 8601 text with a time zone."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
        return parsed.timestamp() if parsed.tzinfo is not None else None
    return _number(value)


class StatusCollector(Collector):
    """Reads the status source on every scrape; a scrape that fails yields nothing."""

    def __init__(self, source: Callable[[], Status], clock: Callable[[], float] = time.time):
        self.source = source
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        yield from metric_families(self.source(), self.clock())


def registry_for(source: Callable[[], Status]) -> CollectorRegistry:
    """A registry of its own (no process-wide state) holding one `StatusCollector`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(source))
    return registry


class StoredSummary:
    """The newest complete backup and drill report in storage, read in the background at
    most every `ttl` seconds; `get()` never waits for storage."""

    def __init__(self, read: Callable[[], dict[str, Any]], ttl: float = 300.0) -> None:
        self._read = read
        self.ttl = ttl
        self._lock = threading.Lock()
        self._summary: dict[str, Any] | None = None
        self._started: float | None = None  # monotonic start of the last read
        self._reading = False

    def get(self) -> dict[str, Any] | None:
        now = time.monotonic()
        with self._lock:
            stale = self._started is None or now - self._started >= self.ttl
            if stale and not self._reading:
                self._reading = True
                self._started = now
                threading.Thread(target=self._refresh, name="metrics-storage", daemon=True).start()
            return self._summary

    def _refresh(self) -> None:
        try:
            summary = self._read()
        except Exception as exc:  # noqa: BLE001 - any storage failure is reported, not raised
            log.warning("metrics.storage_read_failed", error=str(exc))
            with self._lock:
                previous = dict(self._summary or {})
            summary = {**previous, "error": str(exc)}
        with self._lock:
            self._summary = summary
            self._reading = False


def read_stored_summary(context: Any) -> dict[str, Any]:
    """One listing of the backups, the newest manifest, and the newest drill report.
    `context` is a `BackupContext`."""
    catalog = context.catalog
    layout = context.layout
    prefix = layout.backups_prefix
    complete: set[str] = set()
    sizes: dict[str, int] = {}
    for info in context.store.list(prefix):
        backup, _, rest = info.key[len(prefix) :].partition("/")
        if not is_backup_id(backup):
            continue
        sizes[backup] = sizes.get(backup, 0) + info.size
        if rest == "manifest.json":
            complete.add(backup)
    summary: dict[str, Any] = {"read_at": time.time(), "error": None, "backups": len(complete)}
    summary["backup"] = None
    if complete:
        newest = max(complete)
        manifest = catalog.load(newest)
        summary["backup"] = {
            "id": manifest.id,
            "kind": str(manifest.kind),
            "stop_time": manifest.stop_time.timestamp(),
            "db_bytes": manifest.db_bytes,
            "stored_bytes": sizes.get(newest, 0),
        }
    drills = [info.key for info in context.store.list(layout.drills_prefix)]
    summary["drill"] = None
    if drills:
        report = json.loads(context.store.get(max(drills)))
        keys = ("id", "ok", "finished_at", "rto_s", "rpo_s", "checks_failed", "backup")
        summary["drill"] = {key: report.get(key) for key in keys}
    return summary
