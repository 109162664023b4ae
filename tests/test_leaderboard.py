"""The mitigation leaderboard: its recipe, its ranks on constructed results, and a tiny real run's report."""

from __future__ import annotations

import math

import leaderboard_plugin
import pandas as pd
import pytest
import toy_plugins
from test_statistics import table

from harmonia import runner
from harmonia.cli import main
from harmonia.errors import InputError
from harmonia.leaderboard import PLAIN, leaderboard_recipe, leaderboard_table, overall_rank
from harmonia.recipe import load_recipe
from harmonia.registry import ALLOW_ENV, DISABLE_AUTOLOAD_ENV, DISABLE_ENV, Registry
from harmonia.report import write_report
from harmonia.statistics import NARROWED, WIDENED

pytestmark = pytest.mark.usefixtures("one_thread")

# per-seed jitter shared by every setting, zero-sum: a setting's mean is its base value
JITTER = [0.01, -0.02, 0.01]
# a mitigated setting's own per-seed jitter on the other domain, zero-sum: its paired differences vary by seed
MITIGATED_JITTER = [0.005, 0.0, -0.005]
SAME = 0.8


def cohort_rows(cohort: str, other: dict[str, float], first_id: int, metric: str = "dice") -> pd.DataFrame:
    """Three seeds of each setting in ``other`` (its other-domain base value; same-domain is 0.8) on two domains."""

    def value(point, seed, train, same):
        if same:
            return SAME + JITTER[seed]
        own = MITIGATED_JITTER[seed] if point["mitigations"] != "none" else 0.0
        return other[point["mitigations"]] + JITTER[seed] + own

    rows = table([{"mitigations": m} for m in other], 3, value, metric)
    return rows.assign(cohort=cohort, sweep_id=rows["sweep_id"] + first_id)


def constructed(metric: str = "dice") -> pd.DataFrame:
    """alpha: dann and hist tie at 0.7 above the plain 0.6; beta: hist 0.6, plain 0.5, dann 0.4."""
    return pd.concat(
        [
            cohort_rows("alpha", {"none": 0.6, "dann": 0.7, "hist": 0.7}, 0, metric),
            cohort_rows("beta", {"none": 0.5, "dann": 0.4, "hist": 0.6}, 3, metric),
        ],
        ignore_index=True,
    )


def manifest(metric: str = "dice", higher_is_better: bool = True, **extra) -> dict:
    return {"metrics": {"primary": metric, "higher_is_better": {metric: higher_is_better}}, **extra}


def by_setting(board: pd.DataFrame, cohort: str) -> pd.DataFrame:
    return board[board["cohort"] == cohort].set_index("setting")


# -- ranks, gap changes and the overall rank on constructed results ----------------------------------


def test_settings_are_ranked_by_other_domain_value_with_ties_sharing_the_average_rank():
    board = leaderboard_table(constructed(), manifest())
    alpha, beta = by_setting(board, "alpha"), by_setting(board, "beta")
    assert alpha["rank"].to_dict() == {"dann": 1.5, "hist": 1.5, "none": 3.0}
    assert beta["rank"].to_dict() == {"hist": 1.0, "none": 2.0, "dann": 3.0}
    assert list(board["setting"]) == ["dann", "hist", "none", "hist", "none", "dann"]  # per cohort, best first
    assert alpha.at["none", "other_mean"] == pytest.approx(0.6)
    assert alpha.at["none", "other_sd"] == pytest.approx(pd.Series(JITTER).std())
    assert alpha.at["none", "same_mean"] == pytest.approx(SAME)
    assert set(board["seeds"]) == {3}


def test_the_gap_change_is_setting_gap_minus_plain_gap_with_the_verdicts_of_the_comparisons():
    board = leaderboard_table(constructed(), manifest())
    alpha, beta = by_setting(board, "alpha"), by_setting(board, "beta")
    assert alpha.at["dann", "gap_change"] == pytest.approx(-0.1)  # gap 0.1 against the plain model's 0.2
    assert beta.at["dann", "gap_change"] == pytest.approx(0.1)  # gap 0.4 against 0.3
    assert alpha.at["dann", "gap_change_low"] < -0.1 < alpha.at["dann", "gap_change_high"] < 0
    assert (alpha.at["dann", "verdict"], beta.at["dann", "verdict"]) == (NARROWED, WIDENED)
    assert alpha.at["none", "verdict"] == PLAIN and math.isnan(alpha.at["none", "gap_change"])


def test_a_lower_is_better_metric_is_ranked_the_other_way_and_its_gap_turned_round():
    board = leaderboard_table(constructed("hd95"), manifest("hd95", higher_is_better=False))
    alpha = by_setting(board, "alpha")
    assert alpha["rank"].to_dict() == {"none": 1.0, "dann": 2.5, "hist": 2.5}
    # the gap is other − same: −0.1 for dann against −0.2 for the plain model, so it widened
    assert alpha.at["dann", "gap_change"] == pytest.approx(0.1)
    assert alpha.at["dann", "verdict"] == WIDENED


def test_overall_rank_is_the_mean_and_sd_over_cohorts_best_first():
    overall = overall_rank(leaderboard_table(constructed(), manifest())).set_index("setting")
    assert list(overall.index) == ["hist", "dann", "none"]
    assert overall["mean_rank"].to_dict() == pytest.approx({"hist": 1.25, "dann": 2.25, "none": 2.5})
    expected_sd = {"hist": pd.Series([1.5, 1.0]).std(), "dann": pd.Series([1.5, 3.0]).std(), "none": 2**-0.5}
    assert overall["sd_rank"].to_dict() == pytest.approx(expected_sd)
    assert set(overall["cohorts"]) == {2}


def test_a_setting_missing_on_a_cohort_is_ranked_over_the_cohorts_it_ran_on():
    results = constructed()
    results = results[~((results["cohort"] == "beta") & (results["mitigations"] == "hist"))]
    board = leaderboard_table(results, manifest())
    assert by_setting(board, "beta")["rank"].to_dict() == {"none": 1.0, "dann": 2.0}
    overall = overall_rank(board).set_index("setting")
    assert overall.at["hist", "mean_rank"] == 1.5 and overall.at["hist", "cohorts"] == 1
    assert math.isnan(overall.at["hist", "sd_rank"])
    assert overall.at["dann", "mean_rank"] == pytest.approx(1.75) and overall.at["dann", "cohorts"] == 2


def test_the_probe_score_and_the_cost_come_from_all_domain_rows_and_the_manifests_cells():
    results = constructed()
    probe = results[(results["metric"] == "dice") & (results["test_domain"] == "A")].assign(test_domain="all")
    level = probe["mitigations"].map({"none": 0.9, "dann": 0.9, "hist": 0.6})
    probes = [probe.assign(metric="probe_auroc", value=level), probe.assign(metric="probe_auroc_ci_low", value=0.0)]
    cells = [{"sweep_id": 0, "seed": s, "train_domain": t, "seconds": 10.0 * (s + 1)} for s in range(3) for t in "AB"]
    cells += [{"sweep_id": 1, "seed": 0, "train_domain": "A"}]  # a cell from before cells recorded their time
    record = manifest(cells=cells)
    record["metrics"]["cell_scope"] = ["probe_auroc", "probe_auroc_ci_low"]
    board = leaderboard_table(pd.concat([results, *probes], ignore_index=True), record)
    alpha = by_setting(board, "alpha")
    assert set(board["probe_metric"]) == {"probe_auroc"}
    assert alpha["probe_mean"].to_dict() == pytest.approx({"dann": 0.9, "hist": 0.6, "none": 0.9})
    assert alpha.at["none", "seconds_per_cell"] == pytest.approx(20.0)
    assert math.isnan(alpha.at["dann", "seconds_per_cell"]) and math.isnan(alpha.at["hist", "seconds_per_cell"])


def test_a_level_sweep_under_another_swept_key_is_ranked_per_value_of_that_key():
    """A noise sweep at two signature strengths: each strength is its own group, each level its own setting."""
    alpha, strength = "mitigations.0.params.alpha", "cohort.synthetic.strength"
    levels = {None: 0.6, 1: 0.65, 2: 0.7}
    points = [
        {"mitigations": "none" if a is None else "gaussian_noise", strength: s, alpha: a}
        for s in (0.5, 1.0)
        for a in levels
    ]
    rows = table(points, 3, lambda point, seed, train, same: SAME if same else levels[point[alpha]])
    board = leaderboard_table(rows, manifest())
    assert list(dict.fromkeys(board["cohort"])) == ["toy (strength=0.5)", "toy (strength=1)"]
    assert by_setting(board, "toy (strength=1)")["rank"].to_dict() == {
        "gaussian_noise (alpha=2)": 1.0,
        "gaussian_noise (alpha=1)": 2.0,
        "none": 3.0,
    }
    assert set(overall_rank(board)["cohorts"]) == {2}


# -- the recipe --------------------------------------------------------------------------------------


@pytest.fixture
def installed(monkeypatch) -> Registry:
    """harmonia's own plugins and the throw-away third-party mitigations (no other entry points, no toy plugins)."""
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    return Registry.from_entry_points(extra=[leaderboard_plugin])


@pytest.fixture
def with_toy(installed) -> Registry:
    installed.register(toy_plugins)
    return installed


def swept(recipe: dict) -> list[str]:
    return ["+".join(m["plugin"] for m in point) or "none" for point in recipe["sweep"]["mitigations"]]


def test_every_installed_mitigation_that_fits_takes_part_and_the_rest_are_left_out_with_a_reason(installed):
    recipe, skipped = leaderboard_recipe(["ct_recon"], None, installed, quick=True, probe=False)
    left_out = {line.split(":")[0]: line for line in skipped}
    assert set(left_out) == {"gaussian_noise", "target_mixing", "needs_level", "volumes_only", "idle_gain"}
    assert swept(recipe) == ["none"] + sorted(set(installed.names("mitigation")) - set(left_out))
    assert {"batch_gain", "ct_window", "dann", "ct_standardizer"} <= set(swept(recipe))
    assert "params.level: required key is missing" in left_out["needs_level"]
    assert "volumes_only needs 3-D items" in left_out["volumes_only"]
    assert "does nothing with its default parameters" in left_out["idle_gain"]
    assert len(load_recipe(recipe, registry=installed).points) == len(swept(recipe))


def test_a_mitigation_that_cannot_run_on_one_cohort_is_left_out_on_all_of_them(with_toy):
    recipe, skipped = leaderboard_recipe(["ct_recon", "toy"], ["ct_window", "batch_gain"], with_toy, True, False)
    assert swept(recipe) == ["none", "batch_gain"]
    assert skipped == [
        "ct_window: 'ct_window' is made for CT; cohort toy is MRI (so also left out on ct_recon: the cohorts share one sweep)"
    ]


def test_each_cohort_gets_the_studys_model_and_its_tasks_metric(installed):
    cohorts = ["xray_chest", "ct_lidc", "mri_prostate"]
    recipe, _ = leaderboard_recipe(cohorts, [], installed, quick=False, probe=True)
    models = {e["cohort"]["plugin"]: e["model"]["plugin"] for e in recipe["cohorts"]}
    assert models == {"xray_chest": "densenet121", "ct_lidc": "nodulex", "mri_prostate": "mrnet2d"}
    assert recipe["train"] == {"epochs": 60, "batch_size": 50, "lr": 1.0e-4, "seeds": 10}
    assert recipe["evaluate"] == ["auc", {"plugin": "vendor_probe", "params": {"input": "transformed"}}]
    assert swept(recipe) == ["none"]


def test_cohorts_of_different_tasks_cannot_share_a_leaderboard(installed):
    with pytest.raises(InputError, match=r"mnms \(segmentation\), ct_kidney \(classification\)"):
        leaderboard_recipe(["mnms", "ct_kidney"], None, installed, quick=True, probe=False)


# -- a tiny real run ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> runner.Run:
    """A quick leaderboard with the vendor probe on the toy cohort: plain, the third-party batch_gain and DANN."""
    registry = Registry.from_entry_points(extra=[toy_plugins, leaderboard_plugin])
    recipe, _ = leaderboard_recipe(["toy"], ["batch_gain", "dann"], registry, quick=True, probe=True)
    recipe["cohorts"][0] = {
        "cohort": {"plugin": "toy", "synthetic": {"patients": 6, "seed": 1}},
        "model": {"plugin": "toynet", "params": {"width": 4}},
    }
    recipe["train"].update(epochs=2, batch_size=8, lr=0.01, seeds=2)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HARMONIA_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        env.setenv("HARMONIA_SALT", "test-salt")
        env.delenv("HARMONIA_DATA", raising=False)
        return runner.run(recipe, out=tmp_path_factory.mktemp("leaderboard") / "run", registry=registry)


def test_a_third_party_mitigation_is_ranked_in_a_tiny_real_run(tiny_run):
    board = leaderboard_table(tiny_run.results, tiny_run.manifest)
    assert sorted(board["setting"]) == ["batch_gain", "dann", "none"]
    assert board["rank"].sum() == 6 and board["rank"].between(1, 3).all()
    assert set(board["seeds"]) == {2}
    assert set(board["probe_metric"]) == {"probe_auroc"} and board["probe_mean"].between(0, 1).all()
    mitigated = board[board["setting"] != "none"]
    assert mitigated["gap_change"].notna().all() and mitigated["p_holm"].notna().all()


def test_the_report_of_a_run_with_two_settings_has_the_leaderboard_and_its_csv(tiny_run):
    report = (tiny_run.path / "report.md").read_text()
    assert "## Mitigation leaderboard (dice)" in report
    assert "ranked within its cohort by other-domain dice, best first (SYNTHETIC data).**" in report
    assert "**Mean rank of each setting over the cohorts it ran on (SYNTHETIC data).**" in report
    assert "probe_auroc (vendor probe)" in report
    rows = pd.read_csv(tiny_run.path / "leaderboard.csv")
    assert len(rows) == 3 and not rows.duplicated(["cohort", "setting"]).any()
    assert set(rows["data"]) == {"synthetic"}
    assert list(pd.read_csv(tiny_run.path / "leaderboard_overall.csv")["cohorts"]) == [1, 1, 1]


def test_a_run_with_one_mitigation_setting_has_no_leaderboard(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    results = constructed()
    results[results["mitigations"] != "hist"].to_csv(run / "results.csv", index=False)
    (run / "manifest.json").write_text(pd.Series(manifest()).to_json())
    report = write_report(run).read_text()
    assert "## Did the mitigation narrow the gap?" in report
    assert "Mitigation leaderboard" not in report and not (run / "leaderboard.csv").exists()


def test_the_compare_command_ranks_reports_and_resumes_like_a_run(registry, tmp_path, capsys):
    registry.register(leaderboard_plugin)
    out = tmp_path / "board"
    tiny = [
        "--set",
        "cohorts.0.model={plugin: toynet, params: {width: 4}}",
        "--set",
        "train={epochs: 2, batch_size: 8, lr: 0.01, seeds: 2, threads: 1}",
    ]
    argv = ["compare", "--cohorts", "toy", "--mitigations", "batch_gain,scale_batches,needs_level", "--out", str(out)]
    assert main([*argv, *tiny]) == 0
    printed = capsys.readouterr().out
    assert "leaving out needs_level: cannot run with its default parameters" in printed
    assert "Mean rank over the cohorts" in printed
    overall = pd.read_csv(out / "leaderboard_overall.csv")
    assert set(overall["setting"]) == {"none", "batch_gain", "scale_batches"}
    assert "## Mitigation leaderboard" in (out / "report.md").read_text()
    results = (out / "results.csv").read_text()
    assert main(["run", "--resume", str(out), "--quiet"]) == 0  # a leaderboard resumes like any run
    assert (out / "results.csv").read_text() == results


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--cohorts", "mnms,ct_kidney"], "the cohorts are scored by different metrics"),
        (["--cohorts", "mnms", "--mitigations", "dan"], "did you mean 'dann'?"),
        (["--cohorts", "mnms", "--mitigations", "ct_standardizer"], "no mitigation is left to rank"),
    ],
)
def test_the_compare_command_refuses_what_it_cannot_rank_with_one_line(argv, message, capsys):
    assert main(["compare", "--quick", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
