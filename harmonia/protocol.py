"""The cross-scanner protocol (seed 001, Fig. 1) over every sweep point of an experiment.

For seed i and training domain j: split each domain's patients 2/3, 1/6, 1/6; train M_j on
Train_j with epoch selection on Val_j; test on Test_k for every domain k. Mitigations get
target-domain images only from the other domains' train splits. Each (sweep point, seed,
training domain) cell is seeded from what it is and saved when it finishes.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

import harmonia
from harmonia import datasource
from harmonia.api import Cohort, Evaluator, ImageSet, Mitigation, Model, Params
from harmonia.engine import Trainer, resolve_device
from harmonia.errors import RecipeError
from harmonia.recipe import CohortSpec, Experiment, PluginSpec, SweepPoint
from harmonia.registry import Registry, default_registry
from harmonia.results import RunFolder, atomic_write_text, now
from harmonia.seeding import derive_seed, seed_everything
from harmonia.splits import Split, split_patients


@dataclass
class CohortData:
    """A cohort loaded once per run: the plugin, its data source, its patient index and all items."""

    cohort: Cohort
    source: datasource.DataSource
    index: pd.DataFrame
    items: ImageSet
    domains: list[str]


@dataclass(frozen=True)
class Cell:
    """One (sweep point, seed index, training domain) unit of work."""

    point: SweepPoint
    seed: int
    train_domain: str

    @property
    def key(self) -> tuple[int, int, str]:
        return (self.point.id, self.seed, self.train_domain)


def create(registry: Registry, kind: str, spec: PluginSpec, *args: Any) -> Any:
    """An instance of the plugin ``spec`` names, with its validated parameters."""
    entry = registry.get(kind, spec.plugin)
    params: Params = entry.cls.Params.model_validate(spec.params)
    return entry.cls(params, *args)


def load_cohort(spec: CohortSpec, registry: Registry) -> CohortData:
    """Resolve the cohort's data (real or synthetic twin), index it and load every item into memory."""
    cls = registry.get("cohort", spec.plugin).cls
    source = datasource.resolve(cls, spec.root, spec.synthetic)
    cohort: Cohort = create(registry, "cohort", spec, source.root)
    domains = list(cohort.domains())
    index = cohort.index()
    index = index[index["domain"].isin(domains)].reset_index(drop=True)
    train_domains = spec.train_domains or domains
    unknown = sorted(set(train_domains) - set(domains))
    if unknown:
        raise RecipeError(f"cohort.train_domains: {unknown} not among the cohort's domains {domains}")
    items = cohort.load(list(dict.fromkeys(index["patient"])))
    # a patient whose files turned out unreadable at load time (on_unreadable: skip) has no items; it leaves
    # the index too, so that no split holds a patient without images
    index = index[index["patient"].isin(set(items.patients))].reset_index(drop=True)
    return CohortData(cohort, source, index, items, domains)


def plan_cells(experiment: Experiment, domains_of: Callable[[SweepPoint], list[str]]) -> list[Cell]:
    """Every cell, seeds outermost so an interrupted run has complete sweep comparisons for early seeds."""
    max_seeds = max(p.recipe.train.seeds for p in experiment.points)
    return [
        Cell(point, seed, domain)
        for seed in range(max_seeds)
        for point in experiment.points
        if seed < point.recipe.train.seeds
        for domain in domains_of(point)
    ]


def split_seed(point: SweepPoint, seed: int) -> int:
    """Splits depend on the recipe, cohort and seed index only, so sweep points are compared on the same splits."""
    return derive_seed(point.recipe.name, "split", point.recipe.cohort.plugin, seed)


def train_seed(cell: Cell) -> int:
    return derive_seed(cell.point.recipe.name, cell.point.id, cell.seed, cell.train_domain)


def run_cell(cell: Cell, data: CohortData, splits: dict[str, Split], registry: Registry, device: torch.device) -> tuple[list[dict[str, Any]], Any]:
    """Train on the cell's domain and test on every domain; the result rows and the training record."""
    recipe = cell.point.recipe
    seed = train_seed(cell)
    seed_everything(seed)
    task = data.cohort.task
    own = splits[cell.train_domain]
    train = data.items.of_patients(own.train, cell.train_domain)
    val = data.items.of_patients(own.val, cell.train_domain)
    others = [d for d in data.domains if d != cell.train_domain]
    target_train = ImageSet.concat([data.items.of_patients(splits[d].train, d) for d in others]) if others else None

    mitigations: list[Mitigation] = [create(registry, "mitigation", s, task) for s in recipe.mitigations]
    rng = np.random.default_rng(seed)
    for m in mitigations:
        train = m.adjust_training_set(train, target_train, rng)
    model: Model = create(registry, "model", recipe.model, task)
    evaluators: list[Evaluator] = [create(registry, "evaluator", s, task) for s in recipe.evaluate]
    trainer = Trainer(model, mitigations, evaluators[0], recipe.train, device)
    record = trainer.fit(train, val, target_train)

    needs_probabilities = any(e.needs_probabilities for e in evaluators)
    rows = []
    base = {
        **cell.point.values,  # first, so a swept key never hides a fixed column of the same name
        "cohort": recipe.cohort.plugin,
        "modality": data.cohort.modality,
        "data": data.source.kind,
        "mitigations": recipe.mitigation_label(),
        "sweep_id": cell.point.id,
        "seed": cell.seed,
        "train_domain": cell.train_domain,
    }
    for test_domain in data.domains:
        test = data.items.of_patients(splits[test_domain].test, test_domain)
        predictions = trainer.predictions(test, needs_probabilities)
        for evaluator in evaluators:
            for metric in evaluator.evaluate(predictions):
                rows.append({**base, "test_domain": test_domain, "metric": metric.name, "value": metric.value, "n": metric.n})
    return rows, record


def manifest_header(experiment: Experiment, registry: Registry, device: torch.device) -> dict[str, Any]:
    """Versions of harmonia, the plugins used, torch and Python, and the device."""
    used = {}
    for point in experiment.points:
        r = point.recipe
        specs = [("cohort", r.cohort), ("model", r.model)]
        specs += [("mitigation", s) for s in r.mitigations] + [("evaluator", s) for s in r.evaluate]
        for kind, spec in specs:
            source = registry.get(kind, spec.plugin).source
            used[f"{kind}:{spec.plugin}"] = {"distribution": source.distribution, "version": source.version}
    return {
        "harmonia_version": harmonia.__version__,
        "recipe": experiment.name,
        "plugins": used,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": str(device) if device.type != "cuda" else f"{device} ({torch.cuda.get_device_name(device)})",
        "command": " ".join(sys.argv),
    }


def run_experiment(
    experiment: Experiment,
    run_dir: Path,
    registry: Registry | None = None,
    progress: Callable[[str], None] | None = None,
) -> RunFolder:
    """Run (or finish) every cell of ``experiment`` into ``run_dir``; cells already on disk are skipped."""
    registry = registry or default_registry()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    folder = RunFolder(run_dir, list(experiment.points[0].values))
    if not folder.recipe_path.exists():
        atomic_write_text(folder.recipe_path, experiment.to_yaml())
    device = resolve_device(experiment.points[0].recipe.train.device)
    manifest = folder.read_manifest()
    folder.update_manifest(
        **manifest_header(experiment, registry, device),
        started=manifest.get("started", now()),
        resumed=manifest.get("resumed", []) + ([now()] if manifest else []),
        status="running",
        finished=None,
    )
    say = progress or (lambda text: None)
    try:
        _run_cells(experiment, folder, registry, device, say)
    except KeyboardInterrupt:
        folder.update_manifest(status="interrupted", finished=now())
        raise
    except BaseException as exc:
        # only the kind of error: messages can quote data file names, which may carry patient codes
        folder.update_manifest(status="failed", error=type(exc).__name__, finished=now())
        raise
    folder.update_manifest(status="completed", finished=now(), error=None)
    return folder


def _run_cells(experiment: Experiment, folder: RunFolder, registry: Registry, device: torch.device, say: Callable[[str], None]) -> None:
    cohorts: dict[str, CohortData] = {}

    def data_of(point: SweepPoint) -> CohortData:
        key = point.recipe.cohort.model_dump_json()
        if key not in cohorts:
            cohorts[key] = data = load_cohort(point.recipe.cohort, registry)
            name, source = point.recipe.cohort.plugin, data.source
            folder.record_per_cohort("data_provenance", name, source.provenance())
            if source.kind == "synthetic":
                say(f"cohort {name}: SYNTHETIC twin data ({source.root})")
            else:
                say(f"cohort {name}: real data from {source.root}")
            excluded = data.cohort.exclusion_counts()
            if excluded:
                folder.record_per_cohort("excluded_patients", name, excluded)
                listed = ", ".join(f"{n} {reason}" for reason, n in sorted(excluded.items()))
                say(f"cohort {name}: patients left out: {listed}")
            if data.cohort.unreadable:
                folder.add_unreadable(name, data.cohort.unreadable)
                say(f"cohort {name}: {len(data.cohort.unreadable)} unreadable file(s) skipped; see unreadable.csv")
        return cohorts[key]

    def domains_of(point: SweepPoint) -> list[str]:
        return point.recipe.cohort.train_domains or data_of(point).domains

    cells = plan_cells(experiment, domains_of)
    done = folder.done_cells()
    todo = [c for c in cells if c.key not in done]
    say(f"{len(cells)} cells ({len(cells) - len(todo)} already done)")
    history = _read_history(folder.path)
    for number, cell in enumerate(todo, start=1):
        data = data_of(cell.point)
        splits = split_patients(data.index, split_seed(cell.point, cell.seed), data.domains)
        rows, record = run_cell(cell, data, splits, registry, device)
        folder.add_cell(rows)
        history.extend(
            {"sweep_id": cell.point.id, "seed": cell.seed, "train_domain": cell.train_domain, "epoch": e.epoch,
             "train_loss": e.train_loss, "val_score": e.val_score, "selected": e.epoch == record.selected_epoch}
            for e in record.history
        )
        _write_history(folder.path, history)
        primary = rows[0]["metric"] if rows else "?"
        same = [r["value"] for r in rows if r["metric"] == primary and r["test_domain"] == cell.train_domain]
        say(
            f"[{number}/{len(todo)}] sweep {cell.point.id} ({cell.point.recipe.mitigation_label()}) seed {cell.seed} "
            f"train {cell.train_domain}: same-domain {primary} {same[0]:.3f}, epoch {record.selected_epoch} kept"
            if same else f"[{number}/{len(todo)}] done"
        )


def _read_history(path: Path) -> list[dict[str, Any]]:
    file = path / "history.csv"
    return pd.read_csv(file).to_dict("records") if file.exists() else []


def _write_history(path: Path, history: list[dict[str, Any]]) -> None:
    atomic_write_text(path / "history.csv", pd.DataFrame(history).to_csv(index=False))

