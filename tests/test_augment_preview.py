"""`harmonia augment-preview`: the PNG it writes, its reproducibility, the rows it plans and its one-line errors.

The command runs on a tiny SYNTHETIC M&Ms twin (three patients per vendor, only the contrast component, which
is quick to write); the row planning and the figure's rows on the toy cohort; the draws on hand-made items.
"""

from __future__ import annotations

import matplotlib.image
import pytest
import torch
import yaml
from PIL import Image

from harmonia.api import Task
from harmonia.augment_preview import PreviewItem, draw_preview, draw_samples, plan_rows, shown_slice
from harmonia.cli import main
from harmonia.engine import zscore
from harmonia.figures import visible_texts
from harmonia.recipe import load_recipe
from harmonia_plugins.mitigations.gaussian_noise import GaussianNoise, GaussianNoiseParams
from harmonia_plugins.mitigations.kornia_spatial import KorniaSpatial, KorniaSpatialParams

pytestmark = pytest.mark.usefixtures("one_thread")

SEG = Task("segmentation", ("background", "foreground"))

MNMS_RECIPE = {
    "name": "preview_mnms",
    "cohort": {
        "plugin": "mnms",
        "params": {"image_size": 32, "spacing_mm": 4.0, "phases": ["ED"], "domains": ["Siemens", "Philips"]},
        "synthetic": {"patients": 3, "components": ["contrast"]},
    },
    "model": {"plugin": "unet2d"},
    "evaluate": ["dice"],
    "mitigations": [{"plugin": "kornia_intensity"}, {"plugin": "kornia_spatial"}],
}
#: augmenting (0, 2, 3) and not augmenting (1: learns a histogram; 4: every probability 0, dropped as inactive)
MIXED = [
    {"plugin": "kornia_intensity", "params": {"preset": "none", "blur_probability": 1.0}},
    {"plugin": "histogram_matching"},
    {"plugin": "kornia_spatial"},
    {"plugin": "gaussian_noise", "params": {"alpha": 0.5, "space": "normalized"}},
    {"plugin": "kornia_intensity", "params": {"preset": "none"}},
]
ROW_LABELS = [
    "kornia_intensity (preset=none, blur_probability=1.0)",
    "kornia_spatial",
    "gaussian_noise (alpha=0.5, space=normalized)",
]


def write_recipe(tmp_path, data) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def preview(recipe: str, out, *options: str) -> int:
    return main(["augment-preview", recipe, "--out", str(out), *options])


def test_the_command_writes_a_stamped_png_that_its_seed_reproduces(tmp_path, capsys):
    recipe = write_recipe(tmp_path, MNMS_RECIPE)
    first, again, other = tmp_path / "figs" / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    assert preview(recipe, first, "--seed", "3", "--samples", "3") == 0
    assert "(SYNTHETIC data)" in capsys.readouterr().out
    assert preview(recipe, again, "--seed", "3", "--samples", "3") == 0
    assert preview(recipe, other, "--seed", "4", "--samples", "3") == 0

    image = matplotlib.image.imread(first)
    assert image.shape == (540, 960, 4)  # 120 dpi: 2 rows and 1 + 3 columns of panels
    assert (image == matplotlib.image.imread(again)).all()
    assert not (image == matplotlib.image.imread(other)).all()
    metadata = Image.open(first).text
    assert "SYNTHETIC" in metadata["Title"]
    assert "kornia_intensity; kornia_spatial" in metadata["Description"]


def test_the_rows_are_the_recipes_augmenting_mitigations_labelled_with_their_own_parameters(registry, toy_recipe):
    toy_recipe["mitigations"] = MIXED
    experiment = load_recipe(toy_recipe, registry=registry)

    rows = plan_rows(experiment.points[0], registry)
    assert [row.position for row in rows] == [0, 2, 3]
    assert [row.label for row in rows] == ROW_LABELS

    shown = draw_preview(experiment, seed=1, samples=2, registry=registry)
    axes = shown.figure.axes
    assert len(axes) == 3 * (1 + 2)
    assert [axes[3 * r].get_ylabel().replace("\n", " ") for r in range(3)] == ROW_LABELS
    assert "SYNTHETIC DATA" in visible_texts(shown.figure)  # the stamp
    assert all(ax.collections for ax in axes)  # the label map's contour on every panel


def test_a_recipe_without_an_augmenting_mitigation_is_one_line_and_exit_2(registry, toy_recipe, tmp_path, capsys):
    toy_recipe["mitigations"] = [MIXED[1], MIXED[4]]
    recipe = write_recipe(tmp_path, toy_recipe)
    assert preview(recipe, tmp_path / "p.png") == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and error.startswith(f"harmonia: error: {recipe}: has no augmenting mitigation")
    assert "kornia_spatial" in error  # what would do
    assert not (tmp_path / "p.png").exists()


@pytest.mark.parametrize(
    "options, named",
    [
        (["--out", "a_file/p.png"], "a_file/p.png"),  # inside a file
        (["--out", "p.jpg"], "p.jpg"),
        (["--out", "p.png", "--samples", "0"], "--samples"),
    ],
)
def test_an_out_or_a_count_that_cannot_be_is_one_line_and_exit_2(
    registry, toy_recipe, tmp_path, monkeypatch, capsys, options, named
):
    toy_recipe["mitigations"] = [MIXED[2]]
    recipe = write_recipe(tmp_path, toy_recipe)
    (tmp_path / "a_file").write_text("")
    monkeypatch.chdir(tmp_path)
    assert main(["augment-preview", recipe, *options]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and named in error
    assert not (tmp_path / "p.png").exists()


def test_draws_take_the_engines_path_seeded_without_touching_the_global_generator():
    image = torch.rand(1, 12, 16) * 50 + 100  # native units
    target = (image[0] > 125).long()
    item = PreviewItem(image, target, "A")
    flips = KorniaSpatial(
        KorniaSpatialParams(flip_width_probability=1, flip_height_probability=0, affine_probability=0), SEG
    )
    state = torch.get_rng_state()
    images, targets = draw_samples(flips, item, 3, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.allclose(images, zscore(image[None]).flip(-1).expand(3, -1, -1, -1))  # z-scored, then flipped
    assert torch.equal(targets, target.flip(-1).expand(3, -1, -1))

    def noise_sd(space: str) -> float:
        noise = GaussianNoise(GaussianNoiseParams(alpha=1000.0, space=space), SEG)
        return draw_samples(noise, item, 3, seed=5)[0].std().item()

    assert noise_sd("native") == pytest.approx(1.0, abs=0.01)  # added before the z-score, which rescales it
    assert noise_sd("normalized") == pytest.approx(1000.0, rel=0.1)
    assert torch.equal(draw_samples(flips, item, 3, seed=5)[0], images)


def test_a_volume_shows_its_middle_slice():
    volume = torch.arange(5)[:, None, None].expand(5, 4, 4)
    assert (shown_slice(volume) == 2).all()
    assert torch.equal(shown_slice(volume[0]), volume[0])
