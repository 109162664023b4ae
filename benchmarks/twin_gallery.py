"""One item per scanner domain of every first-party cohort's SYNTHETIC twin, in one figure, so a reader
can judge the twins' realism and their vendor differences by eye (docs/synthetic.md shows it).

    python benchmarks/twin_gallery.py [--out docs/figures/twin_vendors.png] [--patients 3] [--seed 0]

Each twin is written into a temporary folder, read back through its cohort loader with default
parameters, and the first patient's middle item of each domain is shown (the middle slice of a 3-D
item), windowed to its own 1st-99th percentile, as a model sees it after per-image z-scoring.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from harmonia.api import TwinSettings  # noqa: E402
from harmonia.registry import default_registry  # noqa: E402


def middle_items(name: str, settings: TwinSettings, folder: Path) -> dict[str, np.ndarray]:
    """Domain -> a 2-D image: the first patient's middle item of that domain in the cohort's twin."""
    registry = default_registry()
    registry.get("cohort", name).cls.write_twin(folder, settings)
    cohort = registry.create("cohort", name, {}, folder)
    index = cohort.index()
    shown = {}
    for domain in cohort.domains():
        patient = index.loc[index["domain"] == domain, "patient"].iloc[0]
        items = cohort.load([patient])
        items = items.take(items.domains == domain)
        image = items.images[len(items) // 2, 0].numpy()
        shown[domain] = image[image.shape[0] // 2] if image.ndim == 3 else image
    return shown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/figures/twin_vendors.png"))
    parser.add_argument("--patients", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    settings = TwinSettings(patients=args.patients, seed=args.seed)
    names = [entry.name for entry in default_registry().entries("cohort")]
    gallery = {}
    for name in names:
        with tempfile.TemporaryDirectory() as folder:
            gallery[name] = middle_items(name, settings, Path(folder))
    columns = max(len(items) for items in gallery.values())
    fig, axes = plt.subplots(len(names), columns, figsize=(1.8 * columns, 1.9 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        for col in range(columns):
            ax = axes[row][col]
            ax.axis("off")
            if col < len(gallery[name]):
                domain, image = list(gallery[name].items())[col]
                low, high = np.percentile(image, [1, 99])
                ax.imshow(image, cmap="gray", vmin=low, vmax=high)
                ax.set_title(f"{name}: {domain}" if col == 0 else domain, fontsize=7)
    fig.suptitle("SYNTHETIC twins: one item per scanner domain (harmonia's simulator, not patients)", fontsize=9)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
