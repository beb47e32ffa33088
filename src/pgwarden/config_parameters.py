"""PostgreSQL settings in `postgres.parameters`: names, values, and the ones pgwarden owns."""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated

from pydantic import PlainSerializer, PlainValidator

from pgwarden.config_types import Loc, Scalar, describe, invalid, plain_dict, problems

_MANAGED = "is managed by pgwarden"
_RESTORE = f"{_MANAGED}, which sets it during restores and promotion; it cannot be set here"
_WAL = f"{_MANAGED}, which ships WAL to the configured storage; configure storage instead"
_FILE = f"{_MANAGED}, which keeps this file in postgres.data_dir; it cannot be set here"
# Settings pgwarden writes itself, with the sentence telling the user what to do instead.
MANAGED_PARAMETERS: Mapping[str, str] = MappingProxyType(
    {
        "port": f"{_MANAGED}; use postgres.port instead",
        "listen_addresses": f"{_MANAGED}; use postgres.listen_address instead",
        "data_directory": f"{_MANAGED}; use postgres.data_dir instead",
        "config_file": _FILE,
        "hba_file": _FILE,
        "ident_file": _FILE,
        "primary_conninfo": (
            f"{_MANAGED}, which points standbys at the current leader with the "
            "postgres.replication credentials; it cannot be set here"
        ),
        "primary_slot_name": (
            f"{_MANAGED}, which derives each member's slot name from its member name; "
            "it cannot be set here"
        ),
        "synchronous_standby_names": (
            f"{_MANAGED}, which sets it from the cluster's synchronous mode; it cannot be set here"
        ),
        "archive_mode": _WAL,
        "archive_command": _WAL,
        "archive_library": _WAL,
        "restore_command": _WAL,
        "archive_cleanup_command": _RESTORE,
        "recovery_end_command": _RESTORE,
        "promote_trigger_file": _RESTORE,
        "recovery_target": _RESTORE,
        "recovery_target_action": _RESTORE,
        "recovery_target_inclusive": _RESTORE,
        "recovery_target_lsn": _RESTORE,
        "recovery_target_name": _RESTORE,
        "recovery_target_time": _RESTORE,
        "recovery_target_timeline": _RESTORE,
        "recovery_target_xid": _RESTORE,
    }
)
# Replication and archiving need at least this much WAL.
_WAL_LEVELS = ("replica", "logical")
# PostgreSQL setting names, including extension settings such as pg_stat_statements.max.
_PARAMETER_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)*")
_SECRET_PARAMETER_WORDS = ("password", "passphrase", "secret")


def is_secret_parameter(name: str) -> bool:
    """Parameters whose value may hold a secret are masked in the effective configuration."""
    return any(word in name.lower() for word in _SECRET_PARAMETER_WORDS)


def _parameter_problem(name: str, value: object) -> str | None:
    if not isinstance(value, str | int | float | bool):
        secret = is_secret_parameter(name)
        return f"must be a string, a number or true/false, got {describe(value, secret=secret)}"
    if isinstance(value, str) and ("\n" in value or "\r" in value or "\0" in value):
        return "must be a single line of text"
    if name == "wal_level" and str(value).lower() not in _WAL_LEVELS:
        return (
            "must be 'replica' or 'logical', because standbys and WAL archiving "
            f"need at least replica; got {describe(value)}"
        )
    return None


def _check_parameters(value: object) -> Mapping[str, Scalar]:
    if not isinstance(value, Mapping):
        raise invalid(
            f"must be a mapping of PostgreSQL setting names to values, got {describe(value)}"
        )
    found: list[tuple[Loc, str]] = []
    accepted: dict[str, Scalar] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not _PARAMETER_NAME_RE.fullmatch(key):
            found.append(((str(key),), "is not a valid PostgreSQL setting name"))
            continue
        # PostgreSQL setting names are case-insensitive.
        name = key.lower()
        problem = MANAGED_PARAMETERS.get(name) or _parameter_problem(name, item)
        if problem is None and name in accepted:
            problem = "is set twice (setting names are case-insensitive)"
        if problem is not None:
            found.append(((key,), problem))
            continue
        accepted[name] = item
    if found:
        raise problems(found)
    return MappingProxyType(accepted)


Parameters = Annotated[
    Mapping[str, Scalar],
    PlainValidator(_check_parameters),
    PlainSerializer(plain_dict, return_type=dict),
]
