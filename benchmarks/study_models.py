"""One training step of each study model through harmonia's engine vs a minimal PyTorch loop, at batch 50.

The models of the scanner-shift study (Guo et al.) at the input sizes its cohorts give by default:
mrnet2d on 128 x 128 slices (ct_kidney, ct_hnscc, mri_prostate), nodulex on 5 x 47 x 47 crops
(ct_lidc, mri_breast) and on 72^3 cubes (ct_oropharyngeal), densenet121 on 128 x 128 radiographs
(xray_chest). Random images and binary labels (timing does not depend on the values); the same model,
data, batch, loss and optimizer for both loops, alternating, median of the repeats after a warm-up.
Prints ms per step of each and the ratio harmonia / minimal (1.0 = no overhead).

    python benchmarks/study_models.py [--batch 50] [--steps 4] [--repeats 3] [--device cpu] [--only mrnet2d]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from bench_epoch import median_times, minimal_epoch

from harmonia.api import ImageSet, Task
from harmonia.engine import Trainer
from harmonia.losses import default_task_loss
from harmonia.registry import default_registry
from harmonia.settings import TrainSpec

#: (model, cohorts it serves, item shape) at each cohort's default parameters
CASES = [
    ("mrnet2d", "ct_kidney, ct_hnscc, mri_prostate", (128, 128)),
    ("nodulex", "ct_lidc, mri_breast", (5, 47, 47)),
    ("nodulex", "ct_oropharyngeal", (72, 72, 72)),
    ("densenet121", "xray_chest", (128, 128)),
]


def time_case(name: str, shape: tuple[int, ...], args: argparse.Namespace) -> tuple[float, float, int]:
    """Median seconds per epoch of ``args.steps`` steps: harmonia's Trainer and the minimal loop; the step count."""
    device = torch.device(args.device)
    registry = default_registry()
    task = Task("classification", ("negative", "positive"), spatial_dims=len(shape), item_shape=shape)
    n = args.batch * args.steps
    generator = torch.Generator().manual_seed(0)
    images = torch.randn((n, 1, *shape), generator=generator)
    targets = torch.randint(0, 2, (n,), generator=generator)
    data = ImageSet(images, targets, np.array([f"p{i}" for i in range(n)], dtype=object), np.full(n, "A", object))
    torch.manual_seed(0)
    model = registry.create("model", name, {}, task)
    channels_last = len(shape) == 2
    model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    evaluator = registry.create("evaluator", "auc", {}, task)
    settings = TrainSpec(epochs=1, batch_size=args.batch, lr=1e-4, selection="last", device=args.device)
    trainer = Trainer(model, [], evaluator, settings, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = default_task_loss(task)

    def run_minimal():
        minimal_epoch(model, images, targets, args.batch, optimizer, loss_fn, device, channels_last)

    def run_harmonia():
        trainer.fit(data, data.take(np.arange(args.batch)), None)  # validation: one batch, as small as it gets

    times = median_times({"minimal": run_minimal, "harmonia": run_harmonia}, args.repeats, device)
    return times["harmonia"], times["minimal"], args.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--steps", type=int, default=4, help="training steps per timed epoch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", default=None, help="time only this model")
    args = parser.parse_args()
    print(
        f"batch {args.batch}, {args.steps} steps per epoch, device {args.device}, torch threads {torch.get_num_threads()}"
    )
    print("| model | cohorts | item shape | minimal ms/step | harmonia ms/step | ratio harmonia/minimal |")
    print("|---|---|---|---|---|---|")
    for name, cohorts, shape in CASES:
        if args.only and name != args.only:
            continue
        h, m, steps = time_case(name, shape, args)
        size = " x ".join(map(str, shape))
        print(f"| {name} | {cohorts} | {size} | {1000 * m / steps:.0f} | {1000 * h / steps:.0f} | {h / m:.3f} |")


if __name__ == "__main__":
    main()
