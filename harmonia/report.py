"""Reports of a run folder: the console table, ``report.md`` and ``figures/``.

Everything here is read back from ``results.csv`` and ``manifest.json``, so a report can be
rebuilt at any time (``harmonia report RUN_DIR``), also for an interrupted run.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from harmonia.errors import InputError  # noqa: E402
from harmonia.results import TAIL_COLUMNS, RunFolder, atomic_write_text, domain_rank, read_results, summarize  # noqa: E402


def _pm(mean: float, sd: float) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.3f} ± {sd:.3f}" if not math.isnan(sd) else f"{mean:.3f}"


def read_run(run_dir: Path) -> tuple[pd.DataFrame, dict]:
    """The results and manifest of ``run_dir``; an InputError naming the folder or the damaged file."""
    folder = RunFolder(Path(run_dir), [])
    if not folder.manifest_path.is_file():
        raise InputError(f"{run_dir}: not a harmonia run folder (no manifest.json)")
    return read_results(folder.results_path), folder.read_manifest()


def primary_metric(results: pd.DataFrame) -> str:
    """The first metric of the first evaluator (the one epochs are selected on)."""
    return str(results["metric"].iloc[0]) if not results.empty else ""


def point_labels(results: pd.DataFrame) -> dict[int, str]:
    """A readable label per sweep point: its mitigations plus its swept values."""
    head = ["cohort", "modality", "data", "mitigations", "sweep_id"]
    swept = [c for c in results.columns if c not in head + TAIL_COLUMNS]
    labels = {}
    for sweep_id, rows in results.groupby("sweep_id"):
        first = rows.iloc[0]
        extra = ", ".join(f"{c}={first[c]}" for c in swept if c != "mitigations")
        labels[int(sweep_id)] = f"{first['mitigations']}" + (f" ({extra})" if extra else "")
    return labels


def table_rows(results: pd.DataFrame) -> pd.DataFrame:
    """The Table-2 rows of the primary metric: one per sweep point and training domain."""
    metric = primary_metric(results)
    summary = summarize(results)
    summary = summary[summary["metric"] == metric]
    labels = point_labels(results)
    return pd.DataFrame(
        {
            "setting": [labels[int(s)] for s in summary["sweep_id"]],
            "train domain": summary["train_domain"],
            f"same-domain {metric}": [_pm(m, s) for m, s in zip(summary["same_mean"], summary["same_sd"])],
            f"other-domain {metric}": [_pm(m, s) for m, s in zip(summary["other_mean"], summary["other_sd"])],
            "Δ": [f"{d:+.3f}" if not math.isnan(d) else "n/a" for d in summary["delta"]],
            "seeds": summary["n_seeds"],
        }
    )


def console_table(results: pd.DataFrame) -> str:
    """The per-domain table printed at the end of ``harmonia run``."""
    if results.empty:
        return "(no finished cells yet)"
    return table_rows(results).to_string(index=False)


def gap_comparison(results: pd.DataFrame) -> list[str]:
    """Sentences on whether the shift is real for the baseline and whether each mitigation narrowed it.

    Compared per (seed, training domain) cell, paired: the baseline is the sweep point without
    mitigations (or sweep point 0). The wording follows the measurement, whichever way it went.
    """
    metric = primary_metric(results)
    rows = results[results["metric"] == metric]
    same = rows["train_domain"] == rows["test_domain"]
    key = ["sweep_id", "seed", "train_domain"]
    gap = (rows[~same].groupby(key)["value"].mean() - rows[same].groupby(key)["value"].mean()).rename("gap")
    gap = gap.reset_index()
    if gap.empty:
        return ["Only one domain was tested, so there is no cross-domain gap to report."]
    labels = point_labels(results)
    plain = [s for s, label in labels.items() if label.startswith("none")]
    base = plain[0] if plain else min(labels)
    lines = []
    base_gap = gap[gap["sweep_id"] == base]
    worse = int((base_gap["gap"] < 0).sum())
    lines.append(
        f"{'Baseline' if len(labels) > 1 else 'Setting'} ({labels[base]}): mean Δ {base_gap['gap'].mean():+.3f}; other-domain {metric} was below "
        f"same-domain {metric} in {worse} of {len(base_gap)} (seed, training domain) cells."
    )
    for sweep_id in sorted(labels):
        if sweep_id == base:
            continue
        paired = gap[gap["sweep_id"] == sweep_id].merge(base_gap, on=["seed", "train_domain"], suffixes=("", "_base"))
        if paired.empty:
            lines.append(f"{labels[sweep_id]}: no cells paired with the baseline yet.")
            continue
        change = (paired["gap"] - paired["gap_base"]).mean()
        narrower = int((paired["gap"].abs() < paired["gap_base"].abs()).sum())
        verdict = "narrowed" if change > 0 else ("widened" if change < 0 else "did not change")
        lines.append(
            f"{labels[sweep_id]}: mean Δ {paired['gap'].mean():+.3f} vs {paired['gap_base'].mean():+.3f} for the baseline "
            f"on the same cells, so it {verdict} the cross-domain gap by {abs(change):.3f} on average; "
            f"the gap was smaller in {narrower} of {len(paired)} paired cells."
        )
    return lines


def matrix(results: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per sweep point, the mean primary metric by training (rows) and test (columns) domain."""
    metric = primary_metric(results)
    rows = results[results["metric"] == metric]
    labels = point_labels(results)
    order = list(domain_rank(results))
    tables = {}
    for sweep_id, part in rows.groupby("sweep_id"):
        table = part.pivot_table(index="train_domain", columns="test_domain", values="value", aggfunc="mean")
        tables[labels[int(sweep_id)]] = table.reindex(
            index=[d for d in order if d in table.index], columns=[d for d in order if d in table.columns]
        )
    return tables


def write_report(run_dir: Path) -> Path:
    """Write ``report.md`` and ``figures/`` for ``run_dir`` and return the report's path."""
    run_dir = Path(run_dir)
    results, manifest = read_run(run_dir)
    provenance = manifest.get("data_provenance", {})
    synthetic = any(p.get("data") == "synthetic" for p in provenance.values())
    title = f"# {manifest.get('recipe', run_dir.name)}: cross-scanner report"
    if synthetic:
        title += " (SYNTHETIC data)"
    lines = [title, ""]
    if synthetic:
        lines += [
            "> These numbers come from harmonia's synthetic twin, not from a real cohort: they show the",
            "> protocol and the methods working, not clinical performance.",
            "",
        ]
    lines += [
        f"- status: {manifest.get('status', '?')} (started {manifest.get('started')}, finished {manifest.get('finished')})"
    ]
    for cohort, p in provenance.items():
        lines.append(f"- data: {cohort}: {p.get('data')} ({p.get('origin')})")
    lines += [
        f"- harmonia {manifest.get('harmonia_version')}, torch {manifest.get('torch_version')}, device {manifest.get('device')}",
        "",
    ]
    if results.empty:
        lines.append("No (seed, training domain) cell has finished yet.")
    else:
        metric = primary_metric(results)
        lines += [
            f"## Same- vs other-domain {metric} (mean ± sd over seeds)",
            "",
            table_rows(results).to_markdown(index=False),
            "",
        ]
        lines += [
            "Δ = other-domain − same-domain; the other-domain value of a seed is its mean over all other test domains.",
            "",
        ]
        lines += ["## Did the mitigation narrow the gap?", ""] + [f"- {s}" for s in gap_comparison(results)] + [""]
        lines += [f"## Mean {metric} by training (rows) and test (columns) domain", ""]
        for label, table in matrix(results).items():
            lines += [f"### {label}", "", table.round(3).to_markdown(), ""]
        figure = _figure(results, run_dir / "figures")
        lines += [f"![same vs other domain]({figure.relative_to(run_dir).as_posix()})", ""]
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def _figure(results: pd.DataFrame, folder: Path) -> Path:
    """Grouped bars: same- and other-domain primary metric per training domain, one panel per sweep point."""
    folder.mkdir(exist_ok=True)
    metric = primary_metric(results)
    summary = summarize(results)
    summary = summary[summary["metric"] == metric]
    labels = point_labels(results)
    points = sorted(summary["sweep_id"].unique())
    fig, axes = plt.subplots(1, len(points), figsize=(4 * len(points), 3.2), sharey=True, squeeze=False)
    for ax, sweep_id in zip(axes[0], points):
        part = summary[summary["sweep_id"] == sweep_id]
        x = range(len(part))
        ax.bar([i - 0.2 for i in x], part["same_mean"], 0.4, yerr=part["same_sd"].fillna(0), label="same domain")
        ax.bar([i + 0.2 for i in x], part["other_mean"], 0.4, yerr=part["other_sd"].fillna(0), label="other domains")
        ax.set_xticks(list(x), part["train_domain"])
        ax.set_title(labels[int(sweep_id)], fontsize=9)
        ax.set_xlabel("training domain")
    axes[0][0].set_ylabel(metric)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    path = folder / "same_vs_other.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
