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
and noise sd too. Nothing is clamped to [0, 1]: kornia's gamma clamps to [0, 1], so gamma maps each
image to [0, 1] by its own minimum and maximum, applies it and maps back (an image keeps its minimum
and maximum exactly); contrast and brightness use kornia's non-clipping paths (``clip_output=False``).
Contrast scales each image about its own mean; the bias field multiplies each image about its own
minimum (its background: for MRI that is multiplying the native signal, whose background is about
0, whatever z-score followed); blur and sharpening (an unsharp mask, x + a·(x − blur(x))) are linear.

3-D batches ``[B, C, D, H, W]``: one set of parameters per volume, applied alike to every slice
(blur, sharpening and the bias field act in-plane, on each slice with the volume's parameters; the
gamma mapping uses the volume's minimum and maximum), so a volume of identical slices stays so.

Randomness: torch's global random number generator on the batch's device, which the engine seeds per
cell; an operation with probability 0 draws nothing, and with every probability 0 the mitigation is
inactive (left out of its sweep point, which is then the plain model).
"""

from __future__ import annotations

import math
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
        p = self.params
        if self.is_inactive(p) or images.numel() == 0:
            return images, targets
        channels_last = images.ndim == 4 and images.is_contiguous(memory_format=torch.channels_last)
        x = images.contiguous()
        for op in OPERATIONS:
            probability = p.probability(op)
            if probability == 0.0:
                continue  # draws nothing
            chosen = _per_image(torch.rand(len(x), device=x.device) < probability, x)
            changed = getattr(self, f"_{op}")(x)
            x = torch.where(chosen, changed, x)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, targets

    # -- the operations, each on every image of x with its own draw ------------------------------------

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
        monomials = torch.stack([y_axis**i * x_axis**j for i, j in powers])  # [K, H, W]
        coefficients = strength * (2 * torch.rand(len(x), len(powers), device=x.device, dtype=x.dtype) - 1)
        field = torch.einsum("bk,khw->bhw", coefficients, monomials).exp()
        field = field.view(len(x), *([1] * (x.ndim - 3)), h, w)  # one field per image, alike on every slice
        low = _per_image(x.flatten(1).amin(1), x)
        return (x - low) * field + low

    def _gamma(self, x: torch.Tensor) -> torch.Tensor:
        import kornia  # on use: imported at start-up it would slow every harmonia command

        gamma = self._uniform(self.params.gamma_range, x).flatten()
        low, high = _per_image(x.flatten(1).amin(1), x), _per_image(x.flatten(1).amax(1), x)
        span = (high - low).clamp_min(torch.finfo(x.dtype).tiny)
        unit = ((x - low) / span).clamp(0.0, 1.0)  # [0, 1] by the image's own range: kornia's clamp cuts nothing
        return kornia.enhance.adjust_gamma(unit, gamma) * span + low

    def _contrast(self, x: torch.Tensor) -> torch.Tensor:
        import kornia  # on use: imported at start-up it would slow every harmonia command

        factor = self._uniform(self.params.contrast_range, x).flatten()
        mean = _per_image(x.flatten(1).mean(1), x)
        return kornia.enhance.adjust_contrast(x - mean, factor, clip_output=False) + mean

    def _brightness(self, x: torch.Tensor) -> torch.Tensor:
        import kornia  # on use: imported at start-up it would slow every harmonia command

        shift = self._uniform(self.params.brightness_range, x).flatten()
        return kornia.enhance.adjust_brightness(x, shift, clip_output=False)

    def _blur(self, x: torch.Tensor) -> torch.Tensor:
        sigma = self._uniform(self.params.blur_sigma_range, x).flatten()
        return _in_plane(x, sigma, lambda s, sig: _gaussian_blur(s, sig, self.params.blur_sigma_range[1]))

    def _sharpen(self, x: torch.Tensor) -> torch.Tensor:
        amount = self._uniform(self.params.sharpen_range, x)
        blurred = _in_plane(
            x, torch.ones(len(x), device=x.device, dtype=x.dtype), lambda s, sig: _gaussian_blur(s, sig, 1.0)
        )
        return x + amount * (x - blurred)

    def _noise(self, x: torch.Tensor) -> torch.Tensor:
        sd = self._uniform(self.params.noise_sd_range, x)
        return x + sd * torch.randn_like(x)


def _per_image(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``values`` (one per image) shaped ``[B, 1, ...]`` to broadcast against ``x``."""
    return values.view(len(x), *([1] * (x.ndim - 1)))


def _in_plane(x: torch.Tensor, sigma: torch.Tensor, op) -> torch.Tensor:
    """``op(slices, sigma)`` on ``[B, C, H, W]`` images; a 3-D batch has its slices folded into the batch, each
    with its volume's sigma."""
    if x.ndim == 4:
        return op(x, sigma)
    b, c, d, h, w = x.shape
    slices = x.transpose(1, 2).reshape(b * d, c, h, w)
    out = op(slices, sigma.repeat_interleave(d))
    return out.reshape(b, d, c, h, w).transpose(1, 2).contiguous()


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, largest_sigma: float) -> torch.Tensor:
    """kornia's Gaussian blur with one sd per image; the kernel covers ±3 sd of the largest, within the image."""
    import kornia  # on use: imported at start-up it would slow every harmonia command

    h, w = x.shape[-2:]
    radius = min(math.ceil(3 * largest_sigma), h - 1, w - 1)  # reflect padding needs a radius below the size
    if radius < 1:
        return x
    return kornia.filters.gaussian_blur2d(x, 2 * radius + 1, sigma[:, None].expand(-1, 2), border_type="reflect")


@hookimpl
def harmonia_mitigations():
    return [KorniaIntensity]
