"""The one place that calls a cell's mitigation stages, in the documented order and by their rules.

The protocol runs the first stage (``adjust_training_set``) and the training engine every other
one, both through a :class:`MitigationStack`; no other code calls a stage method. The order of
the stages is :data:`harmonia.api.STAGES`; within a stage, mitigations act in the recipe's order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from harmonia.api import STAGES, ImageSet, Mitigation, Model, TaskLoss, TrainStep
from harmonia.errors import InputError

log = logging.getLogger(__name__)


class MitigationStack:
    """A cell's mitigations; each method runs one stage over those that implement it."""

    def __init__(self, mitigations: Sequence[Mitigation]):
        self.mitigations = tuple(mitigations)
        self._by_stage = {stage: [m for m in self.mitigations if stage in m.stages()] for stage in STAGES}

    @property
    def needs_target_images(self) -> bool:
        """Whether a mitigation asks for an unlabeled target-domain batch at every step (``uses_target_images``)."""
        return any(m.uses_target_images for m in self.mitigations)

    @property
    def joint_forward(self) -> bool:
        """Whether a mitigation asks for one forward pass over source and target batches together."""
        return any(m.joint_forward for m in self.mitigations)

    @property
    def adds_loss(self) -> bool:
        """Whether a mitigation adds a term to the training loss (``extra_loss``)."""
        return bool(self._by_stage["extra_loss"])

    def require_target_images(self, target_train: ImageSet | None) -> None:
        """InputError naming the mitigations that need target-domain images when there are none."""
        if self.needs_target_images and (target_train is None or len(target_train) == 0):
            names = ", ".join(m.name for m in self.mitigations if m.uses_target_images)
            raise InputError(f"{names} needs target-domain training images, but the cohort has only one domain")

    # -- the stages, in order ---------------------------------------------------------------------

    def adjust_training_set(self, train: ImageSet, target_train: ImageSet | None, rng: np.random.Generator) -> ImageSet:
        """Stage 1: each mitigation changes the training split in turn (target mixing).

        A mitigation that returns a training set without labels (the unlabelled target set it was given)
        is a RuntimeError naming it: training on target items needs ``uses_target_labels``.
        """
        for m in self._by_stage["adjust_training_set"]:
            train = m.adjust_training_set(train, _target_set_for(m, target_train), rng)
            if not train.labelled:
                raise RuntimeError(
                    f"mitigation {m.name} returned a training set without labels; a mitigation that trains on "
                    f"target-domain items must set uses_target_labels = True to receive their labels"
                )
        return train

    def task_loss(self, default: TaskLoss) -> TaskLoss:
        """Stage 2: the loss to train with: ``default`` (the model's) unless one mitigation replaces it.

        Two or more replacing it is an InputError naming them: which one should win is the user's call.
        """
        replacing = []
        for m in self._by_stage["task_loss"]:
            loss = m.task_loss(default)
            if loss is not None:
                replacing.append((m.name, loss))
        if len(replacing) > 1:
            names = " and ".join(name for name, _ in replacing)
            raise InputError(f"mitigations {names} each replace the task loss; a recipe may use only one of them")
        if replacing:
            log.debug("training with the task loss of mitigation %s", replacing[0][0])
            return replacing[0][1]
        return default

    def fit(self, train: ImageSet, target_train: ImageSet | None, device: torch.device) -> None:
        """Stage 3: each mitigation learns what it needs before training (a standardizer)."""
        for m in self._by_stage["fit"]:
            m.fit(train, _target_set_for(m, target_train), device)

    def transform_images(self, images: torch.Tensor, training: bool = False) -> torch.Tensor:
        """Stage 4: every image the model sees, through each mitigation's transform in turn; ``training`` images
        skip the transforms of mitigations whose ``transforms_training_images`` is False."""
        for m in self._by_stage["transform_images"]:
            if m.transforms_training_images or not training:
                images = m.transform_images(images)
        return images

    def build(self, model: Model) -> nn.ModuleList:
        """Stage 5: the trainable modules the mitigations make for ``model`` (trained with its optimizer)."""
        built = (m.build(model) for m in self._by_stage["build"])
        return nn.ModuleList([module for module in built if module is not None])

    def augment_batch(
        self, images: torch.Tensor, targets: torch.Tensor, normalize: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 6: augment a native-unit batch: ``batch_space="native"`` mitigations, then ``normalize``
        (the per-image z-score), then ``batch_space="normalized"`` ones. Returns the normalized batch."""
        augmenters = self._by_stage["augment_batch"]
        for m in augmenters:
            if m.batch_space == "native":
                images, targets = m.augment_batch(images, targets)
        images = normalize(images)
        for m in augmenters:
            if m.batch_space == "normalized":
                images, targets = m.augment_batch(images, targets)
        return images, targets

    def extra_loss(self, step: TrainStep) -> torch.Tensor | None:
        """Stage 7: the sum of the mitigations' loss terms at ``step`` (None when none adds one)."""
        total = None
        for m in self._by_stage["extra_loss"]:
            term = m.extra_loss(step)
            if term is not None:
                total = term if total is None else total + term
        return total

    # -- reporting ----------------------------------------------------------------------------------

    def epoch_metrics(self) -> dict[str, float]:
        """Every mitigation's :meth:`~harmonia.api.Mitigation.epoch_metrics`, keyed ``<name>.<key>``
        (``<name>#<k>.<key>`` for the k-th of several mitigations of one name)."""
        metrics = {}
        for label, m in zip(mitigation_labels(self.mitigations), self.mitigations):
            metrics.update({f"{label}.{key}": float(value) for key, value in m.epoch_metrics().items()})
        return metrics


def _target_set_for(mitigation: Mitigation, target_train: ImageSet | None) -> ImageSet | None:
    """``target_train`` as ``mitigation`` may see it: labelled only if it declares ``uses_target_labels``."""
    if target_train is None or mitigation.uses_target_labels:
        return target_train
    return target_train.without_targets()


def mitigation_labels(mitigations: Sequence[Mitigation]) -> list[str]:
    """Each mitigation's name, numbered ``name#1``, ``name#2`` ... where the name occurs more than once."""
    names = [m.name for m in mitigations]
    return [f"{n}#{names[: i + 1].count(n)}" if names.count(n) > 1 else n for i, n in enumerate(names)]
