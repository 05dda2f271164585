"""What the trainer and recipes read off a timm (or timm-like) classifier."""

from __future__ import annotations

from torch import nn


def model_num_classes(model: nn.Module) -> int | None:
    """Number of output classes of a timm (or timm-like) classifier, or ``None`` if it cannot be told.

    Args:
        model: the classifier (its ``num_classes`` attribute, else its classifier head's ``out_features``).
    """
    num_classes = getattr(model, "num_classes", None)
    if isinstance(num_classes, int):
        return num_classes
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    return getattr(head, "out_features", None)


def timm_name(model: nn.Module | None) -> str | None:
    """A timm model's architecture name (e.g. ``resnet50``; not the pretrained tag, which timm sets whether or not
    those weights were loaded); the class name for other models.

    Args:
        model: a model, or ``None`` (returns ``None``).
    """
    if model is None:
        return None
    config = getattr(model, "pretrained_cfg", None) or {}
    return config.get("architecture") or type(model).__name__
