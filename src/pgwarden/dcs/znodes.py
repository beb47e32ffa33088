"""The store's semantics over a tree of znodes, shared by ZooKeeper and the in-memory store.

A backend supplies a `Tree` (ZooKeeper's primitives: versions, ephemeral owners,
sequential children) and its session; `TreeStore` builds every `ConsensusStore`
operation on top, so both backends behave the same by construction.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pgwarden.dcs import codec
from pgwarden.dcs.base import MAX_EVENTS, StoreError
from pgwarden.model import (
    ClusterState,
    DynamicConfig,
    FailoverRequest,
    HistoryEntry,
    Leader,
    Lsn,
    MemberInfo,
    SyncState,
)

EVENT_PREFIX = "e-"
# A read-modify-CAS of `history` loses only to another writer that succeeded; more than
# this many losses in a row means something is writing in a loop.
HISTORY_ATTEMPTS = 20
PUBLISH_ATTEMPTS = 5


@dataclass(frozen=True)
class Stat:
    """What the tree tells about a node besides its data."""

    version: int
    owner: int | None  # session that owns an ephemeral node; None for persistent nodes


class NoNodeError(Exception):
    """The node does not exist (internal to the dcs package)."""


class NodeExistsError(Exception):
    """The node already exists (internal to the dcs package)."""


class BadVersionError(Exception):
    """The node is not at the expected version (internal to the dcs package)."""


class Tree(Protocol):
    """ZooKeeper's data model. Failures other than the three above raise StoreError."""

    def get(self, path: str) -> tuple[bytes, Stat]: ...

    def get_many(self, paths: Sequence[str]) -> list[tuple[bytes, Stat] | None]:
        """Every path in one batch; None for a missing node."""

    def exists(self, path: str) -> Stat | None: ...

    def children(self, path: str) -> list[str]: ...

    def create(
        self, path: str, data: bytes, *, ephemeral: bool = False, sequence: bool = False
    ) -> str:
        """Create a node (owned by our session if ephemeral); return its actual path."""

    def set(self, path: str, data: bytes, version: int) -> Stat:
        """Replace the data if the node is at `version` (-1: any version)."""

    def delete(self, path: str, version: int) -> None: ...

    def ensure(self, path: str) -> None:
        """Create `path` and its missing parents as empty persistent nodes."""


def check_name(kind: str, name: str) -> str:
    """A cluster or member name must be usable as one path component."""
    if not name or "/" in name or name in (".", "..") or name.strip() != name:
        raise StoreError(f"{kind} name {name!r} cannot be used: it must be non-empty, without '/'")
    return name


class Keys:
    """The absolute paths of one cluster's keys under `root`."""

    def __init__(self, root: str, cluster: str) -> None:
        if not root.startswith("/"):
            raise StoreError(f"store root {root!r} must be an absolute path such as /pgwarden")
        self.base = f"{root.rstrip('/')}/{check_name('cluster', cluster)}"
        self.leader = f"{self.base}/leader"
        self.members = f"{self.base}/members"
        self.config = f"{self.base}/config"
        self.initialize = f"{self.base}/initialize"
        self.failover = f"{self.base}/failover"
        self.sync = f"{self.base}/sync"
        self.optime = f"{self.base}/optime"
        self.history = f"{self.base}/history"
        self.events = f"{self.base}/events"

    @property
    def directories(self) -> tuple[str, ...]:
        """Persistent parents created when a store starts."""
        return (self.base, self.members, self.events)

    @property
    def watched_data(self) -> tuple[str, ...]:
        """Keys whose creation, change or deletion wakes `watch` callbacks."""
        return (self.leader, self.failover, self.sync, self.config)

    def member(self, name: str) -> str:
        return f"{self.members}/{check_name('member', name)}"


class TreeStore(ABC):
    """Every data operation of `ConsensusStore`, over `self._tree()` and our session."""

    def __init__(self, cluster: str, root: str) -> None:
        self.cluster = cluster
        self.keys = Keys(root, cluster)

    @abstractmethod
    def _tree(self, *, urgent: bool = False) -> Tree:
        """The tree to operate on; StoreError when not connected. `urgent` requests wait
        less (lease checks must answer well within the session timeout)."""

    @property
    @abstractmethod
    def session_id(self) -> int | None: ...

    # ----------------------------------------------------------------- reading
    def read(self) -> ClusterState:
        """One snapshot of every key (a missing key reads as its default)."""
        tree, k = self._tree(), self.keys
        try:
            names = sorted(tree.children(k.members))
        except NoNodeError:
            names = []
        keys = [k.leader, k.initialize, k.config, k.sync, k.optime, k.failover, k.history]
        member_paths = [f"{k.members}/{name}" for name in names]
        got = dict(zip([*keys, *member_paths], tree.get_many([*keys, *member_paths]), strict=True))

        leader = None
        if (found := got[k.leader]) is not None:
            leader = Leader(codec.decode_leader(k.leader, found[0]), found[1].owner)
        members = {}
        for name, path in zip(names, member_paths, strict=True):
            if (found := got[path]) is not None:
                members[name] = codec.decode_member(path, name, found[0])
        config, config_version = DynamicConfig(), -1
        if (found := got[k.config]) is not None:
            config, config_version = codec.decode_config(k.config, found[0]), found[1].version
        sync = SyncState(None, frozenset())
        if (found := got[k.sync]) is not None:
            sync = codec.decode_sync(k.sync, found[0], found[1].version)
        failover = None
        if (found := got[k.failover]) is not None:
            failover = codec.decode_failover(k.failover, found[0], found[1].version)
        found = got[k.initialize]
        optime, history = got[k.optime], got[k.history]
        return ClusterState(
            initialize=codec.decode_initialize(k.initialize, found[0]) if found else None,
            leader=leader,
            members=members,
            config=config,
            config_version=config_version,
            sync=sync,
            optime=codec.decode_optime(k.optime, optime[0]) if optime else None,
            failover=failover,
            history=codec.decode_history(k.history, history[0]) if history else (),
        )

    # ----------------------------------------------------------------- leader lease
    def acquire_leader(self, name: str) -> bool:
        """Create the ephemeral leader node; True also when our session already holds it."""
        tree, path = self._tree(), self.keys.leader
        data = codec.encode_leader(check_name("member", name))
        try:
            tree.create(path, data, ephemeral=True)
        except NodeExistsError:
            try:
                raw, stat = tree.get(path)
            except NoNodeError:
                return False  # released just now; the next attempt may win it
            return self._ours(stat) and codec.decode_leader(path, raw) == name
        return True

    def release_leader(self, name: str) -> bool:
        """Delete the leader node if our session owns it under `name`."""
        tree, path = self._tree(), self.keys.leader
        try:
            raw, stat = tree.get(path)
            if not self._ours(stat) or codec.decode_leader(path, raw) != name:
                return False
            tree.delete(path, stat.version)
        except (NoNodeError, BadVersionError):
            return False
        return True

    def holds_leader(self) -> bool:
        """One round trip: whether the leader node exists and our session owns it."""
        stat = self._tree(urgent=True).exists(self.keys.leader)
        return stat is not None and self._ours(stat)

    def _ours(self, stat: Stat) -> bool:
        return stat.owner is not None and stat.owner == self.session_id

    # ----------------------------------------------------------------- members
    def publish_member(self, info: MemberInfo) -> None:
        """Create or update our ephemeral member node.

        A node of the same name owned by another session is replaced when it describes
        the same host, port and API URL (our own previous process, whose session has
        not expired yet); otherwise another live agent uses this name and we refuse.
        """
        tree, path = self._tree(), self.keys.member(info.name)
        data = codec.encode_member(info)
        for _ in range(PUBLISH_ATTEMPTS):
            try:
                raw, stat = tree.get(path)
            except NoNodeError:
                try:
                    tree.create(path, data, ephemeral=True)
                except NodeExistsError:
                    continue
                return
            try:
                if self._ours(stat):
                    tree.set(path, data, stat.version)
                    return
                self._check_same_member(path, raw, info)
                tree.delete(path, stat.version)
            except (NoNodeError, BadVersionError):
                continue
        raise StoreError(
            f"could not publish member {info.name}: its node changed {PUBLISH_ATTEMPTS} times "
            "while we wrote it"
        )

    def _check_same_member(self, path: str, raw: bytes, info: MemberInfo) -> None:
        try:
            old = codec.decode_member(path, info.name, raw)
        except StoreError:
            return  # unreadable: nothing worth keeping
        if (old.host, old.port, old.api_url) != (info.host, info.port, info.api_url):
            raise StoreError(
                f"member name {info.name} is in use by another live session "
                f"({old.host}:{old.port}, {old.api_url}); two agents must not share a name"
            )

    # ----------------------------------------------------------------- cluster keys
    def initialize(self, system_identifier: str) -> bool:
        try:
            self._tree().create(self.keys.initialize, codec.encode_initialize(system_identifier))
        except NodeExistsError:
            return False
        return True

    def set_config(self, config: DynamicConfig, version: int) -> bool:
        return self._compare_and_set(self.keys.config, codec.encode_config(config), version)

    def set_sync(self, leader: str | None, members: frozenset[str], version: int) -> bool:
        return self._compare_and_set(self.keys.sync, codec.encode_sync(leader, members), version)

    def set_failover(self, request: FailoverRequest, version: int) -> bool:
        return self._compare_and_set(self.keys.failover, codec.encode_failover(request), version)

    def clear_failover(self, version: int) -> bool:
        try:
            self._tree().delete(self.keys.failover, version)
        except (NoNodeError, BadVersionError):
            return False
        return True

    def _compare_and_set(self, path: str, data: bytes, version: int) -> bool:
        """Create when `version` is -1, else set at `version`; False on any conflict."""
        tree = self._tree()
        try:
            if version == -1:
                tree.create(path, data)
            else:
                tree.set(path, data, version)
        except (NodeExistsError, NoNodeError, BadVersionError):
            return False
        return True

    def set_optime(self, lsn: Lsn) -> None:
        tree, data = self._tree(), codec.encode_optime(lsn)
        try:
            tree.set(self.keys.optime, data, -1)
        except NoNodeError:
            try:
                tree.create(self.keys.optime, data)
            except NodeExistsError:
                tree.set(self.keys.optime, data, -1)

    # ----------------------------------------------------------------- history, events
    def append_history(self, entry: HistoryEntry) -> None:
        """Read-modify-compare-and-set `history`, again while other writers win."""
        tree, path = self._tree(), self.keys.history
        for _ in range(HISTORY_ATTEMPTS):
            try:
                raw, stat = tree.get(path)
                entries, version = [*codec.decode_history(path, raw), entry], stat.version
            except NoNodeError:
                entries, version = [entry], -1
            try:
                if version == -1:
                    tree.create(path, codec.encode_history(entries))
                else:
                    tree.set(path, codec.encode_history(entries), version)
            except (NodeExistsError, NoNodeError, BadVersionError):
                continue
            return
        raise StoreError(
            f"could not append to {path}: other writers changed it {HISTORY_ATTEMPTS} times"
        )

    def add_event(self, kind: str, data: Mapping[str, Any]) -> None:
        tree = self._tree()
        tree.create(
            f"{self.keys.events}/{EVENT_PREFIX}",
            codec.encode_event(kind, time.time(), data),
            sequence=True,
        )
        names = sorted(tree.children(self.keys.events))
        for name in names[: max(0, len(names) - MAX_EVENTS)]:
            try:
                tree.delete(f"{self.keys.events}/{name}", -1)
            except NoNodeError:
                continue  # another member trimmed it first

    def events(self) -> list[dict[str, Any]]:
        tree = self._tree()
        try:
            names = sorted(tree.children(self.keys.events))
        except NoNodeError:
            return []
        paths = [f"{self.keys.events}/{name}" for name in names]
        return [
            codec.decode_event(path, found[0])
            for path, found in zip(paths, tree.get_many(paths), strict=True)
            if found is not None
        ]
