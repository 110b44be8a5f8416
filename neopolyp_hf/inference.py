"""Prediction shared by every backend: only the forward call differs (torch, ONNX Runtime)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import cv2
import numpy as np
from PIL import Image

from .classes import DEFAULT_MIN_LESION_AREA
from .classifier.stage import ClassifyFn, apply_second_stage
from .lesions import Lesion, find_lesions, harmonize_lesions, outline_uncertain, upsampled_box
from .masks import class_percentages, overlay_mask
from .preprocessing import DEFAULT_MAX_PIXELS, ImageInput, load_image, preprocess

# (N, 3, S, S) float32 normalized images -> (N, C, S, S) float32 logits.
ForwardFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class Prediction:
    """A segmentation at the input's original size, with its derived views (computed on first use)."""

    image: np.ndarray = field(repr=False)  # HxWx3 uint8, upright
    mask: np.ndarray = field(repr=False)  # HxW uint8 class indices
    scores: np.ndarray = field(repr=False)  # C x S x S class scores at model resolution (logits or log-probs)
    class_names: list[str]
    class_colors: list[list[int]]
    uncertain_range: tuple[float, float] = (0.35, 0.65)  # a lesion's P(neoplastic) in here is "uncertain"
    min_lesion_area: int = 0  # px of the original frame: smaller polyp regions are not listed as lesions
    lesion_temperature: float = 1.0  # calibrates each lesion's P(neoplastic | polyp), see find_lesions
    # The lesions as the second stage called them (fused with the segmenter); None: found from the mask.
    staged_lesions: list[Lesion] | None = field(default=None, repr=False)

    @cached_property
    def probabilities(self) -> np.ndarray:
        """C x H x W float32 class probabilities at the original size (bilinearly upsampled softmax;
        with TTA, the mean over the flips)."""
        height, width = self.mask.shape
        return _upsample(softmax(self.scores, axis=0), height, width)

    @cached_property
    def confidence(self) -> np.ndarray:
        """HxW probability of each pixel's class."""
        return np.take_along_axis(self.probabilities, self.mask[None].astype(np.intp), axis=0)[0]

    @cached_property
    def uncertainty(self) -> np.ndarray:
        """HxW float32 in [0, 1]: the entropy of the class probabilities over its maximum, log C.

        0 where one class is certain, 1 at an even split. With TTA the probabilities are the mean
        over the flips, so flips that disagree raise it too (the entropy of a mean is at least
        the mean of the entropies). Computed at the model's resolution, then upsampled.
        """
        height, width = self.mask.shape
        return np.clip(_upsample(normalized_entropy(self.scores)[None], height, width)[0], 0.0, 1.0)

    @cached_property
    def class_counts(self) -> np.ndarray:
        """Pixels of each class in the mask."""
        # One comparison per class: several times faster than a bincount over a full frame.
        return np.array([np.count_nonzero(self.mask == i) for i in range(len(self.class_names))])

    @cached_property
    def percentages(self) -> dict[str, float]:
        """Percentage of all image pixels in each polyp class."""
        return class_percentages(self.mask, self.class_names)

    @cached_property
    def polyp_percentages(self) -> dict[str, float]:
        """Share of the polyp area (all non-background pixels) held by each polyp class, in %."""
        counts = self.class_counts[1:]
        total = float(counts.sum())
        return {
            name: (100.0 * float(c) / total if total else 0.0)
            for name, c in zip(self.class_names[1:], counts, strict=True)
        }

    @cached_property
    def lesions(self) -> list[Lesion]:
        """Connected polyp regions: area, class, mean confidence, P(neoplastic | polyp) and the flag
        (with a second stage, the fused call)."""
        if self.staged_lesions is not None:
            return self.staged_lesions
        # Model-resolution probabilities: find_lesions upsamples each lesion's box only.
        return find_lesions(
            self.mask,
            softmax(self.scores, axis=0),
            self.class_names,
            self.uncertain_range,
            self.min_lesion_area,
            self.lesion_temperature,
        )

    @cached_property
    def overlay(self) -> Image.Image:
        """The input with the class colours blended in at 50% opacity."""
        return self.render_overlay(0.5)

    def render_overlay(self, alpha: float) -> Image.Image:
        """The input with the class colours blended in at opacity `alpha`, uncertain lesions outlined in yellow."""
        overlay = np.array(overlay_mask(self.image, self.mask, self.class_colors, alpha))
        return Image.fromarray(outline_uncertain(overlay, self.mask, self.lesions))

    def render_uncertainty(self, alpha: float = 0.6) -> Image.Image:
        """The uncertainty as a heat map (dark: sure, bright: unsure) blended over the input."""
        return uncertainty_view(self.image, uncertainty_levels(self.scores), alpha)


def normalized_entropy(scores: np.ndarray) -> np.ndarray:
    """S x S float32 in [0, 1]: the entropy of softmax(scores) over its maximum, log C."""
    probabilities = np.clip(softmax(scores, axis=0), 1e-12, 1.0)
    entropy = -(probabilities * np.log(probabilities)).sum(axis=0) / np.log(len(probabilities))
    return entropy.astype(np.float32)


def uncertainty_levels(scores: np.ndarray) -> np.ndarray:
    """`normalized_entropy` at the model's resolution as uint8 levels (0 sure, 255 an even split):
    a few kB to keep, enough for the heat map."""
    return np.round(np.clip(normalized_entropy(scores), 0.0, 1.0) * 255).astype(np.uint8)


def uncertainty_view(image: np.ndarray, levels: np.ndarray, alpha: float = 0.6) -> Image.Image:
    """Model-resolution uncertainty `levels` as a heat map, upsampled and blended over `image`."""
    height, width = image.shape[:2]
    full = cv2.resize(levels, (width, height), interpolation=cv2.INTER_LINEAR)
    return Image.fromarray(cv2.addWeighted(image, 1.0 - alpha, uncertainty_colors(full), alpha, 0.0))


def uncertainty_colors(levels: np.ndarray) -> np.ndarray:
    """uint8 uncertainty levels (0: sure, 255: unsure) -> RGB uint8 of the inferno colour map, the
    uncertainty view's colours (and its scale's)."""
    return cv2.cvtColor(
        cv2.applyColorMap(np.ascontiguousarray(levels, np.uint8), cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB
    )


def _upsample(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """C x S x S -> C x height x width, bilinear."""
    channels_last = np.ascontiguousarray(maps.transpose(1, 2, 0), dtype=np.float32)
    full = cv2.resize(channels_last, (width, height), interpolation=cv2.INTER_LINEAR).reshape(height, width, -1)
    return np.ascontiguousarray(full.transpose(2, 0, 1))


def softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    """Numerically stable softmax."""
    shifted = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


def flip_tta_batch(batch: np.ndarray) -> np.ndarray:
    """Stack the identity, horizontal and vertical flips of an (N, 3, S, S) batch: (3N, 3, S, S)."""
    return np.concatenate([batch, batch[..., ::-1], batch[..., ::-1, :]], axis=0)


def class_scores(forward: ForwardFn, batch: np.ndarray, tta: bool = False) -> np.ndarray:
    """(N, C, S, S) scores whose argmax is the prediction: logits, or with `tta` the log of
    the softmax averaged over the identity and the two flips."""
    if not tta:
        return forward(np.ascontiguousarray(batch))
    n = batch.shape[0]
    probs = softmax(forward(np.ascontiguousarray(flip_tta_batch(batch))))
    mean = (probs[:n] + probs[n : 2 * n][..., ::-1] + probs[2 * n :][..., ::-1, :]) / 3.0
    return np.log(np.maximum(mean, 1e-12))


def scores_to_mask(scores: np.ndarray, height: int, width: int) -> np.ndarray:
    """Argmax of the scores upsampled bilinearly to (height, width).

    Bilinear interpolation is linear, so the argmax of the upsampled scores equals that of the
    upsampled differences to class 0: one channel fewer to resize, and comparisons instead of
    a full argmax. A pixel can be polyp only where one of its (up to four) source pixels has a
    positive difference, so only the box around those is upsampled, often a small part of the frame.
    """
    differences = np.ascontiguousarray(scores[1:] - scores[:1], dtype=np.float32)
    box = _foreground_box((differences > 0).any(axis=0), height, width)
    mask = np.zeros((height, width), np.uint8)
    if box is None:
        return mask
    rows, cols = box
    if (rows.stop - rows.start) * (cols.stop - cols.start) > height * width // 2:
        full = cv2.resize(differences.transpose(1, 2, 0), (width, height), interpolation=cv2.INTER_LINEAR)
        return _mask_from_differences(full.reshape(height, width, -1))
    inside = upsampled_box(differences, height, width, box)  # (C-1, h, w)
    mask[box] = _mask_from_differences(inside.transpose(1, 2, 0))
    return mask


def _foreground_box(candidates: np.ndarray, height: int, width: int) -> tuple[slice, slice] | None:
    """The full-size rows and columns whose bilinear sources (at the model's size) include a
    candidate pixel, with a pixel to spare; None without candidates."""
    rows, cols = np.flatnonzero(candidates.any(axis=1)), np.flatnonzero(candidates.any(axis=0))
    if rows.size == 0:
        return None

    def span(first: int, last: int, size: int, full: int) -> slice:
        # Full pixel y reads source rows floor(s) and floor(s) + 1, s = (y + 0.5) * size / full - 0.5.
        start = int(np.floor((first - 0.5) * full / size - 0.5)) - 1
        stop = int(np.ceil((last + 1.5) * full / size - 0.5)) + 1
        return slice(max(0, start), min(full, stop))

    return span(rows[0], rows[-1], candidates.shape[0], height), span(cols[0], cols[-1], candidates.shape[1], width)


def _mask_from_differences(full: np.ndarray) -> np.ndarray:
    """(h, w, C-1) upsampled differences to class 0 -> (h, w) uint8 class indices."""
    if full.shape[2] == 2:  # the three-class model: two comparisons
        first, second = full[..., 0], full[..., 1]
        mask = np.where(first >= second, np.uint8(1), np.uint8(2))
        mask[(first <= 0) & (second <= 0)] = 0
        return mask
    with_background = np.concatenate([np.zeros((*full.shape[:2], 1), np.float32), full], axis=2)
    return with_background.argmax(axis=2).astype(np.uint8)


def predict_images(
    forward: ForwardFn,
    config: dict[str, Any],
    images: Sequence[ImageInput],
    *,
    tta: bool = False,
    lesion_consistency: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    classify: ClassifyFn | None = None,
) -> list[Prediction]:
    """Load, preprocess, run `forward` once on the whole batch, and postprocess each image; where the
    config has a `lesion_classifier` and `classify` is given, the second stage calls each lesion's class."""
    rgbs = [load_image(image, max_pixels=max_pixels) for image in images]
    batch = np.stack([preprocess(rgb, config["input_size"], config["mean"], config["std"]).numpy() for rgb in rgbs])
    scores = class_scores(forward, batch, tta=tta)
    predictions = []
    # An ONNX export made before the field existed has no min_lesion_area in its metadata.
    min_area = config.get("min_lesion_area", DEFAULT_MIN_LESION_AREA)
    for rgb, image_scores in zip(rgbs, scores, strict=True):
        mask = scores_to_mask(image_scores, rgb.shape[0], rgb.shape[1])
        if lesion_consistency:
            mask = harmonize_lesions(mask)
        staged = None
        if classify is not None and config.get("lesion_classifier"):
            probabilities = softmax(image_scores, axis=0)
            found = find_lesions(mask, probabilities, config["class_names"], config["uncertain_range"], min_area)
            mask, staged = apply_second_stage(classify, rgb, mask, found, config, tta=tta)
        predictions.append(
            Prediction(
                image=rgb,
                mask=mask,
                scores=image_scores,
                class_names=list(config["class_names"]),
                class_colors=[list(c) for c in config["class_colors"]],
                uncertain_range=tuple(config["uncertain_range"]),
                min_lesion_area=min_area,
                lesion_temperature=float(config.get("lesion_temperature", 1.0)),  # older exports: none
                staged_lesions=staged,
            )
        )
    return predictions


class Segmenter:
    """`predict` and `predict_batch` for a backend that supplies `_forward_numpy` and `_inference_config`
    (and `_classify_numpy` for a model with a second stage)."""

    def _forward_numpy(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _classify_numpy(self, crops: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @property
    def has_second_stage(self) -> bool:
        """Whether the model classes each found lesion again from a crop of the original frame."""
        return bool(self._inference_config.get("lesion_classifier"))

    @property
    def _inference_config(self) -> dict[str, Any]:
        raise NotImplementedError

    def predict(
        self,
        image: ImageInput,
        *,
        tta: bool = False,
        lesion_consistency: bool = True,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        second_stage: bool = True,
    ) -> Prediction:
        """Segment one image (path, bytes, PIL image or array) at its original size; `second_stage`
        False skips the lesion classifier of a two-stage model (the segmenter's own calls)."""
        return self.predict_batch(
            [image], tta=tta, lesion_consistency=lesion_consistency, max_pixels=max_pixels, second_stage=second_stage
        )[0]

    def predict_batch(self, images: Sequence[ImageInput], second_stage: bool = True, **kwargs) -> list[Prediction]:
        """Segment several images with one forward call (keyword arguments as `predict`)."""
        classify = self._classify_numpy if second_stage and self.has_second_stage else None
        return predict_images(self._forward_numpy, self._inference_config, images, classify=classify, **kwargs)
