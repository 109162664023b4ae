"""The Python API for library use: load and run a recipe, read results, build a plugin by name."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from harmonia.api import PluginKind, Task
from harmonia.checkpoints import load_model
from harmonia.errors import CellFailed, InputError, RunInterrupted
from harmonia.progress import Progress
from harmonia.protocol import run_experiment
from harmonia.recipe import Experiment, load_recipe
from harmonia.registry import Entry, Registry, default_registry
from harmonia.report import read_run, write_report
from harmonia.results import RunFolder


@dataclass(frozen=True)
class Run:
    """A finished (or partial) run folder with its results as DataFrames."""

    path: Path

    @property
    def results(self) -> pd.DataFrame:
        return read_run(self.path)[0]

    @property
    def summary(self) -> pd.DataFrame:
        path = self.path / "summary.csv"
        return pd.read_csv(path) if path.exists() else pd.DataFrame()

    @property
    def manifest(self) -> dict[str, Any]:
        return read_run(self.path)[1]


def default_run_dir(experiment: Experiment) -> Path:
    """``runs/<recipe name>/<timestamp>/`` under the current folder."""
    return Path("runs") / experiment.name / datetime.now().strftime("%Y%m%d-%H%M%S")


def run(
    recipe: str | Path | dict[str, Any],
    overrides: list[str] | tuple[str, ...] = (),
    out: str | Path | None = None,
    registry: Registry | None = None,
    progress: Progress | None = None,
    execution: dict[str, Any] | None = None,
    tracking: dict[str, Any] | None = None,
) -> Run:
    """Run a recipe (a YAML path or a mapping) into a new run folder and write its report.

    ``execution`` and ``tracking`` override the recipe's sections of those names (``{"workers": 4}``,
    ``{"uri": "http://mlflow:5000"}``); results do not depend on them.
    """
    experiment = load_recipe(recipe, overrides, registry).with_run_settings(execution, tracking)
    folder = Path(out) if out is not None else default_run_dir(experiment)
    if folder.is_dir() and any(folder.iterdir()):
        raise InputError(f"{folder}: the run folder already exists and is not empty (use --resume to finish it)")
    _run_and_report(experiment, folder, registry, progress)
    return Run(folder)


def resume(
    run_dir: str | Path,
    registry: Registry | None = None,
    progress: Progress | None = None,
    execution: dict[str, Any] | None = None,
    tracking: dict[str, Any] | None = None,
) -> Run:
    """Finish the cells of ``run_dir`` that are missing, using the recipe saved in it (``execution`` and ``tracking``
    as in :func:`run`)."""
    folder = RunFolder(Path(run_dir), [])
    if not folder.recipe_path.is_file() or not folder.manifest_path.is_file():
        raise InputError(f"{run_dir}: not a harmonia run folder (no recipe.yaml and manifest.json)")
    experiment = load_recipe(folder.recipe_path, (), registry).with_run_settings(execution, tracking)
    _run_and_report(experiment, folder.path, registry, progress)
    return Run(folder.path)


def _run_and_report(experiment: Experiment, folder: Path, registry: Registry | None, progress: Progress | None) -> None:
    """Run the experiment, then write the report, also of the cells that finished before a failure."""
    try:
        run_experiment(experiment, folder, registry, progress)
    except (CellFailed, RunInterrupted):
        if (folder / "results.csv").exists():
            _report(experiment, folder)
        raise
    _report(experiment, folder)


def _report(experiment: Experiment, folder: Path) -> None:
    """Write the report, and copy it to the tracker's run of the run folder when the recipe has one."""
    write_report(folder)
    if experiment.tracking is not None:
        from harmonia.tracking import open_tracker  # imported only when asked: the extra is optional

        open_tracker(experiment.tracking, folder, experiment).log_report(folder)


def list_plugins(kind: PluginKind | None = None, pattern: str = "*") -> list[Entry]:
    """Installed plugins (optionally of one kind, names matching a glob), like ``harmonia list``."""
    return default_registry().entries(kind, pattern)


def create_plugin(kind: PluginKind, name: str, *args: Any, **params: Any) -> Any:
    """An instance of plugin ``name`` with ``params`` validated by its model (as a recipe's are).

    ``args`` are what the plugin kind's constructor takes after its params: a data folder for a
    cohort, a :class:`~harmonia.api.Task` for a model, mitigation or evaluator. An unknown or
    broken plugin, or a parameter that does not fit (``chanels=8``: "did you mean 'channels'?"),
    is a :class:`~harmonia.errors.PluginError`.
    """
    return default_registry().create(kind, name, params, *args)


__all__ = ["Run", "Task", "create_plugin", "list_plugins", "load_model", "load_recipe", "resume", "run"]
