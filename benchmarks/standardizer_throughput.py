"""Standardizer inference throughput at 512 x 512: the default CPU-sized generator vs Real-ESRGAN's 64/23 size.

Both generators untrained (timing does not depend on the weights), run through ``Standardizer.apply_hu`` on
random HU slices, ``--batch`` slices per call, in the same process, alternating, median of the repeats after
a warm-up call. Prints slices/s of each and the ratio default / full.

    python benchmarks/standardizer_throughput.py [--batch 1] [--size 512] [--repeats 3] [--device cpu|cuda] [--threads N]
"""

from __future__ import annotations

import argparse

import torch
from bench_epoch import median_times

from harmonia.standardizer import GeneratorSpec, Standardizer, StandardizerSettings

#: (label, generator size)
CASES = [
    ("default", GeneratorSpec()),
    ("Real-ESRGAN", GeneratorSpec(features=64, blocks=23, growth=32)),
]


def standardizer_on(spec: GeneratorSpec, device: torch.device) -> Standardizer:
    """An untrained standardizer of generator size ``spec`` on ``device``."""
    return Standardizer(spec.build().to(device), StandardizerSettings(generator=spec))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1, help="slices per apply_hu call")
    parser.add_argument("--size", type=int, default=512, help="slice height and width")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is steadier on a busy machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    slices = torch.rand((args.batch, 1, args.size, args.size), device=device) * 2000 - 1000
    runs = {}
    for label, spec in CASES:
        standardizer = standardizer_on(spec, device)
        runs[label] = lambda s=standardizer: s.apply_hu(slices, batch_size=args.batch)
    seconds = median_times(runs, args.repeats, device)
    rates = {label: args.batch / seconds[label] for label, _ in CASES}
    print(
        f"{args.size} x {args.size}, batch {args.batch}, device {args.device}, torch threads {torch.get_num_threads()}"
    )
    print("| generator | features | blocks | growth | slices/s |")
    print("|---|---|---|---|---|")
    for label, spec in CASES:
        print(f"| {label} | {spec.features} | {spec.blocks} | {spec.growth} | {rates[label]:.3g} |")
    print(f"ratio default / Real-ESRGAN: {rates['default'] / rates['Real-ESRGAN']:.1f}")


if __name__ == "__main__":
    main()
