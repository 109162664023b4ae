"""Recipes: YAML experiment descriptions, validated as a whole before anything runs.

A recipe is read with ``yaml.safe_load`` only (no code from recipes, ever), overridden with
``--set key.path=value``, expanded over its ``sweep:`` grid, and each sweep point validated by
typed models, including every plugin's own parameter model. Every error is one line naming the
file and the key path, e.g. ``recipe.yaml: mitigations[1].params.weight: ...``.
"""

from __future__ import annotations

import copy
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from harmonia.api import PluginKind, Task, TwinSettings
from harmonia.errors import PluginError, RecipeError
from harmonia.registry import Registry, default_registry


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PluginSpec(_Strict):
    """A plugin by name and its parameters (validated against the plugin's own model)."""

    plugin: str
    params: dict[str, Any] = Field(default_factory=dict)


class CohortSpec(PluginSpec):
    """The cohort, where its data is, and the synthetic twin used when no data is configured."""

    root: Path | None = Field(None, description="folder of the real dataset; else $HARMONIA_DATA/<cohort>")
    synthetic: TwinSettings = Field(default_factory=TwinSettings)
    train_domains: list[str] | None = Field(None, description="domains to train on (default: all)")


class TrainSpec(_Strict):
    """Training settings of every (seed, training domain) cell; defaults are the paper's (seed 001)."""

    epochs: int = Field(60, ge=1)
    batch_size: int = Field(50, ge=1)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    seeds: int = Field(10, ge=1, description="repetitions with different splits and initialisations")
    selection: Literal["best_val", "last"] = Field(
        "best_val", description="keep the epoch best on the training domain's validation split, or the last"
    )
    device: str = Field("auto", description="'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1', ...")
    amp: bool = Field(True, description="mixed precision on CUDA (ignored on CPU)")
    channels_last: bool = Field(True, description="channels-last memory format for 2-D convolutions")

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value not in ("auto", "cpu", "cuda", "mps") and not value.startswith("cuda:"):
            raise ValueError("must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
        return value


class Recipe(_Strict):
    """One experiment: cohort, model, mitigations, training and evaluation (one sweep point)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    cohort: CohortSpec
    model: PluginSpec
    mitigations: list[PluginSpec] = Field(default_factory=list)
    train: TrainSpec = Field(default_factory=TrainSpec)
    evaluate: list[PluginSpec] = Field(min_length=1)
    sweep: dict[str, list[Any]] = Field(default_factory=dict)

    @field_validator("evaluate", mode="before")
    @classmethod
    def _names_to_specs(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"plugin": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator("sweep")
    @classmethod
    def _non_empty_axes(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in value.items():
            if not values:
                raise ValueError(f"sweep axis '{key}' has no values")
            if key == "sweep" or key.startswith("sweep."):
                raise ValueError("a sweep cannot sweep itself")
        return value

    def mitigation_label(self) -> str:
        """``none`` or the mitigation names joined by ``+`` (the ``mitigations`` column of results)."""
        return "+".join(m.plugin for m in self.mitigations) or "none"


@dataclass(frozen=True)
class SweepPoint:
    """One point of a recipe's grid: its index, the swept values and the validated recipe."""

    id: int
    values: dict[str, Any]
    recipe: Recipe


@dataclass(frozen=True)
class Experiment:
    """A loaded recipe: where it came from, its resolved form and its validated sweep points."""

    source: str
    resolved: dict[str, Any]
    points: list[SweepPoint]

    @property
    def name(self) -> str:
        return self.points[0].recipe.name

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.resolved, sort_keys=False)


# ------------------------------------------------------------------------------------------------
# Reading and overriding
# ------------------------------------------------------------------------------------------------


def read_yaml(path: Path) -> dict[str, Any]:
    """The recipe file as a mapping, with safe_load only; one-line errors naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"{path}: no such recipe file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{path}: cannot read recipe ({exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(f"{path}: {where}invalid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of keys (name, cohort, model, ...)")
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """``key.path=value`` with the value read as YAML (``--set train.epochs=5``)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"--set {text}: expected KEY.PATH=VALUE")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def set_path(data: dict[str, Any], path: str, value: Any, origin: str) -> None:
    """Set ``value`` at dotted ``path`` (integers index lists), creating mappings as needed."""
    parts = path.split(".")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        here = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise RecipeError(f"{origin}: {here}: no list item {part} (the list has {len(node)})")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, [] if parts[i + 1].isdigit() else {})
        else:
            raise RecipeError(f"{origin}: {here}: cannot set a key inside a {type(node).__name__}")


# ------------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------------


def key_path(loc: tuple[Any, ...]) -> str:
    """``('mitigations', 1, 'params', 'weight')`` -> ``mitigations[1].params.weight``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _first_error(exc: ValidationError, prefix: tuple[Any, ...] = ()) -> str:
    err = exc.errors()[0]
    loc = prefix + tuple(p for p in err["loc"] if p not in ("function-after", "function-before"))
    message = err["msg"]
    if err["type"] == "extra_forbidden":
        message = "unknown key"
    elif err["type"] == "missing":
        message = "required key is missing"
    more = len(exc.errors()) - 1
    suffix = f" (and {more} more error{'s' if more > 1 else ''})" if more else ""
    return f"{key_path(loc)}: {message}{suffix}"


def _validate_plugin(registry: Registry, kind: PluginKind, spec: PluginSpec, loc: tuple[Any, ...]) -> None:
    try:
        entry = registry.get(kind, spec.plugin)
    except PluginError as exc:
        raise RecipeError(f"{key_path(loc + ('plugin',))}: {exc}") from None
    try:
        params = entry.cls.Params.model_validate(spec.params)
    except ValidationError as exc:
        raise RecipeError(_first_error(exc, loc + ("params",))) from None
    spec.params = params.model_dump(mode="json")


def validate_point(data: dict[str, Any], registry: Registry) -> Recipe:
    """A validated :class:`Recipe` with every plugin's params checked and filled with defaults."""
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(_first_error(exc)) from None
    _validate_plugin(registry, "cohort", recipe.cohort, ("cohort",))
    _validate_plugin(registry, "model", recipe.model, ("model",))
    for i, spec in enumerate(recipe.mitigations):
        _validate_plugin(registry, "mitigation", spec, ("mitigations", i))
    for i, spec in enumerate(recipe.evaluate):
        _validate_plugin(registry, "evaluator", spec, ("evaluate", i))
    _check_compatibility(recipe, registry)
    return recipe


def _check_compatibility(recipe: Recipe, registry: Registry) -> None:
    """Plugins that cannot work together (a segmentation model on a classification cohort...)."""
    task_kind = _cohort_task_kind(recipe, registry)
    if task_kind is None:
        return
    model_cls = registry.get("model", recipe.model.plugin).cls
    if task_kind not in model_cls.tasks:
        raise RecipeError(f"model.plugin: '{recipe.model.plugin}' cannot do {task_kind} (cohort {recipe.cohort.plugin})")
    for i, spec in enumerate(recipe.evaluate):
        cls = registry.get("evaluator", spec.plugin).cls
        if task_kind not in cls.tasks:
            raise RecipeError(f"evaluate[{i}].plugin: '{spec.plugin}' does not evaluate {task_kind}")


def _cohort_task_kind(recipe: Recipe, registry: Registry) -> str | None:
    """The cohort's task kind when the class declares its task statically, else None."""
    task = getattr(registry.get("cohort", recipe.cohort.plugin).cls, "task", None)
    return task.kind if isinstance(task, Task) else None


def expand_sweep(data: dict[str, Any], origin: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Every (swept values, recipe mapping) of the grid, in a stable order; one point if no sweep."""
    sweep = data.get("sweep") or {}
    if not isinstance(sweep, dict):
        raise RecipeError(f"{origin}: sweep: must be a mapping of KEY.PATH: [values]")
    for key, values in sweep.items():
        if not isinstance(values, list) or not values:
            raise RecipeError(f"{origin}: sweep.{key}: must be a non-empty list of values")
    keys = list(sweep)
    points = []
    for combo in itertools.product(*(sweep[k] for k in keys)):
        point = copy.deepcopy(data)
        values = dict(zip(keys, combo))
        for key, value in values.items():
            set_path(point, key, copy.deepcopy(value), f"{origin}: sweep")
        points.append((values, point))
    return points


def load_recipe(
    source: str | Path | dict[str, Any],
    overrides: list[str] | tuple[str, ...] = (),
    registry: Registry | None = None,
) -> Experiment:
    """Read, override, expand and validate a recipe (a file path or an in-memory mapping)."""
    registry = registry or default_registry()
    if isinstance(source, dict):
        origin, data = "<recipe>", copy.deepcopy(source)
    else:
        origin, data = str(source), read_yaml(Path(source))
    for text in overrides:
        key, value = parse_override(text)
        set_path(data, key, value, f"{origin}: --set")
    points = []
    for i, (values, point_data) in enumerate(expand_sweep(data, origin)):
        try:
            recipe = validate_point(point_data, registry)
        except RecipeError as exc:
            where = f" (sweep point {i}: {_describe(values)})" if values else ""
            raise RecipeError(f"{origin}: {exc}{where}") from None
        points.append(SweepPoint(i, values, recipe))
    base = copy.deepcopy(data)
    if "sweep" in base:
        base = {k: v for k, v in base.items() if k != "sweep"}
    try:
        resolved = validate_point(base, registry).model_dump(mode="json", exclude={"sweep"})
    except RecipeError:
        # the base alone may be incomplete when the sweep supplies a required field
        resolved = copy.deepcopy(base)
    resolved["sweep"] = data.get("sweep") or {}
    return Experiment(origin, resolved, points)


def _describe(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in values.items())
