"""Configuration sections for recovery: backups and retention, WAL, drills, events.

Kept apart from config.py (which assembles the whole file) so each module stays small;
config.py re-exports every class here.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, field_validator, model_validator

from pgwarden.config_section import Section as _Section
from pgwarden.config_types import (
    AbsolutePath,
    Count,
    Cron,
    Days,
    Flag,
    Loc,
    Name,
    Number,
    ScalarValue,
    Seconds,
    Text,
    format_number,
    invalid,
    problems,
)

# --- backup and drill ------------------------------------------------------------------


class Retention(_Section):
    """Keep a backup while either rule needs it; never delete the newest one.

    `full_count`: the newest N full backups are kept. `window_days`: every moment of the last
    N days stays restorable, so the newest backup older than the window is kept too.
    """

    # Keep the newest N full backups (and the incrementals built on them).
    full_count: Count | None = Field(default=None, ge=1)
    # Keep every moment of the last N days restorable.
    window_days: Days | None = None

    @model_validator(mode="after")
    def _some_rule(self) -> Self:
        if self.full_count is None and self.window_days is None:
            raise invalid("must set full_count, window_days or both")
        return self


class Compression(_Section):
    """How backup objects are compressed; WAL is compressed with the same algorithm at level 1."""

    # zstd, or none to store objects uncompressed.
    algorithm: Literal["zstd", "none"] = "zstd"
    # The zstd level: higher is smaller and slower.
    level: Count = Field(default=3, ge=1, le=22)

    @model_validator(mode="after")
    def _level_needs_zstd(self) -> Self:
        if self.algorithm == "none" and "level" in self.model_fields_set:
            raise problems([(("level",), "is only used with algorithm 'zstd'")])
        return self


class BackupSettings(_Section):
    """Base backups: schedules, who takes them, retention, compression, encryption."""

    # Cron expressions are evaluated in UTC; null turns scheduled backups off.
    schedule: Cron | None = "0 1 * * *"
    # Incremental backups between the full ones (files changed since the latest backup).
    incremental_schedule: Cron | None = None
    # The member that takes scheduled backups; null: the leader. Naming a replica spares
    # the primary (it backs up from the standby; the primary archives the WAL).
    member: Name | None = None
    # Which backups to keep (applied after each backup and by `pgwarden backup expire`).
    retention: Retention = Field(default_factory=lambda: Retention(full_count=7))
    compression: Compression = Field(default_factory=Compression)
    # None: backups and WAL are stored unencrypted (the bucket's own encryption aside).
    encryption_key_file: AbsolutePath | None = None


class WalSettings(_Section):
    """WAL archiving and fetching through the agent."""

    # archive_command = pgwarden wal-push on every member (only the primary archives) and
    # restore_command = pgwarden wal-fetch. Off: no archive, so backups cannot complete.
    archive: Flag = True
    # PostgreSQL's archive_mode: "on", only the primary archives; "always", every standby
    # archives what it receives too (pushes are idempotent), so WAL the primary streamed
    # but never archived before it died is stored all the same.
    archive_mode: Literal["on", "always"] = "on"
    # The agent's WAL socket for wal-push/wal-fetch; null: `<data_dir>.wal.sock`.
    socket: AbsolutePath | None = None
    # Protects the primary's disk when storage fails for long: past this many bytes of
    # WAL waiting in pg_wal, segments are reported archived WITHOUT being stored (a loud
    # `archive_dropped` event; the archive has a gap until the next base backup).
    # null: never; WAL waits in pg_wal however long storage is down.
    max_backlog_bytes: Count | None = Field(default=None, ge=16 * 1024 * 1024)


class DrillCheck(_Section):
    """A query run on the restored copy; its single value must meet the expectation."""

    # The check's name in the drill report.
    name: Name
    # A query returning one value.
    sql: Text
    # The value must be at least this.
    min: Number | None = None
    # The value must be at most this.
    max: Number | None = None
    # The value must equal this.
    equals: ScalarValue | None = None

    @model_validator(mode="after")
    def _expectation(self) -> Self:
        if self.min is None and self.max is None and self.equals is None:
            raise invalid("needs an expectation: min, max, equals or a combination")
        found: list[tuple[Loc, str]] = []
        if self.min is not None and self.max is not None and self.min > self.max:
            found.append((("max",), f"must not be below min ({format_number(self.min)})"))
        if self.equals is not None and (self.min is not None or self.max is not None):
            low = float("-inf") if self.min is None else self.min
            high = float("inf") if self.max is None else self.max
            if isinstance(self.equals, bool | str) or not low <= self.equals <= high:
                found.append((("equals",), "contradicts min/max, so the check could never pass"))
        if found:
            raise problems(found)
        return self


class DrillSettings(_Section):
    """Scheduled restore drills: when, where, and what they check."""

    # Restore drills weekly, Sunday 03:00 UTC; null turns scheduled drills off.
    schedule: Cron | None = "0 3 * * 0"
    # SQL checks run on the restored copy, besides the built-in ones.
    checks: tuple[DrillCheck, ...] = ()
    # The member that runs scheduled drills (a replica or a dedicated drill host); null:
    # the running, streaming replica with the lowest name (the primary only when alone).
    member: Name | None = None
    # Where the scratch instance is restored; null: the system's temp directory.
    scratch_dir: AbsolutePath | None = None
    # A drill still running after this long is stopped and reported failed.
    max_duration: Seconds = Field(default=4 * 3600, gt=0)
    # How deep pg_amcheck looks: "standard", heap and B-tree pages; "heapallindexed", also
    # that every heap tuple has its index entries; "thorough", also parent/child and
    # root-to-leaf B-tree checks (slower, stronger locks: fine on the scratch copy).
    amcheck_depth: Literal["standard", "heapallindexed", "thorough"] = "standard"

    @model_validator(mode="after")
    def _unique_names(self) -> Self:
        seen: set[str] = set()
        found: list[tuple[Loc, str]] = []
        for index, check in enumerate(self.checks):
            if check.name in seen:
                found.append((("checks", index, "name"), f"{check.name!r} is used twice"))
            seen.add(check.name)
        if found:
            raise problems(found)
        return self


# --- events ---------------------------------------------------------------------------


class EventSettings(_Section):
    """What the agent does with the cluster events it records, beyond the store."""

    # A program run (without a shell) for each event of `notify_kinds` the agent records,
    # the event as one JSON object on stdin; null: none.
    notify_command: tuple[Text, ...] | None = None
    # The event kinds the notification command runs for.
    notify_kinds: tuple[Name, ...] = (
        "failover", "fence", "drill_failed", "drill_skipped", "backup_failed",
        "archive_failing", "archive_dropped", "archive_conflict", "archive_backfill_failed",
    )  # fmt: skip
    # A notification command still running after this long is killed.
    notify_timeout: Seconds = Field(default=30, gt=0)

    @field_validator("notify_command")
    @classmethod
    def _argv(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and not value:
            raise ValueError("must name the program to run (or be null)")
        if value is not None and not value[0].startswith("/"):
            raise ValueError(f"must start with an absolute program path, got {value[0]!r}")
        return value
