"""The default training loss of each task kind: Dice + cross-entropy for segmentation, cross-entropy for classification.

A model may train with another loss by overriding :meth:`harmonia.api.Model.task_loss`, and a
mitigation may replace the model's with :meth:`harmonia.api.Mitigation.task_loss`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from harmonia.api import Task


def default_task_loss(task: Task) -> nn.Module:
    """Dice + cross-entropy for segmentation (MONAI), cross-entropy for classification."""
    if task.kind == "segmentation":
        return DiceCrossEntropy()
    return nn.CrossEntropyLoss()


class DiceCrossEntropy(nn.Module):
    """MONAI's Dice + cross-entropy on softmax logits and integer label maps ``[N, *spatial]``, computed in float32."""

    def __init__(self) -> None:
        from monai.losses import DiceCELoss  # MONAI takes seconds to import; only segmentation training needs it

        super().__init__()
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.loss(logits.float(), targets.unsqueeze(1))
