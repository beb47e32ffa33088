"""Applying the retention policy to storage: expired backups, old WAL, abandoned backups.

The decisions are `retention.plan_retention`'s (pure); this module lists, asks, and
deletes. A backup is deleted manifest first, so it stops being offered before any of its
objects go. WAL goes only below the first segment the oldest kept backup needs, and
timeline history files are never deleted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from pgwarden.backup.catalog import Catalog
from pgwarden.backup.manifest import Manifest, parse_backup_id
from pgwarden.backup.retention import BackupRecord, Policy, RetentionPlan, plan_retention
from pgwarden.backup.retention import wal_to_expire as wal_names_to_expire
from pgwarden.logs import get_logger
from pgwarden.wal.names import parse_segment_name

log = get_logger("backup.expire")

# A backup without a manifest this old is abandoned (its run failed or was killed), not
# running: no base backup pgwarden takes runs for a day.
ABANDONED_AFTER = timedelta(hours=24)


@dataclass(frozen=True)
class ExpireResult:
    plan: RetentionPlan
    backups_deleted: tuple[str, ...]
    abandoned_deleted: tuple[str, ...]
    wal_deleted: int


def record(manifest: Manifest) -> BackupRecord:
    _, start_segno = parse_segment_name(manifest.start_wal, manifest.segment_size)
    return BackupRecord(
        id=manifest.id,
        kind=manifest.kind,
        references=manifest.references,
        stop_time=manifest.stop_time,
        timeline=manifest.timeline,
        start_segno=start_segno,
    )


def plan(manifests: Sequence[Manifest], policy: Policy, now: datetime) -> RetentionPlan:
    return plan_retention([record(m) for m in manifests], policy, now)


def expire(
    catalog: Catalog, policy: Policy, now: datetime, *, dry_run: bool = False
) -> ExpireResult:
    scanned = catalog.scan()
    manifests = catalog.manifests(scanned.complete)
    decided = plan(manifests, policy, now)
    abandoned = tuple(
        ident for ident in scanned.incomplete if now - parse_backup_id(ident)[0] > ABANDONED_AFTER
    )
    segment_size = manifests[-1].segment_size if manifests else 0
    wal_keys: list[str] = []
    if decided.wal_keep_from_segno is not None and segment_size:
        infos = list(catalog.store.list(catalog.layout.wal_prefix))
        by_name = {info.key.rsplit("/", 1)[-1]: info.key for info in infos}
        names = wal_names_to_expire(by_name, decided.wal_keep_from_segno, segment_size)
        wal_keys = [by_name[name] for name in names]
    if dry_run:
        return ExpireResult(decided, decided.expire, abandoned, len(wal_keys))
    # Newest first: a backup is deleted only after every backup that used its files.
    for ident in reversed(decided.expire):
        catalog.store.delete(catalog.layout.manifest(ident))
        catalog.delete_objects(ident)
        log.info("backup.expired", backup=ident)
    for ident in abandoned:
        catalog.delete_objects(ident)
        log.info("backup.abandoned_removed", backup=ident)
    catalog.store.delete_many(wal_keys)
    if wal_keys:
        log.info("wal.expired", segments=len(wal_keys), keep_from=decided.wal_keep_from_segno)
    return ExpireResult(decided, decided.expire, abandoned, len(wal_keys))
