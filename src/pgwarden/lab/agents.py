"""Lab members run by pgwarden agents, which bootstrap and clone the cluster themselves.

Each agent gets a configuration file under `DIR/agents/`, listens for its API on its
member's address, binds its ZooKeeper connections to that address (so iptables can cut
it off by address), and runs its PostgreSQL as the postgres OS user when the lab runs
as root. Every process of the lab carries `LAB_PGWARDEN_ID` in its environment, so
`lab down` can find what agents started even after an agent was SIGKILLed.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from pgwarden.lab.net import free_port
from pgwarden.lab.postgres import PgMember
from pgwarden.lab.procs import (
    LabError,
    Registry,
    is_running,
    log_tail,
    spawn,
    start_ticks,
    tagged_processes,
)
from pgwarden.peers import request_json
from pgwarden.retry import DeadlineExceededError, poll_until

# Not PGWARDEN_*: the PostgreSQL launcher drops PG* variables from its environment.
LAB_ID_ENV = "LAB_PGWARDEN_ID"


def agent_config(
    *,
    cluster: str,
    member: dict[str, Any],
    zookeeper_hosts: list[str],
    bin_dir: str,
    os_user: str | None,
    superuser_password: str,
    replication_password: str,
    storage_dir: Path,
    synchronous_mode: str,
    settings: dict[str, str],
    token_file: Path | None = None,
) -> dict[str, Any]:
    """The YAML configuration of one lab agent, as a mapping."""
    postgres: dict[str, Any] = {
        "bin_dir": bin_dir,
        "data_dir": member["data_dir"],
        "listen_address": member["host"],
        "port": member["port"],
        "superuser": {"username": "postgres", "password": superuser_password},
        "replication": {"username": "replicator", "password": replication_password},
        "parameters": {"shared_buffers": "32MB", "max_connections": 50, **settings},
    }
    if os_user is not None:
        postgres["os_user"] = os_user
    return {
        "cluster": cluster,
        "member": member["name"],
        "postgres": postgres,
        "dcs": {"hosts": zookeeper_hosts},
        "ha": {"synchronous_mode": synchronous_mode},
        "api": {"listen": f"{member['host']}:{member['api_port']}"}
        | ({"token_file": str(token_file)} if token_file else {}),
        "storage": {"type": "fs", "directory": str(storage_dir)},
        # No scheduled backups unless a test asks (agent_overrides).
        "backup": {"schedule": None},
    }


def merge(config: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    """Merge `overrides` into `config` in place: mappings recursively, other values replace."""
    for key, value in overrides.items():
        current = config.get(key)
        if isinstance(current, dict) and isinstance(value, Mapping):
            merge(current, value)
        else:
            config[key] = value


def plan_api_ports(members: list[dict[str, Any]]) -> None:
    for member in members:
        member["api_port"] = free_port(member["host"], {member["port"]})


def write_configs(directory: Path, configs: dict[str, dict[str, Any]]) -> dict[str, Path]:
    agents_dir = directory / "agents"
    agents_dir.mkdir(mode=0o700, exist_ok=True)
    paths = {}
    for name, config in configs.items():
        path = agents_dir / f"{name}.yml"
        path.touch(mode=0o600)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        paths[name] = path
    return paths


def process_name(member: str) -> str:
    return f"agent-{member}"


def start_agent(
    directory: Path, registry: Registry, lab_id: str, name: str, user: str | None = None
) -> None:
    """Start member `name`'s agent (as `user` when given, as production does)."""
    config = directory / "agents" / f"{name}.yml"
    env = dict(os.environ) | {LAB_ID_ENV: lab_id}
    if user is not None:
        env |= {"HOME": pwd.getpwnam(user).pw_dir, "USER": user, "LOGNAME": user}
    spawn(
        registry,
        process_name(name),
        [sys.executable, "-m", "pgwarden", "--log-level", "info", "agent", "-c", str(config)],
        directory / "agents" / f"{name}.log",
        env=env,
        user=user,
    )


def api_get(url: str, timeout: float = 1.0) -> tuple[int, Any]:
    """(status, JSON body) of an agent API endpoint; (0, {}) when it does not answer."""
    return request_json(url, timeout=timeout)


def wait_formed(registry: Registry, members: list[dict[str, Any]], timeout: float = 90.0) -> str:
    """Wait until one agent serves /primary and every other /replica; return the primary."""

    def formed() -> str | None:
        primaries, replicas = [], []
        for member in members:
            record = registry.get(process_name(member["name"]))
            if record is None or not is_running(record):
                raise LabError(
                    f"the agent of {member['name']} exited during start; its log ends with:\n"
                    + log_tail(record.log if record else "")
                )
            base = f"http://{member['host']}:{member['api_port']}"
            if api_get(f"{base}/primary")[0] == 200:
                primaries.append(member["name"])
            elif api_get(f"{base}/replica")[0] == 200:
                replicas.append(member["name"])
        if len(primaries) == 1 and len(replicas) == len(members) - 1:
            return str(primaries[0])
        return None

    try:
        return poll_until(formed, timeout, interval=0.1)
    except DeadlineExceededError:
        tails = "\n".join(
            f"--- {m['name']}:\n"
            + log_tail(Path(str(registry.get(process_name(m["name"])).log)), 8)  # type: ignore[union-attr]
            for m in members
            if registry.get(process_name(m["name"])) is not None
        )
        raise LabError(f"the agents did not form a cluster within {timeout:g} s\n{tails}") from None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def sweep(
    lab_id: str, members: list[PgMember], postmaster_pid: Callable[[str], int | None]
) -> list[str]:
    """Kill what agents started that outlived them (tagged environment, postmaster.pid)."""
    leftovers = set(tagged_processes(LAB_ID_ENV, lab_id))
    for m in members:
        pid = postmaster_pid(m.name)
        if pid is not None and str(m.data_dir) in _cmdline(pid):
            leftovers.add(pid)
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL) if os.getpgid(pid) == pid else os.kill(
                pid, signal.SIGKILL
            )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        alive = [p for p in leftovers if start_ticks(p) is not None]
        if not alive:
            return []
        time.sleep(0.02)
    return [f"processes {alive} survived SIGKILL"]
