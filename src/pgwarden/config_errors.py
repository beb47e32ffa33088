"""Pydantic validation errors -> one `(field.path, problem)` per error, in plain sentences.

Paths are written as the user wrote the YAML: `dcs.ttl`, `drill.checks[1].sql`; the tag
pydantic inserts for the storage type never appears. No message quotes a secret.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from pgwarden.config_types import INVALID, PROBLEMS, Loc, Unit, describe, format_number

# Keys that would put cloud credentials into the file; they get their own sentence.
CREDENTIAL_KEYS = frozenset(
    {
        "access_key",
        "access_key_id",
        "aws_access_key_id",
        "secret_key",
        "secret_access_key",
        "aws_secret_access_key",
        "session_token",
        "aws_session_token",
    }
)
_CREDENTIALS_MESSAGE = (
    "inline credentials are not accepted; provide them in the environment "
    "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or in a named profile given as storage.profile"
)
_SECRET_WORDS = ("password", "secret", "token", "passphrase")


@dataclass(frozen=True)
class _Located:
    """Where an error location points in the settings models."""

    path: str
    field: FieldInfo | None
    owner: type[BaseModel] | None  # the model holding the last key, when there is one
    tag: str | None  # the storage type the path went through, when there is one
    alternatives: tuple[type[BaseModel], ...]  # the owner's sibling models in that union
    secret: bool


def translate(error: ValidationError, root: type[BaseModel]) -> list[tuple[str, str]]:
    """One `(path, message)` per problem in `error`, in the order pydantic found them."""
    found: list[tuple[str, str]] = []
    for detail in error.errors(include_url=False):
        for problem in _translate_one(detail, root):
            if problem not in found:
                found.append(problem)
    return found


def _translate_one(detail: ErrorDetails, root: type[BaseModel]) -> list[tuple[str, str]]:
    kind = detail["type"]
    ctx: dict[str, Any] = dict(detail.get("ctx") or {})
    loc: Loc = tuple(detail["loc"])
    if kind == PROBLEMS:
        return [(_locate(loc + tuple(sub), root).path, msg) for sub, msg in ctx["problems"]]
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        where = _locate(loc, root)
        tags = ", ".join(repr(_tag_of(model)) for model in _models_in(_annotation(where, root)))
        path = f"{where.path}.type" if where.path else "type"
        if kind == "union_tag_not_found":
            return [(path, f"is required: one of {tags}")]
        return [(path, f"must be one of {tags}, got {describe(ctx.get('tag'))}")]
    where = _locate(loc, root)
    if kind == INVALID:
        return [(where.path, str(ctx["message"]))]
    if kind == "extra_forbidden":
        return [(where.path, _unknown_key(loc, where, root))]
    return [(where.path, _message(kind, ctx, detail.get("input"), where, detail["msg"]))]


_TEMPLATES = {
    "int_type": "must be a whole number{unit}, got {got}",
    "int_parsing": "must be a whole number{unit}, got {got}",
    "int_from_float": "must be a whole number{unit}, got {got}",
    "float_type": "must be a number{unit}, got {got}",
    "float_parsing": "must be a number{unit}, got {got}",
    "finite_number": "must be a finite number{unit}, got {got}",
    "string_type": "must be a string, got {got}",
    "bool_type": "must be true or false, got {got}",
    "bool_parsing": "must be true or false, got {got}",
    "path_type": "must be a file system path, got {got}",
    "literal_error": "must be {expected}, got {got}",
    "model_type": "must be a mapping of settings (key: value), got {got}",
    "model_attributes_type": "must be a mapping of settings (key: value), got {got}",
    "dict_type": "must be a mapping of settings (key: value), got {got}",
    "list_type": "must be a list, got {got}",
    "tuple_type": "must be a list, got {got}",
    "too_short": "must list at least one entry",
    "string_too_short": "must not be empty",
    "invalid_key": "is not a valid key; keys are names such as 'cluster' or 'dcs'",
}
_BOUNDS = {
    "greater_than_equal": ("at least", "ge"),
    "greater_than": ("greater than", "gt"),
    "less_than_equal": ("at most", "le"),
    "less_than": ("less than", "lt"),
}


def _message(kind: str, ctx: dict[str, Any], value: object, where: _Located, fallback: str) -> str:
    got = describe(value, secret=where.secret)
    unit = _unit(where.field)
    if kind == "missing":
        return f"is required when type is {where.tag!r}" if where.tag else "is required"
    if kind in _BOUNDS:
        words, key = _BOUNDS[kind]
        limit = ctx[key]
        shown = unit.of(limit) if unit else format_number(limit)
        return f"must be {words} {shown}, got {got}"
    template = _TEMPLATES.get(kind)
    if template is not None:
        of_unit = f" of {unit.plural}" if unit else ""
        return template.format(got=got, unit=of_unit, expected=ctx.get("expected", ""))
    # A pydantic error without a sentence of its own: its message, minus the jargon.
    text = fallback.removeprefix("Value error, ")
    return text[:1].lower() + text[1:]


def _unknown_key(loc: Loc, where: _Located, root: type[BaseModel]) -> str:
    key = str(loc[-1]) if loc else ""
    if key.lower() in CREDENTIAL_KEYS:
        return _CREDENTIALS_MESSAGE
    if where.owner is None:
        return "unknown key"
    for other in where.alternatives:
        if other is not where.owner and key in other.model_fields:
            return (
                f"only used when type is {_tag_of(other)!r}, but this storage has type "
                f"{where.tag!r}"
            )
    names = list(where.owner.model_fields)
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    if close:
        return f"unknown key; did you mean {close[0]!r}?"
    if where.owner is root:
        home = _section_with_key(root, key)
        if home:
            return f"unknown key at the top level; did you mean {home}.{key}?"
    return f"unknown key; the keys here are: {', '.join(names)}"


def _annotation(where: _Located, root: type[BaseModel]) -> Any:
    return where.field.annotation if where.field is not None else root


def _section_with_key(root: type[BaseModel], key: str) -> str | None:
    for section, field in root.model_fields.items():
        if any(key in model.model_fields for model in _models_in(field.annotation)):
            return section
    return None


def _locate(loc: Sequence[str | int], root: type[BaseModel]) -> _Located:
    """Walk the models along `loc`; render the path as the user wrote it."""
    path = ""
    current: Any = root
    field: FieldInfo | None = None
    owner: type[BaseModel] | None = None
    tag: str | None = None
    alternatives: tuple[type[BaseModel], ...] = ()
    secret = False
    for item in loc:
        models = _models_in(current)
        if len(models) > 1 and isinstance(item, str):
            chosen = next((model for model in models if _tag_of(model) == item), None)
            if chosen is not None:  # pydantic's union tag: not a key the user wrote
                current, tag, alternatives = chosen, item, tuple(models)
                continue
        if isinstance(item, int) and _item_type(current) is not None:
            path += f"[{item}]"
            current, field, owner = _item_type(current), None, None
            continue
        path = f"{path}.{item}" if path else str(item)
        secret = secret or any(word in str(item).lower() for word in _SECRET_WORDS)
        if len(models) == 1:
            owner = models[0]
            field = owner.model_fields.get(str(item))
            current = field.annotation if field else None
            if owner not in alternatives:
                tag, alternatives = None, ()
        else:
            current, field, owner = None, None, None
    if field is not None and _contains(field.annotation, SecretStr):
        secret = True
    return _Located(path, field, owner, tag, alternatives, secret)


def unwrap(annotation: Any) -> list[Any]:
    """The alternatives of an annotation, without Annotated, Optional and unions."""
    if get_origin(annotation) is Annotated:
        return unwrap(get_args(annotation)[0])
    if get_origin(annotation) in (Union, types.UnionType):
        return [inner for arg in get_args(annotation) for inner in unwrap(arg)]
    return [annotation]


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    return [
        option
        for option in unwrap(annotation)
        if isinstance(option, type) and issubclass(option, BaseModel)
    ]


def _item_type(annotation: Any) -> Any:
    for option in unwrap(annotation):
        if get_origin(option) in (tuple, list):
            return get_args(option)[0]
    return None


def _tag_of(model: type[BaseModel]) -> str | None:
    field = model.model_fields.get("type")
    if field is None or get_origin(field.annotation) is not Literal:
        return None
    return str(get_args(field.annotation)[0])


def _contains(annotation: Any, wanted: type) -> bool:
    if annotation is wanted:
        return True
    return any(_contains(arg, wanted) for arg in get_args(annotation))


def _unit(field: FieldInfo | None) -> Unit | None:
    if field is None:
        return None
    for item in field.metadata:
        if isinstance(item, Unit):
            return item
    return _unit_in(field.annotation)


def _unit_in(annotation: Any) -> Unit | None:
    if get_origin(annotation) is Annotated:
        for item in get_args(annotation)[1:]:
            if isinstance(item, Unit):
                return item
    for arg in get_args(annotation):
        found = _unit_in(arg)
        if found:
            return found
    return None
