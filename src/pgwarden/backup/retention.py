"""PURE. `plan_retention(backups, policy, now) -> RetentionPlan`: which backups and WAL stay.

A backup is kept while any rule needs it, with the first reason that applies:
1. The newest backup is never deleted.
2. `full_count=N`: the newest N full backups.
3. `window_days=D`: every backup that stopped in the last D days, so each moment of the
   window can be restored ...
4. ... and the newest backup that stopped before the window, which restores its start.
5. `full_count=N`: every incremental whose references lead (transitively) to a kept full.
6. Everything a kept backup references, transitively, so a restore never breaks.

WAL older than the first segment any kept backup needs may be deleted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Literal

from pgwarden.wal.names import kind_of, parse_segment_name, segments_per_xlogid


@dataclass(frozen=True)
class BackupRecord:
    """What retention needs to know about one base backup in the catalog."""

    id: str  # sorts by time, e.g. "20261124T065015F"
    kind: Literal["full", "incr"]
    references: frozenset[str]  # earlier backups whose stored objects this one uses
    stop_time: datetime  # tz-aware: the backup is restorable from this moment
    timeline: int
    start_segno: int  # segment of the start LSN: the first WAL segment the backup needs


@dataclass(frozen=True)
class Policy:
    """Keep the newest `full_count` full backups and/or every moment of `window_days`."""

    full_count: int | None
    window_days: float | None

    def __post_init__(self) -> None:
        if self.full_count is None and self.window_days is None:
            raise ValueError("a retention policy needs full_count, window_days or both")
        if self.full_count is not None and self.full_count < 1:
            raise ValueError(f"full_count must be at least 1, not {self.full_count}")
        if self.window_days is not None and not (
            math.isfinite(self.window_days) and self.window_days > 0
        ):
            raise ValueError(f"window_days must be a positive number, not {self.window_days}")


@dataclass(frozen=True)
class RetentionPlan:
    """Backups to keep and expire (oldest first), the WAL boundary, and why each is kept."""

    keep: tuple[str, ...]
    expire: tuple[str, ...]
    wal_keep_from_segno: int | None  # lower segnos (any timeline) may go; None keeps all WAL
    reasons: Mapping[str, str]  # kept id -> one short phrase


def _age(backup: BackupRecord) -> tuple[datetime, str]:
    return backup.stop_time, backup.id


def _catalog(backups: Sequence[BackupRecord]) -> dict[str, BackupRecord]:
    by_id: dict[str, BackupRecord] = {}
    for backup in backups:
        if backup.id in by_id:
            raise ValueError(f"backup id {backup.id} appears more than once in the catalog")
        if backup.kind not in ("full", "incr"):
            raise ValueError(f"backup {backup.id} has unknown kind {backup.kind!r}")
        if backup.stop_time.utcoffset() is None:
            raise ValueError(f"backup {backup.id} has a stop_time without a time zone")
        by_id[backup.id] = backup
    for backup in backups:
        for ref in sorted(backup.references):
            if ref not in by_id:
                raise ValueError(
                    f"backup {backup.id} references {ref}, which is not in the catalog"
                )
            # Older-only references keep the graph acyclic and make one newest-first pass
            # enough to keep every dependency.
            if _age(by_id[ref]) >= _age(backup):
                raise ValueError(f"backup {backup.id} references {ref}, which is not older than it")
    return by_id


def _depends_on(backup: BackupRecord, by_id: Mapping[str, BackupRecord]) -> set[str]:
    seen: set[str] = set()
    pending = list(backup.references)
    while pending:
        ref = pending.pop()
        if ref not in seen:
            seen.add(ref)
            pending.extend(by_id[ref].references)
    return seen


def _window_cutoff(now: datetime, window_days: float) -> datetime | None:
    try:
        return now - timedelta(days=window_days)
    except OverflowError:
        return None  # the window reaches back before year 1: every backup is inside it


def _newest_fulls(ordered: Sequence[BackupRecord], count: int) -> dict[str, str]:
    phrase = "the newest full backup" if count == 1 else f"one of the {count} newest full backups"
    fulls = [b.id for b in ordered if b.kind == "full"]
    return dict.fromkeys(fulls[-count:], phrase)


def _window(ordered: Sequence[BackupRecord], days: float, now: datetime) -> dict[str, str]:
    window = f"{days:g}-day window"
    cutoff = _window_cutoff(now, days)
    before = [b for b in ordered if cutoff is not None and b.stop_time < cutoff]
    reasons = {b.id: f"inside the {window}" for b in ordered[len(before) :]}
    if before:
        reasons[before[-1].id] = f"restores the start of the {window}"
    return reasons


def _increments_of(
    ordered: Sequence[BackupRecord], full_ids: Sequence[str], by_id: Mapping[str, BackupRecord]
) -> dict[str, str]:
    reasons: dict[str, str] = {}
    for backup in ordered:
        if backup.kind == "incr":
            chain = _depends_on(backup, by_id)
            full = next((f for f in reversed(full_ids) if f in chain), None)
            if full is not None:
                reasons[backup.id] = f"incremental on kept full backup {full}"
    return reasons


def plan_retention(backups: Sequence[BackupRecord], policy: Policy, now: datetime) -> RetentionPlan:
    """Decide which backups to keep and expire at `now` (tz-aware) under `policy`."""
    if now.utcoffset() is None:
        raise ValueError("now must carry a time zone")
    by_id = _catalog(backups)
    ordered = sorted(backups, key=_age)
    if not ordered:
        return RetentionPlan((), (), None, MappingProxyType({}))

    # Rules in priority order: a backup keeps the first reason that applies to it.
    rules: list[dict[str, str]] = [{ordered[-1].id: "newest backup"}]
    fulls: dict[str, str] = {}
    if policy.full_count is not None:
        fulls = _newest_fulls(ordered, policy.full_count)
        rules.append(fulls)
    if policy.window_days is not None:
        rules.append(_window(ordered, policy.window_days, now))
    rules.append(_increments_of(ordered, list(fulls), by_id))
    reasons: dict[str, str] = {}
    for rule in rules:
        for backup_id, reason in rule.items():
            reasons.setdefault(backup_id, reason)
    for backup in reversed(ordered):
        if backup.id in reasons:
            for ref in sorted(backup.references):
                reasons.setdefault(ref, f"referenced by {backup.id}")

    keep = tuple(b.id for b in ordered if b.id in reasons)
    expire = tuple(b.id for b in ordered if b.id not in reasons)
    wal_keep_from = min(by_id[backup_id].start_segno for backup_id in keep)
    ordered_reasons = {backup_id: reasons[backup_id] for backup_id in keep}
    return RetentionPlan(keep, expire, wal_keep_from, MappingProxyType(ordered_reasons))


def wal_to_expire(
    names: Iterable[str], keep_from_segno: int | None, segment_size: int
) -> list[str]:
    """Segment and `.partial` names below `keep_from_segno`, sorted; never history files.

    Names this segment size could not produce are left alone for a person to look at.
    """
    segments_per_xlogid(segment_size)  # a bad size must fail loudly, not expire nothing
    if keep_from_segno is None:
        return []
    expired: set[str] = set()
    for name in names:
        kind = kind_of(name)
        if kind not in ("segment", "partial"):
            continue
        try:
            _timeline, segno = parse_segment_name(name.removesuffix(".partial"), segment_size)
        except ValueError:
            continue
        if segno < keep_from_segno:
            expired.add(name)
    return sorted(expired)
