"""The training engine: one model trained on one domain with the mitigation stages, Adam, epoch selection.

Batches come from tensors already in memory; per step the engine does only what the model and
the active mitigations need. Images are kept in native units and z-scored per image on the fly,
after native-space augmentation and before normalized-space augmentation.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from monai.losses import DiceCELoss
from torch import nn

from harmonia.api import Evaluator, ImageSet, Mitigation, Model, Predictions, Task, TrainStep
from harmonia.recipe import TrainSpec

EPS = 1e-6


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


def task_loss(task: Task) -> nn.Module:
    """Dice + cross-entropy for segmentation (MONAI), cross-entropy for classification."""
    if task.kind == "segmentation":
        return _SegmentationLoss()
    return nn.CrossEntropyLoss()


class _SegmentationLoss(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.loss(logits.float(), targets.unsqueeze(1))


@dataclass
class EpochRecord:
    """What one epoch did: mean training loss and the validation score used for selection."""

    epoch: int
    train_loss: float
    val_score: float | None


@dataclass
class TrainResult:
    """The training history and which epoch's weights were kept."""

    history: list[EpochRecord] = field(default_factory=list)
    selected_epoch: int = 0


class Trainer:
    """Trains ``model`` with ``mitigations`` and predicts with it; ``selector`` scores validation epochs."""

    def __init__(
        self,
        model: Model,
        mitigations: list[Mitigation],
        selector: Evaluator,
        settings: TrainSpec,
        device: torch.device,
    ):
        self.model = model
        self.mitigations = mitigations
        self.selector = selector
        self.settings = settings
        self.device = device
        self.task = model.task
        self.channels_last = settings.channels_last and self.task.spatial_dims == 2
        self._amp_dtype = _amp_dtype(device) if settings.amp else None
        self._stage = {
            stage: [m for m in mitigations if stage in m.stages()]
            for stage in ("fit", "transform_images", "build", "augment_batch", "extra_loss")
        }
        self._needs_target = any(m.uses_target_images for m in mitigations)

    # -- training ---------------------------------------------------------------------------

    def fit(self, train: ImageSet, val: ImageSet, target_train: ImageSet | None) -> TrainResult:
        """Run the fit, transform and build stages, then the epochs; keep the selected epoch's weights."""
        if self._needs_target and (target_train is None or len(target_train) == 0):
            names = ", ".join(m.name for m in self.mitigations if m.uses_target_images)
            raise RuntimeError(f"{names} needs target-domain training images, but the cohort has only one domain")
        for m in self._stage["fit"]:
            m.fit(train, target_train, self.device)
        train_images = self._transform(train.images)
        target_images = self._transform(target_train.images) if self._needs_target else None

        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model.to(self.device, memory_format=memory_format)
        extra = [m.build(self.model) for m in self._stage["build"]]
        extra_modules = nn.ModuleList([e for e in extra if e is not None]).to(self.device)
        params = list(self.model.parameters()) + list(extra_modules.parameters())
        optimizer = torch.optim.Adam(params, lr=self.settings.lr, weight_decay=self.settings.weight_decay)
        scaler = torch.amp.GradScaler("cuda", enabled=self._amp_dtype is torch.float16)
        loss_fn = task_loss(self.task)

        n = len(train)
        batch = min(self.settings.batch_size, n)
        steps_per_epoch = math.ceil(n / batch)
        total_steps = self.settings.epochs * steps_per_epoch
        result = TrainResult()
        best_score, best_state = -math.inf, None
        step = 0
        for epoch in range(self.settings.epochs):
            self.model.train()
            extra_modules.train()
            losses = []
            for index in torch.randperm(n).split(batch):
                if len(index) < 2 and n > 1:
                    continue  # a batch of one breaks normalisation layers; its items are seen next epoch
                x = train_images[index].to(self.device, non_blocking=True)
                y = train.targets[index].to(self.device, non_blocking=True)
                x, y = self._augment(x, y)
                with self._autocast():
                    output = self.model(self._layout(x))
                    loss = loss_fn(output.logits, y)
                    if self._stage["extra_loss"]:
                        loss = loss + self._extra_loss(x, y, output, target_images, step / max(1, total_steps - 1), epoch, step)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                losses.append(loss.detach())
                step += 1
            mean_loss = torch.stack(losses).mean().item() if losses else math.nan
            score = None
            if self.settings.selection == "best_val":
                score = self._validation_score(val)
                if best_state is None or score > best_score:
                    best_score, best_state = score, _cpu_state(self.model)
                    result.selected_epoch = epoch
            result.history.append(EpochRecord(epoch, mean_loss, score))
        if self.settings.selection == "last" or best_state is None:
            result.selected_epoch = self.settings.epochs - 1
        else:
            self.model.load_state_dict(best_state)
        return result

    def _augment(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        augmenters = self._stage["augment_batch"]
        for m in augmenters:
            if m.batch_space == "native":
                x, y = m.augment_batch(x, y)
        x = zscore(x)
        for m in augmenters:
            if m.batch_space == "normalized":
                x, y = m.augment_batch(x, y)
        return x, y

    def _extra_loss(self, x, y, output, target_images, progress, epoch, step) -> torch.Tensor:
        target_x = target_output = None
        if target_images is not None:
            pick = torch.randint(len(target_images), (len(x),))
            target_x = self._layout(zscore(target_images[pick].to(self.device, non_blocking=True)))
            target_output = self.model(target_x)
        info = TrainStep(self.model, x, y, output, progress, epoch, step, target_x, target_output)
        total = torch.zeros((), device=self.device)
        for m in self._stage["extra_loss"]:
            term = m.extra_loss(info)
            if term is not None:
                total = total + term
        return total

    # -- prediction -------------------------------------------------------------------------

    @torch.no_grad()
    def predict(self, images: torch.Tensor, with_probabilities: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Class indices (and softmax probabilities if asked) for native-unit ``images``, on the CPU."""
        self.model.eval()
        images = self._transform(images)
        predicted, probabilities = [], []
        for chunk in images.split(max(1, self.settings.batch_size)):
            with self._autocast():
                logits = self.model(self._layout(zscore(chunk.to(self.device)))).logits.float()
            predicted.append(logits.argmax(1).cpu())
            if with_probabilities:
                probabilities.append(torch.softmax(logits, 1).cpu())
        return torch.cat(predicted), (torch.cat(probabilities) if with_probabilities else None)

    def predictions(self, data: ImageSet, with_probabilities: bool = False) -> Predictions:
        """:class:`Predictions` of the model on ``data`` for evaluators."""
        predicted, probabilities = self.predict(data.images, with_probabilities)
        return Predictions(self.task, data.targets, predicted, data.patients, probabilities)

    def _validation_score(self, val: ImageSet) -> float:
        metric = self.selector.evaluate(self.predictions(val, self.selector.needs_probabilities))[0]
        value = metric.value if math.isfinite(metric.value) else -math.inf
        return value if self.selector.higher_is_better else -value

    # -- helpers ----------------------------------------------------------------------------

    def _transform(self, images: torch.Tensor) -> torch.Tensor:
        for m in self._stage["transform_images"]:
            images = m.transform_images(images)
        return images

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
