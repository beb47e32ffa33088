"""The configuration file: YAML -> validated, frozen settings; every error names its field.

`load_config(path)` reads and validates a file, `parse_config(data)` validates an already
parsed mapping, and `effective_config(settings)` gives back the whole configuration with
defaults filled in and secrets masked. Invalid input raises `ConfigError` listing every
problem at once, one `(field.path, sentence)` each.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pgwarden.config_errors import translate
from pgwarden.config_parameters import Parameters, is_secret_parameter
from pgwarden.config_recovery import (
    BackupSettings,
    Compression,
    DrillCheck,
    DrillSettings,
    EventSettings,
    Retention,
    WalSettings,
)
from pgwarden.config_section import Section
from pgwarden.config_types import (
    MASK,
    SECONDS_UNIT,
    AbsolutePath,
    BucketName,
    ConnectAddress,
    Count,
    EndpointUrl,
    Flag,
    HostList,
    HostPort,
    Loc,
    Name,
    ObjectPrefix,
    OsUser,
    RoleName,
    Seconds,
    Secret,
    Text,
    ZnodePath,
    problems,
    replication_slot_name,
    split_host_port,
)
from pgwarden.errors import ConfigError, PgwardenError

__all__ = [
    "MASK",
    "ApiSettings",
    "BackupSettings",
    "Compression",
    "Credentials",
    "DcsSettings",
    "DrillCheck",
    "DrillSettings",
    "EventSettings",
    "FsStorage",
    "HaSettings",
    "PostgresSettings",
    "ReplicationCredentials",
    "Retention",
    "S3Storage",
    "Settings",
    "Storage",
    "SuperuserCredentials",
    "TagSettings",
    "effective_config",
    "load_config",
    "parse_config",
    "read_password",
    "replication_slot_name",
]


_Section = Section  # the sections below, and config_recovery.py


# --- postgres --------------------------------------------------------------------------


class Credentials(_Section):
    """A PostgreSQL role; its password inline or in a file (neither: peer, cert or .pgpass)."""

    # The role's name; the agent creates the role when it bootstraps the cluster.
    username: RoleName
    # The password inline (masked wherever settings are shown).
    password: Secret | None = None
    # A file holding the password (without its final newline), instead of `password`.
    password_file: AbsolutePath | None = None

    @model_validator(mode="after")
    def _one_password_source(self) -> Self:
        if self.password is not None and self.password_file is not None:
            raise problems(
                [(("password_file",), "give either password or password_file, not both")]
            )
        return self


class SuperuserCredentials(Credentials):
    """The superuser the agent connects as (checks, promote, rewind)."""

    username: RoleName = "postgres"


class ReplicationCredentials(Credentials):
    """The role replicas stream and clone with."""

    username: RoleName = "replicator"


class PostgresSettings(_Section):
    """The local PostgreSQL instance the agent runs."""

    # None: PostgreSQL programs (initdb, pg_ctl, pg_rewind, ...) are found on PATH.
    bin_dir: AbsolutePath | None = None
    # The instance's data directory (PGDATA), created by the agent at bootstrap or clone.
    data_dir: AbsolutePath = Path("/var/lib/postgresql/data")
    # Where PostgreSQL listens and where the other members connect to it.
    listen_address: ConnectAddress = "127.0.0.1"
    # The port PostgreSQL listens on.
    port: Count = Field(default=5432, ge=1, le=65535)
    # Networks (CIDR) allowed to log in with a password (scram-sha-256) besides loopback:
    # the other members' addresses (replication, clone, rewind) and the clients'.
    allowed_networks: tuple[str, ...] = ()
    superuser: SuperuserCredentials = Field(default_factory=SuperuserCredentials)
    replication: ReplicationCredentials = Field(default_factory=ReplicationCredentials)
    # PostgreSQL settings of this host (they win over the cluster-wide ones in the store);
    # the settings pgwarden manages itself are refused, naming the field to use instead.
    parameters: Parameters = Field(default_factory=dict)
    # The OS user that owns the data directory and runs PostgreSQL's programs.
    os_user: OsUser = "postgres"
    # How a new replica gets its data, tried in order: `backup` restores the latest base
    # backup and replays archived WAL (sparing the primary), `basebackup` copies the
    # leader with pg_basebackup.
    create_replica_methods: tuple[Literal["backup", "basebackup"], ...] = ("basebackup",)

    @field_validator("allowed_networks")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        networks = []
        for text in value:
            try:
                networks.append(str(ipaddress.ip_network(text, strict=False)))
            except ValueError:
                raise ValueError(
                    f"must be networks in CIDR notation such as 10.0.1.0/24, got {text!r}"
                ) from None
        return tuple(networks)

    @field_validator("create_replica_methods")
    @classmethod
    def _methods(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("must name at least one method")
        if len(set(value)) != len(value):
            raise ValueError("must not name a method twice")
        return value


# --- dcs and api -----------------------------------------------------------------------


class DcsSettings(_Section):
    """ZooKeeper, and the timing of the leader lease."""

    # The ZooKeeper ensemble's client addresses.
    hosts: HostList
    # The ZooKeeper path under which each cluster keeps its keys (`<root>/<cluster>/`).
    root: ZnodePath = "/pgwarden"
    # The leader lease: a primary unconfirmed for this long loses the leader key. Short
    # enough that a lost host fails over in about 5 s; ZooKeeper's default tickTime of
    # 2 s allows sessions of 4 s and more.
    ttl: Seconds = Field(default=4, ge=2)
    # The pause between two HA loop iterations when nothing wakes the loop earlier.
    loop_wait: Seconds = Field(default=1, gt=0)
    # How long one consensus store operation is retried before the loop gives up on it.
    retry_timeout: Seconds = Field(default=2, gt=0)
    # The primary demotes (and is fenced) this long before its lease could pass on.
    safety_margin: Seconds = Field(default=1, gt=0)

    @model_validator(mode="after")
    def _shorter_than_ttl(self) -> Self:
        found: list[tuple[Loc, str]] = []
        ttl = f"dcs.ttl ({SECONDS_UNIT.of(self.ttl)})"
        for name in ("loop_wait", "retry_timeout", "safety_margin"):
            value = getattr(self, name)
            if value >= self.ttl:
                found.append(((name,), f"must be less than {ttl}, got {SECONDS_UNIT.of(value)}"))
        if found:
            raise problems(found)
        return self


class HaSettings(_Section):
    """Cluster-wide HA settings, written to the store's `config` key at bootstrap; the
    store's values win afterwards (`pgwarden config set` changes them there)."""

    # on: commits wait for a synchronous standby, and only such a standby is promoted;
    # strict: also when none is available (writes block rather than degrade).
    synchronous_mode: Literal["off", "on", "strict"] = "off"
    # How many standbys are synchronous in synchronous mode.
    synchronous_node_count: Count = Field(default=1, ge=1)
    # Bytes of WAL a replica may lag the last known leader position and still be promoted.
    maximum_lag_on_failover: Count = Field(default=1024 * 1024, ge=0)


class TagSettings(_Section):
    """Per-member tags: `nofailover` never promotes; `nosync` is never synchronous;
    a higher `failover_priority` wins between equally advanced candidates."""

    # Never promote this member.
    nofailover: Flag = False
    # Never make this member a synchronous standby.
    nosync: Flag = False
    # Between equally advanced candidates the higher priority is promoted.
    failover_priority: Count = Field(default=1, ge=0)


class ApiSettings(_Section):
    """The agent's HTTP API: health endpoints, /status, /metrics and control endpoints."""

    # Address and port the API listens on; also the URL other members and the CLI use.
    listen: HostPort = "127.0.0.1:8008"
    # None: only the read-only health and metrics endpoints are served.
    token_file: AbsolutePath | None = None
    # HTTPS for the API: a PEM certificate chain and its key (both or neither).
    tls_cert_file: AbsolutePath | None = None
    # The private key of `tls_cert_file` (PEM).
    tls_key_file: AbsolutePath | None = None
    # The CA that signed the agents' certificates, for agents and the CLI calling them;
    # None: the system's trusted CAs.
    tls_ca_file: AbsolutePath | None = None

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> Self:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            missing = "tls_key_file" if self.tls_key_file is None else "tls_cert_file"
            raise problems([((missing,), "must be set together with the other TLS file")])
        return self


# --- storage ---------------------------------------------------------------------------


class S3Storage(_Section):
    """An S3-compatible bucket. Credentials come from the environment or a named profile."""

    # Selects this kind of storage.
    type: Literal["s3"]
    # The bucket, which must exist.
    bucket: BucketName
    # Objects are stored under `<prefix>/<cluster>/`.
    prefix: ObjectPrefix = "pgwarden"
    # An S3-compatible endpoint (MinIO, Ceph, ...); null: AWS.
    endpoint_url: EndpointUrl | None = None
    # The bucket's region; null: from the environment or profile.
    region: Text | None = None
    # A named profile of the AWS configuration and credentials files.
    profile: Text | None = None
    # An AWS shared credentials file (`[default]` or `[<profile>]` with aws_access_key_id
    # and aws_secret_access_key), for hosts where the environment cannot carry them:
    # archive_command and restore_command run with PostgreSQL's environment.
    credentials_file: AbsolutePath | None = None
    # Path-style addressing (`endpoint/bucket/key`), for endpoints without virtual hosts.
    force_path_style: Flag = False
    # Server-side encryption asked of S3 for every object.
    sse: Literal["none", "AES256", "aws:kms"] = "none"
    # The KMS key for `sse: aws:kms`; null: the AWS-managed key for S3.
    kms_key_id: Text | None = None

    @model_validator(mode="after")
    def _kms_key_needs_kms(self) -> Self:
        if self.kms_key_id is not None and self.sse != "aws:kms":
            raise problems(
                [(("kms_key_id",), f"is only used with sse 'aws:kms', not {self.sse!r}")]
            )
        return self


class FsStorage(_Section):
    """A local or mounted directory."""

    # Selects this kind of storage.
    type: Literal["fs"]
    # Objects are files under `<directory>/<cluster>/`; not inside postgres.data_dir.
    directory: AbsolutePath


Storage = Annotated[S3Storage | FsStorage, Field(discriminator="type")]

# --- the whole file --------------------------------------------------------------------


class Settings(_Section):
    """Everything one agent needs; built by `load_config` or `parse_config`."""

    # The cluster's name, the same on every member: its ZooKeeper path and storage prefix.
    cluster: Name
    # This member's name, unique in the cluster; also its replication slot's name.
    member: Name
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    dcs: DcsSettings
    ha: HaSettings = Field(default_factory=HaSettings)
    tags: TagSettings = Field(default_factory=TagSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    # Where backups, WAL and drill reports are stored: `type: s3` or `type: fs`.
    storage: Storage
    backup: BackupSettings = Field(default_factory=BackupSettings)
    wal: WalSettings = Field(default_factory=WalSettings)
    drill: DrillSettings = Field(default_factory=DrillSettings)
    events: EventSettings = Field(default_factory=EventSettings)

    @property
    def slot_name(self) -> str:
        """The replication slot other members keep for this one."""
        return replication_slot_name(self.member)

    @model_validator(mode="after")
    def _sections_agree(self) -> Self:
        found: list[tuple[Loc, str]] = []
        api = split_host_port(self.api.listen)
        if api is not None and api[1] == self.postgres.port:
            found.append((("api", "listen"), f"port {api[1]} is already postgres.port"))
        if isinstance(self.storage, FsStorage) and self.storage.directory.is_relative_to(
            self.postgres.data_dir
        ):
            # A base backup would copy its own storage, and a restore would wipe it.
            found.append((("storage", "directory"), "must not be inside postgres.data_dir"))
        if found:
            raise problems(found)
        return self


# --- loading ---------------------------------------------------------------------------


def load_config(path: str | Path) -> Settings:
    """Read and validate a YAML configuration file; raise ConfigError naming every problem."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _file_error(f"configuration file {source} does not exist") from None
    except IsADirectoryError:
        raise _file_error(f"configuration file {source} is a directory") from None
    except PermissionError:
        raise _file_error(f"cannot read configuration file {source}: permission denied") from None
    except UnicodeDecodeError:
        raise _file_error(f"configuration file {source} is not UTF-8 text") from None
    except OSError as exc:
        raise _file_error(f"cannot read configuration file {source}: {exc.strerror}") from None
    data = _parse_yaml(text, source)
    if data is None:
        raise _file_error(f"configuration file {source} is empty")
    if not isinstance(data, Mapping):
        kind = "a list" if isinstance(data, list) else "a single value"
        raise _file_error(
            f"configuration file {source} must be a mapping of settings at the top level, "
            f"got {kind}"
        )
    return parse_config(data)


def parse_config(data: Mapping[str, Any]) -> Settings:
    """Validate an already parsed configuration; raise ConfigError naming every problem."""
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(translate(exc, Settings)) from None


def effective_config(settings: Settings) -> dict[str, Any]:
    """The whole configuration as plain data: defaults filled in, every secret masked."""
    data: dict[str, Any] = settings.model_dump(mode="json")
    parameters: dict[str, Any] = data["postgres"]["parameters"]
    for name in parameters:
        if is_secret_parameter(name):
            parameters[name] = MASK
    return data


def read_password(credentials: Credentials) -> str | None:
    """The role's password, from the settings or from its password_file (one line)."""
    if credentials.password is not None:
        return credentials.password.get_secret_value()
    if credentials.password_file is None:
        return None
    try:
        text = credentials.password_file.read_text(encoding="utf-8")
    except OSError as exc:
        raise PgwardenError(
            f"cannot read password_file {credentials.password_file}: {exc.strerror}"
        ) from None
    return text.rstrip("\r\n")


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a key given twice is an error rather than silently replaced."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults`: keys given next to it may override merged ones
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(text: str, source: Path) -> Any:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506  # a SafeLoader
    except yaml.MarkedYAMLError as exc:
        # The problem and its position only: the offending line itself may hold a password.
        mark = exc.problem_mark or exc.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise _file_error(f"configuration file {source}{where}: invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise _file_error(f"configuration file {source}: invalid YAML: {exc}") from None


def _file_error(message: str) -> ConfigError:
    return ConfigError([("", message)])
