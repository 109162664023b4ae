"""Plugin discovery through the `harmonia` entry-point group, failures and clashes."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from harmonia.errors import PluginError
from harmonia.registry import DISABLE_AUTOLOAD_ENV, Registry

PLUGIN_MODULE = '''
from harmonia import hookimpl
from harmonia.api import Evaluator, Metric


class {cls}(Evaluator):
    """{doc}"""

    name = "{name}"

    def evaluate(self, predictions):
        return [Metric("{name}", 1.0, 1)]


@hookimpl
def harmonia_evaluators():
    return [{cls}]
'''


def make_distribution(site: Path, dist: str, module: str, body: str, entry_name: str) -> None:
    """Write a throw-away installed distribution (dist-info + module) that importlib.metadata can see."""
    info = site / f"{dist.replace('-', '_')}-0.3.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(f"[harmonia]\n{entry_name} = {module}\n")
    (site / f"{module}.py").write_text(textwrap.dedent(body))


@pytest.fixture
def site(tmp_path, monkeypatch):
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    for name in [m for m in sys.modules if m.startswith("thirdparty_")]:
        del sys.modules[name]


def test_first_party_plugins_are_found_through_entry_points():
    registry = Registry.from_entry_points()
    found = {(e.kind, e.name): e.source.distribution for e in registry.entries()}
    for key in [("cohort", "mnms"), ("model", "unet2d"), ("mitigation", "dann"), ("evaluator", "dice")]:
        assert found.get(key) == "harmonia", key


def test_a_third_party_distribution_is_discovered(site):
    make_distribution(site, "harmonia-extra", "thirdparty_extra", PLUGIN_MODULE.format(cls="Sens", name="sensitivity", doc="Sensitivity of a test."), "sensitivity")
    registry = Registry.from_entry_points()
    entry = registry.get("evaluator", "sensitivity")
    assert entry.source.distribution == "harmonia-extra" and entry.source.version == "0.3"
    assert entry.description == "Sensitivity of a test."


def test_a_broken_plugin_is_reported_and_does_not_break_the_others(site):
    make_distribution(site, "harmonia-broken", "thirdparty_broken", "import not_a_module_anywhere\n", "broken_thing")
    registry = Registry.from_entry_points()
    assert registry.is_plugin("model", "unet2d")
    [failure] = [f for f in registry.failures if f.entry_point == "broken_thing"]
    assert failure.source.distribution == "harmonia-broken"
    assert "not_a_module_anywhere" in failure.error
    with pytest.raises(PluginError, match="broken_thing.*failed to load.*harmonia-broken.*not_a_module_anywhere"):
        registry.get("evaluator", "broken_thing")


def test_a_hook_that_raises_is_reported(site):
    make_distribution(site, "harmonia-badhook", "thirdparty_badhook",
                      "from harmonia import hookimpl\n\n@hookimpl\ndef harmonia_models():\n    raise RuntimeError('boom')\n", "badhook")
    registry = Registry.from_entry_points()
    assert any(f.entry_point == "badhook" and "boom" in f.error for f in registry.failures)


def test_a_name_clash_names_both_distributions(site):
    make_distribution(site, "harmonia-one", "thirdparty_one", PLUGIN_MODULE.format(cls="A", name="kappa", doc="One."), "kappa_one")
    make_distribution(site, "harmonia-two", "thirdparty_two", PLUGIN_MODULE.format(cls="B", name="kappa", doc="Two."), "kappa_two")
    registry = Registry.from_entry_points()
    with pytest.raises(PluginError, match="harmonia-one.*harmonia-two"):
        registry.get("evaluator", "kappa")
    assert not registry.is_plugin("evaluator", "kappa")


def test_unknown_names_suggest_the_closest(registry):
    with pytest.raises(PluginError, match="unknown mitigation plugin 'dan'; did you mean 'dann'"):
        registry.get("mitigation", "dan")


def test_autoload_can_be_disabled(monkeypatch):
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    assert Registry.from_entry_points().entries() == []


def test_glob_filtering(registry):
    assert [e.name for e in registry.entries("evaluator", "pixel*")] == ["pixel_accuracy"]
