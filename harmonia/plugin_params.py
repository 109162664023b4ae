"""Plugin parameters: validating them against a plugin's typed model into one-line errors, and
describing the model's fields for ``harmonia list --verbose``.

The registry (building a plugin) and the recipe (checking a recipe before a run) both validate
through :func:`validate_params`, so a misspelt key gets the same "did you mean" either way and
neither ever lets a raw pydantic ``ValidationError`` through.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import NoneType, UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

#: parts of a pydantic error location that name a validator, not a key
_VALIDATOR_LOCS = ("function-after", "function-before")

#: constraint attributes of a field's metadata (annotated-types and pydantic) and how to show them
_CONSTRAINTS = (
    ("gt", "> {}"),
    ("ge", ">= {}"),
    ("lt", "< {}"),
    ("le", "<= {}"),
    ("multiple_of", "multiple of {}"),
    ("min_length", "min length {}"),
    ("max_length", "max length {}"),
    ("pattern", "matches {!r}"),
)


class InvalidParams(ValueError):
    """Parameters that do not fit a plugin's model: where (a key path inside ``params``) and which rule."""

    def __init__(self, loc: tuple[Any, ...], rule: str):
        super().__init__(f"{key_path(loc)}: {rule}" if loc else rule)
        self.loc = loc
        self.rule = rule


def key_path(loc: tuple[Any, ...]) -> str:
    """``('mitigations', 1, 'params', 'weight')`` -> ``mitigations[1].params.weight``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def validate_params(model: type[BaseModel], given: Mapping[str, Any] | BaseModel | None) -> BaseModel:
    """``given`` as an instance of ``model``: a mapping is validated, an instance of ``model`` is
    returned as it is (it was validated when made). :class:`InvalidParams` says what does not fit."""
    if given is None:
        given = {}
    if isinstance(given, model):
        return given
    if not isinstance(given, Mapping):
        raise InvalidParams(
            (), f"expected a mapping of parameter names to values or a {model.__name__}, got {type(given).__name__}"
        )
    try:
        return model.model_validate(dict(given))
    except ValidationError as exc:
        raise InvalidParams(*_first_error(exc, model)) from None


def _first_error(exc: ValidationError, model: type[BaseModel]) -> tuple[tuple[Any, ...], str]:
    """The key path and rule of ``exc``'s first error, in harmonia's words (as the recipe's own
    errors), with a count of the rest; an unknown key gets the closest field of ``model``."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    err = errors[0]
    loc = tuple(p for p in err["loc"] if p not in _VALIDATOR_LOCS)
    if err["type"] == "extra_forbidden":
        rule = "unknown key" + _suggestion(model, loc)
    elif err["type"] == "missing":
        rule = "required key is missing"
    else:
        rule = _one_line(err["msg"].removeprefix("Value error, "))
    more = len(errors) - 1
    if more:
        rule += f" (and {more} more error{'s' if more > 1 else ''})"
    return loc, rule


def _one_line(text: str, limit: int = 300) -> str:
    """``text`` on one line, cut to ``limit`` characters with ``…`` (a plugin's validator may say a lot)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _suggestion(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """``; did you mean 'x'?`` for the unknown key at the end of ``loc``, else the keys it could be."""
    known = _fields_at(model, loc[:-1])
    if not known:
        return ""
    close = difflib.get_close_matches(str(loc[-1]), known, n=1)
    if close:
        return f"; did you mean '{close[0]}'?"
    return f" (known keys: {', '.join(known)})"


def _fields_at(model: type[BaseModel], path: tuple[Any, ...]) -> list[str]:
    """Field names of the (nested) model at ``path`` inside ``model``; empty where it is not a model."""
    current: Any = model
    for part in path:
        field = current.model_fields.get(part) if isinstance(part, str) else None
        current = field.annotation if field is not None else None
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
    return list(current.model_fields)


# ------------------------------------------------------------------------------------------------
# Describing a parameter model
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamInfo:
    """One parameter as ``harmonia list --verbose`` shows it."""

    name: str
    type: str
    default: str  # as JSON (valid YAML in a recipe), or "required"
    rules: str  # bounds and choices, e.g. ">= 0, <= 1" or "one of stop, skip"
    description: str


def describe_params(model: type[BaseModel]) -> list[ParamInfo]:
    """Every field of ``model`` with its type, default, bounds, choices and description."""
    return [
        ParamInfo(name, _type_text(field.annotation), _default_text(field), _rules_text(field), field.description or "")
        for name, field in model.model_fields.items()
    ]


def _type_text(annotation: Any) -> str:
    """A short readable type: ``int``, ``list[str]``, ``float | None``; a Literal shows its values' type."""
    origin = get_origin(annotation)
    if origin is Literal:
        return " | ".join(dict.fromkeys(type(v).__name__ for v in get_args(annotation)))
    if origin is Annotated:
        return _type_text(get_args(annotation)[0])
    if origin in (Union, UnionType):
        return " | ".join(dict.fromkeys(_type_text(a) for a in get_args(annotation)))
    if origin is not None:
        args = ", ".join(_type_text(a) for a in get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if annotation is NoneType:
        return "None"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    default = field.get_default(call_default_factory=True)
    try:
        return json.dumps(to_jsonable_python(default))
    except (TypeError, ValueError):
        return repr(default)


def _rules_text(field: FieldInfo) -> str:
    rules = [
        template.format(getattr(meta, attr))
        for meta in field.metadata
        for attr, template in _CONSTRAINTS
        if getattr(meta, attr, None) is not None
    ]
    choices = _choices(field.annotation)
    if choices:
        rules.append("one of " + ", ".join(str(c) for c in choices))
    return ", ".join(rules)


def _choices(annotation: Any) -> list[Any]:
    """The Literal values ``annotation`` allows (inside Optional or a union too)."""
    origin = get_origin(annotation)
    if origin is Literal:
        return list(get_args(annotation))
    if origin in (Union, UnionType, Annotated):
        return [c for arg in get_args(annotation) for c in _choices(arg)]
    return []
