"""The mitigation leaderboard: every installed mitigation against the plain model on chosen cohorts.

DomainBed's results table, for scanner shift. :func:`leaderboard_recipe` builds the recipe ``harmonia compare``
runs: a ``cohorts:`` list (each cohort with the study's model for its images) and a sweep over ``mitigations``
whose first point, ``[]``, is the plain model, so every method is paired with the plain model on the same splits
and seeds. :func:`leaderboard_table` and :func:`overall_rank` read any run's results back into the leaderboard
(the report shows it for every run comparing two or more settings with a plain baseline).

**One sweep for every cohort.** A recipe's ``sweep:`` is shared by its ``cohorts:`` entries (an entry holds only a
cohort and a model), so a mitigation that cannot run on one of the chosen cohorts is left out on all of them, with
the reason; run that cohort on its own to rank the mitigation there. For the same reason the cohorts must share a
task kind: a run scores every cohort with the same evaluators (dice for segmentation, auc for classification).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pandas as pd

from harmonia import statistics
from harmonia.api import ALL_DOMAINS, Cohort, Task
from harmonia.errors import InputError, one_line
from harmonia.plugin_params import InvalidParams, key_path, validate_params
from harmonia.registry import Registry
from harmonia.tables import is_ci_bound, provenance, short_key, swept_columns

NAME = "leaderboard"
#: the evaluator scoring each task kind; the first evaluator selects epochs
TASK_METRICS = {"segmentation": "dice", "classification": "auc"}
#: Guo et al.'s training settings, which the cohorts' own recipes use (recipes/paper_table2.yaml, mnms_dann.yaml)
PAPER_TRAIN: dict[str, Any] = {"epochs": 60, "batch_size": 50, "lr": 1.0e-4, "seeds": 10}
#: ``--quick``: a short schedule wants a larger step, per task kind (docs/study.md's quick classifiers: 1e-3; the
#: U-Net of recipes/shift_anatomy.yaml: 2e-3); one thread beats several for small models
QUICK_TRAIN: dict[str, Any] = {"epochs": 12, "batch_size": 16, "lr": None, "seeds": 3, "threads": 1}
QUICK_LR = {"segmentation": 2.0e-3, "classification": 1.0e-3}
#: the vendor probe on the images each method hands the model (seed 002), so each method's remaining vendor
#: signal is shown; ``--quick`` trains it shorter on fewer items and skips its bootstrap intervals
PROBE_PARAMS: dict[str, Any] = {"input": "transformed"}
QUICK_PROBE_PARAMS: dict[str, Any] = {"epochs": 5, "max_items_per_domain": 100, "bootstrap": 0}
#: what the cohorts' own recipes set (recipes/paper_table2.yaml: twins of cohorts with one item per patient need
#: more patients for an AUC; recipes/ct_standardizer.yaml: ct_recon trains on its reference reconstruction)
PAPER_COHORTS: dict[str, dict[str, Any]] = {
    "mri_breast": {"synthetic": {"patients": 48}},
    "ct_lidc": {"synthetic": {"patients": 36}},
    "ct_oropharyngeal": {"synthetic": {"patients": 48}},
    "xray_chest": {"synthetic": {"patients": 60}},
    "ct_recon": {"train_domains": ["M80"], "synthetic": {"patients": 18}},
}
#: ``--quick``, merged over :data:`PAPER_COHORTS`: smaller images (docs/study.md's quick settings) and two domains
#: (for ct_recon the reconstruction farthest from the reference, docs/standardizer.md)
QUICK_COHORTS: dict[str, dict[str, Any]] = {
    "mnms": {"params": {"domains": ["Siemens", "GE"], "image_size": 48, "spacing_mm": 3.2}},
    "ct_recon": {"params": {"domains": ["M40", "M80"], "image_size": 48, "spacing_mm": 7.2}},
    "mri_prostate": {"params": {"image_size": 64}},
    "ct_kidney": {"params": {"image_size": 64}},
    "ct_hnscc": {"params": {"image_size": 64}},
    "xray_chest": {"params": {"image_size": 64}},
    "ct_oropharyngeal": {"params": {"roi_size": 24, "spacing_mm": 2}},
}
#: ``--quick`` model sizes (recipes/shift_anatomy.yaml's U-Net)
QUICK_MODELS: dict[str, dict[str, Any]] = {"unet2d": {"channels": [8, 16, 32]}}
#: the study's models, most specific first (Guo et al.: DenseNet-121 for X-ray, NoduleX for 3-D crops, MRNet2D
#: for 2-D slices; a U-Net for segmentation); the first installed one that fits a cohort's task is its model
STUDY_MODELS = ("nodulex", "mrnet2d", "unet2d")
XRAY_MODEL = "densenet121"

#: the leaderboard's verdict for the plain model, which the settings are compared with
PLAIN = "plain model"
NO_ESTIMATE = statistics.Estimate(math.nan, math.nan, math.nan, math.nan, 0)


# -- the recipe ------------------------------------------------------------------------------------------


def leaderboard_recipe(
    cohorts: list[str], mitigations: list[str] | None, registry: Registry, quick: bool, probe: bool
) -> tuple[dict[str, Any], list[str]]:
    """The recipe mapping of a leaderboard over ``cohorts``, and why each mitigation left out was left out.

    ``mitigations`` None means every installed mitigation, so a third-party one takes part by being installed;
    each runs with its default parameters. ``quick`` uses small twins, models and schedules (a few minutes on a
    CPU), else the paper-scale settings of the cohorts' own recipes; ``probe`` adds the vendor probe.
    """
    if not cohorts:
        raise InputError("leaderboard: name at least one cohort")
    classes = {name: registry.get("cohort", name).cls for name in dict.fromkeys(cohorts)}
    kind = _shared_task_kind(classes)
    names = (
        [e.name for e in registry.entries("mitigation")] if mitigations is None else list(dict.fromkeys(mitigations))
    )
    kept, skipped = [], []
    for name in names:
        reason = _skip_reason(registry, name, classes)
        if reason:
            skipped.append(f"{name}: {reason}")
        else:
            kept.append(name)
    recipe = {
        "name": NAME,
        "description": f"Mitigation leaderboard on {', '.join(classes)}: each method against the plain model",
        "cohorts": [_cohort_entry(registry, name, cls, quick) for name, cls in classes.items()],
        "train": {**QUICK_TRAIN, "lr": QUICK_LR[kind]} if quick else dict(PAPER_TRAIN),
        "evaluate": _evaluators(kind, probe, quick),
        "sweep": {"mitigations": [[]] + [[{"plugin": name}] for name in kept]},
    }
    return recipe, skipped


def _task(name: str, cls: type[Cohort]) -> Task:
    """The task a cohort declares on its class; a leaderboard needs it to choose the model and the metric."""
    task = getattr(cls, "task", None)
    if not isinstance(task, Task):
        raise InputError(f"leaderboard: cohort {name} declares its task only once loaded; write a recipe for it")
    return task


def _shared_task_kind(classes: dict[str, type[Cohort]]) -> str:
    """The task kind every cohort shares (a run scores all cohorts with one evaluator list), else an InputError."""
    kinds = {name: _task(name, cls).kind for name, cls in classes.items()}
    if len(set(kinds.values())) > 1:
        listed = ", ".join(f"{name} ({kind})" for name, kind in kinds.items())
        raise InputError(
            f"leaderboard: the cohorts are scored by different metrics: {listed}; a run scores every cohort with "
            "the same evaluators, so compare segmentation and classification cohorts in separate runs"
        )
    return next(iter(kinds.values()))


def study_model(registry: Registry, cohort: str, cls: type[Cohort]) -> str:
    """The study's model for a cohort's images (see :data:`STUDY_MODELS`), else the first installed model that fits."""
    task = _task(cohort, cls)
    preferred = (XRAY_MODEL,) if cls.modality == "X-ray" else ()
    for name in dict.fromkeys([*preferred, *STUDY_MODELS, *registry.names("model")]):
        if registry.is_plugin("model", name):
            model = registry.get("model", name).cls
            if task.kind in model.tasks and task.spatial_dims in model.image_dims:
                return name
    raise InputError(f"leaderboard: no installed model does {task.kind} on {task.spatial_dims}-D items ({cohort})")


def _cohort_entry(registry: Registry, name: str, cls: type[Cohort], quick: bool) -> dict[str, Any]:
    """One ``cohorts:`` entry: the cohort with its twin's (and with ``quick`` its images') size, and its model."""
    cohort = _merged({"plugin": name}, PAPER_COHORTS.get(name, {}), QUICK_COHORTS.get(name, {}) if quick else {})
    model = study_model(registry, name, cls)
    params = QUICK_MODELS.get(model) if quick else None
    return {"cohort": cohort, "model": {"plugin": model, **({"params": copy.deepcopy(params)} if params else {})}}


def _merged(*mappings: dict[str, Any]) -> dict[str, Any]:
    """The mappings merged left to right, nested mappings key by key."""
    merged: dict[str, Any] = {}
    for mapping in mappings:
        for key, value in mapping.items():
            both = isinstance(value, dict) and isinstance(merged.get(key), dict)
            merged[key] = _merged(merged[key], value) if both else copy.deepcopy(value)
    return merged


def _evaluators(kind: str, probe: bool, quick: bool) -> list[Any]:
    """The task's metric first (it selects epochs), then with ``probe`` the vendor probe on the transformed images."""
    evaluators: list[Any] = [TASK_METRICS[kind]]
    if probe:
        evaluators.append(
            {"plugin": "vendor_probe", "params": {**PROBE_PARAMS, **(QUICK_PROBE_PARAMS if quick else {})}}
        )
    return evaluators


def _skip_reason(registry: Registry, mitigation: str, classes: dict[str, type[Cohort]]) -> str | None:
    """Why ``mitigation`` is left out of a leaderboard over the cohorts ``classes``, or None. It is left out on
    every cohort when it cannot run on one, since the cohorts share one sweep."""
    reasons = {cohort: unfit_reason(registry, mitigation, cohort, cls) for cohort, cls in classes.items()}
    found = list(dict.fromkeys(r for r in reasons.values() if r))
    fits = [cohort for cohort, reason in reasons.items() if reason is None]
    if not found:
        return None
    shared = f" (so also left out on {', '.join(fits)}: the cohorts share one sweep)" if fits else ""
    return "; ".join(found) + shared


def unfit_reason(registry: Registry, mitigation: str, cohort: str, cls: type[Cohort]) -> str | None:
    """Why ``mitigation`` with its default parameters cannot run on ``cohort``, or None.

    It must accept its default parameters (a required parameter has none), let itself be made for the cohort's
    task (a 2-D-only method refuses 3-D crops), change something with those defaults (else its point would be a
    second plain model), and suit the cohort (:meth:`~harmonia.api.Mitigation.unsuited_to`: a CT-only method on MRI).
    """
    plugin = registry.get("mitigation", mitigation).cls
    try:
        params = validate_params(plugin.Params, {})
    except InvalidParams as exc:
        return f"cannot run with its default parameters: {key_path(('params', *exc.loc))}: {exc.rule}"
    try:
        plugin(params, _task(cohort, cls))
    except Exception as exc:  # a plugin's own refusal, whatever its type, is the reason to leave it out
        return f"cannot be made for cohort {cohort} ({one_line(exc)})"
    if plugin.is_inactive(params):
        return "does nothing with its default parameters"
    return plugin.unsuited_to(params, cls)


# -- the tables ------------------------------------------------------------------------------------------


def compares_settings(results: pd.DataFrame, metric: str) -> bool:
    """Whether a run compares two or more mitigation settings with a plain baseline (so it has a leaderboard)."""
    rows = results[results["metric"] == metric]
    if rows.empty:
        return False
    labels = _setting_labels(_points(rows))
    return len({labels[s] for s, b in statistics.baselines(rows).items() if b is not None}) >= 2


def leaderboard_table(results: pd.DataFrame, manifest: dict, metric: str | None = None) -> pd.DataFrame:
    """Per cohort and mitigation setting (the plain model included): the leaderboard's numbers, ranked.

    ``metric`` defaults to the run's primary one. Columns: cohort (with any non-mitigation swept value: the
    group a setting is compared and ranked in), data, setting, mitigations, sweep_id, rank, metric, other_mean
    and other_sd, same_mean and same_sd (each seed's mean over training domains, then mean and sd over seeds),
    seeds, gap_change with gap_change_low/high (setting gap − plain gap, negative = narrower, and its paired 95%
    CI), p_holm, verdict and same_worse (from :func:`harmonia.statistics.compare`, not recomputed), probe_metric,
    probe_mean and probe_sd (the first all-domain cell-scope metric, a vendor probe's AUROC), seconds_per_cell
    (mean wall time of the setting's cells, from the manifest; NaN where not recorded).

    The rank is by other-domain metric in its good direction, best first, ties sharing the average rank: what
    matters at deployment is accuracy on the other scanners. The gap change is beside it rather than the key,
    since a method can narrow the gap by losing same-domain accuracy without gaining any on the other scanners.
    """
    metric = metric or manifest["metrics"]["primary"]
    higher = bool(manifest.get("metrics", {}).get("higher_is_better", {}).get(metric, True))
    rows = results[results["metric"] == metric]
    points = _points(rows)
    groups, labels = _group_labels(points), _setting_labels(points)
    cells = statistics.cell_values(rows, metric)
    compared = {c.setting: c for c in statistics.compare(rows, metric, higher)}
    probe_metric = _probe_metric(results, manifest)
    probes = _per_point(results[(results["metric"] == probe_metric) & (results["test_domain"] == ALL_DOMAINS)])
    seconds = _seconds(manifest)
    kinds = provenance(results, manifest).cohorts
    records = []
    for sweep_id, point in points.iterrows():
        per_seed = statistics.seed_means(cells.loc[sweep_id])
        records.append(
            {
                "cohort": groups[sweep_id],
                "data": kinds.get(str(point["cohort"]), str(point["data"])),
                "setting": labels[sweep_id],
                "mitigations": point["mitigations"],
                "sweep_id": int(sweep_id),
                "metric": metric,
                **_mean_sd(per_seed["other"], "other"),
                **_mean_sd(per_seed["same"], "same"),
                "seeds": int(per_seed["other"].count()),
                **_comparison(compared.get(int(sweep_id))),
                "probe_metric": probe_metric or "",
                **_mean_sd(probes.get(int(sweep_id), pd.Series(dtype=float)), "probe"),
                "seconds_per_cell": seconds.get(int(sweep_id), math.nan),
            }
        )
    table = pd.DataFrame(records)
    table.insert(5, "rank", table.groupby("cohort", sort=False)["other_mean"].rank(ascending=not higher))
    order = table["cohort"].map({c: i for i, c in enumerate(dict.fromkeys(table["cohort"]))})
    return table.assign(_order=order).sort_values(["_order", "rank", "sweep_id"]).drop(columns="_order")


def overall_rank(table: pd.DataFrame) -> pd.DataFrame:
    """Per setting across cohorts: mean rank, its sd (the spread between cohorts) and the number of cohorts it
    was ranked on, best mean rank first. A setting missing on some cohort is averaged over those it ran on."""
    ranks = table.dropna(subset=["rank"]).groupby("setting", sort=False)["rank"]
    overall = pd.DataFrame({"mean_rank": ranks.mean(), "sd_rank": ranks.std(ddof=1), "cohorts": ranks.count()})
    return overall.rename_axis("setting").reset_index().sort_values("mean_rank", kind="stable", ignore_index=True)


def _points(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per sweep point, indexed by sweep_id, in sweep order."""
    return rows.drop_duplicates("sweep_id").set_index("sweep_id").sort_index()


def _group_labels(points: pd.DataFrame) -> dict[int, str]:
    """Per sweep point, what it is ranked within: its cohort plus any non-mitigation swept value (as its pairing)."""
    fixed = [c for c in swept_columns(points.reset_index()) if not statistics.is_mitigation_key(c)]
    labels = {}
    for sweep_id, point in points.iterrows():
        extra = ", ".join(f"{short_key(c, fixed)}={_shown(point[c])}" for c in fixed if not pd.isna(point[c]))
        labels[int(sweep_id)] = f"{point['cohort']} ({extra})" if extra else str(point["cohort"])
    return labels


def _setting_labels(points: pd.DataFrame) -> dict[int, str]:
    """Per sweep point, its setting as known across cohorts: mitigations plus swept mitigation values. Points of
    one group with the same label (a plugin listed twice with other parameters) get ``#2``, ``#3`` by position."""
    keys = [c for c in swept_columns(points.reset_index()) if c != "mitigations" and statistics.is_mitigation_key(c)]
    groups = _group_labels(points)
    seen: dict[tuple[str, str], int] = {}
    labels: dict[int, str] = {}
    for sweep_id, point in points.iterrows():
        extra = ", ".join(f"{short_key(c, keys)}={_shown(point[c])}" for c in keys if not pd.isna(point[c]))
        label = f"{point['mitigations']} ({extra})" if extra else str(point["mitigations"])
        count = seen[groups[int(sweep_id)], label] = seen.get((groups[int(sweep_id)], label), 0) + 1
        labels[int(sweep_id)] = f"{label} #{count}" if count > 1 else label
    return labels


def _shown(value: Any) -> str:
    """A swept value in a label: numbers as short as they go (a level of 1.0 read back from results.csv is 1)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _mean_sd(values: pd.Series, name: str) -> dict[str, float]:
    """``<name>_mean`` and ``<name>_sd`` over the values that exist (sd NaN for fewer than two)."""
    values = values.dropna()
    return {
        f"{name}_mean": float(values.mean()) if len(values) else math.nan,
        f"{name}_sd": float(values.std(ddof=1)) if len(values) > 1 else math.nan,
    }


def _comparison(c: statistics.Comparison | None) -> dict[str, Any]:
    """A setting's comparison with its plain model as columns (None: the plain model itself); the gap change is
    minus the narrowing, and its interval the narrowing's turned round."""
    n = c.narrowing if c is not None and c.narrowing is not None else NO_ESTIMATE
    return {
        "gap_change": -n.mean,
        "gap_change_low": -n.high,
        "gap_change_high": -n.low,
        "p_holm": c.p_adjusted if c is not None else math.nan,
        "verdict": c.verdict if c is not None else PLAIN,
        "same_worse": c is not None and c.same_worse,
    }


def _probe_metric(results: pd.DataFrame, manifest: dict) -> str | None:
    """The first cell-scope metric scored over all domains at once (a vendor probe's AUROC), if the run has one."""
    cell_scope = manifest.get("metrics", {}).get("cell_scope", [])
    present = set(results["metric"])
    found = results.loc[results["metric"].isin(cell_scope) & (results["test_domain"] == ALL_DOMAINS), "metric"]
    return next((m for m in dict.fromkeys(found) if not is_ci_bound(m, present)), None)


def _per_point(rows: pd.DataFrame) -> dict[int, pd.Series]:
    """Per sweep point, the per-seed means (over training domains) of ``rows``' values."""
    means = rows.groupby(["sweep_id", "seed"])["value"].mean()
    return {int(s): part.droplevel("sweep_id") for s, part in means.groupby(level="sweep_id")}


def _seconds(manifest: dict) -> dict[int, float]:
    """Per sweep point, the mean wall time of its finished cells that recorded one (``cells[].seconds``)."""
    timed = [(int(c["sweep_id"]), float(c["seconds"])) for c in manifest.get("cells", []) if "seconds" in c]
    frame = pd.DataFrame(timed, columns=["sweep_id", "seconds"])
    return frame.groupby("sweep_id")["seconds"].mean().to_dict()
