"""PURE. Point-in-time recovery targets: which backup reaches them, and the settings.

A target is one of a time, an LSN, a transaction id, a restore point name, or
`immediate` (the end of the backup itself), with what to do on reaching it (promote,
pause, shutdown) and which timeline to follow. The backup chosen is the newest one that
is consistent at or before the target: its stop time (or stop LSN) must not be after it.
A target that no backup can reach (before the oldest backup) is refused with the reason.
For a transaction id or a restore point name, nothing in the catalog says when they
happened: the newest backup is used unless one is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pgwarden.backup.manifest import Manifest
from pgwarden.errors import PgwardenError
from pgwarden.model import Lsn
from pgwarden.postgres.conf import quote_value

TargetKind = Literal["time", "lsn", "xid", "name", "immediate"]
Action = Literal["promote", "pause", "shutdown"]


class TargetError(PgwardenError):
    """The target is malformed, or no backup plus archived WAL can reach it."""


@dataclass(frozen=True)
class RecoveryTarget:
    kind: TargetKind | None = None  # None: replay the whole archive
    value: str = ""
    action: Action = "promote"
    timeline: str = "latest"  # latest | current | a number

    def settings(self) -> dict[str, str]:
        """postgresql.conf settings (values quoted for the file)."""
        found: dict[str, str] = {}
        if self.kind == "immediate":
            found["recovery_target"] = "'immediate'"
        elif self.kind is not None:
            found[f"recovery_target_{self.kind}"] = quote_value(self.value)
        if self.kind is not None:
            found["recovery_target_action"] = quote_value(self.action)
        found["recovery_target_timeline"] = quote_value(self.timeline)
        return found


def parse_lsn(text: str) -> int:
    try:
        return int(Lsn.parse(text))
    except ValueError:
        raise TargetError(f"--target-lsn {text!r} is not a WAL position like 0/3000028") from None


def parse_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise TargetError(
            f"--target-time {text!r} is not a time like 2026-11-24T06:50:15+00:00"
        ) from None
    if moment.tzinfo is None:
        raise TargetError(f"--target-time {text!r} needs a time zone (e.g. +00:00 or Z)")
    return moment


def check_target(target: RecoveryTarget) -> None:
    """Refuse malformed values with one sentence."""
    if target.kind == "time":
        parse_time(target.value)
    elif target.kind == "lsn":
        parse_lsn(target.value)
    elif target.kind == "xid" and not (target.value.isdigit() and int(target.value) > 2):
        raise TargetError(f"--target-xid {target.value!r} is not a transaction id")
    elif target.kind == "name" and not target.value:
        raise TargetError("--target-name needs the name of a restore point")
    timeline = target.timeline
    if timeline not in ("latest", "current") and not (timeline.isdigit() and int(timeline) > 0):
        raise TargetError(
            f"--target-timeline {timeline!r} must be latest, current or a timeline number"
        )


def choose_backup(manifests: Sequence[Manifest], target: RecoveryTarget) -> Manifest:
    """The newest complete backup that is consistent at or before the target."""
    check_target(target)
    if not manifests:
        raise TargetError("there is no complete backup to restore")
    ordered = sorted(manifests, key=lambda m: m.id)
    if target.kind == "time":
        moment = parse_time(target.value)
        fits = [m for m in ordered if m.stop_time <= moment]
        if not fits:
            raise TargetError(
                f"--target-time {target.value} is before the oldest backup is consistent "
                f"({ordered[0].id}, at {ordered[0].stop_time.isoformat()}); no backup reaches it"
            )
        return fits[-1]
    if target.kind == "lsn":
        position = parse_lsn(target.value)
        fits = [m for m in ordered if m.stop_lsn <= position]
        if not fits:
            raise TargetError(
                f"--target-lsn {target.value} is before the oldest backup is consistent "
                f"({ordered[0].id}); no backup reaches it"
            )
        return fits[-1]
    if target.timeline.isdigit():
        on_timeline = [m for m in ordered if m.timeline <= int(target.timeline)]
        if not on_timeline:
            raise TargetError(
                f"timeline {target.timeline} is older than every backup "
                f"(the oldest is on timeline {ordered[0].timeline})"
            )
        return on_timeline[-1]
    return ordered[-1]


def check_backup_reaches(manifest: Manifest, target: RecoveryTarget) -> None:
    """Refuse a backup given with --backup that is consistent only after the target."""
    check_target(target)
    if target.kind == "time" and manifest.stop_time > parse_time(target.value):
        raise TargetError(
            f"backup {manifest.id} is consistent only from {manifest.stop_time.isoformat()}, "
            f"after --target-time {target.value}"
        )
    if target.kind == "lsn" and manifest.stop_lsn > parse_lsn(target.value):
        raise TargetError(
            f"backup {manifest.id} is consistent only after --target-lsn {target.value}"
        )


def check_archive_reaches(
    target: RecoveryTarget,
    timelines: Sequence[int],
    last_segment: str | None,
    segment_size: int,
) -> None:
    """Refuse an LSN beyond the newest archived segment, and a timeline the archive's
    history does not know (`timelines`: those on the newest timeline's path)."""
    from pgwarden.wal.names import parse_segment_name, segment_number  # noqa: PLC0415

    if target.timeline.isdigit() and int(target.timeline) not in timelines:
        known = ", ".join(str(t) for t in timelines) or "none"
        raise TargetError(
            f"timeline {target.timeline} is not in the archive's history (timelines: {known})"
        )
    if target.kind == "lsn":
        if last_segment is None:
            raise TargetError("the archive holds no WAL segment: no target can be reached")
        _, last = parse_segment_name(last_segment, segment_size)
        if segment_number(parse_lsn(target.value), segment_size) > last:
            raise TargetError(
                f"--target-lsn {target.value} is beyond the end of the archive (the newest "
                f"archived segment is {last_segment})"
            )
