"""PURE. Which member runs the cluster's scheduled drill, when, and within which limits.

Every agent evaluates the same schedule and the same choice over its view of the cluster;
only the member chosen runs the drill. The choice spares the primary: the configured
`drill.member`, else the running, streaming replica with the lowest name, and the primary
only when it is the cluster's only member.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from croniter import croniter

from pgwarden.model import MemberInfo, PgState, Role

# Space a drill needs beyond the restored files: WAL restored for replay (PostgreSQL keeps
# up to max_wal_size, 1 GiB by default, between restartpoints) and a tenth for growth.
DISK_MARGIN_BYTES = 1024**3
DISK_MARGIN_RATIO = 0.10


@dataclass(frozen=True)
class MemberChoice:
    member: str | None  # None: no member may run it now
    reason: str


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str


def next_drill(schedule: str | None, after: datetime) -> datetime | None:
    """The first drill due strictly after `after` (tz-aware, cron in UTC); None: no schedule."""
    if after.utcoffset() is None:
        raise ValueError("`after` must carry a time zone")
    if schedule is None:
        return None
    due: datetime = croniter(schedule, after.astimezone(UTC)).get_next(datetime)
    return due


def streaming_replica(info: MemberInfo) -> bool:
    """A replica whose postgres runs and has received WAL from a stream."""
    return (
        info.role is Role.REPLICA
        and info.state is PgState.RUNNING
        and info.received_lsn is not None
    )


def choose_drill_member(
    members: Mapping[str, MemberInfo], leader: str | None, configured: str | None
) -> MemberChoice:
    """The member that runs the drill, and why; never the primary while it has replicas."""
    if configured is not None:
        present = configured in members
        return MemberChoice(
            configured if present else None,
            f"drill.member names {configured}"
            + ("" if present else ", which is not a member of the cluster now"),
        )
    replicas = sorted(
        name for name, info in members.items() if name != leader and streaming_replica(info)
    )
    if replicas:
        return MemberChoice(
            replicas[0], f"{replicas[0]} is the running, streaming replica with the lowest name"
        )
    if leader is None:
        return MemberChoice(None, "the cluster has no leader and no streaming replica")
    others = sorted(set(members) - {leader})
    if others:
        return MemberChoice(
            None,
            f"no replica streams now ({', '.join(others)}: not running or not streaming); "
            f"the primary {leader} is spared",
        )
    if leader in members and members[leader].state is PgState.RUNNING:
        return MemberChoice(leader, f"{leader} is the only member of the cluster")
    return MemberChoice(None, f"{leader}, the only member, does not run")


def disk_needed(db_bytes: int) -> int:
    """Free bytes a drill of a backup of `db_bytes` needs in its scratch filesystem."""
    return db_bytes + int(db_bytes * DISK_MARGIN_RATIO) + DISK_MARGIN_BYTES


def disk_verdict(free_bytes: int, db_bytes: int, where: str) -> Verdict:
    """Whether `free_bytes` at `where` fit a restore of `db_bytes` plus the margin."""
    needed = disk_needed(db_bytes)
    if free_bytes >= needed:
        return Verdict(True, f"{_size(free_bytes)} free in {where}, {_size(needed)} needed")
    return Verdict(
        False,
        f"not enough disk space for the drill in {where}: {_size(free_bytes)} free, "
        f"{_size(needed)} needed (the backup's {_size(db_bytes)} of data, a tenth more, "
        f"and {_size(DISK_MARGIN_BYTES)} for WAL replay)",
    )


def time_verdict(elapsed_s: float, max_duration_s: float) -> Verdict:
    """Whether a drill running for `elapsed_s` may go on."""
    if elapsed_s < max_duration_s:
        return Verdict(True, f"{elapsed_s:.0f} s of at most {max_duration_s:g} s")
    return Verdict(
        False,
        f"the drill ran past its time limit (drill.max_duration: {max_duration_s:g} s) "
        "and was stopped",
    )


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def failed_checks_sentence(failed: Iterable[Mapping[str, Any]]) -> str:
    """`failed checks: NAME: DETAIL; ...` for checks given as {name, detail} mappings."""
    return "failed checks: " + "; ".join(f"{c['name']}: {c['detail']}" for c in failed)


AMCHECK_OPTIONS = {
    "standard": (),
    "heapallindexed": ("--heapallindexed",),
    "thorough": ("--heapallindexed", "--parent-check", "--rootdescend"),
}


def amcheck_options(depth: str) -> tuple[str, ...]:
    """pg_amcheck's options for `drill.amcheck_depth`."""
    return AMCHECK_OPTIONS[depth]
