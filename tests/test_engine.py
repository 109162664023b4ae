"""The training engine: z-scoring, stage order, epoch selection and determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harmonia.api import ImageSet, Mitigation, NoParams, Task
from harmonia.engine import Trainer, zscore
from harmonia.recipe import TrainSpec
from toy_plugins import PixelAccuracy, ToyNet, ToyNetParams

TASK = Task("segmentation", ("background", "square"))


def toy_set(n=24, seed=0, invert=False) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, 16, 16, dtype=torch.long)
    for i in range(n):
        r, c = torch.randint(2, 8, (2,), generator=g)
        masks[i, r : r + 6, c : c + 6] = 1
    images = masks[:, None].float() * 100 + 20 + 5 * torch.randn(n, 1, 16, 16, generator=g)
    if invert:
        images = 200 - images
    patients = np.array([f"p{i // 3}" for i in range(n)], dtype=object)
    return ImageSet(images, masks, patients, np.array(["A"] * n, dtype=object))


def trainer(mitigations=(), epochs=3, selection="best_val", seed=0):
    torch.manual_seed(seed)
    model = ToyNet(ToyNetParams(width=4), TASK)
    settings = TrainSpec(epochs=epochs, batch_size=8, lr=0.01, device="cpu", selection=selection)
    return Trainer(model, list(mitigations), PixelAccuracy(NoParams(), TASK), settings, torch.device("cpu"))


def test_zscore_is_per_image():
    x = torch.stack([torch.arange(16.0).reshape(1, 4, 4), 100 + 10 * torch.arange(16.0).reshape(1, 4, 4)])
    z = zscore(x)
    assert torch.allclose(z.mean(dim=(1, 2, 3)), torch.zeros(2), atol=1e-5)
    assert torch.allclose(z.std(dim=(1, 2, 3)), torch.ones(2), atol=1e-4)
    assert torch.allclose(z[0], z[1], atol=1e-4)  # an affine intensity change is undone


def test_training_is_deterministic_for_a_seed():
    data = toy_set()
    weights = []
    for _ in range(2):
        t = trainer(seed=5)
        torch.manual_seed(11)
        t.fit(data, data, None)
        weights.append(torch.cat([p.detach().flatten() for p in t.model.parameters()]))
    assert torch.equal(weights[0], weights[1])


def test_best_validation_epoch_is_kept():
    train, val = toy_set(seed=0), toy_set(seed=1, invert=True)  # validation that disagrees with training
    t = trainer(epochs=6)
    result = t.fit(train, val, None)
    scores = [r.val_score for r in result.history]
    assert result.selected_epoch == int(np.argmax(scores))
    kept = PixelAccuracy(NoParams(), TASK).evaluate(t.predictions(val))[0].value
    assert kept == pytest.approx(max(scores))


class Recorder(Mitigation):
    """Records the units each augmentation stage receives and the images prediction sees."""

    name = "recorder"
    log: list = []

    def __init__(self, space):
        super().__init__(NoParams(), TASK)
        self.batch_space = space

    def augment_batch(self, images, targets):
        Recorder.log.append((self.batch_space, float(images.mean())))
        return images, targets

    def transform_images(self, images):
        Recorder.log.append(("transform", len(images)))
        return images


def test_native_augmentation_sees_native_units_and_normalized_sees_z_scores():
    Recorder.log = []
    data = toy_set()
    t = trainer([Recorder("native"), Recorder("normalized")], epochs=1)
    t.fit(data, data, None)
    native = [m for s, m in Recorder.log if s == "native"]
    normalized = [m for s, m in Recorder.log if s == "normalized"]
    assert native and all(m > 20 for m in native)  # raw intensities around 20..120
    assert normalized and all(abs(m) < 1e-4 for m in normalized)
    # transform_images ran on the training set once, then before each validation prediction
    assert [entry for entry in Recorder.log if entry[0] == "transform"][:2] == [("transform", 24), ("transform", 24)]


def test_a_mitigation_that_needs_target_images_without_other_domains_fails_clearly():
    class NeedsTarget(Mitigation):
        name = "needs_target"
        uses_target_images = True

    t = trainer([NeedsTarget(NoParams(), TASK)], epochs=1)
    with pytest.raises(RuntimeError, match="needs_target needs target-domain training images"):
        t.fit(toy_set(), toy_set(), None)
