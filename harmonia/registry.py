"""Plugin discovery and lookup: entry points in the ``harmonia`` group, loaded through pluggy.

A plugin module that fails to import, or whose hook fails, is recorded with its error and does
not break the others; only a recipe that names it fails, with that reason. Two plugins of the
same kind and name are a clash, reported with both providing distributions.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Iterable

import pluggy

from harmonia import hookspecs
from harmonia.api import PLUGIN_BASES, PLUGIN_KINDS, Plugin, PluginKind
from harmonia.errors import PluginError, one_line

ENTRY_POINT_GROUP = "harmonia"
#: set to a non-empty value to skip entry-point discovery (plugins can still be registered by hand)
DISABLE_AUTOLOAD_ENV = "HARMONIA_DISABLE_PLUGIN_AUTOLOAD"


@dataclass(frozen=True)
class Source:
    """Where a plugin comes from: the plugin module and its distribution."""

    module: str
    distribution: str
    version: str

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
    """A plugin module that could not be loaded or whose hook failed."""

    entry_point: str
    source: Source
    error: str


class Registry:
    """The installed plugins by kind and name, plus the ones that failed and the name clashes."""

    def __init__(self) -> None:
        self._pm = pluggy.PluginManager(hookspecs.PROJECT)
        self._pm.add_hookspecs(hookspecs)
        self._entries: dict[tuple[str, str], Entry] = {}
        self.failures: list[Failure] = []
        self.clashes: dict[tuple[str, str], list[Entry]] = {}

    # -- building ---------------------------------------------------------------------------

    @classmethod
    def from_entry_points(cls, extra: Iterable[ModuleType] = ()) -> Registry:
        """A registry of every plugin in the ``harmonia`` entry-point group (unless disabled), plus ``extra``."""
        registry = cls()
        if not os.environ.get(DISABLE_AUTOLOAD_ENV):
            for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
                registry._load_entry_point(ep)
        for module in extra:
            registry.register(module)
        return registry

    def _load_entry_point(self, ep: EntryPoint) -> None:
        dist = ep.dist
        source = Source(
            ep.value,
            dist.metadata["Name"] if dist is not None else "unknown",
            dist.version if dist is not None else "?",
        )
        try:
            module = ep.load()
        except Exception as exc:  # a broken plugin must not break the others
            self.failures.append(Failure(ep.name, source, one_line(exc)))
            return
        self.register(module, source, name=ep.name)

    def register(self, module: object, source: Source | None = None, name: str | None = None) -> None:
        """Register a plugin module (or any object with hook implementations) and collect its classes."""
        if source is None:
            module_name = getattr(module, "__name__", repr(module))
            source = Source(module_name, "local", "-")
        plugin_name = name or source.module
        if self._pm.has_plugin(plugin_name):
            plugin_name = f"{plugin_name}@{source.distribution}"
        self._pm.register(module, name=plugin_name)
        for kind in PLUGIN_KINDS:
            hook = getattr(self._pm.hook, hookspecs.HOOK_OF_KIND[kind])
            for impl in hook.get_hookimpls():
                if impl.plugin is not module:
                    continue
                try:
                    classes = list(impl.function() or [])
                    for plugin_cls in classes:
                        self._add(kind, plugin_cls, source)
                except Exception as exc:
                    self.failures.append(Failure(plugin_name, source, one_line(exc)))

    def _add(self, kind: PluginKind, plugin_cls: type, source: Source) -> None:
        base = PLUGIN_BASES[kind]
        if not (isinstance(plugin_cls, type) and issubclass(plugin_cls, base)):
            raise TypeError(f"{hookspecs.HOOK_OF_KIND[kind]} returned {plugin_cls!r}, not a {base.__name__} subclass")
        name = getattr(plugin_cls, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"{plugin_cls.__name__} has no `name`")
        entry = Entry(kind, name, plugin_cls, source)
        key = (kind, name)
        if key in self.clashes:
            self.clashes[key].append(entry)
        elif key in self._entries:
            if self._entries[key].cls is plugin_cls:
                return
            self.clashes[key] = [self._entries.pop(key), entry]
        else:
            self._entries[key] = entry

    # -- lookup -----------------------------------------------------------------------------

    def entries(self, kind: PluginKind | None = None, pattern: str = "*") -> list[Entry]:
        """Registered plugins, sorted by kind and name, optionally of one kind and matching a glob."""
        found = [
            e
            for (k, n), e in self._entries.items()
            if (kind is None or k == kind) and fnmatch.fnmatchcase(n, pattern)
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
            sources = " and ".join(str(e.source) for e in self.clashes[key])
            raise PluginError(f"{kind} plugin '{name}' is provided twice, by {sources}; uninstall one")
        for failure in self.failures:
            if failure.entry_point == name:
                raise PluginError(
                    f"{kind} plugin '{name}' failed to load from {failure.source}: {failure.error}"
                )
        message = f"unknown {kind} plugin '{name}'"
        close = difflib.get_close_matches(name, self.names(kind), n=1)
        if close:
            message += f"; did you mean '{close[0]}'?"
        elif self.names(kind):
            message += f" (installed: {', '.join(self.names(kind))})"
        if self.failures:
            message += f"; {len(self.failures)} plugin module(s) failed to load, see `harmonia list`"
        raise PluginError(message)


_default: Registry | None = None


def default_registry() -> Registry:
    """The process-wide registry built from installed entry points (built on first use)."""
    global _default
    if _default is None:
        _default = Registry.from_entry_points()
    return _default


def reset_default_registry() -> None:
    """Forget the process-wide registry so the next use rediscovers entry points (after installs, in tests)."""
    global _default
    _default = None
