"""PostgreSQL instances for the lab: initdb, start, streaming replicas, readiness.

Runs PostgreSQL's programs as the OS user that owns the data (`postgres` when the lab
runs as root; the current user otherwise), dropping privileges for those children only.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

import psycopg

from pgwarden.lab.net import free_port, member_address
from pgwarden.lab.procs import (
    LabError,
    Registry,
    is_running,
    log_tail,
    os_user_ids,
    run,
    spawn,
    stop,
)
from pgwarden.retry import DeadlineExceededError, poll_until

SUPERUSER = "postgres"
REPLICATION_USER = "replicator"


def find_bin_dir() -> Path:
    """The newest PostgreSQL server bin directory installed, or PGWARDEN_PG_BIN."""
    override = os.environ.get("PGWARDEN_PG_BIN")
    if override:
        return Path(override)
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if candidates and (candidates[-1] / "initdb").exists():
        return candidates[-1]
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    raise LabError(
        "PostgreSQL server programs not found; install postgresql or set PGWARDEN_PG_BIN"
    )


def default_os_user() -> str | None:
    """`postgres` when running as root (initdb refuses root), else the current user."""
    return "postgres" if os.geteuid() == 0 else None


@dataclass(frozen=True)
class Credentials:
    superuser_password: str
    replication_password: str


@dataclass(frozen=True)
class PgMember:
    """One lab PostgreSQL instance."""

    name: str
    host: str
    port: int
    data_dir: Path

    @property
    def process_name(self) -> str:
        return f"postgres-{self.name}"

    def conninfo(self, creds: Credentials, dbname: str = "postgres") -> str:
        return (
            f"host={self.host} port={self.port} user={SUPERUSER} dbname={dbname} "
            f"password={creds.superuser_password} connect_timeout=3"
        )

    def dsn(self, dbname: str = "postgres") -> str:
        """A connection string without the password (use the lab's pgpass or the API)."""
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{dbname}"


def plan_members(directory: Path, count: int) -> list[PgMember]:
    members = []
    for i in range(1, count + 1):
        host = member_address(i)
        members.append(PgMember(f"node{i}", host, free_port(host), directory / f"node{i}"))
    return members


def chown_to(path: Path, os_user: str | None) -> None:
    ids = os_user_ids(os_user)
    if ids is not None:
        os.chown(path, ids[0], ids[1])


def write_pgpass(
    directory: Path, members: list[PgMember], creds: Credentials, user: str | None
) -> Path:
    """A libpq password file the replicas use to connect to any member as replicator."""
    path = directory / "pgpass"
    lines = [
        f"{m.host}:{m.port}:*:{REPLICATION_USER}:{creds.replication_password}" for m in members
    ] + [f"{m.host}:{m.port}:*:{SUPERUSER}:{creds.superuser_password}" for m in members]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    chown_to(path, user)
    return path


def settings(member: PgMember, archive_dir: Path) -> dict[str, str]:
    """postgresql.conf for a lab member; the same for primary and replica but for address."""
    archive = f"test ! -f {archive_dir}/%f && cp %p {archive_dir}/%f"
    return {
        "listen_addresses": f"'{member.host}'",
        "port": str(member.port),
        # TCP only: socket paths under a deep lab directory can exceed the 107-byte limit.
        "unix_socket_directories": "''",
        "max_connections": "50",
        "shared_buffers": "32MB",
        "wal_level": "replica",
        "max_wal_senders": "10",
        "max_replication_slots": "10",
        "hot_standby": "on",
        "hot_standby_feedback": "on",
        "wal_log_hints": "on",
        "archive_mode": "on",
        "archive_command": "'" + archive.replace("'", "''") + "'",
        "password_encryption": "'scram-sha-256'",
        "log_line_prefix": "'%m [%p] %q%a '",
        "cluster_name": f"'{member.name}'",
    }


def write_config(
    member: PgMember, archive_dir: Path, user: str | None, extra: dict[str, str] | None = None
) -> None:
    values = settings(member, archive_dir) | (extra or {})
    conf = "".join(f"{k} = {v}\n" for k, v in values.items())
    (member.data_dir / "postgresql.conf").write_text("# written by pgwarden lab\n" + conf)
    hba = (
        "# written by pgwarden lab: loopback only, passwords required\n"
        "host all all 127.0.0.0/8 scram-sha-256\n"
        "host replication all 127.0.0.0/8 scram-sha-256\n"
    )
    (member.data_dir / "pg_hba.conf").write_text(hba)
    for name in ("postgresql.conf", "pg_hba.conf"):
        chown_to(member.data_dir / name, user)


def initdb(
    bin_dir: Path, registry: Registry, member: PgMember, creds: Credentials, user: str | None
) -> None:
    member.data_dir.mkdir(mode=0o700, parents=True)
    chown_to(member.data_dir, user)
    pwfile = member.data_dir.parent / f".{member.name}.pw"
    pwfile.write_text(creds.superuser_password + "\n")
    pwfile.chmod(0o600)
    chown_to(pwfile, user)
    try:
        run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(member.data_dir),
                "-U",
                SUPERUSER,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "--data-checksums",
                "--encoding=UTF8",
                "--locale=C",
                "--no-instructions",
            ],
            user=user,
            what=f"initdb for {member.name}",
            registry=registry,
        )
    finally:
        pwfile.unlink(missing_ok=True)


def start(bin_dir: Path, registry: Registry, member: PgMember, user: str | None) -> None:
    # SIGINT is PostgreSQL's fast shutdown: roll back open transactions, checkpoint, exit.
    spawn(
        registry,
        member.process_name,
        [str(bin_dir / "postgres"), "-D", str(member.data_dir)],
        member.data_dir.parent / f"{member.name}.log",
        user=user,
        stop_signal=signal.SIGINT,
    )


def stop_member(registry: Registry, member: PgMember) -> None:
    record = registry.get(member.process_name)
    if record is not None:
        stop(record, timeout=30.0)
        registry.remove(member.process_name)


def wait_ready(
    registry: Registry, member: PgMember, creds: Credentials, timeout: float = 60.0
) -> None:
    """Wait until the member accepts a SQL connection."""

    def ready() -> bool:
        record = registry.get(member.process_name)
        if record is None or not is_running(record):
            raise LabError(
                f"PostgreSQL {member.name} exited during start; its log ends with:\n"
                + log_tail(record.log if record else "")
            )
        try:
            with psycopg.connect(member.conninfo(creds), connect_timeout=1) as conn:
                conn.execute("SELECT 1")
        except psycopg.OperationalError:
            return False
        return True

    try:
        poll_until(ready, timeout)
    except DeadlineExceededError:
        record = registry.get(member.process_name)
        raise LabError(
            f"PostgreSQL {member.name} did not accept connections within {timeout:g} s; "
            "its log ends with:\n" + log_tail(record.log if record else "")
        ) from None


def create_replication_role(primary: PgMember, creds: Credentials) -> None:
    with psycopg.connect(primary.conninfo(creds), autocommit=True) as conn:
        conn.execute(
            psycopg.sql.SQL("CREATE ROLE {} WITH REPLICATION LOGIN PASSWORD {}").format(
                psycopg.sql.Identifier(REPLICATION_USER),
                psycopg.sql.Literal(creds.replication_password),
            )
        )


def clone(
    bin_dir: Path,
    registry: Registry,
    primary: PgMember,
    member: PgMember,
    *,
    pgpass: Path,
    archive_dir: Path,
    user: str | None,
    extra: dict[str, str] | None = None,
) -> None:
    """Make `member` a streaming replica of `primary` with pg_basebackup and a slot."""
    member.data_dir.mkdir(mode=0o700, parents=True)
    chown_to(member.data_dir, user)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PGPASSFILE": str(pgpass)}
    if user is not None:
        env["HOME"] = pwd.getpwnam(user).pw_dir
    run(
        [
            str(bin_dir / "pg_basebackup"),
            "-h",
            primary.host,
            "-p",
            str(primary.port),
            "-U",
            REPLICATION_USER,
            "-D",
            str(member.data_dir),
            "-X",
            "stream",
            "-c",
            "fast",
            "-C",
            "-S",
            member.name,
            "--no-password",
        ],
        user=user,
        env=env,
        what=f"pg_basebackup for {member.name}",
        registry=registry,
    )
    write_config(member, archive_dir, user, extra)
    conninfo = (
        f"host={primary.host} port={primary.port} user={REPLICATION_USER} "
        f"passfile={pgpass} application_name={member.name}"
    )
    auto = member.data_dir / "postgresql.auto.conf"
    auto.write_text(f"primary_conninfo = '{conninfo}'\nprimary_slot_name = '{member.name}'\n")
    (member.data_dir / "standby.signal").write_text("")
    for path in (auto, member.data_dir / "standby.signal"):
        chown_to(path, user)


def wait_streaming(
    primary: PgMember, names: list[str], creds: Credentials, timeout: float = 60.0
) -> None:
    """Wait until every named replica streams from `primary`."""

    def streaming() -> bool:
        with psycopg.connect(primary.conninfo(creds)) as conn:
            rows = conn.execute(
                "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'"
            ).fetchall()
        return set(names) <= {r[0] for r in rows}

    try:
        poll_until(streaming, timeout, interval=0.1)
    except DeadlineExceededError:
        raise LabError(
            f"replicas {', '.join(names)} did not stream from {primary.name} within {timeout:g} s"
        ) from None
