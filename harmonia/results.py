"""The run folder: resolved recipe, manifest, tidy results and the Table-2 summary, written atomically.

Results are rewritten after every finished (sweep point, seed, training domain) cell through a
temporary file and ``os.replace``, so an interrupted run loses at most the cell in progress.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HEAD_COLUMNS = ["cohort", "modality", "data", "mitigations", "sweep_id"]
TAIL_COLUMNS = ["seed", "train_domain", "test_domain", "metric", "value", "n"]
CELL_KEY = ["sweep_id", "seed", "train_domain"]
SUMMARY_KEY = ["cohort", "modality", "data", "mitigations", "sweep_id"]


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see either the old or the new file, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_results(path: Path) -> pd.DataFrame:
    """A ``results.csv`` with its text columns as text (domain names like "3" stay strings); empty if absent."""
    if not Path(path).exists():
        return pd.DataFrame()
    frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
    for column in ("train_domain", "test_domain", "metric", "cohort", "mitigations"):
        frame[column] = frame[column].astype(str)
    return frame


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def sweep_columns(sweep_keys: list[str]) -> list[str]:
    """Columns for swept parameters, named by their key path (skipping ones a fixed column already has)."""
    return [k for k in sweep_keys if k not in HEAD_COLUMNS + TAIL_COLUMNS]


def format_value(value: Any) -> Any:
    """Scalars as they are; lists and mappings as compact JSON, so every swept value fits one CSV cell."""
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return value


class RunFolder:
    """One run's folder (DESIGN.md §5): ``recipe.yaml``, ``manifest.json``, ``results.csv``, ``summary.csv``
    (and ``unreadable.csv`` when a cohort skipped files)."""

    def __init__(self, path: Path, sweep_keys: list[str]):
        self.path = Path(path)
        self.columns = HEAD_COLUMNS + sweep_columns(sweep_keys) + TAIL_COLUMNS
        self.results = self._read_results()

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

    def _read_results(self) -> pd.DataFrame:
        frame = read_results(self.results_path)
        return frame if not frame.empty else pd.DataFrame(columns=self.columns)

    # -- manifest ---------------------------------------------------------------------------

    def read_manifest(self) -> dict[str, Any]:
        return json.loads(self.manifest_path.read_text()) if self.manifest_path.exists() else {}

    def update_manifest(self, **fields: Any) -> dict[str, Any]:
        manifest = self.read_manifest()
        manifest.update(fields)
        atomic_write_text(self.manifest_path, json.dumps(manifest, indent=2, sort_keys=False) + "\n")
        return manifest

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

    def record_per_cohort(self, field: str, cohort: str, value: Any) -> None:
        """Set ``manifest[field][cohort]``, keeping the other cohorts' entries."""
        entries = self.read_manifest().get(field, {})
        self.update_manifest(**{field: {**entries, cohort: value}})

    # -- results ----------------------------------------------------------------------------

    def done_cells(self) -> set[tuple[int, int, str]]:
        """The (sweep_id, seed, train_domain) cells whose results are on disk."""
        if self.results.empty:
            return set()
        keys = self.results[CELL_KEY].drop_duplicates()
        return {(int(s), int(i), str(d)) for s, i, d in keys.itertuples(index=False)}

    def add_cell(self, rows: list[dict[str, Any]]) -> None:
        """Append one finished cell's rows and rewrite ``results.csv`` and ``summary.csv`` atomically."""
        new = pd.DataFrame([{c: format_value(r.get(c)) for c in self.columns} for r in rows], columns=self.columns)
        frame = new if self.results.empty else pd.concat([self.results, new], ignore_index=True)
        rank = domain_rank(frame)
        self.results = frame.sort_values(
            ["sweep_id", "seed", "train_domain", "test_domain"], key=lambda c: c.map(rank) if c.name in ("train_domain", "test_domain") else c, kind="stable"
        ).reset_index(drop=True)
        atomic_write_text(self.results_path, self.results.to_csv(index=False))
        atomic_write_text(self.summary_path, summarize(self.results, self.columns).to_csv(index=False))


def domain_rank(results: pd.DataFrame) -> dict[str, int]:
    """Domains in the order they first appear as test domains (the cohort's own order), for sorting."""
    return {d: i for i, d in enumerate(dict.fromkeys(results["test_domain"]))}


def summarize(results: pd.DataFrame, columns: list[str] | None = None) -> pd.DataFrame:
    """Table 2 of seed 001: per sweep point, training domain and metric, same- vs other-domain mean ± sd and Δ.

    For each seed the other-domain value is the mean over all other test domains; mean and sample
    standard deviation are then taken over seeds, and Δ = other mean − same mean.
    """
    if results.empty:
        return pd.DataFrame()
    columns = columns or list(results.columns)
    key = [c for c in columns if c not in TAIL_COLUMNS] + ["train_domain", "metric"]
    frame = results.assign(same=results["train_domain"] == results["test_domain"])
    per_seed = (
        frame.groupby(key + ["seed", "same"], dropna=False)["value"].mean().unstack("same").rename(columns={True: "same", False: "other"})
    )
    for column in ("same", "other"):
        if column not in per_seed:
            per_seed[column] = np.nan
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
    summary = summary.reset_index()[key + ["same_mean", "same_sd", "other_mean", "other_sd", "delta", "n_seeds"]]
    rank = domain_rank(results)
    return summary.sort_values(
        ["sweep_id", "train_domain"], key=lambda c: c.map(rank) if c.name == "train_domain" else c, kind="stable"
    ).reset_index(drop=True)
