"""Values shared by the pure core and the adapters: LSNs, members, cluster snapshots.

Everything here is immutable and free of I/O. Times are floats: wall-clock seconds
(`time.time()`) where they are published to other hosts, monotonic seconds where they
only ever compare with the same process's clock (lease arithmetic).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

_LSN = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")


class Lsn(int):
    """A WAL position; prints as PostgreSQL does (`16/B374D848`)."""

    @classmethod
    def parse(cls, text: str) -> Lsn:
        match = _LSN.match(text.strip())
        if match is None:
            raise ValueError(f"not a WAL position: {text!r}")
        return cls((int(match.group(1), 16) << 32) | int(match.group(2), 16))

    def __str__(self) -> str:
        return f"{self >> 32:X}/{self & 0xFFFFFFFF:X}"

    def __repr__(self) -> str:
        return f"Lsn('{self}')"


def lsn_or_none(value: Any) -> Lsn | None:
    """Parse an LSN from text or int as found in JSON; None stays None."""
    if value is None:
        return None
    if isinstance(value, int):
        return Lsn(value)
    return Lsn.parse(str(value))


class Role(StrEnum):
    PRIMARY = "primary"
    REPLICA = "replica"
    UNKNOWN = "unknown"


class PgState(StrEnum):
    """What the local postmaster is doing, as the agent observes it."""

    RUNNING = "running"
    STARTING = "starting"
    STOPPED = "stopped"
    CRASHED = "crashed"  # exited without being asked to


class SyncMode(StrEnum):
    OFF = "off"
    ON = "on"
    STRICT = "strict"


@dataclass(frozen=True)
class Tags:
    """Per-member tags: `nofailover` never promotes; higher `failover_priority` wins ties."""

    nofailover: bool = False
    nosync: bool = False
    failover_priority: int = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "nofailover": self.nofailover,
            "nosync": self.nosync,
            "failover_priority": self.failover_priority,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Tags:
        data = data or {}
        return cls(
            bool(data.get("nofailover", False)),
            bool(data.get("nosync", False)),
            int(data.get("failover_priority", 1)),
        )


@dataclass(frozen=True)
class MemberInfo:
    """What a member publishes about itself at `members/<name>` (ephemeral)."""

    name: str
    role: Role
    state: PgState
    timeline: int | None
    received_lsn: Lsn | None  # replicas: flushed from the stream; primary: current WAL
    replayed_lsn: Lsn | None
    api_url: str
    host: str
    port: int
    tags: Tags = field(default_factory=Tags)
    version: str = ""
    system_identifier: str | None = None
    decision: str = ""  # the member's last decision sentence, for `pgwarden list`
    # The primary's WAL archiving: last archived segment, pending segments, lag, failures.
    archive: Mapping[str, Any] | None = None

    @property
    def wal_position(self) -> Lsn | None:
        """The furthest WAL this member is known to hold."""
        positions = [p for p in (self.received_lsn, self.replayed_lsn) if p is not None]
        return max(positions) if positions else None

    def to_json(self) -> dict[str, Any]:
        return {
            "role": self.role.value,
            "state": self.state.value,
            "timeline": self.timeline,
            "received_lsn": str(self.received_lsn) if self.received_lsn is not None else None,
            "replayed_lsn": str(self.replayed_lsn) if self.replayed_lsn is not None else None,
            "api_url": self.api_url,
            "host": self.host,
            "port": self.port,
            "tags": self.tags.to_json(),
            "version": self.version,
            "system_identifier": self.system_identifier,
            "decision": self.decision,
            "archive": dict(self.archive) if self.archive is not None else None,
        }

    @classmethod
    def from_json(cls, name: str, data: Mapping[str, Any]) -> MemberInfo:
        return cls(
            name=name,
            role=Role(data.get("role", "unknown")),
            state=PgState(data.get("state", "stopped")),
            timeline=data.get("timeline"),
            received_lsn=lsn_or_none(data.get("received_lsn")),
            replayed_lsn=lsn_or_none(data.get("replayed_lsn")),
            api_url=str(data.get("api_url", "")),
            host=str(data.get("host", "")),
            port=int(data.get("port", 0)),
            tags=Tags.from_json(data.get("tags")),
            version=str(data.get("version", "")),
            system_identifier=data.get("system_identifier"),
            decision=str(data.get("decision", "")),
            archive=data.get("archive") if isinstance(data.get("archive"), Mapping) else None,
        )


@dataclass(frozen=True)
class DynamicConfig:
    """Cluster-wide settings kept in the store's `config` key (compare-and-set)."""

    ttl: float = 4.0
    loop_wait: float = 1.0
    safety_margin: float = 1.0
    maximum_lag_on_failover: int = 1024 * 1024  # bytes of WAL
    synchronous_mode: SyncMode = SyncMode.OFF
    synchronous_node_count: int = 1
    paused: bool = False
    parameters: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "ttl": self.ttl,
            "loop_wait": self.loop_wait,
            "safety_margin": self.safety_margin,
            "maximum_lag_on_failover": self.maximum_lag_on_failover,
            "synchronous_mode": self.synchronous_mode.value,
            "synchronous_node_count": self.synchronous_node_count,
            "paused": self.paused,
            "parameters": dict(self.parameters),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> DynamicConfig:
        data = data or {}
        default = cls()
        return cls(
            ttl=float(data.get("ttl", default.ttl)),
            loop_wait=float(data.get("loop_wait", default.loop_wait)),
            safety_margin=float(data.get("safety_margin", default.safety_margin)),
            maximum_lag_on_failover=int(
                data.get("maximum_lag_on_failover", default.maximum_lag_on_failover)
            ),
            synchronous_mode=SyncMode(data.get("synchronous_mode", "off")),
            synchronous_node_count=int(data.get("synchronous_node_count", 1)),
            paused=bool(data.get("paused", False)),
            parameters={str(k): str(v) for k, v in (data.get("parameters") or {}).items()},
        )


@dataclass(frozen=True)
class SyncState:
    """The `sync` key: the leader and the standbys that may be promoted in sync mode."""

    leader: str | None
    members: frozenset[str]
    version: int = -1  # store version for compare-and-set; -1 when the key is absent


@dataclass(frozen=True)
class FailoverRequest:
    """A requested switchover (planned: `from_` is the leader it moves away from) or
    manual failover (`from_` None, `to` set).

    `handed_over` is set by the old leader once `to` has received all of its WAL after a
    clean shutdown: `to` then holds every commit and may take the lease whatever its sync
    or lag state. `allow_data_loss` lets a manual failover promote a lagging member."""

    from_: str | None
    to: str | None
    at: float | None = None  # wall-clock time not to act before
    version: int = -1
    allow_data_loss: bool = False
    handed_over: bool = False
    force: bool = False  # switchover: hand over to a lagging replica once it caught up


@dataclass(frozen=True)
class Leader:
    """The holder of the leader lease (the ephemeral `leader` node)."""

    name: str
    session_id: int | None = None  # owner session, to tell our own lease from a stale one


@dataclass(frozen=True)
class HistoryEntry:
    timeline: int
    lsn: Lsn
    time: float
    reason: str
    old_leader: str | None
    new_leader: str

    def to_json(self) -> dict[str, Any]:
        return {
            "timeline": self.timeline,
            "lsn": str(self.lsn),
            "time": self.time,
            "reason": self.reason,
            "old_leader": self.old_leader,
            "new_leader": self.new_leader,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HistoryEntry:
        return cls(
            int(data["timeline"]),
            Lsn.parse(str(data["lsn"])),
            float(data["time"]),
            str(data["reason"]),
            data.get("old_leader"),
            str(data["new_leader"]),
        )


@dataclass(frozen=True)
class ClusterState:
    """One consistent read of the consensus store."""

    initialize: str | None = None  # system identifier of the bootstrapped cluster
    leader: Leader | None = None
    members: Mapping[str, MemberInfo] = field(default_factory=dict)
    config: DynamicConfig = field(default_factory=DynamicConfig)
    config_version: int = -1
    sync: SyncState = field(default_factory=lambda: SyncState(None, frozenset()))
    optime: Lsn | None = None
    failover: FailoverRequest | None = None
    history: tuple[HistoryEntry, ...] = ()
