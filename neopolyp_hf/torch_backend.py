"""The torch inference runtime of `NeoPolypUNet`: device, memory format and precision."""

from __future__ import annotations

import numpy as np
import torch

from .inference import Segmenter

INFERENCE_PRECISIONS = ("fp32", "bf16")


class TorchSegmenter(Segmenter):
    """`predict` for a torch module whose forward gives class scores; mixed into `NeoPolypUNet`."""

    inference_precision = "fp32"
    channels_last = False

    @property
    def device(self) -> torch.device:
        """The device that holds the model's weights."""
        return next(self.parameters()).device

    def optimize_for_inference(self, precision: str = "fp32"):
        """Eval mode and channels-last weights (oneDNN's fast convolution layout); `precision`
        "bf16" also runs the forward in bfloat16 autocast (CPUs with AVX512-BF16/AMX, GPUs)."""
        if precision not in INFERENCE_PRECISIONS:
            raise ValueError(f"precision must be one of {INFERENCE_PRECISIONS}, got {precision!r}")
        self.inference_precision, self.channels_last = precision, True
        return self.eval().to(memory_format=torch.channels_last)

    def _forward_numpy(self, batch: np.ndarray) -> np.ndarray:
        # Inference needs eval mode (batch-norm statistics). Setting it, never toggling it back,
        # keeps concurrent predict calls on one model free of races.
        if self.training:
            self.eval()
        device = self.device
        images = torch.from_numpy(batch).to(device)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.inference_precision == "bf16"),
        ):
            return self(images).float().cpu().numpy()

    def _classify_numpy(self, crops: np.ndarray) -> np.ndarray:
        classifier = getattr(self, "lesion_classifier", None)
        if classifier is None:
            raise RuntimeError("this model has no lesion classifier (config 'lesion_classifier' is null)")
        if self.training:
            self.eval()
        with torch.inference_mode():
            return classifier(torch.from_numpy(crops).to(self.device).float()).float().cpu().numpy()
