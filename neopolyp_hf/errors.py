"""The package's errors: one base, so that callers can catch every NeoPolyp problem at once."""

from __future__ import annotations


class NeoPolypError(Exception):
    """Base of every error NeoPolyp raises on purpose; the message names the file, field or source."""


class ConfigError(NeoPolypError, ValueError):
    """A model config value that is missing, unknown or invalid; the message names the field."""


class DataError(NeoPolypError, ValueError):
    """A problem with the dataset on disk; the message names the folder or file."""


class ImageLoadError(NeoPolypError, ValueError):
    """An input that cannot be read as an image, named in the message."""


class ModelSourceError(NeoPolypError, OSError):
    """A model folder or Hub repo that cannot be loaded; the message names the source."""


class VideoLoadError(NeoPolypError, ValueError):
    """A video that cannot be read (not a video, corrupt, empty, too large or too long), named in the message."""


class EncoderWeightsError(NeoPolypError, OSError):
    """Pretrained encoder weights that cannot be had (a missing package or download) or do not fit the encoder."""


class HubError(NeoPolypError, OSError):
    """The Hub cannot take a push: no token, a refused token, or no connection; the message says which."""
