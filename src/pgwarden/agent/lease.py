"""The lease keeper: confirms our session often and re-arms the fence with each proof.

It runs in its own thread, independent of the HA loop, so a long action in the loop
(a rewind, a clone) neither lets the lease lapse nor fires the fence on a healthy
primary. Each successful round trip that shows our session still owns the leader node
moves the deadline (`Lease.deadline`); the fence gets the new deadline while the local
PostgreSQL may take writes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from pgwarden.dcs.base import ConsensusStore, SessionState, StoreError
from pgwarden.ha.fence import FenceClient
from pgwarden.ha.view import Lease
from pgwarden.logs import get_logger

log = get_logger("lease")


class LeaseKeeper:
    def __init__(
        self,
        store: ConsensusStore,
        fence: FenceClient,
        ttl: Callable[[], float],
        safety_margin: Callable[[], float],
        writable_pid: Callable[[], int | None],
        on_change: Callable[[], None],
    ) -> None:
        self._store = store
        self._fence = fence
        self._ttl = ttl
        self._margin = safety_margin
        self._writable_pid = writable_pid
        self._on_change = on_change
        self._lock = threading.Lock()
        self._holds = False
        self._confirmed_at: float | None = None
        self._stop = threading.Event()
        self._poke = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._poke.set()
        self._thread.join(timeout=5)

    def poke(self) -> None:
        """Confirm now (after acquiring or releasing the lease, or a store event)."""
        self._poke.set()

    def snapshot(self) -> Lease:
        with self._lock:
            return Lease(
                session=self._store.session_state,
                holds=self._holds,
                confirmed_at=self._confirmed_at,
                timeout=self._store.session_timeout,
            )

    def confirm(self) -> Lease:
        """One round trip now; update the lease and the fence."""
        sent = time.monotonic()
        try:
            holds = self._store.holds_leader()
            ok = self._store.session_state is SessionState.CONNECTED
        except StoreError:
            holds, ok = False, False
        with self._lock:
            was = self._holds
            if ok:
                self._confirmed_at = sent
                self._holds = holds
            elif self._store.session_state is SessionState.LOST:
                self._holds = False
        lease = self.snapshot()
        self._update_fence(lease)
        if was != lease.holds:
            log.info("lease.changed", holds=lease.holds, session=lease.session.value)
            self._on_change()
        return lease

    def _update_fence(self, lease: Lease) -> None:
        pid = self._writable_pid()
        if pid is None:
            self._fence.disarm()
            return
        deadline = lease.deadline(self._ttl(), self._margin())
        # Only a fresh proof moves the deadline; without one the last deadline stands and
        # the HA loop's decision (Fence) handles a writable PostgreSQL without a lease.
        if lease.holds and deadline is not None:
            self._fence.arm(deadline, pid)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.confirm()
            interval = max(0.1, min(1.0, self._ttl() / 8))
            self._poke.wait(interval)
            self._poke.clear()
