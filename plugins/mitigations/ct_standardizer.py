"""ct_standardizer: an ESRGAN-style generator that translates CT slices toward the training domain (seed 003).

Seed 003 (Lee et al., Korean J Radiol 2023) trained a Real-ESRGAN-style generator to turn each CT
reconstruction (FBP, IR, 40/60 keV, optimum contrast) into the reference one (80 keV), and fed the
standardised images to a liver segmenter trained on the reference. Here the reference is the cell's
training domain: ``fit`` trains the standardizer (:mod:`harmonia.standardizer`) before the task model, and
``transform_images`` applies it to the images the trained model is tested on. By default the training
images are left as they are (``apply_to_training: false``), as in the seed, where the segmenter never saw
standardised images; with ``true`` they pass through it too.

Where the pairs come from (``mode``):

- ``paired``: the cohort holds the same exam in every domain (``ct_recon``); each slice of another domain's
  train split is paired with the same patient's slice at the same position in the training domain's train
  split. A patient whose slice counts differ between the two is left out (counted in the manifest).
- ``unpaired``: cross-vendor cohorts have no pairs. Real-ESRGAN's "pure synthetic data" idea for CT: the
  training domain's own train slices are degraded by simulated acquisition differences
  (:mod:`harmonia.ct_degrade`: projection-domain Poisson noise, reconstruction filters, resolution loss),
  and the generator learns to undo them; at test time it is applied to the other domains' images.

Only train splits are ever used to fit; never a validation or test split. The trained generator is saved
with the run (``artifacts/<cell>-ct_standardizer.pt`` and its JSON sidecar), and the manifest keeps the pair
count, the L1 loss at the start and end of each stage and whether the perceptual loss had pretrained VGG19
weights (without ``vgg_weights`` it uses random VGG features: the manifest and report say so).
Every test image is transformed, those of the training domain too (where the generator should change little:
the report's row for the training domain is that check). 2-D slices only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from harmonia import hookimpl
from harmonia.api import Cohort, ImageSet, Mitigation, Params, Task
from harmonia.ct_degrade import DegradeSettings, degrade_batch
from harmonia.intensity import BROAD_CT_WINDOW
from harmonia.standardizer import (
    GeneratorSpec,
    Standardizer,
    StandardizerSettings,
    TrainingRecord,
    save_standardizer,
    train_standardizer,
)


class CTStandardizerParams(Params):
    mode: Literal["paired", "unpaired"] = Field(
        "paired",
        description="paired: the other domains' train slices paired with the same patient's training-domain slices; "
        "unpaired: the training domain's slices degraded by simulated CT acquisition differences",
    )
    apply_to_training: bool = Field(
        False, description="also standardise the training images (seed 003 standardised only the images tested on)"
    )
    generator: GeneratorSpec = Field(
        default_factory=GeneratorSpec, description="generator width, depth and growth (Real-ESRGAN: 64, 23, 32)"
    )
    discriminator_features: int = Field(16, ge=1, description="width of the U-Net discriminator")
    hu_window: tuple[float, float] = Field(BROAD_CT_WINDOW, description="HU window scaled to [0, 1] (clipped)")
    patch_size: int = Field(64, ge=16, description="square patch side in pixels (seed 003: 256); at most the slice")
    batch_size: int = Field(4, ge=1, description="patches per step")
    stage1_steps: int = Field(200, ge=1, description="steps of stage 1 (L1 only)")
    stage2_steps: int = Field(100, ge=0, description="steps of stage 2 (L1 + perceptual + GAN, λ = 10, 1, 1); 0 skips")
    lr: float = Field(1e-4, gt=0, description="Adam learning rate (betas 0.9, 0.99; halved after half of a stage)")
    perceptual_layer: int = Field(34, description="index into VGG19.features of the perceptual loss's convolution")
    vgg_weights: Path | None = Field(None, description="local torchvision VGG19 weights file (none: random features)")
    degrade: DegradeSettings = Field(
        default_factory=DegradeSettings, description="unpaired mode: the simulated acquisition differences"
    )


class CTStandardizer(Mitigation):
    """ESRGAN-style CT standardizer (seed 003): a generator trained on train-split slices translates test images toward the training domain."""

    name = "ct_standardizer"
    Params = CTStandardizerParams
    modalities = ("CT",)

    @classmethod
    def unsuited_to(cls, params: CTStandardizerParams, cohort: type[Cohort]) -> str | None:
        reason = super().unsuited_to(params, cohort)
        if reason is None and params.mode == "paired" and not cohort.paired:
            reason = (
                f"'ct_standardizer' in mode paired needs a cohort that images each patient in every domain (ct_recon); "
                f"cohort {cohort.name} is not paired: use mode: unpaired"
            )
        return reason

    def __init__(self, params: CTStandardizerParams, task: Task):
        super().__init__(params, task)
        if task.spatial_dims != 2:
            raise ValueError(f"ct_standardizer translates 2-D slices; this cohort gives {task.spatial_dims}-D items")
        self.transforms_training_images = params.apply_to_training
        self.standardizer: Standardizer | None = None
        self.record: TrainingRecord | None = None
        self.pairs = 0
        self.unpaired_patients = 0

    def fit(self, train: ImageSet, target_train: ImageSet | None, device: torch.device) -> None:
        sources, targets = self._pairs(train, target_train)
        self.pairs = len(sources)
        side = min(sources.shape[-2:])
        settings = StandardizerSettings(
            generator=self.params.generator,
            discriminator_features=self.params.discriminator_features,
            hu_window=self.params.hu_window,
            patch_size=min(self.params.patch_size, side),
            batch_size=self.params.batch_size,
            stage1_steps=self.params.stage1_steps,
            stage2_steps=self.params.stage2_steps,
            lr=self.params.lr,
            perceptual_layer=self.params.perceptual_layer,
            vgg_weights=self.params.vgg_weights,
            seed=int(torch.randint(0, 2**31 - 1, (1,)).item()),  # from the cell's seeded global generator
        )
        self.standardizer, self.record = train_standardizer(sources, targets, settings, device=device)

    def _pairs(self, train: ImageSet, target_train: ImageSet | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(sources, targets): the slices to translate and what they should become, all from train splits."""
        if self.params.mode == "unpaired":
            rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,)).item()))
            return degrade_batch(train.images, self.params.degrade, rng), train.images
        if target_train is None or not len(target_train):
            raise ValueError("ct_standardizer (mode paired) needs the other domains' train splits; the cohort has one")
        sources, targets = [], []
        for domain in dict.fromkeys(target_train.domains):
            for patient in dict.fromkeys(target_train.patients[target_train.domains == domain]):
                theirs = target_train.of_patients([patient], domain).images
                mine = train.of_patients([patient]).images
                if len(mine) != len(theirs) or not len(mine):
                    self.unpaired_patients += 1
                    continue
                sources.append(theirs)
                targets.append(mine)
        if not sources:
            raise ValueError(
                "ct_standardizer (mode paired) found no patient with the same slices in the training domain and "
                "another domain: the cohort is not paired; use mode: unpaired"
            )
        return torch.cat(sources), torch.cat(targets)

    def transform_images(self, images: torch.Tensor) -> torch.Tensor:
        if self.standardizer is None:
            raise RuntimeError("ct_standardizer: transform_images before fit")
        return self.standardizer.apply_hu(images)

    def cell_record(self) -> dict[str, int | float | str]:
        record: dict[str, int | float | str] = {"pairs": self.pairs, "mode": self.params.mode}
        if self.params.mode == "paired":
            record["patients_without_pairs"] = self.unpaired_patients
        for stage in self.record.stages if self.record else ():
            record[f"stage{stage.stage}_l1_first"] = stage.first["l1"]
            record[f"stage{stage.stage}_l1_last"] = stage.last["l1"]
            if stage.vgg_pretrained is not None:
                record["vgg"] = "pretrained" if stage.vgg_pretrained else "random (no vgg_weights given)"
        return record

    def save_artifacts(self, directory: Path, stem: str) -> None:
        if self.standardizer is not None:
            save_standardizer(self.standardizer, directory / f"{stem}.pt")


@hookimpl
def harmonia_mitigations():
    return [CTStandardizer]
