"""Plugins point only down: a first-party plugin imports no other plugin's module, and the core imports no plugin.

The one import allowed inside ``plugins/`` is a cohort's own synthetic twin: module ``X`` (or
``X_twin`` itself) may import ``X_twin``. What two plugins share belongs in the core.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import harmonia
import harmonia_plugins

PLUGINS = Path(harmonia_plugins.__file__).parent
CORE = Path(harmonia.__file__).parent


def module_name(path: Path, top: Path, package: str) -> str:
    """The dotted name of the module at ``path`` inside the package ``package`` rooted at ``top``."""
    parts = path.relative_to(top).with_suffix("").parts
    return ".".join((package, *parts[:-1])) if parts[-1] == "__init__" else ".".join((package, *parts))


def imported(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module name ``source`` (the code of ``module``) imports, relative imports resolved;
    ``from a import b`` counts as importing ``a.b`` as well as ``a``."""
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)] if node.level else []
            origin = ".".join([*base, *([node.module] if node.module else [])])
            names.add(origin)
            names |= {f"{origin}.{alias.name}" for alias in node.names}
    return names


def foreign_plugin_imports(source: str, module: str, is_package: bool = False) -> list[str]:
    """The ``harmonia_plugins`` modules ``module`` imports other than itself, its own ``_twin`` sibling and the
    (empty) packages above it."""
    own = {module, f"{module.removesuffix('_twin')}_twin"}
    parts = module.split(".")
    packages = {".".join(parts[:n]) for n in range(1, len(parts))}
    return sorted(
        name
        for name in imported(source, module, is_package)
        if name.split(".")[0] == "harmonia_plugins"
        and name not in own | packages
        # ``from harmonia_plugins.cohorts.mnms_twin import write_twin`` also names ``...mnms_twin.write_twin``
        and name.rpartition(".")[0] not in own
    )


def plugin_modules() -> list[Path]:
    return sorted(PLUGINS.rglob("*.py"))


@pytest.mark.parametrize("path", plugin_modules(), ids=lambda p: str(p.relative_to(PLUGINS)))
def test_a_plugin_imports_no_other_plugin(path):
    module = module_name(path, PLUGINS, "harmonia_plugins")
    assert foreign_plugin_imports(path.read_text(), module, path.name == "__init__.py") == []


def test_the_core_imports_no_plugin():
    offenders = {}
    for path in sorted(CORE.rglob("*.py")):
        module = module_name(path, CORE, "harmonia")
        names = imported(path.read_text(), module, path.name == "__init__.py")
        offenders[str(path.relative_to(CORE))] = sorted(n for n in names if n.split(".")[0] == "harmonia_plugins")
    assert {path: names for path, names in offenders.items() if names} == {}


@pytest.mark.parametrize(
    "source",
    [
        "from harmonia_plugins.cohorts.ct_kidney import SliceParams",
        "from harmonia_plugins.cohorts.ct_kidney_twin import abdomen",
        "from .ct_hnscc import ContouredCtCohort",
        "from . import ct_hnscc",
        "import harmonia_plugins.cohorts.ct_hnscc_twin",
        "from harmonia_plugins.cohorts import mnms",
    ],
)
def test_the_check_catches_a_sibling_import(source):
    assert foreign_plugin_imports(source, "harmonia_plugins.cohorts.ct_recon")


@pytest.mark.parametrize(
    "module, source",
    [
        ("harmonia_plugins.cohorts.ct_recon", "from harmonia_plugins.cohorts.ct_recon_twin import write_twin"),
        ("harmonia_plugins.cohorts.ct_recon", "from .ct_recon_twin import write_twin"),
        ("harmonia_plugins.cohorts.ct_recon", "from harmonia_plugins.cohorts import ct_recon_twin"),
        ("harmonia_plugins.cohorts.ct_recon_twin", "from harmonia.synth.abdomen import abdomen"),
    ],
)
def test_a_cohort_may_import_its_own_twin_and_the_core(module, source):
    assert foreign_plugin_imports(source, module) == []
