"""Batching of image classification examples for the ``Trainer``, with a CPU-side label check."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["ImageCollator", "class_index"]


def class_index(label: Any) -> int:
    """``label`` as a class index: an integer (Python, numpy or a one-element tensor), or a float holding a whole
    number (``3.0``).

    Args:
        label: the label of one example.

    Raises:
        ValueError: a label that is not a whole number (``3.5``, NaN, a string, several values), naming it.
    """
    value = label
    if hasattr(value, "item"):
        try:
            value = value.item()
        except (ValueError, RuntimeError):  # several values
            pass
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    raise ValueError(
        f"The label {label!r} is not a class index: labels must be integers 0 .. num_classes - 1 (a float label "
        "would be cut to an integer). Map the dataset's labels to class ids first."
    )


@dataclass
class ImageCollator:
    """Stack examples ``{"pixel_values": [C, H, W], "labels": int}`` into a batch (float images, long labels).

    Labels are read from ``labels`` or, failing that, ``label``; the batch always calls them ``labels``. The
    label check runs here, on CPU, on purpose: checking on the accelerator would need a device sync every
    step, and a bad label there surfaces as an opaque device-side assert.

    Args:
        num_classes: when set, labels outside ``[0, num_classes)`` raise a ``ValueError`` naming them. Labels that
            are not whole numbers always do (:func:`class_index`).
    """

    num_classes: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("Cannot collate an empty list of examples.")
        pixel_values = torch.stack([torch.as_tensor(f["pixel_values"]) for f in features]).float()
        batch = {"pixel_values": pixel_values}
        key = "labels" if "labels" in features[0] else "label" if "label" in features[0] else None
        if key is None:
            return batch
        labels = [class_index(f[key]) for f in features]
        if self.num_classes is not None:
            bad = sorted({y for y in labels if y < 0 or y >= self.num_classes})
            if bad:
                raise ValueError(
                    f"Label value(s) {bad} outside the valid range [0, {self.num_classes}) for a model with "
                    f"num_classes={self.num_classes}. Check the dataset's labels and the model's num_classes."
                )
        batch["labels"] = torch.tensor(labels, dtype=torch.long)
        return batch
