"""Two-stage training of the CT standardizer, after Real-ESRGAN as seed 003 uses it, and the trained Standardizer.

Training pairs are slices in HU: the source (the reconstruction to standardise) and the target (the
reference reconstruction of the same slice). Both are clipped to an HU window and scaled to [0, 1],
and every step cuts patches from the same place in both. Stage 1 trains the generator alone on L1
(PSNR-oriented). Stage 2 starts from stage 1's generator and adds a perceptual loss and a GAN loss
against a U-Net discriminator that stage 2 creates afresh (stage 1 has none, so nothing is lost by
stopping between the stages): ``train_stage2(load_standardizer(path), ...)`` resumes from a saved
stage 1 and gives the weights an uninterrupted run gives.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from harmonia.errors import TrainingDiverged
from harmonia.intensity import BROAD_CT_WINDOW, window_to_unit
from harmonia.seeding import derive_seed
from harmonia.standardizer.network import Discriminator, Generator
from harmonia.standardizer.perceptual import DEFAULT_LAYER, PerceptualLoss, check_layer
from harmonia.strict import StrictModel

T = TypeVar("T")
#: ``progress(stage, step, loss)``: called after every step with the loss the generator minimised
Progress = Callable[[int, int, float], None]
#: the training record averages each loss over this many steps at the start and at the end of a stage
LOSS_WINDOW = 10


class GeneratorSpec(StrictModel):
    """Size of the RRDB generator. The defaults are a CPU-sized net; Real-ESRGAN's is 64 features, 23 blocks, growth 32."""

    features: int = Field(16, ge=1)
    blocks: int = Field(2, ge=0)
    growth: int = Field(8, ge=1)

    def build(self) -> Generator:
        return Generator(self.features, self.blocks, self.growth)


class LossWeights(StrictModel):
    """Stage 2's generator loss is ``l1 * L1 + perceptual * perceptual loss + gan * GAN loss`` (seed 003: 10, 1, 1).

    Stage 1 minimises the plain L1 loss; these weights scale the losses, not their gradients separately.
    """

    l1: float = Field(10.0, ge=0)
    perceptual: float = Field(1.0, ge=0)
    gan: float = Field(1.0, ge=0)


class StandardizerSettings(StrictModel):
    """Everything that defines a standardizer and its training; saved in its checkpoint's sidecar.

    ``hu_window`` (low, high) is clipped and scaled to [0, 1]: seed 003 min-max scales CT values, and a fixed
    window keeps that scale the same for every slice. The default [-1000, 1000] HU is broad: it keeps air, lung,
    fat, soft tissue and most bone, so a standardised slice stays usable beyond the abdomen, and it clips the
    padding values (-2048, -3024) some scanners write outside the field of view. An abdominal window
    (-160, 240) gives soft tissue more of the [0, 1] range but clips lung and bone in the output.
    The learning rate of each stage is multiplied by ``lr_decay`` after half of that stage's steps.
    The GAN loss is plain binary cross-entropy on the discriminator's per-pixel logits (Real-ESRGAN's
    "vanilla" loss, not ESRGAN's relativistic one); the discriminator's "real" images are the targets.
    ``vgg_weights`` is a local torchvision VGG19 weights file; without it the perceptual loss uses random
    VGG features and the record says so (``vgg_pretrained`` False).
    """

    generator: GeneratorSpec = Field(default_factory=GeneratorSpec)
    discriminator_features: int = Field(16, ge=1)
    hu_window: tuple[float, float] = BROAD_CT_WINDOW
    #: seed 003 uses 256; at least 16: the discriminator halves a patch 3 times, VGG19 pools it 4 times before conv5
    patch_size: int = Field(256, ge=16)
    batch_size: int = Field(4, ge=1)
    stage1_steps: int = Field(1000, ge=0)
    #: 0 skips stage 2 in :func:`train_standardizer`
    stage2_steps: int = Field(1000, ge=0)
    lr: float = Field(1e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.99)
    lr_decay: float = Field(0.5, gt=0, le=1)
    loss_weights: LossWeights = Field(default_factory=LossWeights)
    #: index into VGG19's ``features`` of the convolution whose output the perceptual loss compares
    perceptual_layer: int = DEFAULT_LAYER
    vgg_weights: Path | None = None
    seed: int = 0

    @field_validator("hu_window")
    @classmethod
    def _window_rises(cls, window: tuple[float, float]) -> tuple[float, float]:
        if not window[0] < window[1]:
            raise ValueError(f"the window's low end must be below its high end, got {list(window)}")
        return window

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= beta < 1 for beta in betas):
            raise ValueError(f"Adam's betas must lie in [0, 1), got {list(betas)}")
        return betas

    @field_validator("perceptual_layer")
    @classmethod
    def _layer_is_a_conv(cls, layer: int) -> int:
        return check_layer(layer)


class StageRecord(StrictModel):
    """What one training stage did: its steps and its mean losses over its first and last ``window`` steps.

    Loss names: ``total`` (what the generator minimised) and ``l1`` in both stages; stage 2 adds
    ``perceptual``, ``gan`` (the generator's) and ``discriminator`` (the discriminator's own loss).
    """

    stage: Literal[1, 2]
    steps: int
    window: int
    first: dict[str, float]
    last: dict[str, float]
    #: stage 2 only: whether the perceptual loss used pretrained VGG19 weights (False: random features)
    vgg_pretrained: bool | None = None


class TrainingRecord(StrictModel):
    """The stages a standardizer went through, in order; saved in its checkpoint's sidecar."""

    stages: tuple[StageRecord, ...] = ()

    @property
    def vgg_pretrained(self) -> bool | None:
        """Whether the last stage 2 used pretrained VGG19 weights; None when no stage 2 ran."""
        flags = [stage.vgg_pretrained for stage in self.stages if stage.stage == 2]
        return flags[-1] if flags else None

    def then(self, stage: StageRecord) -> TrainingRecord:
        return TrainingRecord(stages=(*self.stages, stage))


def unit_to_hu(images: torch.Tensor, window: tuple[float, float]) -> torch.Tensor:
    """[0, 1] (clipped) back to HU in ``window``."""
    low, high = window
    return images.clamp(0, 1) * (high - low) + low


class Standardizer:
    """A trained generator and the HU window it works in: maps slices of a source reconstruction towards the reference."""

    def __init__(self, generator: Generator, settings: StandardizerSettings, record: TrainingRecord | None = None):
        self.generator = generator
        self.settings = settings
        self.record = record or TrainingRecord()

    @property
    def window(self) -> tuple[float, float]:
        return self.settings.hu_window

    def apply_hu(self, images: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
        """Standardised ``[N, 1, H, W]`` HU slices (any H, W), float32 on ``images``' device, ``batch_size`` at a time.

        Inputs are clipped to the window before the generator and outputs clipped to it after, so every
        value out lies in the window by construction: HU outside it (air below -1000, dense bone) is lost.
        """
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"apply_hu takes [N, 1, H, W] HU slices, got shape {tuple(images.shape)}")
        device = next(self.generator.parameters()).device
        was_training = self.generator.training
        self.generator.eval()
        try:
            with torch.no_grad():
                out = [self._apply_unit(chunk.to(device)).to(images.device) for chunk in images.split(batch_size)]
        finally:
            self.generator.train(was_training)
        return torch.cat(out) if out else torch.empty(images.shape, dtype=torch.float32, device=images.device)

    def _apply_unit(self, hu: torch.Tensor) -> torch.Tensor:
        return unit_to_hu(self.generator(window_to_unit(hu, self.window)), self.window)


def train_standardizer(
    sources: torch.Tensor,
    targets: torch.Tensor,
    settings: StandardizerSettings | None = None,
    *,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
) -> tuple[Standardizer, TrainingRecord]:
    """Both stages on paired ``[N, 1, H, W]`` HU slices (stage 2 skipped when ``stage2_steps`` is 0)."""
    settings = settings or StandardizerSettings()
    standardizer, record = train_stage1(sources, targets, settings, device=device, progress=progress)
    if settings.stage2_steps == 0:
        return standardizer, record
    return train_stage2(standardizer, sources, targets, device=device, progress=progress)


def train_stage1(
    sources: torch.Tensor,
    targets: torch.Tensor,
    settings: StandardizerSettings | None = None,
    *,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
) -> tuple[Standardizer, TrainingRecord]:
    """A new generator trained ``stage1_steps`` on L1 alone.

    The same settings and data give the same weights on CPU (CUDA kernels may differ in the last bits).
    """
    settings = settings or StandardizerSettings()
    check_pairs(sources, targets, settings.patch_size)
    device = torch.device(device)
    generator = _seeded(settings.generator.build, settings.seed, "generator").to(device).train()
    optimizer, schedule = _adam(generator, settings, settings.stage1_steps)
    patches = PairedPatches(sources, targets, settings, stage=1)
    log = _StageLog(1, settings, progress)
    for step in range(1, settings.stage1_steps + 1):
        source, target = patches.draw(device)
        loss = F.l1_loss(generator(source), target)
        _descend(optimizer, schedule, loss)
        log.add(step, loss, l1=loss)
    record = TrainingRecord().then(log.record())
    return Standardizer(generator.eval(), settings, record), record


def train_stage2(
    stage1: Standardizer,
    sources: torch.Tensor,
    targets: torch.Tensor,
    *,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
) -> tuple[Standardizer, TrainingRecord]:
    """A copy of ``stage1``'s generator trained ``stage2_steps`` on weighted L1 + perceptual + GAN losses.

    Settings come from ``stage1`` (a loaded checkpoint resumes exactly); ``stage1`` itself is left unchanged.
    """
    settings = stage1.settings
    check_pairs(sources, targets, settings.patch_size)
    device = torch.device(device)
    generator = copy.deepcopy(stage1.generator).to(device).train()
    critic = _seeded(lambda: Discriminator(settings.discriminator_features), settings.seed, "discriminator")
    critic = critic.to(device).train()
    perceptual = _seeded(lambda: PerceptualLoss(settings.perceptual_layer, settings.vgg_weights), settings.seed, "vgg")
    perceptual = perceptual.to(device)
    g_optimizer, g_schedule = _adam(generator, settings, settings.stage2_steps)
    d_optimizer, d_schedule = _adam(critic, settings, settings.stage2_steps)
    patches = PairedPatches(sources, targets, settings, stage=2)
    weights = settings.loss_weights
    log = _StageLog(2, settings, progress)
    for step in range(1, settings.stage2_steps + 1):
        source, target = patches.draw(device)
        output = generator(source)
        critic.requires_grad_(False)  # the generator's step leaves the discriminator as it is
        l1, perceptual_loss, gan = F.l1_loss(output, target), perceptual(output, target), _bce(critic(output), True)
        total = weights.l1 * l1 + weights.perceptual * perceptual_loss + weights.gan * gan
        _descend(g_optimizer, g_schedule, total)
        critic.requires_grad_(True)
        critic_loss = _bce(critic(target), True) + _bce(critic(output.detach()), False)
        _descend(d_optimizer, d_schedule, critic_loss)
        log.add(step, total, l1=l1, perceptual=perceptual_loss, gan=gan, discriminator=critic_loss)
    record = stage1.record.then(log.record(vgg_pretrained=perceptual.pretrained))
    return Standardizer(generator.eval(), settings, record), record


def check_pairs(sources: torch.Tensor, targets: torch.Tensor, patch_size: int) -> None:
    """A ValueError saying what is wrong unless ``sources`` and ``targets`` are same-shape ``[N, 1, H, W]`` slices
    with N >= 1 and H, W >= ``patch_size``."""
    if sources.ndim != 4 or sources.shape[1] != 1 or len(sources) == 0:
        raise ValueError(f"sources must be [N, 1, H, W] HU slices with N >= 1, got shape {tuple(sources.shape)}")
    if targets.shape != sources.shape:
        raise ValueError(f"targets {tuple(targets.shape)} must have the sources' shape {tuple(sources.shape)}")
    if min(sources.shape[-2:]) < patch_size:
        height, width = sources.shape[-2:]
        raise ValueError(f"slices of {height} x {width} are smaller than patch_size {patch_size}")


class PairedPatches:
    """Random patches from the same place in a source slice and its target, scaled from the HU window to [0, 1].

    Positions come from the patch sampler's own ``torch.Generator``, seeded from the settings' seed and the stage.
    """

    def __init__(self, sources: torch.Tensor, targets: torch.Tensor, settings: StandardizerSettings, stage: int):
        self.sources, self.targets = sources, targets
        self.size, self.batch, self.window = settings.patch_size, settings.batch_size, settings.hu_window
        self.rng = torch.Generator().manual_seed(derive_seed(settings.seed, "patches", stage))

    def draw(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch: source and target patches ``[batch, 1, size, size]`` in [0, 1] on ``device``."""
        n, _, height, width = self.sources.shape
        items = torch.randint(n, (self.batch,), generator=self.rng).tolist()
        rows = torch.randint(height - self.size + 1, (self.batch,), generator=self.rng).tolist()
        cols = torch.randint(width - self.size + 1, (self.batch,), generator=self.rng).tolist()
        corners = list(zip(items, rows, cols))
        return self._cut(self.sources, corners, device), self._cut(self.targets, corners, device)

    def _cut(self, images: torch.Tensor, corners: list[tuple[int, int, int]], device: torch.device) -> torch.Tensor:
        size = self.size
        patches = torch.stack([images[i, :, r : r + size, c : c + size] for i, r, c in corners])
        return window_to_unit(patches.to(device), self.window)


class _StageLog:
    """One stage's per-step losses: checked finite, reported to the progress callback, summarised for the record."""

    def __init__(self, stage: Literal[1, 2], settings: StandardizerSettings, progress: Progress | None):
        self.stage, self.lr, self.progress = stage, settings.lr, progress
        self.steps: list[dict[str, float]] = []

    def add(self, step: int, total: torch.Tensor, **parts: torch.Tensor) -> None:
        losses = {"total": total.item()} | {name: loss.item() for name, loss in parts.items()}
        if not all(math.isfinite(value) for value in losses.values()):
            raise TrainingDiverged(
                f"standardizer stage {self.stage}, step {step}: a loss is not finite ({losses}); try a lower lr "
                f"(settings.lr = {self.lr})"
            )
        self.steps.append(losses)
        if self.progress:
            self.progress(self.stage, step, losses["total"])

    def record(self, vgg_pretrained: bool | None = None) -> StageRecord:
        window = min(LOSS_WINDOW, len(self.steps))
        return StageRecord(
            stage=self.stage,
            steps=len(self.steps),
            window=window,
            first=_mean(self.steps[:window]),
            last=_mean(self.steps[len(self.steps) - window :]),
            vgg_pretrained=vgg_pretrained,
        )


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    return {name: sum(row[name] for row in rows) / len(rows) for name in rows[0]} if rows else {}


def _seeded(build: Callable[[], T], *seed_parts: object) -> T:
    """``build()`` with torch's CPU RNG seeded from ``seed_parts``, restored afterwards: a reproducible random init."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(*seed_parts))
        return build()


def _adam(
    model: torch.nn.Module, settings: StandardizerSettings, steps: int
) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.MultiStepLR]:
    """Adam with the settings' lr and betas, and a schedule multiplying the lr by ``lr_decay`` after half the steps."""
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr, betas=settings.betas)
    return optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, [max(1, steps // 2)], settings.lr_decay)


def _descend(
    optimizer: torch.optim.Optimizer, schedule: torch.optim.lr_scheduler.LRScheduler, loss: torch.Tensor
) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    schedule.step()


def _bce(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Binary cross-entropy of per-pixel logits against all-real (True) or all-fake (False) labels."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, float(real)))
