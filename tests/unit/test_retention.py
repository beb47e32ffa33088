"""Retention: which backups and WAL segments stay, and the reason each backup is kept."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgwarden.backup.retention import (
    BackupRecord,
    Policy,
    RetentionPlan,
    plan_retention,
    wal_to_expire,
)
from pgwarden.wal.names import segment_name

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
MiB = 1024 * 1024
SEGMENT = 16 * MiB


def full(backup_id: str, days_ago: float, segno: int = 0, timeline: int = 1) -> BackupRecord:
    stop = NOW - timedelta(days=days_ago)
    return BackupRecord(backup_id, "full", frozenset(), stop, timeline, segno)


def incr(backup_id: str, days_ago: float, *refs: str, segno: int = 0) -> BackupRecord:
    stop = NOW - timedelta(days=days_ago)
    return BackupRecord(backup_id, "incr", frozenset(refs), stop, 1, segno)


# Four fulls, each followed by incrementals that reference their whole chain (A2 and C2
# list every backup they use; C2 in the chain of C only through C1 would work the same).
CATALOG = [
    full("A", 30, segno=10),
    incr("A1", 29, "A", segno=12),
    incr("A2", 28, "A", "A1", segno=14),
    full("B", 20, segno=20),
    incr("B1", 19, "B", segno=22),
    full("C", 10, segno=30),
    incr("C1", 9, "C", segno=32),
    incr("C2", 8, "C1", segno=34),
    full("D", 2, segno=40),
    incr("D1", 1, "D", segno=42),
]
ALL = tuple(b.id for b in CATALOG)


def keeping(*ids: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return tuple(i for i in ALL if i in ids), tuple(i for i in ALL if i not in ids)


@pytest.mark.parametrize(
    ("policy", "kept", "wal_from"),
    [
        pytest.param(Policy(1, None), ["D", "D1"], 40, id="one full"),
        pytest.param(Policy(2, None), ["C", "C1", "C2", "D", "D1"], 30, id="two fulls"),
        pytest.param(Policy(4, None), list(ALL), 10, id="all four fulls"),
        pytest.param(Policy(10, None), list(ALL), 10, id="more fulls asked than exist"),
        pytest.param(Policy(None, 1.5), ["D", "D1"], 40, id="window holds D1, D starts it"),
        pytest.param(Policy(None, 5), ["C", "C1", "C2", "D", "D1"], 30, id="window starts at C2"),
        pytest.param(
            Policy(None, 2), ["C", "C1", "C2", "D", "D1"], 30, id="D stopped exactly at the start"
        ),
        pytest.param(Policy(None, 9.5), ["C", "C1", "C2", "D", "D1"], 30, id="window starts at C"),
        pytest.param(
            Policy(None, 15), ["B", "B1", "C", "C1", "C2", "D", "D1"], 20, id="window starts at B1"
        ),
        pytest.param(Policy(None, 365), list(ALL), 10, id="window holds everything"),
        pytest.param(Policy(None, 0.5), ["D", "D1"], 40, id="no backup inside the window"),
        pytest.param(
            Policy(1, 15), ["B", "B1", "C", "C1", "C2", "D", "D1"], 20, id="both: window wins"
        ),
        pytest.param(
            Policy(3, 1.5), ["B", "B1", "C", "C1", "C2", "D", "D1"], 20, id="both: count wins"
        ),
        pytest.param(
            Policy(1, 28.5),
            ["A", "A1", "A2", "B", "B1", "C", "C1", "C2", "D", "D1"],
            10,
            id="window starts at A1, which needs A",
        ),
    ],
)
def test_retention_on_a_catalog(policy: Policy, kept: list[str], wal_from: int) -> None:
    plan = plan_retention(CATALOG, policy, NOW)
    assert (plan.keep, plan.expire) == keeping(*kept)
    assert plan.wal_keep_from_segno == wal_from
    assert set(plan.reasons) == set(plan.keep)


def test_reasons_say_which_rule_keeps_each_backup() -> None:
    plan = plan_retention(CATALOG, Policy(2, 5), NOW)
    assert dict(plan.reasons) == {
        "C": "one of the 2 newest full backups",
        "C1": "incremental on kept full backup C",
        "C2": "restores the start of the 5-day window",
        "D": "one of the 2 newest full backups",
        "D1": "newest backup",
    }


def test_reasons_for_window_and_references() -> None:
    plan = plan_retention(CATALOG, Policy(None, 8.5), NOW)
    assert dict(plan.reasons) == {
        "C": "referenced by C1",
        "C1": "restores the start of the 8.5-day window",
        "C2": "inside the 8.5-day window",
        "D": "inside the 8.5-day window",
        "D1": "newest backup",
    }


def test_a_single_full_count_reads_naturally() -> None:
    plan = plan_retention(CATALOG, Policy(1, None), NOW)
    assert plan.reasons["D"] == "the newest full backup"


def test_references_keep_an_old_full_alive() -> None:
    # An incremental taken on the old full after a newer full: restoring it needs A.
    catalog = [full("A", 30, segno=5), full("B", 20, segno=9), incr("A1", 1, "A", segno=12)]
    plan = plan_retention(catalog, Policy(1, None), NOW)
    assert plan.keep == ("A", "B", "A1")
    assert plan.expire == ()
    assert plan.wal_keep_from_segno == 5
    assert dict(plan.reasons) == {
        "A": "referenced by A1",
        "B": "the newest full backup",
        "A1": "newest backup",
    }


def test_references_are_followed_transitively() -> None:
    catalog = [full("A", 40), incr("A1", 39, "A"), incr("A2", 38, "A1"), full("B", 10)]
    plan = plan_retention(catalog, Policy(None, 20), NOW)
    assert plan.keep == ("A", "A1", "A2", "B")
    assert plan.reasons["A"] == "referenced by A1"
    assert plan.reasons["A1"] == "referenced by A2"


def test_incrementals_of_an_expired_full_go_with_it() -> None:
    catalog = [full("A", 30), incr("A1", 29, "A"), full("B", 20), incr("B1", 19, "B")]
    plan = plan_retention(catalog, Policy(1, None), NOW)
    assert plan.expire == ("A", "A1")


def test_the_newest_backup_is_kept_even_when_the_window_is_empty() -> None:
    catalog = [full("A", 40, segno=3), full("B", 30, segno=7), incr("B1", 20, "B", segno=8)]
    plan = plan_retention(catalog, Policy(None, 7), NOW)
    assert plan.keep == ("B", "B1")
    assert plan.expire == ("A",)
    assert plan.reasons["B1"] == "newest backup"
    assert plan.wal_keep_from_segno == 7


def test_the_newest_backup_is_kept_when_it_is_an_orphan_incremental() -> None:
    catalog = [full("A", 3, segno=4), incr("X", 1, segno=6)]
    plan = plan_retention(catalog, Policy(1, None), NOW)
    assert plan.keep == ("A", "X")


def test_backups_in_the_future_are_inside_the_window() -> None:
    catalog = [full("A", 10), full("B", -1)]
    assert plan_retention(catalog, Policy(None, 1), NOW).keep == ("A", "B")


def test_an_empty_catalog_keeps_all_wal() -> None:
    plan = plan_retention([], Policy(2, 7), NOW)
    assert plan == RetentionPlan((), (), None, {})


def test_a_single_backup_is_kept() -> None:
    plan = plan_retention([full("A", 100, segno=9)], Policy(None, 1), NOW)
    assert (plan.keep, plan.expire, plan.wal_keep_from_segno) == (("A",), (), 9)
    assert dict(plan.reasons) == {"A": "newest backup"}


def test_catalog_ids_as_written_by_the_backup_command() -> None:
    catalog = [
        full("20261101T010000F", 23, segno=100),
        incr("20261102T010000I", 22, "20261101T010000F", segno=104),
        full("20261115T010000F", 9, segno=200),
        incr("20261123T010000I", 1, "20261115T010000F", segno=230),
    ]
    plan = plan_retention(catalog, Policy(None, 7), NOW)
    assert plan.keep == ("20261115T010000F", "20261123T010000I")
    assert plan.reasons["20261115T010000F"] == "restores the start of the 7-day window"


def test_the_window_is_measured_in_any_time_zone() -> None:
    tokyo = NOW.astimezone(timezone(timedelta(hours=9)))
    assert plan_retention(CATALOG, Policy(None, 5), tokyo) == plan_retention(
        CATALOG, Policy(None, 5), NOW
    )


def test_a_window_reaching_before_year_one_keeps_everything() -> None:
    plan = plan_retention(CATALOG, Policy(None, 999_999_999), NOW)
    assert plan.keep == ALL


@pytest.mark.parametrize(
    ("catalog", "message"),
    [
        ([full("A", 3), full("A", 2)], "backup id A appears more than once"),
        ([full("A", 3), incr("A1", 2, "Z")], "backup A1 references Z, which is not in the catalog"),
        ([full("A", 3), incr("A1", 4, "A")], "backup A1 references A, which is not older"),
        ([incr("A1", 4, "A1")], "backup A1 references A1, which is not older"),
        (
            [BackupRecord("N", "full", frozenset(), datetime(2026, 11, 1), 1, 0)],
            "backup N has a stop_time without a time zone",
        ),
        (
            [BackupRecord("K", "diff", frozenset(), NOW, 1, 0)],  # type: ignore[arg-type]
            "backup K has unknown kind 'diff'",
        ),
    ],
)
def test_broken_catalogs_are_refused(catalog: list[BackupRecord], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan_retention(catalog, Policy(1, None), NOW)


def test_now_must_carry_a_time_zone() -> None:
    with pytest.raises(ValueError, match="now must carry a time zone"):
        plan_retention(CATALOG, Policy(1, None), datetime(2026, 11, 24))


@pytest.mark.parametrize(
    ("full_count", "window_days", "message"),
    [
        (None, None, "needs full_count, window_days or both"),
        (0, None, "full_count must be at least 1"),
        (-2, 7.0, "full_count must be at least 1"),
        (None, 0.0, "window_days must be a positive number"),
        (None, -1.0, "window_days must be a positive number"),
        (None, float("inf"), "window_days must be a positive number"),
        (None, float("nan"), "window_days must be a positive number"),
    ],
)
def test_bad_policies_are_refused(
    full_count: int | None, window_days: float | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Policy(full_count, window_days)


# WAL expiry


ARCHIVE = [
    "000000010000000000000001",
    "000000010000000000000002",
    "000000010000000000000002.00000028.backup",
    "000000010000000000000003",
    "000000010000000000000003.partial",
    "00000001.history",
    "00000002.history",
    "000000020000000000000002",
    "000000020000000000000003",
    "000000020000000000000004",
    "000000020000000000000004.partial",
    "00000002000000000000000a",
    "000000020000000000000100",
    "notes.txt",
]


def test_wal_below_the_boundary_expires_on_every_timeline() -> None:
    assert wal_to_expire(ARCHIVE, 3, SEGMENT) == [
        "000000010000000000000001",
        "000000010000000000000002",
        "000000020000000000000002",
    ]


def test_partial_segments_below_the_boundary_expire_too() -> None:
    assert wal_to_expire(ARCHIVE, 5, SEGMENT) == [
        "000000010000000000000001",
        "000000010000000000000002",
        "000000010000000000000003",
        "000000010000000000000003.partial",
        "000000020000000000000002",
        "000000020000000000000003",
        "000000020000000000000004",
        "000000020000000000000004.partial",
    ]


def test_history_backup_and_unknown_files_never_expire() -> None:
    expired = wal_to_expire(ARCHIVE, 2**40, SEGMENT)
    assert "00000001.history" not in expired
    assert "00000002.history" not in expired
    assert "000000010000000000000002.00000028.backup" not in expired
    assert "00000002000000000000000a" not in expired
    assert "notes.txt" not in expired
    # 16 MiB segments never have a low part of 0x100: not PostgreSQL's, so not ours to delete.
    assert "000000020000000000000100" not in expired


def test_no_boundary_expires_nothing() -> None:
    assert wal_to_expire(ARCHIVE, None, SEGMENT) == []


def test_wal_expiry_uses_the_segment_size() -> None:
    names = ["000000010000000000000FFF", "000000010000000100000000"]
    # 1 MiB: segnos 4095 and 4096. 16 MiB: the first name is impossible, the second is 256.
    assert wal_to_expire(names, 4096, MiB) == ["000000010000000000000FFF"]
    assert wal_to_expire(names, 4096, SEGMENT) == ["000000010000000100000000"]
    assert wal_to_expire(names, 256, SEGMENT) == []


def test_a_bad_segment_size_fails_loudly() -> None:
    with pytest.raises(ValueError, match="power of two"):
        wal_to_expire(ARCHIVE, 3, 1000)


def test_plan_and_wal_expiry_together() -> None:
    plan = plan_retention(CATALOG, Policy(1, None), NOW)
    names = [segment_name(1, segno) for segno in range(8, 45)]
    expired = wal_to_expire(names, plan.wal_keep_from_segno, SEGMENT)
    assert expired == [segment_name(1, segno) for segno in range(8, 40)]


# Properties over generated catalogs


@st.composite
def catalogs(draw: st.DrawFn) -> list[BackupRecord]:
    count = draw(st.integers(0, 12))
    hours = sorted(draw(st.lists(st.integers(-48, 24 * 90), min_size=count, max_size=count)))
    records: list[BackupRecord] = []
    for index, hours_ago in enumerate(reversed(hours)):
        backup_id = f"b{index:02d}"
        kind: Literal["full", "incr"] = (
            "full" if not records else draw(st.sampled_from(["full", "incr"]))
        )
        earlier = [r.id for r in records]
        refs = (
            frozenset(draw(st.sets(st.sampled_from(earlier), max_size=3)))
            if earlier
            else frozenset()
        )
        records.append(
            BackupRecord(
                backup_id,
                kind,
                refs if kind == "incr" else frozenset(),
                NOW - timedelta(hours=hours_ago),
                draw(st.integers(1, 3)),
                draw(st.integers(0, 500)),
            )
        )
    return records


policies = st.one_of(
    st.builds(Policy, st.integers(1, 5), st.none()),
    st.builds(Policy, st.none(), st.floats(0.01, 60)),
    st.builds(Policy, st.integers(1, 5), st.floats(0.01, 60)),
)


def closure(ids: set[str], by_id: dict[str, BackupRecord]) -> set[str]:
    result, pending = set(), list(ids)
    while pending:
        backup_id = pending.pop()
        if backup_id not in result:
            result.add(backup_id)
            pending.extend(by_id[backup_id].references)
    return result


def expected_keep(catalog: Sequence[BackupRecord], policy: Policy) -> set[str]:
    """The documented rules, written out independently of the implementation."""
    by_id = {b.id: b for b in catalog}
    ordered = sorted(catalog, key=lambda b: (b.stop_time, b.id))
    needed = {ordered[-1].id}
    if policy.full_count is not None:
        kept_fulls = {b.id for b in [b for b in ordered if b.kind == "full"][-policy.full_count :]}
        needed |= kept_fulls
        needed |= {
            b.id
            for b in ordered
            if b.kind == "incr" and closure(set(b.references), by_id) & kept_fulls
        }
    if policy.window_days is not None:
        cutoff = NOW - timedelta(days=policy.window_days)
        needed |= {b.id for b in ordered if b.stop_time >= cutoff}
        before = [b for b in ordered if b.stop_time < cutoff]
        if before:
            needed.add(before[-1].id)
    return closure(needed, by_id)


@given(catalogs(), policies)
def test_plan_follows_the_documented_rules(catalog: list[BackupRecord], policy: Policy) -> None:
    plan = plan_retention(catalog, policy, NOW)
    if not catalog:
        assert plan == RetentionPlan((), (), None, {})
        return
    assert set(plan.keep) == expected_keep(catalog, policy)


@given(catalogs(), policies)
def test_plan_invariants(catalog: list[BackupRecord], policy: Policy) -> None:
    plan = plan_retention(catalog, policy, NOW)
    by_id = {b.id: b for b in catalog}
    ordered = [b.id for b in sorted(catalog, key=lambda b: (b.stop_time, b.id))]
    assert set(plan.keep) | set(plan.expire) == set(by_id)
    assert not set(plan.keep) & set(plan.expire)
    assert list(plan.keep) == [i for i in ordered if i in plan.keep]
    assert list(plan.expire) == [i for i in ordered if i in plan.expire]
    assert set(plan.reasons) == set(plan.keep)
    if not catalog:
        assert plan.wal_keep_from_segno is None
        return
    assert ordered[-1] in plan.keep
    for backup_id in plan.keep:
        assert by_id[backup_id].references <= set(plan.keep)
        assert plan.wal_keep_from_segno is not None
        assert plan.wal_keep_from_segno <= by_id[backup_id].start_segno
    assert plan.wal_keep_from_segno in {by_id[i].start_segno for i in plan.keep}
    if policy.full_count is not None:
        fulls = [b for b in catalog if b.kind == "full"]
        kept_fulls = [i for i in plan.keep if by_id[i].kind == "full"]
        assert len(kept_fulls) >= min(policy.full_count, len(fulls))


@given(catalogs(), policies, st.randoms(use_true_random=False))
def test_plan_ignores_input_order(
    catalog: list[BackupRecord], policy: Policy, rng: random.Random
) -> None:
    shuffled = list(catalog)
    rng.shuffle(shuffled)
    assert plan_retention(shuffled, policy, NOW) == plan_retention(catalog, policy, NOW)


@given(
    st.lists(
        st.one_of(
            st.builds(segment_name, st.integers(1, 3), st.integers(0, 600), st.just(SEGMENT)),
            st.builds(
                lambda t, s: segment_name(t, s) + ".partial", st.integers(1, 3), st.integers(0, 600)
            ),
            st.sampled_from(["00000002.history", "000000010000000000000002.00000028.backup"]),
            st.text(max_size=30),
        )
    ),
    st.one_of(st.none(), st.integers(0, 700)),
)
def test_wal_expiry_properties(names: list[str], keep_from: int | None) -> None:
    def expires(name: str) -> bool:
        base = name.removesuffix(".partial")
        if keep_from is None or len(base) != 24 or any(c not in "0123456789ABCDEF" for c in base):
            return False
        timeline, high, low = int(base[:8], 16), int(base[8:16], 16), int(base[16:], 16)
        return timeline != 0 and low < 256 and high * 256 + low < keep_from

    expired = wal_to_expire(names, keep_from, SEGMENT)
    assert expired == sorted(set(expired))
    assert set(expired) == {name for name in names if expires(name)}
