"""One training epoch of the M&Ms slice through harmonia's engine vs a hand-written minimal PyTorch loop.

Same model (unet2d), same data (the synthetic M&Ms twin, one vendor's slices), same batch size,
same loss, same optimizer, measured in the same process, alternating, after a warm-up epoch.
Prints the median time of each and the ratio harmonia / minimal (1.0 = no overhead).

    python benchmarks/bench_epoch.py [--image-size 128] [--batch 8] [--repeats 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from harmonia.engine import Trainer, zscore
from harmonia.losses import default_task_loss
from harmonia.protocol import load_cohort
from harmonia.recipe import CohortSpec, TrainSpec
from harmonia.registry import default_registry
from harmonia_plugins.evaluators.dice import Dice
from harmonia_plugins.models.unet2d import UNet2D


def minimal_epoch(model, images, targets, batch, optimizer, loss_fn, device, channels_last) -> None:
    """The baseline: the shortest correct loop over in-memory tensors (shuffle, z-score, step)."""
    model.train()
    for index in torch.randperm(len(images)).split(batch):
        x = zscore(images[index].to(device))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss = loss_fn(model(x).logits, targets[index].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def median_times(runs: dict[str, Callable[[], None]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median wall seconds of each run, after one warm-up call of each, the runs alternating ``repeats`` times."""
    for fn in runs.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-channels-last", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    channels_last = not args.no_channels_last

    registry = default_registry()
    spec = CohortSpec(plugin="mnms", params={"image_size": args.image_size})
    data = load_cohort(spec, registry)
    vendor = data.domains[0]
    train = data.items.take(data.items.domains == vendor)
    task = data.cohort.task
    settings = TrainSpec(
        epochs=1, batch_size=args.batch, lr=1e-4, selection="last", device=args.device, channels_last=channels_last
    )

    torch.manual_seed(0)
    model = UNet2D(UNet2D.Params(), task)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    trainer = Trainer(model, [], Dice(Dice.Params(), task), settings, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = default_task_loss(task)

    def run_minimal():
        minimal_epoch(model, train.images, train.targets, args.batch, optimizer, loss_fn, device, channels_last)

    def run_harmonia():
        trainer.fit(train, train, None)

    times = median_times({"minimal": run_minimal, "harmonia": run_harmonia}, args.repeats, device)
    steps = -(-len(train) // args.batch)
    h, m = times["harmonia"], times["minimal"]
    print(
        f"M&Ms twin ({data.source.kind}), {vendor}: {len(train)} slices {args.image_size}x{args.image_size}, "
        f"batch {args.batch}, {steps} steps/epoch, device {device}, channels_last={channels_last}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"minimal loop : {m:.3f} s/epoch ({1000 * m / steps:.1f} ms/step)")
    print(f"harmonia     : {h:.3f} s/epoch ({1000 * h / steps:.1f} ms/step)")
    print(f"ratio harmonia/minimal: {h / m:.3f}")


if __name__ == "__main__":
    main()
