"""The one definition of the model config: defaults, validation and the saved config.json."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .classes import CLASS_COLORS, CLASS_NAMES, DEFAULT_MIN_LESION_AREA
from .errors import ConfigError
from .pretrained import encoder_normalization

KNOWN_ENCODER_WEIGHTS = (None, "imagenet")
# "classes": one logit per class. "polyp_then_class": a class-agnostic polyp logit, then logits
# of the polyp classes among polyp pixels (as NeoUNet and BlazeNeo), combined into class scores.
HEADS = ("classes", "polyp_then_class")
# The second stage (neopolyp_hf.classifier): its architecture, crop geometry, fusion and calibration.
LESION_CLASSIFIER_ARCHITECTURES = ("resnet10", "resnet18", "lite0")  # neopolyp_hf.classifier.model
LESION_CLASSIFIER_DEFAULTS = {
    "architecture": "resnet10",
    "crop_size": 128,  # px: the crop's side after resizing
    "margin": 0.25,  # context on each side, as a share of the lesion box's longer side
    "fusion_weight": 0.5,  # 0: the segmenter's P(neoplastic | polyp) alone, 1: the classifier's alone
    "temperature": 1.0,  # the fused log-odds are divided by it (fitted on the run's held-out split)
}


@dataclass(frozen=True)
class ModelConfig:
    """Everything inference needs. The classes are the competition's three, fixed; the config
    records them so that a saved model describes itself."""

    encoder_name: str = "resnet34"
    encoder_weights: str | None = None
    input_size: int = 256
    # Per-channel normalization of pixels in [0, 1]; None: what the encoder's weights were trained with
    # (`neopolyp_hf.pretrained.encoder_normalization`). A saved config always holds the numbers.
    mean: list[float] | None = None
    std: list[float] | None = None
    class_names: list[str] = field(default_factory=lambda: list(CLASS_NAMES))
    class_colors: list[list[int]] = field(default_factory=lambda: [list(c) for c in CLASS_COLORS])
    head: str = "classes"
    # A lesion whose mean P(neoplastic) / P(polyp) falls in [low, high] is flagged "uncertain".
    uncertain_range: list[float] = field(default_factory=lambda: [0.35, 0.65])
    # The second stage's settings (LESION_CLASSIFIER_DEFAULTS' keys), or None for a one-stage model.
    lesion_classifier: dict[str, Any] | None = None
    # Polyp regions smaller than this (pixels of the original frame) are not listed as lesions or tracked;
    # their pixels stay in the mask. See neopolyp_hf.classes.DEFAULT_MIN_LESION_AREA for how it was chosen.
    min_lesion_area: int = DEFAULT_MIN_LESION_AREA
    # The segmenter's lesion call, calibrated: its P(neoplastic | polyp) divided in log-odds by this, fitted
    # on the run's held-out lesions (train.py; 1: as the segmenter says). A second stage has its own.
    lesion_temperature: float = 1.0

    # Fields added after the first release: a config.json saved before them may omit them.
    ADDED_FIELDS = ("head", "uncertain_range", "lesion_classifier", "min_lesion_area", "lesion_temperature")

    def __post_init__(self) -> None:
        if not isinstance(self.encoder_name, str) or not self.encoder_name:
            raise ConfigError(f"config field 'encoder_name' must be a non-empty string, got {self.encoder_name!r}")
        if self.encoder_weights not in KNOWN_ENCODER_WEIGHTS:
            raise ConfigError(
                f"config field 'encoder_weights' must be one of {KNOWN_ENCODER_WEIGHTS}, got {self.encoder_weights!r}"
            )
        size = self.input_size
        if isinstance(size, bool) or not isinstance(size, int) or not 32 <= size <= 2048 or size % 32:
            raise ConfigError(f"config field 'input_size' must be a multiple of 32 in [32, 2048], got {size!r}")
        default_mean, default_std = encoder_normalization(self.encoder_name, self.encoder_weights)
        object.__setattr__(self, "mean", _number_triple("mean", default_mean if self.mean is None else self.mean))
        object.__setattr__(self, "std", _number_triple("std", default_std if self.std is None else self.std))
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"config field 'std' must be positive, got {self.std!r}")
        if list(self.class_names) != list(CLASS_NAMES):
            raise ConfigError(f"config field 'class_names' must be {list(CLASS_NAMES)}, got {self.class_names!r}")
        colors = [list(c) if isinstance(c, (list, tuple)) else c for c in self.class_colors]
        if colors != [list(c) for c in CLASS_COLORS]:
            raise ConfigError(
                f"config field 'class_colors' must be the competition's {[list(c) for c in CLASS_COLORS]}, "
                f"got {self.class_colors!r}"
            )
        object.__setattr__(self, "class_names", list(CLASS_NAMES))
        object.__setattr__(self, "class_colors", colors)
        if self.head not in HEADS:
            raise ConfigError(f"config field 'head' must be one of {list(HEADS)}, got {self.head!r}")
        bounds = self.uncertain_range
        if (
            not isinstance(bounds, (list, tuple))
            or len(bounds) != 2
            or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
            or not 0.0 <= bounds[0] <= bounds[1] <= 1.0
        ):
            raise ConfigError(
                f"config field 'uncertain_range' must be [low, high] with 0 <= low <= high <= 1, got {bounds!r}"
            )
        object.__setattr__(self, "uncertain_range", [float(b) for b in bounds])
        if self.lesion_classifier is not None:
            object.__setattr__(self, "lesion_classifier", _lesion_classifier_settings(self.lesion_classifier))
        area = self.min_lesion_area
        if isinstance(area, bool) or not isinstance(area, int) or area < 0:
            raise ConfigError(f"config field 'min_lesion_area' must be a whole number of pixels >= 0, got {area!r}")
        temperature = self.lesion_temperature
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0.05 <= temperature <= 20:
            raise ConfigError(f"config field 'lesion_temperature' must be a number in [0.05, 20], got {temperature!r}")
        object.__setattr__(self, "lesion_temperature", float(temperature))

    @classmethod
    def from_dict(cls, values: dict[str, Any], saved: bool = False) -> ModelConfig:
        """Build from a dict; unknown fields are refused by name, and with `saved` (a config.json)
        so are missing ones, except fields added after the first release."""
        if not isinstance(values, dict):
            raise ConfigError(f"a config must be a JSON object, got {type(values).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown config field(s) {unknown}; known fields are {known}")
        missing = [f for f in known if f not in values and f not in cls.ADDED_FIELDS] if saved else []
        if missing:
            raise ConfigError(f"config is missing field(s) {missing}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able dict saved as config.json."""
        return asdict(self)


def _number_triple(name: str, value: Any) -> list[float]:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise ConfigError(f"config field '{name}' must be a list of 3 numbers, got {value!r}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        raise ConfigError(f"config field '{name}' must hold finite numbers, got {value!r}")
    return [float(v) for v in value]


def _lesion_classifier_settings(value: Any) -> dict[str, Any]:
    """The second stage's settings, validated field by field; missing ones take their defaults."""
    name = "config field 'lesion_classifier'"
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be an object or null, got {value!r}")
    unknown = sorted(set(value) - set(LESION_CLASSIFIER_DEFAULTS))
    if unknown:
        raise ConfigError(f"{name} has unknown key(s) {unknown}; known keys are {list(LESION_CLASSIFIER_DEFAULTS)}")
    settings = {**LESION_CLASSIFIER_DEFAULTS, **value}
    if settings["architecture"] not in LESION_CLASSIFIER_ARCHITECTURES:
        raise ConfigError(f"{name}: 'architecture' must be one of {list(LESION_CLASSIFIER_ARCHITECTURES)}")
    size = settings["crop_size"]
    if isinstance(size, bool) or not isinstance(size, int) or not 32 <= size <= 512:
        raise ConfigError(f"{name}: 'crop_size' must be an integer in [32, 512], got {size!r}")
    checks = (("margin", 0.0, 2.0), ("fusion_weight", 0.0, 1.0), ("temperature", 0.05, 20.0))
    for key, low, high in checks:
        number = settings[key]
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not low <= number <= high:
            raise ConfigError(f"{name}: '{key}' must be a number in [{low}, {high}], got {number!r}")
        settings[key] = float(number)
    return settings
