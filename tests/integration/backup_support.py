"""A lab member archiving through pgwarden, and the CLI as users run it, for backup tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from pgwarden.config import load_config
from pgwarden.lab import Lab
from pgwarden.lab.archiving import (
    member_config,
    start_restored,
    use_pgwarden_archive,
    write_config,
)
from pgwarden.lab.postgres import PgMember, chown_to
from pgwarden.retry import poll_until
from pgwarden.storage import ObjectStore, open_store


@dataclass
class Archived:
    """Lab member `name` archiving WAL with pgwarden into `storage`; configs in `directory`."""

    lab: Lab
    name: str
    directory: Path
    storage: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)
    config: Path = field(init=False)
    restored: int = 0

    def __post_init__(self) -> None:
        self.config = self.write_config("pgwarden.yml")
        use_pgwarden_archive(self.lab, self.name, self.config, self.env or None)

    def write_config(self, file_name: str, member: str | None = None, **options: Any) -> Path:
        config = member_config(self.lab, member or self.name, self.storage, **options)
        return write_config(self.directory / file_name, config, self.lab.os_user)

    def argv(self, *args: str, config: Path | None = None) -> list[str]:
        """`pgwarden ARGS -c CONFIG` as a user runs it; the config goes after the command."""
        words = list(args)
        at = 2 if words[0] in ("backup", "drill") else 1
        words[at:at] = ["-c", str(config or self.config)]
        return [sys.executable, "-m", "pgwarden", *words]

    def environment(self) -> dict[str, str]:
        return dict(os.environ) | self.env

    def pgw(self, *args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args, config=config),
            capture_output=True,
            text=True,
            env=self.environment(),
            timeout=300,
            check=False,
        )

    def open_store(self) -> ObjectStore:
        """The store the configuration names (its credentials come from `env`)."""
        old = dict(os.environ)
        os.environ.update(self.env)
        try:
            return open_store(load_config(self.config).storage)
        finally:
            os.environ.clear()
            os.environ.update(old)

    def wait_for_objects(self, prefix: str, timeout: float = 60.0) -> None:
        """Wait until the store holds an object under `prefix` (relative to its root)."""
        store = self.open_store()
        poll_until(lambda: next(iter(store.list(prefix, page_size=1)), None) is not None, timeout)

    def json(self, *args: str, config: Path | None = None) -> Any:
        done = self.pgw(*args, "-o", "json", config=config)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def sql(self, query: str, member: str | None = None) -> list[tuple[Any, ...]]:
        with self.lab.connect(member or self.name, autocommit=True) as conn:
            cursor = conn.execute(query)  # type: ignore[arg-type]
            return cursor.fetchall() if cursor.description else []

    def pgbench_init(self, scale: int) -> None:
        member = self.lab.member(self.name)
        subprocess.run(
            [str(self.lab.bin_dir / "pgbench"), "-i", "-q", "-s", str(scale), member.dsn()],
            env=os.environ | {"PGPASSWORD": self.lab.credentials.superuser_password},
            capture_output=True,
            check=True,
        )

    def archive_current_wal(self) -> None:
        """Switch to a new segment and wait until the old one is archived."""
        (segment,) = self.sql("SELECT pg_walfile_name(pg_switch_wal())")[0]

        def archived() -> bool:
            row = self.sql("SELECT last_archived_wal, last_failed_wal FROM pg_stat_archiver")
            return row[0][0] is not None and row[0][0] >= segment

        poll_until(archived, 30.0)

    def target(self, name: str) -> Path:
        path = self.directory / name
        return path

    def start(self, target: Path) -> PgMember:
        """Start PostgreSQL on a restored directory; it is stopped with the lab."""
        self.restored += 1
        return start_restored(self.lab, f"restored{self.restored}", target)

    def query(self, member: PgMember, sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(member.conninfo(self.lab.credentials), autocommit=True) as conn:
            return conn.execute(sql).fetchall()  # type: ignore[arg-type]


def accounts_digest(rows_of: Any) -> str:
    """One value that changes with any change of pgbench_accounts."""
    rows = rows_of("SELECT md5(string_agg(aid || ':' || abalance, ',' ORDER BY aid)) "
                   "FROM pgbench_accounts")  # fmt: skip
    return str(rows[0][0])


def owned_directory(parent: Path, name: str, user: str | None) -> Path:
    path = parent / name
    path.mkdir(mode=0o700)
    chown_to(path, user)
    return path
