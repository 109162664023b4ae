"""Settings models stricter than pydantic's lax mode: what a recipe fills must be what it says.

Unknown keys, non-finite floats (``.inf``, ``.nan``) and booleans given for numbers (or numbers
for booleans) are errors in every subclass: pydantic would otherwise read ``epochs: true`` as 1.
"""

from __future__ import annotations

import collections.abc
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError


class StrictModel(BaseModel):
    """Base of every settings model a recipe fills: unknown keys, non-finite floats (``.inf``,
    ``.nan``) and booleans passed as numbers (or numbers as booleans) are errors, in every subclass."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_number_mixup(cls, value: Any, info: ValidationInfo) -> Any:
        problem = _bool_number_mixup(cls.model_fields[info.field_name].annotation, value)
        if problem:
            raise PydanticCustomError("bool_number_mixup", problem)
        return value


def _bool_number_mixup(annotation: Any, value: Any) -> str | None:
    """Why ``value`` (or an item in it) is a boolean where ``annotation`` wants a number, or the
    reverse; None when it is not. Pydantic's lax mode would silently read ``true`` as 1."""
    members = _union_members(annotation)
    if Any in members:
        return None
    wants_number = int in members or float in members
    if isinstance(value, bool):
        return "Input should be a number, not true/false" if wants_number and bool not in members else None
    if isinstance(value, (int, float)):
        return "Input should be true or false, not a number" if bool in members and not wants_number else None
    containers = [m for m in members if _holds(m, value)]
    problems = [_item_mixup(c, value) for c in containers]
    return problems[0] if problems and all(problems) else None


def _union_members(annotation: Any) -> list[Any]:
    """The alternatives of a (possibly Optional or Annotated) type: ``int | None`` -> [int, NoneType]."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _union_members(get_args(annotation)[0])
    if origin in (Union, UnionType):
        return [member for arg in get_args(annotation) for member in _union_members(arg)]
    return [annotation]


def _holds(container: Any, value: Any) -> bool:
    """Whether ``container`` is a parametrised container type (``list[int]``, ``dict[str, float]``) for ``value``."""
    origin = get_origin(container)
    if not get_args(container):
        return False
    if isinstance(value, dict):
        return origin in (dict, collections.abc.Mapping)
    return isinstance(value, (list, tuple)) and origin in (list, tuple, set, frozenset, collections.abc.Sequence)


def _item_mixup(container: Any, value: list | tuple | dict) -> str | None:
    """The first boolean/number mix-up among the items (or mapping values) of ``value``."""
    args = get_args(container)
    if isinstance(value, dict):
        pairs = ((args[1], item) for item in value.values())
    elif get_origin(container) is tuple and args[-1] is not Ellipsis:
        pairs = zip(args, value)
    else:
        pairs = ((args[0], item) for item in value)
    return next((problem for item, v in pairs if (problem := _bool_number_mixup(item, v))), None)
