"""The Hub side of :class:`~lkd_hf.LKDTrainer`: the run's learned loss as a :class:`~lkd_hf.LearnedLoss`, pushed with
the student (``lkd_loss/``) and, when ``loss_hub_model_id`` is set, to a repo of its own; the student's model card."""

from __future__ import annotations

import os
import shutil
import types
from typing import Any

from transformers import Trainer
from transformers.utils import logging

from .constants import CONNECTORS_NAME, LOSS_DIRNAME
from .hub import LearnedLoss, create_repo, dataset_name, describe_run, last_eval_metrics
from .loss_networks import FeatureLossNet, LogitLossNet
from .model_info import model_num_classes

logger = logging.get_logger(__name__)


class HubExportMixin(Trainer):
    """Hub hooks of a distillation trainer (needs its ``distill_loss``, ``feature_loss``, ``teacher``, ``student``,
    ``trained_model`` and ``objective``)."""

    def _loss_networks(self) -> tuple[LogitLossNet | None, FeatureLossNet | None]:
        """The run's logit and feature losses where they are loss networks (``None`` where hand-made or absent)."""
        logit = self.distill_loss if isinstance(self.distill_loss, LogitLossNet) else None
        feature = self.feature_loss if isinstance(self.feature_loss, FeatureLossNet) else None
        return logit, feature

    def learned_loss(self, **metadata: Any) -> LearnedLoss | None:
        """This run's loss networks with its setting (teacher, student, classes, taps, dataset, steps, last evaluation)
        as one :class:`~lkd_hf.LearnedLoss`; ``None`` when its losses are not loss networks.

        Args:
            **metadata: overrides of config fields, e.g. ``dataset="cifar100"`` (the trainer only knows the names of
                Hub datasets).
        """
        logit, feature = self._loss_networks()
        if logit is None and feature is None:
            return None
        teacher = None if self.teacher is None else self.accelerator.unwrap_model(self.teacher)
        run = describe_run(self.trained_model(), teacher, model_num_classes(self.student))
        run.update(loss=self.args.loss, dataset=dataset_name(self.train_dataset), steps=self.state.global_step,
                   metrics=last_eval_metrics(self.state.log_history))
        return LearnedLoss.from_networks(logit, feature, **{**run, **metadata})

    def save_learned_loss(self, output_dir: str) -> None:
        """Save the run's learned loss (:meth:`learned_loss`) to ``<output_dir>/lkd_loss`` (its card names
        ``<hub_model_id>/lkd_loss`` when the trainer pushes): the loss networks the run trained the student with, learned
        or kept fixed (a population's at the kept student's temperature and weight); nothing for hand-made losses.

        Args:
            output_dir: the output or checkpoint folder.
        """
        learned = self.learned_loss()
        if learned is not None:
            repo_id = None if self.hub_model_id is None else f"{self.hub_model_id}/{LOSS_DIRNAME}"
            learned.save_pretrained(os.path.join(output_dir, LOSS_DIRNAME), repo_id=repo_id)

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        """Also create the learned loss's own repo (``loss_hub_model_id``), so that a wrong id or an unreachable Hub
        fails before training, as it does for the student's repo.

        Args:
            token, private: as in :meth:`transformers.Trainer.init_hf_repo` (``None``: the ``hub_token`` and
                ``hub_private_repo`` of the training arguments); also used for the learned loss's repo.
        """
        uses_networks = any(net is not None for net in self._loss_networks())
        if self.args.loss_hub_model_id is not None and uses_networks and self.is_world_process_zero():
            token = token if token is not None else self.args.hub_token
            private = private if private is not None else self.args.hub_private_repo
            create_repo(self.args.loss_hub_model_id, token, private)
        super().init_hf_repo(token, private)

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """Push the student with its learned loss (in ``lkd_loss/``), then, when ``loss_hub_model_id`` is set, the
        learned loss to that repo too (blocking).

        Args:
            commit_message, blocking, token, revision, private, **kwargs: as in
                :meth:`transformers.Trainer.push_to_hub`; ``commit_message`` (or ``"Learned loss"`` when it is empty),
                ``token`` and ``private`` are also used for the push of the learned loss to ``loss_hub_model_id``.
        """
        result = super().push_to_hub(
            commit_message=commit_message, blocking=blocking, token=token, revision=revision, private=private, **kwargs
        )
        repo_id = self.args.loss_hub_model_id
        if repo_id is not None and self.is_world_process_zero():
            learned = self.learned_loss()
            if learned is None:
                logger.warning(f"loss_hub_model_id={repo_id!r}: this run uses no loss network, nothing to push.")
            else:
                learned.push_to_hub(
                    repo_id,
                    commit_message=commit_message or "Learned loss",
                    token=token if token is not None else self.args.hub_token,
                    private=private if private is not None else self.args.hub_private_repo,
                )
        return result

    def create_model_card(self, **kwargs: Any) -> None:
        """The Trainer's model card of the student. The Trainer reads the model a run fine-tuned from in the model's
        ``config``, which timm models lack: without ``finetuned_from=`` the card says the student was trained from
        scratch.

        Args:
            **kwargs: as in :meth:`transformers.Trainer.create_model_card` (``language``, ``license``, ``tags``,
                ``model_name``, ``finetuned_from``, ``tasks``, ``dataset_tags``, ``dataset``, ``dataset_args``).
        """
        if hasattr(self.model, "config") or kwargs.get("finetuned_from") is not None:
            return super().create_model_card(**kwargs)
        self.model.config = types.SimpleNamespace()  # no `_name_or_path`: no base model
        try:
            super().create_model_card(**kwargs)
        finally:
            del self.model.config

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """Copy the checkpoint's learned loss and feature connectors into ``output_dir`` before the Trainer pushes
        it (the Trainer copies only the model's own files)."""
        if self.is_world_process_zero():
            loss_dir = os.path.join(checkpoint_folder, LOSS_DIRNAME)
            if os.path.isdir(loss_dir):
                shutil.copytree(loss_dir, os.path.join(self.args.output_dir, LOSS_DIRNAME), dirs_exist_ok=True)
            connectors = os.path.join(checkpoint_folder, CONNECTORS_NAME)
            if os.path.isfile(connectors):
                shutil.copy(connectors, self.args.output_dir)
        super()._push_from_checkpoint(checkpoint_folder)
