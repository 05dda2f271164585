"""lkd_hf: Learnable Knowledge Distillation (LKD) for timm vision models on the Hugging Face Trainer.

Quick use::

    from lkd_hf import LKDConfig, LKDTrainer
    trainer = LKDTrainer(model=student, teacher=teacher, args=LKDConfig(output_dir="out", loss="lkd"),
                         train_dataset=train, eval_dataset=test)
    trainer.train()

``import lkd_hf`` registers the package's small models in timm and its losses in the loss registry; the Trainer
stack (``transformers.Trainer``, ``datasets``, ``evaluate``) is imported when a name that needs it is first used.
"""

import importlib
from typing import Any

from . import models  # noqa: F401  (registers lkd_hf's small models in timm)
from .constants import LOSS_DIRNAME
from .hub import LearnedLoss, LearnedLossConfig
from .losses.learned import PRETRAINED_LOSS_DIR, pretrained_logit_loss
from .losses.networks import FeatureLossNet, LogitLossNet
from .losses import (
    ATLoss,
    DISTLoss,
    DKDLoss,
    FitNetLoss,
    KDLoss,
    available_losses,
    build_loss,
    parse_loss_spec,
    register_loss,
)
from .meta.hypergradients import available_hypergradients, register_hypergradient
from .version import __version__

_LAZY = {
    "LKDConfig": "config",
    "LKDTrainer": "trainer",
    "Distiller": "distiller",
    "LossLearner": "meta.learner",
    "DistillationObjective": "objective",
    "build_objective": "objective",
    "BUNDLED_DATASETS": "data",
    "ConvertMode": "data",
    "ImageCollator": "data",
    "build_datasets": "data",
    "check_columns": "data",
    "dataset_num_classes": "data",
    "image_transform": "data",
    "load_image_splits": "data",
    "resolve_data_config": "data",
    "with_transform": "data",
    "Connector": "features",
    "StudentWithConnectors": "features",
    "forward_with_features": "features",
    "build_compute_metrics": "metrics",
    "plot_learned_loss": "plots",
    "checkpoint_step": "resume.state",
    "model_num_classes": "model_info",
}


def __getattr__(name: str) -> Any:
    """Import the module of a lazily exported name on first use."""
    if name not in _LAZY:
        raise AttributeError(f"module 'lkd_hf' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ATLoss",
    "DISTLoss",
    "DKDLoss",
    "FeatureLossNet",
    "FitNetLoss",
    "KDLoss",
    "LOSS_DIRNAME",
    "LearnedLoss",
    "LearnedLossConfig",
    "LogitLossNet",
    "PRETRAINED_LOSS_DIR",
    "available_hypergradients",
    "available_losses",
    "build_loss",
    "parse_loss_spec",
    "pretrained_logit_loss",
    "register_hypergradient",
    "register_loss",
    "__version__",
    *_LAZY,
]
__all__.sort()
