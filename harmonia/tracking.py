"""Experiment tracking: a copy of a run folder's figures in MLflow (``tracking: mlflow`` in a recipe).

The run folder stays the record and the tracker mirrors it: :meth:`Tracker.sync` logs each cell that is
complete on disk as one MLflow run, nested under one parent run per run folder, and reads only the folder's
``manifest.json``, ``results.csv`` and ``history.csv`` (never ``patients.csv``), so MLflow holds nothing
the folder does not. Cells and the parent are found again by their tags, so a sync, or a ``--resume``,
never logs a cell twice.

Store: MLflow 3 keeps its file store (``./mlruns``) in maintenance mode and refuses it unless
``MLFLOW_ALLOW_FILE_STORE`` is set; its default is now a SQLite database, ``mlflow.db`` in the current
folder, its artifacts in ``./mlruns``. So with no ``tracking.uri`` harmonia opens a SQLite store inside the run
folder (``mlflow.db``), and a SQLite store keeps its artifacts beside it (``mlflow-artifacts/``), never in the
current folder.

mlflow is imported only by :func:`open_tracker`: ``import harmonia`` and runs without tracking never import it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import pandas as pd

from harmonia.errors import InputError, one_line
from harmonia.recipe import RUN_ONLY_SECTIONS, Experiment, SweepPoint
from harmonia.results import CELL_KEY, CellKey, RunFolder, read_history, read_results
from harmonia.settings import TrackingSpec

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Run

#: tag of every run harmonia logs: the run folder's absolute path
FOLDER_TAG = "harmonia.run_folder"
#: tag telling a run folder's parent run ("run_folder") from a cell's run ("cell")
ROLE_TAG = "harmonia.role"
#: tag of a cell's run: ``sweep_id/seed/train_domain``
CELL_TAG = "harmonia.cell"
#: MLflow's own tag that nests a run under another
PARENT_TAG = "mlflow.parentRunId"
#: MLflow's limits: characters of a param value and of a key; params, tags and all entities per batch call
MAX_PARAM_VALUE, MAX_KEY, MAX_PER_BATCH, MAX_ENTITIES = 6000, 250, 100, 1000
CUT_NOTE = " … (cut; the full value is in recipe.yaml)"
#: the parent run's status for each run status of the manifest
STATUS = {"running": "RUNNING", "completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
#: loggers whose INFO lines (a new SQLite store's migrations) are noise on a harmonia console
QUIET_LOGGERS = ("mlflow", "alembic")
#: history.csv columns that are no per-epoch figure
HISTORY_KEYS = (*CELL_KEY, "epoch", "selected")


def open_tracker(spec: TrackingSpec, run_dir: Path, experiment: Experiment) -> Tracker:
    """The tracker of ``run_dir``: its MLflow experiment (``spec.experiment`` or the recipe's name) and its parent
    run, found again by the folder's path (``--resume``) or created now.

    With no ``spec.uri`` the store is ``sqlite:///<run_dir>/mlflow.db``; a given ``uri`` (a server, another
    database) is used as it is. A new experiment in a SQLite store keeps its artifacts beside the database file,
    in ``mlflow-artifacts/``. mlflow missing, or a store it cannot open, is a one-line :class:`InputError`.
    """
    client_class = _client_class()
    run_dir = Path(run_dir).resolve()
    uri = spec.uri or f"sqlite:///{run_dir / 'mlflow.db'}"
    with _quiet(), _store_errors(uri):
        client = client_class(tracking_uri=uri)
        experiment_id = _experiment_id(client, spec.experiment or experiment.name, _artifact_root(uri))
        parent_id = _parent_run(client, experiment_id, run_dir, experiment.name)
    return Tracker(client, uri, experiment_id, parent_id, run_dir, experiment)


@dataclass
class Tracker:
    """One run folder's mirror in MLflow: a parent run for the folder, one child run per finished cell.

    Per cell: params are the cell's resolved recipe as dotted keys (``train.lr``, ``mitigations.0.params.weight``;
    not ``execution``, ``tracking`` or the ``sweep`` grid) with ``seed``, ``train_domain``, ``sweep_id`` and the
    swept values as ``sweep.<key>``; metrics are ``train_loss``, ``val_score`` and every extra history column
    (``dann.lambda``) at ``step=epoch``, ``selected_epoch``, the test values as ``test.<metric>.<test_domain>``
    and the manifest record's numbers (``seconds``, a mitigation's figures); tags hold cohort, modality,
    mitigations, data provenance and harmonia version. NaN values are not logged: an undefined metric is absent
    from MLflow, and results.csv and the manifest say why. Names keep letters, digits and ``_ - . space``; any
    other character becomes ``_``.
    """

    client: MlflowClient
    uri: str
    experiment_id: str
    parent_id: str
    run_dir: Path
    experiment: Experiment

    def sync(self) -> list[CellKey]:
        """Log every cell complete in the run folder (in ``manifest.json`` with all its rows in ``results.csv``)
        that the tracker lacks, and mirror the run's status on the parent; return the cells logged now.

        A cell's run is marked finished only once all its figures are logged; one an interrupted sync left
        unfinished is deleted and logged again.
        """
        folder = RunFolder(self.run_dir, [])
        manifest = folder.read_manifest()
        rows = _by_cell(read_results(folder.results_path, on_damage="drop"))
        epochs = _by_cell(read_history(folder.history_path))
        records = {_record_key(r): r for r in manifest.get("cells", [])}
        complete = {k: r for k, r in records.items() if len(rows.get(k, ())) == r["rows"]}
        with _quiet(), _store_errors(self.uri):
            logged = self._logged_cells()
            new = [key for key in complete if _cell_tag(key) not in logged]
            for key in new:
                self._log_cell(key, complete[key], rows[key], epochs.get(key, pd.DataFrame()), manifest)
            self._update_parent(manifest)
        return new

    def log_report(self, run_dir: Path) -> None:
        """Sync, then log the run folder's ``report.md``, ``recipe.yaml`` and ``figures/`` as artifacts of the
        parent run (after the report is written; a rewritten report replaces the earlier copy)."""
        self.sync()
        run_dir = Path(run_dir)
        with _quiet(), _store_errors(self.uri):
            for name in ("report.md", "recipe.yaml"):
                if (run_dir / name).is_file():
                    self.client.log_artifact(self.parent_id, str(run_dir / name))
            if (run_dir / "figures").is_dir():
                self.client.log_artifacts(self.parent_id, str(run_dir / "figures"), "figures")

    def _logged_cells(self) -> set[str]:
        """Cell tags of the parent's finished children; a child left unfinished is deleted, so it is logged anew."""
        done = set()
        for run in _runs(self.client, self.experiment_id, f"tags.`{PARENT_TAG}` = '{self.parent_id}'"):
            if run.info.status == "FINISHED":
                done.add(run.data.tags.get(CELL_TAG))
            else:
                self.client.delete_run(run.info.run_id)
        return done

    def _log_cell(
        self, key: CellKey, record: dict[str, Any], rows: pd.DataFrame, epochs: pd.DataFrame, manifest: dict[str, Any]
    ) -> None:
        """One cell's child run: created, given its params, metrics and tags, then marked finished."""
        from mlflow.entities import Param, RunTag

        first = rows.iloc[0]
        tags = {
            PARENT_TAG: self.parent_id,
            ROLE_TAG: "cell",
            FOLDER_TAG: str(self.run_dir),
            CELL_TAG: _cell_tag(key),
            "harmonia.version": str(manifest.get("harmonia_version", "unknown")),
            **{f"harmonia.{c}": str(first[c]) for c in ("cohort", "modality", "mitigations", "data")},
        }
        run_id = self.client.create_run(self.experiment_id, tags=tags, run_name=_run_name(key)).info.run_id
        params = [Param(k, v) for k, v in cell_params(self.experiment.points[key[0]], key).items()]
        notes = [RunTag(_name(k), v) for k, v in _record_figures(record).items() if isinstance(v, str)]
        metrics = _cell_metrics(rows, epochs, record)
        _log_batches(self.client, run_id, metrics, params, notes)
        self.client.set_terminated(run_id, "FINISHED")

    def _update_parent(self, manifest: dict[str, Any]) -> None:
        """Give the parent run the manifest's harmonia version and a status following the run's."""
        parent = self.client.get_run(self.parent_id)
        version = manifest.get("harmonia_version")
        if version and parent.data.tags.get("harmonia.version") != version:
            self.client.set_tag(self.parent_id, "harmonia.version", version)
        status = STATUS.get(manifest.get("status", ""))
        if status is None or status == parent.info.status:
            return
        if status == "RUNNING":
            self.client.update_run(self.parent_id, status)
        else:
            self.client.set_terminated(self.parent_id, status)


def cell_params(point: SweepPoint, key: CellKey) -> dict[str, str]:
    """MLflow params of a cell: its resolved recipe as dotted keys, less the run-only sections and the sweep grid,
    with the swept values as ``sweep.<key>`` and the cell's ``sweep_id``, ``seed`` and ``train_domain``."""
    recipe = point.recipe.model_dump(mode="json", exclude={*RUN_ONLY_SECTIONS, "sweep"})
    swept = {f"sweep.{k}": v for k, v in point.values.items()}
    values = {**_flatten(recipe), **swept, **dict(zip(CELL_KEY, key))}
    return {_name(k): _param_value(v) for k, v in values.items()}


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings and lists as one mapping of dotted key paths (list items by index) to their leaves;
    an empty mapping or list is a leaf."""
    if isinstance(value, dict) and value:
        items: Any = value.items()
    elif isinstance(value, list) and value:
        items = enumerate(value)
    else:
        return {prefix: value}
    flat: dict[str, Any] = {}
    for k, v in items:
        flat.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return flat


def _param_value(value: Any) -> str:
    """A param value as text (strings as they are, the rest as JSON), cut with a note to MLflow's length limit."""
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text if len(text) <= MAX_PARAM_VALUE else text[: MAX_PARAM_VALUE - len(CUT_NOTE)] + CUT_NOTE


def _name(text: str) -> str:
    """``text`` as an MLflow key: a character other than a letter, digit, ``_ - .`` or space becomes ``_`` (``/`` too,
    which MLflow reads as a path), and a key longer than MLflow allows is cut, ending in a hash of the whole."""
    name = re.sub(r"[^A-Za-z0-9_\-. ]", "_", text)
    if len(name) <= MAX_KEY:
        return name
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return f"{name[: MAX_KEY - len(digest) - 1]}_{digest}"


def _cell_metrics(rows: pd.DataFrame, epochs: pd.DataFrame, record: dict[str, Any]) -> list[Metric]:
    """A cell's metrics: per-epoch history at ``step=epoch``, the selected epoch, the test values and the manifest
    record's numbers; NaN values are left out."""
    from mlflow.entities import Metric

    figures = [(f"test.{r.metric}.{r.test_domain}", r.value, 0) for r in rows.itertuples()]
    figures += [
        (column, value, int(epoch))
        for column in epochs.columns
        if column not in HISTORY_KEYS
        for epoch, value in zip(epochs["epoch"], pd.to_numeric(epochs[column], errors="coerce"))
    ]
    if not epochs.empty:
        figures += [("selected_epoch", epochs.loc[epochs["selected"].astype(str) == "True", "epoch"].max(), 0)]
    figures += [(k, v, 0) for k, v in _record_figures(record).items() if _is_number(v)]
    stamp = int(time.time() * 1000)
    return [Metric(_name(n), float(v), stamp, step) for n, v, step in figures if not math.isnan(float(v))]


def _record_figures(record: dict[str, Any]) -> dict[str, Any]:
    """What the manifest records of a cell beyond its key and row count (``seconds``, ``<mitigation>.<figure>``)."""
    return {k: v for k, v in record.items() if k not in (*CELL_KEY, "rows")}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _log_batches(client: MlflowClient, run_id: str, metrics: list, params: list, tags: list) -> None:
    """Log metrics, params and tags in as few calls as MLflow's batch limits allow."""
    per_call = MAX_ENTITIES - 2 * MAX_PER_BATCH
    calls = max(math.ceil(len(metrics) / per_call), math.ceil(max(len(params), len(tags)) / MAX_PER_BATCH), 1)
    for i in range(calls):
        client.log_batch(
            run_id,
            metrics[i * per_call : (i + 1) * per_call],
            params[i * MAX_PER_BATCH : (i + 1) * MAX_PER_BATCH],
            tags[i * MAX_PER_BATCH : (i + 1) * MAX_PER_BATCH],
        )


def _by_cell(frame: pd.DataFrame) -> dict[CellKey, pd.DataFrame]:
    """A run-folder table (results, history) split by cell."""
    if frame.empty:
        return {}
    return {(int(s), int(i), str(d)): part for (s, i, d), part in frame.groupby(CELL_KEY, sort=False)}


def _record_key(record: dict[str, Any]) -> CellKey:
    return (int(record["sweep_id"]), int(record["seed"]), str(record["train_domain"]))


def _cell_tag(key: CellKey) -> str:
    return "/".join(str(part) for part in key)


def _run_name(key: CellKey) -> str:
    return f"sweep {key[0]} seed {key[1]} train {key[2]}"


def _client_class() -> type[MlflowClient]:
    """mlflow's client, imported here only; an InputError saying how to install mlflow if it is missing."""
    try:
        from mlflow import MlflowClient
    except ImportError as exc:
        if exc.name == "mlflow":
            raise InputError("tracking: mlflow is not installed; pip install 'harmonia[mlflow]'") from None
        raise InputError(f"tracking: mlflow cannot be imported ({one_line(exc)})") from None
    return MlflowClient


def _experiment_id(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    """The id of experiment ``name``, created (its artifacts at ``artifact_location``) if the store lacks it."""
    found = client.get_experiment_by_name(name)
    if found is None:
        return client.create_experiment(name, artifact_location=artifact_location)
    if found.lifecycle_stage != "active":
        raise InputError(
            f"tracking: experiment '{name}' is deleted in the store; restore it, or name another in tracking.experiment"
        )
    return found.experiment_id


def _artifact_root(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside a SQLite store's file (MLflow's default would be the
    current folder); for any other store, None: where the store (a server) decides."""
    from sqlalchemy.engine import make_url

    database = make_url(uri).database if uri.startswith("sqlite:") else None
    if not database or database == ":memory:":
        return None
    return (Path(database).resolve().parent / "mlflow-artifacts").as_uri()


def _parent_run(client: MlflowClient, experiment_id: str, run_dir: Path, recipe: str) -> str:
    """The id of the run folder's parent run: the active one tagged with the folder's path, else a new one."""
    for run in _runs(client, experiment_id, f"tags.`{ROLE_TAG}` = 'run_folder'"):
        if run.data.tags.get(FOLDER_TAG) == str(run_dir):
            return run.info.run_id
    tags = {ROLE_TAG: "run_folder", FOLDER_TAG: str(run_dir), "harmonia.recipe": recipe}
    return client.create_run(experiment_id, tags=tags, run_name=f"{recipe} {run_dir.name}").info.run_id


def _runs(client: MlflowClient, experiment_id: str, filter_string: str) -> Iterator[Run]:
    """Every active run of the experiment that ``filter_string`` selects, page by page."""
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


@contextmanager
def _quiet() -> Iterator[None]:
    """MLflow's and alembic's INFO lines kept off the console while the tracker works; their levels restored after."""
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


@contextmanager
def _store_errors(uri: str) -> Iterator[None]:
    """MLflow's failures (a server that does not answer, a store it cannot open) as one-line InputErrors naming
    the store (without any password in its address)."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        raise InputError(f"tracking: {_shown(uri)}: {one_line(exc)}") from None


def _shown(uri: str) -> str:
    """``uri`` without the user and password a server address may carry."""
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])) if "@" in parts.netloc else uri
