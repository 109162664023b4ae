"""The training engine: one model trained on one domain with the cell's mitigations, Adam, epoch selection.

Batches come from tensors already in memory; per step the engine does only what the model and
the active mitigations need. Images are kept in native units and z-scored per image on the fly,
after native-space augmentation and before normalized-space augmentation. The mitigations'
stages are called through :class:`harmonia.stages.MitigationStack`, never directly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from harmonia.api import Evaluator, ImageSet, Mitigation, Model, ModelOutput, Predictions, TrainStep
from harmonia.errors import TrainingDiverged
from harmonia.settings import TrainSpec
from harmonia.stages import MitigationStack

EPS = 1e-6

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; anything else as torch reads it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def zscore(images: torch.Tensor) -> torch.Tensor:
    """Per-image z-score normalisation over all non-batch dimensions (the paper's preprocessing)."""
    dims = tuple(range(1, images.ndim))
    mean = images.mean(dim=dims, keepdim=True)
    std = images.std(dim=dims, keepdim=True)
    return (images - mean) / (std + EPS)


@dataclass
class EpochRecord:
    """What one epoch did: mean training loss, the validation score used for selection, and the
    mitigations' epoch metrics keyed ``<mitigation>.<metric>`` (extra ``history.csv`` columns)."""

    epoch: int
    train_loss: float
    val_score: float | None
    extras: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainResult:
    """The training history, which epoch's weights were kept, and the validation metric that chose them."""

    history: list[EpochRecord] = field(default_factory=list)
    selected_epoch: int = 0
    #: the selector's primary metric; None when the last epoch is kept without validation
    selection_metric: str | None = None


class Trainer:
    """Trains ``model`` with ``mitigations`` and predicts with it; ``selector`` scores validation epochs.

    The loss is the model's (:meth:`Model.task_loss`) unless a mitigation replaces it. It is chosen
    when the trainer is made, so two mitigations that both replace it stop the cell before any work.
    """

    def __init__(
        self,
        model: Model,
        mitigations: Sequence[Mitigation],
        selector: Evaluator,
        settings: TrainSpec,
        device: torch.device,
        batch_seed: int | None = None,
    ):
        self.model = model
        #: the batch order's own generator (torch's global one when ``batch_seed`` is None), so that
        #: mitigations drawing random numbers (a discriminator's initial weights, an augmentation) leave it
        #: unchanged: common random numbers across sweep points
        self._batch_order = None if batch_seed is None else torch.Generator().manual_seed(batch_seed)
        self.stack = MitigationStack(mitigations)
        self.selector = selector
        self.settings = settings
        self.device = device
        self.task = model.task
        self.channels_last = settings.channels_last and self.task.spatial_dims == 2
        self._amp_dtype = _amp_dtype(device) if settings.amp else None
        self.loss_fn = self.stack.task_loss(model.task_loss())
        if isinstance(self.loss_fn, nn.Module):
            self.loss_fn.to(device)

    # -- training ---------------------------------------------------------------------------

    def fit(
        self,
        train: ImageSet,
        val: ImageSet,
        target_train: ImageSet | None,
        on_epoch: Callable[[EpochRecord], None] | None = None,
    ) -> TrainResult:
        """Run the fit, transform and build stages, then the epochs; keep the selected epoch's weights.

        ``on_epoch`` gets each epoch's record as soon as the epoch ends (for progress lines or a bar).
        A loss that is not finite raises :class:`~harmonia.errors.TrainingDiverged` at the end of its epoch.
        """
        stack = self.stack
        stack.require_target_images(target_train)
        stack.fit(train, target_train, self.device)
        train_images = stack.transform_images(train.images, training=True)
        target_images = (
            stack.transform_images(target_train.images, training=True) if stack.needs_target_images else None
        )
        draw_targets = target_images is not None and stack.adds_loss
        # the validation images as the model sees them, transformed once rather than at every epoch
        val_seen = (
            replace(val, images=stack.transform_images(val.images)) if self.settings.selection == "best_val" else val
        )

        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model.to(self.device, memory_format=memory_format)
        extra_modules = stack.build(self.model).to(self.device)
        params = list(self.model.parameters()) + list(extra_modules.parameters())
        optimizer = torch.optim.Adam(params, lr=self.settings.lr, weight_decay=self.settings.weight_decay)
        scaler = torch.amp.GradScaler("cuda", enabled=self._amp_dtype is torch.float16)

        n = len(train)
        batch = min(self.settings.batch_size, n)
        steps_per_epoch = math.ceil(n / batch)
        total_steps = self.settings.epochs * steps_per_epoch
        log.debug(
            "training %s: %d items, %d epochs of %d steps", self.model.name, n, self.settings.epochs, steps_per_epoch
        )
        result = TrainResult()
        best_score, best_state = -math.inf, None
        step = 0
        for epoch in range(self.settings.epochs):
            self.model.train()
            extra_modules.train()
            losses = []
            for index in torch.randperm(n, generator=self._batch_order).split(batch):
                if len(index) < 2 and n > 1:
                    continue  # a batch of one breaks normalisation layers; its items are seen next epoch
                x = train_images[index].to(self.device, non_blocking=True)
                y = train.targets[index].to(self.device, non_blocking=True)
                x, y = stack.augment_batch(x, y, normalize=zscore)
                target_x = self._target_batch(target_images, len(x)) if draw_targets else None
                with self._autocast():
                    output, target_output = self._forward(x, target_x)
                    loss = self.loss_fn(output.logits, y)
                    if stack.adds_loss:
                        progress = step / max(1, total_steps - 1)
                        info = TrainStep(self.model, x, y, output, progress, epoch, step, target_x, target_output)
                        extra = stack.extra_loss(info)
                        if extra is not None:
                            loss = loss + extra
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                losses.append(loss.detach())
                step += 1
            mean_loss = self._epoch_loss(losses, epoch)
            score = None
            if self.settings.selection == "best_val":
                result.selection_metric, score = self._validation_score(val_seen)
                if best_state is None or self._preference(score) > best_score:
                    best_score, best_state = self._preference(score), _cpu_state(self.model)
                    result.selected_epoch = epoch
            record = EpochRecord(epoch, mean_loss, score, stack.epoch_metrics())
            result.history.append(record)
            if on_epoch is not None:
                on_epoch(record)
        if self.settings.selection == "last" or best_state is None:
            result.selected_epoch = self.settings.epochs - 1
        else:
            self.model.load_state_dict(best_state)
        return result

    def _target_batch(self, target_images: torch.Tensor, size: int) -> torch.Tensor:
        """``size`` target-domain images drawn at random (with replacement), z-scored, on the device."""
        pick = torch.randint(len(target_images), (size,))
        return self._layout(zscore(target_images[pick].to(self.device, non_blocking=True)))

    def _forward(self, x: torch.Tensor, target_x: torch.Tensor | None) -> tuple[ModelOutput, ModelOutput | None]:
        """The model's output on the source batch and on the target batch (None without one): two passes,
        or one over both concatenated when a mitigation asks for a joint forward."""
        if target_x is None:
            return self.model(self._layout(x)), None
        if self.stack.joint_forward:
            return self.model(self._layout(torch.cat([x, target_x]))).split(len(x))
        return self.model(self._layout(x)), self.model(target_x)

    def _epoch_loss(self, losses: list[torch.Tensor], epoch: int) -> float:
        """The epoch's mean training loss; TrainingDiverged naming the first step whose loss is not finite.

        Checked once per epoch, not per step, so that training does not wait on the GPU at every step.
        """
        if not losses:
            return math.nan
        values = torch.stack(losses).float()
        finite = torch.isfinite(values)
        if not bool(finite.all()):
            bad = int((~finite).nonzero()[0])
            raise TrainingDiverged(
                f"training diverged: the loss was {values[bad].item()} at step {bad + 1} of {len(losses)} in epoch "
                f"{epoch + 1} of {self.settings.epochs}; try a lower train.lr (now {self.settings.lr:g})"
            )
        return values.mean().item()

    # -- prediction -------------------------------------------------------------------------

    @torch.no_grad()
    def predict(
        self, images: torch.Tensor, with_probabilities: bool = False, transformed: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Class indices (and softmax probabilities if asked) for native-unit ``images``, on the CPU; ``transformed``
        says the mitigations' transforms were already applied to them."""
        self.model.eval()
        if not transformed:
            images = self.stack.transform_images(images)
        predicted, probabilities = [], []
        for chunk in images.split(max(1, self.settings.batch_size)):
            with self._autocast():
                logits = self.model(self._layout(zscore(chunk.to(self.device)))).logits.float()
            predicted.append(logits.argmax(1).cpu())
            if with_probabilities:
                probabilities.append(torch.softmax(logits, 1).cpu())
        return torch.cat(predicted), (torch.cat(probabilities) if with_probabilities else None)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The model's ``features`` for native-unit ``images`` (transformed and z-scored as for prediction), averaged
        over any spatial axes: ``[N, F]`` float32 on the CPU, what a linear probe of the features reads."""
        self.model.eval()
        images = self.stack.transform_images(images)
        pooled = []
        for chunk in images.split(max(1, self.settings.batch_size)):
            with self._autocast():
                features = self.model(self._layout(zscore(chunk.to(self.device)))).features.float()
            pooled.append(features.flatten(2).mean(2).cpu() if features.dim() > 2 else features.cpu())
        return torch.cat(pooled)

    def predictions(self, data: ImageSet, with_probabilities: bool = False, transformed: bool = False) -> Predictions:
        """:class:`Predictions` of the model on ``data`` for evaluators (``transformed``: see :meth:`predict`)."""
        predicted, probabilities = self.predict(data.images, with_probabilities, transformed)
        return Predictions(self.task, data.targets, predicted, data.patients, probabilities)

    def _validation_score(self, val: ImageSet) -> tuple[str, float]:
        """The selector's primary metric on ``val`` (already through the mitigations' transforms): its name and value.

        An evaluator that calibrates (a decision threshold) is calibrated on the same validation predictions
        first, so each epoch is scored at its own threshold; the test sets see the selected epoch's.
        """
        predictions = self.predictions(val, self.selector.needs_probabilities, transformed=True)
        self.selector.calibrate(predictions)
        metric = self.selector.evaluate(predictions)[0]
        return metric.name, metric.value

    def _preference(self, value: float) -> float:
        """How good a validation value is, larger better: the value, or its negation for a lower-is-better
        evaluator; a NaN or infinite value is the worst, whichever way the evaluator points."""
        if not math.isfinite(value):
            return -math.inf
        return value if self.selector.higher_is_better else -value

    # -- helpers ----------------------------------------------------------------------------

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _autocast(self):
        if self._amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self._amp_dtype)


def _amp_dtype(device: torch.device) -> torch.dtype | None:
    """bfloat16 where the GPU supports it, else float16 (with a gradient scaler); none on CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
