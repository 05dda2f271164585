"""Shared test data, models, configs and learned losses.

The factories and helpers are plain functions, handed to tests by the fixtures of the same name (``make_dataset``,
``make_models``, ``make_config``, ``learned_networks``, ``learned_bundle``, ``fixed_inputs``,
``assert_same_losses``): a test takes the fixture as a parameter and calls it like the function, e.g.
``make_config(tmp_path, loss="kd")``. The fixture ``RUN`` gives the setting ``learned_bundle`` records. Test
modules import ``load_script`` (a recipe or benchmark script as a module) directly.

``tests/distributed_worker.py``, a script run in subprocesses (no pytest there), imports the plain functions from
this module: ``tests/`` is its script directory, so it is on its ``sys.path``.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch

# datasets, timm and lkd_hf are imported where used: test modules that need none of them stay fast
if TYPE_CHECKING:
    from lkd_hf import FeatureLossNet, LearnedLoss, LKDTrainer, LogitLossNet

NUM_CLASSES = 10
RUN = dict(  # the setting the networks of learned_bundle() were "learned" in
    teacher="test_resnet", student="test_resnet", num_classes=10, student_taps=[4], teacher_taps=[4],
    student_feature_shapes=[[96, 1, 1]], teacher_feature_shapes=[[96, 1, 1]],
)


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
    """A CPU ``LKDConfig`` for a few quiet steps (no saving, no reporting) writing under ``tmp_path / "out"``; a
    learned loss starts from KD at ``temperature`` (``lkd_init="kd"``) unless the test passes another start."""
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
        lkd_init="kd",
    )
    defaults.update(overrides)
    return LKDConfig(**defaults)


def learned_networks() -> tuple[LogitLossNet, FeatureLossNet]:
    """A logit and a feature loss network moved away from their initialisation (KD at T=3, MSE), as after meta steps."""
    from lkd_hf import FeatureLossNet, LogitLossNet

    torch.manual_seed(0)
    logit, feature = LogitLossNet(temperature=3.0), FeatureLossNet()
    with torch.no_grad():
        for p in [*logit.parameters(), *feature.parameters()]:
            p.add_(0.1 * torch.randn_like(p))
    return logit, feature


def learned_bundle(**metadata) -> LearnedLoss:
    """A ``LearnedLoss`` of :func:`learned_networks`, recording :data:`RUN` updated by ``metadata``."""
    from lkd_hf import LearnedLoss

    return LearnedLoss.from_networks(*learned_networks(), **{**RUN, **metadata})


def fixed_inputs() -> dict[str, torch.Tensor]:
    """Fixed logits ``s``, ``t``, labels ``y`` (6 samples, 10 classes) and feature maps ``fs``, ``ft``."""
    g = torch.Generator().manual_seed(1)
    return dict(
        s=torch.randn(6, 10, generator=g), t=torch.randn(6, 10, generator=g), y=torch.randint(0, 10, (6,), generator=g),
        fs=torch.randn(2, 8, 3, 3, generator=g), ft=torch.randn(2, 8, 3, 3, generator=g),
    )


def assert_same_losses(a: LearnedLoss | LKDTrainer, b: LearnedLoss | LKDTrainer) -> None:
    """The logit and feature networks of ``a`` and ``b`` (bundles or trainers) give identical values."""
    from lkd_hf import LearnedLoss

    x = fixed_inputs()
    nets = [(o.logit, o.feature) if isinstance(o, LearnedLoss) else (o.distill_loss, o.feature_loss) for o in (a, b)]
    (logit_a, feature_a), (logit_b, feature_b) = [(lo.cpu(), fe.cpu()) for lo, fe in nets]
    assert torch.equal(logit_a(x["s"], x["t"], x["y"]), logit_b(x["s"], x["t"], x["y"]))
    assert torch.equal(feature_a(x["fs"], x["ft"]), feature_b(x["fs"], x["ft"]))


def load_script(path: str | Path, name: str):
    """Import the script at ``path`` (a recipe or benchmark) as the module ``name`` (test modules import this helper).

    Its folder is on ``sys.path`` while it loads, so its ``import common`` finds that folder's shared module; no
    ``common`` stays in ``sys.modules`` before or after (``recipes/`` and ``benchmarks/`` each have one)."""
    path = Path(path)
    folder = str(path.parent)
    sys.modules.pop("common", None)
    sys.path.insert(0, folder)
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses resolve field types through their module
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(folder)
        sys.modules.pop("common", None)
    return module


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



@pytest.fixture(name="RUN")
def run_fixture():
    """A copy of :data:`RUN`."""
    return copy.deepcopy(RUN)


@pytest.fixture(name="learned_networks")
def learned_networks_fixture():
    """:func:`learned_networks`."""
    return learned_networks


@pytest.fixture(name="learned_bundle")
def learned_bundle_fixture():
    """:func:`learned_bundle`."""
    return learned_bundle


@pytest.fixture(name="fixed_inputs")
def fixed_inputs_fixture():
    """:func:`fixed_inputs`."""
    return fixed_inputs


@pytest.fixture(name="assert_same_losses")
def assert_same_losses_fixture():
    """:func:`assert_same_losses`."""
    return assert_same_losses

