"""The `ConsensusStore` protocol every backend implements, and its errors.

Layout under `<root>/<cluster>/` (see ../shared/DESIGN.md): `leader` (ephemeral),
`members/<name>` (ephemeral), `config`, `initialize`, `failover`, `sync`, `optime`,
`history`, `events/` (sequential, capped). Values are JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any, Protocol

from pgwarden.errors import PgwardenError
from pgwarden.model import (
    ClusterState,
    DynamicConfig,
    FailoverRequest,
    HistoryEntry,
    Lsn,
    MemberInfo,
)

MAX_EVENTS = 200


class StoreError(PgwardenError):
    """The store could not be reached or refused an operation."""


class SessionState(StrEnum):
    CONNECTED = "connected"
    SUSPENDED = "suspended"  # connection lost; the session may still live on the server
    LOST = "lost"  # the session expired: every ephemeral node of ours is gone


class ConsensusStore(Protocol):
    """What the agent and the CLI need from a consensus store."""

    def start(self, timeout: float) -> None:
        """Connect and open a session; raise StoreError if not possible within `timeout`."""

    def stop(self) -> None:
        """Close the session (its ephemeral nodes vanish at once) and disconnect."""

    @property
    def session_state(self) -> SessionState: ...

    @property
    def session_id(self) -> int | None: ...

    @property
    def session_timeout(self) -> float:
        """The session timeout the server granted, in seconds."""

    def confirm_session(self) -> float | None:
        """One round trip to the server. On success return the monotonic time taken just
        *before* the request was sent (the server heard from us after it, so it cannot
        expire the session before that time + session_timeout); None on failure."""

    def read(self) -> ClusterState:
        """One snapshot of every key of the cluster."""

    def acquire_leader(self, name: str) -> bool:
        """Create the ephemeral leader node for `name`; False if someone holds it."""

    def release_leader(self, name: str) -> bool:
        """Delete the leader node if our session owns it; True if deleted."""

    def holds_leader(self) -> bool:
        """Whether the leader node exists and is owned by our session."""

    def publish_member(self, info: MemberInfo) -> None:
        """Create or update our ephemeral `members/<name>` node."""

    def initialize(self, system_identifier: str) -> bool:
        """Record the bootstrapped cluster; False if it was already initialized."""

    def set_config(self, config: DynamicConfig, version: int) -> bool:
        """Compare-and-set the `config` key (-1: create); False on a version conflict."""

    def set_sync(self, leader: str | None, members: frozenset[str], version: int) -> bool:
        """Compare-and-set the `sync` key (-1: create); False on a version conflict."""

    def set_optime(self, lsn: Lsn) -> None:
        """Record the leader's last WAL position."""

    def set_failover(self, request: FailoverRequest, version: int) -> bool:
        """Create (-1) or compare-and-set the `failover` key."""

    def clear_failover(self, version: int) -> bool:
        """Delete the `failover` key if still at `version` (-1: whatever version)."""

    def append_history(self, entry: HistoryEntry) -> None:
        """Add a timeline switch to `history`."""

    def add_event(self, kind: str, data: Mapping[str, Any]) -> None:
        """Append a typed event under `events/`, dropping the oldest beyond MAX_EVENTS."""

    def events(self) -> list[dict[str, Any]]:
        """The stored events, oldest first."""

    def watch(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from the store's thread) whenever the leader, the failover key,
        the members, the sync key or the config change, or the session state changes."""
