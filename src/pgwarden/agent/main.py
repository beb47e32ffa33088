"""`pgwarden agent -c FILE`: wiring of the store, PostgreSQL, fence, API and HA loop."""

from __future__ import annotations

import ctypes
import gc
import ipaddress
import os
import pwd
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from pgwarden.agent import sdnotify
from pgwarden.agent.api import ApiServer
from pgwarden.agent.backups import BackupScheduler, Source
from pgwarden.agent.control_api import handlers
from pgwarden.agent.drills import DrillScheduler
from pgwarden.agent.executor import UNKNOWN_LEADER, Executor, LocalMemory
from pgwarden.agent.ha_loop import HaLoop, TickResult
from pgwarden.agent.lease import LeaseKeeper
from pgwarden.agent.metrics import StoredSummary, read_stored_summary
from pgwarden.agent.notify import notifier_for
from pgwarden.agent.postmaster import Postmaster
from pgwarden.agent.wal import WalService, wal_spool_path
from pgwarden.config import Settings, read_password
from pgwarden.config_types import split_host_port
from pgwarden.dcs.base import SessionState, StoreError
from pgwarden.dcs.zookeeper import ZooKeeperStore
from pgwarden.errors import PgwardenError
from pgwarden.ha.fence import FenceClient
from pgwarden.invocation import wal_archive_command, wal_restore_command
from pgwarden.logs import bind_identity, get_logger
from pgwarden.model import DynamicConfig, PgState, SyncMode, Tags
from pgwarden.peers import configure_tls
from pgwarden.postgres import sql
from pgwarden.postgres.conf import InstanceSpec
from pgwarden.postgres.instance import Instance

if TYPE_CHECKING:
    from pgwarden.backup.context import BackupContext

log = get_logger("agent")

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Reap orphans of our children (backends of a killed postmaster) at once, as systemd
    would; PID 1 on some machines reaps them only every second or so."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        log.warning("agent.no_subreaper")


def _render(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def instance_spec(settings: Settings, config_path: Path | None = None) -> InstanceSpec:
    """How to run the local instance; with `config_path`, WAL is archived through pgwarden."""
    pg = settings.postgres
    archive = config_path if settings.wal.archive else None
    socket = str(wal_socket_path(settings))
    os_user: str | None = pg.os_user
    if os_user is not None and pwd.getpwuid(os.geteuid()).pw_name == os_user:
        os_user = None
    bin_dir = pg.bin_dir
    if bin_dir is None:
        from pgwarden.lab.postgres import find_bin_dir  # noqa: PLC0415

        bin_dir = find_bin_dir()
    return InstanceSpec(
        name=settings.member,
        bin_dir=Path(bin_dir),
        data_dir=Path(pg.data_dir),
        host=pg.listen_address,
        port=pg.port,
        os_user=os_user,
        superuser=pg.superuser.username,
        superuser_password=read_password(pg.superuser) or "",
        replication_user=pg.replication.username,
        replication_password=read_password(pg.replication) or "",
        parameters={k: _render(v) for k, v in pg.parameters.items()},
        allowed_networks=pg.allowed_networks,
        archive_mode=settings.wal.archive_mode,
        archive_command=(
            wal_archive_command(archive, socket, wal_spool_path(Path(pg.data_dir)) / "pushed")
            if archive
            else None
        ),
        restore_command=(
            wal_restore_command(archive, socket, wal_spool_path(Path(pg.data_dir)) / "fetched")
            if archive
            else None
        ),
    )


def wal_socket_path(settings: Settings) -> Path:
    data_dir = Path(settings.postgres.data_dir)
    return settings.wal.socket or data_dir.with_name(data_dir.name + ".wal.sock")


def check_config_readable(config_path: Path, os_user: str | None) -> None:
    """archive_command runs pgwarden with this file as the PostgreSQL OS user: say so loudly
    at start if that user cannot read it, rather than let WAL pile up in pg_wal."""
    if os_user is None:
        return
    try:
        entry = pwd.getpwnam(os_user)
        info = config_path.stat()
    except (KeyError, OSError):
        return
    readable = (
        info.st_uid == entry.pw_uid
        or info.st_mode & 0o004
        or (info.st_mode & 0o040 and info.st_gid in os.getgrouplist(os_user, entry.pw_gid))
    )
    if not readable:
        log.error(
            "agent.config_unreadable",
            reason=f"{os_user} cannot read {config_path}, so archive_command "
            "(pgwarden wal-push) will fail; make the file readable by that user",
        )


def initial_dynamic_config(settings: Settings) -> DynamicConfig:
    return DynamicConfig(
        ttl=float(settings.dcs.ttl),
        loop_wait=float(settings.dcs.loop_wait),
        safety_margin=float(settings.dcs.safety_margin),
        maximum_lag_on_failover=settings.ha.maximum_lag_on_failover,
        synchronous_mode=SyncMode(settings.ha.synchronous_mode),
        synchronous_node_count=settings.ha.synchronous_node_count,
    )


def _source_address(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def _read_token(path: Path | None) -> str | None:
    """The API bearer token; None (control endpoints off) without a token file."""
    if path is None:
        return None
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise PgwardenError(f"cannot read api.token_file {path}: {exc.strerror}") from None
    if not token:
        raise PgwardenError(f"api.token_file {path} is empty")
    return token


class Agent:
    def __init__(self, settings: Settings, config_path: Path | None = None) -> None:
        self.settings = settings
        self.config_path = config_path
        self.me = settings.member
        bind_identity(settings.cluster, settings.member)
        # Before any child process (fence, postmaster) is started: see Notifier.claim.
        self.systemd = sdnotify.Notifier.claim()
        spec = instance_spec(settings, config_path)
        self.instance = Instance(spec, spec.data_dir.with_name(spec.data_dir.name + ".log"))
        api_host, api_port = split_host_port(settings.api.listen) or ("127.0.0.1", 8008)
        api = settings.api
        tls = (str(api.tls_cert_file), str(api.tls_key_file)) if api.tls_cert_file else None
        self.api_url = f"{'https' if tls else 'http'}://{api_host}:{api_port}"
        configure_tls(api.tls_ca_file)
        self.store = ZooKeeperStore(
            ",".join(settings.dcs.hosts),
            settings.cluster,
            root=settings.dcs.root,
            session_timeout=float(settings.dcs.ttl),
            source_address=_source_address(spec.host),
        )
        self.memory = LocalMemory()
        self._notified_ready = False
        self._notified_reason = ""
        if (spec.data_dir / "standby.signal").exists():
            # A replica before this agent started: it follows a leader (which one the first
            # tick decides) and has no diverged history to rewind.
            self.memory.configured_leader = UNKNOWN_LEADER
        self.postmaster = Postmaster(self.instance, self._wake)
        self.fence = FenceClient()
        self.keeper = LeaseKeeper(
            self.store,
            self.fence,
            ttl=lambda: self.loop.cluster.config.ttl,
            safety_margin=lambda: self.loop.cluster.config.safety_margin,
            writable_pid=self._writable_pid,
            on_change=self._wake,
        )
        self.executor = Executor(
            self.me,
            self.instance,
            self.postmaster,
            self.store,
            self.keeper,
            self.fence,
            self.memory,
            lambda: initial_dynamic_config(settings),
            replica_methods=settings.postgres.create_replica_methods,
            restore_backup=self.restore_latest_backup,
            on_promoted=self._promoted,
            event=self.record_event,
        )
        tags = Tags(settings.tags.nofailover, settings.tags.nosync, settings.tags.failover_priority)
        self.loop = HaLoop(
            self.me,
            self.api_url,
            tags,
            self.instance,
            self.postmaster,
            self.store,
            self.keeper,
            self.executor,
            self.memory,
            archive_status=self._archive_summary,
            on_tick=self._ticked,
        )
        self.notifier = notifier_for(settings)
        self.backups: BackupScheduler | None = None
        self.drills: DrillScheduler | None = None
        self.wal: WalService | None = None
        if config_path is not None:
            if settings.wal.archive:
                check_config_readable(config_path, settings.postgres.os_user)
                ids = self.instance.owner()
                self.wal = WalService(
                    settings, self.instance, wal_socket_path(settings), ids, self.record_event
                )
            self.backups = BackupScheduler(
                config_path=config_path,
                member=self.me,
                full_schedule=settings.backup.schedule,
                incremental_schedule=settings.backup.incremental_schedule,
                source=self.backup_source,
                event=self.record_event,
            )
            self.drills = DrillScheduler(
                config_path=config_path, member=self.me, schedule=settings.drill.schedule,
                configured_member=settings.drill.member,
                max_duration=settings.drill.max_duration,
                cluster=lambda: self.loop.cluster, event=self.record_event,
            )  # fmt: skip
        self.api = ApiServer(
            api_host,
            api_port,
            self.status,
            self.live_status,
            self.cluster,
            control=handlers(self),
            token=_read_token(settings.api.token_file),
            tls=tls,
            metrics=self.metrics_status,
        )
        self.stored: StoredSummary | None = None
        self._stored_context: BackupContext | None = None
        if config_path is not None:
            self.stored = StoredSummary(self._read_stored)

    # ----------------------------------------------------------------- callbacks
    def _wake(self) -> None:
        self.loop.wake.set()

    def wake(self) -> None:
        """Run the HA loop now (after a control request)."""
        self.loop.wake.set()

    def record_event(self, kind: str, data: dict[str, Any]) -> None:
        try:
            self.store.add_event(kind, data)
        except StoreError as exc:
            log.warning("event.not_recorded", kind=kind, error=str(exc))
        self.notifier.publish(kind, data)

    def _archive_summary(self) -> dict[str, Any] | None:
        if self.wal is None:
            return None
        status = self.wal.archiver.snapshot()
        keys = ("last_archived", "pending_segments", "lag_seconds", "failing_since", "failed")
        return {key: status[key] for key in keys}

    def _ticked(self, result: TickResult) -> None:
        """Readiness for systemd (Type=notify): the first completed tick means the store
        session is up, the API listens (started before the loop) and this member has
        registered and carried out its first decision (perhaps to wait); later ticks
        update the status line when the decision changes."""
        if not self._notified_ready:
            self._notified_ready = True
            self.systemd.ready(result.reason)
        elif result.reason != self._notified_reason:
            self.systemd.status(result.reason)
        self._notified_reason = result.reason

    def _promoted(self, timeline: int) -> None:
        if self.wal is not None:
            self.wal.backfill(timeline)

    def restore_latest_backup(
        self, data_dir: Path, owner: tuple[int, int] | None, system_identifier: str
    ) -> str:
        """Restore the cluster's latest backup as a standby (replica creation by backup)."""
        from pgwarden.backup.context import BackupContext  # noqa: PLC0415
        from pgwarden.backup.restore import RestoreRequest, RestoreRun  # noqa: PLC0415

        context = BackupContext.from_settings(self.settings)
        manifest = context.catalog.resolve("latest")
        if manifest.system_identifier != system_identifier:
            raise PgwardenError(
                f"the latest backup {manifest.id} is of system {manifest.system_identifier}, "
                f"not of this cluster's {system_identifier}"
            )
        request = RestoreRequest(target_dir=data_dir, owner=owner, standby=True)
        RestoreRun(context.store, context.layout, context.key, manifest, request).run()
        return manifest.id

    def backup_source(self) -> Source | None:
        """Whether this member takes the cluster's scheduled backup now, and from what."""
        chosen = self.settings.backup.member
        if chosen is None:
            holds = self.keeper.snapshot().holds and self.postmaster.state is PgState.RUNNING
            return "primary" if holds else None
        if chosen != self.me or self.postmaster.state is not PgState.RUNNING:
            return None
        seen = sql.observe(self.instance.spec, timeout=2.0)
        if seen is None:
            return None
        return "standby" if seen.in_recovery else "primary"

    def _writable_pid(self) -> int | None:
        """The postmaster's PID while it may take writes, else None."""
        if self.memory.configured_leader is not None:
            return None
        if self.postmaster.state not in (PgState.RUNNING, PgState.STARTING):
            return None
        return self.postmaster.pid

    def status(self) -> dict[str, Any]:
        """What the health endpoints judge, observed now rather than at the last tick: a
        fenced or freshly promoted member must not answer as what it was a second ago."""
        last = self.loop.last
        if last is None:
            return {"name": self.me, "state": "starting", "ticked_at": None}
        cluster = self.loop.cluster
        config = cluster.config
        lease = self.keeper.snapshot()
        deadline = lease.deadline(config.ttl, config.safety_margin)
        lease_fresh = (
            lease.holds
            and lease.session is SessionState.CONNECTED
            and deadline is not None
            and time.monotonic() < deadline
        )
        state = self.postmaster.state
        seen = sql.observe(self.instance.spec, timeout=0.5) if state is PgState.RUNNING else None
        position = seen.wal_position if seen else None
        role = "unknown" if seen is None else ("replica" if seen.in_recovery else "primary")
        lag = None
        if cluster.optime is not None and position is not None:
            lag = max(0, cluster.optime - position)
        return {
            "name": self.me,
            "state": state.value
            if seen is not None or state is not PgState.RUNNING
            else "not answering",
            "role": role,
            "timeline": seen.timeline if seen else None,
            "wal_position": str(position) if position is not None else None,
            "lag_bytes": 0 if role == "primary" else lag,
            "leader": cluster.leader.name if cluster.leader else None,
            "holds_lease": lease_fresh,
            "lease_seconds_left": round(deadline - time.monotonic(), 3)
            if lease_fresh and deadline is not None
            else None,
            "replay_time": seen.replay_timestamp if seen else None,
            "paused": config.paused,
            "decision": last.reason,
            "ticked_at": self.loop.ticked_at,
            "loop_wait": config.loop_wait,
            "backup": None if self.backups is None else self.backups.status(),
            "drill": None if self.drills is None else self.drills.status(),
            "wal": None if self.wal is None else self.wal.snapshot(),
        }

    def metrics_status(self) -> dict[str, Any]:
        """What /metrics reports: the status, the cluster's failovers, the newest backup
        and drill in storage (read in the background) and the drill scheduler's state."""
        return {
            **self.status(),
            "cluster": self.settings.cluster,
            "failovers": len(self.loop.cluster.history),
            "stored": None if self.stored is None else self.stored.get(),
        }

    def _read_stored(self) -> dict[str, Any]:
        from pgwarden.backup.context import BackupContext  # noqa: PLC0415

        if self._stored_context is None:  # one storage client for every refresh
            self._stored_context = BackupContext.from_settings(self.settings)
        return read_stored_summary(self._stored_context)

    def live_status(self) -> dict[str, Any]:
        """Observed now, not at the last tick: peers compare WAL positions with it."""
        state = self.postmaster.state
        seen = sql.observe(self.instance.spec, timeout=0.5) if state is PgState.RUNNING else None
        position = seen.wal_position if seen else None
        return {
            "name": self.me,
            "state": state.value if seen is not None else "not answering",
            "replay_time": seen.replay_timestamp if seen else None,
            "in_recovery": seen.in_recovery if seen else None,
            "timeline": seen.timeline if seen else None,
            "wal_position": str(position) if position is not None else None,
            "backup": None if self.backups is None else self.backups.status(),
            "drill": None if self.drills is None else self.drills.status(),
            "wal": None if self.wal is None else self.wal.snapshot(),
        }

    def cluster(self) -> dict[str, Any]:
        cluster = self.loop.cluster
        return {
            "leader": cluster.leader.name if cluster.leader else None,
            "members": {n: m.to_json() for n, m in cluster.members.items()},
            "config": cluster.config.to_json(),
            "sync": {"leader": cluster.sync.leader, "members": sorted(cluster.sync.members)},
            "optime": str(cluster.optime) if cluster.optime is not None else None,
            "history": [h.to_json() for h in cluster.history],
        }

    # ----------------------------------------------------------------- lifecycle
    def run(self) -> int:
        become_subreaper()
        stop = threading.Event()

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("agent.stopping", signal=signal.Signals(signum).name)
            self.systemd.stopping("stopping PostgreSQL, then handing the leader lease over")
            stop.set()
            self.loop.stopping.set()
            self.loop.wake.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.store.start(timeout=float(self.settings.dcs.retry_timeout) + 5)
        self.store.watch(self._wake)
        if self.wal is not None:
            self.wal.start()
        self.postmaster.adopt()
        self.keeper.start()
        self.api.start()
        if self.backups is not None:
            self.backups.start()
        if self.drills is not None:
            self.drills.start()
        self.notifier.start()
        # What is made by now lives as long as the agent: out of the cyclic collector's
        # full passes, which walk every object holding the GIL (50 ms here) while
        # archive_command, failover and the API wait.
        gc.collect()
        gc.freeze()
        log.info("agent.started", api=self.api_url, fence_pid=self.fence.pid)
        try:
            self.loop.run()
        finally:
            self.shutdown()
        return 0

    def shutdown(self) -> None:
        """Never leave an unfenced primary: stop PostgreSQL, then hand the lease over."""
        holds = self.keeper.snapshot().holds
        if self.backups is not None:
            self.backups.stop()
        if self.drills is not None:
            self.drills.stop()
        try:
            if self.postmaster.pid is not None:
                self.postmaster.stop("fast")
        except PgwardenError as exc:
            log.error("agent.stop_failed", error=str(exc))
            self.postmaster.kill()
        self.keeper.stop()
        if holds:
            try:
                self.store.release_leader(self.me)
            except PgwardenError as exc:
                log.warning("lease.not_released", error=str(exc))
        if self.wal is not None:
            self.wal.stop()
        self.fence.close()
        self.notifier.stop()
        self.store.stop()
        self.api.stop()
        log.info("agent.stopped")
