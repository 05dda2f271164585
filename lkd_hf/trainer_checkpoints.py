"""The checkpoint side of :class:`~lkd_hf.LKDTrainer`: what a resumed run needs beyond the Trainer's own state (the
loss learner's state, the loss modules trained with the student, the not yet logged loss statistics) and the feature
connectors saved beside the plain student."""

from __future__ import annotations

import collections
import os

from safetensors.torch import save_file
from torch import nn
from transformers import Trainer
from transformers.utils import logging

from .checkpoints import load_student_params
from .constants import CONNECTORS_NAME, LKD_STATE_DIRNAME
from .features import StudentWithConnectors
from .nonfinite import check_finite

logger = logging.get_logger(__name__)


class CheckpointMixin(Trainer):
    """Checkpoint and saving hooks of a distillation trainer (needs its ``objective``, ``loss_learner``, ``_metrics``,
    ``_step_seconds`` and ``save_learned_loss``)."""

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """Also restores the connectors of a feature-distillation run (saved beside the plain student)."""
        model = model if model is not None else self.model
        if not isinstance(self.accelerator.unwrap_model(model), StudentWithConnectors):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        wrapper = self.accelerator.unwrap_model(model)
        wrapper.load_state_dict(load_student_params(resume_from_checkpoint, with_connectors=True))

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        """Beside the student's optimizer and scheduler, save the loss modules trained with the student
        (:meth:`DistillationObjective.save_student_trained`), the loss learner and the loss statistics not yet logged
        (:meth:`LossLearner.save_checkpoint`)."""
        super()._save_optimizer_and_scheduler(output_dir)
        if self.args.should_save:
            self.objective.save_student_trained(output_dir)
        if self.loss_learner is not None:
            extra = {"metrics": {n: [v.detach().cpu() for v in vals] for n, vals in self._metrics.items()},
                     "step_seconds": self._step_seconds}
            self.loss_learner.save_checkpoint(output_dir, self.args.should_save, extra)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """Beside the student's optimizer and scheduler, restore the loss learner on resume
        (:meth:`LossLearner.load_checkpoint`)."""
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        self.objective.load_student_trained(checkpoint)
        if self.loss_learner is None:
            if os.path.isdir(os.path.join(checkpoint, LKD_STATE_DIRNAME)):
                logger.info(f"The loss of this run is not learned: ignoring the LKD state in {checkpoint}.")
            return
        extra = self.loss_learner.load_checkpoint(checkpoint, loss=self.args.loss)
        if extra is not None:
            self._metrics = collections.defaultdict(list)
            for name, values in extra["metrics"].items():
                self._metrics[name] = [v.to(self.args.device) for v in values]
            self._step_seconds = float(extra["step_seconds"])

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Save the plain student (loadable by ``timm.create_model`` + ``load_state_dict``) as ``model.safetensors``,
        the feature connectors as ``connectors.safetensors`` and the learned loss (:meth:`learned_loss`) under
        ``lkd_loss/`` (its card names ``<hub_model_id>/lkd_loss`` when the trainer pushes). While a temperature
        population trains, ``model.safetensors`` holds every student (``members.<k>.*``, what a resumed run needs);
        once one is kept, that plain student."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        check_finite(self.accelerator.unwrap_model(self.model), f"saving the student to {output_dir!r}")
        connectors = None
        if isinstance(self.accelerator.unwrap_model(self.model), StudentWithConnectors):
            state_dict = state_dict if state_dict is not None else self.accelerator.unwrap_model(self.model).state_dict()
            connectors = {n[len("connectors."):]: t for n, t in state_dict.items() if n.startswith("connectors.")}
            state_dict = {n[len("student."):]: t for n, t in state_dict.items() if n.startswith("student.")}
        super()._save(output_dir, state_dict)
        if not self.args.should_save:
            return
        if connectors is not None:
            save_file({n: t.contiguous() for n, t in connectors.items()}, os.path.join(output_dir, CONNECTORS_NAME))
        self.save_learned_loss(output_dir)
