"""WAL naming: names PostgreSQL gives segments and histories, and which timeline holds what."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgwarden.wal.names import (
    DEFAULT_SEGMENT_SIZE,
    HistoryEntry,
    TimelineSpan,
    continuity_gaps,
    history_file_name,
    kind_of,
    parse_history,
    parse_history_file_name,
    parse_segment_name,
    segment_name,
    segment_number,
    segment_on_path,
    segment_start_lsn,
    segments_per_xlogid,
    timeline_switches,
)

MiB = 1024 * 1024
GiB = 1024 * MiB
SIZES = [MiB, 2 * MiB, 16 * MiB, 64 * MiB, 256 * MiB, GiB]
MAX_TLI = 0xFFFF_FFFF


def lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


# Names checked against PostgreSQL 15 (initdb --wal-segsize), away from segment boundaries
# where pg_walfile_name reports the previous segment; at boundaries the segment holding
# the byte at the LSN is meant, as in backup_label's START WAL LOCATION.
@pytest.mark.parametrize(
    ("position", "segment_size", "segno", "name"),
    [
        ("0/3000028", 16 * MiB, 3, "000000010000000000000003"),
        ("0/33108A8", 16 * MiB, 3, "000000010000000000000003"),
        ("0/3000000", 16 * MiB, 3, "000000010000000000000003"),
        ("0/2FFFFFF", 16 * MiB, 2, "000000010000000000000002"),
        ("1/0", 16 * MiB, 256, "000000010000000100000000"),
        ("0/FF000000", 16 * MiB, 255, "0000000100000000000000FF"),
        ("5/C0000000", 16 * MiB, 0x5C0, "0000000100000005000000C0"),
        ("FFFFFFFF/FFFFFFFF", 16 * MiB, 2**40 - 1, "00000001FFFFFFFF000000FF"),
        ("0/3000028", 64 * MiB, 0, "000000010000000000000000"),
        ("1/4000000", 64 * MiB, 65, "000000010000000100000001"),
        ("5/C0000000", 64 * MiB, 368, "000000010000000500000030"),
        ("0/3000028", MiB, 48, "000000010000000000000030"),
        ("2/100000", MiB, 8193, "000000010000000200000001"),
        ("1/0", MiB, 4096, "000000010000000100000000"),
        ("FFFFFFFF/FFFFFFFF", MiB, 2**44 - 1, "00000001FFFFFFFF00000FFF"),
        ("5/C0000000", GiB, 23, "000000010000000500000003"),
        ("FFFFFFFF/FFFFFFFF", GiB, 2**34 - 1, "00000001FFFFFFFF00000003"),
    ],
)
def test_lsn_to_segment_name(position: str, segment_size: int, segno: int, name: str) -> None:
    assert segment_number(lsn(position), segment_size) == segno
    assert segment_name(1, segno, segment_size) == name
    assert parse_segment_name(name, segment_size) == (1, segno)


def test_timeline_is_the_first_eight_digits() -> None:
    assert segment_name(0x2A, 3) == "0000002A0000000000000003"
    assert segment_name(MAX_TLI, 0) == "FFFFFFFF0000000000000000"
    assert parse_segment_name("0000002A0000000000000003") == (0x2A, 3)


@pytest.mark.parametrize(
    ("segment_size", "per_xlogid"), [(MiB, 4096), (16 * MiB, 256), (64 * MiB, 64), (GiB, 4)]
)
def test_segments_per_xlogid(segment_size: int, per_xlogid: int) -> None:
    assert segments_per_xlogid(segment_size) == per_xlogid


def test_default_segment_size_is_16_mib() -> None:
    assert segments_per_xlogid(DEFAULT_SEGMENT_SIZE) == 256
    assert segment_name(1, 256) == "000000010000000100000000"


@pytest.mark.parametrize("segment_size", [0, -16 * MiB, 1000, MiB // 2, 3 * MiB, 2 * GiB])
def test_segment_sizes_postgresql_cannot_use_are_refused(segment_size: int) -> None:
    with pytest.raises(ValueError, match="power of two from 1 MiB to 1 GiB"):
        segments_per_xlogid(segment_size)
    with pytest.raises(ValueError, match="power of two"):
        segment_name(1, 0, segment_size)


@pytest.mark.parametrize(
    "call",
    [
        lambda: segment_name(0, 1),
        lambda: segment_name(MAX_TLI + 1, 1),
        lambda: segment_name(1, -1),
        lambda: segment_name(1, 2**40),
        lambda: segment_number(-1),
        lambda: segment_number(2**64),
        lambda: segment_start_lsn(-1),
        lambda: history_file_name(0),
    ],
)
def test_out_of_range_numbers_are_refused(call: object) -> None:
    with pytest.raises(ValueError):
        call()  # type: ignore[operator]


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("00000001000000000000003", "24 uppercase hex digits"),
        ("0000000100000000000000033", "24 uppercase hex digits"),
        ("00000001000000000000000a", "24 uppercase hex digits"),
        ("000000010000000000000003.partial", "24 uppercase hex digits"),
        ("000000010000000000000003\n", "24 uppercase hex digits"),
        (" 000000010000000000000003", "24 uppercase hex digits"),
        ("00000001000000000000000G", "24 uppercase hex digits"),
        ("\uff1000000010000000000000003", "24 uppercase hex digits"),  # fullwidth zero
        ("", "24 uppercase hex digits"),
        ("000000010000000000000100", "last 8 digits must be below 00000100"),
        ("0000000100000000FFFFFFFF", "for 16 MiB segments"),
        ("000000000000000000000003", "timeline 0"),
    ],
)
def test_bad_segment_names(name: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_segment_name(name)


def test_the_low_part_limit_depends_on_segment_size() -> None:
    assert parse_segment_name("000000010000000000000FFF", MiB) == (1, 4095)
    with pytest.raises(ValueError, match="for 16 MiB segments"):
        parse_segment_name("000000010000000000000FFF", 16 * MiB)
    with pytest.raises(ValueError, match="for 1 GiB segments"):
        parse_segment_name("000000010000000000000004", GiB)


@st.composite
def sized_segments(draw: st.DrawFn) -> tuple[int, int, int]:
    segment_size = draw(st.sampled_from(SIZES))
    timeline = draw(st.integers(1, MAX_TLI))
    segno = draw(st.integers(0, 2**64 // segment_size - 1))
    return segment_size, timeline, segno


@given(sized_segments())
def test_segment_names_round_trip(case: tuple[int, int, int]) -> None:
    segment_size, timeline, segno = case
    name = segment_name(timeline, segno, segment_size)
    assert len(name) == 24
    assert kind_of(name) == "segment"
    assert parse_segment_name(name, segment_size) == (timeline, segno)


@given(st.sampled_from(SIZES), st.integers(0, 2**64 - 1))
def test_a_segment_holds_the_lsns_from_its_start(segment_size: int, position: int) -> None:
    segno = segment_number(position, segment_size)
    start = segment_start_lsn(segno, segment_size)
    assert start <= position < start + segment_size
    assert segment_number(start, segment_size) == segno


@given(st.sampled_from(SIZES), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_names_sort_like_positions_on_one_timeline(segment_size: int, a: int, b: int) -> None:
    name_a = segment_name(1, segment_number(a, segment_size), segment_size)
    name_b = segment_name(1, segment_number(b, segment_size), segment_size)
    if a <= b:
        assert name_a <= name_b
    else:
        assert name_a >= name_b


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("000000010000000000000003", "segment"),
        ("000000010000000000000003.partial", "partial"),
        ("00000002.history", "history"),
        ("000000010000000000000003.00000028.backup", "backup_label"),
        ("00000001000000000000000a", "unknown"),
        ("0000000100000000000000003", "unknown"),
        ("000000010000000000000003.partial.tmp", "unknown"),
        ("0000002.history", "unknown"),
        ("0000000a.history", "unknown"),
        ("000000010000000000000003.28.backup", "unknown"),
        ("000000010000000000000003.00000028.backup\n", "unknown"),
        ("archive_status", "unknown"),
        ("", "unknown"),
    ],
)
def test_kind_of(name: str, kind: str) -> None:
    assert kind_of(name) == kind


@pytest.mark.parametrize(
    ("timeline", "name"), [(1, "00000001.history"), (0x1A, "0000001A.history")]
)
def test_history_file_names(timeline: int, name: str) -> None:
    assert history_file_name(timeline) == name
    assert parse_history_file_name(name) == timeline
    assert kind_of(name) == "history"


@pytest.mark.parametrize(
    "name", ["00000000.history", "1.history", "0000001a.history", "00000001.history.partial", ""]
)
def test_bad_history_file_names(name: str) -> None:
    with pytest.raises(ValueError, match="not a timeline history file name"):
        parse_history_file_name(name)


@given(st.integers(1, MAX_TLI))
def test_history_file_names_round_trip(timeline: int) -> None:
    assert parse_history_file_name(history_file_name(timeline)) == timeline


# Timeline 3's history as PostgreSQL writes it: each line is the parent timeline, where it
# ended, and why. Timeline 1 ended in the middle of segment 3, timeline 2 exactly at the
# start of segment 5.
HISTORY_3 = (
    "1\t0/3310878\tno recovery target specified\n"
    "\n"
    "# promoted by pgwarden\n"
    "2\t0/5000000\tbefore 2026-11-20 10:00:00.000000+00\n"
)
PATH_3 = [
    (1, 0, lsn("0/3310878")),
    (2, lsn("0/3310878"), lsn("0/5000000")),
    (3, lsn("0/5000000"), None),
]


def test_parse_a_three_timeline_history() -> None:
    assert parse_history(HISTORY_3) == (
        HistoryEntry(1, lsn("0/3310878"), "no recovery target specified"),
        HistoryEntry(2, lsn("0/5000000"), "before 2026-11-20 10:00:00.000000+00"),
    )


def test_history_tolerates_missing_reasons_spaces_and_crlf() -> None:
    text = '  # comment\r\n1 0/3000000\r\n   \r\n3\t1/A0\tat restore point "x y"\r\n'
    assert parse_history(text) == (
        HistoryEntry(1, lsn("0/3000000"), ""),
        HistoryEntry(3, lsn("1/A0"), 'at restore point "x y"'),
    )


def test_an_empty_history_has_no_entries() -> None:
    assert parse_history("") == ()
    assert parse_history("# only a comment\n\n") == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1\t0/3000000\tok\n2\tno recovery target\n", "line 2 .*not 'timeline<TAB>LSN<TAB>reason'"),
        ("x\t0/3000000\treason\n", "line 1 .*not"),
        ("1\t0/3000000x\n", "line 1 .*not"),
        ("1\t3000000\treason\n", "line 1 .*not"),
        ("1\t0/123456789\treason\n", "line 1 .*not"),
        ("-1\t0/3000000\treason\n", "line 1 .*not"),
        ("0\t0/3000000\treason\n", "line 1 .*timeline 0"),
        ("\n2\t0/3000000\ta\n1\t0/4000000\tb\n", "line 3 .*timeline 1 after timeline 2"),
        ("2\t0/3000000\ta\n2\t0/4000000\tb\n", "line 2 .*timelines must increase"),
        ("1\t0/5000000\ta\n2\t0/4000000\tb\n", "line 2 .*before the previous switch at 0/5000000"),
    ],
)
def test_malformed_history_names_the_line(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_history(text)


def test_timeline_switches_follow_the_history() -> None:
    assert timeline_switches(parse_history(HISTORY_3), 3) == PATH_3


def test_timeline_one_has_no_history() -> None:
    assert timeline_switches((), 1) == [(1, 0, None)]


def test_timeline_switches_skip_abandoned_timelines() -> None:
    # Timeline 2 forked from 1 and was abandoned; 3 forked from 1 later, then 5 from 3.
    history = parse_history("1\t0/4000000\tx\n3\t0/9000000\ty\n")
    assert timeline_switches(history, 5) == [
        (1, 0, lsn("0/4000000")),
        (3, lsn("0/4000000"), lsn("0/9000000")),
        (5, lsn("0/9000000"), None),
    ]


@pytest.mark.parametrize(
    ("history", "timeline", "message"),
    [
        ((HistoryEntry(2, 100, ""),), 2, "lists timeline 2, which is not older"),
        ((HistoryEntry(2, 100, ""), HistoryEntry(1, 200, "")), 3, "timelines must increase"),
        ((HistoryEntry(1, 200, ""), HistoryEntry(2, 100, "")), 3, "ending at 0/64, before"),
    ],
)
def test_inconsistent_histories_are_refused(
    history: tuple[HistoryEntry, ...], timeline: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        timeline_switches(history, timeline)


@pytest.mark.parametrize(
    ("position", "timeline", "name"),
    [
        ("0/0", 1, "000000010000000000000000"),
        ("0/2FFFFFF", 1, "000000010000000000000002"),
        # Timeline 2 began inside segment 3, so all of segment 3 is read from timeline 2,
        # even bytes before the switch: its copy holds timeline 1's WAL up to the switch.
        ("0/3000000", 2, "000000020000000000000003"),
        ("0/3310877", 2, "000000020000000000000003"),
        ("0/3310878", 2, "000000020000000000000003"),
        ("0/4FFFFFF", 2, "000000020000000000000004"),
        # Timeline 3 began exactly at segment 5: timeline 2's segment 4 is its last.
        ("0/5000000", 3, "000000030000000000000005"),
        ("1/0", 3, "000000030000000100000000"),
    ],
)
def test_segment_on_path(position: str, timeline: int, name: str) -> None:
    assert segment_on_path(PATH_3, lsn(position)) == (timeline, name)


def test_a_timeline_that_lived_within_one_segment_owns_none() -> None:
    path = timeline_switches(
        (HistoryEntry(1, lsn("0/3100000"), ""), HistoryEntry(2, lsn("0/3200000"), "")), 3
    )
    assert segment_on_path(path, lsn("0/2FFFFFF")) == (1, "000000010000000000000002")
    assert segment_on_path(path, lsn("0/3100000")) == (3, "000000030000000000000003")


def test_segment_on_path_with_64_mib_segments() -> None:
    # With 64 MiB segments the switch at 0/3310878 lies in segment 0.
    path = PATH_3
    assert segment_on_path(path, 0, 64 * MiB) == (2, "000000020000000000000000")
    assert segment_on_path(path, lsn("0/4000000"), 64 * MiB) == (3, "000000030000000000000001")


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ([], "at least one timeline"),
        ([(2, 0, 100), (1, 100, None)], "out of order"),
        ([(1, 0, 200), (2, 200, 100), (3, 100, None)], "out of order"),
    ],
)
def test_bad_paths_are_refused(path: list[TimelineSpan], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        segment_on_path(path, 0)
    with pytest.raises(ValueError, match=message):
        continuity_gaps([], (path[0][0] if path else 1, 0), 1, path)


# The archive after a real promotion (PostgreSQL 15): the standby took over at 0/3310878,
# archived the old timeline's segment 3 as .partial and continued on timeline 2; the old
# primary also archived its own full segment 3 when it shut down.
ARCHIVE = [
    "000000010000000000000001",
    "000000010000000000000002",
    "000000010000000000000002.00000028.backup",
    "000000010000000000000003",
    "000000010000000000000003.partial",
    "00000002.history",
    "000000020000000000000003",
    "000000020000000000000004",
]
PATH_2 = timeline_switches(parse_history("1\t0/3310878\tno recovery target specified\n"), 2)


def test_no_gaps_across_a_promotion() -> None:
    assert continuity_gaps(ARCHIVE, (1, 2), 4, PATH_2) == []


def test_the_new_timelines_copy_of_the_switch_segment_is_required() -> None:
    stored = [name for name in ARCHIVE if name != "000000020000000000000003"]
    assert continuity_gaps(stored, (1, 2), 4, PATH_2) == ["000000020000000000000003"]


def test_partial_segments_do_not_fill_gaps() -> None:
    stored = ["000000010000000000000002", "000000010000000000000003.partial"]
    assert continuity_gaps(stored, (1, 2), 3, [(1, 0, None)]) == ["000000010000000000000003"]


def test_gaps_list_every_missing_segment_in_order() -> None:
    stored = ["000000010000000000000002", "000000020000000000000004", "00000001000000000000000a"]
    assert continuity_gaps(stored, (1, 1), 6, PATH_3) == [
        "000000010000000000000001",
        "000000020000000000000003",
        "000000030000000000000005",
        "000000030000000000000006",
    ]


def test_gaps_across_a_switch_on_a_segment_boundary() -> None:
    stored = ["000000020000000000000004", "000000030000000000000005"]
    assert continuity_gaps(stored, (2, 4), 5, PATH_3) == []
    assert continuity_gaps(["000000020000000000000004"], (2, 4), 5, PATH_3) == [
        "000000030000000000000005"
    ]


def test_gaps_with_one_mib_segments() -> None:
    path = timeline_switches((HistoryEntry(1, lsn("0/3310878"), ""),), 2)
    stored = [segment_name(1, segno, MiB) for segno in range(48, 51)]
    stored += [segment_name(2, segno, MiB) for segno in range(51, 53)]
    assert continuity_gaps(stored, (1, 48), 53, path, MiB) == ["000000020000000000000035"]


def test_an_empty_range_has_no_gaps() -> None:
    assert continuity_gaps([], (1, 5), 4, [(1, 0, None)]) == []


@pytest.mark.parametrize(
    ("start", "message"),
    [
        ((4, 3), r"timeline 4 is not on the timeline path \[1, 2, 3\]"),
        ((1, 4), "000000010000000000000004 is past the end of timeline 1"),
        ((2, 5), "000000020000000000000005 is past the end of timeline 2"),
        ((2, 2), "000000020000000000000002 precedes the start of timeline 2"),
    ],
)
def test_a_start_off_the_path_is_refused(start: tuple[int, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        continuity_gaps([], start, 10, PATH_3)


@pytest.mark.parametrize("start", [(1, 3), (2, 3), (2, 4), (3, 5)])
def test_starts_on_the_path_are_accepted(start: tuple[int, int]) -> None:
    assert continuity_gaps([], start, start[1], PATH_3) != []


@st.composite
def paths(draw: st.DrawFn) -> tuple[int, list[TimelineSpan]]:
    segment_size = draw(st.sampled_from([MiB, 16 * MiB, 64 * MiB]))
    parents = sorted(draw(st.sets(st.integers(1, 20), max_size=4)))
    switches = sorted(
        draw(
            st.lists(
                st.integers(0, 40 * segment_size), min_size=len(parents), max_size=len(parents)
            )
        )
    )
    history = tuple(HistoryEntry(t, s, "") for t, s in zip(parents, switches, strict=True))
    return segment_size, timeline_switches(history, draw(st.integers(21, 30)))


@given(paths(), st.integers(0, 45), st.integers(0, 45), st.data())
def test_gaps_are_the_unstored_segments_recovery_reads(
    case: tuple[int, list[TimelineSpan]], first: int, last: int, data: st.DataObject
) -> None:
    segment_size, path = case
    timeline, _ = segment_on_path(path, first * segment_size, segment_size)
    needed = [
        segment_on_path(path, segno * segment_size, segment_size)[1]
        for segno in range(first, last + 1)
    ]
    stored = data.draw(st.lists(st.sampled_from(needed))) if needed else []
    gaps = continuity_gaps(stored, (timeline, first), last, path, segment_size)
    assert gaps == [name for name in needed if name not in stored]
    assert continuity_gaps(needed, (timeline, first), last, path, segment_size) == []


@given(paths(), st.integers(0, 45 * 64 * MiB))
def test_the_segment_comes_from_the_newest_timeline_begun_by_then(
    case: tuple[int, list[TimelineSpan]], position: int
) -> None:
    segment_size, path = case
    timeline, name = segment_on_path(path, position, segment_size)
    segno = segment_number(position, segment_size)
    assert parse_segment_name(name, segment_size) == (timeline, segno)
    index = [t for t, _, _ in path].index(timeline)
    assert index == 0 or path[index][1] // segment_size <= segno
    assert all(begin // segment_size > segno for _, begin, _ in path[index + 1 :])
