"""The files pgwarden manages for the local instance, rendered as text (no I/O here).

Where things live (all rewritten by `Instance.configure`, so a copy that pg_rewind or
pg_basebackup brought over from another member never survives a reconfiguration):

- `postgresql.conf`: the user's parameters, then the settings pgwarden owns, then on a
  standby the standby settings (`primary_conninfo`, `primary_slot_name`). One file,
  fully rewritten each time, so no stale include can point a member at an old leader.
- `pg_hba.conf`: loopback only (see `render_hba`).
- `postgresql.auto.conf`: stripped of every key pgwarden writes, because ALTER SYSTEM
  values would otherwise override postgresql.conf.
- The libpq password file is NOT in the data directory (base backups and pg_rewind copy
  every file there, and backups must not carry passwords): it is `<data_dir>.pgpass`
  next to the data directory (`passfile_path`), so the data directory's parent must be
  writable by the agent's user, as it is for creating the data directory.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pgwarden.config import replication_slot_name

# At least this many WAL senders and slots: one per member plus backups and clones.
MIN_WAL_SENDERS = 10
MIN_REPLICATION_SLOTS = 10
STANDBY_KEYS = ("primary_conninfo", "primary_slot_name")

# Settings a user may override in `parameters`; pgwarden's defaults otherwise.
_DEFAULTS: Mapping[str, str | bool] = {
    # Slots retain what streaming replicas need; this covers a replica cloned just before
    # its slot was created and a rewind that needs WAL from before the divergence.
    "wal_keep_size": "512MB",
    "hot_standby_feedback": True,
    # Replicas report their positions every second: fresh lag figures for failover.
    "wal_receiver_status_interval": "1s",
    # Reconnect fast to a new leader after a failover (PostgreSQL's default is 5 s).
    "wal_retrieve_retry_interval": "500ms",
}


@dataclass(frozen=True)
class Endpoint:
    """A member to connect to; `name` is the member name."""

    name: str
    host: str
    port: int


@dataclass(frozen=True)
class InstanceSpec:
    """Everything needed to run and reach the local instance; parameters are validated text."""

    name: str
    bin_dir: Path
    data_dir: Path
    host: str
    port: int
    os_user: str | None
    superuser: str
    # repr=False keeps passwords out of tracebacks and log lines that print the spec.
    superuser_password: str = field(repr=False)
    replication_user: str
    replication_password: str = field(repr=False)
    parameters: Mapping[str, str]
    archive_command: str | None = None
    archive_mode: str = "on"  # with an archive_command: "on" or "always"
    restore_command: str | None = None
    # Networks besides loopback allowed to log in (postgres.allowed_networks).
    allowed_networks: tuple[str, ...] = ()

    @property
    def endpoint(self) -> Endpoint:
        """How other members reach this one."""
        return Endpoint(self.name, self.host, self.port)


def slot_name(member: str) -> str:
    """The physical replication slot `member` streams through (`Db-1.east` -> `db_1_east`)."""
    return replication_slot_name(member)


def passfile_path(spec: InstanceSpec) -> Path:
    """The libpq password file for this instance: beside the data directory, not in it."""
    return spec.data_dir.with_name(spec.data_dir.name + ".pgpass")


def parameter_text(value: str | int | float | bool) -> str:
    """A configuration value as the text `InstanceSpec.parameters` holds (booleans on/off)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def quote_value(text: str) -> str:
    """A postgresql.conf string literal: quotes doubled, backslashes and newlines escaped."""
    escaped = text.replace("\\", "\\\\").replace("'", "''").replace("\n", "\\n")
    return f"'{escaped}'"


def quote_ident(name: str) -> str:
    """An SQL identifier in double quotes."""
    return '"' + name.replace('"', '""') + '"'


def conninfo(**params: str | int) -> str:
    """A libpq key=value connection string, each value quoted when it needs to be."""
    parts = []
    for key, raw in params.items():
        value = str(raw)
        if value == "" or any(c in value for c in " '\\\t"):
            value = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
        parts.append(f"{key}={value}")
    return " ".join(parts)


def _format(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int):
        return str(value)
    return quote_value(value)


def _at_least(user: str | None, minimum: int) -> int:
    try:
        return max(minimum, int(user)) if user is not None else minimum
    except ValueError:
        return minimum


def managed_settings(
    spec: InstanceSpec, *, synchronous_standby_names: str = ""
) -> dict[str, str | int | bool]:
    """The settings pgwarden owns for this member; they win over the user's parameters."""
    user = {k.lower(): v for k, v in spec.parameters.items()}
    wal_level = "logical" if user.get("wal_level", "").lower() == "logical" else "replica"
    settings: dict[str, str | int | bool] = {
        "listen_addresses": spec.host,
        "port": spec.port,
        # TCP only: a socket path under a deep directory can exceed the 107-byte limit,
        # and the agent and its peers connect over TCP anyway.
        "unix_socket_directories": "",
        "wal_level": wal_level,
        "hot_standby": True,
        # pg_rewind needs hint-bit changes WAL-logged (or data checksums; initdb sets both).
        "wal_log_hints": True,
        "max_wal_senders": _at_least(user.get("max_wal_senders"), MIN_WAL_SENDERS),
        "max_replication_slots": _at_least(
            user.get("max_replication_slots"), MIN_REPLICATION_SLOTS
        ),
        "password_encryption": "scram-sha-256",
        "cluster_name": spec.name,
        "archive_mode": _archive_mode(spec),
    }
    if spec.archive_command is not None:
        settings["archive_command"] = spec.archive_command
    if spec.restore_command is not None:
        settings["restore_command"] = spec.restore_command
    settings["synchronous_standby_names"] = synchronous_standby_names
    settings["recovery_target_timeline"] = "latest"
    return settings


def _archive_mode(spec: InstanceSpec) -> str | bool:
    if spec.archive_command is None:
        return False
    return True if spec.archive_mode == "on" else spec.archive_mode


def render_postgresql_conf(spec: InstanceSpec, *, synchronous_standby_names: str = "") -> str:
    """The full postgresql.conf: defaults, the user's parameters, then the managed settings.

    Each setting appears once; a managed setting replaces a user value of the same name.
    Standby settings are appended separately by `render_standby_settings`.
    """
    managed = managed_settings(spec, synchronous_standby_names=synchronous_standby_names)
    tunables: dict[str, str | int | bool] = dict(_DEFAULTS)
    tunables.update({k.lower(): v for k, v in spec.parameters.items()})
    lines = [
        f"# postgresql.conf for {spec.name}, written by pgwarden: edits are overwritten.",
        "# Set parameters in the pgwarden configuration (postgres.parameters) instead.",
        "",
        "# Parameters (pgwarden defaults and postgres.parameters)",
    ]
    lines += [f"{k} = {_format(v)}" for k, v in tunables.items() if k not in managed]
    lines += ["", "# Managed by pgwarden"]
    lines += [f"{k} = {_format(v)}" for k, v in managed.items()]
    return "\n".join(lines) + "\n"


def render_standby_settings(spec: InstanceSpec, leader: Endpoint) -> str:
    """The lines that make this member stream from `leader` through its own slot."""
    info = conninfo(
        host=leader.host,
        port=leader.port,
        user=spec.replication_user,
        passfile=str(passfile_path(spec)),
        application_name=spec.name,
        connect_timeout=2,
        # Notice a dead leader's connection in about 11 s even when no packet comes back.
        keepalives=1,
        keepalives_idle=5,
        keepalives_interval=2,
        keepalives_count=3,
    )
    return (
        f"\n# Standby of {leader.name}, managed by pgwarden\n"
        f"primary_conninfo = {quote_value(info)}\n"
        f"primary_slot_name = {quote_value(slot_name(spec.name))}\n"
    )


def source_conninfo(spec: InstanceSpec, source: Endpoint, *, user: str, purpose: str) -> str:
    """How pg_basebackup or pg_rewind (`purpose`) reach `source` as `user`, via the passfile."""
    return conninfo(
        host=source.host,
        port=source.port,
        user=user,
        dbname="postgres",
        passfile=str(passfile_path(spec)),
        connect_timeout=5,
        application_name=f"pgwarden-{purpose}-{spec.name}",
    )


def render_hba(spec: InstanceSpec) -> str:
    """pg_hba.conf: password (scram-sha-256) logins from loopback and the networks in
    `postgres.allowed_networks` (members on other hosts, clients), nothing else."""
    rows = [
        ("host", db, "all", net, "scram-sha-256")
        for db in ("all", "replication")
        for net in ("127.0.0.0/8", "::1/128", *spec.allowed_networks)
    ]
    lines = [
        f"# pg_hba.conf for {spec.name}, written by pgwarden: edits are overwritten.",
        "# TYPE  DATABASE     USER  ADDRESS       METHOD",
    ]
    lines += [f"{t:<7} {d:<12} {u:<5} {a:<13} {m}" for t, d, u, a, m in rows]
    return "\n".join(lines) + "\n"


def render_passfile(spec: InstanceSpec) -> str:
    """A libpq password file with the replication and superuser passwords for any member."""

    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace(":", "\\:")

    return "".join(
        f"*:*:*:{escape(user)}:{escape(password)}\n"
        for user, password in (
            (spec.replication_user, spec.replication_password),
            (spec.superuser, spec.superuser_password),
        )
    )


def sync_standby_names(members: Sequence[str]) -> str:
    """synchronous_standby_names requiring every given member: `FIRST 2 ("a", "b")`."""
    if not members:
        return ""
    return f"FIRST {len(members)} ({', '.join(quote_ident(m) for m in members)})"


def render_files(
    spec: InstanceSpec,
    *,
    leader: Endpoint | None,
    synchronous_standby_names: str = "",
    auto_conf: str | None = None,
) -> dict[str, str | None]:
    """The data directory's managed files by name; None means the file must not exist.

    `auto_conf` is the current postgresql.auto.conf (None if absent); it is rewritten
    only when it holds keys pgwarden sets.
    """
    conf = render_postgresql_conf(spec, synchronous_standby_names=synchronous_standby_names)
    if leader is not None:
        conf += render_standby_settings(spec, leader)
    files: dict[str, str | None] = {"postgresql.conf": conf, "pg_hba.conf": render_hba(spec)}
    if auto_conf is not None:
        stripped = strip_keys(auto_conf, managed_keys(spec))
        if stripped != auto_conf:
            files["postgresql.auto.conf"] = stripped
    files["standby.signal"] = "" if leader is not None else None
    return files


def replication_role_sql(spec: InstanceSpec) -> str:
    """The statement creating the replication role (it holds the password: never log it)."""
    password = "'" + spec.replication_password.replace("'", "''") + "'"
    return (
        f"CREATE ROLE {quote_ident(spec.replication_user)} "
        f"WITH LOGIN REPLICATION PASSWORD {password};"
    )


def managed_keys(spec: InstanceSpec) -> frozenset[str]:
    """Keys pgwarden sets for this member (managed, standby and the user's parameters).

    pgwarden's own defaults are not among them: an ALTER SYSTEM value for one of those
    is the operator's choice and stays.
    """
    keys = set(managed_settings(spec)) | {k.lower() for k in spec.parameters}
    return frozenset(keys | set(STANDBY_KEYS) | {"archive_command", "restore_command"})


def strip_keys(auto_conf: str, keys: Iterable[str]) -> str:
    """postgresql.auto.conf without the settings named in `keys` (comments kept)."""
    drop = {k.lower() for k in keys}
    kept = []
    for line in auto_conf.splitlines():
        key = line.split("=", 1)[0].strip().lower()
        if line.lstrip().startswith("#") or "=" not in line or key not in drop:
            kept.append(line)
    return "\n".join(kept) + "\n" if kept else ""
