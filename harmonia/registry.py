"""Plugin discovery, registration and lookup, and the one factory that builds a plugin.

A registry gathers plugin modules from three places, in this order, through one pluggy manager:

1. harmonia's own plugins, the modules in :data:`FIRST_PARTY_MODULES`, imported by name when the
   registry is built (as datasette registers its default plugins), so they are there whether or
   not entry points are read;
2. third-party modules in the ``harmonia`` entry-point group, unless
   ``HARMONIA_DISABLE_PLUGIN_AUTOLOAD`` is set;
3. modules registered by hand (:meth:`Registry.register`; tests do this).

Everything that can go wrong while loading one plugin (importing its module, registering its
hooks with pluggy, calling them, checking the classes they return) is recorded as that
plugin's :class:`Failure` and never stops the others; only a recipe that names the plugin fails,
with the reason. Names are unique per kind: two plugins of one kind and name are a clash,
reported with both distributions. The environment can narrow what is loaded (see
:class:`Selection`).
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Literal

import pluggy
from pydantic import BaseModel

from harmonia import __version__, hookspecs
from harmonia.api import PLUGIN_BASES, PLUGIN_KINDS, Evaluator, Params, Plugin, PluginKind
from harmonia.errors import PluginError, one_line
from harmonia.plugin_params import InvalidParams, key_path, validate_params

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "harmonia"
#: set to a non-empty value to skip third-party entry points (first-party plugins still register)
DISABLE_AUTOLOAD_ENV = "HARMONIA_DISABLE_PLUGIN_AUTOLOAD"
#: comma-separated names: when set, the only third-party plugins registered (first-party ones always are)
ALLOW_ENV = "HARMONIA_PLUGINS"
#: comma-separated names of plugins (first- or third-party) to leave out
DISABLE_ENV = "HARMONIA_DISABLE_PLUGINS"

#: harmonia's own plugin modules, registered directly; each is named for the plugin it provides
FIRST_PARTY_MODULES = (
    "harmonia_plugins.cohorts.mnms",
    "harmonia_plugins.cohorts.mri_breast",
    "harmonia_plugins.cohorts.mri_prostate",
    "harmonia_plugins.cohorts.ct_lidc",
    "harmonia_plugins.cohorts.ct_hnscc",
    "harmonia_plugins.cohorts.ct_kidney",
    "harmonia_plugins.cohorts.ct_oropharyngeal",
    "harmonia_plugins.cohorts.xray_chest",
    "harmonia_plugins.cohorts.ct_recon",
    "harmonia_plugins.models.unet2d",
    "harmonia_plugins.models.mrnet2d",
    "harmonia_plugins.models.nodulex",
    "harmonia_plugins.models.densenet121",
    "harmonia_plugins.mitigations.dann",
    "harmonia_plugins.mitigations.gaussian_noise",
    "harmonia_plugins.mitigations.target_mixing",
    "harmonia_plugins.mitigations.kornia_intensity",
    "harmonia_plugins.mitigations.kornia_spatial",
    "harmonia_plugins.mitigations.histogram_standardization",
    "harmonia_plugins.mitigations.histogram_matching",
    "harmonia_plugins.mitigations.ct_standardizer",
    "harmonia_plugins.evaluators.dice",
    "harmonia_plugins.evaluators.auc",
    "harmonia_plugins.evaluators.accuracy",
    "harmonia_plugins.evaluators.volume_agreement",
    "harmonia_plugins.evaluators.image_quality",
    "harmonia_plugins.evaluators.vendor_probe",
)

Origin = Literal["first-party", "entry point", "by hand"]


@dataclass(frozen=True)
class Source:
    """Where a plugin comes from: the plugin module, its distribution, and how it was found."""

    module: str
    distribution: str
    version: str
    origin: Origin = "entry point"

    def __str__(self) -> str:
        return f"{self.distribution} {self.version} ({self.module})"


@dataclass(frozen=True)
class Entry:
    """One registered plugin class and its source."""

    kind: PluginKind
    name: str
    cls: type[Plugin]
    source: Source

    @property
    def description(self) -> str:
        return self.cls.description()


@dataclass(frozen=True)
class Failure:
    """A plugin that could not be imported, registered or checked, and why.

    ``names`` are every name a recipe may use for it: the plugin's own name when its class got
    that far, the entry point's name, the module's. ``kind`` is the kind whose hook failed, or
    None when the whole module failed.
    """

    names: tuple[str, ...]
    source: Source
    error: str
    kind: PluginKind | None = None

    @property
    def name(self) -> str:
        return self.names[0]

    def matches(self, kind: PluginKind, name: str) -> bool:
        return name in self.names and self.kind in (None, kind)


@dataclass(frozen=True)
class LeftOut:
    """A plugin (or a plugin module, by the name it was found under) the environment left out."""

    name: str
    kind: PluginKind | None
    reason: str


@dataclass(frozen=True)
class Selection:
    """Which plugins the environment asks for, read from :data:`DISABLE_AUTOLOAD_ENV`,
    :data:`ALLOW_ENV` and :data:`DISABLE_ENV`. Modules registered by hand are always taken."""

    autoload: bool = True
    allowed: frozenset[str] | None = None  # None: every third-party plugin
    disabled: frozenset[str] = frozenset()

    @classmethod
    def from_environment(cls) -> Selection:
        allowed = _names_in(os.environ.get(ALLOW_ENV, ""))
        return cls(
            autoload=not os.environ.get(DISABLE_AUTOLOAD_ENV),
            allowed=allowed or None,
            disabled=_names_in(os.environ.get(DISABLE_ENV, "")),
        )

    def why_not_module(self, names: tuple[str, ...], origin: Origin) -> str | None:
        """Why a module found under ``names`` is not even imported, or None."""
        if origin != "by hand" and self.disabled.intersection(names):
            return f"disabled by {DISABLE_ENV}"
        return None

    def why_not_plugin(self, name: str, origin: Origin) -> str | None:
        """Why the plugin ``name`` is not registered, or None."""
        if origin == "by hand":
            return None
        if name in self.disabled:
            return f"disabled by {DISABLE_ENV}"
        if origin == "entry point" and self.allowed is not None and name not in self.allowed:
            return f"not in {ALLOW_ENV}"
        return None


def _names_in(text: str) -> frozenset[str]:
    return frozenset(part.strip() for part in text.split(",") if part.strip())


def check_plugin_class(kind: PluginKind, obj: object) -> str:
    """The plugin name of ``obj``, one of the things the hook of ``kind`` returned; a TypeError
    saying what is wrong when it is not a usable plugin class of that kind."""
    hook = hookspecs.HOOK_OF_KIND[kind]
    base = PLUGIN_BASES[kind]
    if not isinstance(obj, type):
        raise TypeError(f"{hook}() returned {obj!r}, not a class")
    label = obj.__qualname__
    declared = getattr(obj, "kind", None)
    if not issubclass(obj, base):
        if issubclass(obj, Plugin) and declared in PLUGIN_KINDS:
            right_hook = hookspecs.HOOK_OF_KIND[declared]
            raise TypeError(
                f"{label} is a {declared} plugin, but {hook}() returns {kind} plugins; return it from {right_hook}()"
            )
        raise TypeError(f"{label} is not a subclass of harmonia.api.{base.__name__}")
    if declared != kind:
        raise TypeError(f"{label}.kind is {declared!r}, but {hook}() returns {kind} plugins")
    name = getattr(obj, "name", None)
    if not isinstance(name, str) or not name.strip():
        raise TypeError(f"{label} has no `name` (the class attribute recipes call it by)")
    params = getattr(obj, "Params", None)
    if not (isinstance(params, type) and issubclass(params, BaseModel)):
        raise TypeError(f"{label}.Params is {params!r}, not a pydantic model (subclass harmonia.api.Params)")
    if kind == "evaluator":
        method = "evaluate_cell" if obj.scope == "cell" else "evaluate"
        if getattr(obj, method) is getattr(Evaluator, method):
            raise TypeError(f"{label} has scope {obj.scope!r} but does not implement {method}()")
    return name


class Registry:
    """The installed plugins by kind and name, the ones that failed, the name clashes and the
    ones the environment left out."""

    def __init__(self, selection: Selection | None = None) -> None:
        self.selection = selection or Selection()
        self._pm = pluggy.PluginManager(hookspecs.PROJECT)
        self._pm.add_hookspecs(hookspecs)
        self._entries: dict[tuple[str, str], Entry] = {}
        self.failures: list[Failure] = []
        self.clashes: dict[tuple[str, str], list[Entry]] = {}
        self.left_out: list[LeftOut] = []
        #: modules registered more than once: (name, why); harmless, but shown by `harmonia list`
        self.registered_twice: list[tuple[str, str]] = []
        #: names of the modules registered by hand (:meth:`register`), which a worker process imports again
        self.by_hand: list[str] = []

    # -- building ---------------------------------------------------------------------------

    @classmethod
    def from_entry_points(cls, extra: Iterable[object] = ()) -> Registry:
        """The first-party plugins, every third-party one in the ``harmonia`` entry-point group
        (as the environment selects), then the modules in ``extra``, registered by hand."""
        registry = cls(Selection.from_environment())
        for module_name in FIRST_PARTY_MODULES:
            source = Source(module_name, "harmonia", __version__, "first-party")
            registry._load(lambda name=module_name: importlib.import_module(name), source, (_short(module_name),))
        if registry.selection.autoload:
            for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.name, e.value)):
                if (
                    ep.module in FIRST_PARTY_MODULES
                ):  # metadata of an older harmonia, or an editable install not yet rebuilt
                    continue
                registry._load(ep.load, _entry_point_source(ep), (ep.name,))
        for module in extra:
            registry.register(module)
        return registry

    def register(self, module: object, source: Source | None = None) -> None:
        """Register a plugin module (or any object with hook implementations) and collect its classes.

        Registering a module that is already registered (say, one that is also installed through
        an entry point) changes nothing. Whatever fails is recorded in :attr:`failures`.
        """
        module_name = getattr(module, "__name__", repr(module))
        if source is None:
            source = Source(module_name, "local", "-", "by hand")
            self.by_hand.append(module_name)
        self._register(module, source, (_short(module_name),))

    def _load(self, load: Callable[[], object], source: Source, names: tuple[str, ...]) -> None:
        """Import a plugin module with ``load`` and register it, as the environment allows."""
        reason = self.selection.why_not_module(names, source.origin)
        if reason:
            self.left_out.append(LeftOut(names[0], None, reason))
            return
        try:
            module = load()
        except Exception as exc:  # a broken plugin must not break the others
            self._fail(names, source, one_line(exc))
            return
        self._register(module, source, names)

    def _register(self, module: object, source: Source, names: tuple[str, ...]) -> None:
        if self._pm.is_registered(module):
            self.registered_twice.append(
                (
                    names[0],
                    f"module {source.module} registered again (from {source}); the second registration changed nothing",
                )
            )
            return
        pm_name = source.module if not self._pm.has_plugin(source.module) else f"{source.module}@{source.distribution}"
        try:
            self._pm.register(module, name=pm_name)
        except Exception as exc:  # pluggy: a hook whose arguments differ from its spec, a name taken...
            if self._pm.is_registered(module):  # pluggy keeps what it registered before the failing hook
                self._pm.unregister(module)
            self._fail(names, source, one_line(exc))
            return
        for caller in self._pm.get_hookcallers(module) or []:
            if caller.spec is None:
                self._fail(names, source, _unknown_hook(caller.name))
        for kind in PLUGIN_KINDS:
            hook = getattr(self._pm.hook, hookspecs.HOOK_OF_KIND[kind])
            for impl in hook.get_hookimpls():
                if impl.plugin is module:
                    self._collect(kind, impl.function, source, names)

    def _collect(self, kind: PluginKind, hook: Callable[[], Any], source: Source, names: tuple[str, ...]) -> None:
        """Call one hook of a module and add each class it returns that passes the checks."""
        hook_name = hookspecs.HOOK_OF_KIND[kind]
        try:
            returned = hook()
        except Exception as exc:
            self._fail(names, source, f"{hook_name}() raised {one_line(exc)}", kind)
            return
        if not isinstance(returned, (list, tuple)):
            self._fail(names, source, f"{hook_name}() returned {type(returned).__name__}, not a list of classes", kind)
            return
        for obj in returned:
            try:
                name = check_plugin_class(kind, obj)
            except TypeError as exc:
                own = getattr(obj, "name", None)
                self._fail((own, *names) if isinstance(own, str) and own else names, source, str(exc), kind)
                continue
            reason = self.selection.why_not_plugin(name, source.origin)
            if reason:
                self.left_out.append(LeftOut(name, kind, reason))
            else:
                self._add(Entry(kind, name, obj, source))

    def _fail(self, names: tuple[str, ...], source: Source, error: str, kind: PluginKind | None = None) -> None:
        logger.debug("plugin %s from %s failed: %s", names[0], source, error)
        self.failures.append(Failure(tuple(dict.fromkeys(names)), source, error, kind))

    def _add(self, entry: Entry) -> None:
        key = (entry.kind, entry.name)
        if key in self.clashes:
            self.clashes[key].append(entry)
        elif key in self._entries:
            if self._entries[key].cls is not entry.cls:
                self.clashes[key] = [self._entries.pop(key), entry]
        else:
            self._entries[key] = entry

    # -- lookup -----------------------------------------------------------------------------

    def entries(self, kind: PluginKind | None = None, pattern: str = "*") -> list[Entry]:
        """Registered plugins, sorted by kind and name, optionally of one kind and matching a glob."""
        found = [
            e for (k, n), e in self._entries.items() if (kind is None or k == kind) and fnmatch.fnmatchcase(n, pattern)
        ]
        return sorted(found, key=lambda e: (PLUGIN_KINDS.index(e.kind), e.name))

    def names(self, kind: PluginKind) -> list[str]:
        return [e.name for e in self.entries(kind)]

    def is_plugin(self, kind: PluginKind, name: str) -> bool:
        return (kind, name) in self._entries

    def get(self, kind: PluginKind, name: str) -> Entry:
        """The plugin ``name`` of ``kind``; a PluginError that says why when there is none."""
        key = (kind, name)
        if key in self._entries:
            return self._entries[key]
        if key in self.clashes:
            sources = [str(e.source) for e in self.clashes[key]]
            providers = f"{', '.join(sources[:-1])} and {sources[-1]}"
            raise PluginError(f"{kind} plugin '{name}' is provided by {providers}; uninstall all but one")
        failure = next((f for f in self.failures if f.matches(kind, name)), None)
        if failure is not None:
            raise PluginError(f"{kind} plugin '{name}' failed to load from {failure.source}: {failure.error}")
        left_out = next((s for s in self.left_out if s.name == name and s.kind in (None, kind)), None)
        if left_out is not None:
            raise PluginError(f"{kind} plugin '{name}' is not loaded: {left_out.reason}")
        message = f"unknown {kind} plugin '{name}'"
        close = difflib.get_close_matches(name, self.names(kind), n=1)
        if close:
            message += f"; did you mean '{close[0]}'?"
        elif self.names(kind):
            message += f" (installed: {', '.join(self.names(kind))})"
        if self.failures:
            message += f"; {len(self.failures)} plugin(s) failed to load, see `harmonia list`"
        raise PluginError(message)

    def create(self, kind: PluginKind, name: str, params: Mapping[str, Any] | Params | None, *args: Any) -> Any:
        """An instance of plugin ``name`` of ``kind``, built as ``cls(params, *args)``.

        ``params`` is a mapping, validated here by the plugin's parameter model, or an instance of
        that model (a recipe's, validated when the recipe was), used as it is. Any problem is a
        one-line :class:`PluginError` naming the plugin, the parameter's key path and the rule.
        """
        entry = self.get(kind, name)
        try:
            validated = validate_params(entry.cls.Params, params)
        except InvalidParams as exc:
            raise PluginError(f"{kind} plugin '{name}': {key_path(('params', *exc.loc))}: {exc.rule}") from None
        return entry.cls(validated, *args)


def _short(module_name: str) -> str:
    """``harmonia_plugins.cohorts.mnms`` -> ``mnms``: the name a module is known by in messages."""
    return module_name.rpartition(".")[2]


def _entry_point_source(ep: EntryPoint) -> Source:
    dist = ep.dist
    if dist is None:
        return Source(ep.module, "unknown", "?")
    return Source(ep.module, dist.metadata["Name"], dist.version)


def _unknown_hook(name: str) -> str:
    message = f"{name} is not a harmonia hook"
    close = difflib.get_close_matches(name, list(hookspecs.HOOK_OF_KIND.values()), n=1)
    return message + (f"; did you mean {close[0]}?" if close else "")


_default: Registry | None = None


def default_registry() -> Registry:
    """The process-wide registry (built on first use, then kept for the process)."""
    global _default
    if _default is None:
        _default = Registry.from_entry_points()
    return _default


def reset_default_registry() -> None:
    """Forget the process-wide registry so that the next use rebuilds it (after an install, a change of
    the environment's plugin variables, in tests)."""
    global _default
    _default = None
