"""Synchronous standby management on the leader: each step, and the key's invariant."""

from __future__ import annotations

from dataclasses import replace

import pytest
from ha_strategies import cluster, config, lease, maybe_lsns, member, primary
from hypothesis import given, settings
from hypothesis import strategies as st

from pgwarden.ha.actions import Action, SetSyncKey, SetSyncStandbys
from pgwarden.ha.sync import desired_standbys, plan_sync
from pgwarden.ha.view import STAR, ClusterView, LocalState, Standby
from pgwarden.model import Lsn, SyncMode, SyncState, Tags

ON, OFF, STRICT = SyncMode.ON, SyncMode.OFF, SyncMode.STRICT
NOSYNC = Tags(nosync=True)
POSITION = 5_000  # read when the current ssn was first seen in effect
NOW_POSITION = 6_000  # the primary has written more since


def standby(
    name: str, flush: int | None = POSITION, sync_state: str = "async", *, state: str = "streaming"
) -> Standby:
    return Standby(name, state, sync_state, Lsn(flush) if flush is not None else None)


def names(*members: str) -> frozenset[str]:
    return frozenset(members)


def leader_view(
    *,
    mode: SyncMode = ON,
    count: int = 1,
    key: tuple[str, ...] = (),
    key_leader: str | None = "a",
    version: int = 4,
    current: tuple[str, ...] = (),
    standbys: tuple[Standby, ...] = (),
    confirmed: int | None = POSITION,
    nosync: tuple[str, ...] = (),
) -> ClusterView:
    """Leader "a" with members b, c and d, the given sync key, ssn (`current`), rows of
    pg_stat_replication, and the position read when `current` was seen in effect."""
    infos = [member(n, tags=NOSYNC) for n in nosync]
    state = cluster(
        "a",
        "b",
        "c",
        "d",
        leader="a",
        infos=infos,
        config=config(synchronous_mode=mode, synchronous_node_count=count),
        sync=SyncState(key_leader, names(*key), version),
    )
    local = primary(
        NOW_POSITION,
        standbys=standbys,
        sync_standby_names=names(*current),
        sync_confirmed_lsn=Lsn(confirmed) if confirmed is not None else None,
    )
    return ClusterView("a", state, local, lease(holds=True))


B_SYNC = standby("b", sync_state="sync")
C_SYNC = standby("c", sync_state="sync")
B_LOST = standby("b", sync_state="async", state="catchup")  # no longer a candidate


def step(the_view: ClusterView, actions: list[Action], phrase: str, id: str) -> object:
    return pytest.param(the_view, actions, phrase, id=id)


STEPS = [
    step(leader_view(mode=OFF, version=-1), [], "", "off-nothing-to-do"),
    step(leader_view(mode=OFF, key=()), [], "", "off-own-empty-key"),
    step(
        leader_view(mode=OFF, current=("b",)),
        [SetSyncStandbys(frozenset())],
        "synchronous mode is off",
        "off-drops-ssn",
    ),
    step(
        leader_view(mode=OFF, key=("b",), current=("b",), standbys=(B_SYNC,)),
        [SetSyncKey(frozenset(), 4)],
        "synchronous mode is off",
        "off-empties-key-before-ssn",
    ),
    step(
        leader_view(mode=OFF, key_leader="c"),
        [SetSyncKey(frozenset(), 4)],
        "synchronous mode is off",
        "off-claims-old-leaders-key",
    ),
    step(
        leader_view(key=("b",), key_leader="c", current=("b",), standbys=(B_SYNC,)),
        [SetSyncKey(frozenset(), 4)],
        "claiming the sync key",
        "claim-key-of-previous-leader",
    ),
    step(
        leader_view(key_leader=None, version=-1),
        [SetSyncKey(frozenset(), -1)],
        "claiming the sync key",
        "create-missing-key",
    ),
    step(
        leader_view(key=("b",), current=("b",)),
        [SetSyncKey(frozenset(), 4)],
        "no synchronous standby candidate",
        "on-no-candidate-empties-key-first",
    ),
    step(
        leader_view(current=("b",)),
        [SetSyncStandbys(frozenset())],
        "degrading to asynchronous replication",
        "on-no-candidate-then-degrades",
    ),
    step(leader_view(), [], "no synchronous standby available", "on-no-candidate-async"),
    step(
        leader_view(mode=STRICT),
        [SetSyncStandbys(frozenset({STAR}))],
        "strict mode requires a standby",
        "strict-no-candidate-requires-any",
    ),
    step(
        leader_view(mode=STRICT, key=("b",), current=("b",)),
        [],
        "strict mode: no synchronous standby available, writes wait",
        "strict-never-degrades",
    ),
    step(
        leader_view(standbys=(standby("b"),)),
        [SetSyncStandbys(names("b"))],
        "requiring new synchronous standbys before listing them",
        "require-before-listing",
    ),
    step(
        leader_view(mode=STRICT, current=(STAR,), standbys=(standby("b"),)),
        [SetSyncStandbys(names("b"))],
        "requiring new synchronous standbys",
        "strict-star-replaced-by-candidate",
    ),
    step(
        leader_view(key=("b",), current=("b",), standbys=(B_LOST, standby("c"))),
        [SetSyncStandbys(names("b", "c"))],
        "requiring new synchronous standbys",
        "replace-requires-both-first",
    ),
    step(
        leader_view(key=("b",), current=("b", "c"), standbys=(B_LOST, C_SYNC)),
        [SetSyncKey(names("c"), 4)],
        "new synchronous standbys caught up",
        "replace-lists-caught-up-newcomer",
    ),
    step(
        leader_view(key=("b",), current=("b", "c"), standbys=(B_LOST, C_SYNC), confirmed=None),
        [],
        "waiting for new synchronous standbys to catch up",
        "replace-waits-until-setting-seen-in-effect",
    ),
    step(
        leader_view(key=("b",), current=("b",), standbys=(standby("b", 10, "sync"), standby("c"))),
        [],
        "",
        "listed-standby-kept-over-a-more-advanced-one",
    ),
    step(
        leader_view(current=("b",), standbys=(standby("b", sync_state="quorum"),)),
        [SetSyncKey(names("b"), 4)],
        "caught up",
        "quorum-standby-counts",
    ),
    step(
        leader_view(current=("b",), standbys=(standby("b", sync_state="potential"),)),
        [],
        "waiting for new synchronous standbys to catch up",
        "not-yet-synchronous",
    ),
    step(
        leader_view(current=("b",), standbys=(standby("b", POSITION - 1, "sync"),)),
        [],
        "waiting for new synchronous standbys to catch up",
        "flushed-short-of-position",
    ),
    step(
        leader_view(current=("b",), standbys=(standby("b", None, "sync"),)),
        [],
        "waiting",
        "flush-unknown",
    ),
    step(
        leader_view(current=("b",), standbys=(B_SYNC,), confirmed=None),
        [],
        "waiting",
        "setting-not-yet-seen-in-effect",
    ),
    step(
        leader_view(key=("b", "c"), current=("b", "c"), standbys=(B_SYNC, standby("c", None))),
        [SetSyncKey(names("b"), 4)],
        "dropping standbys from the sync key",
        "shrink-key-first",
    ),
    step(
        leader_view(key=("b",), current=("b", "c"), standbys=(B_SYNC, standby("c", None))),
        [SetSyncStandbys(names("b"))],
        "requiring only the synchronous standbys",
        "then-shrink-ssn",
    ),
    step(leader_view(key=("b",), current=("b",), standbys=(B_SYNC,)), [], "", "steady"),
    step(
        leader_view(count=2, key=("b", "c"), current=("b", "c"), standbys=(B_SYNC, C_SYNC)),
        [],
        "",
        "steady-two",
    ),
]


@pytest.mark.parametrize(("the_view", "actions", "phrase"), STEPS)
def test_plan_sync_step(the_view: ClusterView, actions: list[Action], phrase: str) -> None:
    planned, reason = plan_sync(the_view)
    assert planned == actions
    assert phrase in reason
    if not phrase:
        assert reason == ""


MEMBERS = {n: member(n) for n in ("b", "c", "d")} | {"e": member("e", tags=NOSYNC)}


@pytest.mark.parametrize(
    ("rows", "count", "wanted"),
    [
        pytest.param(
            (standby("b", 10), standby("c", 30), standby("d", 20)),
            2,
            {"c", "d"},
            id="most-advanced",
        ),
        pytest.param((standby("c", 10), standby("b", 10)), 1, {"b"}, id="tie-smaller-name"),
        pytest.param((standby("b", None), standby("c", 1)), 1, {"c"}, id="unknown-flush-last"),
        pytest.param(
            (standby("b", 50, state="catchup"), standby("c", 1)), 1, {"c"}, id="streaming-only"
        ),
        pytest.param((standby("x", 50), standby("c", 1)), 1, {"c"}, id="members-only"),
        pytest.param((standby("e", 50), standby("c", 1)), 1, {"c"}, id="nosync-excluded"),
        pytest.param((standby("b"), standby("c")), 5, {"b", "c"}, id="fewer-than-count"),
        pytest.param((standby("b"),), 0, set(), id="count-zero"),
        pytest.param((standby("b"),), -1, set(), id="count-negative"),
    ],
)
def test_desired_standbys(rows: tuple[Standby, ...], count: int, wanted: set[str]) -> None:
    local = primary(standbys=rows)
    assert desired_standbys(local, MEMBERS, count) == wanted


def test_desired_standbys_keeps_the_listed_ones_first() -> None:
    """A listed standby stays while it streams, even behind another: no flapping."""
    local = primary(standbys=(standby("b", 10), standby("c", 30), standby("d", 20)))
    assert desired_standbys(local, MEMBERS, 1, frozenset({"b"})) == {"b"}
    assert desired_standbys(local, MEMBERS, 2, frozenset({"b"})) == {"b", "c"}
    lost = primary(standbys=(standby("b", 10, state="catchup"), standby("c", 30)))
    assert desired_standbys(lost, MEMBERS, 1, frozenset({"b"})) == {"c"}


# ------------------------------------------------------------------ properties
POOL = ("b", "c", "d", "x")  # x streams but is not a member (a stray connection)
rows = st.builds(
    Standby,
    name=st.sampled_from(POOL),
    state=st.sampled_from(["streaming", "streaming", "catchup"]),
    sync_state=st.sampled_from(["sync", "quorum", "potential", "async"]),
    flush_lsn=maybe_lsns,
)


_key_members = st.frozensets(st.sampled_from(POOL), max_size=2)


@st.composite
def sync_keys(draw: st.DrawFn) -> SyncState:
    """Mostly our own key, sometimes none yet or one left by the previous leader "b"."""
    kind = draw(st.sampled_from(["own", "own", "own", "own", "absent", "previous"]))
    if kind == "absent":
        return SyncState(None, frozenset(), -1)
    leader = "a" if kind == "own" else draw(st.sampled_from(["b", None]))
    return SyncState(leader, draw(_key_members), draw(st.integers(0, 5)))


# A primary's WAL position is never 0/0 (WAL starts past the first segment); at 0/0 a
# standby that reported no flush position would count as caught up.
positions = st.sampled_from([None, 100, 200, 5_000_000]).map(
    lambda p: Lsn(p) if p is not None else None
)


@st.composite
def sync_views(draw: st.DrawFn) -> ClusterView:
    """The leader "a" with an arbitrary sync key, ssn and pg_stat_replication; ssn is
    often one the plan itself leads to (the key, the wanted set, or both)."""
    seen = tuple(draw(st.lists(rows, max_size=4, unique_by=lambda s: s.name)))
    infos = [
        member(n, tags=Tags(nosync=draw(st.sampled_from([False, False, True])))) for n in "bcd"
    ]
    state = cluster(
        "a",
        leader="a",
        infos=infos,
        config=config(
            synchronous_mode=draw(st.sampled_from([ON, ON, STRICT, OFF])),
            synchronous_node_count=draw(st.integers(0, 3)),
        ),
        sync=draw(sync_keys()),
    )
    key = state.sync.members
    local = primary(wal_position=draw(positions), standbys=seen)
    wanted = desired_standbys(local, state.members, state.config.synchronous_node_count, key)
    current = draw(
        st.one_of(
            st.frozensets(st.sampled_from(POOL)),
            st.sampled_from([frozenset({STAR}), key, wanted, key | wanted, key | wanted]),
        )
    )
    local = replace(local, sync_standby_names=current, sync_confirmed_lsn=draw(positions))
    return ClusterView("a", state, local, lease(holds=True))


def holds_acknowledged_commits(local: LocalState, name: str) -> bool:
    """Required by ssn, synchronous, and flushed past the position read once ssn was seen
    in effect: every commit acknowledged after that read reached it too."""
    row = next((s for s in local.standbys if s.name == name), None)
    return (
        name in local.sync_standby_names
        and row is not None
        and row.sync_state in ("sync", "quorum")
        and local.sync_confirmed_lsn is not None
        and row.flush_lsn is not None
        and row.flush_lsn >= local.sync_confirmed_lsn
    )


@settings(max_examples=1200)
@given(sync_views())
def test_sync_key_never_lists_a_standby_that_may_lack_commits(the_view: ClusterView) -> None:
    key, local = the_view.cluster.sync.members, the_view.local
    actions, _ = plan_sync(the_view)
    assert len(actions) <= 1  # one store or configuration change per tick, in order
    for action in actions:
        if isinstance(action, SetSyncKey):
            for name in action.members:
                assert name in key or holds_acknowledged_commits(local, name), action
        else:
            assert isinstance(action, SetSyncStandbys)
            dropped = (key & local.sync_standby_names) - action.names
            assert not dropped, f"{action} drops {dropped} while the key lists them"


def apply(the_view: ClusterView, action: Action) -> ClusterView:
    """What the executor makes of one action: a new key, or a new ssn not yet confirmed."""
    state, local = the_view.cluster, the_view.local
    if isinstance(action, SetSyncKey):
        sync = SyncState("a", action.members, state.sync.version + 1)
        return replace(the_view, cluster=replace(state, sync=sync))
    assert isinstance(action, SetSyncStandbys)
    local = replace(local, sync_standby_names=action.names, sync_confirmed_lsn=None)
    return replace(the_view, local=local)


def settle(the_view: ClusterView) -> ClusterView:
    """PostgreSQL applies ssn before the next tick; the agent reads its position once every
    required standby shows as synchronous."""
    local = the_view.local
    required = local.sync_standby_names

    def row(s: Standby) -> Standby:
        chosen = s.name in required and s.state == "streaming"
        return replace(s, sync_state="sync" if chosen else "async")

    seen = tuple(map(row, local.standbys))
    in_effect = STAR not in required and required <= {
        s.name for s in seen if s.sync_state == "sync"
    }
    confirmed = local.sync_confirmed_lsn
    if confirmed is None and in_effect:
        confirmed = local.wal_position
    return replace(the_view, local=replace(local, standbys=seen, sync_confirmed_lsn=confirmed))


@settings(max_examples=500)
@given(sync_views())
def test_sync_converges_and_every_listed_standby_stays_safe(the_view: ClusterView) -> None:
    """From a consistent start (the key lists only standbys holding every acknowledged
    commit), every tick keeps it so, and the leader reaches a steady state."""
    local, sync = the_view.local, the_view.cluster.sync
    safe = {s.name for s in local.standbys if holds_acknowledged_commits(local, s.name)}
    if sync.leader == "a":
        own = replace(sync, members=sync.members & safe)
        the_view = replace(the_view, cluster=replace(the_view.cluster, sync=own))
    for _ in range(8):
        actions, _ = plan_sync(the_view)
        if actions:
            the_view = apply(the_view, actions[0])
            local = the_view.local
            safe &= local.sync_standby_names  # no longer required: new commits may miss it
            assert the_view.cluster.sync.members <= safe
        settled = settle(the_view)
        if not actions and settled == the_view:
            break
        the_view = settled
        local = the_view.local
        safe |= {s.name for s in local.standbys if holds_acknowledged_commits(local, s.name)}
    else:
        pytest.fail(f"no steady state after 8 ticks: {plan_sync(the_view)}")
    config, local, key = the_view.cluster.config, the_view.local, the_view.cluster.sync.members
    members = the_view.cluster.members
    wanted = desired_standbys(local, members, config.synchronous_node_count, key)
    confirmed = local.sync_confirmed_lsn
    if config.synchronous_mode is OFF:
        assert (key, local.sync_standby_names) == (frozenset(), frozenset())
    elif (
        wanted
        and confirmed is not None
        and all((s.flush_lsn or 0) >= confirmed for s in local.standbys if s.name in wanted)
    ):
        assert key == wanted == local.sync_standby_names
    elif config.synchronous_mode is STRICT:
        assert local.sync_standby_names  # writes wait rather than degrade
