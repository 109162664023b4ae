"""Reports of a run folder: the console table, ``report.md`` and ``figures/``.

Everything here is read back from ``results.csv``, ``manifest.json`` and ``recipe.yaml``, so a report can be
rebuilt at any time (``harmonia report RUN_DIR``), also for an interrupted run. The report covers every
metric; the console shows the primary one. It follows Guo et al.: Table 2 (same- vs other-domain per dataset
and training domain, and the mean Δ per modality), Figure 2 (paired bars), Figure 3 (Δ by modality) and
Figures 4/5 (the metric against the level of a swept mitigation parameter). With ``reference: guo_table2`` in
the recipe the paper's published numbers (:mod:`harmonia.references`) stand beside the run's own. The title,
every table's caption and every figure say whether the data are SYNTHETIC, real or mixed. The comparisons'
statistics are in :mod:`harmonia.statistics`; the figures are drawn by :mod:`harmonia.figures`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml
from matplotlib.figure import Figure

from harmonia import anatomy, cell_metrics, figures, leaderboard, patient_comparison, references, statistics
from harmonia.api import ALL_DOMAINS
from harmonia.errors import InputError, one_line
from harmonia.references import Reference
from harmonia.results import RunFolder, atomic_write_text, read_results
from harmonia.tables import (
    Provenance,
    UndefinedValues,
    domain_order,
    is_ci_bound,
    level_curves,
    level_keys,
    level_table,
    modality_means,
    point_labels,
    provenance,
    short_key,
    study_table,
    undefined_values,
    unlevelled_points,
)

#: how the comparisons are made, said once in report.md (docs/protocol.md has the details)
METHOD_NOTE = [
    "Each setting (a sweep point with mitigations) is paired with the baseline point without mitigations that",
    "has the same cohort and the same value of every swept key except the mitigation keys; a setting with no such",
    "baseline is not compared. The pairing is per (seed, training domain) cell; the paired differences are",
    "averaged over the training domains of each seed, because the cells of one seed share its splits, so n is the",
    "number of seeds. Each interval is a 95% CI by Student's t with n − 1 degrees of freedom: a paired t over",
    "seeds for a change, a one-sample t over seeds for a baseline's Δ. The verdict uses the narrowing of the gap",
    "(baseline gap − setting gap, positive = narrower, oriented by which way the metric is better): narrowed or",
    "widened when its two-sided t-test p, Holm-adjusted over the settings compared on the metric (every level of",
    "every cohort), is below 0.05, otherwise no clear change. A narrowed gap is flagged when the same-domain value",
    "clearly got worse (its 95% CI excludes 0 on the bad side).",
]

#: how Table 2 and the mean Δ per modality are computed, said under the first Table 2
TABLE_NOTE = (
    "Δ = other-domain − same-domain (± its sd over seeds: the sd of each seed's own Δ). A seed's other-domain "
    "value is its mean over all other test domains; means and sample sds are over seeds. Seeds counts the seeds "
    "with a same-domain value, and the seeds with an other-domain value where fewer (an undefined value); Δ is "
    "then the difference of means over different seeds."
)
MODALITY_NOTE = (
    "Mean Δ is the mean of the Δ column over the modality's (dataset, training domain) rows, each row weighing "
    "the same, as Guo et al. average; rows counts them. The sd over rows is the spread between datasets and "
    "training domains (sample sd of the rows' Δ). The sd over seeds is the seed-to-seed spread of that mean: "
    "for each seed index the mean Δ over the rows, then the sample sd of those per-seed means (the cohorts' "
    "seeds are independent runs, grouped by their index)."
)


def _pm(mean: float, sd: float, signed: bool = False) -> str:
    if math.isnan(mean):
        return "n/a"
    shown = f"{mean:+.3f}" if signed else f"{mean:.3f}"
    return f"{shown} ± {sd:.3f}" if not math.isnan(sd) else shown


def _signed(value: float) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:+.3f}"


def read_run(run_dir: Path) -> tuple[pd.DataFrame, dict]:
    """The results and manifest of ``run_dir``; an InputError naming the folder or the damaged file."""
    folder = RunFolder(Path(run_dir), [])
    if not folder.manifest_path.is_file():
        raise InputError(f"{run_dir}: not a harmonia run folder (no manifest.json)")
    return read_results(folder.results_path), folder.read_manifest()


def read_reference(run_dir: Path) -> tuple[Reference | None, str | None]:
    """The published results the run's ``recipe.yaml`` names under ``reference`` (None without one), and the name
    as written when this harmonia does not know it. No ``recipe.yaml`` (an older folder) means no reference;
    one that does not parse is an InputError naming it."""
    path = RunFolder(Path(run_dir), []).recipe_path
    if not path.is_file():
        return None, None
    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InputError(f"{path}: damaged recipe ({one_line(exc)})") from None
    key = recipe.get("reference") if isinstance(recipe, dict) else None
    if not key:
        return None, None
    found = references.get(str(key))
    return found, None if found else str(key)


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
    """Every test-set metric of the run, the primary one first, then in the order they first appear; the bounds
    of a metric's confidence interval (``auc_ci_low``, ``auc_ci_high``) are shown with it, not as metrics."""
    primary = primary_metric(results, manifest)
    directions = manifest.get("metrics", {}).get("higher_is_better", {})
    present = set(results["metric"])
    names = [primary] + [m for m in dict.fromkeys(results["metric"]) if m != primary and not is_ci_bound(m, present)]
    return [MetricInfo(m, bool(directions.get(m, True)), m in directions) for m in names]


def split_scopes(results: pd.DataFrame, manifest: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows of test-set metrics (Table 2 and its comparisons) and those of cell-scope metrics (a vendor
    probe's), which have no same- or other-domain reading."""
    cell_scope = set(manifest.get("metrics", {}).get("cell_scope", []))
    is_cell = results["metric"].isin(cell_scope) | (results["test_domain"] == ALL_DOMAINS)
    return results[~is_cell].reset_index(drop=True), results[is_cell].reset_index(drop=True)


def _seeds_text(n_same: int, n_other: int) -> str:
    return str(n_same) if n_other >= n_same else f"{n_same} ({n_other} other)"


def _measured(table: pd.DataFrame, metric: str) -> dict[str, list[str]]:
    """Table 2's measured columns as text: same, other, Δ (each ± its sd over seeds) and seeds."""
    return {
        f"same-domain {metric}": [_pm(m, s) for m, s in zip(table["same_mean"], table["same_sd"])],
        f"other-domain {metric}": [_pm(m, s) for m, s in zip(table["other_mean"], table["other_sd"])],
        "Δ": [_pm(d, s, signed=True) for d, s in zip(table["delta"], table["delta_sd"])],
        "seeds": [_seeds_text(a, b) for a, b in zip(table["n_same"], table["n_other"])],
    }


def table_rows(results: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The console's Table 2 of ``metric``: one row per sweep point and training domain; Δ ± its sd over seeds.

    With more than one cohort the dataset is a column and the setting leaves it out."""
    table = study_table(results, metric)
    frame = pd.DataFrame({"setting": table["setting"]})
    if table["dataset"].nunique() > 1:
        frame["dataset"] = table["dataset"]
    return frame.assign(**{"train domain": table["train_domain"], **_measured(table, metric)})


def _markdown_table2(table: pd.DataFrame, metric: str, reference: Reference | None, mixed: bool) -> str:
    frame = pd.DataFrame(index=table.index)
    if table["setting"].nunique() > 1:
        frame["setting"] = table["setting"]
    frame["modality"] = table["modality"]
    frame["dataset"] = table["dataset"]
    if mixed:
        frame["data"] = table["data"].map(lambda d: "SYNTHETIC" if d == "synthetic" else d)
    frame["training domain"] = table["train_domain"]
    frame = frame.assign(**_measured(table, metric))
    if reference is not None:
        frame[f"paper Δ ({reference.metric})"] = table["paper_delta"].map(_signed)
    return frame.to_markdown(index=False, disable_numparse=True)


def _markdown_modality(means: pd.DataFrame, reference: Reference | None) -> str:
    frame = pd.DataFrame(index=means.index)
    if means["setting"].nunique() > 1:
        frame["setting"] = means["setting"]
    frame["modality"] = means["modality"]
    frame["rows"] = means["rows"]
    frame["mean Δ"] = means["mean_delta"].map(_signed)
    frame["sd over rows"] = means["sd_rows"].map(lambda v: "n/a" if math.isnan(v) else f"{v:.3f}")
    frame["sd over seeds"] = [
        "n/a" if math.isnan(v) else f"{v:.3f} ({n} seeds)" for v, n in zip(means["sd_seeds"], means["n_seeds"])
    ]
    if reference is not None:
        frame[f"paper mean Δ ({reference.metric})"] = means["paper_mean_delta"].map(_signed)
    return frame.to_markdown(index=False, disable_numparse=True)


def _paper_notes(reference: Reference, metric: str, where: Provenance) -> list[str]:
    """What the paper columns are, said plainly under the primary metric's Table 2."""
    lines = [
        f"**The paper's columns are the paper's, not this run's.** paper Δ is copied from {reference.table_source}, "
        f"by {reference.citation}, measured on {reference.data}; nothing in it is recomputed here. Every other "
        f"column is what this run measured ({where.label}). They stand side by side; no test compares them.",
        "",
        f"- A paper Δ is shown on rows without mitigations whose dataset and training domain the paper's table has "
        f"(cohorts map: {', '.join(f'{c} → {d}' for c, d in reference.cohorts.items())}); — where it has none.",
    ]
    lines += [f"- Not in our copy of the paper's table (left out, not filled in): {m}." for m in reference.missing]
    lines += [f"- paper mean Δ: {reference.modality_means_source}."]
    lines += [f"- {note}" for note in reference.notes]
    if reference.metric.lower() not in metric.lower():
        lines.append(f"- The paper's metric is {reference.metric}; this run's is {metric}.")
    return lines + [""]


def _estimate_text(e: statistics.Estimate | None) -> str:
    if e is None or e.n == 0:
        return "n/a"
    return _interval_text(e.mean, e.low, e.high, f"n = {e.n}, ")


def _interval_text(mean: float, low: float, high: float, count: str = "") -> str:
    """``+0.012 (-0.010 to +0.034)``, or ``+0.012 (no CI)`` when there is no interval (``count`` goes before it)."""
    if math.isnan(mean):
        return "n/a"
    return f"{mean:+.3f} ({count}no CI)" if math.isnan(low) else f"{mean:+.3f} ({low:+.3f} to {high:+.3f})"


def _level_text(level: float) -> str:
    return f"{level:g}"


def _markdown_level_table(table: pd.DataFrame, info: MetricInfo, key: str) -> str:
    m = info.name
    frame = pd.DataFrame(index=table.index)
    if table["series"].nunique() > 1:
        frame["series"] = table["series"]
    frame[short_key(key)] = table["level"].map(_level_text)
    frame[f"change in other-domain {m} (95% CI)"] = table["other"].map(_estimate_text)
    frame[f"change in same-domain {m} (95% CI)"] = table["same"].map(_estimate_text)
    frame["narrowing of the gap (95% CI)"] = table["narrowing"].map(_estimate_text)
    frame["Holm p"] = table["p_adjusted"].map(_p_cell)
    frame["verdict"] = _verdict_cells(table["verdict"], table["same_worse"], m)
    return frame.to_markdown(index=False, disable_numparse=True)


def _p_cell(p: float) -> str:
    return "n/a" if math.isnan(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def _verdict_cells(verdicts: pd.Series, same_worse: pd.Series, metric: str) -> list[str]:
    """Each verdict, flagged where a narrowed gap came with a clearly worse same-domain value."""
    return [f"{v}, but same-domain {metric} got worse" if worse else v for v, worse in zip(verdicts, same_worse)]


def _undefined_lines(undefined: UndefinedValues, where: Provenance) -> list[str]:
    count = max(undefined.total, undefined.empty_in_results)
    lines = [
        "## Undefined values",
        "",
        f"{count} (cell, test domain, metric) value{'s were' if count != 1 else ' was'} undefined (empty in "
        "results.csv). Every summary leaves them out: each mean and sd is over the values that exist, a seed's "
        "other-domain value is the mean over the other test domains that have one, and a seed without a value "
        "is not counted in the seeds column.",
        "",
    ]
    if undefined.by_reason:
        frame = pd.DataFrame(
            [{"metric": m, "reason": r, "values": n} for (m, r), n in sorted(undefined.by_reason.items())]
        )
        lines += [
            f"**Undefined values by metric and reason ({where.label}).**",
            "",
            frame.to_markdown(index=False, disable_numparse=True),
            "",
        ]
    if undefined.empty_in_results > undefined.total:
        lines += [
            f"The manifest gives a reason for {undefined.total} of the {undefined.empty_in_results} empty values "
            "(a run folder from before harmonia recorded reasons, or cells recorded without them).",
            "",
        ]
    return lines


# -- console and comparisons -----------------------------------------------------------------------------


def console_lines(results: pd.DataFrame, manifest: dict) -> list[str]:
    """What ``harmonia run`` prints at the end: the primary metric's Table 2, its mean Δ per modality when the
    run has more than one modality (for each setting but the levels of a level sweep), and its comparison lines."""
    results = split_scopes(results, manifest)[0]
    if results.empty:
        return ["(no finished cells yet)"]
    infos = metric_infos(results, manifest)
    primary = infos[0].name
    lines = [table_rows(results, primary).to_string(index=False)]
    if results["modality"].nunique() > 1:  # per setting, but not per level of a level sweep (report.md has those)
        table = study_table(results, primary)
        shown = set(table.loc[table["sweep_id"].isin(unlevelled_points(results)), "setting"])
        means = modality_means(results, primary)
        for setting, part in means[means["setting"].isin(shown)].groupby("setting", sort=False):
            parts = [
                f"{m} {_signed(d)} ({n} rows)" for m, d, n in zip(part["modality"], part["mean_delta"], part["rows"])
            ]
            lines.append(f"Mean Δ by modality ({setting}): {'; '.join(parts)}")
    lines += ["", *gap_comparison(results, infos[0])]
    if len(infos) > 1:
        lines.append(f"(report.md covers every metric: {', '.join(i.name for i in infos)})")
    return lines


def gap_comparison(results: pd.DataFrame, info: MetricInfo) -> list[str]:
    """Sentences on whether the shift is real for the baselines and whether each setting narrowed the gap.

    The statistics are those of :mod:`harmonia.statistics`: each setting paired with the baseline of the
    same cohort and swept values, per seed, with a 95% paired t interval and a Holm-adjusted verdict. Every
    line says its interval and how it was computed. With more than one cohort every label leads with its cohort.
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
    """Per sweep point (so per cohort), the mean of ``metric`` by training (rows) and test (columns) domain."""
    rows = results[results["metric"] == metric]
    labels = point_labels(results)
    rank = domain_order(results)
    tables = {}
    for sweep_id, part in rows.groupby("sweep_id"):
        order = [d for c, d in rank if c == part["cohort"].iloc[0]]
        table = part.pivot_table(index="train_domain", columns="test_domain", values="value", aggfunc="mean")
        tables[labels[int(sweep_id)]] = table.reindex(
            index=[d for d in order if d in table.index], columns=[d for d in order if d in table.columns]
        )
    return tables


# -- figures ---------------------------------------------------------------------------------------------


def study_figures(
    results: pd.DataFrame, manifest: dict, reference: Reference | None = None
) -> dict[str, tuple[Figure, str]]:
    """The figures of the primary metric, by file name, each with the description its PNG metadata keeps.

    ``table2_bars.png`` (Figure 2) and ``delta_by_modality.png`` (Figure 3) show every setting but the levels of
    a level sweep (all of them when nothing else is left); ``level_<key>.png`` (Figures 4/5), one per swept
    numeric mitigation key, shows the levels. Every figure is stamped with the data's provenance. The caller
    saves (:func:`harmonia.figures.save`) or closes them.
    """
    where = provenance(results, manifest)
    metric = primary_metric(results, manifest)
    table = study_table(results, metric)
    shown = table["sweep_id"].isin(unlevelled_points(results))
    table = table[shown] if shown.any() else table  # a sweep with levels only (no baseline): show them all
    if where.synthetic and where.real:  # say on each bar pair and panel which cohort is which
        table = table.assign(dataset=[f"{c} ({_kind(where, c)})" for c in table["dataset"]])
    sources = f"harmonia run of {manifest.get('recipe', '?')}; {where.label}"
    made = {
        "table2_bars.png": (
            figures.table2_bars(table, metric, where.label),
            f"Figure 2 of Guo et al. redrawn; {sources}",
        ),
    }
    paper = reference.modality_means if reference is not None else None
    plain = set(table.loc[table["mitigations"] == statistics.NO_MITIGATION, "setting"])  # what the paper describes
    paper_label = f"paper mean Δ ({reference.metric}, real data, Guo et al.)" if reference is not None else ""
    made["delta_by_modality.png"] = (
        figures.delta_by_modality(table, metric, where.label, paper, paper_label, plain),
        f"Figure 3 of Guo et al. redrawn; {sources}"
        + (f"; red lines: {reference.modality_means_source}" if reference is not None else ""),
    )
    keys = level_keys(results)
    for key in keys:
        curves = level_curves(results, metric, key)
        if curves.empty:
            continue
        if where.synthetic and where.real:
            kinds = [f"{c} ({_kind(where, c)}):" for c in curves["cohort"]]
            curves = curves.assign(
                series=[s.replace(f"{c}:", k, 1) for s, c, k in zip(curves["series"], curves["cohort"], kinds)]
            )
        made[f"level_{short_key(key, keys)}.png"] = (
            figures.level_figure(curves, key, metric, where.label),
            f"Figures 4/5 of Guo et al. redrawn for {key}; {sources}",
        )
    return made


def _kind(where: Provenance, cohort: str) -> str:
    kind = where.cohorts.get(cohort, "?")
    return "SYNTHETIC" if kind == "synthetic" else kind


FIGURE_CAPTIONS = {
    "table2_bars.png": "Figure 2: same- vs other-domain {metric} (± sd over seeds) per dataset and training domain, "
    "grouped by modality",
    "delta_by_modality.png": "Figure 3: Δ {metric} by modality over (dataset, training domain) rows; dots are rows, "
    "black dashed lines this run's means",
}


def _figure_caption(name: str, metric: str, where: Provenance, reference: Reference | None) -> str:
    if name.startswith("level_"):
        text = (
            f"Figure 4/5: {metric} against the level of a swept mitigation parameter, per cohort and training "
            "domain, one line per test domain (± sd over seeds); level 0 is the baseline without the mitigation"
        )
    else:
        text = FIGURE_CAPTIONS[name].format(metric=metric)
    if name == "delta_by_modality.png" and reference is not None:
        text += f"; red lines: the paper's mean Δ, {reference.metric} on real data"
    return f"**{text} ({where.label}).**"


# -- report.md -------------------------------------------------------------------------------------------


def write_report(run_dir: Path) -> Path:
    """Write ``report.md`` and ``figures/`` for ``run_dir`` and return the report's path."""
    run_dir = Path(run_dir)
    everything, manifest = read_run(run_dir)
    results, cell_rows = split_scopes(everything, manifest)
    reference, unknown = read_reference(run_dir)
    where = provenance(results, manifest)
    lines = [f"# {manifest.get('recipe', run_dir.name)}: cross-scanner report ({where.label})", ""]
    if where.synthetic and where.real:
        synthetic = ", ".join(c for c, d in where.cohorts.items() if d == "synthetic")
        lines += [
            f"> Some cohorts here are harmonia's synthetic twins ({synthetic}), not real cohorts: their numbers show",
            "> the protocol and the methods working, not clinical performance. The tables' data column says which.",
            "",
        ]
    elif where.synthetic:
        lines += [
            "> These numbers come from harmonia's synthetic twin, not from a real cohort: they show the",
            "> protocol and the methods working, not clinical performance.",
            "",
        ]
    lines += [
        f"- status: {manifest.get('status', '?')} (started {manifest.get('started')}, finished {manifest.get('finished')})"
    ]
    for cohort, p in manifest.get("data_provenance", {}).items():
        lines.append(f"- data: {cohort}: {p.get('data')} ({p.get('origin')})")
    lines.append(
        f"- harmonia {manifest.get('harmonia_version')}, torch {manifest.get('torch_version')}, device {manifest.get('device')}"
    )
    undefined = undefined_values(results, manifest)
    count = max(undefined.total, undefined.empty_in_results)
    lines.append(f"- undefined values: {count} (see below)" if count else "- undefined values: none")
    if reference is not None:
        lines.append(f"- reference: {reference.key}: {reference.table_source}, shown beside this run's numbers")
    elif unknown:
        lines.append(f"- reference: recipe.yaml names '{unknown}', which this harmonia does not know; not shown")
    lines.append("")
    if results.empty:
        lines.append("No (seed, training domain) cell has finished yet.")
    else:
        if count:
            lines += _undefined_lines(undefined, where)
        lines += _leaderboard_lines(everything, metric_infos(results, manifest)[0], manifest, run_dir, where)
        lines += _metric_sections(results, manifest, run_dir, reference, where)
    if not cell_rows.empty:
        lines += cell_metrics.section(cell_rows, results, primary_metric(results, manifest), where)
    if not results.empty:
        patients = patient_comparison.read_patients(run_dir)
        lines += _per_domain_lines(patients, results, manifest, where)
        lines += _patient_lines(patients, run_dir, results, where)
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def _leaderboard_lines(
    rows: pd.DataFrame, info: MetricInfo, manifest: dict, run_dir: Path, where: Provenance
) -> list[str]:
    """The mitigation leaderboard of the primary metric, for a run comparing two or more settings with a plain
    baseline, and its numbers in ``leaderboard.csv`` (per cohort and setting) and ``leaderboard_overall.csv``."""
    if not leaderboard.compares_settings(rows, info.name):
        return []
    table = leaderboard.leaderboard_table(rows, manifest, info.name)
    overall = leaderboard.overall_rank(table)
    atomic_write_text(run_dir / "leaderboard.csv", table.to_csv(index=False))
    atomic_write_text(run_dir / "leaderboard_overall.csv", overall.to_csv(index=False))
    return [
        f"## Mitigation leaderboard ({info.name})",
        "",
        f"**Each setting, the plain model included, ranked within its cohort by other-domain {info.name}, best "
        f"first ({where.label}).**",
        "",
        _markdown_leaderboard(table, info, where.synthetic and where.real),
        "",
        f"**Mean rank of each setting over the cohorts it ran on ({where.label}).**",
        "",
        _markdown_overall(overall),
        "",
        *_leaderboard_notes(table, info),
        "",
    ]


def _markdown_leaderboard(table: pd.DataFrame, info: MetricInfo, mixed: bool) -> str:
    m = info.name
    plain = table["verdict"] == leaderboard.PLAIN
    frame = pd.DataFrame({"cohort": table["cohort"]})
    if mixed:
        frame["data"] = table["data"].map(lambda d: "SYNTHETIC" if d == "synthetic" else d)
    frame["rank"] = table["rank"].map(lambda r: "n/a" if math.isnan(r) else f"{r:g}")
    frame["setting"] = table["setting"]
    frame[f"other-domain {m}"] = [_pm(a, b) for a, b in zip(table["other_mean"], table["other_sd"])]
    frame[f"same-domain {m}"] = [_pm(a, b) for a, b in zip(table["same_mean"], table["same_sd"])]
    gaps = zip(table["gap_change"], table["gap_change_low"], table["gap_change_high"])
    frame["change in gap (95% CI)"] = ["—" if p else _interval_text(*g) for p, g in zip(plain, gaps)]
    frame["Holm p"] = ["—" if p else _p_cell(v) for p, v in zip(plain, table["p_holm"])]
    frame["verdict"] = _verdict_cells(table["verdict"], table["same_worse"], m)
    if table["probe_mean"].notna().any():
        probe = table["probe_metric"].iloc[0]
        frame[f"{probe} (vendor probe)"] = [_pm(a, b) for a, b in zip(table["probe_mean"], table["probe_sd"])]
    if table["seconds_per_cell"].notna().any():
        frame["s per cell"] = table["seconds_per_cell"].map(_seconds_text)
    frame["seeds"] = table["seeds"].astype(str)
    return frame.to_markdown(index=False, disable_numparse=True)


def _seconds_text(seconds: float) -> str:
    if math.isnan(seconds):
        return "n/a"
    return f"{seconds:.1f}" if seconds < 10 else f"{seconds:.0f}"


def _markdown_overall(overall: pd.DataFrame) -> str:
    frame = pd.DataFrame(
        {
            "setting": overall["setting"],
            "mean rank": overall["mean_rank"].map(lambda r: f"{r:.2f}"),
            "sd of rank": overall["sd_rank"].map(lambda r: "n/a" if math.isnan(r) else f"{r:.2f}"),
            "cohorts": overall["cohorts"].astype(str),
        }
    )
    return frame.to_markdown(index=False, disable_numparse=True)


def _leaderboard_notes(table: pd.DataFrame, info: MetricInfo) -> list[str]:
    """How the leaderboard ranks and where its verdicts come from, and what its optional columns are."""
    m = info.name
    notes = [
        f"Within each cohort (and each value of any other swept key) every setting is ranked by its other-domain {m} "
        f"({info.direction}): each seed's mean over the training domains, then the mean over seeds; ties share the "
        "average rank. What counts at deployment is accuracy on the other scanners; the change in gap beside it "
        "(setting gap − plain gap, negative = narrower, with its paired 95% t interval over seeds) says whether a "
        "method got there by closing the gap or by lifting both domains. The verdicts are those of the comparisons "
        '("Did the mitigation narrow the gap?"): the paired CI over seeds and the Holm-adjusted p over every '
        f"setting compared on {m}. The overall table averages each setting's ranks over the cohorts it ran on; its "
        "sd is the spread between cohorts.",
    ]
    if table["probe_mean"].notna().any():
        notes += [
            "",
            "The vendor probe column is the probe's score over all domains, mean ± sd over seeds (for an AUROC, 0.5 "
            "means no vendor information left). `harmonia compare --probe` probes the images each method hands the "
            "model (`input: transformed`), which a method acting only on training (augmentation, DANN) leaves as "
            "the plain model's.",
        ]
    if table["seconds_per_cell"].notna().any():
        notes += ["", "s per cell: the mean wall time of one (seed, training domain) cell of the setting."]
    return notes + ["", "The numbers are in `leaderboard.csv` (per cohort and setting) and `leaderboard_overall.csv`."]


def _per_domain_lines(patients: pd.DataFrame, results: pd.DataFrame, manifest: dict, where: Provenance) -> list[str]:
    """Metrics that summarise a whole test set (a concordance, limits of agreement, a sensitivity) per test
    domain, with their CIs: Table 2 averages the other domains, and the per-patient table has only per-patient
    metrics."""
    per_patient = set(patients["metric"])
    primary = primary_metric(results, manifest)
    rows = results[~results["metric"].isin(per_patient | {primary})]
    rows = rows[~rows["metric"].map(lambda m: is_ci_bound(m, {primary}))]
    if rows.empty:
        return []
    return [
        "## Per test domain: set-level metrics",
        "",
        f"**Metrics computed over a whole test set, per setting, training domain and test domain ({where.label}).**",
        "",
        cell_metrics.cell_table(rows, rows.iloc[:0], primary).to_markdown(index=False, disable_numparse=True),
        "",
        cell_metrics.NOTE.split(" A vendor probe")[0],
        "",
    ]


def _patient_lines(patients: pd.DataFrame, run_dir: Path, results: pd.DataFrame, where: Provenance) -> list[str]:
    """Each setting against its baseline patient by patient, and the Bland–Altman plots of volume, from
    ``patients.csv`` (seed 003's tables and figures)."""
    if patients.empty:
        return []
    lines = []
    table = patient_comparison.paired_table(patients, results)
    if not table.empty:
        lines += [
            "## Per patient: each setting against its baseline",
            "",
            f"**Per-patient values of each setting and its baseline, paired on (seed, training domain, test domain, "
            f"patient), mean ± sd over the pairs, with the paired t-test ({where.label}).**",
            "",
            table.to_markdown(index=False, disable_numparse=True),
            "",
            "Difference = setting − baseline with its 95% t interval. With several seeds one patient gives a pair "
            "per seed, and those pairs are not independent: read p as optimistic; the seed-level comparisons above "
            "are the ones with the right unit of replication.",
            "",
        ]
    points = patient_comparison.bland_altman_points(patients)
    if not points.empty:
        figure = figures.bland_altman(points, point_labels(results), where.label)
        path = figures.save(figure, run_dir / "figures" / "bland_altman.png", "Bland-Altman plots of volume")
        lines += [
            "## Bland-Altman: predicted vs reference volume",
            "",
            f"**Each patient's predicted and reference volume: their mean against their difference in % of the "
            f"reference, per test domain and setting; solid line the bias, dashed the 95% limits of agreement "
            f"(bias ± 1.96 sd) ({where.label}).**",
            "",
            f"![bland_altman]({path.relative_to(run_dir).as_posix()})",
            "",
        ]
    return lines


def _anatomy_lines(results: pd.DataFrame, info: MetricInfo, run_dir: Path, where: Provenance) -> list[str]:
    """The shift-anatomy table and heatmap of the primary metric, for a run sweeping methods against a shift."""
    table = anatomy.recovery_table(results, info.name, info.higher_is_better)
    if table.empty:
        return []
    path = figures.save(
        figures.recovery_heatmap(table, info.name, where.label),
        run_dir / "figures" / "shift_anatomy.png",
        f"share of the plain {info.name} gap each method recovers, per shift",
    )
    return [
        f"## Shift anatomy: the share of the plain {info.name} gap each method recovers",
        "",
        f"**Recovered share = (plain gap − method gap) / plain gap, per shift (rows) and method (columns), "
        f"mean over seeds with a 95% interval ({where.label}).**",
        "",
        anatomy.markdown(table),
        "",
        "The interval is the paired-t interval of the narrowing divided by the plain gap's mean (the plain gap is "
        "treated as known). A shift whose plain gap is not clearly above 0 has nothing to recover: no clear gap.",
        "",
        f"![shift_anatomy]({path.relative_to(run_dir).as_posix()})",
        "",
    ]


def _metric_sections(
    results: pd.DataFrame, manifest: dict, run_dir: Path, reference: Reference | None, where: Provenance
) -> list[str]:
    """Table 2 and the mean Δ per modality of every metric, the comparisons per metric (with a per-level table for
    each level sweep), the primary metric's matrices, and the figures."""
    infos = metric_infos(results, manifest)
    primary = infos[0].name
    mixed = where.synthetic and where.real
    lines = []
    for info in infos:
        ref = reference if info.name == primary else None
        lines += [
            f"## Same- vs other-domain {info.name}{' (primary)' if info.name == primary else ''} (mean ± sd over seeds)",
            "",
            f"**Table 2 ({info.name}, {where.label}): same- vs other-domain {info.name} per dataset and training "
            "domain, mean ± sd over seeds.**",
            "",
            _markdown_table2(study_table(results, info.name, ref), info.name, ref, mixed),
            "",
            TABLE_NOTE,
            "",
            f"### Mean Δ {info.name} by modality",
            "",
            f"**Mean Δ {info.name} by modality ({where.label}), over the (dataset, training domain) rows of Table 2.**",
            "",
            _markdown_modality(modality_means(results, info.name, ref), ref),
            "",
            MODALITY_NOTE,
            "",
        ]
        if ref is not None:
            lines += _paper_notes(ref, info.name, where)
    lines += ["## Did the mitigation narrow the gap?", "", *METHOD_NOTE, ""]
    keys = level_keys(results)
    for info in infos:
        lines += [f"### {info.name} ({_gap_definition(info)})", ""]
        lines += [f"- {s}" for s in gap_comparison(results, info)] + [""]
        for key in keys:
            table = level_table(results, info.name, info.higher_is_better, key)
            if table.empty:
                continue
            lines += [
                f"**Per level of `{key}` ({info.name}, {where.label}): each level against its baseline (level 0), "
                "from the comparisons above.**",
                "",
                _markdown_level_table(table, info, key),
                "",
            ]
    lines += _anatomy_lines(results, infos[0], run_dir, where)
    lines += [f"## Mean {primary} by training (rows) and test (columns) domain", ""]
    for label, table in matrix(results, primary).items():
        lines += [
            f"### {label}",
            "",
            f"**Mean {primary}, {label} ({where.label}).**",
            "",
            table.round(3).to_markdown(),
            "",
        ]
    lines += ["## Figures", ""]
    folder = run_dir / "figures"
    for name, (fig, description) in study_figures(results, manifest, reference).items():
        path = figures.save(fig, folder / name, description)
        lines += [
            _figure_caption(name, primary, where, reference),
            "",
            f"![{name.removesuffix('.png')}]({path.relative_to(run_dir).as_posix()})",
            "",
        ]
    return lines
