"""Tiny plugins for testing the core fast: a two-domain toy cohort, a small conv net, a pixel-accuracy
evaluator and spies that record what the protocol hands to mitigations and evaluators.

The toy cohort's domain B has inverted, rescaled intensities, so a model trained on A fails on B.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from pydantic import Field
from torch import nn

from harmonia import hookimpl
from harmonia.api import (
    ALL_DOMAINS,
    CellView,
    Cohort,
    CohortParams,
    Evaluator,
    ImageSet,
    Metric,
    Mitigation,
    Model,
    ModelOutput,
    Params,
    Predictions,
    Task,
    TrainStep,
    TwinSettings,
)
from harmonia.errors import DataError, UnreadableFile

SIZE = 16


class ToyCohortParams(CohortParams):
    domains: list[str] = Field(["A", "B"], description="domains to use")
    paired: bool = Field(False, description="patient k of A and of B are one patient (a paired cohort)")


class ToyCohort(Cohort):
    """Two-domain toy segmentation cohort (SYNTHETIC squares), for tests."""

    name = "toy"
    modality = "MRI"
    Params = ToyCohortParams
    obtain = "it is made by the tests"
    task = Task("segmentation", ("background", "square"))

    def _data(self) -> dict[str, np.ndarray]:
        with np.load(self.root / "toy.npz", allow_pickle=False) as f:
            data = dict(f)
        if self.params.paired:  # "A007" and "B007" become patient "007", seen in both domains
            for key in ("patients", "item_patients"):
                data[key] = np.array([p[1:] for p in data[key]])
        return data

    def domains(self) -> list[str]:
        return list(self.params.domains)

    def index(self) -> pd.DataFrame:
        """Every patient, less those with a ``<patient>.broken`` file in the root (an unreadable file)."""
        d = self._data()
        broken = [path.stem for path in sorted(self.root.glob("*.broken"))]
        for patient in broken:
            self.unreadable_file(UnreadableFile(self.root / f"{patient}.broken", "truncated file"), patient)
        table = pd.DataFrame({"patient": d["patients"], "domain": d["domains"], "stratum": d["strata"]})
        return table[~table["patient"].isin(broken)].reset_index(drop=True)

    def load(self, patients: Sequence[str]) -> ImageSet:
        """The items of ``patients``, less those with a ``<patient>.unloadable`` file (pixels unreadable)."""
        d = self._data()
        unloadable = [path.stem for path in sorted(self.root.glob("*.unloadable")) if path.stem in patients]
        for patient in unloadable:
            self.unreadable_file(UnreadableFile(self.root / f"{patient}.unloadable", "corrupt pixel data"), patient)
        keep = np.isin(d["item_patients"], np.setdiff1d(np.asarray(patients), unloadable))
        return ImageSet(
            torch.from_numpy(d["images"][keep]),
            torch.from_numpy(d["masks"][keep]).long(),
            d["item_patients"][keep].astype(object),
            d["item_domains"][keep].astype(object),
        )

    @classmethod
    def check_root(cls, root: Path) -> None:
        if not (root / "toy.npz").exists():
            raise DataError(f"{root}: no toy.npz")

    @classmethod
    def write_twin(cls, out: Path, settings: TwinSettings) -> None:
        rng = np.random.default_rng(settings.seed)
        patients, domains, strata, images, masks, item_patients, item_domains = [], [], [], [], [], [], []
        for domain in ("A", "B"):
            for p in range(settings.patients):
                pid = f"{domain}{p:03d}"
                patients.append(pid)
                domains.append(domain)
                strata.append(str(p % 2))
                for _ in range(3):
                    mask = np.zeros((SIZE, SIZE), np.int64)
                    r, c = rng.integers(2, SIZE - 8, 2)
                    side = rng.integers(4, 7)
                    mask[r : r + side, c : c + side] = 1
                    image = mask * 1.0 + 0.2 * rng.standard_normal((SIZE, SIZE))
                    if domain == "B":
                        image = (1.0 - image) * 3.0 * settings.strength + image * (1 - settings.strength)
                    images.append(image[None].astype(np.float32))
                    masks.append(mask)
                    item_patients.append(pid)
                    item_domains.append(domain)
        np.savez(
            out / "toy.npz",
            patients=np.array(patients),
            domains=np.array(domains),
            strata=np.array(strata),
            images=np.stack(images),
            masks=np.stack(masks),
            item_patients=np.array(item_patients),
            item_domains=np.array(item_domains),
        )


class ToyNetParams(Params):
    width: int = Field(8, ge=1, description="channels")


class ToyNet(Model):
    """A three-layer conv net for tests."""

    name = "toynet"
    Params = ToyNetParams
    tasks = ("segmentation",)

    def __init__(self, params: ToyNetParams, task: Task):
        super().__init__(params, task)
        w = params.width
        self.encoder = nn.Sequential(
            nn.Conv2d(task.in_channels, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Conv2d(w, task.num_classes, 1)
        self.feature_channels = w

    def forward(self, x: torch.Tensor) -> ModelOutput:
        features = self.encoder(x)
        return ModelOutput(self.head(features), features)


class ToyClassifier(Model):
    """One convolution, global average pooling and a linear head, 2-D or 3-D after the task; for tests."""

    name = "toy_classifier"
    tasks = ("classification",)

    def __init__(self, params: Params, task: Task):
        super().__init__(params, task)
        conv, pool = (nn.Conv3d, nn.AdaptiveAvgPool3d) if task.spatial_dims == 3 else (nn.Conv2d, nn.AdaptiveAvgPool2d)
        self.encoder = nn.Sequential(conv(task.in_channels, 4, 3, padding=1), nn.ReLU(), pool(1), nn.Flatten())
        self.head = nn.Linear(4, task.num_classes)
        self.feature_channels = 4

    def forward(self, x: torch.Tensor) -> ModelOutput:
        features = self.encoder(x)
        return ModelOutput(self.head(features), features)


class ItemAccuracy(Evaluator):
    """Fraction of correctly classified items, for tests."""

    name = "item_accuracy"
    tasks = ("classification",)

    def evaluate(self, predictions: Predictions) -> list[Metric]:
        correct = (predictions.predicted == predictions.targets).float().mean().item()
        return [Metric("accuracy", correct, len(predictions.targets))]


class PixelAccuracy(Evaluator):
    """Fraction of correctly labelled pixels, for tests."""

    name = "pixel_accuracy"
    tasks = ("segmentation",)

    def evaluate(self, predictions: Predictions) -> list[Metric]:
        correct = (predictions.predicted == predictions.targets).float().mean().item()
        return [Metric("pixel_accuracy", correct, len(set(predictions.patients)))]


class SpyEvaluator(PixelAccuracy):
    """Pixel accuracy that records every patient it was shown (to prove selection never sees test data)."""

    name = "spy_evaluator"
    seen: ClassVar[list[set[str]]] = []

    def evaluate(self, predictions: Predictions) -> list[Metric]:
        SpyEvaluator.seen.append(set(predictions.patients))
        return super().evaluate(predictions)


class CalibratingSpy(PixelAccuracy):
    """Pixel accuracy that records the patients it calibrates on, plus a metric that is always undefined."""

    name = "calibrating_spy"
    calibrated_on: ClassVar[list[set[str]]] = []

    def calibrate(self, validation: Predictions) -> None:
        CalibratingSpy.calibrated_on.append(set(validation.patients))

    def evaluate(self, predictions: Predictions) -> list[Metric]:
        undefined = Metric("never_defined", math.nan, 0, note="no positive pixels to score")
        return [*super().evaluate(predictions), undefined]


class PatientAccuracy(PixelAccuracy):
    """Pixel accuracy per patient: the mean over patients, each patient's own value kept (``per_patient``)."""

    name = "patient_accuracy"

    def evaluate(self, predictions: Predictions) -> list[Metric]:
        patients = np.asarray(predictions.patients)
        values = {}
        for patient in np.unique(patients):
            items = torch.from_numpy(np.flatnonzero(patients == patient))
            values[str(patient)] = (predictions.predicted[items] == predictions.targets[items]).float().mean().item()
        return [Metric("patient_accuracy", float(np.mean(list(values.values()))), len(values), per_patient=values)]


class CellSpy(Evaluator):
    """A cell-scope evaluator recording what it was shown: the patients of each split it asked for, the shape of
    the features and whether the transform acted; it scores each domain's mean test intensity and their spread."""

    name = "cell_spy"
    scope = "cell"
    views: ClassVar[list[dict]] = []

    def evaluate_cell(self, view: CellView) -> list[Metric]:
        tests = {d: view.split(d, "test") for d in view.domains}
        seen = {
            "train_domain": view.train_domain,
            "patients": {d: set(t.patients) for d, t in tests.items()},
            "features": tuple(view.features(tests[view.train_domain].images).shape),
            "shifted": float((view.transform(tests["A"].images) - tests["A"].images).mean()),
        }
        CellSpy.views.append(seen)
        means = {d: t.images.mean().item() for d, t in tests.items()}
        spread = max(means.values()) - min(means.values())
        return [Metric("test_mean", m, len(tests[d]), test_domain=d) for d, m in means.items()] + [
            Metric("domain_spread", spread, len(view.domains), test_domain=ALL_DOMAINS)
        ]


class ShiftTestImages(Mitigation):
    """Adds 100 to the images the trained model is tested on, never to its training images; records the means
    of the image tensors it transformed."""

    name = "shift_test_images"
    transforms_training_images = False
    transformed: ClassVar[list[int]] = []

    def transform_images(self, images: torch.Tensor) -> torch.Tensor:
        ShiftTestImages.transformed.append(len(images))
        return images + 100


class ScaledParams(Params):
    factor: float = Field(1.0, ge=0.0, description="how much to scale the training batches by, minus one")


class ScaleBatches(Mitigation):
    """Multiplies training batches by 1 + factor (a no-op at factor 0) and reports the factor per cell."""

    name = "scale_batches"
    Params = ScaledParams

    @classmethod
    def is_inactive(cls, params: ScaledParams) -> bool:
        return params.factor == 0

    def augment_batch(self, images, targets):
        return images * (1 + self.params.factor), targets

    def cell_record(self) -> dict[str, float]:
        return {"factor": self.params.factor}


class SpyMitigation(Mitigation):
    """Records the target-domain data it receives and adds a zero loss that uses the target batch."""

    name = "spy_mitigation"
    uses_target_images = True
    target_patients: ClassVar[list[set[str]]] = []
    target_batches: ClassVar[list[int]] = []
    domains_seen: ClassVar[list[tuple[set[str], set[str]]]] = []

    def adjust_training_set(self, train, target_train, rng):
        SpyMitigation.target_patients.append(set(target_train.patients))
        SpyMitigation.domains_seen.append((set(train.domains), set(target_train.domains)))
        return train

    def extra_loss(self, step: TrainStep) -> torch.Tensor:
        SpyMitigation.target_batches.append(len(step.target_images))
        return 0.0 * step.target_output.logits.sum()


class FailingMitigation(Mitigation):
    """Raises on the Nth training cell, to simulate a crash in the middle of a run."""

    name = "failing"
    calls: ClassVar[int] = 0
    fail_at: ClassVar[int] = 10**9

    def build(self, model):
        FailingMitigation.calls += 1
        if FailingMitigation.calls == FailingMitigation.fail_at:
            raise KeyboardInterrupt
        return None


class KillParams(Params):
    marker: str = Field(description="file whose absence means: kill the process that computes this cell")
    driver_pid: int = Field(description="the process never killed (the test's own)")


class KillWorker(Mitigation):
    """SIGKILLs the worker process computing the first cell that reaches it (then leaves a marker file, so the
    retried cell runs through), as a worker killed mid-run by the OOM killer would die."""

    name = "kill_worker"
    Params = KillParams

    def build(self, model):
        marker = Path(self.params.marker)
        if not marker.exists() and os.getpid() != self.params.driver_pid:
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return None


class SlowParams(Params):
    seconds: float = Field(0.5, ge=0)


class SlowDown(Mitigation):
    """Waits before training, so that a run lasts long enough to be interrupted from outside."""

    name = "slow_down"
    Params = SlowParams

    def build(self, model):
        time.sleep(self.params.seconds)
        return None


class BrokenCell(Mitigation):
    """Raises an ordinary error in every cell (a bug in a plugin)."""

    name = "broken_cell"

    def build(self, model):
        raise ValueError("this mitigation is broken on purpose")


@hookimpl
def harmonia_cohorts():
    return [ToyCohort]


@hookimpl
def harmonia_models():
    return [ToyNet, ToyClassifier]


@hookimpl
def harmonia_evaluators():
    return [PixelAccuracy, SpyEvaluator, ItemAccuracy, CalibratingSpy, PatientAccuracy, CellSpy]


@hookimpl
def harmonia_mitigations():
    return [SpyMitigation, FailingMitigation, ScaleBatches, ShiftTestImages, KillWorker, SlowDown, BrokenCell]
