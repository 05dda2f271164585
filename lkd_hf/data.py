"""Image classification data for timm models on the Hugging Face ``Trainer``.

Every loader returns a :class:`datasets.DatasetDict` with the splits ``"train"``, ``"validation"`` and
``"test"`` and the columns ``"image"`` (a :class:`datasets.Image` feature, decoded to PIL images) and
``"label"`` (a :class:`datasets.ClassLabel` with class names):

* ``train``: what the model is trained on;
* ``validation``: held out of the training data, for LKD's meta (validation) steps and for tuning;
* ``test``: the evaluation split, never overlapping ``train`` or ``validation``.

:func:`image_transform` builds the PIL -> tensor transform that a timm model expects (channels, size,
normalisation), :func:`with_transform` applies it on the fly so that examples read
``{"pixel_values": FloatTensor[C, H, W], "labels": int}``, and :class:`ImageCollator` batches them (and checks
the labels against the number of classes, on CPU). :func:`build_datasets` does all of it in one call::

    model = timm.create_model("lkd_convnet_s4", num_classes=10)
    data = build_datasets("animal-mnist", model, augment="light")
    data["train"][0]["pixel_values"].shape  # torch.Size([1, 28, 28])
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import datasets
import numpy as np
import torch
from PIL import Image
from torch import nn

__all__ = [
    "ANIMAL_MNIST_CLASS_NAMES",
    "BUNDLED_DATASETS",
    "ImageCollator",
    "build_datasets",
    "dataset_num_classes",
    "image_transform",
    "load_image_splits",
    "resolve_data_config",
    "with_transform",
]

BUNDLED_DATASETS: tuple[str, ...] = ("animal-mnist", "digits")
"""Datasets shipped with installed packages (no download): ``animal-mnist`` and scikit-learn's ``digits``."""

ANIMAL_MNIST_CLASS_NAMES: tuple[str, ...] = (
    "bear",
    "bird",
    "cat",
    "cow",
    "dog",
    "elephant",
    "giraffe",
    "horse",
    "sheep",
    "zebra",
)
"""Animal-MNIST class names of ids 0..9, as documented in github.com/SinaSR-6/Animal-Shape-MNIST."""

ANIMAL_MNIST_SPLIT_SIZES: tuple[int, int] = (7000, 1000)
"""Train and validation sizes of Animal-MNIST; the remaining unique images (1716) are the test split."""

IMAGE_COLUMNS: tuple[str, ...] = ("image", "img")
LABEL_COLUMNS: tuple[str, ...] = ("label", "labels", "fine_label")
AUGMENTATIONS: tuple[str, ...] = ("timm", "light", "none")

_CHANNEL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
_TRANSFORM_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


# ------------------------------------------------------------------------------------------------------------
# Loading and splitting
# ------------------------------------------------------------------------------------------------------------


def load_image_splits(
    source: str,
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    image_column: str | None = None,
    label_column: str | None = None,
    train_subset: int | None = None,
    cache_dir: str | None = None,
    test_split: str | None = None,
) -> datasets.DatasetDict:
    """Load an image classification dataset as ``train`` / ``validation`` / ``test`` splits.

    Args:
        source: one of :data:`BUNDLED_DATASETS`, a local image folder (``<dir>/<class>/<image>`` or any layout
            ``datasets``' ``imagefolder`` builder reads), or a Hugging Face Hub dataset id.

            * ``"animal-mnist"``: the 10,000 28x28 grayscale images of the ``animal_mnist`` package, with
              identical images removed (9716 unique, first occurrence kept), split by a permutation seeded
              with ``seed`` into exactly 7000 train / 1000 validation / 1716 test images (``val_fraction``
              does not apply).
            * ``"digits"``: scikit-learn's 1797 8x8 digits scaled to uint8 0..255, split by a seeded
              permutation into 70% train / 10% validation / 20% test (``val_fraction`` does not apply).
            * image folder / Hub id: the ``test`` split is the source's ``"test"`` split if it has one, else
              its ``"validation"`` split, else a seeded ``val_fraction`` of its ``"train"`` split (carved off
              before ``validation``). ``validation`` is a seeded ``val_fraction`` of the (remaining) training
              data, stratified by label when every class has enough images. Offline (``HF_HUB_OFFLINE=1``) a
              Hub id only loads from the local ``datasets`` cache.
        seed: seed of the split (the same seed gives the same split).
        val_fraction: fraction of the training data held out as ``validation`` (and as ``test`` when the
            source has no test split); in (0, 1).
        image_column / label_column: names of the image and label columns of an image folder / Hub dataset;
            detected (``image``/``img`` and ``label``/``labels``/``fine_label``) when not given, then renamed
            to ``image`` / ``label``.
        train_subset: keep only the first ``train_subset`` images of the (shuffled) training split, for
            small-data experiments; ``validation`` and ``test`` are unchanged.
        cache_dir: ``datasets`` cache directory for image folder / Hub sources (default: ``datasets``' own).
        test_split: image folder / Hub id: the source split to use as ``test`` instead of the default choice
            above, e.g. ``"validation"`` for ``ILSVRC/imagenet-1k``, whose ``"test"`` split is unlabelled.

    Raises:
        ValueError: bad ``val_fraction`` / ``train_subset``, a split that would be empty, undetectable
            columns.
        ImportError: ``"animal-mnist"`` without the ``animal_mnist`` package.
        ConnectionError: a Hub id that is not cached while the Hub is unreachable or offline mode is on.
    """
    if not isinstance(val_fraction, (int, float)) or not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be a number in (0, 1), got {val_fraction!r}.")
    if train_subset is not None and (not isinstance(train_subset, (int, np.integer)) or train_subset < 1):
        raise ValueError(f"train_subset must be a positive integer or None, got {train_subset!r}.")

    if source == "animal-mnist":
        splits = _load_animal_mnist(seed)
    elif source == "digits":
        splits = _load_digits(seed)
    elif os.path.isdir(source):
        raw = datasets.load_dataset("imagefolder", data_dir=source, cache_dir=cache_dir)
        splits = _standardize_splits(
            raw, source, seed, float(val_fraction), image_column, label_column, test_split
        )
    else:
        raw = _load_hub_dataset(source, cache_dir)
        splits = _standardize_splits(
            raw, source, seed, float(val_fraction), image_column, label_column, test_split
        )

    if train_subset is not None:
        n_train = len(splits["train"])
        if train_subset > n_train:
            warnings.warn(
                f"train_subset={train_subset} is larger than the {n_train} training images of {source!r}; "
                "keeping all of them.",
                stacklevel=2,
            )
        else:
            splits["train"] = splits["train"].select(range(int(train_subset)))
    return splits


def _image_features(class_names: Sequence[str]) -> datasets.Features:
    return datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(class_names))}
    )


def _arrays_to_dataset(
    images: np.ndarray, labels: np.ndarray, class_names: Sequence[str]
) -> datasets.Dataset:
    """An in-memory dataset from uint8 image arrays (N, H, W) and their integer labels."""
    return datasets.Dataset.from_dict(
        {"image": list(images), "label": labels.tolist()}, features=_image_features(class_names)
    )


def _split_by_permutation(
    full: datasets.Dataset, perm: np.ndarray, n_train: int, n_val: int
) -> datasets.DatasetDict:
    """The first ``n_train`` of ``perm`` are train, the next ``n_val`` validation, the rest test."""
    train, validation, test = np.split(perm, [n_train, n_train + n_val])
    return datasets.DatasetDict(
        {"train": full.select(train), "validation": full.select(validation), "test": full.select(test)}
    )


def animal_mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The unique Animal-MNIST images (uint8, (9716, 28, 28)) and labels (int64), in file order.

    Read directly from the ``animal_mnist`` package's data files (its own loader imports tensorflow).
    """
    images, labels = _animal_mnist_arrays()
    return images.copy(), labels.copy()


@lru_cache(maxsize=1)
def _animal_mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    try:
        import animal_mnist
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "The 'animal-mnist' dataset needs the animal_mnist package. Install it without its tensorflow "
            "dependency (lkd_hf only reads its data files): pip install --no-deps animal-mnist==0.4"
        ) from err
    folder = os.path.join(os.path.dirname(animal_mnist.__file__), "data", "Animal_MNIST")
    with gzip.open(os.path.join(folder, "animal_data_version_3.gz"), "rb") as f:
        images = np.asarray(pickle.load(f), dtype=np.uint8)
    with gzip.open(os.path.join(folder, "animal_label_version_3.gz"), "rb") as f:
        labels = np.asarray(pickle.load(f), dtype=np.int64)
    if images.ndim != 3 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"Unexpected Animal-MNIST data: images {images.shape}, labels {labels.shape}.")
    # 284 images appear twice in the files: keep first occurrences (file order), so no image is in 2 splits.
    first: dict[bytes, int] = {}
    for i, image in enumerate(images):
        first.setdefault(image.tobytes(), i)
    keep = np.fromiter(first.values(), dtype=np.int64)  # dicts keep insertion order: ascending indices
    images, labels = images[keep], labels[keep]
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


@lru_cache(maxsize=1)
def _animal_mnist_dataset() -> datasets.Dataset:
    """All unique Animal-MNIST images as one in-memory dataset (once per process: ~1 s of PNG encoding)."""
    images, labels = _animal_mnist_arrays()
    return _arrays_to_dataset(images, labels, ANIMAL_MNIST_CLASS_NAMES)


def _load_animal_mnist(seed: int) -> datasets.DatasetDict:
    full = _animal_mnist_dataset()
    n_train, n_val = ANIMAL_MNIST_SPLIT_SIZES
    perm = np.random.default_rng(seed).permutation(len(full))
    return _split_by_permutation(full, perm, n_train, n_val)


def _load_digits(seed: int) -> datasets.DatasetDict:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    labels = np.asarray(digits.target, dtype=np.int64)
    n = len(images)
    n_test, n_val = int(round(0.2 * n)), int(round(0.1 * n))
    perm = np.random.default_rng(seed).permutation(n)
    n_train = n - n_test - n_val
    full = _arrays_to_dataset(images, labels, [str(c) for c in digits.target_names])
    return _split_by_permutation(full, perm, n_train, n_val)


def _hub_offline() -> bool:
    import huggingface_hub.constants

    return bool(datasets.config.HF_HUB_OFFLINE or huggingface_hub.constants.HF_HUB_OFFLINE)


def _load_hub_dataset(source: str, cache_dir: str | None) -> datasets.DatasetDict:
    hint = (
        f"Use a bundled dataset ({', '.join(map(repr, BUNDLED_DATASETS))}) or a local image folder "
        "(a directory of <class_name>/<image> files)."
    )
    try:
        raw = datasets.load_dataset(source, cache_dir=cache_dir)
    except (ConnectionError, TimeoutError) as err:
        why = (
            "offline mode is on (HF_HUB_OFFLINE=1)"
            if _hub_offline()
            else "the Hugging Face Hub is unreachable"
        )
        raise ConnectionError(
            f"Could not load the dataset {source!r}: it is not a bundled dataset or an existing directory, "
            f"so it was looked up as a Hugging Face Hub dataset id, but {why} and it is not in the local "
            f"datasets cache. {hint}"
        ) from err
    except FileNotFoundError as err:  # DatasetNotFoundError subclasses FileNotFoundError
        offline = " (offline mode is on: HF_HUB_OFFLINE=1)" if _hub_offline() else ""
        raise FileNotFoundError(
            f"Could not load the dataset {source!r}: it is not a bundled dataset or an existing directory, "
            f"and no Hugging Face Hub dataset with that id was found{offline}. {hint}"
        ) from err
    if isinstance(raw, datasets.Dataset):  # pragma: no cover - without a split it returns a DatasetDict
        raw = datasets.DatasetDict({"train": raw})
    return raw


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


def _standardize_splits(
    raw: datasets.DatasetDict,
    source: str,
    seed: int,
    val_fraction: float,
    image_column: str | None,
    label_column: str | None,
    test_split: str | None = None,
) -> datasets.DatasetDict:
    """Rename/cast the columns to ``image`` / ``label`` and make the train / validation / test splits."""
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
    """Number of classes of a dataset (or of a DatasetDict's train split), from its ClassLabel feature."""
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


# ------------------------------------------------------------------------------------------------------------
# Transforms
# ------------------------------------------------------------------------------------------------------------


class ConvertMode:
    """Convert a PIL image to ``mode`` (e.g. ``"RGB"`` or ``"L"``); picklable, unlike a lambda."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, image: Image.Image) -> Image.Image:
        if not isinstance(image, Image.Image):
            image = Image.fromarray(np.asarray(image))
        return image if image.mode == self.mode else image.convert(self.mode)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode!r})"


def _adapt_stats(values: Sequence[float], channels: int) -> tuple[float, ...]:
    values = tuple(float(v) for v in np.atleast_1d(values))
    if len(values) == channels:
        return values
    if len(values) == 1:
        return values * channels
    if channels == 1:
        return (float(np.mean(values)),)
    if len(values) > channels:
        return values[:channels]
    return tuple(values[i % len(values)] for i in range(channels))


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
    ``mean``/``std`` are adapted to the channel count (averaged for 1 channel).
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
    config["mean"] = _adapt_stats(config["mean"], input_size[0])
    config["std"] = _adapt_stats(config["std"], input_size[0])
    return config


def image_transform(
    model_or_data_config: nn.Module | Mapping[str, Any], *, is_training: bool, augment: str = "timm"
) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image -> normalised ``FloatTensor[C, H, W]`` in the form the timm model expects.

    The image is converted to ``"L"`` / ``"RGB"`` for a 1- / 3-channel model and resized to the model's
    ``input_size`` (from ``timm.data.resolve_data_config``; see :func:`resolve_data_config`).

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
    convert = ConvertMode(_CHANNEL_MODES[channels])
    normalize = T.Normalize(mean=config["mean"], std=config["std"])
    resize = T.Resize(
        (height, width), interpolation=str_to_interp_mode(config["interpolation"]), antialias=True
    )

    if is_training and augment == "timm":
        return T.Compose([convert, create_transform(**config, is_training=True)])
    if is_training and augment == "light":
        shift = (min(3.0 / width, 0.5), min(3.0 / height, 0.5))
        return T.Compose(
            [convert, resize, T.RandomAffine(degrees=10, translate=shift), T.ToTensor(), normalize]
        )
    return T.Compose([convert, resize, T.ToTensor(), normalize])


class _BatchTransform:
    """``{"image": [PIL...], "label": [int...]}`` -> ``{"pixel_values": [tensor...], "labels": [int...]}``."""

    def __init__(self, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.transform = transform

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        out = {"pixel_values": [self.transform(image) for image in batch["image"]]}
        if "label" in batch:
            out["labels"] = [int(label) for label in batch["label"]]
        return out


def with_transform(
    dataset: datasets.Dataset, transform: Callable[[Image.Image], torch.Tensor]
) -> datasets.Dataset:
    """``dataset`` (columns ``image`` / ``label``) with ``transform`` applied on the fly (lazily).

    Examples then read ``{"pixel_values": FloatTensor[C, H, W], "labels": int}``; the features (and the
    ``ClassLabel``) are kept, so :func:`dataset_num_classes` still works.
    """
    if "image" not in dataset.column_names:
        raise ValueError(f"Expected an 'image' column, got columns {dataset.column_names}.")
    return dataset.with_transform(_BatchTransform(transform))


def build_datasets(
    source: str,
    model: nn.Module | Mapping[str, Any],
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    augment: str = "timm",
    train_subset: int | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    cache_dir: str | None = None,
    test_split: str | None = None,
) -> datasets.DatasetDict:
    """:func:`load_image_splits` + :func:`with_transform`, ready for the ``Trainer``.

    ``train`` gets the training transform (``augment``), ``validation`` and ``test`` the evaluation transform,
    all built for ``model`` (a timm model or a data config dict) by :func:`image_transform`.
    """
    splits = load_image_splits(
        source,
        seed=seed,
        val_fraction=val_fraction,
        image_column=image_column,
        label_column=label_column,
        train_subset=train_subset,
        cache_dir=cache_dir,
        test_split=test_split,
    )
    config = resolve_data_config(model)
    train_tf = image_transform(config, is_training=True, augment=augment)
    eval_tf = image_transform(config, is_training=False)
    return datasets.DatasetDict(
        {name: with_transform(ds, train_tf if name == "train" else eval_tf) for name, ds in splits.items()}
    )


# ------------------------------------------------------------------------------------------------------------
# Collator
# ------------------------------------------------------------------------------------------------------------


@dataclass
class ImageCollator:
    """Stack examples ``{"pixel_values": [C, H, W], "labels": int}`` into a batch (float images, long labels).

    With ``num_classes`` set, labels outside ``[0, num_classes)`` raise a ``ValueError`` naming them. The
    check runs here, on CPU, on purpose: checking on the accelerator would need a device sync every step, and
    a bad label there surfaces as an opaque device-side assert.
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
        labels = [int(f[key]) for f in features]
        if self.num_classes is not None:
            bad = sorted({y for y in labels if y < 0 or y >= self.num_classes})
            if bad:
                raise ValueError(
                    f"Label value(s) {bad} outside the valid range [0, {self.num_classes}) for a model with "
                    f"num_classes={self.num_classes}. Check the dataset's labels and the model's num_classes."
                )
        batch["labels"] = torch.tensor(labels, dtype=torch.long)
        return batch
