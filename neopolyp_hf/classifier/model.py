"""The lesion classifier: a narrow torchvision ResNet (one basic block per stage) with one logit out."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

# Blocks per stage. "resnet10" is ResNet-18 with half its blocks: about 0.3 GFLOPs a 128 px crop,
# small enough to train inside the CPU protocol and to add little to a prediction.
ARCHITECTURES = {"resnet10": [1, 1, 1, 1], "resnet18": [2, 2, 2, 2]}


class LesionClassifier(nn.Module):
    """Normalized crops (N, 3, S, S) -> (N,) logits of P(neoplastic | polyp)."""

    def __init__(self, architecture: str = "resnet10") -> None:
        super().__init__()
        self.net = ResNet(BasicBlock, ARCHITECTURES[architecture], num_classes=1)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """Logits, one per crop."""
        return self.net(crops)[:, 0]
