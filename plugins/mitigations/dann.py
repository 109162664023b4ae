"""dann: domain-adversarial training (Ganin et al., JMLR 2016) with a gradient-reversal layer.

A domain classifier learns to tell source (0) from target (1) images by what the model makes of
them; between it and the model sits a gradient-reversal layer, so the same loss that trains the
classifier pushes the model towards representations that are indistinguishable across scanners.

What the classifier sees (``features``), always as one vector per image:

- ``pooled_mean``: the channel means of ``ModelOutput.features`` over space (a U-Net: its
  bottleneck, after affine-free InstanceNorm, which removes much of a scanner's appearance);
- ``pooled_mean_std``: the channel means and standard deviations of ``features`` over space
  (the "style" statistics of AdaIN);
- ``multilevel``: the means and standard deviations of every level in ``ModelOutput.levels`` (a
  U-Net: each encoder level, where appearance also travels to the decoder through the skip
  connections); needs a model that exposes levels;
- ``output``: the means and standard deviations of the softmax map (the output space, where a
  model that fails on another scanner shows it).

What scales what (libraries differ, so exactly): ``weight`` multiplies the domain loss, so the
classifier receives ``weight`` times its plain gradient; λ multiplies only the *reversed*
gradient at the layer, so the model receives ``-weight · λ`` times the gradient the domain loss
would give it without reversal. λ follows Ganin's schedule λ(p) = λ_max · (2 / (1 + exp(-γ·p)) - 1)
over training progress p, or stays at λ_max. With ``lambda_max: 0`` the classifier still learns
but nothing reaches the model: a probe of how separable the domains are.

Per epoch, ``history.csv`` gets ``dann.domain_accuracy`` (the classifier's accuracy on each step's
source + target batch, before that step's update, averaged over the epoch's steps; 0.5 is chance)
and ``dann.lambda`` (λ averaged over the epoch's steps).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from harmonia import hookimpl
from harmonia.api import Mitigation, Model, ModelOutput, Params, Task, TrainStep
from harmonia.errors import InputError

Features = Literal["pooled_mean", "pooled_mean_std", "multilevel", "output"]

#: keeps the standard deviation's gradient finite where a channel is constant
STD_EPS = 1e-6


class DANNParams(Params):
    lambda_max: float = Field(
        1.0,
        ge=0.0,
        le=100.0,
        description="λ at the end of the schedule: scales the reversed gradient into the model, not the loss",
    )
    gamma: float = Field(10.0, gt=0.0, le=100.0, description="steepness γ of the ganin schedule")
    schedule: Literal["ganin", "constant"] = Field(
        "ganin", description="ganin: λ = λ_max·(2/(1+exp(-γ·p)) - 1) over training progress p; constant: λ = λ_max"
    )
    features: Features = Field(
        "pooled_mean_std",
        description="what the domain classifier sees per image: channel means of the model's features "
        "(pooled_mean), their means and standard deviations (pooled_mean_std), means and standard "
        "deviations of every feature level the model exposes (multilevel), or of its softmax output (output)",
    )
    joint_batch: bool = Field(
        True,
        description="run source and target batches through the model as one concatenated batch (batch "
        "normalisation then sees both domains together); false: two separate passes",
    )
    hidden: int = Field(64, ge=1, le=4096, description="units of each of the domain classifier's two hidden layers")
    weight: float = Field(
        1.0,
        ge=0.0,
        le=100.0,
        description="factor on the domain loss added to the task loss (the classifier's gradient)",
    )


class _ReverseGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by -λ."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lambda_: float) -> torch.Tensor:
        ctx.lambda_ = lambda_
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.lambda_ * grad, None


def reverse_gradient(x: torch.Tensor, lambda_: float) -> torch.Tensor:
    """``x`` unchanged, with its gradient multiplied by ``-lambda_`` on the way back."""
    return _ReverseGradient.apply(x, lambda_)


class GradientReversal(nn.Module):
    """Gradient-reversal layer: identity forward, -λ·gradient backward; set ``lambda_`` as training goes."""

    def __init__(self, lambda_: float = 1.0):
        super().__init__()
        self.lambda_ = lambda_

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return reverse_gradient(x, self.lambda_)

    def extra_repr(self) -> str:
        return f"lambda_={self.lambda_}"


def pooled(t: torch.Tensor, with_std: bool = True) -> torch.Tensor:
    """``[N, C, *spatial]`` (or ``[N, C]``, one position) -> channel means over space ``[N, C]``,
    followed by the channel standard deviations when ``with_std`` (``[N, 2C]``); half precision is
    computed in float32."""
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    flat = t.reshape(len(t), t.shape[1], -1)
    if not with_std:
        return flat.mean(2)
    return torch.cat([flat.mean(2), (flat.var(2, correction=0) + STD_EPS).sqrt()], 1)


def discriminator_input(output: ModelOutput, features: Features) -> torch.Tensor:
    """The vector per image ``[N, D]`` the domain classifier sees under the ``features`` option."""
    if features == "pooled_mean":
        return pooled(output.features, with_std=False)
    if features == "pooled_mean_std":
        return pooled(output.features)
    if features == "multilevel":
        return torch.cat([pooled(level) for level in output.levels], 1)
    return pooled(output.logits.softmax(1))  # autocast runs softmax in float32


def discriminator_input_size(model: Model, features: Features) -> int:
    """``D`` of :func:`discriminator_input` for ``model``; an InputError for ``multilevel`` on a model without levels."""
    if features == "pooled_mean":
        return model.feature_channels
    if features == "pooled_mean_std":
        return 2 * model.feature_channels
    if features == "multilevel":
        if not model.level_channels:
            raise InputError(
                f"dann features: multilevel needs a model that exposes feature levels (Model.level_channels, "
                f"ModelOutput.levels); model {model.name} exposes none: use pooled_mean_std or output"
            )
        return 2 * sum(model.level_channels)
    return 2 * model.task.num_classes


class DomainClassifier(nn.Module):
    """An MLP with two hidden layers from the discriminator input ``[N, D]`` to one logit per image
    (target domain if > 0).

    It has no normalisation layer on purpose: batch or layer normalisation would make it
    indifferent to the *size* of the gap between source and target inputs, so the reversed
    gradient could no longer shrink the gap (measured: the adversarial effect vanished on a toy task).
    """

    def __init__(self, in_features: int, hidden: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x).squeeze(1)


class DANN(Mitigation):
    """Domain-adversarial training: a domain classifier on the model's features behind gradient reversal.

    Needs unlabeled target-domain batches (``uses_target_images``): the engine draws one at every
    step, and with ``joint_batch`` runs it through the model together with the source batch
    (``joint_forward``). It never sees target labels. ``weight`` scales the domain loss; λ scales
    only the reversed gradient reaching the model (see the module docstring). Per epoch it reports
    the classifier's mean accuracy and the mean λ (:meth:`epoch_metrics`); ``last_lambda`` and
    ``last_domain_accuracy`` (on the last step's source + target batch) are kept for tests.
    """

    name = "dann"
    Params = DANNParams
    uses_target_images = True

    def __init__(self, params: DANNParams, task: Task):
        super().__init__(params, task)
        self.joint_forward = params.joint_batch
        self.reversal = GradientReversal()
        self.classifier: DomainClassifier | None = None
        self.last_lambda: float | None = None
        self._last_correct: torch.Tensor | None = None
        self._epoch_correct: list[torch.Tensor] = []
        self._epoch_lambdas: list[float] = []

    def lambda_at(self, progress: float) -> float:
        """λ at training progress ``progress`` in [0, 1]."""
        p = self.params
        if p.schedule == "constant":
            return p.lambda_max
        progress = min(max(progress, 0.0), 1.0)
        return p.lambda_max * (2.0 / (1.0 + math.exp(-p.gamma * progress)) - 1.0)

    def build(self, model: Model) -> nn.Module:
        self.classifier = DomainClassifier(discriminator_input_size(model, self.params.features), self.params.hidden)
        return self.classifier

    def extra_loss(self, step: TrainStep) -> torch.Tensor:
        """``weight`` x BCE of the domain classifier on source (label 0) and target (label 1) images.

        The discriminator input passes the reversal at λ(progress) first: the classifier gets
        ``weight`` x its plain gradient, the model ``-weight · λ`` x the gradient it would get without reversal.
        """
        if step.target_output is None:
            raise RuntimeError(
                "dann needs a target-domain batch at every step (TrainStep.target_output is None); "
                "the engine draws one for mitigations with uses_target_images when other domains have training data"
            )
        if self.classifier is None:
            raise RuntimeError("dann: build(model) must run before extra_loss, to make the domain classifier")
        self.last_lambda = self.reversal.lambda_ = self.lambda_at(step.progress)
        source = discriminator_input(step.output, self.params.features)
        target = discriminator_input(step.target_output, self.params.features)
        logits = self.classifier(self.reversal(torch.cat([source, target])))
        labels = torch.cat([logits.new_zeros(len(source)), logits.new_ones(len(target))])
        self._last_correct = ((logits.detach() > 0) == labels.bool()).float().mean()
        self._epoch_correct.append(self._last_correct)
        self._epoch_lambdas.append(self.last_lambda)
        return self.params.weight * F.binary_cross_entropy_with_logits(logits, labels)

    def epoch_metrics(self) -> dict[str, float]:
        """``domain_accuracy`` and ``lambda``, each the mean over the steps since the last call (one GPU sync)."""
        if not self._epoch_lambdas:
            return {}
        metrics = {
            "domain_accuracy": float(torch.stack(self._epoch_correct).mean()),
            "lambda": sum(self._epoch_lambdas) / len(self._epoch_lambdas),
        }
        self._epoch_correct, self._epoch_lambdas = [], []
        return metrics

    @property
    def last_domain_accuracy(self) -> float | None:
        """The domain classifier's accuracy on the last step's source + target batch (read lazily: no GPU sync per step)."""
        return None if self._last_correct is None else float(self._last_correct)


@hookimpl
def harmonia_mitigations():
    return [DANN]
