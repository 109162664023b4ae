"""A vendor probe (Biondetti et al., "Name that manufacturer", shared seed 002): a small classifier trained to name
the scanner domain of an image, and how well it does.

If a shallow network can tell the scanners apart, the images carry each scanner's signature; a harmoniser that
works leaves the probe at chance. This module holds the probe itself, independent of the protocol:

- :class:`ProbeNet`, seed 002's shallow CNN on 2-D inputs, and :class:`LinearProbe` for feature vectors;
- :func:`probe_inputs`: a volume becomes three of its slices drawn at random and stacked as channels (seed
  002), and intensities are scaled to [0, 1] through a fixed window (CT in HU) or each image's own min-max;
- :func:`fit_probe`: Adam, binary cross-entropy on one logit (two domains) or cross-entropy on one logit per
  domain, keeping the epoch with the best *validation* AUROC; deterministic from a seed;
- :func:`domain_scores`: domain AUROC, balanced accuracy and each domain's recall, with 95% percentile
  intervals from a bootstrap over patients (a patient's images go together), stratified by domain.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from harmonia.api import Predictions, Task
from harmonia.classification import scored_units
from harmonia.intensity import window_to_unit

log = logging.getLogger(__name__)

#: filters of the CNN's three blocks (seed 002)
FILTERS = (32, 64, 128)
#: added to an image's intensity range so that a constant image scales to 0 instead of NaN
EPS = 1e-8


# --------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------


def logit_count(domains: int) -> int:
    """One logit for two domains (sigmoid), one per domain for more (softmax)."""
    if domains < 2:
        raise ValueError(f"a vendor probe needs at least two domains, got {domains}")
    return 1 if domains == 2 else domains


class ProbeNet(nn.Module):
    """Seed 002's shallow CNN: three blocks of 3×3 convolution → batch norm → ReLU → 2×2 max-pool (32, 64, 128
    filters), then global average pooling and one dense layer giving :func:`logit_count` logits.

    Seed 002 names no activation and not what feeds its dense layer; the ReLU and the global pooling (which
    takes any image size, with few weights) are ours. Inputs are at least 8×8 (three poolings). Batch norm
    keeps the plain mean of the batch statistics it sees (``momentum=None``), which :func:`fit_probe` recomputes
    after every epoch (see :func:`recompute_batch_norm`).
    """

    def __init__(self, in_channels: int, domains: int):
        super().__init__()
        widths = (in_channels, *FILTERS)
        self.blocks = nn.Sequential(
            *(
                nn.Sequential(
                    nn.Conv2d(c_in, c_out, 3, padding=1),
                    nn.BatchNorm2d(c_out, momentum=None),
                    nn.ReLU(),
                    nn.MaxPool2d(2),
                )
                for c_in, c_out in zip(widths, widths[1:])
            )
        )
        self.head = nn.Linear(FILTERS[-1], logit_count(domains))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x).mean(dim=(2, 3)))


class LinearProbe(nn.Module):
    """A linear classifier of feature vectors ``[N, F]`` (logistic regression), each feature standardised with
    the mean and sd of the training features it is built from."""

    def __init__(self, train_features: torch.Tensor, domains: int):
        super().__init__()
        self.register_buffer("mean", train_features.mean(0))
        self.register_buffer("scale", train_features.std(0).clamp_min(EPS))
        self.linear = nn.Linear(train_features.shape[1], logit_count(domains))
        nn.init.zeros_(self.linear.weight)  # logistic regression's start: every domain equally likely
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear((x - self.mean) / self.scale)


def seeded(make: Callable[[], nn.Module], seed: int) -> nn.Module:
    """``make()`` with its initial weights drawn from ``seed``, leaving torch's global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def probe_inputs(images: torch.Tensor, window: tuple[float, float] | None, rng: np.random.Generator) -> torch.Tensor:
    """The CNN's input for items ``[N, C, H, W]`` or volumes ``[N, 1, D, H, W]``: volumes become three random
    slices each (:func:`three_slices`), then intensities go to [0, 1] (:func:`unit_scale`)."""
    if images.ndim == 5:
        images = three_slices(images, rng)
    if images.ndim != 4:
        raise ValueError(f"a vendor probe takes [N, C, H, W] images or [N, 1, D, H, W] volumes, got {images.ndim}-D")
    return unit_scale(images.float(), window)


def three_slices(volumes: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """``[N, 1, D, H, W]`` -> ``[N, 3, H, W]``: for each volume three slices along D drawn at random (distinct
    when D >= 3) and stacked as channels in random order, so no stack follows the anatomy's order (seed 002)."""
    n, channels, depth = volumes.shape[:3]
    if channels != 1:
        raise ValueError(f"a vendor probe takes single-channel volumes, got {channels} channels")
    picks = np.stack([rng.choice(depth, size=3, replace=depth < 3) for _ in range(n)])
    return volumes[torch.arange(n)[:, None], 0, torch.from_numpy(picks)]


def unit_scale(images: torch.Tensor, window: tuple[float, float] | None) -> torch.Tensor:
    """Intensities in [0, 1]: clipped to ``window`` (native units, e.g. HU) when given, else each image's own
    min-max (all its channels together), which removes any per-image affine change of intensity.

    Seed 002 clipped head CT to level 40 / width 400 HU ([-160, 240]; the paper writes "window/level of 40/400")
    and mapped that to [-1, 1]; [0, 1] differs by an affine map, which the first convolution and its batch norm
    absorb (but for the zero padding at the borders).
    """
    if window is not None:
        return window_to_unit(images, window)
    flat = images.flatten(1)
    low, high = flat.min(1).values, flat.max(1).values
    shape = (-1,) + (1,) * (images.ndim - 1)
    return (images - low.view(shape)) / (high - low + EPS).view(shape)


def subsample(n: int, cap: int | None, rng: np.random.Generator) -> np.ndarray:
    """Positions of at most ``cap`` of ``n`` items drawn without replacement, in their order (all when no cap)."""
    if cap is None or n <= cap:
        return np.arange(n)
    return np.sort(rng.choice(n, size=cap, replace=False))


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@dataclass
class ProbeSet:
    """The probe's items of one split over every domain: its inputs, each item's domain (an index into
    ``domains``) and each item's patient."""

    inputs: torch.Tensor
    labels: torch.Tensor
    patients: np.ndarray
    domains: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def require_every_domain(self, what: str) -> None:
        """ValueError naming the first domain with no item here (the probe cannot learn or score it)."""
        counts = np.bincount(self.labels.numpy(), minlength=len(self.domains))
        if not counts.all():
            raise ValueError(f"vendor probe: the {what} items hold no item of domain {self.domains[counts.argmin()]}")


@dataclass(frozen=True)
class ProbeTraining:
    """How a probe trains: seed 002's Adam learning rate and batch size, a number of epochs, a seed and a device."""

    epochs: int
    seed: int
    lr: float = 5e-3
    batch_size: int = 32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


@dataclass(frozen=True)
class ProbeFit:
    """What training kept: the epoch (from 1) it selected, and the validation AUROC and loss at every epoch."""

    selected_epoch: int
    val_auroc: list[float]
    val_loss: list[float]


def domain_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on one logit (two domains), cross-entropy on one logit per domain (more)."""
    if logits.shape[1] == 1:
        return nn.functional.binary_cross_entropy_with_logits(logits[:, 0], labels.float())
    return nn.functional.cross_entropy(logits, labels)


@torch.no_grad()
def domain_probabilities(model: nn.Module, inputs: torch.Tensor, batch_size: int, device: torch.device) -> np.ndarray:
    """Each item's probability of every domain, ``[N, domains]`` float64 (two domains: 1 - sigmoid, sigmoid)."""
    model.eval()
    logits = torch.cat([model(chunk.to(device)).float().cpu() for chunk in inputs.split(batch_size)])
    if logits.shape[1] == 1:
        positive = torch.sigmoid(logits)
        return torch.cat([1 - positive, positive], 1).double().numpy()
    return torch.softmax(logits, 1).double().numpy()


@torch.no_grad()
def recompute_batch_norm(model: nn.Module, inputs: torch.Tensor, batch_size: int, device: torch.device) -> None:
    """Set every batch norm's statistics to the mean over batches of ``inputs`` at the current weights.

    Statistics gathered while training mix the weights of every step; after the few steps a small probe takes
    they are far enough from the final weights' that every item can fall on one side of the decision threshold
    (a perfect AUROC at chance balanced accuracy). Batch norms with ``momentum=None`` keep the plain mean.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for norm in norms:
        norm.reset_running_stats()
    model.train()
    for chunk in inputs.split(batch_size):
        model(chunk.to(device))


def fit_probe(model: nn.Module, train: ProbeSet, val: ProbeSet, settings: ProbeTraining) -> ProbeFit:
    """Train ``model`` to name each item's domain and keep the weights of the epoch with the best AUROC on ``val``,
    ties going to the lower validation loss: AUROC saturates at 1 early on an easy task, before the probe has
    learnt where to draw the line between domains. ``val`` is the only set selection sees; the batch order
    comes from ``settings.seed``."""
    train.require_every_domain("training")
    val.require_every_domain("validation")
    generator = torch.Generator().manual_seed(settings.seed)
    model.to(settings.device)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.lr)
    val_auroc: list[float] = []
    val_loss: list[float] = []
    kept: dict[str, torch.Tensor] = {}
    for _ in range(settings.epochs):
        model.train()
        for batch in torch.randperm(len(train), generator=generator).split(settings.batch_size):
            loss = domain_loss(model(train.inputs[batch].to(settings.device)), train.labels[batch].to(settings.device))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        recompute_batch_norm(model, train.inputs, settings.batch_size, settings.device)
        probabilities = domain_probabilities(model, val.inputs, settings.batch_size, settings.device)
        val_auroc.append(domain_auroc(val.labels.numpy(), probabilities))
        val_loss.append(log_loss(val.labels.numpy(), probabilities))
        if _best_epoch(val_auroc, val_loss) == len(val_auroc):
            kept = copy.deepcopy(model.state_dict())
    model.load_state_dict(kept)
    selected = _best_epoch(val_auroc, val_loss)
    log.debug(
        "vendor probe: epoch %d of %d kept, validation AUROC %.3f", selected, settings.epochs, val_auroc[selected - 1]
    )
    return ProbeFit(selected, val_auroc, val_loss)


def _best_epoch(auroc: list[float], loss: list[float]) -> int:
    """The epoch (from 1) of the highest AUROC, of those the lowest loss, of those the first."""
    return max(range(len(auroc)), key=lambda e: (auroc[e], -loss[e], -e)) + 1


def log_loss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The mean cross-entropy of the true domains' ``probabilities`` (clipped away from 0)."""
    return float(-np.log(probabilities[np.arange(len(labels)), labels].clip(min=EPS)).mean())


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeScore:
    """One probe metric: its value over ``n`` items, its bootstrap 95% interval (NaN without a bootstrap) and
    each patient's own value where one exists (a domain's recall)."""

    value: float
    low: float
    high: float
    n: int
    per_patient: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class DomainScores:
    """How well a probe names the domains of a test set: AUROC, balanced accuracy and each domain's recall."""

    auroc: ProbeScore
    balanced_accuracy: ProbeScore
    recall: dict[str, ProbeScore]


def domain_auroc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """ROC AUC of naming the domain from ``probabilities`` ``[N, domains]`` (every domain among ``labels``): of
    the second domain's probability for two domains, the one-vs-rest macro mean for more."""
    domains = probabilities.shape[1]
    if domains == 2:
        return float(roc_auc_score(labels, probabilities[:, 1]))
    return float(roc_auc_score(labels, probabilities, multi_class="ovr", average="macro", labels=np.arange(domains)))


def domain_scores(test: ProbeSet, probabilities: np.ndarray, resamples: int, rng: np.random.Generator) -> DomainScores:
    """The probe's metrics on ``test`` from its ``probabilities`` ``[N, domains]``; ``n`` counts items (the
    domain's, for a recall), and the most probable domain is the probe's answer.

    With ``resamples`` > 0 each metric gets the 2.5th and 97.5th percentiles of its values over that many
    resamples of the test patients with replacement (a patient's items go together), drawn within strata of
    the domains each patient was imaged in. The protocol splits each domain's patients on its own, so the test
    set's domain mix is fixed by design: every resample keeps each domain's number of patients and none lacks
    a domain (a plain bootstrap of two test patients per domain would lack one in one resample of eight), and a
    paired cohort's patient brings its items in every domain along.
    """
    test.require_every_domain("test")
    task = Task("classification", test.domains)
    predicted = torch.as_tensor(probabilities.argmax(1))
    predictions = Predictions(task, test.labels, predicted, test.patients, torch.as_tensor(probabilities))
    units = scored_units(predictions, task, "image", "vendor probe")
    values = _statistics(units.labels, units.probabilities)
    bounds = np.full((len(values), 2), math.nan)
    if resamples:
        strata = _strata(units.groups, units.labels)
        draws = [_resampled(units.labels, units.probabilities, units.groups, strata, rng) for _ in range(resamples)]
        bounds = np.percentile(np.stack(draws), [2.5, 97.5], axis=0).T
    counts = np.bincount(units.labels, minlength=len(test.domains))
    sizes = [len(units.labels)] * 2 + counts.tolist()
    recalls = (_patient_recall(units.labels, predicted.numpy(), test.patients, k) for k in range(len(counts)))
    scores = [
        ProbeScore(float(value), float(low), float(high), int(n), per_patient)
        for value, (low, high), n, per_patient in zip(values, bounds, sizes, [{}, {}, *recalls])
    ]
    return DomainScores(scores[0], scores[1], dict(zip(test.domains, scores[2:])))


def _statistics(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """AUROC, balanced accuracy (the mean recall over domains) and each domain's recall."""
    predicted = probabilities.argmax(1)
    recall = [np.mean(predicted[labels == k] == k) for k in range(probabilities.shape[1])]
    return np.array([domain_auroc(labels, probabilities), np.mean(recall), *recall])


def _strata(groups: list[np.ndarray], labels: np.ndarray) -> list[np.ndarray]:
    """The patients (positions in ``groups``, each patient's item positions) by the set of domains they have."""
    keys = [tuple(np.unique(labels[items])) for items in groups]
    return [np.flatnonzero([k == key for k in keys]) for key in dict.fromkeys(keys)]


def _resampled(
    labels: np.ndarray,
    probabilities: np.ndarray,
    groups: list[np.ndarray],
    strata: list[np.ndarray],
    rng: np.random.Generator,
) -> np.ndarray:
    """:func:`_statistics` of one resample of the patients, each stratum's with replacement."""
    patients = np.concatenate([rng.choice(stratum, size=len(stratum)) for stratum in strata])
    index = np.concatenate([groups[p] for p in patients])
    return _statistics(labels[index], probabilities[index])


def _patient_recall(labels: np.ndarray, predicted: np.ndarray, patients: np.ndarray, domain: int) -> dict[str, float]:
    """For each patient with items of ``domain``, the fraction of them the probe names correctly."""
    mine = labels == domain
    return {str(p): float(np.mean(predicted[mine & (patients == p)] == domain)) for p in np.unique(patients[mine])}
