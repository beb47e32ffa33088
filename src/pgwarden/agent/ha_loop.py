"""The HA loop: observe -> decide -> act, every loop_wait or at once on an event.

One tick reads the store once, observes the local PostgreSQL once, asks peers for their
WAL positions only when there is no leader, calls the pure `decide`, performs the
decision, and publishes this member's state with the decision's sentence.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from pgwarden import __version__
from pgwarden.agent.executor import Executor, LocalMemory
from pgwarden.agent.lease import LeaseKeeper
from pgwarden.agent.postmaster import Postmaster
from pgwarden.dcs.base import ConsensusStore, StoreError
from pgwarden.errors import PgwardenError
from pgwarden.ha.actions import (
    Clone,
    EnsureSlots,
    SetSyncKey,
    SetSyncStandbys,
    StopPostgres,
    UpdateOptime,
)
from pgwarden.ha.decide import decide
from pgwarden.ha.view import STAR, ClusterView, LocalState, Standby
from pgwarden.logs import get_logger
from pgwarden.model import ClusterState, Lsn, MemberInfo, PgState, Role, Tags
from pgwarden.peers import request_json
from pgwarden.postgres import sql
from pgwarden.postgres.instance import Instance

log = get_logger("ha")

PEER_TIMEOUT = 0.5
# How long the leader keeps the replication slot of a member that is no longer registered.
SLOT_RETENTION_S = 30 * 60.0


@dataclass(frozen=True)
class TickResult:
    view: ClusterView
    reason: str
    acted: bool


class HaLoop:
    def __init__(
        self,
        me: str,
        api_url: str,
        tags: Tags,
        instance: Instance,
        postmaster: Postmaster,
        store: ConsensusStore,
        keeper: LeaseKeeper,
        executor: Executor,
        memory: LocalMemory,
        archive_status: Callable[[], dict[str, Any] | None] = lambda: None,
        on_tick: Callable[[TickResult], None] = lambda _result: None,
    ) -> None:
        self.me = me
        self.on_tick = on_tick  # after every completed tick (systemd readiness and status)
        self.archive_status = archive_status
        self.api_url = api_url
        self.tags = tags
        self.instance = instance
        self.postmaster = postmaster
        self.store = store
        self.keeper = keeper
        self.executor = executor
        self.memory = memory
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.cluster = ClusterState()
        self.last: TickResult | None = None
        self._last_reason = ""
        self._follow_up = False
        self.ticked_at: float | None = None  # monotonic end of the last completed tick
        self.operator_request: str | None = None  # "restart" or "reinit", from the API
        self._last_seen: dict[str, float] = {}  # member -> monotonic time last registered

    # ----------------------------------------------------------------- observe
    def observe(self) -> LocalState:
        self.postmaster.refresh()
        initialized = self.instance.is_initialized()
        if initialized and self.memory.system_identifier is None:
            self.memory.system_identifier = self.instance.system_identifier()
        state = self.postmaster.state
        local = LocalState(
            pg=state,
            initialized=initialized,
            system_identifier=self.memory.system_identifier,
            configured_leader=self.memory.configured_leader,
            crash_count=self.postmaster.crash_count,
            rejoin_failed=self.memory.rejoin_failed,
            sync_standby_names=self.memory.sync_standby_names,
            tags=self.tags,
            requested=self.operator_request,
        )
        if state not in (PgState.RUNNING, PgState.STARTING):
            return local
        seen = sql.observe(self.instance.spec, timeout=1.0, session=self.executor.session)
        if seen is None:
            return local
        if state is PgState.STARTING:
            self.postmaster.mark_ready()
        position = seen.wal_position
        standbys: tuple[Standby, ...] = ()
        if not seen.in_recovery:
            standbys = tuple(
                Standby(r.name, r.state, r.sync_state, r.flush_lsn)
                for r in sql.replicas(self.instance.spec, session=self.executor.session)
            )
        self._confirm_sync(standbys)
        return replace(
            local,
            sync_confirmed_lsn=self.memory.sync_confirmed_lsn,
            pg=self.postmaster.state,
            in_recovery=seen.in_recovery,
            timeline=seen.timeline,
            wal_position=position,
            standbys=standbys,
        )

    def _recent_members(self, cluster: ClusterState) -> frozenset[str]:
        now = time.monotonic()
        for name in cluster.members:
            self._last_seen[name] = now
        for name, seen in list(self._last_seen.items()):
            if now - seen > SLOT_RETENTION_S:
                del self._last_seen[name]
        return frozenset(self._last_seen) - set(cluster.members)

    def _confirm_sync(self, standbys: tuple[Standby, ...]) -> None:
        """Record the WAL position once every connected standby of the configured set shows
        as synchronous (the new setting is in effect): commits acknowledged after it
        waited for all of them that are connected."""
        names = self.memory.sync_standby_names
        if not names or STAR in names or self.memory.sync_confirmed_lsn is not None:
            return
        # Only connected standbys can acknowledge anything: a listed one that is gone (its
        # host died) must not keep the new setting from being confirmed, or writes that
        # wait for it stay blocked until wal_sender_timeout.
        connected = {s.name for s in standbys}
        synchronous = {s.name for s in standbys if s.sync_state in ("sync", "quorum")}
        if (names & connected) and (names & connected) <= synchronous:
            seen = sql.observe(self.instance.spec, timeout=1.0, session=self.executor.session)
            if seen is not None and seen.current_lsn is not None:
                self.memory.sync_confirmed_lsn = seen.current_lsn

    def peer_positions(self, cluster: ClusterState) -> dict[str, Lsn | None]:
        """Fresh WAL positions of the other members, asked of their APIs in parallel."""
        peers = {n: m.api_url for n, m in cluster.members.items() if n != self.me and m.api_url}
        if not peers:
            return {}
        with ThreadPoolExecutor(max_workers=len(peers)) as pool:
            futures = {name: pool.submit(_ask_position, url) for name, url in peers.items()}
            return {name: f.result() for name, f in futures.items()}

    # ----------------------------------------------------------------- tick
    def tick(self) -> TickResult:
        try:
            return self._tick()
        finally:
            # One connection a tick, not one a question: each tick proves again that
            # PostgreSQL accepts connections (one kept backend would still answer with its
            # postmaster hung), and none is held between ticks (a smart shutdown waits
            # for every session to end).
            self.executor.session.close()

    def _tick(self) -> TickResult:
        local = self.observe()
        try:
            self.cluster = self.store.read()
        except StoreError as exc:
            log.warning("store.unreadable", error=str(exc))
        lease = self.keeper.snapshot()
        cluster = self.cluster
        local = replace(local, recent_members=self._recent_members(cluster))
        try:
            self.executor.sync_parameters(cluster)
        except PgwardenError as exc:
            log.warning("config.not_applied", error=str(exc))
        peers = {}
        request = cluster.failover
        handed_to_me = request is not None and request.to == self.me and request.handed_over
        if cluster.leader is None and local.running and local.in_recovery and not handed_to_me:
            peers = self.peer_positions(cluster)
        view = ClusterView(self.me, cluster, local, lease, peers, wall=time.time())
        decision = decide(view, time.monotonic())
        routine = all(isinstance(a, UpdateOptime | EnsureSlots) for a in decision.actions)
        if not routine or decision.reason != self._last_reason:
            log.info(
                "ha.decision",
                reason=decision.reason,
                actions=[type(a).__name__ for a in decision.actions],
            )
        self._last_reason = decision.reason
        acted = bool(decision.actions)
        self._follow_up = any(isinstance(a, SetSyncStandbys | SetSyncKey) for a in decision.actions)
        if local.requested is not None and any(
            isinstance(a, StopPostgres | Clone) for a in decision.actions
        ):
            self.operator_request = None  # consumed by this decision
        if acted:
            # Announce ourselves before a long action: the leader keeps a replication
            # slot only for registered members, and a rejoining member needs it.
            self.publish(decision.reason, local)
            self.executor.run(decision, cluster)
            local = self.observe()
        self.publish(decision.reason, local)
        self.last = TickResult(view, decision.reason, acted)
        self.ticked_at = time.monotonic()
        return self.last

    def publish(self, reason: str, local: LocalState) -> None:
        if local.in_recovery is None:
            role = Role.UNKNOWN
        else:
            role = Role.REPLICA if local.in_recovery else Role.PRIMARY
        info = MemberInfo(
            name=self.me,
            role=role,
            state=local.pg,
            timeline=local.timeline,
            received_lsn=local.wal_position,
            replayed_lsn=None,
            api_url=self.api_url,
            host=self.instance.spec.host,
            port=self.instance.spec.port,
            tags=self.tags,
            version=__version__,
            system_identifier=local.system_identifier,
            decision=reason,
            archive=self.archive_status() if role is Role.PRIMARY else None,
        )
        try:
            self.store.publish_member(info)
        except StoreError as exc:
            log.warning("member.not_published", error=str(exc))

    def _awaiting_sync(self, result: TickResult) -> bool:
        """Leading in synchronous mode with nobody in the sync key yet."""
        view = result.view
        leads = view.cluster.leader is not None and view.cluster.leader.name == self.me
        return leads and view.local.is_primary and _sync_wanted(view)

    def run(self) -> None:
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                result = self.tick()
            except Exception as exc:
                log.exception("ha.tick_failed", error=str(exc))
                result = None
            if result is not None:
                try:
                    self.on_tick(result)
                except Exception as exc:  # readiness reporting must not undo a tick
                    log.exception("ha.on_tick_failed", error=str(exc))
            config = self.cluster.config
            wait = config.loop_wait
            if result is not None and result.acted and self._follow_up:
                # A multi-step change (synchronous standbys) goes on at once.
                wait = min(wait, 0.1)
            elif result is not None and self._awaiting_sync(result):
                # A new leader in synchronous mode looks for standbys to list quickly.
                wait = min(wait, 0.2)
            if result is not None:
                deadline = result.view.lease.deadline(config.ttl, config.safety_margin)
                if deadline is not None and result.view.local.is_primary:
                    wait = min(wait, max(0.05, deadline - time.monotonic()))
            remaining = wait - (time.monotonic() - started)
            if remaining > 0:
                self.wake.wait(remaining)
            self.wake.clear()


def _sync_wanted(view: ClusterView) -> bool:
    return view.cluster.config.synchronous_mode.value != "off" and not view.cluster.sync.members


def _ask_position(url: str) -> Lsn | None:
    code, data = request_json(f"{url}/status", timeout=PEER_TIMEOUT)
    if code != 200 or data.get("state") != "running" or data.get("wal_position") is None:
        return None
    return Lsn.parse(str(data["wal_position"]))
