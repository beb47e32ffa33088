"""Planning on-call operations (switchover, manual failover) from one cluster snapshot.

PURE: the caller reads the store and asks members for their positions; these functions
choose the candidate, check it, estimate the data loss, and return the request to write
or raise `Refused` with the one sentence the engineer sees.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pgwarden.errors import PgwardenError
from pgwarden.model import ClusterState, FailoverRequest, Lsn


class Refused(PgwardenError):  # noqa: N818 - reads as what happened: "refused: ..."
    """The operation was refused; nothing was written."""


@dataclass(frozen=True)
class MemberNow:
    """What a member's API said just now (None fields: it did not answer)."""

    running: bool
    in_recovery: bool | None
    wal_position: Lsn | None
    replay_time: float | None = None


@dataclass(frozen=True)
class Plan:
    kind: str  # "switchover" or "failover"
    leader: str | None
    candidate: str
    why: str
    data_loss_bytes: int
    last_commit_time: float | None
    request: FailoverRequest

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "leader": self.leader,
            "candidate": self.candidate,
            "why": self.why,
            "data_loss_bytes": self.data_loss_bytes,
            "last_commit_time": self.last_commit_time,
            "at": self.request.at,
        }


def _eligible(
    cluster: ClusterState, now: Mapping[str, MemberNow], name: str, reference: Lsn | None
) -> tuple[bool, str, int]:
    """(eligible, reason if not, bytes behind `reference`) for member `name`."""
    info = cluster.members.get(name)
    if info is None:
        return False, f"{name} is not a member of the cluster", 0
    if info.tags.nofailover:
        return False, f"{name} has the nofailover tag", 0
    fresh = now.get(name)
    if fresh is None or not fresh.running or fresh.in_recovery is not True:
        return False, f"{name} is not a running replica", 0
    if fresh.wal_position is None:
        return False, f"{name} does not report its WAL position", 0
    behind = max(0, reference - fresh.wal_position) if reference is not None else 0
    return True, "", behind


def _reference(cluster: ClusterState, now: Mapping[str, MemberNow]) -> Lsn | None:
    """The furthest WAL position known for the primary: its live answer or the optime."""
    positions = [cluster.optime] if cluster.optime is not None else []
    leader = cluster.leader.name if cluster.leader else None
    fresh = now.get(leader) if leader else None
    if fresh is not None and fresh.wal_position is not None and fresh.in_recovery is False:
        positions.append(fresh.wal_position)
    return max(positions) if positions else None


def leader_healthy(cluster: ClusterState, now: Mapping[str, MemberNow]) -> bool:
    leader = cluster.leader.name if cluster.leader else None
    if leader is None:
        return False
    fresh = now.get(leader)
    return fresh is not None and fresh.running and fresh.in_recovery is False


def plan_switchover(
    cluster: ClusterState,
    now: Mapping[str, MemberNow],
    *,
    to: str | None,
    at: float,
    force: bool = False,
) -> Plan:
    """A planned switchover away from the healthy leader, to `to` or the best replica."""
    if cluster.failover is not None:
        pending = cluster.failover
        raise Refused(f"a {_describe(pending)} is already pending; wait for it or clear it")
    _refuse_paused(cluster, "switchover")
    leader = cluster.leader.name if cluster.leader else None
    if leader is None or not leader_healthy(cluster, now):
        raise Refused("there is no healthy primary to switch over from; use `pgwarden failover`")
    if to == leader:
        raise Refused(f"{to} is already the primary")
    reference = _reference(cluster, now)
    limit = cluster.config.maximum_lag_on_failover
    names = [to] if to is not None else sorted(n for n in cluster.members if n != leader)
    best: tuple[int, int, str] | None = None
    reasons = []
    for name in names:
        ok, reason, behind = _eligible(cluster, now, name, reference)
        if ok and behind > limit and not force:
            ok, reason = (
                False,
                (
                    f"{name} is {behind} bytes behind the primary (maximum_lag_on_failover "
                    f"{limit}); --force hands over anyway, after it catches up"
                ),
            )
        if not ok:
            reasons.append(reason)
            continue
        priority = cluster.members[name].tags.failover_priority
        key = (-behind, priority, name)
        if best is None or key[:2] > best[:2] or (key[:2] == best[:2] and name < best[2]):
            best = key
    if best is None:
        raise Refused(
            reasons[0] if to is not None else "no replica is eligible: " + "; ".join(reasons)
        )
    candidate = best[2]
    why = (
        "requested"
        if to is not None
        else f"the most advanced eligible replica ({-best[0]} bytes behind)"
    )
    request = FailoverRequest(from_=leader, to=candidate, at=at, force=force)
    return Plan("switchover", leader, candidate, why, 0, None, request)


def plan_failover(
    cluster: ClusterState,
    now: Mapping[str, MemberNow],
    *,
    to: str,
    at: float,
    allow_data_loss: bool = False,
    force: bool = False,
) -> Plan:
    """A manual failover to `to`, for when the primary is gone or unhealthy."""
    if cluster.failover is not None:
        raise Refused(f"a {_describe(cluster.failover)} is already pending; wait for it")
    _refuse_paused(cluster, "failover")
    leader = cluster.leader.name if cluster.leader else None
    if to == leader:
        raise Refused(f"{to} is already the primary")
    if leader_healthy(cluster, now) and not force:
        raise Refused(
            f"the primary {leader} is healthy; use `pgwarden switchover` for a planned move, "
            "or --force to fail over anyway"
        )
    reference = _reference(cluster, now)
    ok, reason, behind = _eligible(cluster, now, to, reference)
    if not ok:
        raise Refused(reason)
    fresh = now[to]
    if behind > 0 and not allow_data_loss:
        raise Refused(
            f"promoting {to} would lose {behind} bytes of WAL (its last commit is from "
            f"{_when(fresh.replay_time)}); add --allow-data-loss to accept that"
        )
    if (
        cluster.config.synchronous_mode.value != "off"
        and to not in cluster.sync.members
        and not allow_data_loss
    ):
        raise Refused(
            f"{to} is not a synchronous standby and may lack acknowledged commits; "
            "add --allow-data-loss to accept that"
        )
    request = FailoverRequest(from_=None, to=to, at=at, allow_data_loss=allow_data_loss)
    why = "requested" + (f", accepting the loss of {behind} bytes" if behind else "")
    return Plan("failover", leader, to, why, behind, fresh.replay_time, request)


def _refuse_paused(cluster: ClusterState, kind: str) -> None:
    # Paused agents neither hand over nor race: a request written now would only wait
    # and then linger in the store, blocking every later request.
    if cluster.config.paused:
        raise Refused(
            f"the cluster is paused and its agents do not act on a {kind} request; "
            "run `pgwarden resume` first"
        )


def _describe(request: FailoverRequest) -> str:
    kind = "switchover" if request.from_ is not None else "failover"
    return f"{kind} to {request.to or 'the best replica'}"


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "an unknown time"
    return datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC).isoformat(timespec="seconds")


def member_now(status: Mapping[str, Any] | None) -> MemberNow:
    """Parse an agent's `/status` answer (None: it did not answer)."""
    if not status:
        return MemberNow(False, None, None)
    position = status.get("wal_position")
    return MemberNow(
        running=status.get("state") == "running",
        in_recovery=status.get("in_recovery"),
        wal_position=Lsn.parse(str(position)) if position else None,
        replay_time=status.get("replay_time"),
    )
