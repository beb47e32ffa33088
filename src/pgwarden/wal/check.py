"""`pgwarden check`: is every WAL segment recovery needs in the archive?"""

from __future__ import annotations

from dataclasses import dataclass

from pgwarden.backup.context import BackupContext
from pgwarden.backup.manifest import Manifest
from pgwarden.backup.verify import Problem, missing_wal
from pgwarden.codec import decode_bytes
from pgwarden.wal.continuity import Continuity, archive_gaps
from pgwarden.wal.names import (
    DEFAULT_SEGMENT_SIZE,
    HistoryEntry,
    kind_of,
    parse_history,
    parse_history_file_name,
    parse_segment_name,
)


@dataclass(frozen=True)
class CheckReport:
    continuity: Continuity
    oldest_backup: str | None
    backup_problems: tuple[Problem, ...]
    history_files: int
    segments: int

    @property
    def ok(self) -> bool:
        """Recovery has what it needs: WAL on the newest timeline's path (an empty archive,
        or one looked for in the wrong place, is no success), no gap, every backup's WAL."""
        return (
            self.continuity.first is not None
            and not self.continuity.gaps
            and not self.backup_problems
        )


def check_archive(context: BackupContext, since: Manifest | None = None) -> CheckReport:
    """Continuity from the oldest backup (or from `since`, a backup about to be restored)
    to the newest archived segment, and every backup's own WAL range."""
    store, layout = context.store, context.layout
    manifests = [since] if since is not None else context.catalog.manifests()
    segment_size = manifests[-1].segment_size if manifests else DEFAULT_SEGMENT_SIZE
    names = [info.key.rsplit("/", 1)[-1] for info in store.list(layout.wal_prefix)]
    histories = sorted(
        (parse_history_file_name(n) for n in names if kind_of(n) == "history"), reverse=True
    )
    segments = [n for n in names if kind_of(n) == "segment"]
    newest = 1
    if histories:
        newest = histories[0]
    if segments:
        newest = max(newest, *(parse_segment_name(n, segment_size)[0] for n in segments))
    history: tuple[HistoryEntry, ...] = ()
    if newest in histories:
        raw = store.get(layout.wal_history(f"{newest:08X}.history"))
        history = parse_history(decode_bytes(raw, keys=context.key).decode())
    start = None
    if manifests:
        start = parse_segment_name(manifests[0].start_wal, manifests[0].segment_size)
    try:
        continuity = archive_gaps(segments, history, newest, start, segment_size)
    except ValueError:
        # The oldest backup is on a branch the newest timeline does not descend from.
        continuity = archive_gaps(segments, history, newest, None, segment_size)
    problems = tuple(p for m in manifests for p in missing_wal(store, layout, m))
    return CheckReport(
        continuity,
        manifests[0].id if manifests else None,
        problems,
        len(histories),
        len(segments),
    )
