"""kornia_intensity: random intensity augmentation of training batches on the training device (kornia).

Seven operations, each applied to an image with its own probability and with its own strength drawn
from a range, per image (independently), in this order: a smooth multiplicative bias field, gamma,
contrast, brightness, Gaussian blur, sharpening and additive Gaussian noise (the signal first, then the
point-spread function, then the noise, as a scanner forms an image). Targets are never changed.

Why: the M&Ms challenge (Campello et al., IEEE TMI 2021, cited by the seed of this plugin, a project
plan for cardiac MRI segmentation across vendors) found that the entries that generalised best to
unseen vendors relied on heavy intensity augmentation, brightness, contrast and gamma above all.
The seed itself names the kinds of augmentation (affine transforms, added noise, contrast
adjustments) but gives no numbers; **every probability and range below is harmonia's choice**,
loosely nnU-Net's default intensity ranges with the probabilities of brightness, contrast and gamma
raised and their ranges widened. That is the ``mnms`` preset, the default. ``preset: none`` starts
from every probability 0, to switch on only the operations a recipe names (``{preset: none,
blur_probability: 1}``); fields a recipe gives always win over the preset's.

Units and clamping (``batch_space`` is ``normalized``: the batch arrives z-scored per image). The
engine z-scores after the native-space stage, which would undo a brightness shift or a contrast
change made before it, so this plugin acts after the z-score, where brightness is in z-scored units
and noise sd too. Nothing is clamped to [0, 1] (kornia's gamma would clamp there; gamma, contrast and
brightness are in-place torch arithmetic): gamma maps each image to [0, 1] by its own minimum and
maximum, applies it and maps back (an image keeps its minimum, and its maximum to rounding).
Contrast scales each image about its own mean; the bias field multiplies each image about its own
minimum (its background: for MRI that is multiplying the native signal, whose background is about
0, whatever z-score followed); blur and sharpening (an unsharp mask, x + a·(x − blur(x))) are linear,
separable Gaussian blurs with kornia's kernels.

3-D batches ``[B, C, D, H, W]``: one set of parameters per volume, applied alike to every slice
(blur, sharpening and the bias field act in-plane, on each slice with the volume's parameters; the
gamma mapping uses the volume's minimum and maximum), so a volume of identical slices stays so.

Randomness: torch's global random number generator on the batch's device, which the engine seeds per
cell; an operation with probability 0 draws nothing, and with every probability 0 the mitigation is
inactive (left out of its sweep point, which is then the plain model).

Cost: each operation is computed only for the images its draw picked (gathered, changed in place and
written back; the whole batch in place when all were picked), so at the ``mnms`` probabilities most of
the work of computing everything is never done; the elementwise steps change the batch in place, and
blur and sharpening take the CPU batch in cache-sized chunks of planes. ``benchmarks/kornia_throughput.py``
compares it with per-image MONAI pipelines of the same operations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from harmonia import hookimpl
from harmonia.api import Mitigation, Params

Range = tuple[float, float]

#: the preset values; a recipe's own fields always win over them
PRESETS: dict[str, dict[str, float]] = {
    "mnms": {
        "bias_probability": 0.3,
        "gamma_probability": 0.5,
        "contrast_probability": 0.5,
        "brightness_probability": 0.5,
        "blur_probability": 0.2,
        "sharpen_probability": 0.1,
        "noise_probability": 0.15,
    },
    "none": {
        "bias_probability": 0.0,
        "gamma_probability": 0.0,
        "contrast_probability": 0.0,
        "brightness_probability": 0.0,
        "blur_probability": 0.0,
        "sharpen_probability": 0.0,
        "noise_probability": 0.0,
    },
}
OPERATIONS = ("bias", "gamma", "contrast", "brightness", "blur", "sharpen", "noise")
#: values per chunk of planes that blur and sharpening take at a time on the CPU (2 MB of float32; see _plane_chunks)
CPU_CHUNK_VALUES = 2**19


def _probability(what: str) -> Any:
    return Field(None, ge=0.0, le=1.0, description=f"chance that each training image gets {what} (default: preset)")


class KorniaIntensityParams(Params):
    preset: Literal["mnms", "none"] = Field(
        "mnms",
        description="where the probabilities not given come from: mnms (brightness/contrast/gamma heavy, "
        "harmonia's reading of the M&Ms winners) or none (all 0)",
    )
    bias_probability: float = _probability("a smooth multiplicative bias field")
    bias_strength: float = Field(
        0.2,
        ge=0.0,
        le=2.0,
        description="largest |coefficient| of the bias field's log, a polynomial of the in-plane coordinates "
        "(each in [-1, 1]) with coefficients uniform in ±this; at 0.2 and order 3, 90 % of the field lies in "
        "×0.79 to ×1.28 and an image's brightest to darkest field ratio is about 2 (median)",
    )
    bias_order: int = Field(3, ge=1, le=5, description="order of the bias field's polynomial (in-plane)")
    gamma_probability: float = _probability("gamma")
    gamma_range: Range = Field(
        (0.7, 1.5), description="gamma exponent, applied to the image mapped to [0, 1] by its min and max"
    )
    contrast_probability: float = _probability("a contrast change")
    contrast_range: Range = Field((0.65, 1.5), description="factor scaling each image about its own mean")
    brightness_probability: float = _probability("a brightness shift")
    brightness_range: Range = Field((-0.5, 0.5), description="shift added to the image, in z-scored units")
    blur_probability: float = _probability("a Gaussian blur")
    blur_sigma_range: Range = Field((0.5, 1.0), description="in-plane blur sd, in pixels")
    sharpen_probability: float = _probability("sharpening (unsharp mask x + a·(x − blur(x)), blur sd 1 px)")
    sharpen_range: Range = Field((0.2, 1.0), description="sharpening amount a")
    noise_probability: float = _probability("additive Gaussian noise")
    noise_sd_range: Range = Field((0.02, 0.2), description="noise sd, in z-scored units")

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, data: Any) -> Any:
        if isinstance(data, dict):
            preset = PRESETS.get(data.get("preset", "mnms"), {})
            data = {**preset, **{k: v for k, v in data.items() if v is not None}}
        return data

    @model_validator(mode="after")
    def _ranges_are_ordered_and_positive(self) -> KorniaIntensityParams:
        bounds = {
            "gamma_range": (0.05, 10.0),
            "contrast_range": (0.0, 10.0),
            "brightness_range": (-10.0, 10.0),
            "blur_sigma_range": (0.05, 10.0),
            "sharpen_range": (0.0, 10.0),
            "noise_sd_range": (0.0, 10.0),
        }
        for name, (low, high) in bounds.items():
            lo, hi = getattr(self, name)
            if not low <= lo <= hi <= high:
                raise ValueError(f"{name} must be [low, high] with {low} <= low <= high <= {high}, got [{lo}, {hi}]")
        return self

    def probability(self, operation: str) -> float:
        return getattr(self, f"{operation}_probability")


class KorniaIntensity(Mitigation):
    """Random bias field, gamma, contrast, brightness, blur, sharpening and noise on training batches (kornia).

    Acts at the ``augment_batch`` stage on z-scored batches, per image, never clamping to [0, 1]; never on
    validation or test images. See the module docstring for units, the ``mnms`` preset and 3-D volumes.
    """

    name = "kornia_intensity"
    Params = KorniaIntensityParams
    batch_space = "normalized"

    @classmethod
    def is_inactive(cls, params: KorniaIntensityParams) -> bool:
        """Every probability 0: the sweep point is the plain model."""
        return all(params.probability(op) == 0.0 for op in OPERATIONS)

    def augment_batch(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The augmented batch (a new tensor; dtype, device, shape and channels_last kept) and ``targets`` as given."""
        if self.is_inactive(self.params) or images.numel() == 0:
            return images, targets
        channels_last = images.ndim == 4 and images.is_contiguous(memory_format=torch.channels_last)
        x = images.clone(memory_format=torch.contiguous_format)  # the operations change their input in place
        for op in OPERATIONS:
            probability = self.params.probability(op)
            if probability == 0.0:
                continue  # draws nothing
            chosen = torch.rand(len(x), device=x.device) < probability
            x = _on_chosen(chosen, x, getattr(self, f"_{op}"))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, targets

    # -- the operations, each on every image of the x it is given, changed in place ----------------------

    def _uniform(self, bounds: Range, x: torch.Tensor) -> torch.Tensor:
        """One value per image in ``bounds``, shaped to broadcast against ``x``."""
        low, high = bounds
        return _per_image(low + (high - low) * torch.rand(len(x), device=x.device, dtype=x.dtype), x)

    def _bias(self, x: torch.Tensor) -> torch.Tensor:
        strength, order = self.params.bias_strength, self.params.bias_order
        h, w = x.shape[-2:]
        y_axis = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=x.dtype)[:, None]
        x_axis = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=x.dtype)[None, :]
        powers = [(i, j) for i in range(order + 1) for j in range(order + 1 - i) if i + j > 0]
        monomials = torch.stack([(y_axis**i * x_axis**j).flatten() for i, j in powers])  # [K, H·W]
        coefficients = strength * (2 * torch.rand(len(x), len(powers), device=x.device, dtype=x.dtype) - 1)
        field = (coefficients @ monomials).exp_()
        field = field.view(len(x), *([1] * (x.ndim - 3)), h, w)  # one field per image, alike on every slice
        low = _per_image(x.flatten(1).amin(1), x)
        return x.sub_(low).mul_(field).add_(low)

    def _gamma(self, x: torch.Tensor) -> torch.Tensor:
        gamma = self._uniform(self.params.gamma_range, x)
        flat = x.flatten(1)
        low, high = _per_image(flat.amin(1), x), _per_image(flat.amax(1), x)  # two passes beat aminmax on CPU
        span = (high - low).clamp_min(torch.finfo(x.dtype).tiny)
        # (x − low) / span lies in [0, 1] exactly (rounding is monotone), so no clamp is needed; u ** gamma as
        # exp(gamma · log u), twice as fast on CPU as pow with a per-image exponent (log 0 = −inf gives 0)
        return x.sub_(low).div_(span).log_().mul_(gamma).exp_().mul_(span).add_(low)

    def _contrast(self, x: torch.Tensor) -> torch.Tensor:
        factor = self._uniform(self.params.contrast_range, x)
        mean = _per_image(x.flatten(1).mean(1), x)
        return x.mul_(factor).add_(mean * (1 - factor))  # (x − mean)·f + mean in two passes

    def _brightness(self, x: torch.Tensor) -> torch.Tensor:
        return x.add_(self._uniform(self.params.brightness_range, x))

    def _blur(self, x: torch.Tensor) -> torch.Tensor:
        sigma = self._uniform(self.params.blur_sigma_range, x).flatten()
        for planes, kernel in _plane_chunks(x, _gaussian_kernels(sigma, self.params.blur_sigma_range[1], x)):
            planes.copy_(_blur_planes(planes, kernel))
        return x

    def _sharpen(self, x: torch.Tensor) -> torch.Tensor:
        weight = 1 + self._uniform(self.params.sharpen_range, x).flatten()  # 1 + a
        kernels = _gaussian_kernels(x.new_ones(len(x)), 1.0, x)
        for planes, kernel, w in _plane_chunks(x, kernels, weight):
            # blurred + (1 + a)·(x − blurred) = x + a·(x − blurred), in one pass
            planes.copy_(_blur_planes(planes, kernel).lerp_(planes, w.view(-1, 1, 1, 1)))
        return x

    def _noise(self, x: torch.Tensor) -> torch.Tensor:
        sd = self._uniform(self.params.noise_sd_range, x)
        return x.addcmul_(torch.randn_like(x), sd)


def _per_image(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``values`` (one per image) shaped ``[B, 1, ...]`` to broadcast against ``x``."""
    return values.view(len(x), *([1] * (x.ndim - 1)))


def _on_chosen(
    chosen: torch.Tensor, x: torch.Tensor, operation: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """``x`` with ``operation`` applied to the images ``chosen`` marks, and computed for those only: the whole batch
    when all are chosen, else the chosen images gathered, changed and written back into ``x`` (so ``operation``
    may change its argument in place)."""
    index = chosen.nonzero().squeeze(1)
    if len(index) == len(x):
        return operation(x)
    if len(index):
        x.index_copy_(0, index, operation(x.index_select(0, index)))
    return x


def _plane_chunks(x: torch.Tensor, *per_image: torch.Tensor) -> Iterator[tuple[torch.Tensor, ...]]:
    """The 2-D planes of ``x`` as ``[P, 1, H, W]`` views (writing them writes ``x``; a volume's slices and channels
    are its planes), each of ``per_image`` (a value or row per image) repeated for every plane of its image, chunk by
    chunk. On the CPU a chunk holds about ``CPU_CHUNK_VALUES`` values, so that it and its temporaries stay in cache
    and reuse memory rather than map it afresh (a blur of a 50 x 256² batch ran 3x faster so); a GPU takes them at
    once."""
    h, w = x.shape[-2:]
    planes = x.view(-1, 1, h, w)
    per_plane = [values.repeat_interleave(len(planes) // len(x), 0) for values in per_image]
    chunk = len(planes) if x.device.type != "cpu" else max(1, CPU_CHUNK_VALUES // (h * w))
    return zip(planes.split(chunk), *(values.split(chunk) for values in per_plane))


def _gaussian_kernels(sigma: torch.Tensor, largest_sigma: float, x: torch.Tensor) -> torch.Tensor:
    """kornia's 1-D Gaussian kernel for each sd of ``sigma`` (one per image), ``[B, K]``: ±3 sd of the largest, within
    the planes of ``x`` (reflect padding needs a radius below their size; a 1-pixel plane gets the identity)."""
    import kornia  # on use: imported at start-up it would slow every harmonia command

    radius = min(math.ceil(3 * largest_sigma), x.shape[-2] - 1, x.shape[-1] - 1)
    return kornia.filters.get_gaussian_kernel1d(2 * radius + 1, sigma.view(-1, 1))


def _blur_planes(planes: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``planes`` ``[P, 1, H, W]`` blurred, each with its row of ``kernel`` ``[P, K]`` along both axes (separable, reflect
    border), as two depthwise convolutions. Not ``kornia.filters.gaussian_blur2d`` (separable too): on the CPU it
    accumulates weighted slices for planes of 256² and up, one pass per tap, and took about 1.6x as long."""
    p, radius = len(planes), kernel.shape[1] // 2
    padded = torch.nn.functional.pad(planes, (radius,) * 4, mode="reflect")
    padded = padded.view(1, p, *padded.shape[-2:])  # one channel per plane, for the depthwise convolution
    along_width = torch.nn.functional.conv2d(padded, kernel.view(p, 1, 1, -1), groups=p)
    return torch.nn.functional.conv2d(along_width, kernel.view(p, 1, -1, 1), groups=p).view(planes.shape)


@hookimpl
def harmonia_mitigations():
    return [KorniaIntensity]
