"""The run folder: resolved recipe, manifest, tidy results, training history and the Table-2 summary.

Every file is rewritten atomically (a temporary file and ``os.replace``) after each finished
(sweep point, seed, training domain) cell, so an interrupted run loses at most the cells in
progress. The manifest lists each finished cell with its number of result rows, so ``--resume``
can tell a complete cell from one a damaged ``results.csv`` holds only part of.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from harmonia.api import ALL_DOMAINS
from harmonia.errors import InputError, one_line

log = logging.getLogger(__name__)

HEAD_COLUMNS = ["cohort", "modality", "data", "mitigations", "sweep_id"]
TAIL_COLUMNS = ["seed", "train_domain", "test_domain", "metric", "value", "n"]
CELL_KEY = ["sweep_id", "seed", "train_domain"]
SUMMARY_KEY = ["cohort", "modality", "data", "mitigations", "sweep_id"]
HISTORY_COLUMNS = ["sweep_id", "seed", "train_domain", "epoch", "train_loss", "val_score", "selected"]
#: ``patients.csv``: per-patient values an evaluator gave (``Metric.per_patient``), by pseudonym
PATIENT_COLUMNS = ["sweep_id", "seed", "train_domain", "test_domain", "metric", "patient", "value"]
LOCK_NAME = ".harmonia.lock"

CellKey = tuple[int, int, str]


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` so that readers see either the old or the new file, never half of one."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``; the temporary file is removed when
    writing fails (a full disk, a read-only folder)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_results(path: Path, on_damage: Literal["error", "drop"] = "error") -> pd.DataFrame:
    """A ``results.csv`` with its text columns as text (domain names like "3" stay strings); empty if absent.

    A row that does not parse (cut mid-line, a wrong number of fields, a value that is not a
    number) is an :class:`InputError` naming the file and line, or with ``on_damage="drop"`` is
    left out with a warning (resume then redoes its cell).
    """
    path = Path(path)
    if not path.exists():
        return pd.DataFrame()
    try:
        text = path.read_text(encoding="utf-8")
        reader = csv.reader(io.StringIO(text))
        header = next(reader, None)
        good, damaged = [], []
        for row in reader:
            (good if header and _row_parses(header, row) else damaged).append((reader.line_num, row))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot read the results file ({one_line(exc)})") from None
    missing = [c for c in HEAD_COLUMNS + TAIL_COLUMNS if c not in (header or [])]
    if missing:
        raise InputError(
            f"{path}: damaged results file: the header lacks {missing}; restore it from a backup or start a new run"
        )
    if damaged:
        lines = ", ".join(str(n) for n, _ in damaged[:5])
        if on_damage == "error":
            raise InputError(
                f"{path}: damaged results file: line(s) {lines} do not parse; `harmonia run --resume` redoes their cells"
            )
        log.warning("%s: line(s) %s do not parse; their cells will be redone", path, lines)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(row for _, row in good)
    frame = pd.read_csv(io.StringIO(buffer.getvalue()), keep_default_na=False, na_values=[""])
    for column in ("train_domain", "test_domain", "metric", "cohort", "mitigations"):
        frame[column] = frame[column].astype(str)
    return frame


def _row_parses(header: list[str], row: list[str]) -> bool:
    """Whether ``row`` has every field and numbers where results hold numbers (an empty value is NaN)."""
    if len(row) != len(header):
        return False
    fields = dict(zip(header, row))
    try:
        for column in ("sweep_id", "seed", "n"):
            int(fields[column])
        if fields["value"] != "":
            float(fields["value"])
    except ValueError:
        return False
    return bool(fields["train_domain"]) and bool(fields["test_domain"]) and bool(fields["metric"])


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def recipe_fingerprint(resolved: dict[str, Any], version: str) -> str:
    """SHA-256 of a resolved recipe and the harmonia version, so ``--resume`` refuses a changed recipe."""
    text = json.dumps({"recipe": resolved, "harmonia": version}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def sweep_columns(sweep_keys: list[str]) -> list[str]:
    """Columns for swept parameters, named by their key path (skipping ones a fixed column already has)."""
    return [k for k in sweep_keys if k not in HEAD_COLUMNS + TAIL_COLUMNS]


def format_value(value: Any) -> Any:
    """Scalars as they are; lists and mappings as compact JSON, so every swept value fits one CSV cell."""
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return value


class RunFolder:
    """One run's folder (DESIGN.md §5): ``recipe.yaml``, ``manifest.json``, ``results.csv``, ``summary.csv``,
    ``history.csv`` (and ``unreadable.csv`` when a cohort skipped files, ``patients.csv`` when an evaluator
    gave per-patient values, ``harmonia.log`` with the details of any failure)."""

    def __init__(self, path: Path, sweep_keys: list[str]):
        self.path = Path(path)
        self.columns = HEAD_COLUMNS + sweep_columns(sweep_keys) + TAIL_COLUMNS
        self.results = pd.DataFrame(columns=self.columns)
        self.history = pd.DataFrame(columns=HISTORY_COLUMNS)
        self.patients = pd.DataFrame(columns=PATIENT_COLUMNS)

    @property
    def recipe_path(self) -> Path:
        return self.path / "recipe.yaml"

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    @property
    def results_path(self) -> Path:
        return self.path / "results.csv"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.csv"

    @property
    def history_path(self) -> Path:
        return self.path / "history.csv"

    @property
    def patients_path(self) -> Path:
        return self.path / "patients.csv"

    @property
    def log_path(self) -> Path:
        return self.path / "harmonia.log"

    @property
    def models_path(self) -> Path:
        """Where ``train.save_models`` keeps each cell's selected weights."""
        return self.path / "models"

    # -- manifest ---------------------------------------------------------------------------

    def read_manifest(self) -> dict[str, Any]:
        """The manifest (empty before the first write); an InputError naming the file if it is damaged."""
        if not self.manifest_path.exists():
            return {}
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{self.manifest_path}: damaged run manifest ({one_line(exc)})") from None
        if not isinstance(manifest, dict):
            raise InputError(f"{self.manifest_path}: damaged run manifest (not a JSON object)")
        return manifest

    def update_manifest(self, **fields: Any) -> dict[str, Any]:
        manifest = self.read_manifest()
        manifest.update(fields)
        atomic_write_text(self.manifest_path, json.dumps(manifest, indent=2, sort_keys=False) + "\n")
        return manifest

    def record_metrics(self, rows: list[dict[str, Any]]) -> None:
        """Record in the manifest which metric is primary and, per metric, whether higher is better.

        ``rows`` are one cell's result rows, each with the ``higher_is_better`` of the evaluator that
        made it; the first row holds the first metric of the first evaluator (the primary one). Reports
        read this to orient every comparison and to lead with the primary metric. Metrics of cell-scope
        evaluators (a vendor probe) are listed under ``cell_scope``: they have no same/other-domain reading.
        """
        recorded = self.read_manifest().get("metrics", {})
        directions = {r["metric"]: bool(r["higher_is_better"]) for r in rows}
        primary = recorded.get("primary") or (rows[0]["metric"] if rows else None)
        cell_scope = dict.fromkeys(
            recorded.get("cell_scope", []) + [r["metric"] for r in rows if r.get("scope") == "cell"]
        )
        metrics = {"primary": primary, "higher_is_better": {**recorded.get("higher_is_better", {}), **directions}}
        self.update_manifest(metrics={**metrics, "cell_scope": list(cell_scope)} if cell_scope else metrics)

    def record_per_cohort(self, field: str, cohort: str, value: Any) -> None:
        """Set ``manifest[field][cohort]``, keeping the other cohorts' entries."""
        entries = self.read_manifest().get(field, {})
        self.update_manifest(**{field: {**entries, cohort: value}})

    # -- one writer at a time -----------------------------------------------------------------

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder's lock file while running, so two ``--resume`` of one folder cannot both compute.

        A lock left by a process of this machine that no longer exists is taken over.
        """
        path = self.path / LOCK_NAME
        owner = f"{socket.gethostname()} {os.getpid()}"
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if not _stale(path):
                    holder = path.read_text(errors="replace").strip() or "unknown"
                    raise InputError(
                        f"{self.path}: another harmonia process ({holder}) is running in this run folder; "
                        f"wait for it to finish, or delete {LOCK_NAME} there if it is gone"
                    ) from None
                path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(owner)
            break
        try:
            yield
        finally:
            path.unlink(missing_ok=True)

    # -- files a cohort skipped ---------------------------------------------------------------

    @property
    def unreadable_path(self) -> Path:
        return self.path / "unreadable.csv"

    def add_unreadable(self, cohort: str, records: list[Any]) -> None:
        """List the files ``cohort`` skipped (pseudonymised records) in ``unreadable.csv`` and count them in the manifest."""
        rows = [{"cohort": cohort, "patient": r.patient, "file": r.file, "reason": r.reason} for r in records]
        old = pd.read_csv(self.unreadable_path, dtype=str) if self.unreadable_path.exists() else pd.DataFrame()
        if not old.empty:
            old = old[old["cohort"] != cohort]
        frame = pd.concat([old, pd.DataFrame(rows, columns=["cohort", "patient", "file", "reason"])], ignore_index=True)
        atomic_write_text(self.unreadable_path, frame.to_csv(index=False))
        self.record_per_cohort("unreadable_files", cohort, len(rows))

    # -- results ----------------------------------------------------------------------------

    def write_files(self, files: dict[str, bytes]) -> None:
        """Write a cell's files (``models/...``, ``artifacts/...``: paths relative to the folder) atomically."""
        for relative, data in files.items():
            path = (self.path / relative).resolve()
            if not path.is_relative_to(self.path.resolve()):
                raise ValueError(f"{relative}: a cell's file must lie inside the run folder")
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, data)

    def load_finished(self) -> set[CellKey]:
        """Read results and history back and return the cells that are complete on disk.

        A cell is complete when the manifest lists it and ``results.csv`` holds exactly as many
        parseable rows for it as it had when it finished. The rows of any other cell (cut by a
        crash, damaged by hand) are dropped with a warning, so that the cell is computed again.
        """
        results = read_results(self.results_path, on_damage="drop")
        history = read_history(self.history_path)
        patients = read_patient_values(self.patients_path)
        recorded = {
            (int(c["sweep_id"]), int(c["seed"]), str(c["train_domain"])): int(c["rows"])
            for c in self.read_manifest().get("cells", [])
        }
        counts = _rows_per_cell(results)
        finished = {key for key, rows in recorded.items() if counts.get(key) == rows}
        for key in sorted(set(counts) - finished, key=str):
            log.warning(
                "%s: cell (sweep %s, seed %s, train %s) is incomplete on disk; it will be computed again",
                self.results_path,
                *key,
            )
        self.results = _keep_cells(results, finished) if not results.empty else self.results
        self.history = _keep_cells(history, finished) if not history.empty else self.history
        self.patients = _keep_cells(patients, finished) if not patients.empty else self.patients
        return finished

    def add_cell(
        self,
        key: CellKey,
        rows: list[dict[str, Any]],
        history: list[dict[str, Any]],
        record: dict[str, Any] | None = None,
        patients: list[dict[str, Any]] | None = None,
    ) -> None:
        """Append one finished cell's result rows, epoch history and per-patient values; rewrite the files, then
        record the cell in the manifest with ``record`` (what its mitigations did, metrics left undefined)."""
        new = pd.DataFrame([{c: format_value(r.get(c)) for c in self.columns} for r in rows], columns=self.columns)
        frame = new if self.results.empty else pd.concat([self.results, new], ignore_index=True)
        rank = domain_rank(frame)
        self.results = _in_cell_order(frame, rank, ["test_domain"])
        epochs = pd.DataFrame([{**dict(zip(CELL_KEY, key)), **h} for h in history], columns=_history_columns(history))
        self.history = _in_cell_order(
            epochs if self.history.empty else pd.concat([self.history, epochs], ignore_index=True), rank, ["epoch"]
        )
        atomic_write_text(self.results_path, self.results.to_csv(index=False))
        cell_scope = self.read_manifest().get("metrics", {}).get("cell_scope", [])
        summary = summarize(self.results[~self.results["metric"].isin(cell_scope)], self.columns)
        atomic_write_text(self.summary_path, summary.to_csv(index=False))
        atomic_write_text(self.history_path, self.history.to_csv(index=False))
        if patients:
            new_patients = pd.DataFrame(patients, columns=PATIENT_COLUMNS)
            frame = new_patients if self.patients.empty else pd.concat([self.patients, new_patients])
            self.patients = _in_cell_order(frame, rank, [])
            atomic_write_text(self.patients_path, self.patients.to_csv(index=False))
        cells = self.read_manifest().get("cells", [])
        cells = [c for c in cells if (c["sweep_id"], c["seed"], c["train_domain"]) != key]
        self.update_manifest(
            cells=cells
            + [{"sweep_id": key[0], "seed": key[1], "train_domain": key[2], "rows": len(rows), **(record or {})}]
        )


def _in_cell_order(frame: pd.DataFrame, rank: dict[str, int], then: list[str]) -> pd.DataFrame:
    """``frame``'s rows by cell (sweep point, seed, training domain in the cohort's order), then by ``then``, so that
    the files are the same whatever order the cells finished in (several workers)."""
    return frame.sort_values(
        CELL_KEY + then,
        key=lambda c: c.map(rank) if c.name in ("train_domain", "test_domain") else c,
        kind="stable",
    ).reset_index(drop=True)


def _stale(lock: Path) -> bool:
    """Whether ``lock`` names a process of this machine that has ended."""
    try:
        host, pid = lock.read_text().split()
        if host != socket.gethostname():
            return False
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (OSError, ValueError):
        return False
    return False


def _history_columns(history: list[dict[str, Any]]) -> list[str]:
    """:data:`HISTORY_COLUMNS`, then the extra per-epoch columns of ``history`` (a mitigation's epoch
    metrics, e.g. ``dann.domain_accuracy``) in the order they first occur."""
    extras = dict.fromkeys(k for h in history for k in h if k not in HISTORY_COLUMNS)
    return HISTORY_COLUMNS + list(extras)


def read_history(path: Path) -> pd.DataFrame:
    """``history.csv`` (empty if absent); an InputError naming the file if it does not parse."""
    return _read_table(path, HISTORY_COLUMNS, "history file")


def read_patient_values(path: Path) -> pd.DataFrame:
    """``patients.csv`` (empty if absent); an InputError naming the file if it does not parse."""
    return _read_table(path, PATIENT_COLUMNS, "per-patient values file")


def _read_table(path: Path, columns: list[str], what: str) -> pd.DataFrame:
    """A per-cell CSV of the run folder (empty with ``columns`` if absent); an InputError naming it if it does
    not parse."""
    if not path.exists():
        return pd.DataFrame(columns=columns)
    text_columns = {c: str for c in ("train_domain", "test_domain", "patient") if c in columns}
    try:
        frame = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype=text_columns)
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError) as exc:
        raise InputError(
            f"{path}: damaged {what} ({one_line(exc)}); delete it to rebuild it from the cells rerun"
        ) from None
    return frame


def _rows_per_cell(results: pd.DataFrame) -> dict[CellKey, int]:
    if results.empty:
        return {}
    sizes = results.groupby(CELL_KEY, dropna=False).size()
    return {(int(s), int(i), str(d)): int(n) for (s, i, d), n in sizes.items()}


def _keep_cells(frame: pd.DataFrame, cells: set[CellKey]) -> pd.DataFrame:
    keys = zip(frame["sweep_id"].astype(int), frame["seed"].astype(int), frame["train_domain"].astype(str))
    return frame[[key in cells for key in keys]].reset_index(drop=True)


def domain_rank(results: pd.DataFrame) -> dict[str, int]:
    """Domains in the order they first appear as test domains (the cohort's own order), for sorting."""
    return {d: i for i, d in enumerate(dict.fromkeys(results["test_domain"]))}


def summarize(results: pd.DataFrame, columns: list[str] | None = None) -> pd.DataFrame:
    """Table 2 of Guo et al.: per sweep point, training domain and metric, same- vs other-domain mean ± sd and Δ.

    For each seed the other-domain value is the mean over all other test domains; mean and sample
    standard deviation are then taken over seeds, and Δ = other mean − same mean. ``delta_sd`` is
    the sample standard deviation over seeds of each seed's own Δ: same and other of one seed share
    its splits, so their spread about each other is smaller than ``same_sd`` and ``other_sd`` suggest.
    """
    results = results[results["test_domain"] != ALL_DOMAINS]  # a vendor probe's all-domain scores have no Δ
    if results.empty:
        return pd.DataFrame()
    columns = columns or list(results.columns)
    key = [c for c in columns if c not in TAIL_COLUMNS] + ["train_domain", "metric"]
    frame = results.assign(same=results["train_domain"] == results["test_domain"])
    per_seed = (
        frame.groupby(key + ["seed", "same"], dropna=False)["value"]
        .mean()
        .unstack("same")
        .rename(columns={True: "same", False: "other"})
    )
    for column in ("same", "other"):
        if column not in per_seed:
            per_seed[column] = np.nan
    per_seed["delta"] = per_seed["other"] - per_seed["same"]
    grouped = per_seed.groupby(level=key, dropna=False)
    summary = pd.DataFrame(
        {
            "same_mean": grouped["same"].mean(),
            "same_sd": grouped["same"].std(ddof=1),
            "other_mean": grouped["other"].mean(),
            "other_sd": grouped["other"].std(ddof=1),
            "n_seeds": grouped["same"].count(),
        }
    )
    summary["delta"] = summary["other_mean"] - summary["same_mean"]
    summary["delta_sd"] = grouped["delta"].std(ddof=1)
    measures = ["same_mean", "same_sd", "other_mean", "other_sd", "delta", "delta_sd", "n_seeds"]
    summary = summary.reset_index()[key + measures]
    rank = domain_rank(results)
    return summary.sort_values(
        ["sweep_id", "train_domain"], key=lambda c: c.map(rank) if c.name == "train_domain" else c, kind="stable"
    ).reset_index(drop=True)
