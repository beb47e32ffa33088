"""PURE. PostgreSQL WAL naming: segment numbers and names, timeline histories, continuity.

Standard library only: the archive_command/restore_command hot path imports this module.

Timeline rule used throughout (as in PostgreSQL's `XLogFileReadAnyTLI`): a segment is
read from the newest timeline on the path whose first segment is at or before it. When a
timeline begins in the middle of a segment, its first segment is a copy of the parent's
WAL up to the switch point followed by its own, so that segment comes from the NEW
timeline; the parent's copy is archived only as `.partial`. When the switch point lies
exactly on a segment boundary, the parent's last segment is complete and the child
starts with the next one. Either way the child owns segment `switch_lsn // segment_size`.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024

_XLOGID_SPAN = 0x1_0000_0000  # bytes of WAL per value of the middle 8 hex digits
_MAX_UINT32 = 0xFFFF_FFFF
_LSN_LIMIT = 1 << 64
_MIN_SEGMENT_SIZE = 1024 * 1024
_MAX_SEGMENT_SIZE = 1024 * 1024 * 1024

# PostgreSQL prints names with %08X: uppercase only, so lowercase names are not its.
_SEGMENT = re.compile(r"[0-9A-F]{24}")
_PARTIAL = re.compile(r"[0-9A-F]{24}\.partial")
_HISTORY = re.compile(r"[0-9A-F]{8}\.history")
_BACKUP_LABEL = re.compile(r"[0-9A-F]{24}\.[0-9A-F]{8}\.backup")
_HISTORY_LINE = re.compile(r"([0-9]+)\s+([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})(?:\s+(.*))?")

WalFileKind: TypeAlias = Literal["segment", "partial", "history", "backup_label", "unknown"]
TimelineSpan: TypeAlias = tuple[int, int, int | None]
"""(timeline, begin_lsn, end_lsn or None for the newest): one step of a timeline path."""


def _size_text(segment_size: int) -> str:
    if segment_size % _MAX_SEGMENT_SIZE == 0:
        return f"{segment_size // _MAX_SEGMENT_SIZE} GiB"
    return f"{segment_size // _MIN_SEGMENT_SIZE} MiB"


def _check_segment_size(segment_size: int) -> None:
    power_of_two = segment_size > 0 and segment_size & (segment_size - 1) == 0
    if not (power_of_two and _MIN_SEGMENT_SIZE <= segment_size <= _MAX_SEGMENT_SIZE):
        raise ValueError(
            f"WAL segment size must be a power of two from 1 MiB to 1 GiB, not {segment_size}"
        )


def _check_timeline(timeline: int) -> None:
    if not 1 <= timeline <= _MAX_UINT32:
        raise ValueError(f"timeline must be from 1 to {_MAX_UINT32}, not {timeline}")


def _lsn_text(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & _MAX_UINT32:X}"


def segments_per_xlogid(segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    """How many segments share one value of a name's middle 8 hex digits."""
    _check_segment_size(segment_size)
    return _XLOGID_SPAN // segment_size


def segment_number(lsn: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    """The number of the segment that holds the byte at `lsn`."""
    _check_segment_size(segment_size)
    if not 0 <= lsn < _LSN_LIMIT:
        raise ValueError(f"a WAL position must be a 64-bit unsigned integer, not {lsn}")
    return lsn // segment_size


def segment_start_lsn(segno: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    """The WAL position of the first byte of segment `segno`."""
    _check_segment_size(segment_size)
    if not 0 <= segno < _LSN_LIMIT // segment_size:
        raise ValueError(f"segment number {segno} is outside the 64-bit WAL address space")
    return segno * segment_size


def segment_name(timeline: int, segno: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> str:
    """PostgreSQL's 24-hex-digit file name for segment `segno` of `timeline`."""
    per_xlogid = segments_per_xlogid(segment_size)
    _check_timeline(timeline)
    if not 0 <= segno < _LSN_LIMIT // segment_size:
        raise ValueError(f"segment number {segno} is outside the 64-bit WAL address space")
    return f"{timeline:08X}{segno // per_xlogid:08X}{segno % per_xlogid:08X}"


def parse_segment_name(name: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> tuple[int, int]:
    """(timeline, segno) from a segment file name; ValueError if PostgreSQL could not name it so."""
    per_xlogid = segments_per_xlogid(segment_size)
    if not _SEGMENT.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a WAL segment name: expected exactly 24 uppercase hex digits"
        )
    timeline, xlogid, low = int(name[:8], 16), int(name[8:16], 16), int(name[16:], 16)
    if low >= per_xlogid:
        raise ValueError(
            f"{name!r} is not a WAL segment name for {_size_text(segment_size)} segments: "
            f"its last 8 digits must be below {per_xlogid:08X}"
        )
    if timeline == 0:
        raise ValueError(f"{name!r} is not a WAL segment name: timeline 0 does not exist")
    return timeline, xlogid * per_xlogid + low


def history_file_name(timeline: int) -> str:
    """The name of the history file PostgreSQL writes when `timeline` begins."""
    _check_timeline(timeline)
    return f"{timeline:08X}.history"


def parse_history_file_name(name: str) -> int:
    """The timeline of a `%08X.history` file name."""
    if not _HISTORY.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a timeline history file name: expected 8 uppercase hex digits "
            "and '.history'"
        )
    timeline = int(name[:8], 16)
    if timeline == 0:
        raise ValueError(f"{name!r} is not a timeline history file name: timeline 0 does not exist")
    return timeline


def kind_of(name: str) -> WalFileKind:
    """Classify a name PostgreSQL passes to archive_command or restore_command."""
    if _SEGMENT.fullmatch(name):
        return "segment"
    if _PARTIAL.fullmatch(name):
        return "partial"
    if _HISTORY.fullmatch(name):
        return "history"
    if _BACKUP_LABEL.fullmatch(name):
        return "backup_label"
    return "unknown"


@dataclass(frozen=True)
class HistoryEntry:
    """One line of a history file: `parent_timeline` ended at `switch_lsn` for `reason`."""

    parent_timeline: int
    switch_lsn: int
    reason: str


def parse_history(text: str) -> tuple[HistoryEntry, ...]:
    """Parse a timeline history file (`1<TAB>0/3000000<TAB>reason` lines, `#` comments)."""
    entries: list[HistoryEntry] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _HISTORY_LINE.fullmatch(stripped)
        if match is None:
            raise ValueError(
                f"line {number} of the timeline history is not "
                f"'timeline<TAB>LSN<TAB>reason': {line!r}"
            )
        timeline = int(match[1])
        switch_lsn = (int(match[2], 16) << 32) | int(match[3], 16)
        if not 1 <= timeline <= _MAX_UINT32:
            raise ValueError(f"line {number} of the timeline history names timeline {timeline}")
        if entries and timeline <= entries[-1].parent_timeline:
            raise ValueError(
                f"line {number} of the timeline history names timeline {timeline} after "
                f"timeline {entries[-1].parent_timeline}; timelines must increase"
            )
        if entries and switch_lsn < entries[-1].switch_lsn:
            raise ValueError(
                f"line {number} of the timeline history switches at {_lsn_text(switch_lsn)}, "
                f"before the previous switch at {_lsn_text(entries[-1].switch_lsn)}"
            )
        entries.append(HistoryEntry(timeline, switch_lsn, (match[4] or "").strip()))
    return tuple(entries)


def timeline_switches(history: Sequence[HistoryEntry], timeline: int) -> list[TimelineSpan]:
    """The path to `timeline` from its history file: (timeline, begin_lsn, end_lsn or None).

    The first listed timeline begins at 0; each later one begins where its parent ended.
    """
    _check_timeline(timeline)
    path: list[TimelineSpan] = []
    begin = 0
    for entry in history:
        previous = path[-1] if path else None
        if previous is not None and entry.parent_timeline <= previous[0]:
            raise ValueError(
                f"the history of timeline {timeline} lists timeline {entry.parent_timeline} "
                f"after timeline {previous[0]}; timelines must increase"
            )
        if entry.switch_lsn < begin:
            raise ValueError(
                f"the history of timeline {timeline} has timeline {entry.parent_timeline} "
                f"ending at {_lsn_text(entry.switch_lsn)}, before it began at {_lsn_text(begin)}"
            )
        path.append((entry.parent_timeline, begin, entry.switch_lsn))
        begin = entry.switch_lsn
    if path and path[-1][0] >= timeline:
        raise ValueError(
            f"the history of timeline {timeline} lists timeline {path[-1][0]}, which is not older"
        )
    path.append((timeline, begin, None))
    return path


def _check_path(path: Sequence[TimelineSpan]) -> None:
    if not path:
        raise ValueError("a timeline path needs at least one timeline")
    for (older, older_begin, _), (newer, newer_begin, _) in itertools.pairwise(path):
        if newer <= older or newer_begin < older_begin:
            raise ValueError(
                f"timeline path is out of order: timeline {newer} from "
                f"{_lsn_text(newer_begin)} follows timeline {older} from {_lsn_text(older_begin)}"
            )


def _timeline_of_segment(path: Sequence[TimelineSpan], segno: int, segment_size: int) -> int:
    # Only begins decide ownership, as in PostgreSQL; the oldest timeline owns everything
    # before the first switch. A timeline that begins and ends in one segment owns none.
    owner = path[0][0]
    for timeline, begin, _end in path[1:]:
        if begin // segment_size > segno:
            break
        owner = timeline
    return owner


def segment_on_path(
    path: Sequence[TimelineSpan], lsn: int, segment_size: int = DEFAULT_SEGMENT_SIZE
) -> tuple[int, str]:
    """(timeline, segment name) that recovery along `path` reads for the byte at `lsn`."""
    _check_path(path)
    segno = segment_number(lsn, segment_size)
    timeline = _timeline_of_segment(path, segno, segment_size)
    return timeline, segment_name(timeline, segno, segment_size)


def continuity_gaps(
    stored: Iterable[str],
    start: tuple[int, int],
    end_segno: int,
    path: Sequence[TimelineSpan],
    segment_size: int = DEFAULT_SEGMENT_SIZE,
) -> list[str]:
    """Names of segments missing from `stored` to recover from `start` to `end_segno`.

    `start` is (timeline, segno) of the first segment a backup needs; the range is
    inclusive and follows `path`. `.partial` files do not count as stored. ValueError if
    the start is not on the path (its timeline is absent, or the path left that timeline
    before the start segment).
    """
    _check_path(path)
    start_timeline, start_segno = start
    timelines = [timeline for timeline, _begin, _end in path]
    if start_timeline not in timelines:
        raise ValueError(
            f"timeline {start_timeline} is not on the timeline path {timelines}; "
            "a backup taken on it cannot be recovered along this path"
        )
    position = timelines.index(start_timeline)
    first_name = segment_name(start_timeline, start_segno, segment_size)
    if position > 0 and start_segno < path[position][1] // segment_size:
        raise ValueError(f"{first_name} precedes the start of timeline {start_timeline}")
    if position + 1 < len(path):
        switch_lsn = path[position + 1][1]
        last_own_segno = (switch_lsn - 1) // segment_size
        if start_segno > last_own_segno:
            raise ValueError(
                f"{first_name} is past the end of timeline {start_timeline} on this path, "
                f"which switched to timeline {timelines[position + 1]} at {_lsn_text(switch_lsn)}"
            )
    present = {name for name in stored if kind_of(name) == "segment"}
    missing: list[str] = []
    for segno in range(start_segno, end_segno + 1):
        name = segment_name(_timeline_of_segment(path, segno, segment_size), segno, segment_size)
        if name not in present:
            missing.append(name)
    return missing
