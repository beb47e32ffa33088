"""The immutable input of one HA decision: store snapshot, local observation, lease.

`ClusterView` is built once per tick by the agent from a `ClusterState` read from the
consensus store, what the agent sees of its own PostgreSQL, its session's lease
confirmation, and (only when the leader is missing) fresh WAL positions asked of peers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pgwarden.dcs.base import SessionState
from pgwarden.model import ClusterState, Lsn, PgState, Tags

STAR = "*"  # synchronous_standby_names = '*': any standby (strict mode with no candidate)


@dataclass(frozen=True)
class Standby:
    """One row of pg_stat_replication on the primary."""

    name: str
    state: str  # 'streaming', 'catchup', ...
    sync_state: str  # 'sync', 'potential', 'async', 'quorum'
    flush_lsn: Lsn | None


@dataclass(frozen=True)
class LocalState:
    """What the agent knows of its own PostgreSQL instance."""

    pg: PgState
    initialized: bool  # the data directory holds a cluster
    system_identifier: str | None = None
    in_recovery: bool | None = None  # None: not answering SQL
    timeline: int | None = None
    wal_position: Lsn | None = None  # primary: current WAL; replica: furthest received/replayed
    configured_leader: str | None = None  # whom the standby settings follow; None: primary
    crash_count: int = 0  # consecutive unexpected postmaster exits
    rejoin_failed: bool = False  # the last rewind failed: only a fresh clone can rejoin
    standbys: tuple[Standby, ...] = ()  # primary only
    sync_standby_names: frozenset[str] = frozenset()  # what we configured; {"*"} for any
    # The WAL position read just after pg_stat_replication first showed every member of
    # sync_standby_names as synchronous: every commit acknowledged after it was flushed
    # by all of them. None until that was seen for the current setting.
    sync_confirmed_lsn: Lsn | None = None
    tags: Tags = field(default_factory=Tags)
    # An operator's request through the API: "restart" or "reinit" (replicas only).
    requested: str | None = None
    # Members registered recently but not now (an agent restarting, a host rebooting):
    # the leader keeps their replication slots for a while so they can resume streaming.
    recent_members: frozenset[str] = frozenset()

    @property
    def running(self) -> bool:
        return self.pg is PgState.RUNNING

    @property
    def is_primary(self) -> bool:
        """Running and accepting writes."""
        return self.running and self.in_recovery is False


@dataclass(frozen=True)
class Lease:
    """The state of our consensus-store session, which carries the leader lease."""

    session: SessionState
    holds: bool  # the leader node exists and our session owns it
    confirmed_at: float | None  # monotonic time before the last successful round trip
    timeout: float  # session timeout granted by the server, seconds

    def deadline(self, ttl: float, safety_margin: float) -> float | None:
        """Monotonic time by which a primary must have stopped taking writes.

        The server cannot expire our session before `confirmed_at + timeout`; a
        replica can take the lease only after that. We stop `safety_margin` earlier.
        """
        if self.confirmed_at is None:
            return None
        return self.confirmed_at + min(ttl, self.timeout) - safety_margin


@dataclass(frozen=True)
class ClusterView:
    me: str
    cluster: ClusterState
    local: LocalState
    lease: Lease
    # Fresh WAL positions from peers' APIs, asked only when there is no leader:
    # name -> position, or None when the peer did not answer or is not healthy.
    peers: Mapping[str, Lsn | None] = field(default_factory=dict)
    # Wall-clock seconds, for the `at` of switchover requests (published by other hosts).
    wall: float = 0.0
