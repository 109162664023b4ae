"""The cross-scanner protocol (Guo et al., Fig. 1) over every sweep point of an experiment.

For seed i and training domain j: split each domain's patients 2/3, 1/6, 1/6; train M_j on
Train_j with epoch selection on Val_j; test on Test_k for every domain k. Mitigations get
target-domain images only from the other domains' train splits. Each (sweep point, seed,
training domain) cell is seeded from what it is and saved when it finishes.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

import harmonia
from harmonia import datasource, environment
from harmonia.api import ALL_DOMAINS, CellView, Cohort, Evaluator, ImageSet, Metric, Mitigation, Model, Task
from harmonia.checkpoints import CheckpointInfo, checkpoint_path, plugin_record, save_model
from harmonia.engine import EpochRecord, Trainer, TrainResult, resolve_device
from harmonia.errors import DataError, HarmoniaError, InputError, RecipeError, RunInterrupted, one_line
from harmonia.progress import Progress, RunClock
from harmonia.recipe import CohortSpec, Experiment, PluginSpec, SweepPoint, incompatibility
from harmonia.registry import Registry, default_registry
from harmonia.results import RunFolder, atomic_write_text, now, recipe_fingerprint
from harmonia.seeding import derive_seed, seed_everything
from harmonia.splits import Split, split_patients
from harmonia.stages import MitigationStack, mitigation_labels

log = logging.getLogger(__name__)


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


def load_cohort(spec: CohortSpec, registry: Registry) -> CohortData:
    """Resolve the cohort's data (real or synthetic twin), index it and load every item into memory."""
    cls = registry.get("cohort", spec.plugin).cls
    source = datasource.resolve(cls, spec.root, spec.synthetic)
    cohort: Cohort = registry.create("cohort", spec.plugin, spec.params_for_create, source.root)
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


def cohort_key(point: SweepPoint) -> str:
    """What identifies a cohort's patients for splitting: its plugin and parameters (not its folder, not the recipe)."""
    cohort = point.recipe.cohort
    return json.dumps({"plugin": cohort.plugin, "params": cohort.params}, sort_keys=True, separators=(",", ":"))


def split_seed(point: SweepPoint, seed: int) -> int:
    """Splits depend on the cohort, its parameters and the seed index only, so every sweep point and every
    recipe on the same cohort is compared on the same patients; renaming a recipe changes nothing."""
    return derive_seed("split", cohort_key(point), seed)


def train_seed(cell: Cell) -> int:
    """The cell's seed for everything but the model's initial weights and the batch order (see below)."""
    return derive_seed("train", cohort_key(cell.point), cell.point.id, cell.seed, cell.train_domain)


def common_seed(cell: Cell, purpose: str) -> int:
    """A seed shared by every sweep point with the same cohort and model (common random numbers): the same
    initial weights (``purpose="init"``) and batch order (``"batches"``) for a seed and training domain,
    so that a mitigation is compared with its baseline on the same draws."""
    model = cell.point.recipe.model
    model_key = json.dumps({"plugin": model.plugin, "params": model.params}, sort_keys=True, separators=(",", ":"))
    return derive_seed(purpose, cohort_key(cell.point), model_key, cell.seed, cell.train_domain)


@dataclass
class CellOutcome:
    """What one cell produced: its result rows, its training record and what the manifest keeps of it.

    ``record`` holds the mitigations' :meth:`~harmonia.api.Mitigation.cell_record` figures (as
    ``<mitigation>.<key>``) and, under ``undefined``, each metric that came out NaN with its reason.
    ``patients`` holds the per-patient values evaluators gave (``Metric.per_patient``), one row each.
    """

    rows: list[dict[str, Any]]
    training: TrainResult
    record: dict[str, Any]
    patients: list[dict[str, Any]]


@dataclass
class CellDone:
    """A computed cell as it travels back to the driver: its outcome, the files it made (``models/...``,
    ``artifacts/...``, as bytes by path in the run folder) and how long it took."""

    key: tuple[int, int, str]
    outcome: CellOutcome
    files: dict[str, bytes]
    seconds: float


def compute_cell(
    cell: Cell, data: CohortData, registry: Registry, on_epoch: Callable[[EpochRecord], None] | None = None
) -> CellDone:
    """Run ``cell`` on ``data`` on its recipe's device, with its model and mitigation files made in a scratch folder
    and returned, so that whichever process computes a cell, only the driver writes the run folder."""
    started = time.perf_counter()
    splits = split_patients(data.index, split_seed(cell.point, cell.seed), data.domains)
    device = resolve_device(cell.point.recipe.train.device)
    with tempfile.TemporaryDirectory(prefix="harmonia-cell-") as scratch:
        root = Path(scratch)
        outcome = run_cell(
            cell,
            data,
            splits,
            registry,
            device,
            on_epoch=on_epoch,
            models_dir=root / "models",
            artifacts_dir=root / "artifacts",
        )
        files = {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    return CellDone(cell.key, outcome, files, time.perf_counter() - started)


def run_cell(
    cell: Cell,
    data: CohortData,
    splits: dict[str, Split],
    registry: Registry,
    device: torch.device,
    *,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    models_dir: Path | None = None,
    artifacts_dir: Path | None = None,
) -> CellOutcome:
    """Train on the cell's domain and test on every domain.

    Evaluators that calibrate (a decision threshold) see the training domain's validation split, never a test split.

    ``on_epoch`` gets each epoch's record as it ends. With ``train.save_models`` on, the selected
    weights are saved into ``models_dir`` (see :mod:`harmonia.checkpoints` for the file names). What the
    mitigations learned (a standardizer) goes into ``artifacts_dir`` as ``sweep<i>-seed<s>-<domain>-<mitigation>*``.
    """
    recipe = cell.point.recipe
    seed = train_seed(cell)
    seed_everything(seed)
    task = replace(data.cohort.task, item_shape=tuple(data.items.images.shape[2:]))
    own = splits[cell.train_domain]
    train = data.items.of_patients(own.train, cell.train_domain)
    val = data.items.of_patients(own.val, cell.train_domain)
    others = [d for d in data.domains if d != cell.train_domain]
    target_train = ImageSet.concat([data.items.of_patients(splits[d].train, d) for d in others]) if others else None

    mitigations: list[Mitigation] = [
        registry.create("mitigation", s.plugin, s.params_for_create, task) for s in recipe.mitigations
    ]
    rng = np.random.default_rng(seed)
    train = MitigationStack(mitigations).adjust_training_set(train, target_train, rng)
    torch.manual_seed(common_seed(cell, "init"))  # the same initial weights for every point with this model
    model: Model = registry.create("model", recipe.model.plugin, recipe.model.params_for_create, task)
    evaluators: list[Evaluator] = [
        registry.create("evaluator", s.plugin, s.params_for_create, task) for s in recipe.evaluate
    ]
    trainer = Trainer(model, mitigations, evaluators[0], recipe.train, device, common_seed(cell, "batches"))
    record = trainer.fit(train, val, target_train, on_epoch)
    if artifacts_dir is not None:
        for label, m in zip(mitigation_labels(mitigations), mitigations):
            if type(m).save_artifacts is not Mitigation.save_artifacts:
                artifacts_dir.mkdir(parents=True, exist_ok=True)
                cell_stem = checkpoint_path(artifacts_dir, cell.point.id, cell.seed, cell.train_domain).stem
                m.save_artifacts(artifacts_dir, f"{cell_stem}-{label}")
    if recipe.train.save_models and models_dir is not None:
        info = CheckpointInfo(
            cell.point.id,
            cell.seed,
            cell.train_domain,
            recipe.train.selection,
            record.selection_metric,
            record.selected_epoch,
            tuple(plugin_record(m) for m in mitigations),
        )
        save_model(models_dir, model, info)

    test_set = [e for e in evaluators if e.scope == "test_set"]
    needs_probabilities = any(e.needs_probabilities for e in test_set)
    calibrating = [e for e in test_set if type(e).calibrate is not Evaluator.calibrate]
    if calibrating:
        validation = trainer.predictions(val, needs_probabilities)
        for evaluator in calibrating:
            evaluator.calibrate(validation)
    base = {
        **cell.point.values,  # first, so a swept key never hides a fixed column of the same name
        "cohort": recipe.cohort.name,
        "modality": data.cohort.modality,
        "data": data.source.kind,
        "mitigations": recipe.mitigation_label(),
        "sweep_id": cell.point.id,
        "seed": cell.seed,
        "train_domain": cell.train_domain,
    }
    scored: list[tuple[str, Evaluator, Metric]] = []
    for test_domain in data.domains:
        test = data.items.of_patients(splits[test_domain].test, test_domain)
        predictions = trainer.predictions(test, needs_probabilities)
        scored += [(test_domain, e, metric) for e in test_set for metric in e.evaluate(predictions)]
    cell_scope = [e for e in evaluators if e.scope == "cell"]
    if cell_scope:
        view = _cell_view(cell, data, splits, task, trainer, common_seed(cell, "evaluate"), device)
        scored += [(m.test_domain or ALL_DOMAINS, e, m) for e in cell_scope for m in e.evaluate_cell(view)]
    rows = [
        {
            **base,
            "test_domain": test_domain,
            "metric": metric.name,
            "value": metric.value,
            "n": metric.n,
            # for the manifest, not results.csv columns:
            "higher_is_better": evaluator.higher_is_better
            if metric.higher_is_better is None
            else metric.higher_is_better,
            "scope": evaluator.scope,
            "note": metric.note,
        }
        for test_domain, evaluator, metric in scored
    ]
    patients = [
        {
            "sweep_id": cell.point.id,
            "seed": cell.seed,
            "train_domain": cell.train_domain,
            "test_domain": test_domain,
            "metric": metric.name,
            "patient": patient,
            "value": value,
        }
        for test_domain, _, metric in scored
        for patient, value in metric.per_patient.items()
    ]
    return CellOutcome(rows, record, _cell_record(mitigations, rows), patients)


def _cell_view(
    cell: Cell,
    data: CohortData,
    splits: dict[str, Split],
    task: Task,
    trainer: Trainer,
    seed: int,
    device: torch.device,
) -> CellView:
    """What a cell-scope evaluator sees of the trained cell (see :class:`~harmonia.api.CellView`)."""

    def split(domain: str, part: str) -> ImageSet:
        return data.items.of_patients(getattr(splits[domain], part), domain)

    return CellView(
        task=task,
        domains=tuple(data.domains),
        train_domain=cell.train_domain,
        seed=seed,
        device=device,
        split=split,
        transform=trainer.stack.transform_images,
        features=trainer.features,
        modality=data.cohort.modality,
    )


def _cell_record(mitigations: list[Mitigation], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The manifest's extra record of a cell: the mitigations' figures and the metrics left undefined, with why."""
    record: dict[str, Any] = {
        f"{label}.{key}": value
        for label, m in zip(mitigation_labels(mitigations), mitigations)
        for key, value in m.cell_record().items()
    }
    undefined = [
        {"test_domain": r["test_domain"], "metric": r["metric"], "reason": r["note"] or "undefined"}
        for r in rows
        if isinstance(r["value"], float) and np.isnan(r["value"])
    ]
    if undefined:
        record["undefined"] = undefined
    return record


def manifest_header(experiment: Experiment, registry: Registry, device: torch.device) -> dict[str, Any]:
    """Versions of harmonia (and its git commit), of every plugin used and of the libraries; the device."""
    used = {}
    for point in experiment.points:
        for kind, spec in _plugin_specs(point):
            source = registry.get(kind, spec.plugin).source
            used[f"{kind}:{spec.plugin}"] = {"distribution": source.distribution, "version": source.version}
    return {
        "harmonia_version": harmonia.__version__,
        "harmonia_git_commit": environment.git_commit(Path(harmonia.__file__).parent),
        "recipe": experiment.name,
        "recipe_sha256": recipe_fingerprint(experiment.fingerprinted, harmonia.__version__),
        "plugins": used,
        "torch_version": torch.__version__,
        "libraries": environment.library_versions(),
        "device": environment.describe_device(device),
        "command": " ".join(sys.argv),
    }


def _plugin_specs(point: SweepPoint) -> list[tuple[str, PluginSpec]]:
    r = point.recipe
    specs: list[tuple[str, PluginSpec]] = [("cohort", r.cohort), ("model", r.model)]
    return specs + [("mitigation", s) for s in r.mitigations] + [("evaluator", s) for s in r.evaluate]


def run_experiment(
    experiment: Experiment,
    run_dir: Path,
    registry: Registry | None = None,
    progress: Progress | None = None,
) -> RunFolder:
    """Run (or finish) every cell of ``experiment`` into ``run_dir``; cells complete on disk are skipped.

    Finishing a folder refuses a recipe that differs from the one the run started with. A cell
    that raises stops the run with :class:`CellFailed` naming the cell and the plugin; the
    manifest then says ``failed`` with that message and ``harmonia.log`` holds the traceback.
    """
    registry = registry or default_registry()
    progress = progress or Progress()
    folder = RunFolder(make_run_dir(Path(run_dir)), list(experiment.points[0].values))
    with folder.lock(), _log_into(folder.log_path):
        manifest = folder.read_manifest()
        device = resolve_device(experiment.points[0].recipe.train.device)
        header = manifest_header(experiment, registry, device)
        if manifest:
            _check_same_recipe(folder, manifest, header)
        if not folder.recipe_path.exists():
            atomic_write_text(folder.recipe_path, experiment.to_yaml())
        folder.update_manifest(
            **header,
            started=manifest.get("started", now()),
            resumed=manifest.get("resumed", []) + ([now()] if manifest else []),
            status="running",
            finished=None,
        )
        try:
            with _torch_threads(experiment.points[0].recipe.train.threads):
                _run_cells(experiment, folder, registry, progress)
        except KeyboardInterrupt:
            _mark(folder, status="interrupted")
            raise RunInterrupted(folder.path) from None
        except BaseException as exc:
            _mark(folder, status="failed", error=_manifest_error(exc))
            if not isinstance(exc, InputError):
                log.debug("traceback of the failure", exc_info=exc)
            raise
        folder.update_manifest(status="completed", finished=now(), error=None)
    return folder


def make_run_dir(run_dir: Path) -> Path:
    """Create ``run_dir`` (and its parents); an InputError naming it if it is a file or cannot be written."""
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"{run_dir}: exists and is not a folder; choose a folder for the run")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{run_dir}: cannot create the run folder ({exc.strerror or one_line(exc)})") from None
    if not os.access(run_dir, os.W_OK):
        raise InputError(f"{run_dir}: the run folder is not writable")
    return run_dir


def _check_same_recipe(folder: RunFolder, manifest: dict[str, Any], header: dict[str, Any]) -> None:
    """Refuse to finish a run whose recipe.yaml or harmonia version changed since it started."""
    if manifest.get("harmonia_version") != header["harmonia_version"]:
        raise InputError(
            f"{folder.path}: the run started with harmonia {manifest.get('harmonia_version')}, this is "
            f"{header['harmonia_version']}; finish it with that version or start a new run"
        )
    if manifest.get("recipe_sha256") != header["recipe_sha256"]:
        raise InputError(
            f"{folder.recipe_path}: the recipe changed since the run started, so its cells would not be comparable; "
            f"restore it or start a new run"
        )


def _manifest_error(exc: BaseException) -> str:
    """What the manifest says of a failure: the message, except for data errors, whose messages can quote
    file names that carry patient codes (those stay on the console)."""
    if isinstance(exc, DataError):
        return type(exc).__name__
    return str(exc) if isinstance(exc, HarmoniaError) else one_line(exc)


def _mark(folder: RunFolder, **fields: Any) -> None:
    """Record the run's end in the manifest, if the disk still lets us (a full disk may not)."""
    try:
        folder.update_manifest(**fields, finished=now())
    except OSError as exc:
        log.error("%s: could not record the run's end (%s)", folder.manifest_path, exc.strerror or one_line(exc))


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op CPU threads set to ``threads`` for the run (unchanged when None), restored after."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextmanager
def _log_into(path: Path) -> Iterator[None]:
    """Copy harmonia's log records (and failure tracebacks) into the run folder's ``harmonia.log``."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("harmonia")
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        handler.close()


def preflight(point: SweepPoint, data: CohortData, registry: Registry) -> None:
    """Configuration errors that show only once the cohort is loaded, raised before any training."""
    recipe, task = point.recipe, data.cohort.task
    problem = incompatibility(task, recipe.cohort.plugin, recipe.model, recipe.evaluate, registry)
    if problem:
        raise RecipeError(problem)
    if len(data.domains) < 2:
        for i, spec in enumerate(recipe.mitigations):
            cls = registry.get("mitigation", spec.plugin).cls
            if cls.uses_target_images or cls.uses_target_labels:
                raise RecipeError(
                    f"mitigations[{i}].plugin: '{spec.plugin}' needs target-domain images, but cohort "
                    f"{recipe.cohort.plugin} is used with one domain ({', '.join(data.domains)})"
                )
    try:
        split_patients(data.index, split_seed(point, 0), data.domains)
    except DataError as exc:
        raise DataError(f"cohort {recipe.cohort.plugin}: {exc}") from None


def _run_cells(experiment: Experiment, folder: RunFolder, registry: Registry, progress: Progress) -> None:
    """Plan the cells, leave out those finished on disk, and have the run's executor compute the rest; each cell is
    saved (and copied to the tracker) as it comes back."""
    from harmonia.executors import make_executor, write_twins_side_by_side  # they build on this module's cells

    cohorts: dict[str, CohortData] = {}

    def data_of(point: SweepPoint) -> CohortData:
        key = point.recipe.cohort.model_dump_json()
        if key not in cohorts:
            cohorts[key] = data = load_cohort(point.recipe.cohort, registry)
            _record_cohort(folder, point.recipe.cohort.name, data)
        return cohorts[key]

    write_twins_side_by_side([p.recipe.cohort for p in experiment.points], registry, experiment.execution)
    for point in experiment.points:
        preflight(point, data_of(point), registry)
    cells = plan_cells(experiment, lambda point: point.recipe.cohort.train_domains or data_of(point).domains)
    done = folder.load_finished()
    todo = [c for c in cells if c.key not in done]
    several_cohorts = len({p.recipe.cohort.name for p in experiment.points}) > 1
    tracker = _open_tracker(experiment, folder)
    log.info("%d cells (%d already done)%s", len(cells), len(cells) - len(todo), _where(experiment))
    clock = RunClock(len(todo))

    def label(cell: Cell, number: int) -> str:
        cohort = f" {cell.point.recipe.cohort.name}" if several_cohorts else ""
        return (
            f"[{number}/{len(todo)}] sweep {cell.point.id}{cohort} ({cell.point.recipe.mitigation_label()}) "
            f"seed {cell.seed} train {cell.train_domain}"
        )

    def on_start(cell: Cell) -> Callable[[EpochRecord], None]:
        progress.cell_started(label(cell, clock.finished + 1), cell.point.recipe.train.epochs)
        return lambda e: progress.epoch_finished(e.epoch, e.train_loss, e.val_score)

    def save(cell: Cell, computed: CellDone) -> None:
        outcome = computed.outcome
        folder.write_files(computed.files)
        history = [
            {
                "epoch": e.epoch,
                "train_loss": e.train_loss,
                "val_score": e.val_score,
                "selected": e.epoch == outcome.training.selected_epoch,
                **e.extras,
            }
            for e in outcome.training.history
        ]
        rows = outcome.rows
        record = {**outcome.record, "seconds": round(computed.seconds, 1)}
        folder.record_metrics(rows)  # first: the summary add_cell writes leaves cell-scope metrics out
        folder.add_cell(cell.key, rows, history, record, outcome.patients)
        if tracker is not None:
            _sync(tracker)
        clock.tick()
        primary = rows[0]["metric"] if rows else "?"
        same = [r["value"] for r in rows if r["metric"] == primary and r["test_domain"] == cell.train_domain]
        kept = outcome.training.selected_epoch
        detail = f": same-domain {primary} {same[0]:.3f}, epoch {kept} kept" if same else ": done"
        progress.cell_finished(f"{label(cell, clock.finished)}{detail} ({computed.seconds:.0f} s; {clock.status()})")

    if tracker is not None:
        tracker.sync()  # cells a resumed run finished before tracking was on, or before a crash
    executor = make_executor(experiment.execution, registry, folder.path, data_of, on_start)
    executor.run(todo, save)


def _where(experiment: Experiment) -> str:
    """How the cells will run, for the run's first line."""
    execution = experiment.execution
    if execution.executor == "ray":
        return f", as Ray tasks ({execution.ray_address or 'a local Ray'})"
    return f", {execution.workers} at a time in worker processes" if execution.workers > 1 else ""


def _sync(tracker: Any) -> None:
    """Copy the cells just saved to the tracker; a tracker that fails mid-run costs a warning, never the run (the run
    folder has every figure, and the next sync, or ``--resume``, catches up)."""
    try:
        tracker.sync()
    except InputError as exc:
        log.warning("tracking: %s; the run goes on (the next cell, or --resume, copies what is missing)", exc)


def _open_tracker(experiment: Experiment, folder: RunFolder) -> Any:
    """The run's tracker when the recipe asks for one (``tracking:``), else None; imported only then."""
    if experiment.tracking is None:
        return None
    from harmonia.tracking import open_tracker

    return open_tracker(experiment.tracking, folder.path, experiment)


def _record_cohort(folder: RunFolder, name: str, data: CohortData) -> None:
    """Write where a cohort's data came from, who was left out and what was unreadable, and announce it."""
    source = data.source
    folder.record_per_cohort("data_provenance", name, source.provenance())
    if source.kind == "synthetic":
        log.info("cohort %s: SYNTHETIC twin data (%s)", name, source.root)
    else:
        log.info("cohort %s: real data from %s", name, source.root)
    excluded = data.cohort.exclusion_counts()
    if excluded:
        folder.record_per_cohort("excluded_patients", name, excluded)
        listed = ", ".join(f"{n} {reason}" for reason, n in sorted(excluded.items()))
        log.info("cohort %s: patients left out: %s", name, listed)
    if data.cohort.unreadable:
        folder.add_unreadable(name, data.cohort.unreadable)
        log.warning("cohort %s: %d unreadable file(s) skipped; see unreadable.csv", name, len(data.cohort.unreadable))


def describe_cell(cell: Cell) -> str:
    return f"cell (sweep {cell.point.id}, seed {cell.seed}, train {cell.train_domain})"


def cell_failure_message(cell: Cell, exc: BaseException, registry: Registry) -> str:
    """The one line a failed cell is reported with: which cell, the plugin the traceback ends in, and the error."""
    return f"{describe_cell(cell)} failed{_blame(exc, cell, registry)}: {one_line(exc)}"


def _blame(exc: BaseException, cell: Cell, registry: Registry) -> str:
    """`` in mitigation 'dann'`` for the innermost traceback frame in one of the cell's plugins, else ''.

    A frame belongs to the plugin whose method it runs (its ``self``), else to the plugin whose module it is in;
    one module may hold several plugins.
    """
    specs = [(kind, spec.plugin, registry.get(kind, spec.plugin).cls) for kind, spec in _plugin_specs(cell.point)]
    modules = {cls.__module__: (kind, name) for kind, name, cls in specs}
    blamed = ""
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        instance = frame.f_locals.get("self")
        owner = next(((kind, name) for kind, name, cls in specs if isinstance(instance, cls)), None)
        owner = owner or modules.get(frame.f_globals.get("__name__", ""))
        if owner:
            blamed = f" in {owner[0]} '{owner[1]}'"
    return blamed
