"""A restore drill: restore a backup into a scratch instance, recover, check, measure.

The scratch instance lives in a new directory, listens on a free loopback port, and never
archives (`archive_mode = off` on its command line, so nothing it does reaches the
production archive). It replays archived WAL to the target (or the archive's end) and
promotes; then the checks run: the instance reached consistency and accepts queries,
`pg_amcheck` over every relation, and the SQL checks of the configuration. The report
measures restore time, WAL replay time, the total (RTO), the recovered position and last
commit time (and, against the newest archived segment, the RPO). The instance is stopped
and its directory removed, also when something failed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pgwarden.agent.walserver import WalServer
from pgwarden.backup.context import BackupContext
from pgwarden.backup.manifest import Manifest
from pgwarden.backup.restore import RestoreRequest, RestoreRun
from pgwarden.backup.targets import RecoveryTarget
from pgwarden.config import DrillCheck
from pgwarden.config_types import format_number
from pgwarden.drill.plan import amcheck_options, disk_verdict
from pgwarden.errors import PgwardenError
from pgwarden.invocation import pgwarden_command, wal_restore_command
from pgwarden.lab.net import free_port
from pgwarden.logs import get_logger
from pgwarden.model import Lsn
from pgwarden.postgres import sql
from pgwarden.postgres.conf import InstanceSpec
from pgwarden.postgres.instance import Instance
from pgwarden.wal.check import check_archive
from pgwarden.wal.fetcher import Fetcher
from pgwarden.wal.names import parse_segment_name, segment_start_lsn

log = get_logger("drill")

RECOVERY_TIMEOUT = 3600.0
MAX_SOCKET_PATH = 100  # a unix socket path has room for 107 bytes


class DrillStoppedError(PgwardenError):
    """The drill was stopped from outside: its time limit passed, or SIGTERM."""


@dataclass
class CheckResult:
    name: str
    ok: bool
    detail: str


@dataclass
class DrillReport:
    id: str
    backup: str
    target: dict[str, str | None]
    started_at: str
    finished_at: str = ""
    restore_s: float | None = None
    replay_s: float | None = None
    rto_s: float | None = None
    downloaded_bytes: int = 0
    # WAL files replay took from the drill's own fetcher (prefetched ones among them);
    # None when restore_command went to storage directly.
    wal_files_fetched: int | None = None
    wal_files_prefetched: int | None = None
    restored_bytes: int = 0
    recovered_lsn: str | None = None
    recovered_commit_time: str | None = None
    archive_head_time: str | None = None
    rpo_s: float | None = None
    checks: list[CheckResult] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and all(check.ok for check in self.checks)

    def to_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["checks"] = [check.__dict__ for check in self.checks]
        data["ok"] = self.ok
        data["checks_passed"] = sum(check.ok for check in self.checks)
        data["checks_failed"] = sum(not check.ok for check in self.checks)
        return data


def drill_id(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y%m%dT%H%M%SD")


def check_value(check: DrillCheck, value: Any) -> tuple[bool, str]:
    """Whether a check's single value meets its expectation, and what was seen."""
    seen = f"{check.sql!r} returned {value!r}"
    if check.equals is not None and value != check.equals:
        return False, f"{seen}, expected {check.equals!r}"
    number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
    if (check.min is not None or check.max is not None) and number is None:
        return False, f"{seen}, not a number"
    if check.min is not None and number is not None and number < check.min:
        return False, f"{seen}, below the minimum {format_number(check.min)}"
    if check.max is not None and number is not None and number > check.max:
        return False, f"{seen}, above the maximum {format_number(check.max)}"
    return True, seen


class Drill:
    def __init__(
        self,
        spec: InstanceSpec,
        context: BackupContext,
        manifest: Manifest,
        target: RecoveryTarget,
        config_path: Path,
        checks: tuple[DrillCheck, ...],
        owner: tuple[int, int] | None,
        scratch_root: Path | None = None,
        amcheck_depth: str = "standard",
    ) -> None:
        self.source = spec
        self.context = context
        self.manifest = manifest
        self.target = target
        self.config_path = config_path
        self.checks = checks
        self.owner = owner
        self.scratch_root = scratch_root
        self.amcheck_depth = amcheck_depth
        # Set once cleanup began: a stop request (time limit, SIGTERM) must not interrupt it.
        self.finishing = False
        self.archive_end: str | None = None  # the newest archived segment on the path

    def run(self) -> DrillReport:
        now = datetime.now(UTC)
        report = DrillReport(
            id=drill_id(now), backup=self.manifest.id,
            target={"kind": self.target.kind, "value": self.target.value or None,
                    "action": self.target.action},
            started_at=now.isoformat(),
        )  # fmt: skip
        scratch: Path | None = None
        instance: Instance | None = None
        fetching: WalServer | None = None
        try:
            scratch = self._scratch()
            fetching = self._serve_wal(scratch)
            archive = self._archive_check()
            report.checks.append(archive)
            if not archive.ok and archive.detail.startswith("the backup's own WAL"):
                report.error = archive.detail
                return report
            instance = self._recover(scratch / "data", report, fetching)
            self._check(instance, report)
        except (PgwardenError, OSError) as exc:
            report.error = str(exc)
        finally:
            self.finishing = True
            if instance is not None:
                instance.stop("immediate")
            if fetching is not None:
                fetching.stop()
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
            if fetching is not None:  # last: it may wait for downloads from slow storage
                fetching.fetcher.stop()
                if scratch is not None:  # what downloads in flight wrote meanwhile
                    shutil.rmtree(scratch, ignore_errors=True)
            report.finished_at = datetime.now(UTC).isoformat()
        return report

    def _scratch(self) -> Path:
        """A new scratch directory, once its filesystem has room for the restored copy."""
        root = self.scratch_root or Path(tempfile.gettempdir())
        try:
            free = shutil.disk_usage(root).free
        except OSError as exc:
            reason = f"cannot use the scratch directory {root}: {exc.strerror}"
            raise PgwardenError(reason) from None
        room = disk_verdict(free, self.manifest.db_bytes, str(root))
        if not room.ok:
            raise PgwardenError(room.reason)
        scratch = Path(tempfile.mkdtemp(prefix="pgwarden-drill-", dir=root))
        if self.owner is not None:
            os.chown(scratch, *self.owner)
        return scratch

    def _serve_wal(self, scratch: Path) -> WalServer | None:
        """A fetcher for the scratch instance, as the agent has one for its own: replay
        takes prefetched segments from a spool instead of one download per process."""
        socket = scratch / "wal.sock"
        if len(os.fsencode(socket)) > MAX_SOCKET_PATH:
            return None  # restore_command goes to storage directly, slower
        fetcher = Fetcher(
            self.context.wal, scratch / "wal-spool", owner=self.owner,
            segment_size=lambda: self.manifest.segment_size,
        )  # fmt: skip
        server = WalServer(socket, None, fetcher, scratch / "data" / "pg_wal", self.owner)
        try:
            server.start()
        except OSError as exc:  # an optional speed-up: replay fetches directly instead
            fetcher.stop()
            log.warning("drill.no_fetcher", reason=str(exc))
            return None
        return server

    def _restore_command(self, fetching: WalServer | None) -> str:
        if fetching is None:
            return pgwarden_command(self.config_path, "wal-fetch", "%f", "%p")
        spool = fetching.fetcher.spool
        return wal_restore_command(self.config_path, str(fetching.path), spool)

    def _recover(self, data_dir: Path, report: DrillReport, fetching: WalServer | None) -> Instance:
        started = time.monotonic()
        request = RestoreRequest(
            target_dir=data_dir, owner=self.owner,
            restore_command=self._restore_command(fetching),
            settings=self.target.settings(),
        )  # fmt: skip
        result = RestoreRun(
            self.context.store, self.context.layout, self.context.key, self.manifest, request
        ).run()
        report.restore_s = round(time.monotonic() - started, 3)
        report.downloaded_bytes = result.downloaded_bytes
        report.restored_bytes = result.written_bytes
        port = free_port("127.0.0.1")
        with (data_dir / "postgresql.auto.conf").open("a") as auto:
            # Never archive, never clash with the production instance on this host.
            auto.write(
                f"# pgwarden drill {report.id}\nport = {port}\nlisten_addresses = '127.0.0.1'\n"
                "archive_mode = off\nunix_socket_directories = ''\n"
                f"cluster_name = 'pgwarden-drill-{report.id}'\n"
            )
        if self.owner is not None:
            os.chown(data_dir / "postgresql.auto.conf", *self.owner)
        spec = InstanceSpec(
            name=f"drill-{report.id}", bin_dir=self.source.bin_dir, data_dir=data_dir,
            host="127.0.0.1", port=port, os_user=self.source.os_user,
            superuser=self.source.superuser, superuser_password=self.source.superuser_password,
            replication_user=self.source.replication_user,
            replication_password=self.source.replication_password, parameters={},
        )  # fmt: skip
        instance = Instance(spec, data_dir.parent / "postgres.log")
        replay_started = time.monotonic()
        instance.start()
        instance.wait_ready(RECOVERY_TIMEOUT)
        deadline = time.monotonic() + RECOVERY_TIMEOUT
        while True:
            seen = sql.observe(spec, timeout=5.0)
            if seen is not None and not seen.in_recovery:
                break
            if time.monotonic() > deadline:
                raise PgwardenError("the drill instance did not finish recovery in time")
            time.sleep(0.1)
        report.replay_s = round(time.monotonic() - replay_started, 3)
        if fetching is not None:
            fetched = fetching.fetcher.snapshot()
            report.wal_files_fetched = fetched["served"]
            report.wal_files_prefetched = fetched["prefetch_hits"]
        report.rto_s = round(time.monotonic() - started, 3)
        self._positions(spec, report)
        return instance

    def _positions(self, spec: InstanceSpec, report: DrillReport) -> None:
        with sql.connect(spec, timeout=5.0) as conn:
            row = conn.execute(
                "SELECT pg_current_wal_lsn()::text, pg_last_xact_replay_timestamp()"
            ).fetchone()
        assert row is not None
        report.recovered_lsn = row[0]
        if row[1] is not None:
            report.recovered_commit_time = row[1].isoformat()
        head = self._archive_head()
        if head is not None:
            report.archive_head_time = head.isoformat()
            if row[1] is not None:
                report.rpo_s = round(max(0.0, (head - row[1]).total_seconds()), 3)

    def _archive_head(self) -> datetime | None:
        """When the newest WAL segment was archived."""
        layout = self.context.layout
        newest = None
        for info in self.context.store.list(layout.wal_prefix):
            if newest is None or info.modified > newest:
                newest = info.modified
        return newest

    def _check(self, instance: Instance, report: DrillReport) -> None:
        spec = instance.spec
        report.checks.append(CheckResult("consistent", True, "recovery finished; queries run"))
        replay = self._replay_check(report)
        if replay is not None:
            report.checks.append(replay)
        report.checks.append(self._amcheck(spec))
        for check in self.checks:
            try:
                with sql.connect(spec, timeout=5.0) as conn:
                    row = conn.execute(check.sql).fetchone()
                ok, detail = check_value(check, None if row is None else row[0])
            except DrillStoppedError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failing query fails the check
                ok, detail = False, f"{check.sql!r} failed: {str(exc).strip()}"
            report.checks.append(CheckResult(check.name, ok, detail))
        checksums = self._checksums(instance)
        if checksums is not None:
            report.checks.append(checksums)

    def _archive_check(self) -> CheckResult:
        """Every segment from the backup's start to the newest archived one is there."""
        found = check_archive(self.context, self.manifest)
        if found.backup_problems:
            names = ", ".join(p.object.rsplit("/", 1)[-1] for p in found.backup_problems)
            return CheckResult(
                "archive", False, f"the backup's own WAL is not all archived: missing {names}"
            )
        if found.continuity.gaps:
            gaps = found.continuity.gaps
            shown = ", ".join(gaps[:5]) + (" ..." if len(gaps) > 5 else "")
            return CheckResult(
                "archive", False,
                f"{len(gaps)} WAL segment(s) missing after the backup: {shown}; recovery "
                "stops at the first",
            )  # fmt: skip
        self.archive_end = found.continuity.last
        return CheckResult(
            "archive", True,
            f"{found.continuity.checked} segment(s) from {found.continuity.first} to "
            f"{found.continuity.last}, no gap",
        )  # fmt: skip

    def _replay_check(self, report: DrillReport) -> CheckResult | None:
        """Without a target, replay must reach the newest archived segment: a fetch that
        failed looks to PostgreSQL like the end of the archive, and it would promote early."""
        if self.target.kind is not None or self.archive_end is None or not report.recovered_lsn:
            return None
        size = self.manifest.segment_size
        _, segno = parse_segment_name(self.archive_end, size)
        recovered = Lsn.parse(report.recovered_lsn)
        if recovered >= segment_start_lsn(segno, size):
            return CheckResult("replay", True, f"replay reached {self.archive_end}")
        return CheckResult(
            "replay", False,
            f"replay stopped at {recovered}, before the newest archived segment "
            f"{self.archive_end} (a WAL file could not be fetched)",
        )  # fmt: skip

    def _checksums(self, instance: Instance) -> CheckResult | None:
        """pg_checksums over the stopped copy, when the cluster has data checksums."""
        if not self.manifest.data_checksums:
            return None
        instance.stop("fast")
        ok, out = instance.run_program("pg_checksums", "--check", "-D", str(instance.data_dir))
        if ok:
            return CheckResult("checksums", True, "pg_checksums found no bad page")
        return CheckResult("checksums", False, out.strip().replace("\n", "; ")[:500])

    def _amcheck(self, spec: InstanceSpec) -> CheckResult:
        argv = [
            str(spec.bin_dir / "pg_amcheck"), "-h", spec.host, "-p", str(spec.port),
            "-U", spec.superuser, "--all", "--install-missing", "--no-password",
            *amcheck_options(self.amcheck_depth),
        ]  # fmt: skip
        env = {"PATH": os.environ.get("PATH", ""), "PGPASSWORD": spec.superuser_password}
        done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        if done.returncode == 0:
            depth = self.amcheck_depth
            return CheckResult("amcheck", True, f"pg_amcheck ({depth}) found no corruption")
        found = (done.stdout + done.stderr).strip().splitlines()
        return CheckResult("amcheck", False, "; ".join(found[:5]) or f"exit {done.returncode}")
