"""The cluster-wide dynamic configuration in the store's `config` key: validation and edits.

`validate(data)` turns a mapping (from `config edit`'s YAML or from `config set`'s changes
applied to the current values) into a `DynamicConfig`, or raises `ConfigError` naming every
problem as `field: sentence`, worded like the configuration file's. Nothing here does I/O:
the CLI reads the store, calls these, and writes back with compare-and-set.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError, model_validator

from pgwarden.config import _UniqueKeyLoader as UniqueKeyLoader
from pgwarden.config_errors import translate
from pgwarden.config_parameters import Parameters, is_secret_parameter
from pgwarden.config_types import (
    MASK,
    SECONDS_UNIT,
    Count,
    Flag,
    Loc,
    Scalar,
    Seconds,
    Unit,
    describe,
    invalid,
    problems,
)
from pgwarden.errors import ConfigError
from pgwarden.model import DynamicConfig, SyncMode
from pgwarden.postgres.conf import parameter_text

_DEFAULT = DynamicConfig()
_SYNC_MODES = tuple(mode.value for mode in SyncMode)


def _check_sync_mode(value: object) -> str:
    # YAML 1.1 reads a bare `on`/`off` as true/false: take them as the words they were.
    if isinstance(value, bool):
        value = "on" if value else "off"
    if value not in _SYNC_MODES:
        allowed = ", ".join(repr(mode) for mode in _SYNC_MODES)
        raise invalid(f"must be one of {allowed}, got {describe(value)}")
    return str(value)


SyncModeName = Annotated[str, PlainValidator(_check_sync_mode)]
Bytes = Annotated[int, Field(strict=True), Unit("byte", "bytes")]


class DynamicSettings(BaseModel):
    """The validation model of `DynamicConfig`; defaults are DynamicConfig's."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # The leader lease: a primary unconfirmed for this long loses it.
    ttl: Seconds = Field(default=_DEFAULT.ttl, ge=2)
    loop_wait: Seconds = Field(default=_DEFAULT.loop_wait, gt=0)
    safety_margin: Seconds = Field(default=_DEFAULT.safety_margin, gt=0)
    maximum_lag_on_failover: Bytes = Field(default=_DEFAULT.maximum_lag_on_failover, ge=0)
    synchronous_mode: SyncModeName = _DEFAULT.synchronous_mode.value
    synchronous_node_count: Count = Field(default=_DEFAULT.synchronous_node_count, ge=1)
    paused: Flag = _DEFAULT.paused
    parameters: Parameters = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _empty_parameters(cls, data: Any) -> Any:
        # `parameters:` with every line below it deleted reads as null: no parameters.
        if isinstance(data, Mapping) and "parameters" in data and data["parameters"] is None:
            return {**data, "parameters": {}}
        return data

    @model_validator(mode="after")
    def _shorter_than_ttl(self) -> Self:
        found: list[tuple[Loc, str]] = []
        ttl = f"ttl ({SECONDS_UNIT.of(self.ttl)})"
        for name in ("loop_wait", "safety_margin"):
            value = getattr(self, name)
            if value >= self.ttl:
                found.append(((name,), f"must be less than {ttl}, got {SECONDS_UNIT.of(value)}"))
        if found:
            raise problems(found)
        return self


SETTINGS = tuple(DynamicSettings.model_fields)


def validate(data: Mapping[str, Any]) -> DynamicConfig:
    """A `DynamicConfig` from plain data; ConfigError naming every problem otherwise."""
    try:
        checked = DynamicSettings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(translate(exc, DynamicSettings)) from None
    return DynamicConfig(
        ttl=float(checked.ttl),
        loop_wait=float(checked.loop_wait),
        safety_margin=float(checked.safety_margin),
        maximum_lag_on_failover=checked.maximum_lag_on_failover,
        synchronous_mode=SyncMode(checked.synchronous_mode),
        synchronous_node_count=checked.synchronous_node_count,
        paused=checked.paused,
        parameters={name: parameter_text(value) for name, value in checked.parameters.items()},
    )


def plain(config: DynamicConfig) -> dict[str, Any]:
    """The configuration as plain data, whole seconds written as `4` rather than `4.0`."""
    data = config.to_json()
    for name, value in data.items():
        if isinstance(value, float) and value.is_integer():
            data[name] = int(value)
    data["parameters"] = dict(sorted(data["parameters"].items()))
    return data


def masked(config: DynamicConfig) -> dict[str, Any]:
    """`plain(config)` with the values of secret-looking parameters masked, for display."""
    data = plain(config)
    data["parameters"] = {
        name: MASK if is_secret_parameter(name) else value
        for name, value in data["parameters"].items()
    }
    return data


# --- config set KEY=VALUE ----------------------------------------------------------------

_INT_RE = re.compile(r"[+-]?[0-9]+")
_FLOAT_RE = re.compile(r"[+-]?([0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)([eE][+-]?[0-9]+)?")


@dataclass(frozen=True)
class Assignment:
    """One `KEY=VALUE` of `config set`: `ttl=6`, `parameters.work_mem=64MB`."""

    key: str
    text: str  # the value as typed

    @property
    def reset(self) -> bool:
        """`KEY=null`: back to the default, or remove the parameter."""
        return self.text.strip() == "null"


def parse_assignment(argument: str) -> Assignment:
    """`KEY=VALUE` -> Assignment; ValueError with a sentence when it is not that shape."""
    key, sep, text = argument.partition("=")
    if not sep or not key.strip():
        raise ValueError(
            f"{argument!r} is not KEY=VALUE, such as ttl=6 or parameters.work_mem=64MB"
        )
    return Assignment(key.strip(), text)


def parse_value(text: str) -> Scalar | None:
    """A typed value: `true`/`false`, whole or decimal numbers, `null`; otherwise the text.

    Quotes force text: `'5'` is the string 5. `on` stays the word `on`.
    """
    value = text.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    if value == "null":
        return None
    if _INT_RE.fullmatch(value):
        return int(value)
    if _FLOAT_RE.fullmatch(value):
        return float(value)
    return value


def _unquote(text: str) -> str:
    value = text.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def apply_assignments(config: DynamicConfig, assignments: Sequence[Assignment]) -> DynamicConfig:
    """`config` with every assignment applied and the result validated as a whole.

    Top-level settings take typed values (`parse_value`); `parameters.NAME` takes the text
    as PostgreSQL reads it. Raises ConfigError naming every problem; nothing is half-applied.
    """
    data = plain(config)
    parameters: dict[str, Any] = data["parameters"]
    found: list[tuple[str, str]] = []
    seen: set[str] = set()
    for assignment in assignments:
        key = assignment.key
        section, dot, name = key.partition(".")
        if key.lower() in seen:
            found.append((key, "is given twice"))
            continue
        seen.add(key.lower())
        if section == "parameters" and dot:
            if not name:
                found.append((key, "needs a PostgreSQL setting name: parameters.NAME=VALUE"))
                continue
            for existing in [p for p in parameters if p.lower() == name.lower()]:
                del parameters[existing]
            if not assignment.reset:
                parameters[name] = _unquote(assignment.text)
        elif section == "parameters":
            found.append((key, "set one PostgreSQL setting at a time: parameters.NAME=VALUE"))
        elif dot:
            found.append((key, _not_a_setting(section)))
        elif assignment.reset:
            data.pop(key, None)
        else:
            data[key] = parse_value(assignment.text)
    if found:
        raise ConfigError(found)
    return validate(data)


def _not_a_setting(section: str) -> str:
    known = ", ".join(name for name in SETTINGS if name != "parameters")
    if section in SETTINGS:
        return f"{section} is a single value; set it as {section}=VALUE"
    return f"unknown key; the settings are {known}, and parameters.NAME"


# --- config edit ---------------------------------------------------------------------------


def to_yaml(config: DynamicConfig, header: str) -> str:
    """The text `config edit` opens: `header` as comment lines, then the settings."""
    comments = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    body = yaml.safe_dump(plain(config), sort_keys=False, default_flow_style=False)
    return comments + body


def from_yaml(text: str) -> DynamicConfig:
    """Parse and validate edited YAML; ConfigError naming every problem."""
    try:
        # The configuration file's loader: a key given twice is an error, not replaced.
        data = yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506  # a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise _edit_error(f"the edited configuration{where}: invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise _edit_error(f"the edited configuration: invalid YAML: {exc}") from None
    if data is None:
        raise _edit_error("the edited configuration is empty")
    if not isinstance(data, Mapping):
        raise _edit_error(
            f"the edited configuration must be a mapping of settings, got {describe(data)}"
        )
    return validate(data)


def _edit_error(message: str) -> ConfigError:
    return ConfigError([("", message)])


# --- what changed --------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One setting that differs: its key and both values as shown (None: not set)."""

    key: str
    before: Any
    after: Any

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "before": self.before, "after": self.after}

    def __str__(self) -> str:
        return f"{self.key}: {_shown(self.before)} -> {_shown(self.after)}"


def _shown(value: Any) -> str:
    if value is None:
        return "(not set)"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def changes(before: DynamicConfig, after: DynamicConfig) -> list[Change]:
    """Every setting and parameter that differs, secrets masked."""
    old, new = masked(before), masked(after)
    found = [
        Change(name, old[name], new[name])
        for name in SETTINGS
        if name != "parameters" and old[name] != new[name]
    ]
    old_params, new_params = before.parameters, after.parameters
    for name in sorted(set(old_params) | set(new_params)):
        if old_params.get(name) != new_params.get(name):
            found.append(
                Change(
                    f"parameters.{name}", old["parameters"].get(name), new["parameters"].get(name)
                )
            )
    return found
