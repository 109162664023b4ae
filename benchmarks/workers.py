"""Wall time of one 8-cell recipe run in the harmonia process and in local worker processes, in the same session.

The recipe: the SYNTHETIC M&Ms twin (two vendors, 48 px), a small U-Net, plain vs DANN, 2 seeds: 2 x 2 x 2 = 8
cells. Each configuration runs it into a fresh run folder (the twin cached beforehand), alternating, ``--repeats``
times; the table gives median wall seconds, cells per hour, and the ratio to the sequential run with one thread
per cell. Every run's results.csv must be byte-identical to that of the first run with as many threads per
cell (checked).

    python benchmarks/workers.py [--repeats 2] [--workers 2] [--epochs 12]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from harmonia import runner


def recipe(epochs: int) -> dict:
    return {
        "name": "bench_workers",
        "cohort": {"plugin": "mnms", "params": {"domains": ["Siemens", "GE"], "image_size": 48, "spacing_mm": 3.2}},
        "model": {"plugin": "unet2d", "params": {"channels": [8, 16, 32]}},
        "train": {"epochs": epochs, "batch_size": 16, "lr": 2e-3, "seeds": 2},
        "evaluate": ["dice"],
        "sweep": {"mitigations": [[], [{"plugin": "dann"}]]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    configs = {
        "1 process, 1 thread per cell": ({"workers": 1}, ["train.threads=1"]),
        f"1 process, {cores} threads (torch's default)": ({"workers": 1}, []),
        f"{args.workers} worker processes, 1 thread each": ({"workers": args.workers}, ["train.threads=1"]),
        f"{args.workers} worker processes, threads shared out": ({"workers": args.workers}, []),
    }
    with tempfile.TemporaryDirectory() as scratch:
        runner.run(recipe(1), ["train.seeds=1"], Path(scratch) / "warm-up")  # the twin is written once, here
        times: dict[str, list[float]] = {name: [] for name in configs}
        reference: dict[str, str] = {}
        for repeat in range(args.repeats):
            for i, (name, (execution, overrides)) in enumerate(configs.items()):
                out = Path(scratch) / f"{i}-{repeat}"
                start = time.perf_counter()
                runner.run(recipe(args.epochs), overrides, out, execution=execution)
                times[name].append(time.perf_counter() - start)
                threads = 1 if overrides else max(1, cores // execution["workers"])
                text = (out / "results.csv").read_text()
                if reference.setdefault(str(threads), text) != text:
                    raise SystemExit(f"{name}: results differ from the first run with {threads} thread(s) per cell")
    base = statistics.median(times["1 process, 1 thread per cell"])
    print(f"8 cells, {args.epochs} epochs each, {cores} cores, median of {args.repeats}\n")
    print("| configuration | wall s | cells per hour | speed-up vs 1 process, 1 thread |")
    print("|---|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.1f} | {8 * 3600 / median:.0f} | {base / median:.2f}x |")


if __name__ == "__main__":
    main()
