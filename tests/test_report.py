"""report.md and the console: every metric, the primary one recorded at run time, each metric's direction."""

from __future__ import annotations

import json
import sys

import pandas as pd
from test_statistics import table

from harmonia import hookimpl, runner
from harmonia.api import Evaluator, Metric, Predictions
from harmonia.report import console_lines, metric_infos, write_report


class PixelError(Evaluator):
    """Fraction of wrongly labelled pixels: lower is better."""

    name = "pixel_error"
    tasks = ("segmentation",)
    higher_is_better = False

    def evaluate(self, predictions: Predictions) -> list[Metric]:
        wrong = (predictions.predicted != predictions.targets).float().mean().item()
        return [Metric("pixel_error", wrong, len(set(predictions.patients)))]


@hookimpl
def harmonia_evaluators():
    return [PixelError]


def two_metric_results() -> pd.DataFrame:
    """A plain and a mitigated point, 4 seeds; hd95 (lower is better) rows come first, then dice."""
    points = [{"mitigations": "none"}, {"mitigations": "dann"}]

    def hd95(point, seed, train, same):
        return 5.0 + 0.1 * seed if same else 9.0 + 0.2 * seed - (2.0 if point["mitigations"] == "dann" else 0.0)

    def dice(point, seed, train, same):
        return 0.8 + 0.01 * seed if same else 0.6 + 0.02 * seed + (0.1 if point["mitigations"] == "dann" else 0.0)

    return pd.concat([table(points, 4, hd95, "hd95"), table(points, 4, dice, "dice")], ignore_index=True)


def write_run_folder(path, results: pd.DataFrame, manifest: dict) -> None:
    path.mkdir()
    (path / "manifest.json").write_text(json.dumps({"recipe": "constructed", "status": "completed", **manifest}))
    results.to_csv(path / "results.csv", index=False)


def test_a_run_records_the_primary_metric_and_each_direction(registry, toy_recipe, tmp_path):
    registry.register(sys.modules[__name__])
    toy_recipe["evaluate"] = ["pixel_accuracy", "pixel_error"]
    run = runner.run(toy_recipe, out=tmp_path / "run", registry=registry)
    assert run.manifest["metrics"] == {
        "primary": "pixel_accuracy",
        "higher_is_better": {"pixel_accuracy": True, "pixel_error": False},
    }
    report = (run.path / "report.md").read_text()
    assert "## Same- vs other-domain pixel_accuracy (primary) (mean ± sd over seeds)" in report
    assert "## Same- vs other-domain pixel_error (mean ± sd over seeds)" in report
    assert "### pixel_error (lower is better; the gap is the cross-domain loss, other − same pixel_error)" in report
    assert "delta_sd" in run.summary.columns


def test_the_report_covers_every_metric_and_leads_with_the_recorded_primary(tmp_path):
    results = two_metric_results()
    manifest = {"metrics": {"primary": "dice", "higher_is_better": {"dice": True, "hd95": False}}}
    write_run_folder(tmp_path / "run", results, manifest)
    report = write_report(tmp_path / "run").read_text()
    sections = [line for line in report.splitlines() if line.startswith("## ")]
    assert sections == [
        "## Same- vs other-domain dice (primary) (mean ± sd over seeds)",
        "## Same- vs other-domain hd95 (mean ± sd over seeds)",
        "## Did the mitigation narrow the gap?",
        "## Mean dice by training (rows) and test (columns) domain",
        "## Figures",
        "## Per test domain: set-level metrics",
    ]
    per_domain = report.split("## Per test domain: set-level metrics")[1]
    assert "| hd95 " in per_domain and "| dice " not in per_domain  # the primary metric has its own tables
    assert "### hd95 (lower is better; the gap is the cross-domain loss, other − same hd95)" in report
    assert "- dann vs none: narrowed the gap in hd95 by 2.000" in report
    assert "- dann vs none: narrowed the gap in dice by 0.100" in report

    console = console_lines(results, manifest)
    assert "same-domain dice" in console[0] and "hd95" not in console[0]
    assert console[-1] == "(report.md covers every metric: dice, hd95)"


def test_an_older_run_folder_falls_back_to_the_first_rows_metric_and_says_the_direction_is_assumed(tmp_path):
    results = two_metric_results()
    infos = metric_infos(results, {})
    assert [i.name for i in infos] == ["hd95", "dice"] and not infos[0].recorded
    write_run_folder(tmp_path / "run", results, {})
    report = write_report(tmp_path / "run").read_text()
    assert "## Same- vs other-domain hd95 (primary)" in report
    assert "### hd95 (higher assumed better (not recorded in the manifest);" in report
