"""lkd_hf: Learnable Knowledge Distillation (LKD) for timm vision models on the Hugging Face Trainer.

Quick use::

    from lkd_hf import LKDConfig, LKDTrainer
    trainer = LKDTrainer(model=student, teacher=teacher, args=LKDConfig(output_dir="out", loss="lkd"),
                         train_dataset=train, eval_dataset=test)
    trainer.train()
"""

__version__ = "0.1.0"

from . import models  # noqa: F401  (registers lkd_hf's small models in timm)
from .config import LKDConfig
from .data import BUNDLED_DATASETS, ImageCollator, build_datasets, image_transform, load_image_splits, with_transform
from .meta.hypergradients import available_hypergradients, register_hypergradient
from .features import Connector, StudentWithConnectors, forward_with_features
from .hub import LearnedLoss, LearnedLossConfig
from .loss_networks import FeatureLossNet, LogitLossNet
from .losses import (
    ATLoss,
    DISTLoss,
    DKDLoss,
    FitNetLoss,
    KDLoss,
    available_losses,
    build_loss,
    register_loss,
)
from .metrics import build_compute_metrics
from .plots import plot_learned_loss
from .trainer import LKDTrainer

__all__ = [
    "ATLoss",
    "BUNDLED_DATASETS",
    "Connector",
    "DISTLoss",
    "DKDLoss",
    "FeatureLossNet",
    "FitNetLoss",
    "ImageCollator",
    "KDLoss",
    "LKDConfig",
    "LKDTrainer",
    "LearnedLoss",
    "LearnedLossConfig",
    "LogitLossNet",
    "StudentWithConnectors",
    "available_hypergradients",
    "available_losses",
    "build_compute_metrics",
    "build_datasets",
    "build_loss",
    "forward_with_features",
    "image_transform",
    "load_image_splits",
    "plot_learned_loss",
    "register_hypergradient",
    "register_loss",
    "with_transform",
    "__version__",
]
