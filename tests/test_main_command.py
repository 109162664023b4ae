"""The README's main job, `harmonia run recipes/mnms_dann.yaml`, end to end through the command, made tiny.

It runs in a separate process as a user would start it, on the SYNTHETIC M&Ms twin (nothing is
configured), with overrides that shrink data, model and training to a few seconds per cell.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parent.parent
RECIPE = "recipes/mnms_dann.yaml"
TINY = [
    "train.seeds=1",
    "train.epochs=1",
    "train.batch_size=8",
    "train.device=cpu",
    "cohort.params.image_size=32",
    "cohort.params.spacing_mm=4",
    "cohort.params.phases=[ED]",
    "cohort.synthetic.patients=3",
    "model.params.channels=[4,8]",
]


def mitigation_labels(recipe: dict) -> set[str]:
    """The `mitigations` value results.csv gives each setting the recipe's sweep compares."""
    settings = recipe["sweep"]["mitigations"]
    return {"+".join(m["plugin"] for m in setting) or "none" for setting in settings}


def test_main_recipe_runs_through_the_command_on_the_synthetic_twin(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HARMONIA_DATA"}
    env.update(HARMONIA_CACHE=str(tmp_path / "cache"), HARMONIA_SALT="test-salt")
    out = tmp_path / "run"
    overrides = [arg for key in TINY for arg in ("--set", key)]
    command = [sys.executable, "-m", "harmonia.cli", "run", RECIPE, "--out", str(out), *overrides]

    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)

    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    recipe = yaml.safe_load((REPO / RECIPE).read_text())
    settings, vendors = mitigation_labels(recipe), recipe["cohort"]["params"]["domains"]
    assert len(settings) == 2 and len(vendors) == 4
    results = pd.read_csv(out / "results.csv")
    assert set(results["data"]) == {"synthetic"}
    dice = results[results["metric"] == "dice"]
    cells = set(zip(dice["mitigations"], dice["train_domain"], dice["test_domain"], strict=True))
    assert cells == {(s, a, b) for s in settings for a in vendors for b in vendors}
    title = (out / "report.md").read_text().splitlines()[0]
    assert title.startswith("# ") and "SYNTHETIC" in title
