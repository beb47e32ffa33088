"""Point a lab member at pgwarden's backups and WAL archive, for tests and benchmarks.

`configure_member` writes a pgwarden configuration file for one lab member (fs storage
in a directory, or S3 on an endpoint), and switches the member's archive_command from
the lab's plain `cp` to `pgwarden wal-push` with that file (ALTER SYSTEM + reload).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import psycopg
import yaml

from pgwarden.lab.net import free_port
from pgwarden.lab.postgres import (
    REPLICATION_USER,
    SUPERUSER,
    PgMember,
    chown_to,
    start,
    wait_ready,
)
from pgwarden.lab.s3 import S3Endpoint
from pgwarden.retry import poll_until


def member_config(
    lab: Any,
    name: str,
    storage: dict[str, Any],
    *,
    key_file: Path | None = None,
    compression: dict[str, Any] | None = None,
    retention: dict[str, Any] | None = None,
    drill: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The pgwarden configuration of lab member `name` as a mapping."""
    member = lab.member(name)
    creds = lab.credentials
    backup: dict[str, Any] = {"schedule": None}
    if retention is not None:
        backup["retention"] = retention
    if key_file is not None:
        backup["encryption_key_file"] = str(key_file)
    if compression is not None:
        backup["compression"] = compression
    postgres: dict[str, Any] = {
        "bin_dir": str(lab.bin_dir),
        "data_dir": str(member.data_dir),
        "listen_address": member.host,
        "port": member.port,
        "superuser": {"username": SUPERUSER, "password": creds.superuser_password},
        "replication": {"username": REPLICATION_USER, "password": creds.replication_password},
    }
    if lab.os_user is not None:
        postgres["os_user"] = lab.os_user
    return {
        "cluster": "lab",
        "member": name,
        "postgres": postgres,
        **({"drill": drill} if drill is not None else {}),
        # Backups and WAL do not use ZooKeeper; the setting is required all the same.
        "dcs": {"hosts": [lab.zookeeper_hosts or "127.0.0.1:2181"]},
        "storage": storage,
        "backup": backup,
    }


def s3_storage(
    endpoint: S3Endpoint, prefix: str, credentials_file: Path, os_user: str | None
) -> dict[str, Any]:
    """The `storage` section for the lab endpoint, writing its credentials file."""
    credentials_file.write_text(
        "[default]\n"
        f"aws_access_key_id = {endpoint.access_key_id}\n"
        f"aws_secret_access_key = {endpoint.secret_access_key}\n"
    )
    credentials_file.chmod(0o600)
    chown_to(credentials_file, os_user)
    return {
        "type": "s3",
        "bucket": endpoint.bucket,
        "prefix": prefix,
        "endpoint_url": endpoint.url,
        "region": endpoint.region,
        "credentials_file": str(credentials_file),
        "force_path_style": True,
    }


def write_config(path: Path, config: dict[str, Any], os_user: str | None) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    chown_to(path, os_user)
    return path


def wal_push_command(config_path: Path, env: dict[str, str] | None = None) -> str:
    """archive_command running this interpreter's pgwarden (with `env`, e.g. S3 settings)."""
    prefix = ["env", *(f"{k}={v}" for k, v in (env or {}).items())] if env else []
    argv = [*prefix, sys.executable, "-m", "pgwarden", "wal-push", "-c", str(config_path)]
    return shlex.join(argv) + " %p"


def use_pgwarden_archive(
    lab: Any, name: str, config_path: Path, env: dict[str, str] | None
) -> None:
    """Switch member `name` to archive with `pgwarden wal-push` and wait for the reload."""
    command = wal_push_command(config_path, env)
    with lab.connect(name, autocommit=True) as conn:
        conn.execute(f"ALTER SYSTEM SET archive_command = {_literal(command)}")
        conn.execute("SELECT pg_reload_conf()")


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def start_restored(lab: Any, name: str, data_dir: Path, host: str = "127.0.0.1") -> PgMember:
    """Start PostgreSQL on a restored copy as lab process `postgres-<name>`, on a free port,
    never archiving (it must not write into the archive it came from); wait until it
    finished recovery and accepts writes. `lab.down()` stops it."""
    member = PgMember(name, host, free_port(host), data_dir)
    with (data_dir / "postgresql.auto.conf").open("a") as auto:
        auto.write(
            f"listen_addresses = '{host}'\nport = {member.port}\narchive_mode = off\n"
            f"cluster_name = '{name}'\n"
        )
    chown_to(data_dir / "postgresql.auto.conf", lab.os_user)
    start(lab.bin_dir, lab.registry, member, lab.os_user)
    wait_ready(lab.registry, member, lab.credentials)

    def promoted() -> bool:
        with psycopg.connect(member.conninfo(lab.credentials), connect_timeout=2) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        return row is not None and not row[0]

    poll_until(promoted, 60.0)
    return member
