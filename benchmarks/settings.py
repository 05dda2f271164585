"""The accuracy benchmark's data in each setting of ``roles.py``: the splits, the teacher folder and the training set.

* :func:`load_splits`: ``train`` / ``validation`` / ``test`` of a dataset (a bundled one, or ``letters`` from its
  committed arrays, ``letters.py``);
* :func:`setting_splits`: the splits of a benchmark key ``<dataset>[/<setting>]``, the students' training set made
  for the setting (long-tailed, noisy labels); validation and test are never changed;
* :func:`build_data`: the same, transformed for a model (what ``common.Setting`` trains on), and what the setting
  did (per-class counts, the fraction of flipped labels) for the results' config;
* :func:`teacher_dir`: the committed teacher of a key (the weak one for ``weak``, the one trained on the corrupted
  set for a ``-shared`` setting, the clean-trained one otherwise);
* :func:`balanced_top1`: the metric long-tailed settings report besides top-1.

The settings are deterministic given the split seed:

* ``clean`` and ``weak``: the first ``train_subset`` images of the (seeded) training split.
* ``lt10``, ``lt50``: class ``c`` of ``C`` keeps its first ``int(n_max * ratio ** (-c / (C - 1)))`` images of the
  training split, ``n_max = train_subset // C`` (the head class keeps as many images as a balanced subset has).
* ``<corruption>-shared``: the training set of ``<corruption>``.
* ``noise20``, ``noise40``: in the first ``train_subset`` images, exactly ``round(rate * n)`` labels, chosen by a
  generator seeded with the split seed, are replaced by a class drawn uniformly among the other classes.
"""

from __future__ import annotations

import os
from typing import Any

import datasets
import numpy as np
from torch import nn

from letters import load_letters
from lkd_hf import image_transform, load_image_splits, resolve_data_config, with_transform
from roles import SHARED, corruption, parse_key

# relative to the working directory: the records of a run from the repository root hold no machine paths
HERE = os.path.relpath(os.path.dirname(os.path.abspath(__file__)))
TEACHER_DIRS = {
    "animal-mnist": os.path.join(HERE, "teacher"),
    "mnist-5k": os.path.join(HERE, "teacher_mnist-5k"),
    "digits": os.path.join(HERE, "teacher_digits"),
    "letters": os.path.join(HERE, "teacher_letters"),
}
"""The committed teacher of each dataset, trained with CE on its whole training split (``second_dataset.py``)."""
WEAK_TEACHER_DIRS = {name: os.path.join(HERE, f"teacher_weak_{name}") for name in ("animal-mnist", "mnist-5k",
                                                                                   "letters")}
"""The committed weak teacher of each dataset run in the ``weak`` setting (``second_dataset.py --weak``)."""
SHARED_TEACHERS = ("mnist-5k", "animal-mnist")
"""The datasets with committed teachers of the ``-shared`` settings (``second_dataset.py --shared``)."""
IMBALANCE_RATIOS = {"lt10": 10.0, "lt50": 50.0}
NOISE_RATES = {"noise20": 0.2, "noise40": 0.4}


def teacher_dir(key: str) -> str:
    """The committed teacher folder of a benchmark key: the weak teacher in the ``weak`` setting,
    ``teacher_shared_<corruption>_<dataset>`` in a ``-shared`` setting, else the dataset's.

    Args:
        key: ``<dataset>`` or ``<dataset>/<setting>`` (``roles.parse_key``).

    Raises:
        KeyError: the dataset has no committed teacher of the setting.
    """
    dataset, setting = parse_key(key)
    if setting.endswith(SHARED):
        if dataset not in SHARED_TEACHERS:
            raise KeyError(f"{dataset} has no committed teachers of the {SHARED} settings; declared: "
                           f"{SHARED_TEACHERS}.")
        return os.path.join(HERE, f"teacher_shared_{corruption(setting)}_{dataset}")
    return WEAK_TEACHER_DIRS[dataset] if setting == "weak" else TEACHER_DIRS[dataset]


def load_splits(dataset: str, seed: int) -> datasets.DatasetDict:
    """The ``train`` / ``validation`` / ``test`` splits of a dataset (columns ``image``, ``label``).

    Args:
        dataset: a bundled dataset of ``lkd_hf`` or ``letters``.
        seed: the split seed (for ``letters``, the order of its training split; its splits are by font).
    """
    return load_letters(seed) if dataset == "letters" else load_image_splits(dataset, seed=seed)


def balanced_epochs(epochs: float, info: dict[str, Any]) -> float:
    """The epochs that train a setting's training set as many steps as ``epochs`` of the balanced set a long tail is
    cut from (``epochs`` itself for a set that is not a long tail).

    Args:
        epochs: epochs of the balanced set.
        info: what the setting did (:func:`setting_splits`), with ``balanced_images`` for a long tail.
    """
    return epochs * info["balanced_images"] / info["train_images"] if "balanced_images" in info else epochs


def long_tail_counts(num_classes: int, n_max: int, ratio: float) -> list[int]:
    """Images kept per class of a long-tailed set: ``int(n_max * ratio ** (-c / (num_classes - 1)))`` for class
    ``c`` (Cao et al., 2019).

    Args:
        num_classes: the number of classes ``C``.
        n_max: images of the head class (class 0).
        ratio: imbalance ratio, head over tail.
    """
    return [int(n_max * ratio ** (-c / (num_classes - 1))) for c in range(num_classes)]


def long_tail_indices(labels: np.ndarray, counts: list[int]) -> np.ndarray:
    """Indices keeping the first ``counts[c]`` images of each class ``c``, in their original order.

    Args:
        labels: the labels of the set, in order.
        counts: images kept per class.

    Raises:
        ValueError: a class has fewer images than it should keep.
    """
    keep = []
    for c, count in enumerate(counts):
        members = np.flatnonzero(labels == c)
        if len(members) < count:
            raise ValueError(f"Class {c} has {len(members)} images, fewer than the {count} a long tail keeps.")
        keep.append(members[:count])
    return np.sort(np.concatenate(keep))


def symmetric_noise(labels: np.ndarray, rate: float, num_classes: int, seed: int) -> np.ndarray:
    """``labels`` with exactly ``round(rate * len(labels))`` of them replaced by a class drawn uniformly among the
    other ``num_classes - 1`` classes (the images chosen at random); seeded.

    Args:
        labels: the clean labels.
        rate: the fraction of labels to flip, in [0, 1].
        num_classes: the number of classes.
        seed: seed of the choice of images and of their new classes.
    """
    rng = np.random.default_rng(seed)
    flipped = rng.permutation(len(labels))[: round(rate * len(labels))]
    noisy = np.array(labels, dtype=np.int64, copy=True)
    noisy[flipped] = (noisy[flipped] + rng.integers(1, num_classes, size=len(flipped))) % num_classes
    return noisy


def balanced_top1(predicted: np.ndarray, labels: np.ndarray) -> float:
    """The mean over the classes present in ``labels`` of each class's top-1.

    Args:
        predicted: predicted classes.
        labels: true classes.
    """
    return float(np.mean([np.mean(predicted[labels == c] == c) for c in np.unique(labels)]))


def setting_splits(key: str, seed: int, train_subset: int | None) -> tuple[datasets.DatasetDict, dict[str, Any]]:
    """The splits of a benchmark key, the training set made for its setting, and what the setting did.

    Args:
        key: ``<dataset>`` or ``<dataset>/<setting>``.
        seed: the split seed (also fixes the long tail and the noisy labels).
        train_subset: training images of the clean setting (``n_max = train_subset // C`` for a long tail);
            ``None``: the whole training split.

    Returns:
        The splits (validation and test as :func:`load_splits` gives them) and ``{"setting", "train_images",
        "class_counts"}``, with ``"imbalance_ratio"`` and ``"balanced_images"`` (the balanced set the tail is cut
        from) for a long tail and ``"noise_rate"``, ``"flipped_fraction"`` for noisy labels.
    """
    dataset, setting = parse_key(key)
    change = corruption(setting)
    splits = load_splits(dataset, seed)
    train = splits["train"]
    num_classes = train.features["label"].num_classes
    info: dict[str, Any] = {"setting": setting}
    train_subset = len(train) if train_subset is None else train_subset
    if change in IMBALANCE_RATIOS:
        counts = long_tail_counts(num_classes, train_subset // num_classes, IMBALANCE_RATIOS[change])
        train = train.select(long_tail_indices(np.asarray(train["label"]), counts))
        info.update(imbalance_ratio=IMBALANCE_RATIOS[change],
                    balanced_images=num_classes * (train_subset // num_classes))
    else:
        train = train.select(range(min(train_subset, len(train))))  # the whole split when it has fewer
    if change in NOISE_RATES:
        clean = np.asarray(train["label"])
        noisy = symmetric_noise(clean, NOISE_RATES[change], num_classes, seed)
        bars = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()  # two quick column operations, no bars
        train = train.remove_columns("label").add_column("label", noisy.tolist()).cast_column(
            "label", splits["train"].features["label"])
        if bars:
            datasets.enable_progress_bars()
        info.update(noise_rate=NOISE_RATES[change], flipped_fraction=float(np.mean(noisy != clean)))
    info.update(train_images=len(train),
                class_counts=np.bincount(np.asarray(train["label"]), minlength=num_classes).tolist())
    splits["train"] = train
    return splits, info


def build_data(key: str, model: nn.Module, seed: int, train_subset: int | None,
               augment: str = "light") -> tuple[datasets.DatasetDict, dict[str, Any]]:
    """:func:`setting_splits` transformed for ``model`` (as ``lkd_hf.build_datasets`` does: the training transform
    with ``augment`` on ``train``, the evaluation transform on the others).

    Args:
        key: ``<dataset>`` or ``<dataset>/<setting>``.
        model: the timm model the images are transformed for.
        seed: the split seed.
        train_subset: training images of the clean setting (``None``: the whole training split).
        augment: the training augmentation.
    """
    splits, info = setting_splits(key, seed, train_subset)
    config = resolve_data_config(model)
    transforms = {"train": image_transform(config, is_training=True, augment=augment),
                  "eval": image_transform(config, is_training=False)}
    data = datasets.DatasetDict({name: with_transform(split, transforms["train" if name == "train" else "eval"])
                                 for name, split in splits.items()})
    return data, info
