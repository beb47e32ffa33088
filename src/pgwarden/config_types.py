"""Field types for the configuration: names, addresses, paths, schedules and units.

Every check raises `invalid(message)` (or `problems(...)` for several at once) with the
sentence the user reads after `<field.path>: `. `config_errors` turns these, and pydantic's
own errors, into those lines.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from croniter import CroniterBadDateError, croniter
from pydantic import AfterValidator, Field, PlainSerializer, PlainValidator, SecretStr
from pydantic_core import PydanticCustomError

MASK = "********"

# Error types understood by config_errors: one message, or several (relative path, message).
INVALID = "pgwarden"
PROBLEMS = "pgwarden_problems"

Loc = tuple[str | int, ...]


def invalid(message: str) -> PydanticCustomError:
    """A validation error whose message is shown as is after the field path."""
    return PydanticCustomError(INVALID, "{message}", {"message": message})


def problems(found: list[tuple[Loc, str]]) -> PydanticCustomError:
    """Several errors at once, each at a path relative to the value being validated."""
    summary = "; ".join(message for _loc, message in found)
    return PydanticCustomError(PROBLEMS, "{message}", {"message": summary, "problems": found})


@dataclass(frozen=True)
class Unit:
    """The unit of a numeric field, so messages read `at least 2 seconds`."""

    singular: str
    plural: str

    def of(self, amount: float) -> str:
        return f"{format_number(amount)} {self.singular if amount == 1 else self.plural}"


SECONDS_UNIT = Unit("second", "seconds")
DAYS_UNIT = Unit("day", "days")


def format_number(value: float) -> str:
    """`2.0` as `2`, other numbers as Python prints them."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _plain_number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def _mask(value: SecretStr) -> str:
    return MASK


# Durations accept whole or fractional seconds; YAML strings such as "10" are refused.
Seconds = Annotated[
    float,
    Field(strict=True, allow_inf_nan=False),
    SECONDS_UNIT,
    PlainSerializer(_plain_number, return_type=int | float),
]
Number = Annotated[
    float,
    Field(strict=True, allow_inf_nan=False),
    PlainSerializer(_plain_number, return_type=int | float),
]
Days = Annotated[int, Field(strict=True, ge=1), DAYS_UNIT]
Count = Annotated[int, Field(strict=True)]
Flag = Annotated[bool, Field(strict=True)]
# Masked whenever settings are dumped, so no dump of settings can leak it.
Secret = Annotated[SecretStr, PlainSerializer(_mask, return_type=str)]

# --- names ---------------------------------------------------------------------------

NAME_MAX = 63
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _check_name(value: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise invalid(
            "must start with a letter or digit and contain only letters, digits, "
            f"'_', '.' and '-', got {_quote(value)}"
        )
    if len(value) > NAME_MAX:
        raise invalid(
            f"must be at most {NAME_MAX} characters long, because it becomes a ZooKeeper node "
            f"name and a replication slot name; got {len(value)} characters"
        )
    return value


Name = Annotated[str, Field(strict=True), AfterValidator(_check_name)]


def replication_slot_name(member: str) -> str:
    """The physical replication slot a member streams from: `Db-1.east` -> `db_1_east`.

    PostgreSQL slot names allow only lower-case letters, digits and `_`, so the member name
    is lower-cased and `-` and `.` become `_`. Names that differ only in case or in those
    characters map to the same slot and cannot be members of the same cluster.
    """
    return member.lower().replace("-", "_").replace(".", "_")


_ROLE_MAX = 63


def _check_role(value: str) -> str:
    if not value.strip():
        raise invalid("must not be empty")
    if len(value.encode()) > _ROLE_MAX:
        raise invalid(f"must be at most {_ROLE_MAX} bytes long, as PostgreSQL role names are")
    if "\0" in value:
        raise invalid("must not contain a NUL character")
    return value


RoleName = Annotated[str, Field(strict=True), AfterValidator(_check_role)]

_OS_USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


def _check_os_user(value: str) -> str:
    if not _OS_USER_RE.fullmatch(value):
        raise invalid(
            f"must be an operating system user name such as 'postgres', got {_quote(value)}"
        )
    return value


OsUser = Annotated[str, Field(strict=True), AfterValidator(_check_os_user)]


def _check_text(value: str) -> str:
    if not value.strip():
        raise invalid("must not be empty")
    return value


Text = Annotated[str, Field(strict=True), AfterValidator(_check_text)]

# --- paths ---------------------------------------------------------------------------


def _check_absolute(value: Path) -> Path:
    if not value.is_absolute():
        raise invalid(f"must be an absolute path, got {_quote(str(value))}")
    return value


AbsolutePath = Annotated[Path, AfterValidator(_check_absolute)]


def _check_znode_path(value: str) -> str:
    hint = "such as '/pgwarden'"
    if not value.startswith("/"):
        raise invalid(f"must be an absolute ZooKeeper path {hint}, got {_quote(value)}")
    if value == "/":
        raise invalid(f"must name a node below '/', {hint}")
    parts = value[1:].split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise invalid(
            f"must not end with '/' or contain empty, '.' or '..' parts, got {_quote(value)}"
        )
    if parts[0] == "zookeeper":
        raise invalid("must not be under /zookeeper, which ZooKeeper reserves for itself")
    if any(ord(char) < 0x20 or char == "\x7f" for char in value):
        raise invalid("must not contain control characters")
    return value


ZnodePath = Annotated[str, Field(strict=True), AfterValidator(_check_znode_path)]

# --- addresses -----------------------------------------------------------------------

_HOSTNAME_RE = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)


def is_host(text: str) -> bool:
    """A DNS name or an IPv4 or IPv6 address (IPv6 without brackets)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return bool(_HOSTNAME_RE.fullmatch(text))
    return True


def split_host_port(text: str) -> tuple[str, int] | None:
    """`host:port` or `[v6]:port` -> (host, port); None when malformed or port not 1..65535."""
    if text.startswith("["):
        inside, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            return None
        host, port_text = inside, rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host or not is_host(host):
            return None
    if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        return None
    return host, int(port_text)


def _check_host_port(value: str) -> str:
    if split_host_port(value) is None:
        example = "'zk1.example.com:2181' or '[::1]:2181'"
        raise invalid(
            f"must be host:port with a port from 1 to 65535, such as {example}, got {_quote(value)}"
        )
    return value


HostPort = Annotated[str, Field(strict=True), AfterValidator(_check_host_port)]


def _check_hosts(value: tuple[str, ...]) -> tuple[str, ...]:
    # Checked here rather than with min_length, which would also complain after a bad entry.
    if not value:
        raise invalid("must list at least one ZooKeeper server as host:port")
    seen: set[str] = set()
    found: list[tuple[Loc, str]] = []
    for index, host in enumerate(value):
        if host.lower() in seen:
            found.append(((index,), f"{_quote(host)} is listed twice"))
        seen.add(host.lower())
    if found:
        raise problems(found)
    return value


HostList = Annotated[tuple[HostPort, ...], AfterValidator(_check_hosts)]

_WILDCARDS = frozenset({"*", "0.0.0.0", "::"})  # noqa: S104  # listed to be refused


def _check_connect_address(value: str) -> str:
    if value in _WILDCARDS:
        raise invalid(
            "must be a host name or IP address that the other members can connect to, "
            f"not a wildcard; got {_quote(value)}"
        )
    if not is_host(value):
        raise invalid(f"must be a single host name or IP address, got {_quote(value)}")
    return value


ConnectAddress = Annotated[str, Field(strict=True), AfterValidator(_check_connect_address)]

# --- object storage ------------------------------------------------------------------


def _checked(problem_of: Callable[[str], str | None]) -> AfterValidator:
    """A validator from a function returning the problem with a value, or None."""

    def check(value: str) -> str:
        problem = problem_of(value)
        if problem is not None:
            raise invalid(problem)
        return value

    return AfterValidator(check)


def _bucket_problem(bucket: str) -> str | None:
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789.-")
    if (
        not 3 <= len(bucket) <= 63
        or not set(bucket) <= allowed
        or not bucket[0].isalnum()
        or not bucket[-1].isalnum()
        or ".." in bucket
    ):
        return (
            "must be an S3 bucket name: 3 to 63 lower-case letters, digits, '.' and '-', "
            f"starting and ending with a letter or digit; got {bucket!r}"
        )
    return None


def _prefix_problem(prefix: str) -> str | None:
    if prefix.startswith("/") or prefix.endswith("/"):
        return f"must not start or end with '/', got {prefix!r}"
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        return f"must not contain empty, '.' or '..' parts, got {prefix!r}"
    return None


def _endpoint_problem(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"must be an http:// or https:// URL such as 'https://s3.example.com', got {url!r}"
    if parts.username or parts.password:
        # Never echo the URL here: it holds a credential.
        return "must not contain credentials; use the environment or storage.profile"
    return None


BucketName = Annotated[str, Field(strict=True), _checked(_bucket_problem)]
ObjectPrefix = Annotated[str, Field(strict=True), _checked(_prefix_problem)]
EndpointUrl = Annotated[str, Field(strict=True), _checked(_endpoint_problem)]


# --- schedules -----------------------------------------------------------------------

_CRON_MACROS = frozenset({"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@hourly"})
# Fixed so validation never reads the clock; any start finds the next match of a valid rule.
_CRON_PROBE_START = datetime(2024, 1, 1, tzinfo=UTC)


def _check_cron(value: str) -> str:
    expression = " ".join(value.split())
    shape = (
        "must be a cron expression of 5 fields (minute hour day-of-month month "
        "day-of-week) such as '0 1 * * *', or @daily, @weekly, @monthly, @hourly"
    )
    if expression in _CRON_MACROS:
        return expression
    if len(expression.split()) != 5 or not croniter.is_valid(expression):
        raise invalid(f"{shape}; got {_quote(value)}")
    try:
        croniter(expression, _CRON_PROBE_START).get_next(datetime)
    except CroniterBadDateError:
        raise invalid(f"never matches any date: {_quote(value)}") from None
    return expression


Cron = Annotated[str, Field(strict=True), AfterValidator(_check_cron)]

# --- scalar values -------------------------------------------------------------------

Scalar = str | int | float | bool


def describe(value: object, *, secret: bool = False) -> str:
    """How a rejected input is named in a message: `'abc'`, `5`, `a list`, `an empty value`.

    With `secret`, only the kind of value is named, never the value itself.
    """
    if value is None:
        return "an empty value"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, bool):
        shown, kind = str(value).lower(), "a true/false value"
    elif isinstance(value, int | float):
        shown, kind = format_number(value), "a number"
    elif isinstance(value, str):
        shown, kind = _quote(value), "a string"
    else:
        return f"a {type(value).__name__}"
    return kind if secret else shown


def _quote(text: str, limit: int = 60) -> str:
    shown = text if len(text) <= limit else text[: limit - 3] + "..."
    return repr(shown)


def _check_scalar(value: object) -> Scalar:
    if not isinstance(value, str | int | float | bool):
        raise invalid(f"must be a string, a number or true/false, got {describe(value)}")
    return value


ScalarValue = Annotated[Scalar, PlainValidator(_check_scalar)]


def plain_dict(value: Mapping[str, Scalar]) -> dict[str, Scalar]:
    return dict(value)
