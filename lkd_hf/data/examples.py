"""Dataset rows -> model examples: the on-the-fly transform (naming unreadable files) and a column check."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import datasets
import numpy as np
import torch
from PIL import Image

from .collator import class_index

__all__ = ["check_columns", "read_labels", "with_transform"]


class _BatchTransform:
    """``{"image": [...], "label": [int...]}`` -> ``{"pixel_values": [tensor...], "labels": [int...]}``.

    With a ``decoder`` the images arrive undecoded (``{"path", "bytes"}``) and are decoded here, so that a
    file that cannot be read is named in the error.
    """

    def __init__(
        self, transform: Callable[[Image.Image], torch.Tensor], decoder: datasets.Image | None = None
    ) -> None:
        self.transform = transform
        self.decoder = decoder

    def _decode(self, value: Any) -> Any:
        if self.decoder is None or value is None:
            return value
        try:
            return self.decoder.decode_example(value)
        except (OSError, ValueError, SyntaxError) as err:
            where = value.get("path") or "stored in the dataset as bytes (no file path)"
            raise OSError(f"Cannot read the image {where}: {type(err).__name__}: {err}") from err

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        out = {"pixel_values": [self.transform(self._decode(image)) for image in batch["image"]]}
        if "label" in batch:
            out["labels"] = [class_index(label) for label in batch["label"]]
        return out


def with_transform(
    dataset: datasets.Dataset, transform: Callable[[Image.Image], torch.Tensor]
) -> datasets.Dataset:
    """``dataset`` (columns ``image`` / ``label``) with ``transform`` applied on the fly (lazily).

    Examples then read ``{"pixel_values": FloatTensor[C, H, W], "labels": int}``. An ``image`` column of
    :class:`datasets.Image` feature is decoded by the transform (its feature is kept with ``decode=False``),
    so that an unreadable or truncated file raises an ``OSError`` naming its path. The ``ClassLabel`` is kept,
    so :func:`~lkd_hf.data.dataset_num_classes` still works.

    Args:
        dataset: a dataset with an ``image`` column and, optionally, a ``label`` column.
        transform: PIL image -> tensor, e.g. from :func:`~lkd_hf.data.image_transform`.

    Raises:
        ValueError: ``dataset`` has no ``image`` column.
    """
    if "image" not in dataset.column_names:
        raise ValueError(f"Expected an 'image' column, got columns {dataset.column_names}.")
    feature = dataset.features["image"]
    if not isinstance(feature, datasets.Image):
        return dataset.with_transform(_BatchTransform(transform))
    if feature.decode:
        dataset = dataset.cast_column("image", datasets.Image(mode=feature.mode, decode=False))
    decoder = datasets.Image(mode=feature.mode, decode=True)
    return dataset.with_transform(_BatchTransform(transform, decoder))


def _output_columns(dataset: Any) -> list[str] | None:
    """The columns the examples of ``dataset`` will have, when that is known without reading any example."""
    column_names = getattr(dataset, "column_names", None)
    if not isinstance(column_names, list):
        return None
    format_ = getattr(dataset, "format", None) or {}
    transform = (format_.get("format_kwargs") or {}).get("transform")
    if isinstance(transform, _BatchTransform):
        return ["pixel_values", *(["labels"] if "label" in column_names else [])]
    if transform is not None:
        return None
    return list(format_.get("columns") or column_names)


def check_columns(dataset: Any, split_name: str) -> None:
    """Check, without reading any example, that ``dataset`` yields ``pixel_values`` and labels.

    A dataset made by :func:`with_transform` / :func:`~lkd_hf.data.build_datasets` yields ``pixel_values``,
    and ``labels`` when it has a ``label`` column. Any other :class:`datasets.Dataset` must have the columns
    ``pixel_values`` and ``labels`` (or ``label``, which :class:`~lkd_hf.data.ImageCollator` renames).
    Datasets whose columns cannot be told without reading an example (a torch dataset, another on-the-fly
    transform, an iterable dataset after ``map``) pass unchecked.

    Args:
        dataset: a dataset, or a mapping of names to datasets (as ``Trainer(eval_dataset={...})`` takes); each
            of them is checked, as ``"<split_name>/<name>"``.
        split_name: the name used in the error message, e.g. ``"train_dataset"``.

    Raises:
        ValueError: the dataset is empty, or lacks ``pixel_values`` or the labels; the message names the
            split, the columns found and how to add the missing ones.
    """
    if isinstance(dataset, Mapping):
        for name, part in dataset.items():
            check_columns(part, f"{split_name}/{name}")
        return
    if isinstance(dataset, datasets.Dataset) and len(dataset) == 0:
        raise ValueError(f"The {split_name} split is empty.")
    columns = _output_columns(dataset)
    if columns is None:
        return
    problems = []
    if "pixel_values" not in columns:
        fix = (
            "apply an image transform first, e.g. lkd_hf.data.with_transform(dataset, image_transform(model, "
            "is_training=...)), or build the splits with lkd_hf.data.build_datasets"
            if "image" in columns
            else "add a 'pixel_values' column of image tensors (C, H, W)"
        )
        problems.append(f"no 'pixel_values' ({fix})")
    if "labels" not in columns and "label" not in columns:
        problems.append("no 'labels' column of integer class ids")
    if problems:
        raise ValueError(
            f"The {split_name} split cannot be used for training or evaluation: it has "
            f"{' and '.join(problems)}. Its examples have the columns {columns}."
        )


def read_labels(dataset: Any) -> tuple[str, np.ndarray, int | None] | None:
    """The labels of every example of ``dataset``, read from its label column without decoding an image:
    ``(column, labels, declared)``, ``declared`` being the number of classes of its ``ClassLabel`` feature (``None``
    when the column is not a ``ClassLabel``). ``None`` when the labels cannot be read so (not a
    :class:`datasets.Dataset`, an on-the-fly transform other than :func:`with_transform`'s, no label column).

    Args:
        dataset: a dataset.
    """
    if not isinstance(dataset, datasets.Dataset):
        return None
    transform = ((dataset.format or {}).get("format_kwargs") or {}).get("transform")
    if transform is not None and not isinstance(transform, _BatchTransform):
        return None
    column = next((c for c in ("labels", "label") if c in dataset.column_names), None)
    if column is None:
        return None
    feature = dataset.features[column]
    declared = int(feature.num_classes) if isinstance(feature, datasets.ClassLabel) else None
    return column, np.asarray(dataset.with_format("numpy", columns=[column])[column]), declared
