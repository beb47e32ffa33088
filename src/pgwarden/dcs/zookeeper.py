"""`ZooKeeperStore`: the consensus store on ZooKeeper through kazoo 2.11.

Sessions, as the agent must understand them:

- CONNECTED -> SUSPENDED when the connection drops or stops answering. The session may
  still live on the server (and with it our leader node) until the server has heard
  nothing for `session_timeout`; kazoo cannot tell, and never reports LOST by itself
  while it cannot reach a server. The agent's lease arithmetic must therefore rest on
  `confirm_session()`, never on the state.
- On reconnecting, the server says whether the session survived: CONNECTED with the same
  `session_id`, or LOST (every ephemeral node of ours is gone) followed at once by
  CONNECTED with a NEW `session_id`. A new session holds nothing: `holds_leader()` is
  False, and the member node must be published again (`publish_member` creates it).
- `watch` callbacks run on kazoo's callback thread at every state change and after
  every change of leader, failover, sync, config or the set of members (not on member
  data changes). They should only wake the HA loop: they run one at a time, so a
  blocking call there delays every later callback and the re-arming of watches.
- `publish_member` over a node of the same name owned by another session replaces it
  when it describes the same host, port and API URL (our previous process, whose
  session has not expired yet) and raises StoreError otherwise (see TreeStore).

Requests are never retried here: each waits at most `connect_timeout` (lease checks,
`confirm_session` and `holds_leader`, at most a third of the session timeout) and any
failure raises StoreError; the HA loop is the retry. While the session is not
CONNECTED requests fail at once. A write that fails with StoreError may still have
been applied: read again.
Connection attempts, on the other hand, go on until `stop()`, backing off to 1 s.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from kazoo.client import KazooClient, KazooState
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.retry import KazooRetry

from pgwarden.dcs.base import SessionState, StoreError
from pgwarden.dcs.zk_client import BoundHandler, KazooTree, Watches, record_negotiated_timeout
from pgwarden.dcs.znodes import Tree, TreeStore
from pgwarden.logs import get_logger

log = get_logger("dcs.zookeeper")

_STATES = {
    KazooState.CONNECTED: SessionState.CONNECTED,
    KazooState.SUSPENDED: SessionState.SUSPENDED,
    KazooState.LOST: SessionState.LOST,
}
RECONNECT_MAX_DELAY = 1.0  # seconds between connection attempts, at most


class ZooKeeperStore(TreeStore):
    """A `ConsensusStore` on ZooKeeper, keys under `<root>/<cluster>/`.

    `source_address`: bind every connection to this local address (a member's loopback
    address in the lab, so iptables can cut it off by address); it must be of the same
    family as the ZooKeeper hosts. `connect_timeout`: the longest one TCP connect or one
    request waits for ZooKeeper's answer.
    """

    def __init__(
        self,
        hosts: str,
        cluster: str,
        root: str = "/pgwarden",
        session_timeout: float = 4.0,
        source_address: str | None = None,
        connect_timeout: float = 5.0,
    ) -> None:
        super().__init__(cluster, root)
        if session_timeout <= 0 or connect_timeout <= 0:
            raise StoreError("ZooKeeper session and connect timeouts must be positive")
        self.hosts = hosts
        self.source_address = source_address
        self.connect_timeout = connect_timeout
        self._requested_timeout = session_timeout
        self._granted_timeout: float | None = None
        self._lock = threading.Lock()
        self._client: Any = None
        self._watches: Watches | None = None
        self._state = SessionState.LOST
        self._session: int | None = None
        self._callbacks: list[Callable[[], None]] = []

    # ----------------------------------------------------------------- session
    @property
    def session_state(self) -> SessionState:
        return self._state

    @property
    def session_id(self) -> int | None:
        """The current session; kept while SUSPENDED, None while LOST or stopped."""
        return self._session

    @property
    def session_timeout(self) -> float:
        """What the server granted at the last connect (it bounds the requested value)."""
        granted = self._granted_timeout
        return granted if granted is not None else self._requested_timeout

    def start(self, timeout: float) -> None:
        """Connect, open a session and create the cluster's persistent paths."""
        if self._client is not None:
            return
        handler = BoundHandler(self.source_address, self.connect_timeout)
        try:
            client = KazooClient(
                hosts=self.hosts,
                timeout=self._requested_timeout,
                handler=handler,
                connection_retry=KazooRetry(
                    max_tries=-1,
                    delay=0.1,
                    backoff=2,
                    max_delay=RECONNECT_MAX_DELAY,
                    sleep_func=handler.sleep_func,
                ),
                # Only kazoo's own helpers use this; our requests are never retried.
                command_retry=KazooRetry(max_tries=1, sleep_func=handler.sleep_func),
            )
        except (ValueError, TypeError) as exc:
            raise StoreError(f"invalid ZooKeeper hosts {self.hosts!r}: {exc}") from None
        if not record_negotiated_timeout(client, self._record_granted_timeout):
            log.warning("dcs.session_timeout.unknown", reason="kazoo internals changed")
        watches = Watches(client, self.keys.watched_data, [self.keys.members], self._notify)
        with self._lock:
            self._client, self._watches = client, watches
        client.add_listener(self._on_state)
        try:
            client.start(timeout=timeout)
        except KazooTimeoutError:
            self._forget(client)
            raise StoreError(
                f"could not connect to ZooKeeper at {self.hosts} within {timeout:g} s"
            ) from None
        # kazoo returns from start() as soon as the session is live, possibly before our
        # state listener has run on its thread: record the state now, or the first request
        # would see the initial LOST and fail.
        client_id = client.client_id
        if client.connected and client_id:
            with self._lock:
                if self._client is client and self._state is not SessionState.CONNECTED:
                    self._state, self._session = SessionState.CONNECTED, client_id[0]
        try:
            tree = self._tree()
            for path in self.keys.directories:
                tree.ensure(path)
        except StoreError:
            self.stop()
            raise
        watches.dispatch(self._arm_if_watched)
        log.info(
            "dcs.started",
            hosts=self.hosts,
            session_id=hex(self._session or 0),
            session_timeout=self.session_timeout,
        )

    def stop(self) -> None:
        """Close the session (our ephemeral nodes vanish at once) and disconnect.

        Takes up to about `session_timeout` when ZooKeeper does not answer."""
        with self._lock:
            client = self._client
        if client is None:
            return
        try:
            client.stop()
        finally:
            client.close()
            self._forget(client)

    def _forget(self, client: Any) -> None:
        client.remove_listener(self._on_state)
        with self._lock:
            self._client, self._watches = None, None
            self._state, self._session = SessionState.LOST, None

    def _record_granted_timeout(self, seconds: float) -> None:
        self._granted_timeout = seconds

    def _on_state(self, kazoo_state: Any) -> None:
        """kazoo's state listener; runs on its connection thread and must not block."""
        state = _STATES[kazoo_state]
        with self._lock:
            client, watches = self._client, self._watches
            if client is None or watches is None:
                return
            self._state = state
            if state is SessionState.CONNECTED:
                client_id = client.client_id
                self._session = client_id[0] if client_id else None
            elif state is SessionState.LOST:
                self._session = None
            session = self._session
        log.info("dcs.session." + state.value, hosts=self.hosts, session_id=hex(session or 0))
        if state is SessionState.CONNECTED:
            watches.dispatch(self._arm_if_watched)  # kazoo forgot every watch on the way
        watches.dispatch(self._notify)

    def confirm_session(self) -> float | None:
        """One `sync` round trip, bounded by a third of the session timeout.

        Returns the monotonic time taken before sending it: the server heard from the
        session that is current at return (`session_id`) after that instant, so it cannot
        expire that session before the returned time + `session_timeout`. It says nothing
        about the leader node: after a LOST the new session holds no lease, so a primary
        must also know that the lease is held by this same `session_id`.
        """
        with self._lock:
            client, state, session = self._client, self._state, self._session
        if client is None or state is not SessionState.CONNECTED or session is None:
            return None
        sent_at = time.monotonic()
        try:
            client.sync_async(self.keys.base).get(timeout=self._urgent_timeout())
        except Exception:  # noqa: BLE001 - whatever failed, the session is not confirmed
            return None
        with self._lock:
            same = self._state is SessionState.CONNECTED and self._session == session
        return sent_at if same else None

    # ----------------------------------------------------------------- watches
    def watch(self, callback: Callable[[], None]) -> None:
        """Call `callback` on kazoo's thread after every change and state change.

        Watching starts when the store is connected (and survives reconnects)."""
        with self._lock:
            self._callbacks.append(callback)
            watches = self._watches
        if watches is not None:
            watches.dispatch(self._arm_if_watched)

    def _arm_if_watched(self) -> None:
        with self._lock:
            watches, wanted = self._watches, bool(self._callbacks)
        if watches is not None and wanted and self._state is SessionState.CONNECTED:
            watches.arm()

    def _notify(self) -> None:
        with self._lock:
            callbacks = list(self._callbacks)
        for callback in callbacks:
            try:
                callback()
            except Exception:  # one bad callback must not silence the others
                log.exception("dcs.watch.callback_failed")

    # ----------------------------------------------------------------- data
    def _tree(self, *, urgent: bool = False) -> Tree:
        with self._lock:
            client = self._client
        if client is None:
            raise StoreError(f"the ZooKeeper store for {self.hosts} is not started")
        timeout = self._urgent_timeout() if urgent else self.connect_timeout
        return KazooTree(client, self.hosts, timeout, self._not_connected)

    def _urgent_timeout(self) -> float:
        """How long a lease check waits: a third of the session timeout at most."""
        return min(self.session_timeout / 3, self.connect_timeout)

    def _not_connected(self) -> str | None:
        state = self._state
        return None if state is SessionState.CONNECTED else state.value
