"""PURE. `decide(view, now) -> Decision`: what this member does this tick, and why.

Rules, in order (the first that applies wins):
1. Fencing. A PostgreSQL that may take writes stops at once when our session is lost,
   when another member holds the lease, or when the lease deadline passes unconfirmed.
2. Bootstrap and cloning for an empty data directory.
3. A data directory of another cluster is never started or joined.
4. The lease holder makes its PostgreSQL a healthy primary and manages slots and sync.
5. Under another leader: follow it; a former primary rewinds first (or re-clones).
6. No leader: the best healthy member races for the lease, then promotes.

`now` is monotonic seconds, comparable with `Lease.confirmed_at`.
"""

from __future__ import annotations

from pgwarden.dcs.base import SessionState
from pgwarden.ha.actions import (
    AcquireLease,
    Action,
    Bootstrap,
    ClearFailover,
    Clone,
    Decision,
    EnsureSlots,
    Fence,
    Follow,
    HandOver,
    Promote,
    RecordInitialize,
    ReleaseLease,
    Rewind,
    StartPostgres,
    StopPostgres,
    UpdateOptime,
)
from pgwarden.ha.sync import plan_sync
from pgwarden.ha.view import ClusterView
from pgwarden.model import FailoverRequest, Lsn, PgState, Role, SyncMode

MAX_CRASH_RESTARTS = 3
# A failover request nobody acted on for this long no longer holds the election back.
STALE_REQUEST_S = 30.0


def _may_take_writes(view: ClusterView) -> bool:
    """PostgreSQL is (or may be) a primary: up, configured without a leader to follow,
    and not known to be in recovery (a primary that does not answer SQL still counts)."""
    local = view.local
    return (
        local.pg in (PgState.RUNNING, PgState.STARTING)
        and local.configured_leader is None
        and local.in_recovery is not True
    )


def _fence(view: ClusterView, now: float) -> Decision | None:
    cluster, lease = view.cluster, view.lease
    if not _may_take_writes(view):
        return None
    leader = cluster.leader.name if cluster.leader else None
    if lease.session is SessionState.LOST:
        return Decision((Fence(),), "my consensus-store session expired; stopping PostgreSQL")
    if leader is not None and leader != view.me:
        return Decision((Fence(),), f"{leader} holds the leader lease; stopping PostgreSQL")
    if leader == view.me and not lease.holds:
        return Decision(
            (Fence(),), "the leader lease belongs to an older session of mine; stopping PostgreSQL"
        )
    if cluster.config.paused:
        return None
    deadline = lease.deadline(cluster.config.ttl, cluster.config.safety_margin)
    if deadline is None or now >= deadline:
        return Decision(
            (Fence(),), "cannot confirm my leader lease before its deadline; stopping PostgreSQL"
        )
    return None


def _active_request(view: ClusterView) -> FailoverRequest | None:
    """The failover request to act on now: not scheduled later, not abandoned."""
    request = view.cluster.failover
    if request is None or request.at is None:
        return request
    if view.wall < request.at or view.wall - request.at > STALE_REQUEST_S:
        return None
    return request


def _stale_request(view: ClusterView) -> FailoverRequest | None:
    """A failover request nobody acted on in time: the leader clears it."""
    request = view.cluster.failover
    if request is None or request.at is None:
        return None
    return request if view.wall - request.at > STALE_REQUEST_S else None


def _switchover_target(
    view: ClusterView, wanted: str | None, force: bool = False
) -> tuple[str | None, str]:
    """The member to hand over to (the requested one, or the best), or None and why."""
    cluster, local = view.cluster, view.local
    limit = cluster.config.maximum_lag_on_failover
    candidates: dict[str, tuple[Lsn, int, str]] = {}
    refusals: dict[str, str] = {}
    for name, info in cluster.members.items():
        if name == view.me:
            continue
        position = info.wal_position
        if info.role is not Role.REPLICA or info.state is not PgState.RUNNING:
            refusals[name] = f"{name} is not a running replica"
        elif info.tags.nofailover:
            refusals[name] = f"{name} has the nofailover tag"
        elif position is None:
            refusals[name] = f"{name} has not published its WAL position"
        elif not force and local.wal_position is not None and local.wal_position - position > limit:
            refusals[name] = (
                f"{name} is {local.wal_position - position} bytes behind "
                f"(maximum_lag_on_failover {limit})"
            )
        else:
            candidates[name] = (position, info.tags.failover_priority, name)
    if wanted is not None:
        if wanted in candidates:
            return wanted, ""
        return None, refusals.get(wanted, f"{wanted} is not a member of the cluster")
    if not candidates:
        return None, "no replica is eligible"
    best = max(candidates.values(), key=lambda c: (c[0], c[1], [-ord(ch) for ch in c[2]]))
    return best[2], ""


def _leader_request(view: ClusterView, request: FailoverRequest) -> Decision:
    me = view.me
    if request.to == me:
        reason = "a failover to me was requested; I already lead"
        return Decision((ClearFailover(request.version, reason),), reason)
    if request.from_ is None:
        return Decision(
            (StopPostgres("fast"), ReleaseLease()),
            f"a failover to {request.to} was requested; stepping down",
        )
    if request.from_ != me:
        reason = f"the switchover away from {request.from_} is stale; clearing it"
        return Decision((ClearFailover(request.version, reason),), reason)
    target, why = _switchover_target(view, request.to, request.force)
    if target is None:
        reason = f"switchover refused: {why}"
        return Decision((ClearFailover(request.version, reason),), reason)
    return Decision(
        (HandOver(target, request.version),), f"switchover to {target} requested; handing over"
    )


def _uninitialized(view: ClusterView) -> Decision:
    cluster = view.cluster
    leader = cluster.leader.name if cluster.leader else None
    if cluster.initialize is None:
        if leader is None:
            return Decision(
                (AcquireLease(), Bootstrap()), "the cluster is not initialized; racing to bootstrap"
            )
        if leader == view.me and view.lease.holds:
            return Decision((Bootstrap(),), "I hold the lease of an uninitialized cluster")
        return Decision((), f"waiting for {leader} to bootstrap the cluster")
    if leader is not None and leader != view.me:
        info = cluster.members.get(leader)
        if info is not None and info.state is PgState.RUNNING:
            return Decision((Clone(leader),), f"creating a replica from the leader {leader}")
        return Decision((), f"waiting for the leader {leader} to run before cloning from it")
    return Decision((), "the cluster has no leader to clone from")


def _lead(view: ClusterView, now: float) -> Decision:
    local, cluster = view.local, view.cluster
    if cluster.config.paused:
        actions: tuple[Action, ...] = ()
        if local.is_primary and local.wal_position is not None:
            actions = (UpdateOptime(local.wal_position),)
        return Decision(actions, "paused: I hold the lease and change nothing")
    if local.pg is PgState.STARTING:
        return Decision((), "I hold the lease; waiting for PostgreSQL to start")
    deadline = view.lease.deadline(cluster.config.ttl, cluster.config.safety_margin)
    fresh = view.lease.session is SessionState.CONNECTED and deadline is not None and now < deadline
    if not local.is_primary and not fresh:
        # Starting or promoting on a lease we cannot prove would make a primary while
        # another member may hold the lease already (a fenced primary must stay down).
        return Decision((), "I may hold the lease but cannot confirm it now; changing nothing")
    if not local.running:
        if local.crash_count >= MAX_CRASH_RESTARTS:
            return Decision(
                (ReleaseLease(),),
                f"PostgreSQL failed {local.crash_count} times in a row; releasing the lease",
            )
        what = "crashed" if local.pg is PgState.CRASHED else "is stopped"
        return Decision((StartPostgres(),), f"I hold the lease and PostgreSQL {what}; starting it")
    if local.in_recovery is None:
        return Decision((), "I hold the lease; PostgreSQL does not answer SQL yet")
    if local.in_recovery:
        return Decision((Promote(),), "I hold the leader lease; promoting")
    request = _active_request(view)
    if request is not None:
        return _leader_request(view, request)
    stale = _stale_request(view)
    if stale is not None:
        reason = f"nobody acted on the request to move to {stale.to} in time; clearing it"
        return Decision((ClearFailover(stale.version, reason),), reason)
    if local.requested == "restart":
        # Keeps the lease: a restart is a short write outage, not a failover.
        return Decision((StopPostgres("fast"), StartPostgres()), "a restart was requested")
    acts: list[Action] = []
    if local.wal_position is not None:
        acts.append(UpdateOptime(local.wal_position))
    keep = (set(cluster.members) | local.recent_members) - {view.me}
    acts.append(EnsureSlots(frozenset(keep)))
    sync_actions, sync_reason = plan_sync(view)
    acts.extend(sync_actions)
    reason = f"I am the leader, a healthy primary on timeline {local.timeline}"
    if sync_reason:
        reason += f"; {sync_reason}"
    return Decision(tuple(acts), reason)


def _follow(view: ClusterView, leader: str) -> Decision:
    local, cluster = view.local, view.cluster
    if leader == view.me:  # named leader, but not our session: an older incarnation's lease
        return Decision((), "waiting for the lease of my previous session to expire")
    if local.pg is PgState.STARTING:
        return Decision((), f"waiting for PostgreSQL to start; {leader} is the leader")
    info = cluster.members.get(leader)
    leader_ready = info is not None and info.state is PgState.RUNNING
    if not local.running:
        if not leader_ready:
            return Decision((), f"waiting for the leader {leader} to run")
        if local.rejoin_failed:
            return Decision((Clone(leader),), f"rewind failed earlier; re-cloning from {leader}")
        if local.configured_leader is None:
            return Decision((Rewind(leader),), f"rejoining {leader} as a replica: rewinding first")
        return Decision((Follow(leader),), f"starting as a replica of {leader}")
    if local.requested == "reinit" and leader_ready:
        return Decision((Clone(leader),), f"reinitialization requested; re-cloning from {leader}")
    if local.requested == "restart":
        return Decision((StopPostgres("fast"), StartPostgres()), "a restart was requested")
    if local.configured_leader != leader:
        return Decision((Follow(leader),), f"following the new leader {leader}")
    return Decision((), f"a healthy replica following {leader}")


def _better(candidate: tuple[Lsn, int, str], me: tuple[Lsn, int, str]) -> bool:
    """Most WAL first, then higher failover priority, then the smaller name."""
    if candidate[:2] != me[:2]:
        return candidate[:2] > me[:2]
    return candidate[2] < me[2]


def _race(view: ClusterView) -> Decision:
    local, cluster = view.local, view.cluster
    config = cluster.config
    if config.paused:
        return Decision((), "no leader, but the cluster is paused; not racing")
    request = _active_request(view)
    if request is not None and request.to is not None and request.to != view.me:
        return Decision((), f"no leader; a failover to {request.to} was requested")
    if not local.running:
        if local.configured_leader is None:
            return Decision(
                (AcquireLease(), StartPostgres()),
                "no leader; I was the primary, taking the lease and starting PostgreSQL",
            )
        return Decision((StartPostgres(),), "no leader; starting PostgreSQL to take part")
    if local.in_recovery is None or local.wal_position is None:
        return Decision((), "no leader, but my PostgreSQL does not answer; not racing")
    if _may_take_writes(view):
        return Decision((AcquireLease(),), "no leader and I am the primary; taking the lease")
    published = cluster.members.get(view.me)
    if published is None:
        # Peers ask only published members for their positions: unseen, I must not race.
        return Decision((), "no leader, but my member key is not published yet; not racing")
    if local.tags.nofailover or published.tags.nofailover:
        return Decision((), "no leader; my nofailover tag keeps me out of the race")
    position = local.wal_position
    if request is not None and request.to == view.me:
        if request.handed_over:
            return Decision(
                (AcquireLease(), Promote()),
                f"{request.from_} handed over to me after a clean shutdown; taking the lease",
            )
        if request.allow_data_loss:
            return Decision(
                (AcquireLease(), Promote()),
                f"a failover to me was requested, allowing data loss; taking the lease at "
                f"{position}",
            )
    sync_only = config.synchronous_mode is not SyncMode.OFF
    if sync_only and view.me not in cluster.sync.members:
        return Decision((), "no leader; only synchronous standbys may be promoted")
    if cluster.optime is not None and cluster.optime - position > config.maximum_lag_on_failover:
        lag = cluster.optime - position
        return Decision((), f"no leader, but I am {lag} bytes behind its last position")
    if request is not None and request.to == view.me:
        # The named member does not defer to better peers: they all defer to it.
        return Decision(
            (AcquireLease(), Promote()),
            f"no leader; a failover to me was requested, taking the lease at {position}",
        )
    # Peers rank me by my published tags; so must I, or two members could each win.
    mine = (position, published.tags.failover_priority, view.me)
    for name, peer_position in sorted(view.peers.items()):
        info = cluster.members.get(name)
        if name == view.me or peer_position is None or info is None or info.tags.nofailover:
            continue
        if sync_only and name not in cluster.sync.members:
            continue
        if _better((peer_position, info.tags.failover_priority, name), mine):
            return Decision((), f"no leader; {name} is a better candidate at {peer_position}")
    return Decision(
        (AcquireLease(), Promote()),
        f"no leader; I am the best healthy candidate at {position}, taking the lease",
    )


def decide(view: ClusterView, now: float) -> Decision:
    """Decide this tick's actions for member `view.me`."""
    fenced = _fence(view, now)
    if fenced is not None:
        return fenced
    local, cluster = view.local, view.cluster
    leader = cluster.leader.name if cluster.leader else None
    if not local.initialized:
        return _uninitialized(view)
    if (
        cluster.initialize is not None
        and local.system_identifier is not None
        and local.system_identifier != cluster.initialize
    ):
        return Decision(
            (),
            f"my data directory belongs to another cluster (system identifier "
            f"{local.system_identifier}, cluster {cluster.initialize}); not starting",
        )
    i_lead = leader == view.me and view.lease.holds
    if cluster.initialize is None:
        if i_lead:
            return Decision((RecordInitialize(),), "recording the cluster's system identifier")
        if leader is None and local.configured_leader is None:
            return Decision(
                (AcquireLease(), RecordInitialize()),
                "the store has no cluster record; my data becomes the cluster",
            )
    if i_lead:
        return _lead(view, now)
    if leader is not None:
        return _follow(view, leader)
    return _race(view)
