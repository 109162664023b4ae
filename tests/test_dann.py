"""dann: the reversal layer, the λ schedule, exactly which gradient reaches what, and that training
with it makes source and target features harder to tell apart."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harmonia.api import ImageSet, Model, ModelOutput, NoParams, Task, TrainStep
from harmonia.engine import Trainer
from harmonia.registry import Registry
from harmonia.settings import TrainSpec
from harmonia_plugins.evaluators.dice import Dice, DiceParams
from harmonia_plugins.mitigations.dann import DANN, DANNParams, GradientReversal, reverse_gradient
from harmonia_plugins.models.unet2d import UNet2D, UNet2DParams

SEG = Task("segmentation", ("background", "fg"))


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny: one thread beats several, which mostly wait on each other (badly so on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinyNet(Model):
    """A tiny conv net whose encoder's output is the features; logits are a 1x1 head on them."""

    name = "tiny"

    def __init__(self, encoder: nn.Module | None = None, channels: int = 6):
        super().__init__(NoParams(), SEG)
        if encoder is None:
            encoder = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, channels, 3, padding=1))
        self.encoder = encoder
        self.head = nn.Conv2d(channels, 2, 1)
        self.feature_channels = channels

    def forward(self, x: torch.Tensor) -> ModelOutput:
        features = self.encoder(x)
        return ModelOutput(self.head(features), features)


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


@pytest.mark.parametrize("weight, lambda_max, progress", [(1.0, 1.0, 0.3), (0.5, 2.0, 0.8), (2.0, 1.0, 0.0)])
def test_model_gets_minus_weight_lambda_times_plain_gradient_classifier_gets_weight_times(weight, lambda_max, progress):
    torch.manual_seed(0)
    net = TinyNet().double()
    dann = make_dann(net, weight=weight, lambda_max=lambda_max)
    dann.classifier.double()
    source, target = torch.randn(4, 1, 8, 8, dtype=torch.float64), torch.randn(3, 1, 8, 8, dtype=torch.float64) + 1
    net_params, clf_params = list(net.encoder.parameters()), list(dann.classifier.parameters())

    loss = dann.extra_loss(make_step(net, source, target, progress))
    grads = torch.autograd.grad(loss, net_params + clf_params)

    # the same domain loss written out here, without reversal: source labelled 0, target 1
    logits = torch.cat([dann.classifier(net(source).features), dann.classifier(net(target).features)])
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


def test_classifier_is_sized_from_the_model_and_reaches_a_unet_encoder():
    torch.manual_seed(0)
    unet = UNet2D(UNet2DParams(channels=[4, 8]), SEG)
    dann = make_dann(unet, hidden=5)
    assert dann.classifier.mlp[0].in_features == 8 and dann.classifier.mlp[0].out_features == 5
    dann.extra_loss(make_step(unet, torch.randn(2, 1, 16, 16), torch.randn(2, 1, 16, 16), progress=1.0)).backward()
    assert unet.net.model[0].conv.unit0.conv.weight.grad.abs().sum() > 0


def test_missing_target_batch_is_a_clear_error():
    net = TinyNet()
    dann = make_dann(net)
    with pytest.raises(RuntimeError, match="needs a target-domain batch"):
        dann.extra_loss(make_step(net, torch.randn(2, 1, 8, 8), None))
    assert DANN.uses_target_images and {"build", "extra_loss"} <= set(DANN.stages())


# -- behaviour --------------------------------------------------------------------------------------


def test_classifier_alone_learns_to_tell_source_from_target():
    """With λ = 0 only the classifier learns: on clearly different feature distributions it reaches ~1 accuracy."""
    torch.manual_seed(0)
    net = TinyNet(channels=4)
    dann = make_dann(net, schedule="constant", lambda_max=0.0)
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
    assert (dann.classifier(features_t) > 0).all() and (dann.classifier(features_s.detach()) < 0).all()


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
    net = TinyNet(nn.Conv2d(2, 4, 1), channels=4)
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
    assert adversarial_separability < plain_separability - 0.1  # 0.23 to 0.48 lower over seeds 0-9
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


def test_registered_through_entry_point():
    entry = Registry.from_entry_points().get("mitigation", "dann")
    assert entry.cls is DANN and "gradient reversal" in entry.description
