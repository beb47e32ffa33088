"""JSON encoding of the consensus store's keys, shared by every backend.

Each value is one UTF-8 JSON document. Decoders raise StoreError naming the key, so a
hand-edited or corrupted key is reported as such instead of crashing the agent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from pgwarden.dcs.base import StoreError
from pgwarden.model import (
    DynamicConfig,
    FailoverRequest,
    HistoryEntry,
    Lsn,
    MemberInfo,
    SyncState,
    lsn_or_none,
)


def dump(value: Any) -> bytes:
    """Compact, key-sorted JSON: equal values give equal bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def load(key: str, raw: bytes) -> Any:
    """Parse one key's JSON; StoreError naming `key` when it is not JSON."""
    try:
        return json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreError(f"the store key {key} does not hold valid JSON: {exc}") from None


def _load_object(key: str, raw: bytes) -> Mapping[str, Any]:
    data = load(key, raw)
    if not isinstance(data, dict):
        raise StoreError(f"the store key {key} holds {type(data).__name__}, not a JSON object")
    return data


def _invalid(key: str, exc: Exception) -> StoreError:
    return StoreError(f"the store key {key} holds an invalid value: {exc!r}")


# ---------------------------------------------------------------------------- leader
def encode_leader(name: str) -> bytes:
    return dump({"name": name})


def decode_leader(key: str, raw: bytes) -> str:
    name = _load_object(key, raw).get("name")
    if not isinstance(name, str) or not name:
        raise StoreError(f"the store key {key} names no leader")
    return name


# ---------------------------------------------------------------------------- members
def encode_member(info: MemberInfo) -> bytes:
    return dump(info.to_json())


def decode_member(key: str, name: str, raw: bytes) -> MemberInfo:
    data = _load_object(key, raw)
    try:
        return MemberInfo.from_json(name, data)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise _invalid(key, exc) from None


# ---------------------------------------------------------------------------- config
def encode_config(config: DynamicConfig) -> bytes:
    return dump(config.to_json())


def decode_config(key: str, raw: bytes) -> DynamicConfig:
    data = _load_object(key, raw)
    try:
        return DynamicConfig.from_json(data)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise _invalid(key, exc) from None


# ---------------------------------------------------------------------------- initialize
def encode_initialize(system_identifier: str) -> bytes:
    return dump({"system_identifier": system_identifier})


def decode_initialize(key: str, raw: bytes) -> str:
    value = _load_object(key, raw).get("system_identifier")
    if value is None:
        raise StoreError(f"the store key {key} holds no system_identifier")
    return str(value)


# ---------------------------------------------------------------------------- sync
def encode_sync(leader: str | None, members: frozenset[str]) -> bytes:
    return dump({"leader": leader, "members": sorted(members)})


def decode_sync(key: str, raw: bytes, version: int) -> SyncState:
    data = _load_object(key, raw)
    try:
        leader = data.get("leader")
        members = frozenset(str(m) for m in data.get("members") or ())
        return SyncState(str(leader) if leader is not None else None, members, version)
    except TypeError as exc:
        raise _invalid(key, exc) from None


# ---------------------------------------------------------------------------- failover
def encode_failover(request: FailoverRequest) -> bytes:
    return dump(
        {
            "from": request.from_,
            "to": request.to,
            "at": request.at,
            "allow_data_loss": request.allow_data_loss,
            "handed_over": request.handed_over,
            "force": request.force,
        }
    )


def decode_failover(key: str, raw: bytes, version: int) -> FailoverRequest:
    data = _load_object(key, raw)
    try:
        from_, to, at = data.get("from"), data.get("to"), data.get("at")
        return FailoverRequest(
            str(from_) if from_ is not None else None,
            str(to) if to is not None else None,
            float(at) if at is not None else None,
            version,
            allow_data_loss=bool(data.get("allow_data_loss", False)),
            handed_over=bool(data.get("handed_over", False)),
            force=bool(data.get("force", False)),
        )
    except (ValueError, TypeError) as exc:
        raise _invalid(key, exc) from None


# ---------------------------------------------------------------------------- optime
def encode_optime(lsn: Lsn) -> bytes:
    return dump({"lsn": str(lsn)})


def decode_optime(key: str, raw: bytes) -> Lsn | None:
    data = _load_object(key, raw)
    try:
        return lsn_or_none(data.get("lsn"))
    except (ValueError, TypeError) as exc:
        raise _invalid(key, exc) from None


# ---------------------------------------------------------------------------- history
def encode_history(entries: Sequence[HistoryEntry]) -> bytes:
    return dump([entry.to_json() for entry in entries])


def decode_history(key: str, raw: bytes) -> tuple[HistoryEntry, ...]:
    data = load(key, raw)
    if not isinstance(data, list):
        raise StoreError(f"the store key {key} holds {type(data).__name__}, not a JSON list")
    try:
        return tuple(HistoryEntry.from_json(item) for item in data)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise _invalid(key, exc) from None


# ---------------------------------------------------------------------------- events
def encode_event(kind: str, time: float, data: Mapping[str, Any]) -> bytes:
    try:
        return dump({"kind": kind, "time": time, "data": dict(data)})
    except (TypeError, ValueError) as exc:
        raise StoreError(f"event {kind!r} holds data that is not JSON: {exc}") from None


def decode_event(key: str, raw: bytes) -> dict[str, Any]:
    """An event as `{"kind": str, "time": float, "data": dict}`."""
    data = _load_object(key, raw)
    if not isinstance(data.get("kind"), str) or not isinstance(data.get("data", {}), dict):
        raise StoreError(f"the store key {key} is not an event")
    return {"kind": data["kind"], "time": data.get("time"), "data": data.get("data", {})}
