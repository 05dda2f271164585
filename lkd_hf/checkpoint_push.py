"""A ``TrainerCallback`` that completes the Trainer's pushes of checkpoints during training with the files the
Trainer does not know: the learned loss and the feature connectors."""

from __future__ import annotations

import os
import shutil
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .constants import CONNECTORS_NAME, LOSS_DIRNAME


class CheckpointPushFiles(TrainerCallback):
    """Copies a checkpoint's learned loss (``lkd_loss/``) and feature connectors into ``output_dir`` when the Trainer
    pushes that checkpoint during training (``on_push_begin``; the Trainer copies only the model's own files)."""

    def __init__(self) -> None:
        self.training = False

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.training = True

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.training = False

    def on_push_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """During training a push is the Trainer's push of the checkpoint just saved (on the main process)."""
        checkpoint = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if not self.training or not os.path.isdir(checkpoint):
            return
        loss_dir = os.path.join(checkpoint, LOSS_DIRNAME)
        if os.path.isdir(loss_dir):
            shutil.copytree(loss_dir, os.path.join(args.output_dir, LOSS_DIRNAME), dirs_exist_ok=True)
        connectors = os.path.join(checkpoint, CONNECTORS_NAME)
        if os.path.isfile(connectors):
            shutil.copy(connectors, args.output_dir)
