"""The Space's settings: one frozen object read from the environment, checked by pydantic."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ByteSize, ConfigDict, Field, ValidationError

from ..errors import ConfigError
from ..preprocessing import DEFAULT_MAX_PIXELS

DEFAULT_MODEL = "neopolyp/neopolyp"
PREFIX = "NEOPOLYP_"
# What each kind of setting takes, in the words of the error a wrong value gets.
UNITS = {
    "max_pixels": "pixels (width x height)",
    "cache_seconds": "seconds",
    "queue_size": "requests",
    "max_output_mb": "megabytes (MB)",
    "max_sessions": "sessions",
    "max_video_seconds": "seconds",
}
SIZE_HELP = "a positive number of bytes, optionally with a unit (B, KB, MB, GB, KiB, MiB, GiB), e.g. 50MB"
PositiveCount = Annotated[int, Field(gt=0, strict=False)]


class SpaceSettings(BaseModel):
    """Everything the Space reads from its environment, each from `NEOPOLYP_<NAME>` (all optional).

    A limit is a positive finite number: `inf`, `nan`, zero, a negative number or text stop the start with
    the variable's name and what it takes, so no malformed value can switch a limit off.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = DEFAULT_MODEL  # a model folder, Hub repo id or .onnx file
    revision: str | None = None
    backend: Literal["auto", "torch", "onnx"] = "auto"  # auto: ONNX Runtime on a CPU, torch on CUDA
    precision: Literal["fp32", "bf16", "int8"] = "fp32"
    max_pixels: PositiveCount = DEFAULT_MAX_PIXELS
    max_file_size: Annotated[ByteSize, Field(gt=0)] = ByteSize(20_000_000)  # uploads larger are refused
    cache_seconds: PositiveCount = 300  # uploads and outputs older than this are deleted
    queue_size: PositiveCount = 16  # requests waiting beyond it get "queue full, try again"
    max_output_mb: PositiveCount = 64  # overlays, views and mask files kept for download, oldest deleted first
    max_sessions: PositiveCount = 200  # sessions kept in memory, least recently used dropped first
    max_video_seconds: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 60.0  # longer clips are refused
    examples: Path | None = None  # a folder of the operator's own example frames and clips

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> SpaceSettings:
        """Read `NEOPOLYP_*` from `environ` (default: os.environ); empty values count as unset.

        Raises:
            ConfigError: the first wrong setting, by its variable's name, with its value and what it takes.
        """
        environ = os.environ if environ is None else environ
        values = {
            name: environ[PREFIX + name.upper()] for name in cls.model_fields if environ.get(PREFIX + name.upper())
        }
        try:
            settings = cls(**values)
        except ValidationError as error:
            name = str(error.errors()[0]["loc"][0])
            variable, value = PREFIX + name.upper(), values[name]
            if name == "max_file_size":
                raise ConfigError(f"{variable}={value!r} is not a size: give {SIZE_HELP}") from None
            if name in UNITS:
                raise ConfigError(f"{variable}={value!r} must be a positive number of {UNITS[name]}") from None
            raise ConfigError(f"{variable}={value!r}: {error.errors()[0]['msg']}") from None
        if settings.examples is not None and not settings.examples.is_dir():
            raise ConfigError(f"{PREFIX}EXAMPLES '{settings.examples}' is not a folder")
        return settings
