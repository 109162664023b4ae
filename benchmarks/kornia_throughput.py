"""kornia_intensity's throughput (images/s) on whole batches vs a per-image MONAI pipeline of the same operations.

kornia_intensity runs through its own ``augment_batch`` with every probability 1, so all seven operations act on
every image: a 2-D batch of 50 x 1 x 256 x 256 and a 3-D batch of 8 x 1 x 32 x 128 x 128, z-scored. The baseline
applies MONAI's RandBiasField, RandAdjustContrast (gamma), RandScaleIntensity (contrast: the z-scored mean is 0),
RandShiftIntensity (brightness), RandGaussianSmooth, RandGaussianSharpen and RandGaussianNoise, each with prob 1
and harmonia's ranges, image by image as a Dataset's transform would, on the CPU (TorchIO's bias field, gamma,
blur and noise too, when TorchIO is installed: it has no contrast, brightness or sharpening transform). Blur and
sharpening act in-plane in both, as kornia_intensity's do. Same process, alternating, median of the repeats
after a warm-up; prints images/s of each and the ratio kornia / per-image. ``--probabilities mnms`` gives both
the mnms preset's probabilities instead (both compute each operation only for the images that drew it);
``--per-operation`` also times each operation alone, to show where the time goes.

    python benchmarks/kornia_throughput.py [--repeats 5] [--device cpu|cuda] [--threads N]
                                           [--probabilities all|mnms] [--per-operation]
"""

from __future__ import annotations

import argparse
import importlib.util
import math
from collections.abc import Callable

import torch
from bench_epoch import median_times

from harmonia.api import Task
from harmonia.engine import zscore
from harmonia.registry import default_registry
from harmonia_plugins.mitigations.kornia_intensity import OPERATIONS, PRESETS, KorniaIntensityParams

#: (name, batch shape)
CASES = [("2-D", (50, 1, 256, 256)), ("3-D", (8, 1, 32, 128, 128))]
#: harmonia's ranges (kornia_intensity's defaults), which the baselines are given too
RANGES = KorniaIntensityParams()


def probabilities(mode: str) -> dict[str, float]:
    """Each operation's probability: 1 for all (``all``: every operation on every image) or the mnms preset's."""
    return {op: 1.0 if mode == "all" else PRESETS["mnms"][f"{op}_probability"] for op in OPERATIONS}


def batch(shape: tuple[int, ...]) -> torch.Tensor:
    """A z-scored random batch (the values do not change the timing)."""
    return zscore(torch.randn(shape, generator=torch.Generator().manual_seed(0)))


def kornia_run(shape: tuple[int, ...], device: torch.device, chances: dict[str, float]) -> Callable[[], object]:
    """One call of kornia_intensity's own ``augment_batch`` on a batch of ``shape``; operations not in ``chances``
    are off."""
    task = Task("segmentation", ("background", "foreground"), spatial_dims=len(shape) - 2)
    params = {"preset": "none", **{f"{op}_probability": p for op, p in chances.items()}}
    mitigation = default_registry().create("mitigation", "kornia_intensity", params, task)
    images = batch(shape).to(device)
    return lambda: mitigation.augment_batch(images, None)


def monai_transforms(spatial_dims: int, chances: dict[str, float]) -> list[Callable]:
    """MONAI's counterpart of each operation in ``chances``, in kornia_intensity's order, with harmonia's ranges."""
    from monai import transforms as T

    def in_plane(prefix: str, sigma) -> dict:
        """``sigma`` for the in-plane axes (MONAI's x, y of a slice; y, z of a volume) and 0 through the slices."""
        axes = ("x", "y") if spatial_dims == 2 else ("y", "z")
        through = {} if spatial_dims == 2 else {f"{prefix}_x": (0.0, 0.0)}
        return {**{f"{prefix}_{axis}": sigma for axis in axes}, **through}

    low, high = RANGES.contrast_range
    made = {
        "bias": lambda p: T.RandBiasField(degree=RANGES.bias_order, coeff_range=(0.0, RANGES.bias_strength), prob=p),
        "gamma": lambda p: T.RandAdjustContrast(gamma=tuple(RANGES.gamma_range), prob=p),
        "contrast": lambda p: T.RandScaleIntensity(factors=(low - 1, high - 1), prob=p),
        "brightness": lambda p: T.RandShiftIntensity(offsets=tuple(RANGES.brightness_range), prob=p),
        "blur": lambda p: T.RandGaussianSmooth(**in_plane("sigma", tuple(RANGES.blur_sigma_range)), prob=p),
        # x + a * (x - blur(x)) with blur sd 1: MONAI's first blur of sd 0 is the identity
        "sharpen": lambda p: T.RandGaussianSharpen(
            **in_plane("sigma1", (0.0, 0.0)),
            **in_plane("sigma2", (1.0, 1.0)),
            alpha=tuple(RANGES.sharpen_range),
            prob=p,
        ),
        "noise": lambda p: T.RandGaussianNoise(std=RANGES.noise_sd_range[1], prob=p),
    }
    return [made[op](p) for op, p in chances.items()]


def torchio_transforms(chances: dict[str, float]) -> list[Callable]:
    """TorchIO's counterparts of the operations in ``chances`` that it has (bias field, gamma, blur, noise)."""
    import torchio as tio

    low, high = RANGES.gamma_range
    made = {
        "bias": lambda p: tio.RandomBiasField(coefficients=RANGES.bias_strength, order=RANGES.bias_order, p=p),
        "gamma": lambda p: tio.RandomGamma(log_gamma=(math.log(low), math.log(high)), p=p),
        "blur": lambda p: tio.RandomBlur(std=tuple(RANGES.blur_sigma_range), p=p),
        "noise": lambda p: tio.RandomNoise(std=tuple(RANGES.noise_sd_range), p=p),
    }
    return [made[op](p) for op, p in chances.items() if op in made]


def per_image_run(transforms: list[Callable], shape: tuple[int, ...], torchio: bool = False) -> Callable[[], object]:
    """One pass of ``transforms`` over a batch of ``shape``, image by image, the results stacked (a DataLoader's
    collate); TorchIO takes 4-D images ``[C, W, H, D]``, so a 2-D image gets a first spatial axis of 1."""
    images = batch(shape)
    if torchio and images.ndim == 4:
        images = images[:, :, None]

    def run() -> torch.Tensor:
        out = []
        for image in images:
            for transform in transforms:
                image = transform(image)
            out.append(image)
        return torch.stack(out)

    return run


def throughputs(shape: tuple[int, ...], device: torch.device, chances: dict[str, float], repeats: int):
    """Images/s of kornia_intensity (on ``device``) and of each per-image pipeline (on the CPU)."""
    runs = {
        "kornia_intensity": kornia_run(shape, device, chances),
        "MONAI per-image": per_image_run(monai_transforms(len(shape) - 2, chances), shape),
    }
    torchio = torchio_transforms(chances) if importlib.util.find_spec("torchio") is not None else []
    if torchio:
        runs["TorchIO per-image"] = per_image_run(torchio, shape, torchio=True)
    seconds = median_times(runs, repeats, device)
    return {name: shape[0] / s for name, s in seconds.items()}


def print_rows(label: str, speeds: dict[str, float]) -> None:
    """One table row per per-image pipeline: both speeds and the ratio."""
    kornia = speeds.pop("kornia_intensity")
    for name, speed in speeds.items():
        print(f"| {label} | {kornia:.1f} | {name} | {speed:.1f} | {kornia / speed:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="where kornia_intensity runs (the per-image pipelines: CPU)")
    parser.add_argument("--threads", type=int, help="torch threads (default torch's; a DataLoader worker has 1)")
    parser.add_argument(
        "--probabilities", choices=["all", "mnms"], default="all", help="all 1 (default) or the mnms preset's"
    )
    parser.add_argument("--per-operation", action="store_true", help="also time each operation alone")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    chances = probabilities(args.probabilities)
    has_torchio = importlib.util.find_spec("torchio") is not None
    print(
        f"kornia_intensity on {device}, per-image pipelines on cpu; torch threads {torch.get_num_threads()}; "
        f"probabilities: {args.probabilities}; TorchIO {'installed' if has_torchio else 'not installed (skipped)'}"
    )
    print("| batch | kornia_intensity images/s | per-image pipeline | its images/s | ratio kornia / per-image |")
    print("|---|---|---|---|---|")
    for name, shape in CASES:
        label = f"{name} {' x '.join(map(str, shape))}"
        print_rows(label, throughputs(shape, device, chances, args.repeats))
        if args.per_operation:
            for op, p in chances.items():
                print_rows(f"{label}, {op} only", throughputs(shape, device, {op: p}, args.repeats))


if __name__ == "__main__":
    main()
