"""PIL image -> tensor transforms in the form a timm model expects (channels, size, normalisation)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..channels import adapt_channel_stats

__all__ = ["AUGMENTATIONS", "ConvertMode", "image_transform", "resolve_data_config"]

AUGMENTATIONS: tuple[str, ...] = ("timm", "light", "none")
"""Training augmentations of :func:`image_transform`."""

_CHANNEL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
_TRANSFORM_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


class ConvertMode:
    """Convert a PIL image (or an array) to the PIL mode ``mode``; picklable, unlike a lambda.

    Images of more than 8 bits per value are first brought to 8 bits by their real range (PIL's own conversion
    clips them, which turns a 16-bit image almost white): 16-bit images (modes ``I;16*``, ``uint16`` arrays) from
    0..65535; 32-bit integer images (mode ``I``, other integer arrays) from 0..255 when their values fit, else
    from 0..65535; float images (mode ``F``, float arrays) from 0..1 when their values fit, else from 0..255.
    Values outside these ranges are an error: convert such images to 8 bits with a transform of your own.

    Args:
        mode: a PIL mode, e.g. ``"RGB"`` or ``"L"``.
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, image: Image.Image) -> Image.Image:
        if not isinstance(image, Image.Image):
            values = np.asarray(image)
            values = values if values.dtype == np.uint8 else _to_8_bits(values, f"a {values.dtype} array")
            image = Image.fromarray(values)
        elif image.mode.startswith("I;16") or image.mode in ("I", "F"):
            image = Image.fromarray(_to_8_bits(np.asarray(image), f"an image of mode {image.mode!r}"))
        return image if image.mode == self.mode else image.convert(self.mode)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode!r})"


def _to_8_bits(values: np.ndarray, what: str) -> np.ndarray:
    """``values`` as ``uint8``, scaled from their range (see :class:`ConvertMode`)."""
    if values.dtype == np.bool_:
        return values.astype(np.uint8) * 255
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if values.dtype.kind == "u" and values.itemsize == 2:
        top = 65535.0
    elif values.dtype.kind in "iu":
        top = 255.0 if high <= 255 else 65535.0
    elif values.dtype.kind == "f":
        top = 1.0 if high <= 1 else 255.0
    else:
        raise ValueError(f"Cannot convert {what} to an image: values of type {values.dtype}.")
    if not (low >= 0 and high <= top):  # also NaN
        raise ValueError(
            f"Cannot convert {what} with values in [{low:g}, {high:g}] to 8 bits: they exceed 0..{top:g}. Scale the "
            "images to 8 bits with a transform of your own before this one."
        )
    return np.round(values.astype(np.float64) * (255.0 / top)).astype(np.uint8)


class _ResizeNotice:
    """Pass a PIL image through; warn once per process when its size differs from the model's input size."""

    announced: ClassVar[bool] = False

    def __init__(self, input_size: tuple[int, int, int]) -> None:
        self.input_size = input_size

    def __call__(self, image: Image.Image) -> Image.Image:
        channels, height, width = self.input_size
        if not _ResizeNotice.announced and image.size != (width, height):
            _ResizeNotice.announced = True
            image_width, image_height = image.size
            warnings.warn(
                f"Images are resized from their size {image_width}x{image_height} (width x height; the "
                f"first such image) to the model's input size {width}x{height}. To keep the images' size, "
                "create the model with timm.create_model(..., pretrained_cfg_overlay=dict(input_size="
                f"({channels}, {image_height}, {image_width}))). This is announced once per process.",
                UserWarning,
            )
        return image

    def __repr__(self) -> str:
        return f"{type(self).__name__}(input_size={self.input_size})"


def _model_in_chans(model: nn.Module) -> int | None:
    """Input channels of the model's first conv (``pretrained_cfg["first_conv"]``), else ``in_chans``."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    first_conv = cfg.get("first_conv")
    if isinstance(first_conv, str):
        try:
            channels = getattr(model.get_submodule(first_conv), "in_channels", None)
        except AttributeError:
            channels = None
        if isinstance(channels, int):
            return channels
    channels = getattr(model, "in_chans", None)
    return channels if isinstance(channels, int) else None


def resolve_data_config(model_or_data_config: nn.Module | Mapping[str, Any]) -> dict[str, Any]:
    """The timm data config: ``input_size``, ``interpolation``, ``mean``, ``std``, ``crop_pct``, ...

    From a model: ``timm.data.resolve_data_config({}, model=model)``, with the channel count corrected to the
    model's first conv (timm keeps the pretrained 3 channels for e.g. ``create_model(..., in_chans=1)``).
    From a dict: its entries, with timm's defaults for the missing ones (``input_size`` is required).
    ``mean``/``std`` are adapted to the channel count by :func:`lkd_hf.channels.adapt_channel_stats`.

    Args:
        model_or_data_config: a timm model, or a data config dict with at least ``input_size`` (C, H, W).

    Raises:
        ValueError: a dict without ``input_size``, or an ``input_size`` that is not (C, H, W).
        TypeError: neither a model nor a dict.
    """
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from timm.data import resolve_data_config as timm_resolve_data_config
    from timm.data.transforms_factory import DEFAULT_CROP_PCT

    if isinstance(model_or_data_config, nn.Module):
        config = dict(timm_resolve_data_config({}, model=model_or_data_config))
        channels = _model_in_chans(model_or_data_config)
        if channels is not None and channels != config["input_size"][0]:
            config["input_size"] = (channels, *config["input_size"][1:])
    elif isinstance(model_or_data_config, Mapping):
        config = {k: v for k, v in model_or_data_config.items() if k in _TRANSFORM_KEYS}
        if "input_size" not in config:
            raise ValueError(
                f"A data config needs an 'input_size' (C, H, W); got {dict(model_or_data_config)}."
            )
        config.setdefault("interpolation", "bilinear")
        config.setdefault("mean", IMAGENET_DEFAULT_MEAN)
        config.setdefault("std", IMAGENET_DEFAULT_STD)
        config.setdefault("crop_pct", DEFAULT_CROP_PCT)
        config.setdefault("crop_mode", "center")
    else:
        raise TypeError(
            "Expected a timm model (nn.Module) or a data-config dict, got "
            f"{type(model_or_data_config).__name__}."
        )
    input_size = tuple(int(s) for s in config["input_size"])
    if len(input_size) != 3:
        raise ValueError(f"input_size must be (C, H, W), got {config['input_size']!r}.")
    config["input_size"] = input_size
    config["mean"] = adapt_channel_stats(config["mean"], input_size[0])
    config["std"] = adapt_channel_stats(config["std"], input_size[0])
    return config


def image_transform(
    model_or_data_config: nn.Module | Mapping[str, Any], *, is_training: bool, augment: str = "timm"
) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image -> normalised ``FloatTensor[C, H, W]`` in the form the timm model expects.

    The image is converted to ``"L"`` / ``"RGB"`` / ``"RGBA"`` for a 1- / 3- / 4-channel model and resized to
    the model's ``input_size`` (from ``timm.data.resolve_data_config``; see :func:`resolve_data_config`).
    The first image whose size differs from ``input_size`` raises a ``UserWarning``, once per process. To
    train at the images' own size instead, give the model that size when creating it, e.g. for 64x64 RGB
    images ``timm.create_model(name, pretrained_cfg_overlay=dict(input_size=(3, 64, 64)))``.

    Args:
        model_or_data_config: a timm model, or a data config dict with at least ``input_size``.
        is_training: training transform (with ``augment``) or evaluation transform.
        augment: training augmentation:

            * ``"timm"``: timm's ``create_transform(**data_config, is_training=True)`` (random resized crop,
              flip, colour jitter; made for natural images);
            * ``"light"``: resize, then a small random rotation (10 degrees) and shift (about 3 pixels) --
              suited to small centred images such as digits;
            * ``"none"``: the evaluation transform.

            The evaluation transform (``is_training=False``, whatever ``augment``) resizes the whole image to
            the input size (no centre crop, which would cut into a 28x28 digit), then ``ToTensor`` and
            ``Normalize``.

    Raises:
        ValueError: an unknown ``augment``, or a channel count other than 1, 3 or 4.
    """
    from timm.data import create_transform
    from timm.data.transforms import str_to_interp_mode
    from torchvision import transforms as T

    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}.")
    config = resolve_data_config(model_or_data_config)
    channels, height, width = config["input_size"]
    if channels not in _CHANNEL_MODES:
        raise ValueError(
            f"Unsupported number of input channels {channels}; expected one of {sorted(_CHANNEL_MODES)}."
        )
    prepare = [ConvertMode(_CHANNEL_MODES[channels]), _ResizeNotice(config["input_size"])]
    normalize = T.Normalize(mean=config["mean"], std=config["std"])
    resize = T.Resize(
        (height, width), interpolation=str_to_interp_mode(config["interpolation"]), antialias=True
    )

    if is_training and augment == "timm":
        return T.Compose([*prepare, create_transform(**config, is_training=True)])
    if is_training and augment == "light":
        shift = (min(3.0 / width, 0.5), min(3.0 / height, 0.5))
        return T.Compose(
            [*prepare, resize, T.RandomAffine(degrees=10, translate=shift), T.ToTensor(), normalize]
        )
    return T.Compose([*prepare, resize, T.ToTensor(), normalize])
