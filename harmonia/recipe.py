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
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, PrivateAttr, TypeAdapter, ValidationError, field_validator

from harmonia.api import Params, PluginKind, Task, TwinSettings
from harmonia.errors import PluginError, RecipeError
from harmonia.plugin_params import InvalidParams, key_path, validate_params
from harmonia.registry import Registry, default_registry

# TrainSpec lives below the engine (harmonia.settings); recipe users may still import it from here
from harmonia.settings import ExecutionSpec, TrackingSpec, TrainSpec
from harmonia.strict import StrictModel

#: most values a recipe may hold, counting every use of a YAML alias (an "alias bomb" expands exponentially)
MAX_RECIPE_VALUES = 100_000
#: most sweep points a recipe may expand to unless it sets ``max_sweep_points:``
DEFAULT_MAX_SWEEP_POINTS = 1000
#: most characters of a value echoed in an error message
ECHO_LIMIT = 80

#: recipe sections on how a run is carried out, not what it computes: outside the fingerprint, never swept
RUN_ONLY_SECTIONS = ("execution", "tracking")

SweepLimit = Annotated[int, Field(ge=1, strict=True)]
_SWEEP_LIMIT = TypeAdapter(SweepLimit)


class _Strict(StrictModel):
    """The recipe's own models: strict like every settings model (see :class:`StrictModel`)."""


class PluginSpec(_Strict):
    """A plugin by name and its parameters (validated against the plugin's own model).

    ``params`` is the mapping as the recipe wrote it, completed with the defaults once validated
    (what the resolved recipe.yaml shows); the same values are kept as the plugin's typed model,
    validated once by :func:`validate_point` and handed as they are to
    :meth:`Registry.create <harmonia.registry.Registry.create>` (see :attr:`params_for_create`).
    """

    plugin: str
    params: dict[str, Any] = Field(default_factory=dict)
    _validated_params: Params | None = PrivateAttr(None)

    @property
    def params_for_create(self) -> Params | dict[str, Any]:
        """What :meth:`Registry.create` gets: the typed params validated with the recipe, or, for a
        spec made by hand and never validated, the mapping, which ``create`` then validates."""
        return self._validated_params if self._validated_params is not None else self.params

    def use_params(self, params: Params) -> None:
        """Keep ``params`` (validated) for the run and show them, defaults included, in :attr:`params`."""
        self._validated_params = params
        self.params = params.model_dump(mode="json")


class CohortSpec(PluginSpec):
    """The cohort, where its data is, and the synthetic twin used when no data is configured."""

    root: Path | None = Field(None, description="folder of the real dataset; else $HARMONIA_DATA/<cohort>")
    synthetic: TwinSettings = Field(default_factory=TwinSettings)
    train_domains: list[str] | None = Field(None, description="domains to train on (default: all)")
    label: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="the cohort's name in results and reports (default: the plugin's name); tells two entries "
        "of one plugin apart",
    )

    @property
    def name(self) -> str:
        """What results.csv's ``cohort`` column holds: the label, else the plugin's name."""
        return self.label or self.plugin


class Recipe(_Strict):
    """One experiment: cohort, model, mitigations, training and evaluation (one sweep point)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    cohort: CohortSpec
    model: PluginSpec
    mitigations: list[PluginSpec] = Field(default_factory=list)
    train: TrainSpec = Field(default_factory=TrainSpec)
    evaluate: list[PluginSpec] = Field(min_length=1)
    reference: Literal["guo_table2"] | None = Field(
        None,
        description="published results this recipe reproduces, shown beside the run's own in the report "
        "(guo_table2: Table 2 of Guo et al., the scanner-shift study)",
    )
    max_sweep_points: SweepLimit = Field(
        DEFAULT_MAX_SWEEP_POINTS, description="refuse a sweep grid larger than this (a guard against typos)"
    )
    sweep: dict[str, list[Any]] = Field(default_factory=dict)
    execution: ExecutionSpec = Field(default_factory=ExecutionSpec)
    tracking: TrackingSpec | None = Field(None, description="copy each cell's figures into a tracker (mlflow)")

    @field_validator("tracking", mode="before")
    @classmethod
    def _backend_name(cls, value: Any) -> Any:
        return {"backend": value} if isinstance(value, str) else value

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
            if key.split(".")[0] in RUN_ONLY_SECTIONS:
                raise ValueError(
                    f"'{key}' says how the run is carried out, the same for every cell; it cannot be swept"
                )
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

    @property
    def execution(self) -> ExecutionSpec:
        return self.points[0].recipe.execution

    @property
    def tracking(self) -> TrackingSpec | None:
        return self.points[0].recipe.tracking

    @property
    def fingerprinted(self) -> dict[str, Any]:
        """The resolved recipe less :data:`RUN_ONLY_SECTIONS`: what decides the results, so what ``--resume`` compares."""
        return {key: value for key, value in self.resolved.items() if key not in RUN_ONLY_SECTIONS}

    def with_run_settings(
        self, execution: dict[str, Any] | None = None, tracking: dict[str, Any] | None = None
    ) -> Experiment:
        """This experiment with its ``execution:`` and ``tracking:`` settings changed (command-line flags such as
        ``--workers`` and ``--tracking-uri``); a RecipeError if they do not fit. The results cannot change."""
        experiment = self
        for section, model, changes in (("execution", ExecutionSpec, execution), ("tracking", TrackingSpec, tracking)):
            if not changes:
                continue
            current = getattr(experiment.points[0].recipe, section)
            try:
                settings = model.model_validate({**(current.model_dump() if current else {}), **changes})
            except ValidationError as exc:
                raise RecipeError(f"{self.source}: {_first_error(exc, (section,))}") from None
            for point in experiment.points:
                setattr(point.recipe, section, settings)
            experiment = replace(
                experiment, resolved={**experiment.resolved, section: settings.model_dump(mode="json")}
            )
        return experiment

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.resolved, sort_keys=False)


# ------------------------------------------------------------------------------------------------
# Reading and overriding
# ------------------------------------------------------------------------------------------------


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A key written twice in one YAML mapping."""


class RecipeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no tags that build objects or run code) that refuses a key written twice
    in one mapping, where plain PyYAML silently keeps the last."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._checked: set[int] = set()

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        # first called on each mapping as written, before merge keys (<<) fold other mappings into it
        if id(node) not in self._checked:
            self._checked.add(id(node))
            self._reject_duplicate_keys(node)
        super().flatten_mapping(node)

    def _reject_duplicate_keys(self, node: yaml.MappingNode) -> None:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node)
            if key in first_line:
                problem = f"duplicate key {brief(key)} (first on line {first_line[key]})"
                raise DuplicateKeyError(None, None, problem, key_node.start_mark)
            first_line[key] = key_node.start_mark.line + 1


def load_yaml(text: str) -> Any:
    """``text`` read with :class:`RecipeLoader`: what ``yaml.safe_load`` does, plus the duplicate-key check.

    The loader is built here rather than passed to ``yaml.load``, so no caller can swap in an unsafe one.
    """
    loader = RecipeLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_yaml(path: Path) -> dict[str, Any]:
    """The recipe file as a mapping, read safely; one-line errors naming the file (and the line)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"{path}: no such recipe file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{path}: cannot read recipe ({exc})") from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(f"{path}: {where}invalid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of keys (name, cohort, model, ...)")
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """``key.path=value`` with the value read as YAML (``--set train.epochs=5``); text that is not
    YAML is taken as a string, but a duplicate key is an error."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"--set {clip(text)}: expected KEY.PATH=VALUE")
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except DuplicateKeyError as exc:
        raise RecipeError(f"--set {clip(text)}: {exc.problem}") from None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def reject_oversized(data: Any, origin: str) -> None:
    """Refuse a recipe holding more than :data:`MAX_RECIPE_VALUES` values, counting every use of a
    shared (aliased) value; the walk stops at the limit, so an alias bomb or a cycle costs no more."""
    pending, seen = [data], 0
    while pending:
        node = pending.pop()
        seen += 1
        if seen > MAX_RECIPE_VALUES:
            raise RecipeError(
                f"{origin}: the recipe holds more than {MAX_RECIPE_VALUES:,} values "
                "(YAML aliases repeating large parts, or an alias inside itself?); write it out plainly"
            )
        if isinstance(node, dict):
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)


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


def _first_error(exc: ValidationError, prefix: tuple[Any, ...] = ()) -> str:
    """The first of pydantic's errors as one line, ``key.path: what is wrong``, with a count of the
    rest; never pydantic's help URL or the offending input, which ``str(exc)`` would print."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    err = errors[0]
    loc = prefix + tuple(p for p in err["loc"] if p not in ("function-after", "function-before"))
    message = clip(err["msg"].removeprefix("Value error, "), limit=300)
    if err["type"] == "extra_forbidden":
        message = "unknown key"
    elif err["type"] == "missing":
        message = "required key is missing"
    more = len(errors) - 1
    suffix = f" (and {more} more error{'s' if more > 1 else ''})" if more else ""
    return f"{key_path(loc)}: {message}{suffix}"


def _validate_plugin(registry: Registry, kind: PluginKind, spec: PluginSpec, loc: tuple[Any, ...]) -> None:
    """Check that ``spec`` names a usable plugin and that its params fit the plugin's model (an
    unknown key gets the closest parameter: ``model.params.chanels: unknown key; did you mean
    'channels'?``), and keep the validated params on the spec."""
    try:
        entry = registry.get(kind, spec.plugin)
    except PluginError as exc:
        raise RecipeError(f"{key_path(loc + ('plugin',))}: {exc}") from None
    try:
        params = validate_params(entry.cls.Params, spec.params)
    except InvalidParams as exc:
        raise RecipeError(f"{key_path(loc + ('params',) + exc.loc)}: {exc.rule}") from None
    spec.use_params(params)


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
    """Plugins that cannot work together (a segmentation model on a classification cohort, a 2-D model on 3-D crops,
    a CT-only method on MRI...), where the cohort declares its task on the class; else
    :func:`harmonia.protocol.preflight` checks once it is loaded."""
    cohort = registry.get("cohort", recipe.cohort.plugin).cls
    for i, spec in enumerate(recipe.mitigations):
        reason = registry.get("mitigation", spec.plugin).cls.unsuited_to(spec.params_for_create, cohort)
        if reason:
            raise RecipeError(f"mitigations[{i}].plugin: {reason}")
    task = getattr(cohort, "task", None)
    if not isinstance(task, Task):
        return
    problem = incompatibility(task, recipe.cohort.plugin, recipe.model, recipe.evaluate, registry)
    if problem:
        raise RecipeError(problem)


def incompatibility(
    task: Task, cohort: str, model: PluginSpec, evaluate: list[PluginSpec], registry: Registry
) -> str | None:
    """What keeps ``model`` and the ``evaluate`` plugins from working on a cohort with ``task``, or None."""
    model_cls = registry.get("model", model.plugin).cls
    if task.kind not in model_cls.tasks:
        return f"model.plugin: '{model.plugin}' cannot do {task.kind} (cohort {cohort})"
    if task.spatial_dims not in model_cls.image_dims:
        takes = " or ".join(f"{d}-D" for d in model_cls.image_dims)
        return f"model.plugin: '{model.plugin}' takes {takes} images; cohort {cohort} gives {task.spatial_dims}-D items"
    for i, spec in enumerate(evaluate):
        evaluator_cls = registry.get("evaluator", spec.plugin).cls
        if task.kind not in evaluator_cls.tasks:
            return f"evaluate[{i}].plugin: '{spec.plugin}' does not evaluate {task.kind} (cohort {cohort})"
        if i == 0 and evaluator_cls.scope == "cell":
            return (
                f"evaluate[0].plugin: '{spec.plugin}' scores whole cells, so it cannot select epochs; list a test-set "
                f"evaluator (dice, auc) first"
            )
    return None


def expand_cohorts(data: dict[str, Any], origin: str) -> list[dict[str, Any]]:
    """The recipe once per entry of its ``cohorts:`` list, or as it is when it has none.

    Each entry holds a ``cohort`` and optionally a ``model``; they are merged over the top-level
    ``cohort`` and ``model`` (the entry wins; a top-level ``params`` is kept only for the same plugin),
    so a top-level ``cohort.synthetic`` or ``--set cohort.synthetic.patients=40`` reaches every entry.
    """
    if "cohorts" not in data:
        return [data]
    entries = data["cohorts"]
    if not isinstance(entries, list) or not entries:
        raise RecipeError(f"{origin}: cohorts: must be a non-empty list of {{cohort: ..., model: ...}} entries")
    base = {key: value for key, value in data.items() if key != "cohorts"}
    expanded = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("cohort"), dict):
            raise RecipeError(f"{origin}: cohorts[{i}]: must be a mapping with a cohort: mapping (and a model:)")
        unknown = sorted(set(entry) - {"cohort", "model"})
        if unknown:
            raise RecipeError(f"{origin}: cohorts[{i}].{unknown[0]}: unknown key (an entry holds cohort and model)")
        point = copy.deepcopy(base)
        for key, value in entry.items():
            point[key] = _merge_spec(base.get(key), value)
        expanded.append(point)
    names = [_entry_name(point["cohort"]) for point in expanded]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise RecipeError(
            f"{origin}: cohorts: {repeated[0]!r} appears twice; give the entries of one plugin distinct cohort.label"
        )
    return expanded


def _merge_spec(default: Any, entry: Any) -> Any:
    """``entry`` merged over ``default`` key by key (nested mappings too); ``default``'s ``params`` are
    dropped when it names another plugin, since they are that plugin's."""
    if not (isinstance(default, dict) and isinstance(entry, dict)):
        return copy.deepcopy(entry)
    merged = copy.deepcopy(default)
    if default.get("plugin") not in (None, entry.get("plugin")):
        merged.pop("params", None)
    for key, value in entry.items():
        merged[key] = _merge_spec(merged[key], value) if key in merged else copy.deepcopy(value)
    return merged


def _entry_name(cohort: dict[str, Any]) -> str:
    return str(cohort.get("label") or cohort.get("plugin"))


def expand_sweep(data: dict[str, Any], origin: str, copies: int = 1) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Every (swept values, recipe mapping) of the grid, in a stable order; one point if no sweep.

    ``copies`` is how many times the grid runs (once per entry of ``cohorts:``), counted against ``max_sweep_points``.
    """
    sweep = data.get("sweep") or {}
    if not isinstance(sweep, dict):
        raise RecipeError(f"{origin}: sweep: must be a mapping of KEY.PATH: [values]")
    for key, values in sweep.items():
        if not isinstance(values, list) or not values:
            raise RecipeError(f"{origin}: sweep.{key}: must be a non-empty list of values")
    _check_sweep_size(copies * math.prod(len(values) for values in sweep.values()), data, origin)
    keys = list(sweep)
    points = []
    for combo in itertools.product(*(sweep[k] for k in keys)):
        point = copy.deepcopy(data)
        values = dict(zip(keys, combo))
        for key, value in values.items():
            set_path(point, key, copy.deepcopy(value), f"{origin}: sweep")
        points.append((values, point))
    return points


def _check_sweep_size(points: int, data: dict[str, Any], origin: str) -> None:
    """Refuse a grid of more points than the recipe's ``max_sweep_points`` before expanding it."""
    try:
        limit = _SWEEP_LIMIT.validate_python(data.get("max_sweep_points", DEFAULT_MAX_SWEEP_POINTS))
    except ValidationError as exc:
        raise RecipeError(f"{origin}: {_first_error(exc, ('max_sweep_points',))}") from None
    if points > limit:
        raise RecipeError(
            f"{origin}: sweep: the grid has {points:,} points, more than max_sweep_points ({limit:,}); "
            f"to run it, set 'max_sweep_points: {points}' in the recipe (or --set max_sweep_points={points})"
        )


def _reject_overrides_the_sweep_replaces(overrides: list[tuple[str, str]], data: dict[str, Any], origin: str) -> None:
    """A ``--set`` on a key the sweep also sets (or on a part or a parent of one) would be silently
    replaced at every sweep point; refuse it, naming both."""
    sweep = data.get("sweep")
    if not isinstance(sweep, dict):
        return
    for key, text in overrides:
        if key.split(".")[0] == "sweep":
            continue
        for swept in sweep:
            if _same_branch(key, str(swept)):
                raise RecipeError(
                    f"{origin}: --set {clip(text)}: the sweep also sets {clip(str(swept))}; "
                    "change the sweep or drop the --set"
                )


def _same_branch(a: str, b: str) -> bool:
    """Whether one dotted key path is the other or lies inside it (``train`` and ``train.lr``)."""
    parts_a, parts_b = a.split("."), b.split(".")
    shorter = min(len(parts_a), len(parts_b))
    return parts_a[:shorter] == parts_b[:shorter]


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
    applied = []
    for text in overrides:
        key, value = parse_override(text)
        set_path(data, key, value, f"{origin}: --set")
        applied.append((key, text))
    reject_oversized(data, origin)
    _reject_overrides_the_sweep_replaces(applied, data, origin)
    points = []
    entries = expand_cohorts(data, origin)
    for e, entry in enumerate(entries):
        for values, point_data in expand_sweep(entry, origin, copies=len(entries)):
            i = len(points)
            try:
                recipe = validate_point(point_data, registry)
            except RecipeError as exc:
                where = [f"cohorts[{e}]"] if "cohorts" in data else []
                where += [f"sweep point {i}: {_describe(values)}"] if values else []
                suffix = f" ({', '.join(where)})" if where else ""
                raise RecipeError(f"{origin}: {exc}{suffix}") from None
            points.append(SweepPoint(i, values, _without_inactive_mitigations(recipe, registry)))
    base = {k: v for k, v in data.items() if k != "sweep"}
    try:
        resolved = validate_point(base, registry).model_dump(mode="json", exclude={"sweep"})
    except RecipeError:
        # the base alone may be incomplete when the sweep or the cohorts: list supplies a required field
        resolved = copy.deepcopy(base)
    resolved["sweep"] = data.get("sweep") or {}
    return Experiment(origin, resolved, points)


def _without_inactive_mitigations(recipe: Recipe, registry: Registry) -> Recipe:
    """``recipe`` less the mitigations its parameters make no-ops (noise of sd 0), so that the point is the plain
    model and serves as a baseline (see :meth:`Mitigation.is_inactive <harmonia.api.Mitigation.is_inactive>`)."""
    kept = [
        s for s in recipe.mitigations if not registry.get("mitigation", s.plugin).cls.is_inactive(s.params_for_create)
    ]
    if len(kept) < len(recipe.mitigations):
        recipe.mitigations = kept
    return recipe


def _describe(values: dict[str, Any]) -> str:
    """The swept values of a sweep point, each value cut short, for an error message."""
    return ", ".join(f"{key}={brief(value)}" for key, value in values.items())


def clip(text: str, limit: int = ECHO_LIMIT) -> str:
    """``text`` on one line, cut to ``limit`` characters with ``…``."""
    text = " ".join(text[: limit * 4].split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def brief(value: Any, limit: int = ECHO_LIMIT) -> str:
    """``value`` as compact JSON of at most ``limit`` characters (``…`` when cut). Reads only as much
    of ``value`` as it prints, so a huge, deep or self-containing value costs no more than a short one."""
    text = ""
    for piece in _json_pieces(value, limit):
        text += piece
        if len(text) > limit:
            return text[: limit - 1] + "…"
    return text


def _json_pieces(value: Any, limit: int) -> Iterator[str]:
    """Compact JSON of ``value``, lazily, in small pieces (strings cut to ``limit`` characters)."""
    if isinstance(value, dict):
        yield "{"
        for i, (key, item) in enumerate(value.items()):
            yield ("," if i else "") + _json_scalar(key, limit) + ":"
            yield from _json_pieces(item, limit)
        yield "}"
    elif isinstance(value, (list, tuple)):
        yield "["
        for i, item in enumerate(value):
            if i:
                yield ","
            yield from _json_pieces(item, limit)
        yield "]"
    else:
        yield _json_scalar(value, limit)


def _json_scalar(value: Any, limit: int) -> str:
    """One scalar as JSON, a string cut just past ``limit`` so that :func:`brief` sees it is long."""
    if isinstance(value, str):
        return json.dumps(value[: limit + 1], ensure_ascii=False)
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"<{value.bit_length()}-bit integer>"  # str() of a huge int is slow, or refused
    return json.dumps(value, default=str)
