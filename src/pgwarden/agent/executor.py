"""Performs the actions of a decision, in order, stopping at the first that fails.

Each action is logged as one structured event carrying the decision's reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import psycopg
from psycopg import sql as pgsql

from pgwarden.agent.lease import LeaseKeeper
from pgwarden.agent.postmaster import Postmaster
from pgwarden.dcs.base import ConsensusStore, StoreError
from pgwarden.errors import PgwardenError
from pgwarden.ha import actions as act
from pgwarden.ha.actions import Decision
from pgwarden.ha.fence import FenceClient
from pgwarden.ha.view import STAR
from pgwarden.logs import get_logger
from pgwarden.model import ClusterState, DynamicConfig, HistoryEntry, Lsn
from pgwarden.peers import request_json
from pgwarden.postgres import sql
from pgwarden.postgres.conf import Endpoint, sync_standby_names
from pgwarden.postgres.instance import Instance, RewindError

log = get_logger("executor")

START_TIMEOUT = 60.0
# configured_leader of a replica whose leader this agent has not configured yet.
UNKNOWN_LEADER = "(unknown leader)"


# Restores the latest backup of the cluster with this system identifier into a data
# directory, its files owned by (uid, gid) if given; returns the backup id.
RestoreBackup = Callable[[Path, tuple[int, int] | None, str], str]


class ActionError(PgwardenError):
    """An action could not be performed; the rest of the decision is skipped."""


@dataclass
class LocalMemory:
    """What the agent remembers about its own configuration between ticks."""

    configured_leader: str | None = None
    rejoin_failed: bool = False
    sync_standby_names: frozenset[str] = field(default_factory=frozenset)
    sync_confirmed_lsn: Lsn | None = None
    applied_parameters: dict[str, str] = field(default_factory=dict)
    system_identifier: str | None = None


class Executor:
    def __init__(
        self,
        me: str,
        instance: Instance,
        postmaster: Postmaster,
        store: ConsensusStore,
        keeper: LeaseKeeper,
        fence: FenceClient,
        memory: LocalMemory,
        initial_config: Callable[[], DynamicConfig],
        replica_methods: Sequence[str] = ("basebackup",),
        restore_backup: RestoreBackup | None = None,
        on_promoted: Callable[[int], None] | None = None,
        event: Callable[[str, dict[str, object]], None] | None = None,
        session: sql.Session | None = None,
    ) -> None:
        self.me = me
        # The HA loop's connection to the local instance, for one tick (it closes it).
        self.session = session if session is not None else sql.Session()
        self._record_event = event
        self.replica_methods = tuple(replica_methods)
        self.restore_backup = restore_backup
        self.on_promoted = on_promoted
        self.instance = instance
        self.postmaster = postmaster
        self.store = store
        self.keeper = keeper
        self.fence = fence
        self.memory = memory
        self._initial_config = initial_config
        self._file_parameters = dict(instance.spec.parameters)

    def run(self, decision: Decision, cluster: ClusterState) -> bool:
        """Perform every action; False if one failed (the rest are skipped)."""
        for action in decision.actions:
            name = type(action).__name__
            started = time.monotonic()
            try:
                ok = self._perform(action, cluster)
            except (PgwardenError, psycopg.Error, OSError) as exc:
                log.error("action.failed", action=name, error=str(exc), reason=decision.reason)
                return False
            elapsed = round(time.monotonic() - started, 3)
            if not ok:
                log.info("action.skipped", action=name, reason=decision.reason, seconds=elapsed)
                return False
            if not isinstance(action, act.UpdateOptime | act.EnsureSlots):
                log.info(f"ha.{_event_name(name)}", reason=decision.reason, seconds=elapsed)
        return True

    # ----------------------------------------------------------------- helpers
    def _endpoint(self, cluster: ClusterState, name: str) -> Endpoint:
        info = cluster.members.get(name)
        if info is None:
            raise ActionError(f"{name} is not a registered member")
        return Endpoint(name, info.host, info.port)

    def _configure(self, cluster: ClusterState, leader: str | None) -> None:
        self._merge_parameters(cluster)
        if leader == UNKNOWN_LEADER:
            # Keep the standby settings on disk; the next tick points them at the leader.
            leader = cluster.leader.name if cluster.leader else None
            if leader is None or leader not in cluster.members:
                raise ActionError("no leader to follow yet")
        endpoint = self._endpoint(cluster, leader) if leader is not None else None
        names = self.memory.sync_standby_names if leader is None else frozenset()
        self.instance.configure(leader=endpoint, synchronous_standby_names=_render_ssn(names))
        self.memory.configured_leader = leader
        if leader is not None:
            self.memory.sync_standby_names = frozenset()

    def _merge_parameters(self, cluster: ClusterState) -> None:
        """Cluster-wide parameters from the dynamic config, under this host's own."""
        merged = {**cluster.config.parameters, **self._file_parameters}
        if merged != dict(self.instance.spec.parameters):
            self.instance.spec = replace(self.instance.spec, parameters=merged)

    def sync_parameters(self, cluster: ClusterState) -> None:
        """Apply changed dynamic parameters to a running PostgreSQL (rewrite, reload)."""
        if self.memory.applied_parameters == dict(cluster.config.parameters):
            return
        if self.postmaster.pid is None:
            return
        self._configure(cluster, self.memory.configured_leader)
        sql.reload(self.instance.spec)
        self.memory.applied_parameters = dict(cluster.config.parameters)
        log.info("config.applied", parameters=sorted(cluster.config.parameters))

    def _start(self) -> None:
        """Start PostgreSQL; wait for a primary to accept connections. A replica may need
        WAL from its leader before it is consistent: the loop watches it start instead."""
        self.postmaster.start()
        if self.memory.configured_leader is None:
            self.instance.wait_ready(START_TIMEOUT)
            self.postmaster.mark_ready()

    # ----------------------------------------------------------------- actions
    def _perform(self, action: act.Action, cluster: ClusterState) -> bool:  # noqa: PLR0912, PLR0915
        match action:
            case act.AcquireLease():
                won = self.store.acquire_leader(self.me)
                self.keeper.confirm()
                return won
            case act.ReleaseLease():
                if self.postmaster.state.value in ("running", "starting"):
                    self.postmaster.stop("fast")
                self.store.release_leader(self.me)
                self.keeper.confirm()
            case act.Bootstrap():
                self._bootstrap()
            case act.RecordInitialize():
                sysid = self.instance.system_identifier()
                if sysid is None:
                    raise ActionError("no local system identifier to record")
                self.store.initialize(sysid)
            case act.Clone(source=source):
                endpoint = self._endpoint(cluster, source)
                if self.postmaster.pid is not None:
                    self.postmaster.stop("fast")
                self._create_replica(cluster, endpoint)
                self.memory.rejoin_failed = False
                self.memory.system_identifier = self.instance.system_identifier()
                self._configure(cluster, source)
                self._start()
            case act.Rewind(source=source):
                self._rewind(cluster, source)
            case act.Promote():
                self._promote(cluster)
            case act.Fence():
                self.postmaster.kill()
                self.fence.disarm()
                self._event("fence", {"member": self.me})
            case act.StartPostgres():
                unknown = self.memory.configured_leader == UNKNOWN_LEADER
                if not (unknown and cluster.leader is None):
                    self._configure(cluster, self.memory.configured_leader)
                # else: a replica with no leader yet starts as configured on disk and races.
                self._start()
            case act.StopPostgres(mode=mode):
                self.postmaster.stop(mode)
            case act.Follow(leader=leader):
                self._configure(cluster, leader)
                if self.postmaster.pid is None:
                    self._start()
                else:
                    sql.reload(self.instance.spec)
            case act.HandOver(target=target, version=version):
                return self._hand_over(cluster, target, version)
            case act.ClearFailover(version=version, why=why):
                self.store.clear_failover(version)
                request = cluster.failover
                kind = "switchover" if request is not None and request.from_ else "failover"
                self._event(kind, {"member": self.me, "result": "cleared", "reason": why})
            case act.UpdateOptime(lsn=lsn):
                if cluster.optime != lsn:
                    self.store.set_optime(lsn)
            case act.EnsureSlots(members=members):
                sql.ensure_slots(self.instance.spec, members, session=self.session)
            case act.SetSyncStandbys(names=names):
                self.memory.sync_standby_names = names
                self.memory.sync_confirmed_lsn = None
                self._configure(cluster, None)
                sql.reload(self.instance.spec)
            case act.SetSyncKey(members=members, version=version):
                return self.store.set_sync(self.me, members, version)
        return True

    def _create_replica(self, cluster: ClusterState, source: Endpoint) -> None:
        """Fill the data directory by the first of the configured methods that works."""
        problems: list[str] = []
        for method in self.replica_methods:
            try:
                if method == "backup":
                    detail: dict[str, object] = {"backup": self._replica_from_backup(cluster)}
                else:
                    self.instance.clone(source)
                    detail = {"source": source.name}
            except PgwardenError as exc:
                log.warning("replica.method_failed", method=method, reason=str(exc))
                problems.append(f"{method}: {exc}")
                continue
            self._event("replica_created", {"member": self.me, "method": method, **detail})
            return
        raise ActionError("could not create a replica: " + "; ".join(problems))

    def _replica_from_backup(self, cluster: ClusterState) -> str:
        restore, sysid = self.restore_backup, cluster.initialize
        if restore is None or sysid is None:
            raise ActionError("no backup storage is configured, or the cluster has no identity")
        restored: list[str] = []
        self.instance.fill(
            "restore a backup into",
            lambda data_dir, owner: restored.append(restore(data_dir, owner, sysid)),
        )
        return restored[0]

    def _bootstrap(self) -> None:
        if not self.instance.is_initialized():
            self.instance.initdb()
        self.memory.sync_standby_names = frozenset()
        self.instance.configure(leader=None)
        self.memory.configured_leader = None
        self._start()
        self._create_replication_role()
        sysid = self.instance.system_identifier()
        if sysid is None:
            raise ActionError("initdb left no system identifier")
        self.memory.system_identifier = sysid
        self.store.initialize(sysid)
        self.store.set_config(self._initial_config(), -1)
        self._event("bootstrap", {"member": self.me, "system_identifier": sysid})

    def _create_replication_role(self) -> None:
        spec = self.instance.spec
        with sql.connect(spec) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_roles WHERE rolname = %s", (spec.replication_user,)
            ).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(
                pgsql.SQL(verb + " ROLE {} WITH REPLICATION LOGIN PASSWORD {}").format(
                    pgsql.Identifier(spec.replication_user),
                    pgsql.Literal(spec.replication_password),
                )
            )

    def _rewind(self, cluster: ClusterState, source: str) -> None:
        endpoint = self._endpoint(cluster, source)
        if self.postmaster.pid is not None:
            self.postmaster.stop("fast")
        # The new timeline reaches pg_control only at a checkpoint after promotion;
        # without it pg_rewind sees no divergence and the old primary breaks as a standby.
        sql.checkpoint(endpoint, self.instance.spec)
        try:
            self.instance.rewind(endpoint)
        except RewindError:
            self.memory.rejoin_failed = True
            raise
        self._configure(cluster, source)
        self._start()

    def _promote(self, cluster: ClusterState) -> None:
        before = sql.observe(self.instance.spec)
        old = self.memory.configured_leader
        self.instance.promote()
        self.memory.configured_leader = None
        self.memory.sync_standby_names = frozenset()
        self._configure(cluster, None)
        after = sql.observe(self.instance.spec)
        lsn = (before.received_lsn or before.replayed_lsn) if before else None
        if after is not None:
            entry = HistoryEntry(
                timeline=after.timeline,
                lsn=lsn or Lsn(0),
                time=time.time(),
                reason="failover",
                old_leader=old,
                new_leader=self.me,
            )
            try:
                self.store.append_history(entry)
            except StoreError as exc:
                log.warning("history.not_recorded", error=str(exc))
        if cluster.failover is not None:
            self.store.clear_failover(cluster.failover.version)
        self._event("failover", {"new_leader": self.me, "old_leader": old})
        if after is not None and self.on_promoted is not None:
            self.on_promoted(after.timeline)

    def _hand_over(self, cluster: ClusterState, target: str, version: int) -> bool:
        """Switchover without losing a commit or needing a rewind afterwards."""
        request = cluster.failover
        info = cluster.members.get(target)
        if request is None or info is None:
            raise ActionError(f"{target} or the switchover request vanished")
        started = time.monotonic()
        # A checkpoint now keeps the shutdown checkpoint, written while nothing can commit,
        # short.
        with sql.connect(self.instance.spec, timeout=5.0) as conn:
            conn.execute("CHECKPOINT")
        self.postmaster.stop("fast")
        final = Lsn.parse(self.instance.controldata()["Latest checkpoint location"])
        received = _wait_received(info.api_url, final, HANDOVER_TIMEOUT)
        if not received:
            log.error("switchover.aborted", target=target, final_lsn=str(final))
            self._start()
            self.store.clear_failover(version)
            self._event("switchover", {"from": self.me, "to": target, "result": "aborted"})
            return False
        marked = replace(request, handed_over=True)
        if not self.store.set_failover(marked, version):
            raise ActionError("the switchover request changed while handing over")
        # Rejoin as the target's replica without a rewind: it has all our WAL.
        self._configure(cluster, target)
        self.store.release_leader(self.me)
        self.keeper.confirm()
        log.info(
            "switchover.handed_over",
            target=target,
            final_lsn=str(final),
            seconds=round(time.monotonic() - started, 3),
        )
        self._event("switchover", {"from": self.me, "to": target, "lsn": str(final)})
        return True

    def _event(self, kind: str, data: dict[str, object]) -> None:
        if self._record_event is not None:
            self._record_event(kind, data)  # the agent's: stored, then notified
            return
        try:
            self.store.add_event(kind, data)
        except StoreError as exc:
            log.warning("event.not_recorded", kind=kind, error=str(exc))


HANDOVER_TIMEOUT = 10.0


def _wait_received(api_url: str, lsn: Lsn, timeout: float) -> bool:
    """Whether the member behind `api_url` reports WAL beyond `lsn` within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code, body = request_json(f"{api_url}/status", timeout=1.0)
        position = body.get("wal_position") if code == 200 else None
        if position is not None and Lsn.parse(str(position)) > lsn:
            return True
        time.sleep(0.01)
    return False


def _render_ssn(names: frozenset[str]) -> str:
    if names == frozenset({STAR}):
        return "*"
    return sync_standby_names(sorted(names))


def _event_name(class_name: str) -> str:
    out = []
    for i, ch in enumerate(class_name):
        if ch.isupper() and i:
            out.append("_")
        out.append(ch.lower())
    return "".join(out)
