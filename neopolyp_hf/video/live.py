"""A live camera: frames come one by one, the newest wins, and lesions are tracked across them."""

from __future__ import annotations

import itertools
import threading

import numpy as np
from PIL import Image

from ..inference import Segmenter
from ..lesions import Lesion, outline_uncertain
from ..masks import class_percentages, overlay_mask
from .tracking import LesionTracker


class LiveSegmenter:
    """One camera's state: its tracker and a gate that drops frames while the model is busy.

    A frame that arrives while another is being segmented is dropped (`segment` returns None), and
    so is a frame that waited while a newer one arrived: lag never builds up, however slow the model.
    """

    def __init__(self, model: Segmenter, opacity: float = 0.5) -> None:
        config = model._inference_config
        self.model, self.opacity, self.colors = model, opacity, config["class_colors"]
        self.class_names = config["class_names"]
        self.tracker = LesionTracker(config["class_names"], config["uncertain_range"])
        self._busy = threading.Lock()
        self._tickets = itertools.count()
        self._newest = -1
        self.frames = self.dropped = 0

    def segment(self, rgb: np.ndarray) -> tuple[Image.Image, list[Lesion], dict[str, float]] | None:
        """The overlaid frame, its tracked lesions and the % of the frame in each polyp class (after
        tracking), or None where the frame was dropped."""
        ticket = next(self._tickets)
        self._newest = ticket
        if not self._busy.acquire(blocking=False):
            self.dropped += 1
            return None
        try:
            if ticket != self._newest:  # a newer frame came while this one waited
                self.dropped += 1
                return None
            prediction = self.model.predict(rgb)
            mask, lesions, _ = self.tracker.update(self.frames, prediction.image, prediction.mask, prediction.lesions)
            self.frames += 1
            overlay = np.array(overlay_mask(prediction.image, mask, self.colors, self.opacity))
            overlay = Image.fromarray(outline_uncertain(overlay, mask, lesions))
            return overlay, lesions, class_percentages(mask, self.class_names)
        finally:
            self._busy.release()
