"""`Lab`: ZooKeeper, an S3 endpoint and PostgreSQL instances on loopback, in one directory.

Everything a lab starts or writes lives under its directory: `lab.json` (the plan: ports,
addresses, credentials; mode 0600), `procs/` (one record per process), logs and data.
`Lab.open(dir).down()` needs nothing else, so a lab can be torn down after the process
that created it died.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from pgwarden.lab import agents, archiving, faults, s3, zookeeper
from pgwarden.lab import postgres as pg
from pgwarden.lab.procs import (
    LabError,
    ProcessRecord,
    Registry,
    os_user_ids,
    start_ticks,
    stop,
)
from pgwarden.lab.status import lab_status
from pgwarden.logs import get_logger

STATE_FILE = "lab.json"
log = get_logger("lab")


@dataclass(frozen=True)
class LabSpec:
    """What to start: ZooKeeper nodes (0, 1 or 3), an S3 endpoint, PostgreSQL members."""

    zookeeper_nodes: int = 1
    s3: bool = True
    postgres_nodes: int = 3
    # Extra postgresql.conf lines for every member, values quoted as in the file.
    postgres_settings: tuple[tuple[str, str], ...] = ()
    # Run a pgwarden agent per member; the agents bootstrap and clone the cluster.
    agents: bool = False
    synchronous_mode: str = "off"
    # Run the agents as this OS user (as systemd does in production), not as ourselves.
    agents_user: str | None = None
    # Merged into every agent's configuration, section by section (e.g. a backup schedule).
    agent_overrides: Mapping[str, Any] = field(default_factory=dict)
    # Where agents keep backups and WAL: a directory of the lab, or its S3 endpoint.
    agent_storage: str = "fs"

    def validate(self) -> None:
        if self.zookeeper_nodes not in (0, 1, 3):
            raise LabError(f"--zk-nodes must be 0, 1 or 3, got {self.zookeeper_nodes}")
        if not 0 <= self.postgres_nodes <= 9:
            raise LabError(f"--nodes must be between 0 and 9, got {self.postgres_nodes}")
        if self.agents and not (self.zookeeper_nodes and self.postgres_nodes):
            raise LabError("agents need ZooKeeper and at least one member")
        if self.agent_storage not in ("fs", "s3") or (self.agent_storage == "s3" and not self.s3):
            raise LabError("agent storage must be fs, or s3 with the S3 endpoint started")


class Lab:
    """A lab rooted at `directory`. Create with `Lab.create`, reopen with `Lab.open`."""

    def __init__(self, directory: Path, state: dict[str, Any]) -> None:
        self.directory = directory
        self.state = state
        self.registry = Registry(directory)

    # ----------------------------------------------------------------- lifecycle
    @classmethod
    def create(cls, directory: str | Path, spec: LabSpec | None = None) -> Lab:
        """Plan and start a lab; on any failure stop what started and raise LabError."""
        spec = spec or LabSpec()
        spec.validate()
        root = Path(directory).absolute()
        _prepare_directory(root)
        user = pg.default_os_user()
        _check_traversable(root, user)
        state: dict[str, Any] = {
            "lab_id": uuid.uuid4().hex[:12],
            "created_at": time.time(),
            "os_user": user,
            "zookeeper": [asdict(n) for n in zookeeper.plan(spec.zookeeper_nodes)]
            if spec.zookeeper_nodes
            else [],
            "s3": asdict(s3.plan()) if spec.s3 else None,
            "postgres": None,
            "agents": spec.agents,
            "agents_user": spec.agents_user,
            "synchronous_mode": spec.synchronous_mode,
            "agent_overrides": dict(spec.agent_overrides),
            "agent_storage": spec.agent_storage,
        }
        if spec.postgres_nodes:
            members = pg.plan_members(root / "pg", spec.postgres_nodes)
            state["postgres"] = {
                "bin_dir": str(pg.find_bin_dir()),
                "primary": members[0].name,
                "members": [{**asdict(m), "data_dir": str(m.data_dir)} for m in members],
                "settings": dict(spec.postgres_settings),
                "superuser_password": secrets.token_urlsafe(18),
                "replication_password": secrets.token_urlsafe(18),
            }
        if spec.agents:
            agents.plan_api_ports(state["postgres"]["members"])
        lab = cls(root, state)
        lab._save()
        started = time.monotonic()
        try:
            lab._start()
        except BaseException as exc:
            lab.down(remove_files=False)
            if isinstance(exc, LabError):
                raise LabError(
                    f"{exc}\n(logs kept in {root}; `pgwarden lab down --dir {root}` removes them)"
                ) from exc
            raise
        log.info("lab.up", directory=str(root), seconds=round(time.monotonic() - started, 2))
        return lab

    @classmethod
    def open(cls, directory: str | Path) -> Lab:
        """Reopen an existing lab from its directory."""
        root = Path(directory).absolute()
        path = root / STATE_FILE
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError:
            raise LabError(f"{root} holds no lab (no {STATE_FILE})") from None
        except json.JSONDecodeError as exc:
            raise LabError(f"{path} is not valid JSON: {exc}") from None
        return cls(root, state)

    def _save(self) -> None:
        path = self.directory / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.touch(mode=0o600)
        tmp.write_text(json.dumps(self.state, indent=2))
        tmp.replace(path)

    def _start(self) -> None:
        zk_dir, s3_dir = self.directory / "zookeeper", self.directory / "s3"
        # Start the slow services first and let them boot while initdb runs.
        if self.zookeeper_nodes:
            zookeeper.start(zk_dir, self.registry, self.zookeeper_nodes)
        if self.s3 is not None:
            s3.start(s3_dir, self.registry, self.s3)
        if self.state["postgres"] and not self.state.get("agents"):
            self._start_postgres()
        if self.zookeeper_nodes:
            zookeeper.wait_ready(self.registry, self.zookeeper_nodes)
        if self.s3 is not None and self.state.get("agent_storage") == "s3":
            s3.wait_ready(self.registry, self.s3)  # the bucket exists before agents archive
        if self.state.get("agents"):
            self._start_agents()
        if self.s3 is not None and self.state.get("agent_storage") != "s3":
            s3.wait_ready(self.registry, self.s3)

    def _start_postgres(self) -> None:
        user, bin_dir, creds = self.os_user, self.bin_dir, self.credentials
        members = self.members
        primary, replicas = members[0], members[1:]
        pg_dir = self.directory / "pg"
        pg_dir.mkdir(mode=0o755, exist_ok=True)
        archive = self.archive_dir
        archive.mkdir(mode=0o700, exist_ok=True)
        pg.chown_to(archive, user)
        pgpass = pg.write_pgpass(pg_dir, members, creds, user)
        pg.initdb(bin_dir, self.registry, primary, creds, user)
        extra = self.state["postgres"].get("settings", {})
        pg.write_config(primary, archive, user, extra)
        pg.start(bin_dir, self.registry, primary, user)
        pg.wait_ready(self.registry, primary, creds)
        pg.create_replication_role(primary, creds)
        errors: list[BaseException] = []

        def make_replica(member: pg.PgMember) -> None:
            try:
                pg.clone(
                    bin_dir,
                    self.registry,
                    primary,
                    member,
                    pgpass=pgpass,
                    archive_dir=archive,
                    user=user,
                    extra=extra,
                )
                pg.start(bin_dir, self.registry, member, user)
                pg.wait_ready(self.registry, member, creds)
            except BaseException as exc:  # noqa: BLE001 - re-raised below in the caller
                errors.append(exc)

        threads = [threading.Thread(target=make_replica, args=(m,)) for m in replicas]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        if replicas:
            pg.wait_streaming(primary, [m.name for m in replicas], creds)

    def _start_agents(self) -> None:
        pg_state = self.state["postgres"]
        pg_dir = self.directory / "pg"
        pg_dir.mkdir(mode=0o755, exist_ok=True)
        storage = self.directory / "storage"
        storage.mkdir(mode=0o700, exist_ok=True)
        # PostgreSQL's archive_command (pgwarden wal-push) writes here as the OS user.
        pg.chown_to(storage, self.os_user)
        token = self.api_token_file
        token.parent.mkdir(mode=0o700, exist_ok=True)
        token.touch(mode=0o600)
        token.write_text(secrets.token_urlsafe(24) + "\n")
        configs = {
            m["name"]: agents.agent_config(
                cluster="lab",
                member=m,
                zookeeper_hosts=[n.address for n in self.zookeeper_nodes],
                bin_dir=pg_state["bin_dir"],
                os_user=self.os_user,
                superuser_password=pg_state["superuser_password"],
                replication_password=pg_state["replication_password"],
                storage_dir=storage,
                synchronous_mode=str(self.state.get("synchronous_mode", "off")),
                settings=pg_state.get("settings", {}),
                token_file=token,
            )
            for m in pg_state["members"]
        }
        if self.state.get("agent_storage") == "s3" and self.s3 is not None:
            owner = self.state.get("agents_user") or self.os_user
            credentials = token.parent / "s3.credentials"
            section = archiving.s3_storage(self.s3, "lab", credentials, owner)
            for config in configs.values():
                config["storage"] = section
        for config in configs.values():
            agents.merge(config, self.state.get("agent_overrides") or {})
        paths = agents.write_configs(self.directory, configs)
        runner = self.state.get("agents_user")
        if runner:
            for path in (pg_dir, storage, token.parent, token, *paths.values()):
                pg.chown_to(path, runner)
        else:
            # archive_command runs `pgwarden wal-push -c <config>` as the PostgreSQL user.
            for path in (token.parent, *paths.values()):
                pg.chown_to(path, self.os_user)
        for name in configs:
            agents.start_agent(self.directory, self.registry, self.lab_id, name, user=runner)
        agents.wait_formed(self.registry, pg_state["members"])

    def agent_url(self, name: str) -> str:
        """Base URL of member `name`'s agent API."""
        for m in self.state["postgres"]["members"]:
            if m["name"] == name:
                return f"http://{m['host']}:{m['api_port']}"
        raise LabError(f"no member named {name!r} in this lab")

    @property
    def api_token_file(self) -> Path:
        """The bearer token of the agents' control endpoints."""
        return self.directory / "agents" / "api.token"

    def agent_config_path(self, name: str) -> Path:
        return self.directory / "agents" / f"{name}.yml"

    def primary(self) -> str | None:
        """The member whose agent answers 200 on /primary now, if exactly one does."""
        found = [
            m.name
            for m in self.members
            if agents.api_get(f"{self.agent_url(m.name)}/primary")[0] == 200
        ]
        return found[0] if len(found) == 1 else None

    def postmaster_pid(self, name: str) -> int | None:
        """The PID in member `name`'s postmaster.pid, if that process runs."""
        pidfile = self.member(name).data_dir / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        return pid if start_ticks(pid) is not None else None

    def down(self, *, remove_files: bool = True) -> None:
        """Stop every process and remove every network cut; then delete the directory."""
        problems = []
        try:
            removed = faults.remove_all_cuts(self.lab_id)
            if removed:
                log.info("lab.cuts_removed", count=removed)
        except LabError as exc:
            problems.append(str(exc))
        # Replicas before the primary, PostgreSQL before the services it may use.
        records = sorted(self.registry.all(), key=lambda r: _stop_order(r.name))
        for record in records:
            try:
                stop(record, timeout=30.0)
                self.registry.remove(record.name)
            except LabError as exc:
                problems.append(str(exc))
        if self.state.get("postgres"):
            # Also for labs without agents: a creator killed between starting a postmaster
            # and recording it leaves one that only its postmaster.pid names.
            problems += agents.sweep(self.lab_id, self.members, self.postmaster_pid)
        if problems:
            raise LabError("lab down left something behind: " + "; ".join(problems))
        if remove_files:
            shutil.rmtree(self.directory, ignore_errors=False)
        log.info("lab.down", directory=str(self.directory))

    # ----------------------------------------------------------------- plan values
    @property
    def lab_id(self) -> str:
        return str(self.state["lab_id"])

    @property
    def os_user(self) -> str | None:
        user = self.state.get("os_user")
        return str(user) if user else None

    @property
    def zookeeper_nodes(self) -> list[zookeeper.ZooKeeperNode]:
        return [zookeeper.ZooKeeperNode(**n) for n in self.state["zookeeper"]]

    @property
    def zookeeper_hosts(self) -> str:
        """A kazoo/ZooKeeper connection string: `host:port,host:port`."""
        return ",".join(n.address for n in self.zookeeper_nodes)

    @property
    def s3(self) -> s3.S3Endpoint | None:
        data = self.state.get("s3")
        return s3.S3Endpoint(**data) if data else None

    @property
    def bin_dir(self) -> Path:
        return Path(self.state["postgres"]["bin_dir"])

    @property
    def credentials(self) -> pg.Credentials:
        p = self.state["postgres"]
        return pg.Credentials(p["superuser_password"], p["replication_password"])

    @property
    def members(self) -> list[pg.PgMember]:
        if not self.state.get("postgres"):
            return []
        return [
            pg.PgMember(m["name"], m["host"], m["port"], Path(m["data_dir"]))
            for m in self.state["postgres"]["members"]
        ]

    @property
    def archive_dir(self) -> Path:
        return self.directory / "pg" / "archive"

    def member(self, name: str) -> pg.PgMember:
        for m in self.members:
            if m.name == name:
                return m
        raise LabError(f"no member named {name!r} in this lab")

    def connect(self, name: str, **kwargs: Any) -> psycopg.Connection[Any]:
        """A psycopg connection to member `name` as the superuser."""
        return psycopg.connect(self.member(name).conninfo(self.credentials), **kwargs)

    # ----------------------------------------------------------------- faults
    def process(self, name: str) -> ProcessRecord:
        """The record of a lab process: `postgres-node1`, `zookeeper2`, `s3`."""
        record = self.registry.get(name)
        if record is None:
            raise LabError(f"no process named {name!r} in this lab")
        return record

    def cut(self, a: str, b: str, *, refuse: bool = False) -> faults.Cut:
        """Drop packets between loopback addresses `a` and `b` until `heal` or `down`;
        with `refuse`, reset TCP connections instead."""
        return faults.cut(self.lab_id, a, b, refuse=refuse)

    def heal(self, handle: faults.Cut) -> None:
        faults.heal(handle)

    def stop_zookeeper_node(self, myid: int) -> None:
        node = next(n for n in self.zookeeper_nodes if n.myid == myid)
        zookeeper.stop_node(self.registry, node)

    def start_zookeeper_node(self, myid: int) -> None:
        zookeeper.start_node(
            self.directory / "zookeeper", self.registry, self.zookeeper_nodes, myid
        )

    # ----------------------------------------------------------------- status
    def status(self) -> dict[str, Any]:
        """Every service: what it is, where it listens, whether it runs, and its role."""
        return lab_status(self)


def scratch_directory(tag: str) -> Path:
    """A new path under the temp directory for a lab (created by `Lab.create`)."""
    path = Path(tempfile.mkdtemp(prefix=f"pgwarden-{tag}-"))
    # Reserved by name only: Lab.create makes it with the modes PostgreSQL needs.
    path.rmdir()
    return path


def _stop_order(name: str) -> tuple[int, str]:
    if name.startswith("agent-"):
        return (-1, name)
    if name.startswith("postgres-"):
        return (0, name)
    if name == s3.PROCESS_NAME:
        return (1, name)
    return (2, name)


def _prepare_directory(root: Path) -> None:
    if (root / STATE_FILE).exists():
        raise LabError(f"{root} already holds a lab; run `pgwarden lab down --dir {root}` first")
    if root.exists() and any(root.iterdir()):
        raise LabError(f"{root} is not empty; give a new or empty directory for the lab")
    root.mkdir(mode=0o755, parents=True, exist_ok=True)
    root.chmod(0o755)


def _check_traversable(root: Path, user: str | None) -> None:
    """PostgreSQL runs as `user`; it must be able to reach the lab directory."""
    ids = os_user_ids(user)
    if ids is None:
        return
    uid, gid = ids
    for path in (root, *root.parents):
        st = path.stat()
        if st.st_uid == uid:
            ok = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid == gid or gid in os.getgrouplist(str(user), gid):
            ok = bool(st.st_mode & stat.S_IXGRP)
        else:
            ok = bool(st.st_mode & stat.S_IXOTH)
        if not ok:
            raise LabError(
                f"the {user} OS user cannot enter {path}; put the lab in a directory it can "
                "reach (for example under /tmp)"
            )
