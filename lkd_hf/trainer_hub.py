"""What :class:`~lkd_hf.LKDTrainer` exports beside the student: the run's loss networks as one
:class:`~lkd_hf.LearnedLoss` (saved under ``lkd_loss/``, pushed to a repo of its own when ``loss_hub_model_id`` is set)
and the model card of a timm student."""

from __future__ import annotations

import os
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn
from transformers import TrainerState
from transformers.utils import logging

from .config import LKDConfig
from .constants import LOSS_DIRNAME
from .distiller import Distiller
from .hub import LearnedLoss, create_repo
from .model_card import dataset_name, last_eval_metrics

logger = logging.get_logger("lkd_hf.trainer")  # these are the trainer's methods: its warnings go under its name


def run_learned_loss(distiller: Distiller, loss: str, train_dataset: Any, state: TrainerState, meta_steps: int | None,
                     **metadata: Any) -> LearnedLoss | None:
    """A run's loss networks with its setting (teacher, student, classes, taps, dataset, steps, last evaluation, the
    meta steps that updated them and, for a population, its factors and the student kept) as one
    :class:`~lkd_hf.LearnedLoss`; ``None`` when its losses are not loss networks.

    Args:
        distiller: the run's student side (its objective holds the losses).
        loss: the run's loss spec (``LKDConfig.loss``).
        train_dataset: the training data (named in the config when it knows its name).
        state: the Trainer's state (``global_step``, ``log_history``).
        meta_steps: the meta steps that updated the loss networks (0 when none learned them).
        **metadata: overrides of config fields, e.g. ``dataset="cifar100"`` (the trainer only knows the names of
            Hub datasets).
    """
    logit, feature = distiller.loss_networks()
    if logit is None and feature is None:
        return None
    run = {**distiller.describe(), **distiller.describe_population()}
    run.update(loss=loss, dataset=dataset_name(train_dataset), steps=state.global_step,
               metrics=last_eval_metrics(state.log_history), meta_steps=meta_steps)
    return LearnedLoss.from_networks(logit, feature, **{**run, **metadata})


def save_learned_loss(learned: LearnedLoss | None, output_dir: str, hub_model_id: str | None) -> None:
    """Save a run's learned loss to ``<output_dir>/lkd_loss``, its card naming ``<hub_model_id>/lkd_loss`` when the
    trainer pushes; nothing for ``None`` (hand-made losses).

    Args:
        learned: the run's learned loss (:func:`run_learned_loss`).
        output_dir: the output or checkpoint folder.
        hub_model_id: the student's repo (``None`` when the trainer does not push).
    """
    if learned is not None:
        repo_id = None if hub_model_id is None else f"{hub_model_id}/{LOSS_DIRNAME}"
        learned.save_pretrained(os.path.join(output_dir, LOSS_DIRNAME), repo_id=repo_id)


def _hub_access(args: LKDConfig, token: str | None, private: bool | None) -> tuple[str | None, bool | None]:
    """The token and privacy of a push: those given, else the ``hub_token`` and ``hub_private_repo`` of ``args``."""
    return (token if token is not None else args.hub_token,
            private if private is not None else args.hub_private_repo)


def create_loss_repo(args: LKDConfig, loss_networks: tuple[nn.Module | None, ...], token: str | None = None,
                     private: bool | None = None) -> None:
    """Create the learned loss's own repo (``args.loss_hub_model_id``) when it is set and the run has loss networks,
    so that a wrong id or an unreachable Hub fails before training.

    Args:
        args: the training arguments.
        loss_networks: the run's logit and feature loss networks (:meth:`Distiller.loss_networks`).
        token, private: as in :meth:`transformers.Trainer.init_hf_repo` (``None``: those of ``args``).
    """
    if args.loss_hub_model_id is not None and any(net is not None for net in loss_networks):
        create_repo(args.loss_hub_model_id, *_hub_access(args, token, private))


def push_learned_loss(learned: LearnedLoss | None, args: LKDConfig, commit_message: str | None,
                      token: str | None = None, private: bool | None = None) -> None:
    """Push a run's learned loss to ``args.loss_hub_model_id`` (blocking); a warning when the run has none.

    Args:
        learned: the run's learned loss (:func:`run_learned_loss`).
        args: the training arguments (``loss_hub_model_id`` set).
        commit_message: the commit message (``"Learned loss"`` when it is empty).
        token, private: as in :meth:`transformers.Trainer.push_to_hub` (``None``: those of ``args``).
    """
    repo_id = args.loss_hub_model_id
    if learned is None:
        logger.warning(f"loss_hub_model_id={repo_id!r}: this run uses no loss network, nothing to push.")
        return
    token, private = _hub_access(args, token, private)
    learned.push_to_hub(repo_id, commit_message=commit_message or "Learned loss", token=token, private=private)


@contextmanager
def card_config(model: nn.Module, finetuned_from: str | None) -> Iterator[None]:
    """While the Trainer writes the student's model card: an empty ``config`` on a timm model, which has none, so that
    without ``finetuned_from`` the card says the student was trained from scratch (the Trainer reads the model a run
    fine-tuned from in the model's ``config``).

    Args:
        model: the trainer's model.
        finetuned_from: the ``finetuned_from`` given to the card (with one, the model is left as it is).
    """
    if hasattr(model, "config") or finetuned_from is not None:
        yield
        return
    model.config = types.SimpleNamespace()  # no `_name_or_path`: no base model
    try:
        yield
    finally:
        del model.config
