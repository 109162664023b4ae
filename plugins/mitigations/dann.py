"""dann: domain-adversarial training (Ganin et al., JMLR 2016) with a gradient-reversal layer.

A domain classifier learns to tell source (0) from target (1) features; between it and the
model sits a gradient-reversal layer, so the same loss that trains the classifier pushes the
model's features towards being indistinguishable across scanners.

What scales what (libraries differ, so exactly): ``weight`` multiplies the domain loss, so the
classifier receives ``weight`` times its plain gradient; λ multiplies only the *reversed*
gradient at the layer, so the model's features receive ``-weight · λ`` times the gradient the
domain loss would give them without reversal. λ follows Ganin's schedule
λ(p) = λ_max · (2 / (1 + exp(-γ·p)) - 1) over training progress p, or stays at λ_max.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from harmonia import hookimpl
from harmonia.api import Mitigation, Model, Params, Task, TrainStep


class DANNParams(Params):
    lambda_max: float = Field(
        1.0, ge=0.0, le=100.0, description="λ at the end of the schedule: scales the reversed gradient, not the loss"
    )
    gamma: float = Field(10.0, gt=0.0, le=100.0, description="steepness γ of the ganin schedule")
    schedule: Literal["ganin", "constant"] = Field(
        "ganin", description="ganin: λ = λ_max·(2/(1+exp(-γ·p)) - 1) over training progress p; constant: λ = λ_max"
    )
    hidden: int = Field(64, ge=1, le=4096, description="hidden units of the domain classifier")
    weight: float = Field(1.0, ge=0.0, le=100.0, description="factor on the domain loss added to the task loss")


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


class DomainClassifier(nn.Module):
    """Global average pooling of a feature map ``[N, C, *spatial]`` (or ``[N, C]``) then an MLP to one logit."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = features.flatten(2).mean(2) if features.ndim > 2 else features
        return self.mlp(pooled).squeeze(1)


class DANN(Mitigation):
    """Domain-adversarial training: a domain classifier on the model's features behind gradient reversal.

    Needs unlabeled target-domain batches (``uses_target_images``): the engine draws one at every
    step. ``weight`` scales the domain loss; λ scales only the reversed gradient reaching the model
    (see the module docstring). ``last_lambda`` and ``last_domain_accuracy`` (on the last step's
    source + target batch) are kept for tests and logs.
    """

    name = "dann"
    Params = DANNParams
    uses_target_images = True

    def __init__(self, params: DANNParams, task: Task):
        super().__init__(params, task)
        self.reversal = GradientReversal()
        self.classifier: DomainClassifier | None = None
        self.last_lambda: float | None = None
        self._last_correct: torch.Tensor | None = None

    def lambda_at(self, progress: float) -> float:
        """λ at training progress ``progress`` in [0, 1]."""
        p = self.params
        if p.schedule == "constant":
            return p.lambda_max
        progress = min(max(progress, 0.0), 1.0)
        return p.lambda_max * (2.0 / (1.0 + math.exp(-p.gamma * progress)) - 1.0)

    def build(self, model: Model) -> nn.Module:
        self.classifier = DomainClassifier(model.feature_channels, self.params.hidden)
        return self.classifier

    def extra_loss(self, step: TrainStep) -> torch.Tensor:
        """``weight`` x BCE of the domain classifier on source (label 0) and target (label 1) features.

        The features pass the reversal at λ(progress) first: the classifier gets ``weight`` x its plain
        gradient, the model ``-weight · λ`` x the gradient it would get without reversal.
        """
        if step.target_output is None:
            raise RuntimeError(
                "dann needs a target-domain batch at every step (TrainStep.target_output is None); "
                "the engine draws one for mitigations with uses_target_images when other domains have training data"
            )
        if self.classifier is None:
            raise RuntimeError("dann: build(model) must run before extra_loss, to make the domain classifier")
        self.last_lambda = self.reversal.lambda_ = self.lambda_at(step.progress)
        source = self.classifier(self.reversal(step.output.features))
        target = self.classifier(self.reversal(step.target_output.features))
        logits = torch.cat([source, target])
        labels = torch.cat([torch.zeros_like(source), torch.ones_like(target)])
        self._last_correct = ((logits.detach() > 0) == labels.bool()).float().mean()
        return self.params.weight * F.binary_cross_entropy_with_logits(logits, labels)

    @property
    def last_domain_accuracy(self) -> float | None:
        """The domain classifier's accuracy on the last step's source + target batch (read lazily: no GPU sync per step)."""
        return None if self._last_correct is None else float(self._last_correct)


@hookimpl
def harmonia_mitigations():
    return [DANN]
