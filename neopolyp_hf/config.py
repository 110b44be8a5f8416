"""Validation of the model config: every field that inference needs, checked by name."""

from __future__ import annotations

import math
from typing import Any

KNOWN_ENCODER_WEIGHTS = (None, "imagenet")
CONFIG_FIELDS = (
    "encoder_name",
    "encoder_weights",
    "input_size",
    "mean",
    "std",
    "class_names",
    "class_colors",
    "head",
)
# Fields added after the first release: configs saved before them load with these values.
FIELD_DEFAULTS = {"head": "classes"}
# "classes": one logit per class. "polyp_then_class": a class-agnostic polyp logit, then logits
# of the polyp classes among polyp pixels (as NeoUNet and BlazeNeo), combined into class scores.
HEADS = ("classes", "polyp_then_class")


class ConfigError(ValueError):
    """A model config value that is missing, unknown or invalid; the message names the field."""


def _number_triple(field: str, value: Any) -> list[float]:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise ConfigError(f"config field '{field}' must be a list of 3 numbers, got {value!r}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        raise ConfigError(f"config field '{field}' must hold finite numbers, got {value!r}")
    return [float(v) for v in value]


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Return a normalized copy of `config`, or raise ConfigError naming the first bad field."""
    unknown = sorted(set(config) - set(CONFIG_FIELDS))
    if unknown:
        raise ConfigError(f"unknown config field(s) {unknown}; known fields are {list(CONFIG_FIELDS)}")
    config = {**FIELD_DEFAULTS, **config}
    missing = [f for f in CONFIG_FIELDS if f not in config]
    if missing:
        raise ConfigError(f"config is missing field(s) {missing}")

    encoder_name = config["encoder_name"]
    if not isinstance(encoder_name, str) or not encoder_name:
        raise ConfigError(f"config field 'encoder_name' must be a non-empty string, got {encoder_name!r}")
    if config["encoder_weights"] not in KNOWN_ENCODER_WEIGHTS:
        raise ConfigError(
            f"config field 'encoder_weights' must be one of {KNOWN_ENCODER_WEIGHTS}, got {config['encoder_weights']!r}"
        )

    size = config["input_size"]
    if isinstance(size, bool) or not isinstance(size, int) or not 32 <= size <= 2048 or size % 32:
        raise ConfigError(f"config field 'input_size' must be a multiple of 32 in [32, 2048], got {size!r}")

    mean = _number_triple("mean", config["mean"])
    std = _number_triple("std", config["std"])
    if any(s <= 0 for s in std):
        raise ConfigError(f"config field 'std' must be positive, got {std!r}")

    names = config["class_names"]
    if (
        not isinstance(names, (list, tuple))
        or len(names) < 2
        or not all(isinstance(n, str) and n for n in names)
        or len(set(names)) != len(names)
    ):
        raise ConfigError(f"config field 'class_names' must be 2 or more unique non-empty strings, got {names!r}")

    colors = config["class_colors"]
    if not isinstance(colors, (list, tuple)) or len(colors) != len(names):
        raise ConfigError(f"config field 'class_colors' must hold one colour per class ({len(names)}), got {colors!r}")
    for colour in colors:
        if (
            not isinstance(colour, (list, tuple))
            or len(colour) != 3
            or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in colour)
        ):
            raise ConfigError(f"config field 'class_colors' entries must be [r, g, b] in 0..255, got {colour!r}")

    if config["head"] not in HEADS:
        raise ConfigError(f"config field 'head' must be one of {list(HEADS)}, got {config['head']!r}")

    return {
        "encoder_name": encoder_name,
        "encoder_weights": config["encoder_weights"],
        "input_size": size,
        "mean": mean,
        "std": std,
        "class_names": list(names),
        "class_colors": [list(c) for c in colors],
        "head": config["head"],
    }
