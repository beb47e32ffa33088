"""The pure HA decision: one scenario per rule, and the safety properties over all views."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from ha_strategies import (
    CLUSTER_ID,
    NAMES,
    NOW,
    OTHER_CLUSTER_ID,
    World,
    cluster,
    config,
    empty_dir,
    lease,
    leases,
    local_states,
    lsns,
    may_take_writes,
    member,
    nows,
    primary,
    replica,
    stopped,
    view,
    worlds,
    writable_local_states,
)
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st

from pgwarden.dcs.base import SessionState
from pgwarden.ha.actions import (
    AcquireLease,
    Action,
    Bootstrap,
    Clone,
    Decision,
    EnsureSlots,
    Fence,
    Follow,
    Promote,
    RecordInitialize,
    ReleaseLease,
    Rewind,
    SetSyncKey,
    SetSyncStandbys,
    StartPostgres,
    UpdateOptime,
)
from pgwarden.ha.decide import MAX_CRASH_RESTARTS, decide
from pgwarden.ha.view import ClusterView, Lease, LocalState, Standby
from pgwarden.model import FailoverRequest, Lsn, MemberInfo, PgState, SyncMode, SyncState, Tags

ABC = ("a", "b", "c")
HOLDS = lease(holds=True)
LOST = lease(session=SessionState.LOST)
LATE = NOW - 3.0  # confirmed 3 s ago: with ttl 4 and margin 1 the deadline is exactly NOW
EMPTY = empty_dir()
SYNC_ON = config(synchronous_mode=SyncMode.ON)
PAUSED = config(paused=True)
WIN = (AcquireLease(), Promote())
NO_FAILOVER = Tags(nofailover=True)
PRIO2 = Tags(failover_priority=2)
B_STREAMS = Standby("b", "streaming", "async", Lsn(4_000))
B_SYNC = Standby("b", "streaming", "sync", Lsn(5_000))


def case(
    id: str, the_view: ClusterView, actions: tuple[Action, ...], phrase: str, now: float = NOW
) -> Any:
    return pytest.param(the_view, now, actions, phrase, id=id)


def lead(local: LocalState, *, the_lease: Lease = HOLDS, **fields: Any) -> ClusterView:
    """Member "a" holds the lease among a, b and c."""
    return view("a", cluster(*ABC, leader="a", **fields), local, the_lease)


def under(leader: str, local: LocalState, **fields: Any) -> ClusterView:
    """Member "a" of a, b and c while `leader` holds the lease."""
    return view("a", cluster(*ABC, leader=leader, **fields), local)


def race(
    local: LocalState | None = None,
    *,
    me: str = "b",
    peers: dict[str, int | None] | None = None,
    infos: tuple[MemberInfo, ...] = (),
    **fields: Any,
) -> ClusterView:
    """No leader; `me` ("b" by default) is a replica at 300 among a, b and c."""
    the_local = local if local is not None else replica("a", 300)
    state = cluster(*ABC, infos=infos, **fields)
    return view(me, state, the_local, peers=peers if peers is not None else {"a": None})


def crashed(count: int) -> LocalState:
    return stopped(pg=PgState.CRASHED, crash_count=count)


FOREIGN = stopped(system_identifier=OTHER_CLUSTER_ID)
SLOTS = EnsureSlots(frozenset({"b", "c"}))
SYNC_KEY_4 = SyncState("a", frozenset(), 4)
ONLY_B, B_AND_C = SyncState("a", frozenset({"b"}), 2), SyncState("a", frozenset({"b", "c"}), 2)
STRICT = config(synchronous_mode=SyncMode.STRICT)
B_CAUGHT_UP = primary(
    5_100,
    standbys=(B_SYNC,),
    sync_standby_names=frozenset({"b"}),
    sync_confirmed_lsn=Lsn(5_000),  # read once b showed as synchronous
)

# fmt: off
# One scenario per row: id, view, the exact actions, a phrase of the reason[, now].
BOOTSTRAP_AND_CLONE = [
    case("race-to-bootstrap", view("a", cluster(initialize=None), EMPTY),
         (AcquireLease(), Bootstrap()), "racing to bootstrap"),
    case("other-bootstraps", view("a", cluster(leader="b", initialize=None), EMPTY), (),
         "waiting for b to bootstrap"),
    case("lease-won-bootstraps", view("a", cluster(leader="a", initialize=None), EMPTY, HOLDS),
         (Bootstrap(),), "I hold the lease of an uninitialized"),
    case("older-session-lease", view("a", cluster(leader="a", initialize=None), EMPTY), (),
         "waiting for a to bootstrap"),
    case("clone-running-leader", under("b", EMPTY), (Clone("b"),),
         "creating a replica from the leader b"),
    case("leader-starting",
         view("a", cluster(leader="b", infos=[member("b", state=PgState.STARTING)]), EMPTY), (),
         "waiting for the leader b to run"),
    case("leader-unpublished", view("a", cluster(leader="b"), EMPTY), (),
         "waiting for the leader b to run"),
    case("no-leader-to-clone", view("a", cluster("b"), EMPTY), (), "no leader to clone from"),
    case("leader-records-initialize",
         view("a", cluster(leader="a", initialize=None), primary(), HOLDS), (RecordInitialize(),),
         "recording the cluster's system identifier"),
    case("wiped-store-primary-claims", view("a", cluster(initialize=None), primary()),
         (AcquireLease(), RecordInitialize()), "my data becomes the cluster"),
    case("foreign-under-leader", under("b", FOREIGN), (), "belongs to another cluster"),
    case("foreign-no-leader", race(FOREIGN), (), "belongs to another cluster"),
    case("foreign-holding-lease", lead(FOREIGN), (), "belongs to another cluster"),
    case("foreign-replica", race(replica("b", system_identifier=OTHER_CLUSTER_ID)), (),
         f"system identifier {OTHER_CLUSTER_ID}, cluster {CLUSTER_ID}"),
]

LEADER = [
    case("healthy-primary", lead(primary(5_000)), (UpdateOptime(Lsn(5_000)), SLOTS),
         "I am the leader, a healthy primary on timeline 3"),
    case("position-unknown", lead(primary(wal_position=None)), (SLOTS,), "I am the leader"),
    case("keeps-slots-of-recent-members",
         lead(replace(primary(5_000), recent_members=frozenset({"d", "a"}))),
         (UpdateOptime(Lsn(5_000)), EnsureSlots(frozenset({"b", "c", "d"}))), "I am the leader"),
    case("sync-requires-standby",
         lead(primary(5_000, standbys=(B_STREAMS,)), config=SYNC_ON, sync=SYNC_KEY_4),
         (UpdateOptime(Lsn(5_000)), SLOTS, SetSyncStandbys(frozenset({"b"}))),
         "healthy primary on timeline 3; requiring new synchronous standbys"),
    case("sync-lists-caught-up",
         lead(B_CAUGHT_UP, config=SYNC_ON, sync=SYNC_KEY_4),
         (UpdateOptime(Lsn(5_100)), SLOTS, SetSyncKey(frozenset({"b"}), 4)),
         "new synchronous standbys caught up"),
    case("promote-in-recovery", lead(replica("c")), (Promote(),),
         "I hold the leader lease; promoting"),
    case("unconfirmed-holder-waits",
         lead(replica("c"), the_lease=lease(holds=True, confirmed_at=None)), (),
         "cannot confirm it now; changing nothing"),
    case("late-holder-waits", lead(replica("c"), the_lease=lease(holds=True, confirmed_at=LATE)),
         (), "cannot confirm it now; changing nothing"),
    case("fenced-holder-stays-down",
         lead(primary(pg=PgState.STOPPED, in_recovery=None),
              the_lease=lease(holds=True, confirmed_at=LATE)),
         (), "cannot confirm it now; changing nothing"),
    case("holder-promotes-in-time",
         lead(replica("c"), the_lease=lease(holds=True, confirmed_at=LATE)), (Promote(),),
         "promoting", NOW - 0.001),
    case("not-answering-sql", lead(replica(None, in_recovery=None)), (), "does not answer SQL yet"),
    case("starting", lead(primary(pg=PgState.STARTING, in_recovery=None)), (),
         "waiting for PostgreSQL to start"),
    case("paused-primary", lead(primary(7_000), config=PAUSED), (UpdateOptime(Lsn(7_000)),),
         "paused: I hold the lease and change nothing"),
    case("paused-stopped", lead(stopped(), config=PAUSED), (), "paused"),
    case("stopped-starts", lead(stopped()), (StartPostgres(),),
         "PostgreSQL is stopped; starting it"),
]

FOLLOW = [
    case("healthy-replica", under("b", replica("b")), (), "a healthy replica following b"),
    case("refollow-new-leader", under("b", replica("c")), (Follow("b"),),
         "following the new leader b"),
    case("standby-without-upstream", under("b", replica(None)), (Follow("b"),),
         "following the new leader b"),
    case("stopped-replica-starts", under("b", stopped("b")), (Follow("b"),),
         "starting as a replica of b"),
    case("crashed-replica-of-old-leader", under("b", stopped("c", pg=PgState.CRASHED)),
         (Follow("b"),), "starting as a replica of b"),
    case("starting-replica", under("b", replica("c", pg=PgState.STARTING)), (),
         "waiting for PostgreSQL to start; b is the leader"),
    case("former-primary-rewinds", under("b", stopped()), (Rewind("b"),),
         "rejoining b as a replica: rewinding first"),
    case("failed-rewind-reclones", under("b", stopped(rejoin_failed=True)), (Clone("b"),),
         "rewind failed earlier; re-cloning from b"),
    case("rewind-waits-for-leader",
         under("b", stopped(), infos=[member("b", state=PgState.STOPPED)]), (),
         "waiting for the leader b to run"),
    case("my-older-session-leads", under("a", replica("b")), (),
         "waiting for the lease of my previous session to expire"),
    case("lost-session-replica-follows", view("a", cluster(*ABC, leader="b"), replica("b"), LOST),
         (), "a healthy replica following b"),
]

RACE = [
    case("most-wal-wins", race(peers={"a": None, "c": 200}), WIN,
         "best healthy candidate at 0/12C"),
    case("behind-a-peer", race(peers={"c": 400}), (), "c is a better candidate at 0/190"),
    case("tie-smaller-name-wins", race(peers={"a": None, "c": 300}), WIN, "best healthy"),
    case("tie-larger-name-yields", race(me="c", peers={"b": 300}), (), "b is a better candidate"),
    case("tie-higher-priority-wins", race(peers={"c": 300}, infos=(member("c", tags=PRIO2),)), (),
         "c is a better candidate"),
    case("priority-beats-name",
         race(replica("a", 300, tags=PRIO2), peers={"a": 300}, infos=(member("b", tags=PRIO2),)),
         WIN, "best healthy"),
    case("ranked-by-published-priority", race(replica("a", 300, tags=PRIO2), peers={"a": 300}), (),
         "a is a better candidate"),
    case("nofailover-peer-ignored", race(peers={"c": 400}, infos=(member("c", tags=NO_FAILOVER),)),
         WIN, "best healthy"),
    case("my-nofailover", race(replica("a", 300, tags=NO_FAILOVER)), (),
         "my nofailover tag keeps me out of the race"),
    case("published-nofailover", race(peers={"c": 200}, infos=(member("b", tags=NO_FAILOVER),)), (),
         "my nofailover tag"),
    case("unreachable-peer-ignored", race(peers={"c": None}), WIN, "best healthy"),
    case("unpublished-peer-ignored", race(peers={"x": 900}), WIN, "best healthy"),
    case("unpublished-me-invisible",
         view("b", cluster("a", "c"), replica("a", 900), peers={"c": 300}), (),
         "my member key is not published yet; not racing"),
    case("lag-at-the-limit", race(optime=Lsn(300 + (1 << 20))), WIN, "best healthy"),
    case("lag-beyond-limit", race(optime=Lsn(301 + (1 << 20))), (),
         "no leader, but I am 1048577 bytes behind its last position"),
    case("ahead-of-optime", race(config=config(maximum_lag_on_failover=0), optime=Lsn(200)), WIN,
         "best healthy"),
    case("sync-mode-unlisted", race(config=SYNC_ON, sync=SyncState("a", frozenset({"c"}), 2)), (),
         "only synchronous standbys may be promoted"),
    case("sync-mode-listed-wins",
         race(config=STRICT, sync=ONLY_B, peers={"c": 900}),
         WIN, "best healthy"),
    case("sync-mode-listed-peer-ahead",
         race(config=SYNC_ON, sync=B_AND_C, peers={"c": 900}), (),
         "c is a better candidate"),
    case("failover-to-another", race(failover=FailoverRequest(None, "c")), (),
         "a failover to c was requested"),
    case("failover-to-me", race(failover=FailoverRequest(None, "b")), WIN,
         "a failover to me was requested"),
    case("switchover-without-target", race(failover=FailoverRequest("a", None)), WIN,
         "best healthy"),
    case("paused", race(config=PAUSED), (), "the cluster is paused; not racing"),
    case("not-answering", race(replica("a", 300, in_recovery=None, wal_position=None)), (),
         "my PostgreSQL does not answer; not racing"),
    case("primary-takes-lease", race(primary(300)), (AcquireLease(),),
         "no leader and I am the primary; taking the lease"),
    case("cold-start-former-primary", race(stopped()), (AcquireLease(), StartPostgres()),
         "I was the primary, taking the lease and starting PostgreSQL"),
    case("cold-start-replica", race(stopped("a")), (StartPostgres(),),
         "starting PostgreSQL to take part"),
    case("crashed-replica-starts", race(stopped("a", pg=PgState.CRASHED)), (StartPostgres(),),
         "starting PostgreSQL to take part"),
]

FENCING = [
    case("session-lost", lead(primary(), the_lease=lease(holds=True, session=SessionState.LOST)),
         (Fence(),), "my consensus-store session expired"),
    case("another-leader", under("b", primary()), (Fence(),), "b holds the leader lease"),
    case("another-leader-while-starting",
         under("b", primary(pg=PgState.STARTING, in_recovery=None)), (Fence(),),
         "b holds the leader lease"),
    case("stale-lease-of-mine", under("a", primary()), (Fence(),),
         "the leader lease belongs to an older session of mine"),
    case("deadline-reached", lead(primary(), the_lease=lease(holds=True, confirmed_at=LATE)),
         (Fence(),), "cannot confirm my leader lease before its deadline"),
    case("just-before-deadline", lead(primary(), the_lease=lease(holds=True, confirmed_at=LATE)),
         (UpdateOptime(Lsn(5_000)), SLOTS), "I am the leader", NOW - 0.001),
    case("session-timeout-below-ttl", lead(primary(), the_lease=lease(holds=True, timeout=2.0)),
         (Fence(),), "before its deadline", NOW + 0.5),
    case("never-confirmed", lead(primary(), the_lease=lease(holds=True, confirmed_at=None)),
         (Fence(),), "before its deadline"),
    case("no-leader-unconfirmed-primary", view("a", cluster(), primary(), lease(confirmed_at=None)),
         (Fence(),), "before its deadline"),
    case("paused-keeps-late-primary",
         lead(primary(), the_lease=lease(holds=True, confirmed_at=NOW - 20), config=PAUSED),
         (UpdateOptime(Lsn(5_000)),), "paused"),
    case("paused-fences-under-another-leader", under("b", primary(), config=PAUSED), (Fence(),),
         "b holds the leader lease"),
    case("paused-fences-lost-session", view("a", cluster(config=PAUSED), primary(), LOST),
         (Fence(),), "session expired"),
]

# fmt: on


@pytest.mark.parametrize(
    ("the_view", "now", "actions", "phrase"), BOOTSTRAP_AND_CLONE + LEADER + FOLLOW + RACE + FENCING
)
def test_scenario(
    the_view: ClusterView, now: float, actions: tuple[Action, ...], phrase: str
) -> None:
    decision = decide(the_view, now)
    assert decision.actions == actions
    assert phrase in decision.reason


@pytest.mark.parametrize("crashes", range(MAX_CRASH_RESTARTS + 3))
def test_lease_holder_restarts_a_crashing_postgres_then_releases_the_lease(crashes: int) -> None:
    decision = decide(lead(crashed(crashes)), NOW)
    if crashes < MAX_CRASH_RESTARTS:
        assert decision.actions == (StartPostgres(),)
        assert "PostgreSQL crashed; starting it" in decision.reason
    else:
        assert decision.actions == (ReleaseLease(),)
        assert f"PostgreSQL failed {crashes} times in a row; releasing the lease" in decision.reason


def test_requested_failover_to_a_member_behind_another_promotes_the_requested_one() -> None:
    state = cluster(*ABC, failover=FailoverRequest(None, "b"))
    b = decide(view("b", state, replica("a", 300), peers={"c": 400}), NOW)
    c = decide(view("c", state, replica("a", 400), peers={"b": 300}), NOW)
    assert b.actions == (AcquireLease(), Promote())
    assert "a failover to me was requested" in b.reason
    assert not c.promotes


# ------------------------------------------------------------------ properties
def unconditional(decision: Decision) -> bool:
    """Promotes without winning the lease first in the same decision."""
    for action in decision.actions:
        if isinstance(action, AcquireLease):
            return False
        if isinstance(action, Promote):
            return True
    return False


@settings(max_examples=1500)
@given(worlds())
def test_at_most_one_member_promotes(world: World) -> None:
    """Same snapshot, arbitrary local states, true peer positions: one promoter at most."""
    decisions = world.decisions()
    assert sum(d.promotes for d in decisions.values()) <= 1, decisions


@settings(max_examples=500)
@given(worlds(), st.data())
def test_only_the_lease_holder_promotes_unconditionally(world: World, data: st.DataObject) -> None:
    """Whatever peers report (or fail to), a promotion without AcquireLease is the leader's,
    and happens only before its lease deadline (no other member can hold the lease yet)."""
    names = [*world.cluster.members, *NAMES]
    config = world.cluster.config
    unguarded = []
    for agent in world.agents:
        peers = data.draw(st.dictionaries(st.sampled_from(names), st.one_of(st.none(), lsns)))
        decision = decide(world.view_of(agent, peers), world.now)
        if unconditional(decision):
            unguarded.append(agent.name)
            assert world.cluster.leader is not None
            assert world.cluster.leader.name == agent.name
            assert agent.lease.holds
            deadline = agent.lease.deadline(config.ttl, config.safety_margin)
            assert deadline is not None
            assert world.now < deadline
    assert len(unguarded) <= 1


@settings(max_examples=1000)
@given(
    st.sampled_from(NAMES[:3]),
    worlds(max_members=3),
    st.one_of(writable_local_states(), local_states()),
    leases,
    nows,
)
def test_a_primary_that_cannot_confirm_its_lease_is_fenced(
    me: str, world: World, local: LocalState, the_lease: Lease, now: float
) -> None:
    """Session lost, another leader, or (not paused) a passed or unknown deadline: a
    PostgreSQL that may take writes is stopped; a lease holder in time keeps writing."""
    the_view = ClusterView(me, world.cluster, local, the_lease, world.true_peers(me))
    decision = decide(the_view, now)
    state = the_view.cluster
    if not may_take_writes(local):
        assert Fence() not in decision.actions
        return
    deadline = the_lease.deadline(state.config.ttl, state.config.safety_margin)
    late = deadline is None or now >= deadline
    leader = state.leader.name if state.leader is not None else None
    must_fence = (
        the_lease.session is SessionState.LOST
        or (leader is not None and leader != me)
        or (late and not state.config.paused)
    )
    if must_fence:
        assert decision.actions == (Fence(),), decision
        assert not decision.keeps_writes
    elif leader == me and the_lease.holds:
        assert decision.keeps_writes, decision


# Deterministic (derandomize): a search that found its example once always finds it.
GENERATE_ONLY = settings(
    max_examples=10_000, database=None, phases=[Phase.generate], derandomize=True
)


def test_world_strategy_reaches_races_and_lease_promotions() -> None:
    """The properties above are not vacuous: the strategy produces both kinds of promotion."""

    def racing_winner(world: World) -> bool:
        return any(d.actions[:2] == WIN for d in world.decisions().values())

    def lease_promotion(world: World) -> bool:
        return any(d.actions == (Promote(),) for d in world.decisions().values())

    def contested_race(world: World) -> bool:
        yields = any("better candidate" in d.reason for d in world.decisions().values())
        return yields and racing_winner(world)

    for condition in (racing_winner, lease_promotion, contested_race):
        assert condition(find(worlds(), condition, settings=GENERATE_ONLY))
