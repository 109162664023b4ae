"""How much each cohort's SYNTHETIC twin shifts between its two vendors, measured by the study's protocol.

For every classification cohort of the scanner-shift study, a small CNN probe is trained on one
vendor's twin patients and tested (ROC AUC) on held-out patients of the same and the other
vendor, over several seeds, through ``harmonia.runner.run`` (the real protocol: patient-level
splits, model selection on the training vendor's validation patients only). Prints, per cohort
and by modality, the mean same-vendor AUC, other-vendor AUC and their difference (delta), the
quantity Guo et al. report as MRI -0.097 < X-ray -0.067 < CT -0.026.

The probe and the AUC are defined here as measuring instruments only; they are not the
study's models (MRNet2D, NoduleX, DenseNet-121).

    python benchmarks/twin_shift.py [--patients 12] [--seeds 3] [--epochs 12] [--difficulty 0.5] [--strength 1] [--cohorts mri_breast ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pydantic import Field
from torch import nn

from harmonia import hookimpl, runner
from harmonia.api import Evaluator, Metric, Model, ModelOutput, Params, Predictions, Task
from harmonia.registry import Registry

COHORTS = ("mri_breast", "mri_prostate", "ct_lidc", "ct_hnscc", "ct_kidney", "ct_oropharyngeal", "xray_chest")
#: smaller items than the cohorts' defaults, so a CPU run takes minutes (the ROIs of the 3-D cohorts stay as in the paper
#: except the oropharyngeal cube, cut from 72 mm at 1 mm to 64 mm at 2 mm)
GEOMETRY = {
    "mri_prostate": {"image_size": 64, "spacing_mm": 2.0},
    "ct_hnscc": {"image_size": 64, "spacing_mm": 4.0},
    "ct_kidney": {"image_size": 64, "spacing_mm": 6.0},
    "ct_oropharyngeal": {"roi_size": 32, "spacing_mm": 2.0},
    "xray_chest": {"image_size": 64},
}


class ProbeParams(Params):
    width: int = Field(16, ge=2, description="channels of the first convolution (doubled in the second)")


class ProbeCNN(Model):
    """Two conv blocks, global average pooling and a linear head; 2-D or 3-D after the cohort's task."""

    name = "probe_cnn"
    tasks = ("classification",)
    Params = ProbeParams

    def __init__(self, params: ProbeParams, task: Task):
        super().__init__(params, task)
        conv, norm, pool = (
            (nn.Conv3d, nn.BatchNorm3d, nn.AdaptiveAvgPool3d)
            if task.spatial_dims == 3
            else (nn.Conv2d, nn.BatchNorm2d, nn.AdaptiveAvgPool2d)
        )
        w = params.width
        self.encoder = nn.Sequential(
            conv(task.in_channels, w, 3, padding=1),
            norm(w),
            nn.ReLU(),
            conv(w, 2 * w, 3, stride=2, padding=1),
            norm(2 * w),
            nn.ReLU(),
            pool(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(2 * w, task.num_classes)
        self.feature_channels = 2 * w

    def forward(self, x: torch.Tensor) -> ModelOutput:
        features = self.encoder(x)
        return ModelOutput(self.head(features), features)


class ProbeAUC(Evaluator):
    """ROC AUC of the positive class (index 1) over items: the chance a positive scores above a negative."""

    name = "probe_auc"
    tasks = ("classification",)
    needs_probabilities = True

    def evaluate(self, predictions: Predictions) -> list[Metric]:
        scores = predictions.probabilities[:, 1].numpy()
        positive = predictions.targets.numpy() == 1
        if positive.all() or not positive.any():
            return [Metric("auc", float("nan"), len(scores))]
        ranks = pd.Series(scores).rank().to_numpy()
        n_pos, n_neg = positive.sum(), (~positive).sum()
        auc = (ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
        return [Metric("auc", float(auc), len(scores))]


@hookimpl
def harmonia_models():
    return [ProbeCNN]


@hookimpl
def harmonia_evaluators():
    return [ProbeAUC]


def measure(cohort: str, args: argparse.Namespace, registry: Registry, out: Path) -> pd.DataFrame:
    recipe = {
        "name": f"twin_shift_{cohort}",
        "cohort": {
            "plugin": cohort,
            "params": GEOMETRY.get(cohort, {}),
            "synthetic": {
                "patients": args.patients,
                "seed": args.twin_seed,
                "difficulty": args.difficulty,
                "strength": args.strength,
            },
        },
        "model": {"plugin": "probe_cnn"},
        "train": {"epochs": args.epochs, "batch_size": 16, "lr": 1e-3, "seeds": args.seeds, "device": "cpu"},
        "evaluate": ["probe_auc"],
    }
    started = time.perf_counter()
    run = runner.run(recipe, out=out / cohort, registry=registry)
    summary = run.summary.assign(seconds=time.perf_counter() - started)
    return summary[["cohort", "modality", "train_domain", "same_mean", "other_mean", "delta", "n_seeds", "seconds"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohorts", nargs="+", default=list(COHORTS))
    parser.add_argument("--patients", type=int, default=12, help="twin patients per vendor")
    parser.add_argument("--twin-seed", type=int, default=0)
    parser.add_argument("--difficulty", type=float, default=0.5, help="twin task difficulty, 0 (easy) to 1 (hard)")
    parser.add_argument("--strength", type=float, default=1.0, help="twin scanner-signature strength")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    registry = Registry.from_entry_points(extra=[sys.modules[__name__]])
    with tempfile.TemporaryDirectory() as tmp:
        table = pd.concat([measure(c, args, registry, Path(tmp)) for c in args.cohorts], ignore_index=True)
    print("SYNTHETIC twins; probe CNN; ROC AUC on held-out patients\n")
    print(table.to_markdown(index=False, floatfmt=".3f"))
    by_modality = table.groupby("modality")["delta"].agg(["mean", "count"]).rename(columns={"mean": "mean delta"})
    print()
    print(by_modality.to_markdown(floatfmt=".3f"))
    print(
        f"\nsame-vendor AUC range {table['same_mean'].min():.3f}-{table['same_mean'].max():.3f}; "
        f"np {np.__version__}, torch {torch.__version__}"
    )


if __name__ == "__main__":
    main()
