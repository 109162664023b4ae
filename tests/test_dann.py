"""dann: the reversal layer, the λ schedule, exactly which gradient reaches what, what the domain
classifier sees, that it learns when nothing reverses its gradient, the joint forward pass, the
per-epoch history, and that training with it makes source and target features harder to tell apart."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from test_engine import toy_set
from torch import nn
from toy_plugins import ToyNet, ToyNetParams

from harmonia import runner
from harmonia.api import ImageSet, Mitigation, Model, ModelOutput, NoParams, Task, TrainStep
from harmonia.engine import Trainer
from harmonia.errors import InputError
from harmonia.registry import Registry
from harmonia.results import HISTORY_COLUMNS
from harmonia.settings import TrainSpec
from harmonia_plugins.evaluators.dice import Dice, DiceParams
from harmonia_plugins.mitigations.dann import (
    DANN,
    DANNParams,
    GradientReversal,
    discriminator_input,
    reverse_gradient,
)
from harmonia_plugins.models.unet2d import UNet2D, UNet2DParams

SEG = Task("segmentation", ("background", "fg"))


pytestmark = pytest.mark.usefixtures("one_thread")


class TinyNet(Model):
    """A tiny conv net whose encoder's output is the features; logits are a 1x1 head on them. Its levels
    are the encoder's first layer's output and the features."""

    name = "tiny"

    def __init__(self, encoder: nn.Sequential | None = None, channels: int = 6):
        super().__init__(NoParams(), SEG)
        if encoder is None:
            encoder = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, channels, 3, padding=1))
        self.encoder = encoder
        self.head = nn.Conv2d(channels, 2, 1)
        self.feature_channels = channels
        self.level_channels = (encoder[0].out_channels, channels)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        first = self.encoder[0](x)
        features = self.encoder[1:](first)
        return ModelOutput(self.head(features), features, (first, features))


def make_step(net: Model, source: torch.Tensor, target: torch.Tensor | None, progress: float = 0.5) -> TrainStep:
    out = net(source)
    target_out = net(target) if target is not None else None
    return TrainStep(net, source, torch.zeros(len(source)), out, progress, 0, 0, target, target_out)


def make_dann(net: Model, **params) -> DANN:
    dann = DANN(DANNParams(**params), SEG)
    dann.build(net)
    return dann


# -- gradient-reversal layer ---------------------------------------------------------------------


@pytest.mark.parametrize("lam", [0.0, 0.25, 1.0, 3.0])
def test_reversal_is_identity_forward_and_minus_lambda_backward(lam):
    x = torch.randn(3, 4, 5, requires_grad=True)
    incoming = torch.randn(3, 4, 5)
    layer = GradientReversal(lam)
    y = layer(x)
    assert torch.equal(y, x)
    y.backward(incoming)
    assert torch.equal(x.grad, -lam * incoming)
    x.grad = None
    reverse_gradient(x, lam).backward(incoming)
    assert torch.equal(x.grad, -lam * incoming)


# -- schedule ---------------------------------------------------------------------------------------


def test_ganin_schedule():
    dann = DANN(DANNParams(lambda_max=2.0), SEG)
    assert dann.lambda_at(0.0) == 0.0
    assert dann.lambda_at(1.0) == pytest.approx(2.0 * 0.9999092, rel=1e-6)
    values = [dann.lambda_at(p) for p in np.linspace(0, 1, 101)]
    assert all(a < b for a, b in zip(values, values[1:]))
    assert dann.lambda_at(0.5) == pytest.approx(2.0 * (2 / (1 + math.exp(-5)) - 1))
    assert DANN(DANNParams(gamma=1.0), SEG).lambda_at(1.0) == pytest.approx(2 / (1 + math.exp(-1)) - 1)


def test_constant_schedule():
    dann = DANN(DANNParams(schedule="constant", lambda_max=0.3), SEG)
    assert {dann.lambda_at(p) for p in (0.0, 0.4, 1.0)} == {0.3}


# -- what reaches what ------------------------------------------------------------------------------


FEATURES = ["pooled_mean", "pooled_mean_std", "multilevel", "output"]


@pytest.mark.parametrize("features", FEATURES)
@pytest.mark.parametrize("weight, lambda_max, progress", [(1.0, 1.0, 0.3), (0.5, 2.0, 0.8), (2.0, 1.0, 0.0)])
def test_model_gets_minus_weight_lambda_times_plain_gradient_classifier_gets_weight_times(
    weight, lambda_max, progress, features
):
    torch.manual_seed(0)
    net = TinyNet().double()
    dann = make_dann(net, weight=weight, lambda_max=lambda_max, features=features)
    dann.classifier.double()
    source, target = torch.randn(4, 1, 8, 8, dtype=torch.float64), torch.randn(3, 1, 8, 8, dtype=torch.float64) + 1
    net_params = list(net.parameters()) if features == "output" else list(net.encoder.parameters())
    clf_params = list(dann.classifier.parameters())

    loss = dann.extra_loss(make_step(net, source, target, progress))
    grads = torch.autograd.grad(loss, net_params + clf_params)

    # the same domain loss written out here, without reversal: source labelled 0, target 1
    inputs = torch.cat([discriminator_input(net(source), features), discriminator_input(net(target), features)])
    logits = dann.classifier(inputs)
    plain = F.binary_cross_entropy_with_logits(logits, torch.tensor([0.0] * 4 + [1.0] * 3, dtype=torch.float64))
    plain_grads = torch.autograd.grad(plain, net_params + clf_params)

    lam = dann.last_lambda
    assert lam == pytest.approx(dann.lambda_at(progress))
    assert loss.item() == pytest.approx(weight * plain.item(), rel=1e-12)
    for g, p in zip(grads[: len(net_params)], plain_grads[: len(net_params)]):
        assert torch.allclose(g, -weight * lam * p, rtol=1e-10, atol=1e-14)
    for g, p in zip(grads[len(net_params) :], plain_grads[len(net_params) :]):
        assert torch.allclose(g, weight * p, rtol=1e-10, atol=1e-14) and p.abs().sum() > 0
    assert all(p.abs().sum() > 0 for p in plain_grads[: len(net_params)])


@pytest.mark.parametrize(
    "features, size",
    [("pooled_mean", 8), ("pooled_mean_std", 2 * 8), ("multilevel", 2 * (4 + 8)), ("output", 2 * 2)],
)
def test_classifier_is_sized_from_the_model_and_reaches_a_unet_encoder(features, size):
    torch.manual_seed(0)
    unet = UNet2D(UNet2DParams(channels=[4, 8]), SEG)
    dann = make_dann(unet, hidden=5, features=features)
    assert dann.classifier.mlp[0].in_features == size and dann.classifier.mlp[0].out_features == 5
    dann.extra_loss(make_step(unet, torch.randn(2, 1, 16, 16), torch.randn(2, 1, 16, 16), progress=1.0)).backward()
    assert unet.net.model[0].conv.unit0.conv.weight.grad.abs().sum() > 0


def test_multilevel_on_a_model_without_levels_is_a_clear_error():
    with pytest.raises(InputError, match="multilevel needs a model that exposes feature levels.*toynet"):
        make_dann(ToyNet(ToyNetParams(), SEG), features="multilevel")


def test_missing_target_batch_is_a_clear_error():
    net = TinyNet()
    dann = make_dann(net)
    with pytest.raises(RuntimeError, match="needs a target-domain batch"):
        dann.extra_loss(make_step(net, torch.randn(2, 1, 8, 8), None))
    assert DANN.uses_target_images and {"build", "extra_loss"} <= set(DANN.stages())


# -- behaviour --------------------------------------------------------------------------------------


def test_epoch_metrics_are_the_means_over_the_steps_since_the_last_call():
    torch.manual_seed(0)
    net = TinyNet()
    dann = make_dann(net)
    assert dann.epoch_metrics() == {}  # no step yet: nothing to report
    accuracies = []
    for progress in (0.0, 0.5, 1.0):
        dann.extra_loss(make_step(net, torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8) + 1, progress))
        accuracies.append(dann.last_domain_accuracy)
    lambdas = [dann.lambda_at(p) for p in (0.0, 0.5, 1.0)]
    assert dann.epoch_metrics() == pytest.approx({"domain_accuracy": np.mean(accuracies), "lambda": np.mean(lambdas)})
    assert dann.epoch_metrics() == {}  # the next epoch starts afresh


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_with_lambda_zero_the_classifier_learns_to_tell_shifted_domains_apart_through_the_engine(seed):
    """The audit found a classifier that never learned on a U-Net: here, with nothing reversed (λ = 0), the
    default discriminator input separates squares from their intensity-inverted twins within four epochs."""
    torch.manual_seed(seed)
    source, target = toy_set(seed=seed), toy_set(seed=seed + 10, invert=True)
    unet = UNet2D(UNet2DParams(channels=[4, 8]), SEG)
    dann = DANN(DANNParams(lambda_max=0.0), SEG)
    settings = TrainSpec(epochs=4, batch_size=8, lr=1e-2, selection="last", device="cpu")
    history = Trainer(unet, [dann], Dice(DiceParams(), SEG), settings, torch.device("cpu")).fit(source, source, target)
    accuracy = [e.extras["dann.domain_accuracy"] for e in history.history]
    assert max(accuracy) > 0.7
    assert [e.extras["dann.lambda"] for e in history.history] == [0.0] * 4


def test_classifier_alone_learns_to_tell_source_from_target():
    """With λ = 0 only the classifier learns: on clearly different feature distributions it reaches ~1 accuracy."""
    torch.manual_seed(0)
    net = TinyNet(channels=4)
    dann = make_dann(net, schedule="constant", lambda_max=0.0, features="pooled_mean")
    optimizer = torch.optim.Adam(dann.classifier.parameters(), lr=0.05)
    for _ in range(60):
        features_s = torch.randn(16, 4, 3, 3, requires_grad=True)
        features_t = torch.randn(16, 4, 3, 3) + torch.tensor([2.0, -1.0, 0.0, 0.0])[:, None, None]
        step = TrainStep(
            net,
            features_s,
            torch.zeros(16),
            ModelOutput(features_s, features_s),
            0.5,
            0,
            0,
            features_t,
            ModelOutput(features_t, features_t),
        )
        optimizer.zero_grad()
        dann.extra_loss(step).backward()
        optimizer.step()
        assert torch.equal(features_s.grad, torch.zeros_like(features_s))  # λ = 0: nothing reaches the features
    assert dann.last_domain_accuracy > 0.95
    dann.classifier.eval()
    logits_t = dann.classifier(discriminator_input(ModelOutput(features_t, features_t), "pooled_mean"))
    logits_s = dann.classifier(discriminator_input(ModelOutput(features_s, features_s), "pooled_mean"))
    assert (logits_t > 0).all() and (logits_s < 0).all()


def two_domain_batch(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source and target images [n, 2, 4, 4] and their classes [2, n]: channel 0 carries the class, channel 1 the scanner."""
    labels = torch.randint(0, 2, (2, n), generator=g)
    images = torch.randn(2, n, 2, 4, 4, generator=g)
    images[:, :, 0] += (2.0 * labels - 1)[..., None, None]
    images[1, :, 1] += 1.0
    return images[0], images[1], labels


def train_two_domains(lambda_max: float, seed: int, steps: int = 300) -> tuple[list[float], float]:
    """Train a 1x1-conv extractor on labelled source + DANN on unlabeled target, as the engine does (one Adam).

    Returns the domain classifier's accuracy at every step and the task accuracy on target images.
    """
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = TinyNet(nn.Sequential(nn.Conv2d(2, 4, 1)), channels=4)
    dann = make_dann(net, lambda_max=lambda_max, hidden=16)
    optimizer = torch.optim.Adam([*net.parameters(), *dann.classifier.parameters()], lr=0.005)
    domain_accuracy = []
    for i in range(steps):
        source, target, labels = two_domain_batch(32, g)
        step = make_step(net, source, target, progress=i / (steps - 1))
        task = F.cross_entropy(step.output.logits.mean((2, 3)), labels[0])
        optimizer.zero_grad()
        (task + dann.extra_loss(step)).backward()
        optimizer.step()
        domain_accuracy.append(dann.last_domain_accuracy)
    _, target, labels = two_domain_batch(256, g)
    with torch.no_grad():
        task_accuracy = (net(target).logits.mean((2, 3)).argmax(1) == labels[1]).float().mean().item()
    return domain_accuracy, task_accuracy


@pytest.mark.parametrize("seed", [0, 1])
def test_adversarial_training_makes_domains_harder_to_tell_apart(seed):
    """Same seed, data and classifier; only λ differs. Over the second half of training, a classifier that keeps
    learning separates the domains almost perfectly when λ = 0, and far less well against reversed gradients.

    (The end state is not compared with a fresh probe: gradient-reversal training oscillates, so a snapshot
    may catch the features mid-swing, while the accuracy over many steps is a stable measure.)
    """
    plain, _ = train_two_domains(lambda_max=0.0, seed=seed)
    adversarial, target_accuracy = train_two_domains(lambda_max=1.0, seed=seed)
    half = len(plain) // 2
    plain_separability, adversarial_separability = np.mean(plain[half:]), np.mean(adversarial[half:])
    assert plain_separability > 0.9
    assert adversarial_separability < plain_separability - 0.1  # 0.17 to 0.22 lower over seeds 0-2
    assert target_accuracy > 0.9  # the class survives: the features lost the scanner, not the content


# -- wiring -------------------------------------------------------------------------------------------


def test_engine_trains_the_classifier_on_target_batches():
    """Through the real engine: the classifier is built, optimised and fed target batches every step."""
    torch.manual_seed(0)
    images = torch.randn(12, 1, 16, 16)
    targets = (images[:, 0] > 0.5).long()
    patients = np.array([f"p{i // 2}" for i in range(12)], dtype=object)
    data = ImageSet(images, targets, patients, np.array(["A"] * 12, dtype=object))
    target = ImageSet(images.exp(), targets, patients, np.array(["B"] * 12, dtype=object))
    unet = UNet2D(UNet2DParams(channels=[4, 8], num_res_units=0), SEG)
    dann = DANN(DANNParams(), SEG)
    settings = TrainSpec(epochs=2, batch_size=4, lr=1e-3, selection="last", device="cpu")
    Trainer(unet, [dann], Dice(DiceParams(), SEG), settings, torch.device("cpu")).fit(data, data, target)
    assert dann.last_domain_accuracy is not None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in dann.classifier.parameters())
    assert dann.last_lambda == pytest.approx(dann.lambda_at(1.0))


class CountingNet(TinyNet):
    """TinyNet recording the batch size of every training forward pass that builds a graph."""

    def __init__(self):
        super().__init__()
        self.batch_sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> ModelOutput:
        if self.training and torch.is_grad_enabled():
            self.batch_sizes.append(len(x))
        return super().forward(x)


class StepSpy(Mitigation):
    """Records the sizes in each TrainStep, whether its target output is the model's answer on its target
    images, and the batch size the task loss is given."""

    name = "step_spy"
    uses_target_images = True

    def __init__(self):
        super().__init__(NoParams(), SEG)
        self.steps: list[tuple[int, int, int, bool]] = []
        self.loss_sizes: list[int] = []

    def task_loss(self, default):
        def loss(logits, targets):
            self.loss_sizes.append(len(logits))
            return default(logits, targets)

        return loss

    def extra_loss(self, step: TrainStep) -> None:
        with torch.no_grad():
            alone = step.model(step.target_images).logits
        same = torch.allclose(alone, step.target_output.logits, atol=1e-6)
        self.steps.append((len(step.images), len(step.output.logits), len(step.target_output.logits), same))


@pytest.mark.parametrize("joint", [True, False])
def test_joint_batch_runs_source_and_target_through_the_model_in_one_pass(joint):
    """joint_batch: one forward pass over source ++ target, split back; the task loss sees the source part."""
    torch.manual_seed(0)
    net, spy = CountingNet(), StepSpy()
    dann = DANN(DANNParams(joint_batch=joint), SEG)
    settings = TrainSpec(epochs=1, batch_size=8, lr=1e-3, selection="last", device="cpu")
    trainer = Trainer(net, [dann, spy], Dice(DiceParams(), SEG), settings, torch.device("cpu"))
    trainer.fit(toy_set(n=16), toy_set(n=16), toy_set(n=16, seed=2, invert=True))
    assert net.batch_sizes == ([16, 16] if joint else [8, 8, 8, 8])
    assert spy.steps == [(8, 8, 8, True)] * 2  # the target part is the target images' output
    assert spy.loss_sizes == [8, 8]


def test_history_csv_has_the_domain_accuracy_and_lambda_per_epoch(registry, toy_recipe, tmp_path):
    toy_recipe["train"].update(seeds=1, epochs=3)
    toy_recipe["cohort"]["train_domains"] = ["A"]
    toy_recipe["sweep"] = {"mitigations": [[], [{"plugin": "dann"}]]}
    run = runner.run(toy_recipe, out=tmp_path / "run", registry=registry)
    history = pd.read_csv(run.path / "history.csv")
    assert list(history.columns) == HISTORY_COLUMNS + ["dann.domain_accuracy", "dann.lambda"]
    plain, adversarial = history[history["sweep_id"] == 0], history[history["sweep_id"] == 1]
    assert plain[["dann.domain_accuracy", "dann.lambda"]].isna().all().all()
    assert adversarial["dann.domain_accuracy"].between(0, 1).all()
    lambdas = adversarial["dann.lambda"].tolist()
    assert len(lambdas) == 3 and 0 < lambdas[0] < lambdas[1] < lambdas[2] < 1  # ganin's schedule, per-epoch means


def test_registered_through_entry_point():
    entry = Registry.from_entry_points().get("mitigation", "dann")
    assert entry.cls is DANN and "gradient reversal" in entry.description
