"""Trainer checkpoint folders of a distillation run: their step and the student (and connector) weights."""

from __future__ import annotations

import os

import torch
from safetensors.torch import load_file
from transformers.utils import SAFE_WEIGHTS_NAME

from .constants import CONNECTORS_NAME


def checkpoint_step(checkpoint_dir: str) -> int:
    """The global step of a ``checkpoint-<step>`` folder (-1 if its name does not tell).

    Args:
        checkpoint_dir: path of the folder.
    """
    suffix = os.path.basename(os.path.normpath(checkpoint_dir)).rsplit("-", 1)[-1]
    return int(suffix) if suffix.isdigit() else -1


def load_student_params(checkpoint_dir: str, with_connectors: bool = False) -> dict[str, torch.Tensor]:
    """The student's weights in a checkpoint folder; with ``with_connectors``, named as in a
    :class:`~lkd_hf.StudentWithConnectors` (``student.*``, and ``connectors.*`` from ``connectors.safetensors``).

    Args:
        checkpoint_dir: a Trainer checkpoint (or output) folder holding ``model.safetensors``.
        with_connectors: name the weights for a student with feature connectors and add the connectors.
    """
    path = os.path.join(checkpoint_dir, SAFE_WEIGHTS_NAME)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No {SAFE_WEIGHTS_NAME} in checkpoint {checkpoint_dir!r}.")
    params = load_file(path)
    if not with_connectors:
        return params
    params = {f"student.{n}": t for n, t in params.items()}
    connectors = os.path.join(checkpoint_dir, CONNECTORS_NAME)
    if os.path.exists(connectors):
        params.update({f"connectors.{n}": t for n, t in load_file(connectors).items()})
    return params
