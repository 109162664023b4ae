"""kornia_spatial: random flips, affine transforms and elastic deformation of training batches (kornia).

Per image, in this order: flips (each axis with its own probability; exact, ``torch.flip``), a random
affine transform (rotation, isotropic scaling, translation, shear; one resampling) and, optionally, an
elastic deformation (kornia's ``elastic_transform2d``: uniform noise smoothed by a Gaussian). For
segmentation the label map goes through the very same transform with nearest-neighbour sampling (as
float, cast back to int64), so image and labels stay aligned and the labels stay in their label set;
classification targets are never changed.

Padding: label maps are padded with background (0). Images are padded, by default, with each image's
own minimum (``image_padding: minimum``), its background: air for CT and MRI alike, whether the batch
is in HU or z-scored (zero would be the image's mean after the z-score, and HU 0 is water); ``border``
repeats the edge pixels, ``reflection`` mirrors the image. ``batch_space`` is ``normalized`` (the
transforms commute with the z-score; only the padding depends on units, and ``minimum`` does not).

3-D batches ``[B, C, D, H, W]``: ``kornia.geometry.transform.warp_affine3d``. Rotation is in-plane (about
the depth axis) unless ``out_of_plane_degrees`` > 0, and scaling and translation are in-plane unless
``through_plane``:
cardiac MRI volumes have few thick slices, which through-plane rotation or scaling would mostly
invent. The elastic deformation is in-plane, the same displacement on every slice of a volume.

The defaults (rotation ±15°, scale 0.85-1.15, translation ±10 %, shear ±5°, affine with probability
0.5, flips of H and W with probability 0.5, no elastic deformation) are harmonia's choice, near
nnU-Net's; the M&Ms paper credits intensity, not spatial, augmentation (see ``kornia_intensity``).
Randomness: torch's global random number generator on the batch's device, which the engine seeds
per cell; an operation with probability 0 draws nothing, and with every probability 0 the
mitigation is inactive.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, model_validator

from harmonia import hookimpl
from harmonia.api import Mitigation, Params


class KorniaSpatialParams(Params):
    flip_width_probability: float = Field(0.5, ge=0.0, le=1.0, description="chance of a left-right flip (W axis)")
    flip_height_probability: float = Field(0.5, ge=0.0, le=1.0, description="chance of an up-down flip (H axis)")
    flip_depth_probability: float = Field(0.0, ge=0.0, le=1.0, description="chance of a flip of the slices (3-D)")
    affine_probability: float = Field(0.5, ge=0.0, le=1.0, description="chance that an image gets an affine transform")
    rotation_degrees: float = Field(15.0, ge=0.0, le=180.0, description="in-plane rotation, uniform in ±this")
    out_of_plane_degrees: float = Field(0.0, ge=0.0, le=180.0, description="3-D: rotation about H and W, ±this")
    scale_range: tuple[float, float] = Field((0.85, 1.15), description="isotropic zoom factor (>1 enlarges)")
    through_plane: bool = Field(
        False, description="3-D: scale and translate along the depth axis too (otherwise in-plane only)"
    )
    translate_fraction: float = Field(0.1, ge=0.0, le=0.5, description="shift per axis, ±this fraction of its size")
    shear_degrees: float = Field(5.0, ge=0.0, le=45.0, description="shear angle per in-plane axis, uniform in ±this")
    elastic_probability: float = Field(0.0, ge=0.0, le=1.0, description="chance of an elastic deformation")
    elastic_alpha: float = Field(
        1.0, ge=0.0, le=10.0, description="strength of the elastic displacement (kornia's alpha, grid units)"
    )
    elastic_sigma: float = Field(8.0, gt=0.0, le=64.0, description="smoothness of the elastic displacement, pixels")
    image_interpolation: Literal["bilinear", "nearest"] = Field("bilinear", description="how images are resampled")
    image_padding: Literal["minimum", "border", "reflection"] = Field(
        "minimum", description="what fills image areas moved in from outside: the image's minimum, edge, or mirror"
    )

    @model_validator(mode="after")
    def _scale_range_is_ordered(self) -> KorniaSpatialParams:
        low, high = self.scale_range
        if not 0.1 <= low <= high <= 10.0:
            raise ValueError(f"scale_range must be [low, high] with 0.1 <= low <= high <= 10, got [{low}, {high}]")
        return self


class KorniaSpatial(Mitigation):
    """Random flips, affine transforms and elastic deformation of training images and their label maps (kornia).

    Acts at the ``augment_batch`` stage, per image; label maps follow with nearest-neighbour sampling and
    background padding; never on validation or test images. See the module docstring for padding and 3-D.
    """

    name = "kornia_spatial"
    Params = KorniaSpatialParams
    batch_space = "normalized"

    @classmethod
    def is_inactive(cls, params: KorniaSpatialParams) -> bool:
        """Every probability 0: the sweep point is the plain model."""
        return all(
            p == 0.0
            for p in (
                params.flip_width_probability,
                params.flip_height_probability,
                params.flip_depth_probability,
                params.affine_probability,
                params.elastic_probability,
            )
        )

    def augment_batch(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The transformed batch and label maps (new tensors; dtype, device, shape and channels_last kept)."""
        p = self.params
        if self.is_inactive(p) or images.numel() == 0:
            return images, targets
        has_maps = self.task.kind == "segmentation" and targets is not None and targets.ndim == images.ndim - 1
        channels_last = images.ndim == 4 and images.is_contiguous(memory_format=torch.channels_last)
        x = images.contiguous()
        y = targets[:, None].to(x.dtype) if has_maps else None  # label maps as float [B, 1, ...]

        flips = [(p.flip_width_probability, -1), (p.flip_height_probability, -2)]
        if x.ndim == 5:
            flips.append((p.flip_depth_probability, -3))
        for probability, axis in flips:
            if probability > 0.0:
                chosen = self._chosen(probability, x)
                x = torch.where(_per_image(chosen, x), x.flip(axis), x)
                y = None if y is None else torch.where(_per_image(chosen, y), y.flip(axis), y)
        if p.affine_probability > 0.0:
            chosen = self._chosen(p.affine_probability, x)
            warp = self._affine_warp(x)
            x = torch.where(_per_image(chosen, x), warp(x, p.image_interpolation, p.image_padding), x)
            y = None if y is None else torch.where(_per_image(chosen, y), warp(y, "nearest", "zeros"), y)
        if p.elastic_probability > 0.0:
            chosen = self._chosen(p.elastic_probability, x)
            warp = self._elastic_warp(x)
            x = torch.where(_per_image(chosen, x), warp(x, p.image_interpolation, p.image_padding), x)
            y = None if y is None else torch.where(_per_image(chosen, y), warp(y, "nearest", "zeros"), y)

        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if y is not None:
            targets = y[:, 0].round().to(targets.dtype)
        return x, targets

    # -- drawing and warping ----------------------------------------------------------------------------

    @staticmethod
    def _chosen(probability: float, x: torch.Tensor) -> torch.Tensor:
        return torch.rand(len(x), device=x.device) < probability

    @staticmethod
    def _symmetric(bound: float, x: torch.Tensor, *shape: int) -> torch.Tensor:
        return bound * (2 * torch.rand(len(x), *shape, device=x.device, dtype=x.dtype) - 1)

    def _affine_warp(self, x: torch.Tensor):
        """A function warping a batch shaped like ``x`` with one freshly drawn affine matrix per image."""
        import kornia  # on use: imported at start-up it would slow every harmonia command

        p = self.params
        b, spatial = len(x), x.shape[2:]
        low, high = p.scale_range
        scale = low + (high - low) * torch.rand(b, device=x.device, dtype=x.dtype)
        # translation per axis in pixels, in kornia's (x, y[, z]) order
        sizes = torch.tensor(spatial[::-1], device=x.device, dtype=x.dtype)
        shift = self._symmetric(p.translate_fraction, x, len(spatial)) * sizes
        center = ((sizes - 1) / 2).expand(b, -1)
        rotation = self._symmetric(p.rotation_degrees, x)
        shear = self._symmetric(math.radians(p.shear_degrees), x, 2)
        if x.ndim == 4:
            matrix = kornia.geometry.transform.get_affine_matrix2d(
                shift, center, scale[:, None].expand(-1, 2), rotation, shear[:, 0], shear[:, 1]
            )[:, :2]

            def warp(t: torch.Tensor, mode: str, padding: str) -> torch.Tensor:
                return _padded(
                    t,
                    padding,
                    lambda s, pad: kornia.geometry.transform.warp_affine(
                        s, matrix, tuple(spatial), mode=mode, padding_mode=pad, align_corners=True
                    ),
                )

            return warp
        if p.out_of_plane_degrees > 0:
            tilt = self._symmetric(p.out_of_plane_degrees, x, 2)
        else:
            tilt = torch.zeros(b, 2, device=x.device, dtype=x.dtype)
        angles = torch.cat([tilt, rotation[:, None]], 1)  # axis-angle (rx, ry, rz): rz turns the H-W plane
        depth_scale = scale if p.through_plane else torch.ones_like(scale)
        if not p.through_plane:
            shift[:, 2] = 0
        scales = torch.stack([scale, scale, depth_scale], 1)
        matrix = kornia.geometry.transform.get_affine_matrix3d(
            shift, center, scales, angles, sxy=shear[:, 0], syx=shear[:, 1]
        )[:, :3]

        def warp3d(t: torch.Tensor, mode: str, padding: str) -> torch.Tensor:
            return _padded(
                t,
                padding,
                lambda s, pad: kornia.geometry.transform.warp_affine3d(
                    s, matrix, tuple(spatial), flags=mode, padding_mode=pad, align_corners=True
                ),
            )

        return warp3d

    def _elastic_warp(self, x: torch.Tensor):
        """A function deforming a batch shaped like ``x`` with one freshly drawn in-plane displacement per image."""
        import kornia  # on use: imported at start-up it would slow every harmonia command

        p = self.params
        h, w = x.shape[-2:]
        noise = 2 * torch.rand(len(x), 2, h, w, device=x.device, dtype=x.dtype) - 1
        radius = min(math.ceil(3 * p.elastic_sigma), h - 1, w - 1)
        kernel = (2 * radius + 1, 2 * radius + 1)
        sigma = (p.elastic_sigma, p.elastic_sigma)
        alpha = (p.elastic_alpha, p.elastic_alpha)

        def warp(t: torch.Tensor, mode: str, padding: str) -> torch.Tensor:
            def deform(s: torch.Tensor, pad: str) -> torch.Tensor:
                if s.ndim == 4:
                    return kornia.geometry.transform.elastic_transform2d(
                        s, noise, kernel, sigma, alpha, mode=mode, padding_mode=pad
                    )
                b, c, d = s.shape[:3]
                slices = s.transpose(1, 2).reshape(b * d, c, h, w)
                out = kornia.geometry.transform.elastic_transform2d(
                    slices, noise.repeat_interleave(d, 0), kernel, sigma, alpha, mode=mode, padding_mode=pad
                )
                return out.reshape(b, d, c, h, w).transpose(1, 2).contiguous()

            return _padded(t, padding, deform)

        return warp


def _per_image(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``values`` (one per image) shaped ``[B, 1, ...]`` to broadcast against ``x``."""
    return values.view(len(x), *([1] * (x.ndim - 1)))


def _padded(t: torch.Tensor, padding: str, resample) -> torch.Tensor:
    """``resample(t, padding_mode)``, where padding ``minimum`` fills with each image's minimum (zeros padding of
    the image shifted to minimum 0) and ``zeros`` with 0 (label maps: background)."""
    if padding != "minimum":
        return resample(t, padding)
    low = _per_image(t.flatten(1).amin(1), t)
    return resample(t - low, "zeros") + low


@hookimpl
def harmonia_mitigations():
    return [KorniaSpatial]
