"""PURE. What the archive must hold: backfill after a promotion, and `pgwarden check`.

After a failover the new primary holds, in pg_wal, segments of the old timeline it
received by streaming but that the old primary may never have archived. `backfill` picks
the ones recovery along the new timeline's path needs: old-timeline segments before the
segment holding the switch point (that one is read from the new timeline, and the old
timeline's copy is archived as `.partial` by PostgreSQL itself). Recycled files with
old-timeline names beyond the switch are never chosen: they hold stale bytes.

`archive_gaps` follows the newest timeline's history from the oldest backup's first
segment to the newest archived segment and names every segment that is missing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pgwarden.wal.names import (
    HistoryEntry,
    TimelineSpan,
    continuity_gaps,
    kind_of,
    parse_segment_name,
    segment_name,
    segment_number,
    segment_on_path,
    segment_start_lsn,
    timeline_switches,
)


def backfill(
    names: Iterable[str], history: Sequence[HistoryEntry], timeline: int, segment_size: int
) -> list[str]:
    """Segment names in `names` (a pg_wal listing) that the new `timeline` needs from older
    timelines, oldest first."""
    path = timeline_switches(history, timeline)
    limits = {tl: segment_number(end, segment_size) for tl, _, end in path if end is not None}
    chosen = []
    for name in names:
        if kind_of(name) != "segment":
            continue
        tl, segno = parse_segment_name(name, segment_size)
        if tl in limits and segno < limits[tl]:
            chosen.append(name)
    return sorted(chosen)


@dataclass(frozen=True)
class Continuity:
    path: tuple[TimelineSpan, ...]
    first: str | None  # the first segment checked
    last: str | None  # the newest archived segment on the path
    checked: int
    gaps: tuple[str, ...]


def archive_gaps(
    stored: Iterable[str],
    history: Sequence[HistoryEntry],
    newest_timeline: int,
    start: tuple[int, int] | None,
    segment_size: int,
) -> Continuity:
    """Continuity along the path to `newest_timeline` from `start` ((timeline, segno) of the
    oldest backup's first segment; None: from the oldest archived segment on the path) up
    to the newest archived segment on the path."""
    path = timeline_switches(history, newest_timeline) if history else [(newest_timeline, 0, None)]
    names = [n for n in stored if kind_of(n) == "segment"]
    # Only segments recovery along the path reads count: an old timeline's segments past
    # its switch (archived by an old primary that ran on) are another history.
    mine = []
    for name in names:
        timeline, segno = parse_segment_name(name, segment_size)
        owner, _ = segment_on_path(path, segment_start_lsn(segno, segment_size), segment_size)
        if owner == timeline:
            mine.append((timeline, segno))
    if not mine:
        return Continuity(tuple(path), None, None, 0, ())
    if start is None:
        start = min(mine, key=lambda p: p[1])
    end = max(segno for _, segno in mine)
    if end < start[1]:
        return Continuity(tuple(path), None, None, 0, ())
    gaps = continuity_gaps(names, start, end, path, segment_size)
    first = segment_name(start[0], start[1], segment_size)
    newest_tl = next(tl for tl, segno in mine if segno == end)
    last = segment_name(newest_tl, end, segment_size)
    return Continuity(tuple(path), first, last, end - start[1] + 1, tuple(gaps))
