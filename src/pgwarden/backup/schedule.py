"""PURE. When the next scheduled backup is due, and of which kind.

Cron expressions are evaluated in UTC. A full and an incremental schedule may coincide;
the full backup wins then (an incremental right after it would store nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from croniter import croniter

from pgwarden.backup.manifest import BackupKind


@dataclass(frozen=True)
class Due:
    at: datetime
    kind: BackupKind


def next_backup(full: str | None, incremental: str | None, after: datetime) -> Due | None:
    """The first backup due strictly after `after` (tz-aware), or None with no schedule."""
    if after.utcoffset() is None:
        raise ValueError("`after` must carry a time zone")
    start = after.astimezone(UTC)
    candidates: list[Due] = []
    if full is not None:
        candidates.append(Due(croniter(full, start).get_next(datetime), "full"))
    if incremental is not None:
        candidates.append(Due(croniter(incremental, start).get_next(datetime), "incr"))
    if not candidates:
        return None
    # Earliest first; at the same moment "full" sorts before "incr".
    return min(candidates, key=lambda due: (due.at, due.kind))
