"""Reports of a run folder: the console table, ``report.md`` and ``figures/``.

Everything here is read back from ``results.csv`` and ``manifest.json``, so a report can be
rebuilt at any time (``harmonia report RUN_DIR``), also for an interrupted run. The report covers
every metric; the console shows the primary one. The comparisons' statistics are in
:mod:`harmonia.statistics`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from harmonia import statistics  # noqa: E402
from harmonia.errors import InputError  # noqa: E402
from harmonia.results import TAIL_COLUMNS, RunFolder, atomic_write_text, domain_rank, read_results, summarize  # noqa: E402

#: how the comparisons are made, said once in report.md (docs/protocol.md has the details)
METHOD_NOTE = [
    "Each setting (a sweep point with mitigations) is paired with the baseline point without mitigations that",
    "has the same value of every swept key except the mitigation keys; a setting with no such baseline is not",
    "compared. The pairing is per (seed, training domain) cell; the paired differences are averaged over the",
    "training domains of each seed, because the cells of one seed share its splits, so n is the number of seeds.",
    "Each interval is a 95% CI by Student's t with n − 1 degrees of freedom: a paired t over seeds for a change,",
    "a one-sample t over seeds for a baseline's Δ. The verdict uses the narrowing of the gap (baseline gap −",
    "setting gap, positive = narrower, oriented by which way the metric is better): narrowed or widened when its",
    "two-sided t-test p, Holm-adjusted over the settings compared on the metric, is below 0.05, otherwise no",
    "clear change. A narrowed gap is flagged when the same-domain value clearly got worse (its 95% CI excludes 0",
    "on the bad side).",
]


def _pm(mean: float, sd: float, signed: bool = False) -> str:
    if math.isnan(mean):
        return "n/a"
    shown = f"{mean:+.3f}" if signed else f"{mean:.3f}"
    return f"{shown} ± {sd:.3f}" if not math.isnan(sd) else shown


def read_run(run_dir: Path) -> tuple[pd.DataFrame, dict]:
    """The results and manifest of ``run_dir``; an InputError naming the folder or the damaged file."""
    folder = RunFolder(Path(run_dir), [])
    if not folder.manifest_path.is_file():
        raise InputError(f"{run_dir}: not a harmonia run folder (no manifest.json)")
    return read_results(folder.results_path), folder.read_manifest()


@dataclass(frozen=True)
class MetricInfo:
    """A metric of the run and which way is better, as the manifest recorded it at run time.

    ``recorded`` is False for a run folder from before harmonia recorded it; higher is then assumed better.
    """

    name: str
    higher_is_better: bool = True
    recorded: bool = True

    @property
    def direction(self) -> str:
        if not self.recorded:
            return "higher assumed better (not recorded in the manifest)"
        return "higher is better" if self.higher_is_better else "lower is better"


def primary_metric(results: pd.DataFrame, manifest: dict | None = None) -> str:
    """The first metric of the recipe's first evaluator (the one epochs are selected on), as recorded in the
    manifest; for an older run folder, the metric of ``results.csv``'s first row."""
    recorded = (manifest or {}).get("metrics", {}).get("primary")
    if recorded and (results.empty or recorded in set(results["metric"])):
        return str(recorded)
    return str(results["metric"].iloc[0]) if not results.empty else ""


def metric_infos(results: pd.DataFrame, manifest: dict) -> list[MetricInfo]:
    """Every metric of the run, the primary one first, then in the order they first appear."""
    primary = primary_metric(results, manifest)
    directions = manifest.get("metrics", {}).get("higher_is_better", {})
    names = [primary] + [m for m in dict.fromkeys(results["metric"]) if m != primary]
    return [MetricInfo(m, bool(directions.get(m, True)), m in directions) for m in names]


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


def table_rows(results: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The Table-2 rows of ``metric``: one per sweep point and training domain; Δ ± its sd over seeds."""
    summary = summarize(results)
    summary = summary[summary["metric"] == metric]
    labels = point_labels(results)
    return pd.DataFrame(
        {
            "setting": [labels[int(s)] for s in summary["sweep_id"]],
            "train domain": summary["train_domain"],
            f"same-domain {metric}": [_pm(m, s) for m, s in zip(summary["same_mean"], summary["same_sd"])],
            f"other-domain {metric}": [_pm(m, s) for m, s in zip(summary["other_mean"], summary["other_sd"])],
            "Δ": [_pm(d, s, signed=True) for d, s in zip(summary["delta"], summary["delta_sd"])],
            "seeds": summary["n_seeds"],
        }
    )


def console_lines(results: pd.DataFrame, manifest: dict) -> list[str]:
    """What ``harmonia run`` prints at the end: the table and comparison of the primary metric."""
    if results.empty:
        return ["(no finished cells yet)"]
    infos = metric_infos(results, manifest)
    lines = [table_rows(results, infos[0].name).to_string(index=False), "", *gap_comparison(results, infos[0])]
    if len(infos) > 1:
        lines.append(f"(report.md covers every metric: {', '.join(i.name for i in infos)})")
    return lines


def gap_comparison(results: pd.DataFrame, info: MetricInfo) -> list[str]:
    """Sentences on whether the shift is real for the baselines and whether each setting narrowed the gap.

    The statistics are those of :mod:`harmonia.statistics`: each setting paired with the baseline of the
    same swept values, per seed, with a 95% paired t interval and a Holm-adjusted verdict. Every line
    says its interval and how it was computed.
    """
    rows = results[results["metric"] == info.name]
    cells = statistics.cell_values(rows, info.name)
    if cells["other"].isna().all():
        return ["Only one domain was tested, so there is no cross-domain gap to report."]
    labels = point_labels(results)
    plain = statistics.baseline_points(rows)
    kind = "Baseline" if plain and len(labels) > 1 else "Setting"
    described = plain or sorted(int(s) for s in rows["sweep_id"].unique())
    lines = [_shift_line(f"{kind} {labels[p]}", statistics.shift(cells, p), info) for p in described]
    comparisons = statistics.compare(rows, info.name, info.higher_is_better)
    tested = sum(
        c.verdict in (statistics.NARROWED, statistics.WIDENED, statistics.NO_CLEAR_CHANGE) for c in comparisons
    )
    keys = statistics.pairing_keys(rows)
    return lines + [_comparison_line(c, labels, info, tested, keys) for c in comparisons]


def _shift_line(name: str, delta: statistics.Estimate, info: MetricInfo) -> str:
    """Whether other-domain values differ from same-domain ones for one sweep point, with the CI of Δ."""
    m = info.name
    head = f"{name}: mean Δ {delta.mean:+.3f} (other − same {m})"
    if delta.n < 2:
        return f"{head} over {delta.n} seed{'' if delta.n == 1 else 's'}; not enough seeds for a CI."
    low, high = (delta.low, delta.high) if info.higher_is_better else (-delta.high, -delta.low)
    if high < 0:
        finding = f"other-domain {m} was worse than same-domain, a cross-domain loss"
    elif low > 0:
        finding = f"other-domain {m} was better than same-domain"
    else:
        finding = "no clear cross-domain difference"
    return f"{head}, {_ci(delta)} (t over {delta.n} seeds): {finding}."


def _comparison_line(
    c: statistics.Comparison, labels: dict[int, str], info: MetricInfo, tested: int, keys: list[str]
) -> str:
    """One setting's verdict against its baseline, with the CI of the narrowing and how it was computed."""
    m, name = info.name, labels[c.setting]
    if c.baseline is None:
        return f"{name}: no comparison: no sweep point without mitigations has the same {', '.join(keys)}."
    name = f"{name} vs {labels[c.baseline]}"
    n = c.narrowing
    if n.n == 0:
        return f"{name}: no (seed, training domain) cells paired with the baseline yet."
    if c.verdict == statistics.FEW_SEEDS:
        return f"{name}: narrowing of the gap {n.mean:+.3f} on 1 seed; not enough seeds for a CI or a verdict."
    if c.verdict == statistics.NARROWED:
        finding = f"narrowed the gap in {m} by {n.mean:.3f}"
    elif c.verdict == statistics.WIDENED:
        finding = f"widened the gap in {m} by {-n.mean:.3f}"
    else:
        finding = f"no clear change in the gap in {m} (narrowing {n.mean:+.3f})"
    settings = f"{tested} setting{'s' if tested > 1 else ''}"
    how = f"{statistics.METHOD}, n = {n.n}; Holm-adjusted p {_p(c.p_adjusted)} across {settings}"
    line = f"{name}: {finding}, {_ci(n)} ({how})"
    if c.same_worse:
        fell = "fell" if info.higher_is_better else "rose"
        line += f", but same-domain {m} {fell} by {abs(c.same.mean):.3f} ({_ci(c.same)})"
    return (
        f"{line}. Change in other-domain {m} {c.other.mean:+.3f} ({_ci(c.other)}), "
        f"in same-domain {m} {c.same.mean:+.3f} ({_ci(c.same)})."
    )


def _ci(e: statistics.Estimate) -> str:
    return f"95% CI {e.low:+.3f} to {e.high:+.3f}"


def _p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"= {p:.3f}"


def _gap_definition(info: MetricInfo) -> str:
    gap = "same − other" if info.higher_is_better else "other − same"
    return f"{info.direction}; the gap is the cross-domain loss, {gap} {info.name}"


def matrix(results: pd.DataFrame, metric: str) -> dict[str, pd.DataFrame]:
    """Per sweep point, the mean of ``metric`` by training (rows) and test (columns) domain."""
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
        lines += _metric_sections(results, manifest, run_dir)
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def _metric_sections(results: pd.DataFrame, manifest: dict, run_dir: Path) -> list[str]:
    """The Table-2 section of every metric, the comparisons per metric, and the primary metric's matrix and figure."""
    infos = metric_infos(results, manifest)
    primary = infos[0].name
    lines = []
    for info in infos:
        lines += [
            f"## Same- vs other-domain {info.name}{' (primary)' if info.name == primary else ''} (mean ± sd over seeds)",
            "",
            table_rows(results, info.name).to_markdown(index=False),
            "",
            "Δ = other-domain − same-domain (± its sd over seeds); the other-domain value of a seed is its mean over "
            "all other test domains.",
            "",
        ]
    lines += ["## Did the mitigation narrow the gap?", "", *METHOD_NOTE, ""]
    for info in infos:
        lines += [f"### {info.name} ({_gap_definition(info)})", ""]
        lines += [f"- {s}" for s in gap_comparison(results, info)] + [""]
    lines += [f"## Mean {primary} by training (rows) and test (columns) domain", ""]
    for label, table in matrix(results, primary).items():
        lines += [f"### {label}", "", table.round(3).to_markdown(), ""]
    figure = _figure(results, run_dir / "figures", primary)
    return lines + [f"![same vs other domain]({figure.relative_to(run_dir).as_posix()})", ""]


def _figure(results: pd.DataFrame, folder: Path, metric: str) -> Path:
    """Grouped bars: same- and other-domain ``metric`` per training domain, one panel per sweep point."""
    folder.mkdir(exist_ok=True)
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
