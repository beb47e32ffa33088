"""The base of every configuration section: frozen, no unknown keys, null means default."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any, get_origin

from pydantic import BaseModel, ConfigDict, model_validator

from pgwarden.config_errors import unwrap


@cache
def _containers(model: type[BaseModel]) -> dict[str, bool]:
    """Fields holding a section, list or mapping that may not be null: name -> required."""
    found: dict[str, bool] = {}
    for name, field in model.model_fields.items():
        options = unwrap(field.annotation)
        if type(None) in options:
            continue
        if any(
            (isinstance(option, type) and issubclass(option, BaseModel))
            or get_origin(option) in (tuple, list, dict, Mapping)
            for option in options
        ):
            found[name] = field.is_required()
    return found


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _empty_means_default(cls, data: Any) -> Any:
        # YAML reads a section whose lines are all commented out (`postgres:`) as null: treat
        # it as left out, so the defaults apply, or as empty when the section is required.
        if not isinstance(data, Mapping):
            return data
        containers = _containers(cls)
        cleaned: dict[Any, Any] = {}
        for key, value in data.items():
            if value is None and key in containers:
                if containers[key]:
                    cleaned[key] = {}
                continue
            cleaned[key] = value
        return cleaned
