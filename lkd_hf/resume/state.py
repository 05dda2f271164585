"""What a resumed run reads and writes beside the Trainer's own checkpoint files: the checkpoint's step and student
weights, and the run state of the distillation (the loss modules trained with the student, the loss learner, the loss
statistics not yet logged)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import SAFE_WEIGHTS_NAME, logging

from ..constants import CONNECTORS_NAME, LKD_STATE_DIRNAME

if TYPE_CHECKING:
    from ..meta.learner import LossLearner
    from ..objective import DistillationObjective

logger = logging.get_logger(__name__)


def checkpoint_step(checkpoint_dir: str) -> int:
    """The global step of a ``checkpoint-<step>`` folder (-1 if its name does not tell).

    Args:
        checkpoint_dir: path of the folder.
    """
    suffix = os.path.basename(os.path.normpath(checkpoint_dir)).rsplit("-", 1)[-1]
    return int(suffix) if suffix.isdigit() else -1


def is_checkpoint_of_step(folder: str, step: int) -> bool:
    """Whether ``folder`` is the Trainer's checkpoint folder of ``step`` (``checkpoint-<step>``).

    Args:
        folder: a folder the Trainer saves to.
        step: the current global step.
    """
    return os.path.basename(os.path.normpath(folder)) == f"{PREFIX_CHECKPOINT_DIR}-{step}"


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


def save_run_state(
    checkpoint_dir: str,
    objective: DistillationObjective,
    learner: LossLearner | None,
    metrics: dict[str, list[torch.Tensor]],
    step_seconds: float,
    main_process: bool,
) -> None:
    """Save the loss modules trained with the student (:meth:`DistillationObjective.save_student_trained`) and the
    loss learner with the statistics not yet logged (:meth:`LossLearner.save_checkpoint`) into a checkpoint folder.

    Args:
        checkpoint_dir: the checkpoint folder.
        objective: the student's objective.
        learner: the loss learner (``None`` when the loss is not learned).
        metrics: the objective's parts logged since the last log, by name.
        step_seconds: the seconds spent in student steps so far.
        main_process: whether this process writes the shared files.
    """
    if main_process:
        objective.save_student_trained(checkpoint_dir)
    if learner is not None:
        extra = {"metrics": {n: [v.detach().cpu() for v in vals] for n, vals in metrics.items()},
                 "step_seconds": step_seconds}
        learner.save_checkpoint(checkpoint_dir, main_process, extra)


def load_run_state(
    checkpoint_dir: str, objective: DistillationObjective, learner: LossLearner | None, loss: str, device: torch.device
) -> tuple[dict[str, list[torch.Tensor]], float] | None:
    """Restore what :func:`save_run_state` wrote; returns the statistics not yet logged and the student steps'
    seconds, or ``None`` when the checkpoint holds no learner state (or the loss is not learned).

    Args:
        checkpoint_dir: the checkpoint folder.
        objective: the student's objective.
        learner: the loss learner (``None`` when the loss is not learned: its state in the checkpoint is ignored).
        loss: the run's loss spec (named in errors).
        device: where the statistics go.
    """
    objective.load_student_trained(checkpoint_dir)
    if learner is None:
        if os.path.isdir(os.path.join(checkpoint_dir, LKD_STATE_DIRNAME)):
            logger.info(f"The loss of this run is not learned: ignoring the LKD state in {checkpoint_dir}.")
        return None
    extra = learner.load_checkpoint(checkpoint_dir, loss=loss)
    if extra is None:
        return None
    metrics = {name: [v.to(device) for v in values] for name, values in extra["metrics"].items()}
    return metrics, float(extra["step_seconds"])
