"""A recipe's augmentation made visible: one training item and K random draws of each augmenting mitigation.

``harmonia augment-preview`` draws it, after Fig. 2 of the M&Ms cross-vendor project plan (the original
slice beside its spatial and its intensity augmentations), so that a recipe's ranges can be judged by eye
before a run spends hours on them. One row per mitigation of the recipe's first sweep point that implements
``augment_batch``, in the recipe's order, each acting alone on the item through the engine's own path
(:meth:`MitigationStack.augment_batch <harmonia.stages.MitigationStack.augment_batch>`: native-space ones
before the per-image z-score, normalized-space ones after), so a panel shows what the model would be fed.
Every panel is in z-scored units with one grey window, the original's, so brightness and contrast changes
show; for segmentation the label map's contours follow each draw, so misalignment would show too.
Draws come from torch's generator seeded from ``seed`` and the row: the same seed gives the same figure.
"""

from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from pydantic import ValidationError

from harmonia import figures
from harmonia.api import Mitigation, Params
from harmonia.engine import zscore
from harmonia.errors import InputError
from harmonia.plugin_params import validate_params
from harmonia.protocol import CohortData, load_cohort, split_seed
from harmonia.recipe import Experiment, PluginSpec, SweepPoint, brief, load_recipe
from harmonia.registry import Registry, default_registry
from harmonia.seeding import derive_seed
from harmonia.splits import split_patients
from harmonia.stages import MitigationStack
from harmonia.tables import Provenance

#: most draws per row: a wider figure shows nothing new
MAX_SAMPLES = 12
#: contour colours of the label map's foreground classes, in class order
CONTOUR_COLORS = ("#ffd700", "#00e5ff", "#ff4fd8", "#7cfc00", "#ff8c00")


@dataclass(frozen=True)
class PreviewRow:
    """One row of the preview: a mitigation of the recipe that augments batches, and how its row is labelled."""

    position: int  # its index in the recipe's ``mitigations``
    spec: PluginSpec
    label: str  # the plugin's name, then its non-default parameters


@dataclass(frozen=True)
class PreviewItem:
    """The training item shown: its native-unit image ``[C, *spatial]``, its target, and where it came from."""

    image: torch.Tensor
    target: torch.Tensor
    domain: str


@dataclass(frozen=True)
class Preview:
    """The drawn preview: its figure, the rows it shows and where its data came from (``SYNTHETIC data``...)."""

    figure: Figure
    rows: list[PreviewRow]
    provenance: str


# -- what to draw ---------------------------------------------------------------------------------------


def plan_rows(point: SweepPoint, registry: Registry) -> list[PreviewRow]:
    """The sweep point's mitigations that implement ``augment_batch``, in the recipe's order, each labelled."""
    rows = []
    for position, spec in enumerate(point.recipe.mitigations):
        cls = registry.get("mitigation", spec.plugin).cls
        if "augment_batch" in cls.stages():
            rows.append(
                PreviewRow(position, spec, row_label(spec.plugin, validate_params(cls.Params, spec.params_for_create)))
            )
    return rows


def row_label(plugin: str, params: Params) -> str:
    """``kornia_intensity (preset=none, blur_probability=1.0)``: the plugin and the parameters that make it differ
    from its defaults; the plugin's name alone when it runs on its defaults."""
    shown = [f"{k}={v if isinstance(v, str) else brief(v)}" for k, v in non_default_params(params).items()]
    return f"{plugin} ({', '.join(shown)})" if shown else plugin


def non_default_params(params: Params) -> dict[str, Any]:
    """The parameters the plugin would not arrive at without them: required ones, those off their default, and
    those that differ from what a preset would fill (``preset: none`` with ``blur_probability: 1`` shows both)."""
    given = params.model_dump()
    shown = {}
    for name, value in given.items():
        try:
            without = type(params).model_validate({k: v for k, v in given.items() if k != name})
        except ValidationError:
            shown[name] = value  # required
            continue
        if getattr(without, name) != getattr(params, name):
            shown[name] = value
    return shown


def no_augmentation_error(experiment: Experiment, registry: Registry) -> InputError:
    """The one-line error for a recipe whose first sweep point has nothing to preview, naming what would do."""
    point = experiment.points[0]
    where = " in its first sweep point" if len(experiment.points) > 1 else ""
    installed = [e.name for e in registry.entries("mitigation") if "augment_batch" in e.cls.stages()]
    return InputError(
        f"{experiment.source}: has no augmenting mitigation{where} (mitigations: {point.recipe.mitigation_label()}); "
        f"add one that implements augment_batch ({', '.join(installed) or 'none installed'}) to preview it"
    )


def preview_item(data: CohortData, point: SweepPoint) -> PreviewItem:
    """A training item of the first training domain (its train split at seed index 0, as the protocol splits):
    for segmentation the one whose shown slice has the largest labelled area, else the first."""
    domain = (point.recipe.cohort.train_domains or data.domains)[0]
    split = split_patients(data.index, split_seed(point, 0), data.domains)[domain]
    train = data.items.of_patients(split.train, domain)
    index = 0
    if data.cohort.task.kind == "segmentation":
        index = int(torch.stack([(shown_slice(t) > 0).sum() for t in train.targets]).argmax())
    return PreviewItem(train.images[index], train.targets[index], domain)


def shown_slice(spatial: torch.Tensor) -> torch.Tensor:
    """The plane a panel shows of a 2-D or 3-D array without channels: itself, or a volume's middle slice."""
    return spatial[spatial.shape[0] // 2] if spatial.ndim == 3 else spatial


# -- drawing the samples --------------------------------------------------------------------------------


def draw_samples(
    mitigation: Mitigation, item: PreviewItem, samples: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``samples`` augmentations of ``item`` by ``mitigation`` alone, as the engine makes them (z-scored), in one
    batch; torch's generator is seeded with ``seed`` inside and left as it was outside."""
    images = item.image.expand(samples, *item.image.shape).clone()
    targets = item.target.expand(samples, *item.target.shape).clone()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MitigationStack([mitigation]).augment_batch(images, targets, normalize=zscore)


def row_seed(seed: int, row: PreviewRow) -> int:
    """Each row's own seed, so that a row's draws do not depend on the rows above it."""
    return derive_seed("augment-preview", seed, row.position, row.spec.plugin)


def draw_preview(experiment: Experiment, seed: int = 0, samples: int = 4, registry: Registry | None = None) -> Preview:
    """The preview of ``experiment``'s first sweep point; an InputError naming the recipe when it has no augmenting
    mitigation (checked before the cohort is loaded)."""
    if not 1 <= samples <= MAX_SAMPLES:
        raise InputError(f"augment-preview --samples: must be between 1 and {MAX_SAMPLES}, got {samples}")
    registry = registry or default_registry()
    point = experiment.points[0]
    rows = plan_rows(point, registry)
    if not rows:
        raise no_augmentation_error(experiment, registry)
    data = load_cohort(point.recipe.cohort, registry)
    item = preview_item(data, point)
    task = replace(data.cohort.task, item_shape=tuple(data.items.images.shape[2:]))
    drawn = []
    for row in rows:
        mitigation = registry.create("mitigation", row.spec.plugin, row.spec.params_for_create, task)
        drawn.append(draw_samples(mitigation, item, samples, row_seed(seed, row)))
    provenance = Provenance({point.recipe.cohort.name: data.source.kind}).label
    fig = _grid(item, rows, drawn, contours=task.kind == "segmentation")
    title = f"{experiment.name}: augmentation of a {item.domain} training item of {point.recipe.cohort.name}"
    figures.stamp(fig, f"{title}, seed {seed}", provenance)
    fig.tight_layout(rect=(0, 0.03, 1, 0.95))
    return Preview(fig, rows, provenance)


def _grid(
    item: PreviewItem, rows: list[PreviewRow], drawn: list[tuple[torch.Tensor, torch.Tensor]], contours: bool
) -> Figure:
    """One row per mitigation: the original, then its draws, all in the original's grey window, with the label
    map's contours if ``contours``."""
    samples = len(drawn[0][0])
    fig, axes = plt.subplots(
        len(rows), samples + 1, figsize=(1.7 * (samples + 1) + 1.2, 1.8 * len(rows) + 0.9), squeeze=False
    )
    original = zscore(item.image[None])[0]
    window = tuple(np.percentile(shown_slice(original[0]).numpy(), (0.5, 99.5)))
    for r, (row, (images, targets)) in enumerate(zip(rows, drawn)):
        panels = [(original, item.target, "original")]
        panels += [(images[k], targets[k], f"draw {k + 1}") for k in range(samples)]
        for ax, (image, target, name) in zip(axes[r], panels):
            _panel(ax, shown_slice(image[0]), shown_slice(target) if contours else None, window)
            if r == 0:
                ax.set_title(name, fontsize=8)
        axes[r][0].set_ylabel(textwrap.fill(row.label, 26, break_long_words=False, break_on_hyphens=False), fontsize=7)
    return fig


def _panel(ax: Axes, image: torch.Tensor, labels: torch.Tensor | None, window: tuple[float, float]) -> None:
    """``image`` in grey within ``window``, with the outline of each foreground class of ``labels`` if given."""
    ax.imshow(image.float().numpy(), cmap="gray", vmin=window[0], vmax=window[1], interpolation="nearest")
    if labels is not None:
        for c in [int(v) for v in labels.unique() if v > 0]:
            color = CONTOUR_COLORS[(c - 1) % len(CONTOUR_COLORS)]
            ax.contour((labels == c).float().numpy(), levels=[0.5], colors=[color], linewidths=0.7)
    ax.set_xticks([])
    ax.set_yticks([])


# -- the command's job ----------------------------------------------------------------------------------


def check_writable(out: Path) -> None:
    """An InputError naming ``out`` unless a PNG can be written there (its missing folders made), checked before
    any data is loaded and without making anything."""
    if out.suffix.lower() != ".png":
        raise InputError(f"{out}: the preview is a PNG; give a file name ending in .png")
    if out.is_dir():
        raise InputError(f"{out}: is a folder; give a file name ending in .png")
    if out.exists():
        if not os.access(out, os.W_OK):
            raise InputError(f"{out}: the file is not writable")
        return
    folder = out.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(f"{out}: cannot be written, {folder} is not a folder")
    if not os.access(folder, os.W_OK):
        raise InputError(f"{out}: cannot be written, the folder {folder} is not writable")


def write_preview(
    recipe: str | Path | dict[str, Any],
    out: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    seed: int = 0,
    samples: int = 4,
    registry: Registry | None = None,
) -> tuple[Path, str]:
    """Write the preview of ``recipe`` (a YAML path or a mapping, with ``--set`` style ``overrides``) to ``out``;
    return the path and the data's provenance label."""
    out = Path(out)
    experiment = load_recipe(recipe, overrides, registry)
    check_writable(out)
    preview = draw_preview(experiment, seed, samples, registry)
    rows = "; ".join(row.label for row in preview.rows)
    description = f"harmonia augment-preview of {experiment.name}, seed {seed}, {samples} draws of: {rows}"
    return figures.save(preview.figure, out, f"{description}; {preview.provenance}"), preview.provenance
