"""``train`` / ``validation`` / ``test`` splits with ``image`` / ``label`` columns from a raw source."""

from __future__ import annotations

import math
from collections.abc import Sequence

import datasets

__all__ = ["IMAGE_COLUMNS", "LABEL_COLUMNS", "dataset_num_classes", "standardize_splits"]

IMAGE_COLUMNS: tuple[str, ...] = ("image", "img")
"""Image columns detected, in order, when none is given."""

LABEL_COLUMNS: tuple[str, ...] = ("label", "labels", "fine_label")
"""Label columns detected, in order, when none is given."""


def _detect_column(
    features: datasets.Features,
    given: str | None,
    candidates: Sequence[str],
    feature_type: type,
    what: str,
    source: str,
) -> str:
    if given is not None:
        if given not in features:
            raise ValueError(f"{what} column {given!r} not found in {source!r}; columns: {list(features)}.")
        return given
    for name in candidates:
        if name in features:
            return name
    typed = [name for name, feature in features.items() if isinstance(feature, feature_type)]
    if len(typed) == 1:
        return typed[0]
    raise ValueError(
        f"Could not detect the {what} column of {source!r} (columns: {list(features)}); pass "
        f"{what}_column=... (one of the columns)."
    )


def standardize_splits(
    raw: datasets.DatasetDict,
    source: str,
    seed: int,
    val_fraction: float,
    image_column: str | None,
    label_column: str | None,
    test_split: str | None = None,
) -> datasets.DatasetDict:
    """Rename/cast the columns to ``image`` / ``label`` and make the train / validation / test splits.

    Args:
        raw: the source's splits, as ``datasets.load_dataset`` returns them.
        source: the source's name, for error messages.
        seed: seed of the held-out splits.
        val_fraction: fraction of the training data held out as ``validation`` (and as ``test`` when ``raw``
            has neither a ``test`` nor a ``validation`` split).
        image_column / label_column: the image and label columns; detected (:data:`IMAGE_COLUMNS`,
            :data:`LABEL_COLUMNS`, else the only ``Image`` / ``ClassLabel`` column) when ``None``.
        test_split: the split of ``raw`` to use as ``test`` instead of ``test`` / ``validation``.

    Raises:
        ValueError: no ``train`` split, undetectable or missing columns, labels that are not one class per
            image, or a split that would be empty.
    """
    if "train" not in raw:
        if len(raw) != 1:
            raise ValueError(f"{source!r} has no 'train' split (splits: {list(raw)}).")
        raw = datasets.DatasetDict({"train": next(iter(raw.values()))})
    features = raw["train"].features
    image_col = _detect_column(features, image_column, IMAGE_COLUMNS, datasets.Image, "image", source)
    label_col = _detect_column(features, label_column, LABEL_COLUMNS, datasets.ClassLabel, "label", source)
    if image_col == label_col:
        raise ValueError(f"The image and label columns of {source!r} are the same column {image_col!r}.")

    test_name = "test" if "test" in raw else "validation" if "validation" in raw else None
    if test_split is not None:
        if test_split not in raw or test_split == "train":
            raise ValueError(
                f"test_split={test_split!r} is not a split of {source!r} other than 'train' "
                f"(splits: {list(raw)})."
            )
        test_name = test_split
    splits = {"train": raw["train"]}
    if test_name is not None:
        splits["test"] = raw[test_name]
    for name, ds in splits.items():
        missing = [c for c in (image_col, label_col) if c not in ds.column_names]
        if missing:
            raise ValueError(f"Split {name!r} of {source!r} lacks the column(s) {missing}.")
        ds = ds.select_columns([image_col, label_col])
        if image_col != "image":
            ds = ds.rename_column(image_col, "image")
        if label_col != "label":
            ds = ds.rename_column(label_col, "label")
        if not isinstance(ds.features["image"], datasets.Image):
            ds = ds.cast_column("image", datasets.Image())
        splits[name] = ds
    splits = _to_class_labels(splits, source)

    if test_name is None:
        splits["train"], splits["test"] = _holdout(splits["train"], val_fraction, seed, "test", source)
    splits["train"], splits["validation"] = _holdout(
        splits["train"], val_fraction, seed, "validation", source
    )
    if len(splits["test"]) == 0:
        raise ValueError(f"The test split of {source!r} ({test_name!r}) is empty.")
    return datasets.DatasetDict({name: splits[name] for name in ("train", "validation", "test")})


def _to_class_labels(splits: dict[str, datasets.Dataset], source: str) -> dict[str, datasets.Dataset]:
    """Make ``label`` a ClassLabel shared by all splits (integer or string labels are converted)."""
    feature = splits["train"].features["label"]
    if isinstance(feature, datasets.ClassLabel):
        class_label = feature
    elif isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint")):
        top = max(max(ds["label"]) for ds in splits.values() if len(ds))
        class_label = datasets.ClassLabel(num_classes=int(top) + 1)
    elif isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        names = sorted({str(v) for ds in splits.values() for v in ds["label"]})
        class_label = datasets.ClassLabel(names=names)
    else:
        raise ValueError(
            f"The label column of {source!r} must hold one class per image (ClassLabel, int or string), "
            f"got {feature}."
        )
    return {
        name: ds if ds.features["label"] == class_label else ds.cast_column("label", class_label)
        for name, ds in splits.items()
    }


def _holdout(
    ds: datasets.Dataset, fraction: float, seed: int, split: str, source: str
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Split ``fraction`` of ``ds`` off as ``split`` (seeded, stratified by label when possible)."""
    n = len(ds)
    n_out = math.ceil(fraction * n)
    if n_out < 1 or n - n_out < 1:
        raise ValueError(
            f"Cannot hold out {fraction:g} of the {n} training images of {source!r} as the {split!r} split: "
            f"the {'train' if n_out >= 1 else split!r} split would be empty. Use more data or another "
            "val_fraction."
        )
    try:
        parts = ds.train_test_split(test_size=n_out, seed=seed, stratify_by_column="label")
    except ValueError:  # too few images of some class to stratify
        parts = ds.train_test_split(test_size=n_out, seed=seed)
    return parts["train"], parts["test"]


def dataset_num_classes(ds: datasets.Dataset | datasets.DatasetDict) -> int:
    """Number of classes of a dataset (or of a DatasetDict's train split), from its ClassLabel feature.

    Args:
        ds: a dataset with a ``ClassLabel`` column ``label`` or ``labels``, or a ``DatasetDict`` of them.

    Raises:
        ValueError: an empty ``DatasetDict``, or no ``ClassLabel`` label column.
    """
    if isinstance(ds, datasets.DatasetDict):
        if not ds:
            raise ValueError("Empty DatasetDict.")
        ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    for column in ("label", "labels"):
        feature = (ds.features or {}).get(column)
        if isinstance(feature, datasets.ClassLabel):
            return int(feature.num_classes)
    raise ValueError(
        f"The dataset has no ClassLabel 'label'/'labels' column to read the number of classes from "
        f"(features: {ds.features})."
    )
