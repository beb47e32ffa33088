"""Actions the decision engine asks the executor to perform, as plain values.

The executor performs the actions of one decision in order and stops at the first that
fails; `AcquireLease` is therefore a guard: `(AcquireLease(), Promote())` promotes only
if the lease was won.
"""

from __future__ import annotations

from dataclasses import dataclass

from pgwarden.model import Lsn


@dataclass(frozen=True)
class AcquireLease:
    pass


@dataclass(frozen=True)
class ReleaseLease:
    pass


@dataclass(frozen=True)
class Bootstrap:
    """initdb, configure as primary, start, and record the system identifier."""


@dataclass(frozen=True)
class RecordInitialize:
    """Write the `initialize` key with the local system identifier."""


@dataclass(frozen=True)
class Clone:
    source: str


@dataclass(frozen=True)
class Rewind:
    """Stop, checkpoint the source, pg_rewind from it, and start as its replica."""

    source: str


@dataclass(frozen=True)
class Promote:
    pass


@dataclass(frozen=True)
class Fence:
    """Stop PostgreSQL immediately: the lease can no longer be confirmed."""


@dataclass(frozen=True)
class StartPostgres:
    pass


@dataclass(frozen=True)
class StopPostgres:
    mode: str = "fast"


@dataclass(frozen=True)
class Follow:
    """Point the standby settings at `leader` (and start if stopped)."""

    leader: str


@dataclass(frozen=True)
class HandOver:
    """Switchover: checkpoint, stop cleanly, wait until `target` received all WAL, mark
    the request handed over, release the lease and rejoin `target` without a rewind."""

    target: str
    version: int  # of the failover key, to mark it handed over with compare-and-set


@dataclass(frozen=True)
class ClearFailover:
    """Delete the failover key (if still at `version`), recording why as an event."""

    version: int
    why: str = ""


@dataclass(frozen=True)
class UpdateOptime:
    lsn: Lsn


@dataclass(frozen=True)
class EnsureSlots:
    members: frozenset[str]


@dataclass(frozen=True)
class SetSyncStandbys:
    """Rewrite synchronous_standby_names to require every member of `names` (or '*')."""

    names: frozenset[str]


@dataclass(frozen=True)
class SetSyncKey:
    """Compare-and-set the `sync` key: these standbys may be promoted."""

    members: frozenset[str]
    version: int


Action = (
    AcquireLease
    | ReleaseLease
    | Bootstrap
    | RecordInitialize
    | Clone
    | Rewind
    | Promote
    | Fence
    | StartPostgres
    | StopPostgres
    | Follow
    | HandOver
    | ClearFailover
    | UpdateOptime
    | EnsureSlots
    | SetSyncStandbys
    | SetSyncKey
)


@dataclass(frozen=True)
class Decision:
    """What to do this tick and one sentence saying why."""

    actions: tuple[Action, ...]
    reason: str

    @property
    def promotes(self) -> bool:
        return any(isinstance(a, Promote) for a in self.actions)

    @property
    def keeps_writes(self) -> bool:
        """False if this decision stops a running primary from taking writes."""
        return not any(
            isinstance(a, Fence | StopPostgres | Rewind | Clone | HandOver) for a in self.actions
        )
