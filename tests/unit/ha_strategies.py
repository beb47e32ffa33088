"""Builders and hypothesis strategies for the inputs of the pure HA decision engine.

Builders give readable one-line scenarios (`primary()`, `replica("b")`, `cluster(...)`);
`worlds()` draws whole clusters: one shared store snapshot and every agent's own view.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from hypothesis import strategies as st

from pgwarden.dcs.base import SessionState
from pgwarden.ha.actions import Decision
from pgwarden.ha.decide import decide
from pgwarden.ha.view import ClusterView, Lease, LocalState
from pgwarden.model import (
    ClusterState,
    DynamicConfig,
    FailoverRequest,
    Leader,
    Lsn,
    MemberInfo,
    PgState,
    Role,
    SyncMode,
    SyncState,
    Tags,
)

NOW = 1_000.0
CLUSTER_ID = "7350000000000000001"
OTHER_CLUSTER_ID = "7350000000000000999"
NAMES = ("a", "b", "c", "d", "e")
GHOST = "ghost"  # a member key left behind by a host that is gone: its API never answers


# ------------------------------------------------------------------ builders
def member(
    name: str,
    *,
    state: PgState = PgState.RUNNING,
    role: Role = Role.REPLICA,
    lsn: int | None = None,
    tags: Tags | None = None,
) -> MemberInfo:
    """The `members/<name>` key a healthy agent publishes."""
    position = Lsn(lsn) if lsn is not None else None
    return MemberInfo(
        name=name,
        role=role,
        state=state,
        timeline=3,
        received_lsn=position,
        replayed_lsn=position,
        api_url=f"http://{name}:8008",
        host=name,
        port=5432,
        tags=tags or Tags(),
        system_identifier=CLUSTER_ID,
    )


def cluster(
    *names: str,
    leader: str | None = None,
    initialize: str | None = CLUSTER_ID,
    infos: Iterable[MemberInfo] = (),
    **fields: Any,
) -> ClusterState:
    """A store snapshot: running members `names` (plus `infos`), `leader` holding the lease."""
    members = {name: member(name) for name in names}
    members.update({info.name: info for info in infos})
    return ClusterState(
        initialize=initialize,
        leader=Leader(leader, session_id=1) if leader is not None else None,
        members=members,
        **fields,
    )


def config(**fields: Any) -> DynamicConfig:
    return DynamicConfig(**fields)


def lease(
    *,
    holds: bool = False,
    session: SessionState = SessionState.CONNECTED,
    confirmed_at: float | None = NOW - 0.5,
    timeout: float = 4.0,
) -> Lease:
    """By default a session confirmed half a second ago: the deadline is NOW + 2.5."""
    return Lease(session=session, holds=holds, confirmed_at=confirmed_at, timeout=timeout)


def primary(lsn: int = 5_000, **fields: Any) -> LocalState:
    """A running primary of our cluster at `lsn`."""
    base = LocalState(
        pg=PgState.RUNNING,
        initialized=True,
        system_identifier=CLUSTER_ID,
        in_recovery=False,
        timeline=3,
        wal_position=Lsn(lsn),
    )
    return replace(base, **fields)


def replica(leader: str | None, lsn: int = 5_000, **fields: Any) -> LocalState:
    """A running replica of our cluster following `leader`, holding WAL up to `lsn`."""
    return primary(lsn, **{"in_recovery": True, "configured_leader": leader, **fields})


def stopped(configured_leader: str | None = None, **fields: Any) -> LocalState:
    """An initialized data directory of our cluster whose PostgreSQL is not running."""
    base = LocalState(
        pg=PgState.STOPPED,
        initialized=True,
        system_identifier=CLUSTER_ID,
        configured_leader=configured_leader,
    )
    return replace(base, **fields)


def empty_dir() -> LocalState:
    return LocalState(pg=PgState.STOPPED, initialized=False)


def view(
    me: str,
    state: ClusterState,
    local: LocalState,
    the_lease: Lease | None = None,
    peers: Mapping[str, int | None] | None = None,
) -> ClusterView:
    positions = {n: Lsn(p) if p is not None else None for n, p in (peers or {}).items()}
    return ClusterView(me, state, local, the_lease or lease(), positions)


# ------------------------------------------------------------------ strategies
# Strategies are built once at import: building them inside draws costs more than deciding.
LSNS = (0, 100, 200, 5_000_000)  # ties, small gaps and one gap beyond most lag limits
lsns = st.sampled_from(LSNS).map(Lsn)
maybe_lsns = st.sampled_from((None, *LSNS)).map(lambda p: Lsn(p) if p is not None else None)
tags = st.builds(
    Tags,
    nofailover=st.booleans(),
    nosync=st.booleans(),
    failover_priority=st.sampled_from([0, 1, 2]),
)
configs = st.builds(
    DynamicConfig,
    ttl=st.sampled_from([4.0, 10.0]),
    safety_margin=st.sampled_from([0.5, 1.0]),
    maximum_lag_on_failover=st.sampled_from([0, 150, 1 << 20]),
    synchronous_mode=st.sampled_from([SyncMode.OFF, SyncMode.OFF, SyncMode.ON, SyncMode.STRICT]),
    synchronous_node_count=st.integers(0, 2),
    paused=st.sampled_from([False, False, True]),
)
# Around the deadlines the configs and timeouts above produce, and never confirmed.
confirmations = st.one_of(
    st.sampled_from([None, NOW - 20, NOW - 9.5, NOW - 3.5, NOW - 3.0, NOW - 0.5, NOW]),
    st.floats(NOW - 20, NOW),
)
leases = st.builds(
    Lease,
    # Mostly connected, as in life; suspended and lost sessions still come up often.
    session=st.sampled_from(
        [SessionState.CONNECTED] * 3 + [SessionState.SUSPENDED, SessionState.LOST]
    ),
    holds=st.booleans(),
    confirmed_at=confirmations,
    timeout=st.sampled_from([2.0, 4.0, 10.0]),
)
nows = st.one_of(st.just(NOW), st.floats(NOW, NOW + 15))
maybe_names = st.sampled_from((None, *NAMES))
_pg_states = st.sampled_from(PgState)
_recovery = st.sampled_from([True, False, None])
_identifiers = st.sampled_from([CLUSTER_ID, CLUSTER_ID, None, OTHER_CLUSTER_ID])
_initialized = st.sampled_from([True, True, True, False])
_timelines = st.integers(1, 3)
_crashes = st.integers(0, 4)
_shape = st.integers(0, 2)


@st.composite
def local_states(draw: st.DrawFn) -> LocalState:
    """Anything an agent may observe of its own PostgreSQL; a healthy replica of our
    cluster two times out of three, so that races between candidates are common."""
    if draw(_shape):
        return LocalState(
            pg=PgState.RUNNING,
            initialized=True,
            system_identifier=CLUSTER_ID,
            in_recovery=True,
            timeline=draw(_timelines),
            wal_position=draw(lsns),
            configured_leader=draw(maybe_names),
            tags=draw(tags),
        )
    return LocalState(
        pg=draw(_pg_states),
        initialized=draw(_initialized),
        system_identifier=draw(_identifiers),
        in_recovery=draw(_recovery),
        timeline=draw(_timelines),
        wal_position=draw(maybe_lsns),
        configured_leader=draw(maybe_names),
        crash_count=draw(_crashes),
        rejoin_failed=draw(st.booleans()),
        tags=draw(tags),
    )


@st.composite
def writable_local_states(draw: st.DrawFn) -> LocalState:
    """A PostgreSQL that is, or may be, a primary taking writes."""
    return LocalState(
        pg=draw(st.sampled_from([PgState.RUNNING, PgState.STARTING])),
        initialized=True,
        system_identifier=draw(_identifiers),
        in_recovery=draw(st.sampled_from([False, None])),
        timeline=draw(_timelines),
        wal_position=draw(maybe_lsns),
        crash_count=draw(_crashes),
        tags=draw(tags),
    )


def may_take_writes(local: LocalState) -> bool:
    """The spec, restated independently of decide.py: up, no leader to follow, and not
    known to be in recovery."""
    return (
        local.pg in (PgState.RUNNING, PgState.STARTING)
        and local.configured_leader is None
        and local.in_recovery is not True
    )


@dataclass(frozen=True)
class Agent:
    name: str
    local: LocalState
    lease: Lease

    @property
    def answers_with_position(self) -> bool:
        """What a peer's API reports: running, with a known WAL position."""
        return self.local.pg is PgState.RUNNING and self.local.wal_position is not None


@dataclass(frozen=True)
class World:
    """One store snapshot that every agent reads, and each agent's own observations."""

    cluster: ClusterState
    agents: tuple[Agent, ...]
    now: float

    def true_peers(self, me: str) -> dict[str, Lsn | None]:
        """What `me` learns by asking every other published member's API."""
        by_name = {agent.name: agent for agent in self.agents}
        peers: dict[str, Lsn | None] = {}
        for name in self.cluster.members:
            if name == me:
                continue
            agent = by_name.get(name)
            healthy = agent is not None and agent.answers_with_position
            peers[name] = agent.local.wal_position if agent is not None and healthy else None
        return peers

    def view_of(self, agent: Agent, peers: Mapping[str, Lsn | None] | None = None) -> ClusterView:
        chosen = self.true_peers(agent.name) if peers is None else peers
        return ClusterView(agent.name, self.cluster, agent.local, agent.lease, chosen)

    def decisions(self) -> dict[str, Decision]:
        """Every agent's decision this tick, each with true peer positions."""
        return {agent.name: decide(self.view_of(agent), self.now) for agent in self.agents}


def _published(agent: Agent, stale_tags: Tags | None, role: Role) -> MemberInfo:
    local = agent.local
    return replace(
        member(agent.name, state=local.pg, role=role, lsn=local.wal_position),
        tags=stale_tags if stale_tags is not None else local.tags,
        timeline=local.timeline,
        system_identifier=local.system_identifier,
    )


_publications = st.sampled_from(["own", "own", "own", "own", "stale", "absent"])
_roles = st.sampled_from(Role)
_candidates = st.sampled_from((*NAMES, GHOST))
_maybe_candidates = st.sampled_from((None, *NAMES, GHOST))
_syncs = st.builds(
    SyncState,
    leader=maybe_names,
    members=st.frozensets(_candidates, max_size=3),
    version=st.integers(-1, 3),
)
_failovers = st.one_of(
    st.none(),
    st.none(),
    st.none(),
    st.builds(FailoverRequest, from_=_maybe_candidates, to=_maybe_candidates),
)
_leaders = st.one_of(st.none(), _candidates)  # no leader half of the time: races
_initializes = st.sampled_from([CLUSTER_ID, CLUSTER_ID, None])
_optimes = st.sampled_from([None, 100, 200, 5_000_100]).map(
    lambda p: Lsn(p) if p is not None else None
)


@st.composite
def worlds(draw: st.DrawFn, max_members: int = 5) -> World:
    """1 to `max_members` agents with arbitrary local states, one shared snapshot.

    Agents mostly publish their member key with their own tags; some have not published
    yet (first tick after a start) or still show tags of an earlier run. A ghost key of
    a vanished host may be listed too. Names of absent members may appear anywhere.
    """
    count = draw(st.integers(1, max_members))
    agents = tuple(Agent(name, draw(local_states()), draw(leases)) for name in NAMES[:count])
    members: dict[str, MemberInfo] = {}
    for agent in agents:
        publication = draw(_publications)
        if publication == "absent":
            continue
        stale = draw(tags) if publication == "stale" else None
        members[agent.name] = _published(agent, stale, draw(_roles))
    if draw(st.booleans()):
        ghost = member(GHOST, state=draw(_pg_states), lsn=draw(lsns), tags=draw(tags))
        members[GHOST] = ghost
    leader = draw(_leaders)
    state = ClusterState(
        initialize=draw(_initializes),
        leader=Leader(leader, session_id=7) if leader is not None else None,
        members=members,
        config=draw(configs),
        sync=draw(_syncs),
        optime=draw(_optimes),
        failover=draw(_failovers),
    )
    return World(state, agents, draw(nows))
