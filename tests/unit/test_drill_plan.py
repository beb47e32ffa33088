"""The drill plan: which member runs the cluster's drill, when, and within which limits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgwarden.drill.plan import (
    DISK_MARGIN_BYTES,
    amcheck_options,
    choose_drill_member,
    disk_needed,
    disk_verdict,
    next_drill,
    time_verdict,
)
from pgwarden.model import Lsn, MemberInfo, PgState, Role

GIB = 1024**3


def member(
    name: str,
    role: Role = Role.REPLICA,
    state: PgState = PgState.RUNNING,
    received: int | None = 0x3000000,
) -> MemberInfo:
    return MemberInfo(
        name=name, role=role, state=state, timeline=1,
        received_lsn=None if received is None else Lsn(received), replayed_lsn=None,
        api_url=f"http://{name}:8008", host=name, port=5432,
    )  # fmt: skip


def cluster(*infos: MemberInfo) -> dict[str, MemberInfo]:
    return {info.name: info for info in infos}


PRIMARY = member("node1", Role.PRIMARY)


def test_the_replica_with_the_lowest_name_runs_it() -> None:
    members = cluster(PRIMARY, member("node3"), member("node2"))
    choice = choose_drill_member(members, "node1", None)
    assert choice.member == "node2"
    assert choice.reason == "node2 is the running, streaming replica with the lowest name"


def test_a_replica_with_a_lower_name_than_the_primary_is_still_a_replica() -> None:
    members = cluster(member("a", Role.PRIMARY), member("b"))
    assert choose_drill_member(members, "a", None).member == "b"
    members = cluster(member("b", Role.PRIMARY), member("a"))
    assert choose_drill_member(members, "b", None).member == "a"


@pytest.mark.parametrize(
    "unhealthy",
    [
        member("node2", state=PgState.STOPPED),
        member("node2", state=PgState.CRASHED),
        member("node2", state=PgState.STARTING),
        member("node2", received=None),  # never streamed
        member("node2", role=Role.UNKNOWN),
    ],
)
def test_an_unhealthy_replica_is_passed_over(unhealthy: MemberInfo) -> None:
    members = cluster(PRIMARY, unhealthy, member("node3"))
    assert choose_drill_member(members, "node1", None).member == "node3"


def test_the_primary_is_spared_while_it_has_members_but_none_streams() -> None:
    members = cluster(
        PRIMARY, member("node2", state=PgState.STOPPED), member("node3", received=None)
    )
    choice = choose_drill_member(members, "node1", None)
    assert choice.member is None
    assert choice.reason == (
        "no replica streams now (node2, node3: not running or not streaming); "
        "the primary node1 is spared"
    )


def test_a_lone_primary_runs_it_itself() -> None:
    choice = choose_drill_member(cluster(PRIMARY), "node1", None)
    assert (choice.member, choice.reason) == ("node1", "node1 is the only member of the cluster")


def test_a_lone_primary_that_does_not_run_cannot() -> None:
    stopped = member("node1", Role.PRIMARY, state=PgState.CRASHED)
    choice = choose_drill_member(cluster(stopped), "node1", None)
    assert (choice.member, choice.reason) == (None, "node1, the only member, does not run")


def test_without_a_leader_a_streaming_replica_still_runs_it_but_nothing_else() -> None:
    assert choose_drill_member(cluster(member("node2")), None, None).member == "node2"
    stale = member("node2", received=None)
    choice = choose_drill_member(cluster(stale), None, None)
    assert (choice.member, choice.reason) == (
        None,
        "the cluster has no leader and no streaming replica",
    )
    assert choose_drill_member({}, None, None).member is None


def test_a_configured_member_runs_it_whatever_its_role() -> None:
    members = cluster(PRIMARY, member("node2"), member("drillhost", state=PgState.STOPPED))
    choice = choose_drill_member(members, "node1", "drillhost")
    assert (choice.member, choice.reason) == ("drillhost", "drill.member names drillhost")
    assert choose_drill_member(members, "node1", "node1").member == "node1"


def test_a_configured_member_that_is_absent_means_no_drill() -> None:
    choice = choose_drill_member(cluster(PRIMARY, member("node2")), "node1", "drillhost")
    assert choice.member is None
    assert choice.reason == "drill.member names drillhost, which is not a member of the cluster now"


names = st.sampled_from(["a", "b", "c", "d", "e"])
states = st.sampled_from(list(PgState))
roles = st.sampled_from(list(Role))


@st.composite
def clusters(draw: st.DrawFn) -> tuple[dict[str, MemberInfo], str | None]:
    chosen = draw(st.sets(names, max_size=5))
    infos = {
        name: member(
            name,
            draw(roles),
            draw(states),
            draw(st.one_of(st.none(), st.integers(0, 2**40))),
        )
        for name in chosen
    }
    leader = draw(st.one_of(st.none(), st.sampled_from(sorted(chosen)) if chosen else st.none()))
    return infos, leader


@given(clusters())
def test_the_choice_never_loads_a_primary_that_has_other_members(
    drawn: tuple[dict[str, MemberInfo], str | None],
) -> None:
    members, leader = drawn
    choice = choose_drill_member(members, leader, None)
    if choice.member is not None:
        assert choice.member in members
        if choice.member == leader:
            assert set(members) == {leader}
        else:
            info = members[choice.member]
            assert info.role is Role.REPLICA and info.state is PgState.RUNNING
            assert choice.member == min(
                n
                for n, i in members.items()
                if n != leader
                and i.role is Role.REPLICA
                and i.state is PgState.RUNNING
                and i.received_lsn is not None
            )
    else:
        assert choice.reason


@given(clusters(), st.permutations(["a", "b", "c", "d", "e"]))
def test_every_agent_with_the_same_view_makes_the_same_choice(
    drawn: tuple[dict[str, MemberInfo], str | None], order: list[str]
) -> None:
    members, leader = drawn
    reordered = {name: members[name] for name in order if name in members}
    assert choose_drill_member(members, leader, None) == choose_drill_member(
        reordered, leader, None
    )


def test_next_drill_follows_the_cron_in_utc() -> None:
    after = datetime(2026, 12, 2, 16, 59, 30, tzinfo=UTC)
    assert next_drill("0 3 * * 0", after) == datetime(2026, 12, 6, 3, 0, tzinfo=UTC)
    assert next_drill("* * * * *", after) == datetime(2026, 12, 2, 17, 0, tzinfo=UTC)
    # Strictly after: a drill due now is not due again.
    exact = datetime(2026, 12, 2, 17, 0, tzinfo=UTC)
    assert next_drill("* * * * *", exact) == exact + timedelta(minutes=1)
    east = after.astimezone(timezone(timedelta(hours=2)))
    assert next_drill("0 3 * * *", east) == datetime(2026, 12, 3, 3, 0, tzinfo=UTC)
    assert next_drill(None, after) is None
    with pytest.raises(ValueError, match="time zone"):
        next_drill("* * * * *", datetime(2026, 12, 2))


def test_disk_space_fits_the_data_a_tenth_more_and_the_wal_margin() -> None:
    assert disk_needed(0) == DISK_MARGIN_BYTES
    assert disk_needed(10 * GIB) == 11 * GIB + DISK_MARGIN_BYTES
    assert disk_verdict(12 * GIB, 10 * GIB, "/scratch").ok
    assert disk_verdict(12 * GIB, 10 * GIB, "/scratch").reason == (
        "12.0 GiB free in /scratch, 12.0 GiB needed"
    )
    short = disk_verdict(12 * GIB - 1, 10 * GIB, "/scratch")
    assert not short.ok
    assert short.reason == (
        "not enough disk space for the drill in /scratch: 12.0 GiB free, 12.0 GiB needed "
        "(the backup's 10.0 GiB of data, a tenth more, and 1.0 GiB for WAL replay)"
    )
    assert not disk_verdict(0, 0, "/tmp").ok
    assert disk_verdict(0, 0, "/tmp").reason.startswith(
        "not enough disk space for the drill in /tmp: 0 B free, 1.0 GiB needed"
    )


@given(st.integers(0, 2**50), st.integers(0, 2**45))
def test_disk_verdict_is_monotonic_in_free_space(free: int, db: int) -> None:
    verdict = disk_verdict(free, db, "/x")
    assert verdict.ok == (free >= disk_needed(db))
    if verdict.ok:
        assert disk_verdict(free + 1, db, "/x").ok
    assert disk_needed(db) >= db + DISK_MARGIN_BYTES


def test_time_limit() -> None:
    assert time_verdict(59.9, 60).ok
    stopped = time_verdict(60, 60)
    assert not stopped.ok
    assert stopped.reason == (
        "the drill ran past its time limit (drill.max_duration: 60 s) and was stopped"
    )
    assert time_verdict(0.2, 0.5).ok and not time_verdict(0.6, 0.5).ok


def test_amcheck_depth_chooses_pg_amchecks_options() -> None:
    assert amcheck_options("standard") == ()
    assert amcheck_options("heapallindexed") == ("--heapallindexed",)
    assert amcheck_options("thorough") == ("--heapallindexed", "--parent-check", "--rootdescend")
