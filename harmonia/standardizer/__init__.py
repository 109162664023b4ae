"""ESRGAN-style CT image standardizer: translate slices of one reconstruction towards a reference one (seed 003).

Train on paired HU slices, apply, save and load::

    from harmonia.standardizer import StandardizerSettings, load_standardizer, save_standardizer, train_standardizer

    standardizer, record = train_standardizer(sources, targets, StandardizerSettings(patch_size=128))
    save_standardizer(standardizer, "models/fbp_to_m80.pt")
    standardized = load_standardizer("models/fbp_to_m80.pt").apply_hu(slices)

``network`` holds the generator and discriminator, ``perceptual`` the VGG19 loss, ``training`` the settings,
the two training stages and :class:`Standardizer`, ``checkpoint`` the files on disk.
"""

from harmonia.standardizer.checkpoint import (
    checkpoint_files,
    checkpoint_sha256,
    load_standardizer,
    save_standardizer,
)
from harmonia.standardizer.network import Discriminator, Generator
from harmonia.standardizer.perceptual import DEFAULT_LAYER, VGG19_CONVS, PerceptualLoss
from harmonia.standardizer.training import (
    GeneratorSpec,
    LossWeights,
    StageRecord,
    Standardizer,
    StandardizerSettings,
    TrainingRecord,
    train_stage1,
    train_stage2,
    train_standardizer,
    unit_to_hu,
)

__all__ = [
    "DEFAULT_LAYER",
    "VGG19_CONVS",
    "Discriminator",
    "Generator",
    "GeneratorSpec",
    "LossWeights",
    "PerceptualLoss",
    "StageRecord",
    "Standardizer",
    "StandardizerSettings",
    "TrainingRecord",
    "checkpoint_files",
    "checkpoint_sha256",
    "load_standardizer",
    "save_standardizer",
    "train_stage1",
    "train_stage2",
    "train_standardizer",
    "unit_to_hu",
]
