"""An in-memory consensus store with ZooKeeper's semantics, for unit tests.

`MemoryServer` plays one ZooKeeper ensemble: a znode tree with versions, ephemeral
owners and sequence counters. Each `MemoryStore(server, cluster)` is one client (one
member) with its own session. Test hooks on the client mimic what kazoo reports:

- `expire_session()`: the server ends the session, its ephemeral nodes vanish, and the
  client goes LOST and at once CONNECTED with a new session id (as kazoo does when it
  reconnects). If the client is suspended it learns about the expiry only on `resume()`.
- `suspend()` / `resume()`: the connection drops (SUSPENDED) and comes back; while
  suspended every operation raises StoreError, and the session (and its ephemeral
  nodes) live on.

Watch callbacks run synchronously in the thread that caused the change, after every
lock is released, so a callback may call back into the store.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pgwarden.dcs.base import SessionState, StoreError
from pgwarden.dcs.znodes import (
    BadVersionError,
    NodeExistsError,
    NoNodeError,
    Stat,
    Tree,
    TreeStore,
)

Callback = Callable[[], None]


@dataclass
class _Node:
    data: bytes
    version: int = 0
    owner: int | None = None


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


@dataclass(frozen=True)
class _Watch:
    data_paths: frozenset[str]
    child_paths: frozenset[str]
    notify: Callback


class MemoryServer:
    """A ZooKeeper stand-in shared by every `MemoryStore` of a test. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nodes: dict[str, _Node] = {"/": _Node(b"")}
        self._children: dict[str, set[str]] = {"/": set()}
        self._sequences: dict[str, int] = {}
        self._sessions: set[int] = set()
        self._next_session = itertools.count(0x1000_0001)
        self._watches: list[_Watch] = []

    # ----------------------------------------------------------------- sessions
    def open_session(self) -> int:
        with self._lock:
            session = next(self._next_session)
            self._sessions.add(session)
            return session

    def session_alive(self, session: int) -> bool:
        with self._lock:
            return session in self._sessions

    def close_session(self, session: int) -> None:
        """End a session: delete its ephemeral nodes and wake their watchers."""
        with self._lock:
            self._sessions.discard(session)
            owned = [p for p, node in self._nodes.items() if node.owner == session]
            for path in owned:
                self._remove(path)
            due = self._due([(p, True) for p in owned])
        _call(due)

    def add_watch(
        self, data_paths: Sequence[str], child_paths: Sequence[str], notify: Callback
    ) -> None:
        with self._lock:
            self._watches.append(_Watch(frozenset(data_paths), frozenset(child_paths), notify))

    # ----------------------------------------------------------------- znodes
    def get(self, path: str) -> tuple[bytes, Stat]:
        with self._lock:
            node = self._node(path)
            return node.data, Stat(node.version, node.owner)

    def get_many(self, paths: Sequence[str]) -> list[tuple[bytes, Stat] | None]:
        with self._lock:
            found = [self._nodes.get(p) for p in paths]
            return [(n.data, Stat(n.version, n.owner)) if n else None for n in found]

    def exists(self, path: str) -> Stat | None:
        with self._lock:
            node = self._nodes.get(path)
            return Stat(node.version, node.owner) if node else None

    def children(self, path: str) -> list[str]:
        with self._lock:
            self._node(path)
            return [child.rsplit("/", 1)[1] for child in self._children[path]]

    def create(self, path: str, data: bytes, session: int | None, sequence: bool) -> str:
        """Create a node; ephemeral when `session` is given (it must be alive)."""
        with self._lock:
            parent = _parent(path)
            parent_node = self._node(parent)
            if parent_node.owner is not None:
                raise StoreError(f"cannot create {path}: ephemeral nodes have no children")
            if session is not None and session not in self._sessions:
                raise StoreError(f"session {session:#x} has expired")
            if sequence:
                number = self._sequences.get(parent, 0)
                self._sequences[parent] = number + 1
                path = f"{path}{number:010d}"
            if path in self._nodes:
                raise NodeExistsError(path)
            self._nodes[path] = _Node(data, 0, session)
            self._children[path] = set()
            self._children[parent].add(path)
            due = self._due([(path, True)])
        _call(due)
        return path

    def set(self, path: str, data: bytes, version: int) -> Stat:
        with self._lock:
            node = self._node(path)
            if version not in (-1, node.version):
                raise BadVersionError(path)
            node.data, node.version = data, node.version + 1
            stat = Stat(node.version, node.owner)
            due = self._due([(path, False)])
        _call(due)
        return stat

    def delete(self, path: str, version: int) -> None:
        with self._lock:
            node = self._node(path)
            if version not in (-1, node.version):
                raise BadVersionError(path)
            if self._children[path]:
                raise StoreError(f"cannot delete {path}: it has children")
            self._remove(path)
            due = self._due([(path, True)])
        _call(due)

    def ensure(self, path: str) -> None:
        parts = path.strip("/").split("/")
        for depth in range(1, len(parts) + 1):
            try:
                self.create("/" + "/".join(parts[:depth]), b"", None, sequence=False)
            except NodeExistsError:
                continue

    def put_raw(self, path: str, data: bytes) -> None:
        """Test hook: write bytes to a persistent node (created with its parents if missing)."""
        self.ensure(_parent(path))
        try:
            self.create(path, data, None, sequence=False)
        except NodeExistsError:
            self.set(path, data, -1)

    # ----------------------------------------------------------------- internals
    def _node(self, path: str) -> _Node:
        node = self._nodes.get(path)
        if node is None:
            raise NoNodeError(path)
        return node

    def _remove(self, path: str) -> None:
        del self._nodes[path]
        del self._children[path]
        self._children[_parent(path)].discard(path)

    def _due(self, changes: list[tuple[str, bool]]) -> list[Callback]:
        """Watchers to wake for changed paths (`True`: created or deleted)."""
        due: list[Callback] = []
        for watch in self._watches:
            hit = any(
                path in watch.data_paths or (membership and _parent(path) in watch.child_paths)
                for path, membership in changes
            )
            if hit:
                due.append(watch.notify)
        return due


def _call(callbacks: list[Callback]) -> None:
    for callback in callbacks:
        callback()


class _ClientTree:
    """The server's tree as one client sees it: only while connected, with its session."""

    def __init__(self, server: MemoryServer, session: int) -> None:
        self._server = server
        self._session = session

    def get(self, path: str) -> tuple[bytes, Stat]:
        return self._server.get(path)

    def get_many(self, paths: Sequence[str]) -> list[tuple[bytes, Stat] | None]:
        return self._server.get_many(paths)

    def exists(self, path: str) -> Stat | None:
        return self._server.exists(path)

    def children(self, path: str) -> list[str]:
        return self._server.children(path)

    def create(
        self, path: str, data: bytes, *, ephemeral: bool = False, sequence: bool = False
    ) -> str:
        owner = self._session if ephemeral else None
        return self._server.create(path, data, owner, sequence)

    def set(self, path: str, data: bytes, version: int) -> Stat:
        return self._server.set(path, data, version)

    def delete(self, path: str, version: int) -> None:
        self._server.delete(path, version)

    def ensure(self, path: str) -> None:
        self._server.ensure(path)


class MemoryStore(TreeStore):
    """One client of a `MemoryServer`: a `ConsensusStore` for unit tests."""

    def __init__(
        self,
        server: MemoryServer,
        cluster: str,
        root: str = "/pgwarden",
        session_timeout: float = 4.0,
    ) -> None:
        super().__init__(cluster, root)
        self.server = server
        self._session_timeout = session_timeout
        self._lock = threading.Lock()
        self._state = SessionState.LOST
        self._session: int | None = None
        self._expired_unnoticed = False  # expired while suspended: noticed on resume()
        self._callbacks: list[Callback] = []
        self._watching = False

    # ----------------------------------------------------------------- session
    @property
    def session_state(self) -> SessionState:
        return self._state

    @property
    def session_id(self) -> int | None:
        return self._session

    @property
    def session_timeout(self) -> float:
        return self._session_timeout

    def start(self, timeout: float) -> None:
        """Open a session and create the cluster's base paths (`timeout` is not needed)."""
        del timeout
        with self._lock:
            if self._session is not None:
                return
        self._open_session()
        for path in self.keys.directories:
            self.server.ensure(path)

    def stop(self) -> None:
        with self._lock:
            session, self._session = self._session, None
            self._state = SessionState.LOST
        if session is not None:
            self.server.close_session(session)

    def confirm_session(self) -> float | None:
        sent_at = time.monotonic()
        with self._lock:
            state, session = self._state, self._session
        if state is not SessionState.CONNECTED or session is None:
            return None
        return sent_at if self.server.session_alive(session) else None

    def watch(self, callback: Callable[[], None]) -> None:
        with self._lock:
            self._callbacks.append(callback)
            first = not self._watching
            self._watching = True
        if first:
            self.server.add_watch(self.keys.watched_data, [self.keys.members], self._on_change)

    # ----------------------------------------------------------------- test hooks
    def expire_session(self, *, reconnect: bool = True) -> None:
        """End our session on the server as a timeout would.

        Connected: LOST, then (with `reconnect`) CONNECTED with a new session id.
        Suspended: the client notices on `resume()`. Without `reconnect` the client stays
        LOST (operations raise StoreError) until `resume()` opens a new session.
        """
        with self._lock:
            session = self._session
            noticed = self._state is SessionState.CONNECTED
            if not noticed:
                self._expired_unnoticed = True
        if session is None:
            raise StoreError("the memory store has no session to expire")
        self.server.close_session(session)
        if noticed:
            self._lose_session()
            if reconnect:
                self._open_session()

    def suspend(self) -> None:
        """Drop the connection: SUSPENDED; operations raise StoreError; the session lives."""
        with self._lock:
            if self._state is not SessionState.CONNECTED:
                return
            self._state = SessionState.SUSPENDED
        self._notify()

    def resume(self) -> None:
        """Reconnect: CONNECTED with the same session, or LOST then a new session."""
        with self._lock:
            state, expired = self._state, self._expired_unnoticed
        if state is SessionState.SUSPENDED and not expired:
            with self._lock:
                self._state = SessionState.CONNECTED
            self._notify()
            return
        if state is SessionState.SUSPENDED:
            self._lose_session()
        if self._state is SessionState.LOST:
            self._open_session()

    # ----------------------------------------------------------------- internals
    def _open_session(self) -> None:
        session = self.server.open_session()
        with self._lock:
            self._session, self._state = session, SessionState.CONNECTED
            self._expired_unnoticed = False
        self._notify()

    def _lose_session(self) -> None:
        with self._lock:
            self._session, self._state = None, SessionState.LOST
            self._expired_unnoticed = False
        self._notify()

    def _on_change(self) -> None:
        if self._state is SessionState.CONNECTED:
            self._notify()

    def _notify(self) -> None:
        with self._lock:
            callbacks = list(self._callbacks)
        for callback in callbacks:
            callback()

    def _tree(self, *, urgent: bool = False) -> Tree:
        del urgent  # nothing here waits
        with self._lock:
            state, session = self._state, self._session
        if state is not SessionState.CONNECTED or session is None:
            raise StoreError(f"not connected to the memory store (session {state.value})")
        return _ClientTree(self.server, session)
