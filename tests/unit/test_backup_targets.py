"""Point-in-time targets (pure): which backup reaches a target, and the settings written."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from test_backup_parts import NOW, manifest

from pgwarden.backup.targets import (
    RecoveryTarget,
    TargetError,
    check_archive_reaches,
    check_backup_reaches,
    choose_backup,
)

DAY = timedelta(days=1)
BACKUPS = [
    manifest(id="20261122T010000F", kind="full", stop_time=NOW - 2 * DAY, stop_lsn=0x1000000,
             timeline=1),
    manifest(id="20261123T010000F", kind="full", stop_time=NOW - DAY, stop_lsn=0x5000000,
             timeline=1),
    manifest(id="20261124T010000F", kind="full", stop_time=NOW, stop_lsn=0x9000000, timeline=2),
]  # fmt: skip


@pytest.mark.parametrize(
    ("target", "chosen"),
    [
        (RecoveryTarget("time", (NOW - DAY).isoformat()), "20261123T010000F"),
        (RecoveryTarget("time", (NOW - DAY + timedelta(hours=5)).isoformat()), "20261123T010000F"),
        (RecoveryTarget("time", (NOW + DAY).isoformat()), "20261124T010000F"),
        (RecoveryTarget("lsn", "0/5000000"), "20261123T010000F"),
        (RecoveryTarget("lsn", "0/4FFFFFF"), "20261122T010000F"),
        (RecoveryTarget("xid", "1234"), "20261124T010000F"),
        (RecoveryTarget("name", "before-upgrade"), "20261124T010000F"),
        (RecoveryTarget("immediate"), "20261124T010000F"),
        (RecoveryTarget(None, timeline="1"), "20261123T010000F"),
        (RecoveryTarget(None), "20261124T010000F"),
    ],
)
def test_the_newest_backup_consistent_before_the_target_is_chosen(
    target: RecoveryTarget, chosen: str
) -> None:
    assert choose_backup(list(reversed(BACKUPS)), target).id == chosen


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        (RecoveryTarget("time", (NOW - 3 * DAY).isoformat()), "is before the oldest backup"),
        (RecoveryTarget("lsn", "0/FFFFFF"), "is before the oldest backup"),
        (RecoveryTarget("time", "yesterday"), "is not a time like"),
        (RecoveryTarget("lsn", "3000028"), "is not a WAL position"),
        (RecoveryTarget("xid", "-1"), "is not a transaction id"),
        (RecoveryTarget("name", ""), "needs the name of a restore point"),
        (RecoveryTarget(None, timeline="0"), "must be latest, current or a timeline number"),
    ],
)
def test_unreachable_or_malformed_targets_are_refused(target: RecoveryTarget, reason: str) -> None:
    with pytest.raises(TargetError, match=reason):
        choose_backup(BACKUPS, target)


def test_a_given_backup_must_be_consistent_before_the_target() -> None:
    with pytest.raises(TargetError, match="is consistent only from"):
        check_backup_reaches(BACKUPS[2], RecoveryTarget("time", (NOW - DAY).isoformat()))
    check_backup_reaches(BACKUPS[0], RecoveryTarget("time", (NOW - DAY).isoformat()))


def test_settings_quote_values_and_follow_the_timeline() -> None:
    assert RecoveryTarget("name", "it's").settings() == {
        "recovery_target_name": "'it''s'",
        "recovery_target_action": "'promote'",
        "recovery_target_timeline": "'latest'",
    }
    assert RecoveryTarget("immediate", action="pause", timeline="2").settings() == {
        "recovery_target": "'immediate'",
        "recovery_target_action": "'pause'",
        "recovery_target_timeline": "'2'",
    }
    assert RecoveryTarget().settings() == {"recovery_target_timeline": "'latest'"}


SEG = 16 * 1024 * 1024


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        (RecoveryTarget("lsn", "0/7000000"), "is beyond the end of the archive (the newest "
                                             "archived segment is 000000020000000000000006)"),
        (RecoveryTarget(None, timeline="3"), "timeline 3 is not in the archive's history "
                                             "(timelines: 1, 2)"),
    ],
)  # fmt: skip
def test_targets_the_archive_cannot_reach_are_refused(target: RecoveryTarget, reason: str) -> None:
    with pytest.raises(TargetError, match=re.escape(reason)):
        check_archive_reaches(target, [1, 2], "000000020000000000000006", SEG)


def test_targets_inside_the_archive_pass() -> None:
    check_archive_reaches(
        RecoveryTarget("lsn", "0/6FFFFFF"), [1, 2], "000000020000000000000006", SEG
    )
    check_archive_reaches(
        RecoveryTarget(None, timeline="2"), [1, 2], "000000020000000000000006", SEG
    )
    with pytest.raises(TargetError, match="holds no WAL segment"):
        check_archive_reaches(RecoveryTarget("lsn", "0/1"), [1], None, SEG)
