"""What the archive must hold: backfill after a promotion, and the gaps `pgwarden check` names."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pgwarden.wal.continuity import Continuity, archive_gaps, backfill
from pgwarden.wal.names import (
    HistoryEntry,
    TimelineSpan,
    history_file_name,
    segment_name,
    segment_on_path,
    timeline_switches,
)

MiB = 1024 * 1024
S = 16 * MiB

# Timeline 1 was promoted to timeline 2 in the middle of segment 5.
MID_5 = (HistoryEntry(1, 5 * S + 0x1A8, "no recovery target specified"),)
# The same promotion exactly at the start of segment 5.
AT_5 = (HistoryEntry(1, 5 * S, "no recovery target specified"),)


def seg(timeline: int, segno: int, segment_size: int = S) -> str:
    return segment_name(timeline, segno, segment_size)


def segs(timeline: int, segnos: range, segment_size: int = S) -> list[str]:
    return [segment_name(timeline, segno, segment_size) for segno in segnos]


# --- backfill ---------------------------------------------------------------------------


def test_backfill_after_a_promotion_mid_segment_takes_the_old_timelines_earlier_segments() -> None:
    pg_wal = [
        *segs(1, range(2, 9)),  # 5 holds the switch; 6..8 are recycled files with stale bytes
        "000000010000000000000005.partial",
        "00000002.history",
        *segs(2, range(5, 7)),
        "000000010000000000000003.00000028.backup",
        "archive_status",
        "RECOVERYXLOG",
    ]
    assert backfill(pg_wal, MID_5, 2, S) == segs(1, range(2, 5))


def test_backfill_at_a_segment_boundary_keeps_the_old_timelines_last_complete_segment() -> None:
    pg_wal = [*segs(1, range(3, 7)), *segs(2, range(5, 6))]
    assert backfill(pg_wal, AT_5, 2, S) == [seg(1, 3), seg(1, 4)]


def test_backfill_follows_only_the_path_to_the_new_timeline() -> None:
    # 1 -> 2 in segment 3, 2 -> 4 in segment 6; timeline 3 was a sibling branch of 2.
    history = (HistoryEntry(1, 3 * S + 0x100, ""), HistoryEntry(2, 6 * S + 0x200, ""))
    pg_wal = [*segs(1, range(1, 5)), *segs(2, range(3, 8)), *segs(3, range(4, 6)), seg(4, 6)]
    assert backfill(reversed(pg_wal), history, 4, S) == [
        seg(1, 1),
        seg(1, 2),
        seg(2, 3),
        seg(2, 4),
        seg(2, 5),
    ]


def test_backfill_on_the_first_timeline_has_nothing_to_take() -> None:
    assert backfill(segs(1, range(5)), (), 1, S) == []


def test_backfill_with_one_mib_segments_across_an_xlogid_boundary() -> None:
    # 4096 one-MiB segments per xlogid: the switch is in segment 0x1001 (name ...0100000001).
    history = (HistoryEntry(1, 0x1001 * MiB + 0x80, ""),)
    pg_wal = segs(1, range(0xFFE, 0x1003), MiB)
    assert backfill(pg_wal, history, 2, MiB) == [
        "000000010000000000000FFE",
        "000000010000000000000FFF",
        "000000010000000100000000",
    ]


@st.composite
def promoted_paths(draw: st.DrawFn) -> tuple[int, tuple[HistoryEntry, ...], int]:
    """(segment_size, history, newest timeline): up to three switches, timelines may skip."""
    segment_size = draw(st.sampled_from([MiB, S]))
    count = draw(st.integers(0, 3))
    timelines = sorted(draw(st.sets(st.integers(1, 8), min_size=count + 1, max_size=count + 1)))
    offsets = sorted(
        draw(st.lists(st.integers(0, 12 * segment_size), min_size=count, max_size=count))
    )
    history = tuple(HistoryEntry(tl, lsn, "") for tl, lsn in zip(timelines, offsets, strict=False))
    return segment_size, history, timelines[-1]


@given(promoted_paths(), st.data())
def test_backfill_takes_exactly_the_old_timeline_files_recovery_reads(
    case: tuple[int, tuple[HistoryEntry, ...], int], data: st.DataObject
) -> None:
    segment_size, history, newest = case
    path = timeline_switches(history, newest)
    # What a pg_wal can hold: each timeline's files from its first segment on (recycled
    # ones far beyond its end included), their .partial copies, history files.
    possible = [
        seg(timeline, segno, segment_size)
        for timeline, begin, _ in path
        for segno in range(begin // segment_size, 16)
    ]
    pg_wal = data.draw(st.sets(st.sampled_from(possible)))
    noise = [name + ".partial" for name in pg_wal] + [history_file_name(tl) for tl, _, _ in path]
    reads = {segment_on_path(path, segno * segment_size, segment_size)[1] for segno in range(16)}
    expected = sorted(
        name for name in pg_wal if name in reads and not name.startswith(f"{newest:08X}")
    )
    assert backfill([*pg_wal, *noise], history, newest, segment_size) == expected


# --- archive_gaps -----------------------------------------------------------------------


def test_an_empty_archive_has_nothing_to_check() -> None:
    result = archive_gaps(["00000002.history"], MID_5, 2, None, S)
    assert result == Continuity(
        ((1, 0, 5 * S + 0x1A8), (2, 5 * S + 0x1A8, None)), None, None, 0, ()
    )


def test_a_complete_archive_on_one_timeline() -> None:
    result = archive_gaps(segs(1, range(3, 10)), (), 1, None, S)
    assert (result.first, result.last, result.checked, result.gaps) == (seg(1, 3), seg(1, 9), 7, ())


def test_gaps_across_a_promotion_are_named_by_the_timeline_recovery_reads() -> None:
    stored = [
        *segs(1, range(1, 6)),  # includes the old timeline's copy of segment 5
        "000000010000000000000005.partial",
        *segs(2, range(6, 9)),
    ]
    stored.remove(seg(1, 3))
    result = archive_gaps(stored, MID_5, 2, None, S)
    assert result.gaps == (seg(1, 3), seg(2, 5))
    assert (result.first, result.last, result.checked) == (seg(1, 1), seg(2, 8), 8)


def test_gaps_are_counted_from_the_oldest_backup_on() -> None:
    stored = [seg(1, 0), *segs(1, range(3, 5)), *segs(2, range(5, 10))]
    stored.remove(seg(2, 7))
    result = archive_gaps(stored, MID_5, 2, (1, 3), S)
    assert result.gaps == (seg(2, 7),)
    assert (result.first, result.last, result.checked) == (seg(1, 3), seg(2, 9), 7)


def test_the_backups_own_first_segment_missing_is_a_gap() -> None:
    result = archive_gaps(segs(1, range(4, 9)), (), 1, (1, 3), S)
    assert result.gaps == (seg(1, 3),)


def test_segments_of_other_branches_are_not_on_the_path() -> None:
    # Timeline 3 branched off timeline 1 elsewhere; the newest timeline is 2.
    stored = [*segs(3, range(2, 9)), *segs(2, range(5, 7))]
    result = archive_gaps(stored, MID_5, 2, None, S)
    assert (result.first, result.last) == (seg(2, 5), seg(2, 6))
    assert result.gaps == ()


def test_without_a_history_file_only_the_newest_timeline_is_checked() -> None:
    stored = [*segs(1, range(4)), seg(2, 4), seg(2, 6)]
    result = archive_gaps(stored, (), 2, None, S)
    assert result.path == ((2, 0, None),)
    assert result.gaps == (seg(2, 5),)


def test_old_timeline_segments_past_the_switch_do_not_make_false_gaps() -> None:
    # The old primary archived timeline 1 up to segment 9 before it died; the replica had
    # received WAL only into segment 5 and was promoted there. Timeline 2 has reached 7.
    stored = [*segs(1, range(10)), *segs(2, range(5, 8))]
    result = archive_gaps(stored, MID_5, 2, None, S)
    assert result.gaps == ()
    assert result.last == seg(2, 7)


def test_a_start_from_the_oldest_segment_ignores_old_timeline_segments_past_the_switch() -> None:
    # Only the old primary's diverged timeline-1 segment 7 survives from before timeline 2.
    stored = [seg(1, 7), *segs(2, range(8, 10))]
    result = archive_gaps(stored, MID_5, 2, None, S)
    assert result.first == seg(2, 8)
    assert result.gaps == ()


@st.composite
def archives(draw: st.DrawFn) -> tuple[int, tuple[HistoryEntry, ...], int, list[TimelineSpan]]:
    segment_size, history, newest = draw(promoted_paths())
    return segment_size, history, newest, timeline_switches(history, newest)


@given(archives(), st.integers(0, 14), st.integers(1, 14), st.data())
def test_removing_one_segment_from_a_complete_archive_makes_exactly_that_gap(
    case: tuple[int, tuple[HistoryEntry, ...], int, list[TimelineSpan]],
    first: int,
    length: int,
    data: st.DataObject,
) -> None:
    segment_size, history, newest, path = case
    last = first + length
    on_path = [
        segment_on_path(path, segno * segment_size, segment_size)[1]
        for segno in range(first, last + 1)
    ]
    start_timeline = int(on_path[0][:8], 16)
    noise = [name + ".partial" for name in on_path] + [history_file_name(newest)]
    complete = archive_gaps(
        [*on_path, *noise], history, newest, (start_timeline, first), segment_size
    )
    assert complete.gaps == ()
    assert (complete.first, complete.last, complete.checked) == (
        on_path[0],
        on_path[-1],
        length + 1,
    )

    removed = data.draw(st.sampled_from(on_path[:-1]))  # the newest one ends the range instead
    stored = [name for name in on_path if name != removed] + noise
    result = archive_gaps(stored, history, newest, (start_timeline, first), segment_size)
    assert result.gaps == (removed,)
    assert result.checked == length + 1
