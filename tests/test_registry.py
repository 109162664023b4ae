"""The registry: first-party plugins registered directly, third-party ones through the `harmonia`
entry-point group, every loading failure kept to its own plugin, clashes, the environment's
selection, and the one factory, `Registry.create`."""

from __future__ import annotations

import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import toy_plugins
import yaml
from conftest import TOY_RECIPE

import harmonia
from harmonia import registry as registry_module
from harmonia.api import Task
from harmonia.cli import main
from harmonia.errors import PluginError
from harmonia.registry import ALLOW_ENV, DISABLE_AUTOLOAD_ENV, DISABLE_ENV, Registry, reset_default_registry

FIRST_PARTY = [("cohort", "mnms"), ("model", "unet2d"), ("mitigation", "dann"), ("evaluator", "dice")]

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

HOOK_WITH_ARGUMENTS = """
from harmonia import hookimpl

@hookimpl
def harmonia_evaluators(task):
    return []
"""

CLASS_WITHOUT_NAME = '''
from harmonia import hookimpl
from harmonia.api import Evaluator, Metric


class Nameless(Evaluator):
    """Forgot its name."""

    def evaluate(self, predictions):
        return []


class Kept(Evaluator):
    """A good metric beside a bad one."""

    name = "kept_metric"

    def evaluate(self, predictions):
        return [Metric("kept_metric", 1.0, 1)]


@hookimpl
def harmonia_evaluators():
    return [Nameless, Kept]
'''

WRONG_KIND = '''
from harmonia import hookimpl
from harmonia.api import Model


class WrongKind(Model):
    """A model handed in as an evaluator."""

    name = "wrongkind"


@hookimpl
def harmonia_evaluators():
    return [WrongKind]
'''

PARAMS_NOT_PYDANTIC = '''
from harmonia import hookimpl
from harmonia.api import Evaluator


class BadParams(Evaluator):
    """Parameters as a plain class."""

    name = "badparams"

    class Params:
        threshold = 0.5

    def evaluate(self, predictions):
        return []


@hookimpl
def harmonia_evaluators():
    return [BadParams]
'''

MISSPELT_HOOK = """
from harmonia import hookimpl

@hookimpl
def harmonia_evaluator():
    return []
"""


def make_distribution(site: Path, dist: str, module: str, body: str, *entry_names: str) -> None:
    """Write a throw-away installed distribution (dist-info + module) that importlib.metadata can see,
    with one entry point to ``module`` per name in ``entry_names``."""
    info = site / f"{dist.replace('-', '_')}-0.3.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text("[harmonia]\n" + "".join(f"{name} = {module}\n" for name in entry_names))
    (site / f"{module}.py").write_text(textwrap.dedent(body))


def evaluator_module(name: str, doc: str = "A metric.") -> str:
    return PLUGIN_MODULE.format(cls=name.title().replace("_", ""), name=name, doc=doc)


@pytest.fixture(autouse=True)
def plain_environment(monkeypatch):
    """No plugin selection from the caller's environment, and a fresh process-wide registry after each test."""
    for variable in (ALLOW_ENV, DISABLE_ENV, DISABLE_AUTOLOAD_ENV):
        monkeypatch.delenv(variable, raising=False)
    reset_default_registry()
    yield
    reset_default_registry()


@pytest.fixture
def site(tmp_path, monkeypatch):
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    for name in [m for m in sys.modules if m.startswith("thirdparty_")]:
        del sys.modules[name]


def installed(monkeypatch) -> Registry:
    """The registry of what is installed now plus the toy plugins, as the process-wide one (what the CLI uses)."""
    registry = Registry.from_entry_points(extra=[toy_plugins])
    monkeypatch.setattr(registry_module, "_default", registry)
    return registry


def write_recipe(tmp_path: Path, evaluate: list[str]) -> str:
    path = tmp_path / f"recipe_{'_'.join(evaluate)}.yaml"
    path.write_text(yaml.safe_dump({**TOY_RECIPE, "evaluate": evaluate}))
    return str(path)


# -- discovery ----------------------------------------------------------------------------------


def test_first_party_plugins_register_directly_with_harmonias_version():
    registry = Registry.from_entry_points()
    for kind, name in FIRST_PARTY:
        source = registry.get(kind, name).source
        assert (source.distribution, source.version, source.origin) == ("harmonia", harmonia.__version__, "first-party")


def test_a_third_party_distribution_is_discovered(site):
    make_distribution(
        site,
        "harmonia-extra",
        "thirdparty_extra",
        evaluator_module("sensitivity", "Sensitivity of a test."),
        "sensitivity",
    )
    registry = Registry.from_entry_points()
    entry = registry.get("evaluator", "sensitivity")
    assert (entry.source.distribution, entry.source.version, entry.source.origin) == (
        "harmonia-extra",
        "0.3",
        "entry point",
    )
    assert entry.description == "Sensitivity of a test."


# -- one broken plugin stays its own failure ----------------------------------------------------


@dataclass(frozen=True)
class Broken:
    """A broken third-party plugin: its module, the entry-point name, the name a recipe uses and the reason."""

    id: str
    body: str
    entry_name: str
    recipe_name: str
    reason: str


BROKEN = [
    Broken(
        "import",
        "import not_a_module_anywhere\n",
        "broken_thing",
        "broken_thing",
        "ModuleNotFoundError: No module named 'not_a_module_anywhere'",
    ),
    Broken(
        "hook-raises",
        "from harmonia import hookimpl\n\n@hookimpl\ndef harmonia_evaluators():\n    raise RuntimeError('boom')\n",
        "badhook",
        "badhook",
        r"harmonia_evaluators\(\) raised RuntimeError: boom",
    ),
    Broken(
        "hook-arguments", HOOK_WITH_ARGUMENTS, "argful", "argful", "PluginValidationError: .*Argument\\(s\\) {'task'}"
    ),
    Broken(
        "misspelt-hook",
        MISSPELT_HOOK,
        "singular",
        "singular",
        "harmonia_evaluator is not a harmonia hook; did you mean harmonia_evaluators\\?",
    ),
    Broken("no-name", CLASS_WITHOUT_NAME, "nameless", "nameless", "Nameless has no `name`"),
    Broken(
        "wrong-kind",
        WRONG_KIND,
        "wk_entry",
        "wrongkind",
        r"WrongKind is a model plugin, but harmonia_evaluators\(\) returns evaluator plugins; "
        r"return it from harmonia_models\(\)",
    ),
    Broken(
        "params-not-pydantic",
        PARAMS_NOT_PYDANTIC,
        "bp_entry",
        "badparams",
        "BadParams.Params is .*, not a pydantic model",
    ),
]


@pytest.mark.parametrize("broken", BROKEN, ids=lambda b: b.id)
def test_a_broken_plugin_fails_alone(broken, site, tmp_path, monkeypatch, capsys):
    make_distribution(
        site, "harmonia-broken", f"thirdparty_{broken.id.replace('-', '_')}", broken.body, broken.entry_name
    )
    registry = installed(monkeypatch)
    assert all(registry.is_plugin(kind, name) for kind, name in FIRST_PARTY)

    assert main(["list"]) == 0
    failed = capsys.readouterr().out.split("Failed to load")[1]
    assert re.search(
        rf"\n  {broken.recipe_name} .* from harmonia-broken 0\.3 \(thirdparty_\w+\) .*{broken.reason}", failed
    )

    quick = ["--set", "train.seeds=1", "--set", "train.epochs=1"]
    assert main(["run", write_recipe(tmp_path, ["pixel_accuracy"]), "--out", str(tmp_path / "ok"), *quick]) == 0
    assert (tmp_path / "ok" / "results.csv").exists()
    capsys.readouterr()

    assert main(["run", write_recipe(tmp_path, [broken.recipe_name]), "--out", str(tmp_path / "no"), *quick]) == 2
    assert not (tmp_path / "no").exists()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert re.search(
        rf"evaluate\[0\]\.plugin: evaluator plugin '{broken.recipe_name}' failed to load "
        rf"from harmonia-broken 0\.3 .*{broken.reason}",
        err,
    )


def test_a_bad_class_does_not_hide_the_good_ones_beside_it(site):
    make_distribution(site, "harmonia-mixed", "thirdparty_mixed", CLASS_WITHOUT_NAME, "nameless")
    registry = Registry.from_entry_points()
    assert registry.get("evaluator", "kept_metric").source.distribution == "harmonia-mixed"
    [failure] = [f for f in registry.failures if f.source.distribution == "harmonia-mixed"]
    assert failure.kind == "evaluator" and "Nameless has no `name`" in failure.error


def test_a_hook_with_a_wrong_argument_list_leaves_nothing_half_registered(site):
    body = HOOK_WITH_ARGUMENTS + "\n\n@hookimpl\ndef harmonia_cohorts():\n    return []\n"
    make_distribution(site, "harmonia-half", "thirdparty_half", body, "half")
    registry = Registry.from_entry_points()
    assert not any(impl.plugin_name == "thirdparty_half" for impl in registry._pm.hook.harmonia_cohorts.get_hookimpls())
    assert [f.name for f in registry.failures] == ["half"]


# -- a module registered twice ------------------------------------------------------------------


def test_two_entry_points_to_one_module_register_it_once(site, monkeypatch, capsys):
    make_distribution(
        site, "harmonia-twice", "thirdparty_twice", evaluator_module("twice_metric"), "twice_metric", "twice_alias"
    )
    registry = installed(monkeypatch)
    assert registry.get("evaluator", "twice_metric").source.distribution == "harmonia-twice"
    assert registry.failures == [] and registry.clashes == {}
    assert main(["list", "--kind", "evaluator"]) == 0
    out = capsys.readouterr().out
    listed, notes = out.split("Registered twice")
    assert listed.count("twice_metric") == 1  # loaded once
    assert "module thirdparty_twice registered again" in notes and "harmonia-twice" in notes


def test_registering_by_hand_a_module_that_is_also_installed_changes_nothing(site):
    make_distribution(site, "harmonia-handy", "thirdparty_handy", evaluator_module("handy_metric"), "handy_metric")
    import thirdparty_handy  # the testing recipe of docs/plugins.md: register the plugin module by hand

    registry = Registry.from_entry_points(extra=[thirdparty_handy])
    assert registry.get("evaluator", "handy_metric").source.distribution == "harmonia-handy"
    assert registry.failures == [] and registry.clashes == {}
    assert [name for name, _ in registry.registered_twice] == ["thirdparty_handy"]


# -- names are unique per kind ------------------------------------------------------------------


def test_a_name_clash_names_both_distributions(site, monkeypatch, capsys):
    make_distribution(site, "harmonia-one", "thirdparty_one", evaluator_module("kappa", "One."), "kappa_one")
    make_distribution(site, "harmonia-two", "thirdparty_two", evaluator_module("kappa", "Two."), "kappa_two")
    registry = installed(monkeypatch)
    with pytest.raises(
        PluginError,
        match=r"evaluator plugin 'kappa' is provided by harmonia-one 0\.3 \(thirdparty_one\) "
        r"and harmonia-two 0\.3 \(thirdparty_two\)",
    ):
        registry.get("evaluator", "kappa")
    assert not registry.is_plugin("evaluator", "kappa")
    assert main(["list"]) == 0
    clashes = capsys.readouterr().out.split("Name clashes")[1]
    assert re.search(r"kappa\s+evaluator\s+provided by harmonia-one .* and harmonia-two", clashes)


def test_unknown_names_suggest_the_closest(registry):
    with pytest.raises(PluginError, match="unknown mitigation plugin 'dan'; did you mean 'dann'"):
        registry.get("mitigation", "dan")


def test_glob_filtering(registry):
    assert [e.name for e in registry.entries("evaluator", "pixel*")] == ["pixel_accuracy"]


# -- what the environment selects ---------------------------------------------------------------


def test_disabling_autoload_keeps_the_first_party_plugins(site, monkeypatch):
    make_distribution(site, "harmonia-extra", "thirdparty_extra", evaluator_module("sensitivity"), "sensitivity")
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    registry = Registry.from_entry_points()
    assert all(registry.is_plugin(kind, name) for kind, name in FIRST_PARTY)
    assert not registry.is_plugin("evaluator", "sensitivity")
    assert "thirdparty_extra" not in sys.modules


def test_the_allow_list_keeps_only_the_named_third_party_plugins(site, monkeypatch):
    make_distribution(site, "harmonia-alpha", "thirdparty_alpha", evaluator_module("alpha_metric"), "alpha_metric")
    make_distribution(site, "harmonia-beta", "thirdparty_beta", evaluator_module("beta_metric"), "beta_metric")
    monkeypatch.setenv(ALLOW_ENV, "alpha_metric")
    registry = Registry.from_entry_points()
    assert registry.is_plugin("evaluator", "alpha_metric")
    assert all(registry.is_plugin(kind, name) for kind, name in FIRST_PARTY)
    with pytest.raises(PluginError, match=f"evaluator plugin 'beta_metric' is not loaded: not in {ALLOW_ENV}"):
        registry.get("evaluator", "beta_metric")


def test_plugins_can_be_disabled_by_name(site, monkeypatch, capsys):
    make_distribution(site, "harmonia-gamma", "thirdparty_gamma", evaluator_module("gamma_metric"), "gamma_metric")
    monkeypatch.setenv(DISABLE_ENV, "dice, gamma_metric")
    registry = installed(monkeypatch)
    assert registry.is_plugin("model", "unet2d") and registry.is_plugin("evaluator", "pixel_accuracy")
    assert "thirdparty_gamma" not in sys.modules  # a disabled third-party module is not even imported
    for name in ("dice", "gamma_metric"):
        with pytest.raises(PluginError, match=f"evaluator plugin '{name}' is not loaded: disabled by {DISABLE_ENV}"):
            registry.get("evaluator", name)
    assert main(["list"]) == 0
    left_out = capsys.readouterr().out.split("Left out by the environment")[1]
    assert re.search(rf"dice\s+\?\s+disabled by {DISABLE_ENV}", left_out)


# -- harmonia list ------------------------------------------------------------------------------


def test_list_keeps_columns_aligned_and_shows_every_parameter(site, monkeypatch, capsys):
    long_dist = "harmonia-a-distribution-with-a-really-long-name"
    make_distribution(
        site, long_dist, "thirdparty_longname", evaluator_module("long_metric", "From far away."), "long_metric"
    )
    installed(monkeypatch)
    assert main(["list", "--verbose"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header, long_row, toy_row = (
        lines[0],
        *(next(line for line in lines if line.startswith(n)) for n in ("long_metric ", "toynet ")),
    )
    assert long_row.index(long_dist) == toy_row.index("local") == header.index("DISTRIBUTION")
    assert long_row.index("From far away.") == toy_row.index("A three-layer conv net") == header.index("DESCRIPTION")
    assert "    width  int  = 8  >= 1  channels" in lines
    assert any(
        re.match(r'    on_unreadable +str += "stop" +one of stop, skip +a file that cannot be read', line)
        for line in lines
    )


# -- the one factory ----------------------------------------------------------------------------


TASK = Task("segmentation", ("background", "square"))


def test_create_validates_a_mapping_and_takes_a_validated_instance_as_it_is(registry):
    model = registry.create("model", "toynet", {"width": 3}, TASK)
    assert isinstance(model.params, toy_plugins.ToyNetParams) and model.params.width == 3
    params = toy_plugins.ToyNetParams(width=5)
    assert registry.create("model", "toynet", params, TASK).params is params


@pytest.mark.parametrize(
    "params,message",
    [
        ({"widht": 4}, "model plugin 'toynet': params.widht: unknown key; did you mean 'width'?"),
        ({"width": 0}, "model plugin 'toynet': params.width: Input should be greater than or equal to 1"),
        ({"colour": "red"}, "model plugin 'toynet': params.colour: unknown key (known keys: width)"),
        (
            toy_plugins.ToyCohortParams(),
            "model plugin 'toynet': params: expected a mapping of parameter names to values or a ToyNetParams, "
            "got ToyCohortParams",
        ),
    ],
)
def test_create_says_which_parameter_breaks_which_rule(registry, params, message):
    with pytest.raises(PluginError) as info:
        registry.create("model", "toynet", params, TASK)
    assert str(info.value) == message


def test_the_python_api_creates_through_the_same_factory(registry):
    assert harmonia.create_plugin("model", "toynet", TASK, width=2).params.width == 2
    with pytest.raises(PluginError, match="params.widht: unknown key; did you mean 'width'"):
        harmonia.create_plugin("model", "toynet", TASK, widht=2)
