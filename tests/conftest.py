"""Shared test data, models and configs.

The factories are plain functions, handed to tests by the fixtures of the same name (``make_dataset``,
``make_models``, ``make_config``): a test takes the fixture as a parameter and calls it like the function, e.g.
``make_config(tmp_path, loss="kd")``.

``tests/distributed_worker.py``, a script run in subprocesses (no pytest there), imports the plain functions from
this module: ``tests/`` is its script directory, so it is on its ``sys.path``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

# datasets, timm and the Trainer stack are imported where used: test modules that need none of them stay fast

NUM_CLASSES = 10


def make_dataset(
    n: int, num_classes: int = NUM_CLASSES, size: int = 32, seed: int = 0, label_offset: int = 0, noise: float = 0.8
):
    """Learnable synthetic images: each class is a fixed random pattern plus noise."""
    import datasets

    rng = np.random.default_rng(seed)
    prototypes = np.random.default_rng(1234).normal(size=(num_classes, 3, size, size)).astype(np.float32)
    labels = rng.integers(0, num_classes, size=n)
    images = prototypes[labels] + noise * rng.normal(size=(n, 3, size, size)).astype(np.float32)
    ds = datasets.Dataset.from_dict({"pixel_values": images, "labels": labels + label_offset})
    return ds.with_format("torch")


def make_models(num_classes: int = NUM_CLASSES, teacher_classes: int | None = None):
    """A ``(student, teacher)`` pair of tiny timm ResNets, built from the same seed."""
    import timm

    torch.manual_seed(0)
    student = timm.create_model("test_resnet", num_classes=num_classes)
    teacher = timm.create_model("test_resnet", num_classes=teacher_classes or num_classes)
    return student, teacher


def make_config(tmp_path, **overrides):
    """A CPU ``LKDConfig`` for a few quiet steps (no saving, no reporting) writing under ``tmp_path / "out"``."""
    from lkd_hf import LKDConfig

    defaults = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=16,
        per_device_eval_batch_size=64,
        max_steps=6,
        learning_rate=0.05,
        optim="sgd",
        logging_steps=3,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        meta_interval=2,
        seed=0,
    )
    defaults.update(overrides)
    return LKDConfig(**defaults)


@pytest.fixture(name="make_dataset")
def make_dataset_fixture():
    """:func:`make_dataset`."""
    return make_dataset


@pytest.fixture(name="make_models")
def make_models_fixture():
    """:func:`make_models`."""
    return make_models


@pytest.fixture(name="make_config")
def make_config_fixture():
    """:func:`make_config`."""
    return make_config

