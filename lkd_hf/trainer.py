"""``LKDTrainer``: a ``transformers.Trainer`` that distills a timm student from a frozen timm teacher.

The student step minimises the :class:`~lkd_hf.objective.DistillationObjective` ``ce_weight * CE + distill_weight *
distill_loss (+ feature_weight * feature_loss)``. When the distillation loss has trainable parameters (the learned
``lkd`` / ``feat`` loss networks), a :class:`~lkd_hf.meta.learner.LossLearner` updates them every ``meta_interval``
student steps. With a learned logit loss and an evaluation dataset, students at several temperatures of that loss train
side by side and the best is kept (:mod:`lkd_hf.population`). The student side is a :class:`~lkd_hf.Distiller`; the
trainer wires it and the loss learner to the Trainer's hooks, saves what a resumed run needs and exports the learned
loss with the student.
"""

from __future__ import annotations

import collections
import os
import time
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import Dataset
from transformers import Trainer
from transformers.utils import logging

from . import trainer_hub
from .checkpoint_push import CheckpointPushFiles
from .config import LKDConfig
from .constants import CONNECTORS_NAME
from .data import ImageCollator
from .data_fit import check_data_fits, check_datasets
from .distiller import Distiller
from .hub import LearnedLoss
from .losses.learned import freeze_knobs
from .losses.networks import LogitLossNet
from .meta.batches import meta_validation_data
from .meta.hypergradients import Hypergradient
from .meta.learner import LossLearner
from .meta.settings import MetaConfig
from .meta.snapshots import Snapshot
from .metrics import build_compute_metrics
from .model_info import model_num_classes
from .nonfinite import NonFiniteGuard, check_finite
from .objective import DistillationObjective, build_objective, pop_means
from .population import choice_line, choice_logs, member_key, population_drops, population_factors
from .population_choice import DropWorstStudent, evaluate_students
from .resume.checks import checkpoint_to_resume, named_checkpoint_failure
from .resume.settings import check_resume_settings, run_settings, save_run_settings
from .resume.state import checkpoint_step, is_checkpoint_of_step, load_run_state, save_run_state
from .run_checks import check_optimizer, check_unrolled_support, checked_teacher, input_size, reused_networks
from .safe_io import OutputDirOwner, named_save_failure

logger = logging.get_logger(__name__)


class LKDTrainer(Trainer):
    """Trainer for knowledge distillation with a learned (or hand-made) distillation loss.

    Args:
        model: the timm student (trained).
        teacher: the timm teacher. Frozen (``requires_grad=False``, eval mode) and never trained; not needed for
            ``loss="ce"``.
        args: an :class:`~lkd_hf.LKDConfig`.
        train_dataset: dataset of ``{"pixel_values", "labels"}`` examples.
        eval_dataset: the same for evaluation (one dataset or a dict of them); a population
            (``population_temperature_factors``, ``population_weight_factors``) keeps the student that scores best on
            it (the first of a dict).
        meta_dataset: held-out data for the meta (validation) loss, e.g. the ``"validation"`` split of
            :func:`~lkd_hf.build_datasets`. Without it, ``args.lkd_val_fraction`` of ``train_dataset`` is split off
            when set (seeded by ``args.seed``; the student trains on the rest), else the meta steps validate on the
            training batch (``meta_val_source="train_batch"``) and no image is held out.
        loss_network: a ready logit distillation loss module (e.g. a loaded :class:`~lkd_hf.LogitLossNet`) used
            instead of building the logit loss of ``args.loss`` from the registry.
        feature_loss_network: the same for the feature loss (e.g. a loaded :class:`~lkd_hf.FeatureLossNet`).
        data_collator: default :class:`~lkd_hf.ImageCollator` (validates labels).
        compute_metrics: default top-1/top-5 accuracy (:func:`~lkd_hf.build_compute_metrics`).
        **kwargs: passed on to :class:`transformers.Trainer`.
    """

    def __init__(
        self,
        model: nn.Module,
        teacher: nn.Module | None = None,
        args: LKDConfig | None = None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | dict[str, Dataset] | None = None,
        meta_dataset: Dataset | None = None,
        loss_network: nn.Module | None = None,
        feature_loss_network: nn.Module | None = None,
        data_collator: Any = None,
        compute_metrics: Any = None,
        **kwargs: Any,
    ) -> None:
        if args is None:
            args = LKDConfig(output_dir="lkd_output")
        if not isinstance(args, LKDConfig):
            raise TypeError(f"LKDTrainer needs an LKDConfig, got {type(args).__name__}.")
        check_datasets(train_dataset=train_dataset, eval_dataset=eval_dataset, meta_dataset=meta_dataset)
        learned = LearnedLoss.from_pretrained(args.loss_from) if args.loss_from is not None else None
        if learned is not None:  # networks passed in are kept; the bundle's where the loss spec names them
            loss_network, feature_loss_network = reused_networks(args.loss, learned, loss_network, feature_loss_network)
        if isinstance(loss_network, LogitLossNet) and not args.lkd_learn_knobs:
            freeze_knobs(loss_network)
        objective = build_objective(args, loss_network, feature_loss_network)
        num_classes = model_num_classes(model)
        if objective.loss_modules:
            teacher = checked_teacher(model, teacher, num_classes)
        check_data_fits(model, teacher, num_classes, train_dataset=train_dataset, eval_dataset=eval_dataset,
                        meta_dataset=meta_dataset)
        with_features = objective.feature_loss is not None
        self.distiller = Distiller(
            model, teacher, objective, feature_taps=args.feature_taps,
            teacher_feature_taps=args.teacher_feature_taps or args.feature_taps,
            input_size=input_size(model, train_dataset) if with_features else None,
            population_factors=population_factors(args, objective, eval_dataset is not None),
        )
        drops = population_drops(args, self.distiller.factors)
        if learned is not None:  # errors on other classes / teacher feature taps, warns on another pair
            learned.check_compatible(**self.distiller.describe())
        self.run_settings = run_settings(args, self.distiller, drops, learned)  # what a resume compares (lkd_run.json)
        learns_loss = bool(objective.meta_parameters())
        if learns_loss and args.hypergradient == "unrolled":
            check_unrolled_support(self.distiller.learning_student, input_size(model, train_dataset))
        val_source, train_dataset, meta_dataset = meta_validation_data(args, train_dataset, meta_dataset, learns_loss)
        if data_collator is None:
            data_collator = ImageCollator(num_classes=num_classes)
        if compute_metrics is None and num_classes is not None:
            compute_metrics = build_compute_metrics(num_classes)
        check_optimizer(kwargs.get("optimizers"), teacher)
        self.loss_learner = None  # the Trainer's __init__ may call init_hf_repo
        self.output_dir_owner = OutputDirOwner()

        super().__init__(model=self.distiller.trainable_module, args=args, data_collator=data_collator,
                         train_dataset=train_dataset, eval_dataset=eval_dataset, compute_metrics=compute_metrics,
                         **kwargs)
        self.loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean
        self.add_callback(CheckpointPushFiles())
        if drops:
            self.add_callback(DropWorstStudent(self, drops, learns_loss))
        if self.distiller.num_students > 1 and (self.is_fsdp_enabled or self.is_deepspeed_enabled):
            raise ValueError("A population clips each student on its own: not under FSDP or DeepSpeed; "
                             "leave population_weight_factors unset and set population_temperature_factors=[1.0].")
        if teacher is not None:
            self.distiller.teacher = self.accelerator.prepare_model(teacher, evaluation_mode=True)
        for module in objective.loss_modules:
            module.to(self.args.device, torch.float32)
        self._metrics: dict[str, list[torch.Tensor]] = collections.defaultdict(list)
        self._step_seconds = 0.0
        self.nonfinite_guard = NonFiniteGuard(args.max_nonfinite_steps)
        if learns_loss:
            self.loss_learner = LossLearner(
                objective, MetaConfig.from_config(args), meta_dataset=meta_dataset, val_source=val_source,
                collate_fn=self.data_collator, prepare_batch=self._prepare_inputs, device=self.args.device,
                rank=args.process_index, world_size=args.world_size,
            )
            for checkpoint in args.snapshot_checkpoints:
                self.loss_learner.snapshot_pool.add(checkpoint_step(checkpoint),
                                                    self.distiller.checkpoint_weights(checkpoint))

    # public views
    @property
    def student(self) -> nn.Module:
        """The plain student model (without the feature connectors; a population's kept student), e.g. for export."""
        return self.distiller.student

    @property
    def teacher(self) -> nn.Module | None:
        """The frozen teacher (``None`` for ``loss="ce"``)."""
        return self.distiller.teacher

    @property
    def objective(self) -> DistillationObjective:
        """The student's objective (a population's: its first student's, then the kept student's)."""
        return self.distiller.objective

    @property
    def distill_loss(self) -> nn.Module | None:
        """The logit distillation loss (``None`` for ``loss="ce"`` or a feature loss alone)."""
        return self.objective.distill_loss

    @property
    def feature_loss(self) -> nn.Module | None:
        """The feature distillation loss, if any."""
        return self.objective.feature_loss

    @property
    def loss_params(self) -> list[torch.Tensor]:
        """The learned loss parameters (empty when the loss is hand-made or frozen)."""
        return [] if self.loss_learner is None else self.loss_learner.params

    # the student step
    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training: the distillation objective (a population's: summed over its students, whose objectives and
        parts are recorded under :func:`member_key`). Evaluation: the student's cross-entropy.

        Args:
            model: the (possibly wrapped) student; in training mode the objective is computed, else the CE.
            inputs: a batch on the device with ``pixel_values`` and ``labels`` (and, when already computed,
                ``teacher_logits`` / ``teacher_features``; else the teacher's outputs are added).
            return_outputs: also return ``{"logits": student_logits}``.
            num_items_in_batch: as in :meth:`transformers.Trainer.compute_loss`; unused (a per-batch mean).
        """
        if model.training and "teacher_logits" not in inputs:
            inputs = self.with_teacher_outputs(dict(inputs))
        result = self.distiller(inputs["pixel_values"], inputs["labels"], inputs, module=model)
        for name, value in result["parts"].items():
            self._metrics[name].append(value.detach())
        if self.distiller.num_students > 1 and result["members"]:  # training: one entry per student still training
            for k, member in zip(self.distiller.active_members, result["members"], strict=True):
                for name, value in member.items():
                    self._metrics[member_key(k, name)].append(value.detach())
        return (result["loss"], {"logits": result["output"]}) if return_outputs else result["loss"]

    def with_teacher_outputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """A prepared batch with the teacher's outputs added (``teacher_logits``, and ``teacher_features`` for a
        feature loss; :meth:`Distiller.teacher_outputs`), computed once per batch and reused by the student and meta
        steps.

        Args:
            inputs: a batch on the device (e.g. from ``Trainer._prepare_inputs``).
        """
        with self.compute_loss_context_manager():
            inputs.update(self.distiller.teacher_outputs(inputs["pixel_values"]))
        return inputs

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """The Trainer's optimizer of the student, plus the loss modules' parameters trained with it (e.g. CTKD's).

        Args:
            model: as in :meth:`transformers.Trainer.create_optimizer` (``None``: the trainer's model).
        """
        optimizer = super().create_optimizer(model)
        extra = self.objective.student_trained_parameters()
        if extra and not any(p is extra[0] for group in optimizer.param_groups for p in group["params"]):
            optimizer.add_param_group({"params": extra, "weight_decay": self.args.weight_decay})
            optimizer.register_step_post_hook(lambda *_: self.objective.clear_student_trained_gradients())
        return optimizer

    def prepare_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A collated batch moved to the device, with its teacher outputs: what the student and meta steps see.

        Args:
            batch: a batch from the data collator.
        """
        return self.with_teacher_outputs(self._prepare_inputs(batch))

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        """:meth:`transformers.Trainer.train`, holding ``output_dir`` for this run alone (another writer fails at
        start), resuming only from a verified checkpoint of this run's settings with its run state
        (:mod:`lkd_hf.resume`) and naming the checkpoint folder when a save fails (a full disk). A population then
        keeps its best student (:meth:`select_member`).

        Args:
            resume_from_checkpoint: a checkpoint folder (an incomplete one is an error naming its bad file), ``True``
                (the last *complete* checkpoint of ``output_dir``, later ones skipped with a warning; ``ValueError``
                when there is none) or ``None`` / ``False`` (start afresh).
            *args, **kwargs: as in :meth:`transformers.Trainer.train` (``trial``, ``ignore_keys_for_eval``).
        """
        full_state = not (self.args.save_only_model or self.is_deepspeed_enabled or self.is_fsdp_enabled)
        with self._hold_output_dir("train()", claim=True):
            resume_from_checkpoint = checkpoint_to_resume(resume_from_checkpoint, self.args.output_dir, full_state)
            if resume_from_checkpoint is not None:  # the run state beside the Trainer's, which the Trainer restores
                check_resume_settings(resume_from_checkpoint, self.run_settings)
                restored = load_run_state(resume_from_checkpoint, self.objective, self.loss_learner, self.args.loss,
                                          self.args.device)
                if restored is not None:
                    self._metrics = collections.defaultdict(list, restored[0])
                    self._step_seconds = restored[1]
            with named_checkpoint_failure(self.args.output_dir, lambda: self.state.global_step, full_state):
                output = super().train(resume_from_checkpoint, *args, **kwargs)
            if self.distiller.num_students > 1:
                self.select_member()
            return output

    def _hold_output_dir(self, action: str, claim: bool = False, folder: str | None = None) -> AbstractContextManager:
        """Hold ``output_dir`` while ``action`` writes into ``folder`` (:meth:`~lkd_hf.safe_io.OutputDirOwner.hold`)."""
        return self.output_dir_owner.hold(self.args.output_dir, claim=claim, action=action, folder=folder,
                                          enabled=self.is_world_process_zero())

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        """Teacher forward once per batch, a meta step when due, then the student step; a student step whose loss
        or gradient is not finite is skipped (:class:`~lkd_hf.nonfinite.NonFiniteGuard`). Returns the loss the
        Trainer logs as ``loss``: the objective (a population's first student still training, as a run of that
        student alone logs it), divided by the gradient accumulation steps as the Trainer does.

        Args:
            model, inputs, num_items_in_batch: as in :meth:`transformers.Trainer.training_step` (``inputs`` is the
                collated batch, prepared here).
        """
        start = time.perf_counter()
        inputs = self.prepare_batch(inputs)
        step = self.state.global_step
        student = self.distiller.learning_student
        self.objective.set_progress(step, self.state.max_steps)
        learner, reused = self.loss_learner, False
        if learner is not None:
            learner.set_total_steps(self.state.max_steps)
            learner.observe(step, inputs, student)
            due = learner.is_due(step)
            reused = due and learner.reuses_step_gradient  # the meta step then follows the student's backward
            if due and not reused:
                self.meta_step(model)
        self.nonfinite_guard.begin(self.accelerator.unwrap_model(model))
        logged = {name: len(values) for name, values in self._metrics.items()}
        loss = super().training_step(model, inputs, num_items_in_batch)
        parts = {name: values[-1] for name, values in self._metrics.items() if len(values) > logged.get(name, 0)}
        if self.distiller.num_students > 1:  # the Trainer's `loss`: the first training student's objective
            first = member_key(self.distiller.active_members[0], "loss")
            loss = parts[first] / self.current_gradient_accumulation_steps
        checked = {"pixel_values": inputs["pixel_values"], "teacher_logits": inputs.get("teacher_logits"), **parts}
        if self.accelerator.sync_gradients:
            self.objective.average_student_trained_gradients()
        # steps are dropped on the averaged gradient (alike on every process); under fp16 the scaler drops them
        check_grads = self.accelerator.sync_gradients and self.accelerator.scaler is None
        params = [*model.parameters(), *self.objective.student_trained_parameters()] if check_grads else None
        if self.nonfinite_guard.end(step, checked, params):
            for name in parts:  # the skipped step's terms stay out of the logs
                self._metrics[name].pop()
            if check_grads:  # parameters without a gradient are not updated by the optimizer
                model.zero_grad(set_to_none=True)
                self.objective.clear_student_trained_gradients()
        if reused:  # the real step's gradient is the first virtual step's (none after a skipped step)
            grads = [p.grad for p in student.parameters() if p.requires_grad]
            self.meta_step(model, first_step_grads=None if any(g is None for g in grads) else grads)
        self._step_seconds += time.perf_counter() - start
        return loss

    # the outer loop (delegates to the loss learner)
    def _require_learner(self) -> LossLearner:
        if self.loss_learner is None:
            raise ValueError("This run learns no loss: use a learnable loss (e.g. loss='lkd') that is not frozen.")
        return self.loss_learner

    def meta_step(self, model: nn.Module, snapshot: Snapshot | None = None, first_step_grads: Any = None) -> None:
        """One outer step (:meth:`LossLearner.step`) at the current global step.

        Args:
            model: the (possibly wrapped) model being trained; the step learns from the distiller's learning student
                (:attr:`Distiller.learning_student`).
            snapshot: the start of the virtual steps; default: one the snapshot pool samples.
            first_step_grads: the first virtual step's training gradient, when known (:meth:`LossLearner.step`).
        """
        self._require_learner().step(self.distiller.learning_student, self.state.global_step,
                                     self._student_lr(), snapshot, first_step_grads=first_step_grads)

    def compute_hypergradient(self, model: nn.Module, snapshot: Snapshot | None = None) -> Hypergradient:
        """The hypergradient a meta step would apply (:meth:`LossLearner.compute_hypergradient`); changes no weights.

        Args:
            model: the (possibly wrapped) model being trained (:attr:`Distiller.learning_student` is differentiated).
            snapshot: the start of the virtual steps (``None``: the live weights).
        """
        return self._require_learner().compute_hypergradient(self.distiller.learning_student, self._student_lr(),
                                                             snapshot)

    def _student_lr(self) -> float:
        """The student's current learning rate (its initial one before training)."""
        return self._get_learning_rate() if self.lr_scheduler is not None else self.args.learning_rate

    def learn_loss(self, num_steps: int) -> dict[str, float]:
        """Train only the loss network(s), from the frozen student snapshots in the pool (:meth:`LossLearner.learn`),
        e.g. seeded from an earlier run's checkpoints (``snapshot_checkpoints``); logs every ``logging_steps`` meta
        steps (``global_step`` counts meta steps). Save the result with ``trainer.learned_loss().save_pretrained(dir)``.

        Args:
            num_steps: meta steps.

        Returns:
            The last logged statistics (``output_dir`` held for this trainer, as in :meth:`train`).
        """
        learner = self._require_learner()
        self.model.to(self.args.device).train()
        loader = self.get_train_dataloader()
        batches = (self.prepare_batch(b) for _ in iter(int, 1) for b in loader)

        def log(step: int, logs: dict[str, float]) -> None:
            self.state.global_step = step
            super(LKDTrainer, self).log(logs)

        with self._hold_output_dir("learn_loss()", claim=True):
            return learner.learn(
                self.distiller.learning_student, num_steps, batches, self._student_lr(), log,
                log_every=self.args.logging_steps, progress=not self.args.disable_tqdm,
            )

    def loss_knobs(self) -> dict[str, float]:
        """The losses' global knobs (:meth:`DistillationObjective.knobs`), learned or not."""
        return self.objective.knobs()

    # logging and saving
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the averaged loss components and meta statistics to the Trainer's training logs.

        Args:
            logs, start_time: as in :meth:`transformers.Trainer.log`; the additions go into the logs that hold a
                ``loss`` (the training logs).
        """
        if "loss" in logs:
            logs.update(pop_means(self._metrics))  # the loss components since the last log, averaged
            logs["skipped_steps"] = self.nonfinite_guard.pop_count()
            if self.loss_learner is not None:
                logs.update(self.loss_learner.pop_metrics())
                logs["meta/time_share"] = self.loss_learner.seconds / max(self._step_seconds, 1e-9)
                logs.update(self.loss_learner.pool_metrics())
                logs.update(self.loss_learner.knobs())
        super().log(logs, start_time)

    # the population
    def _clip_grad_norm(self, model: nn.Module) -> torch.Tensor:
        """Clip each student of a population on its own (:meth:`Distiller.clip_grad_norm_`); a single student: the
        Trainer's clipping."""
        if self.distiller.num_students == 1:
            return super()._clip_grad_norm(model)
        self.accelerator.unscale_gradients()
        return self.distiller.clip_grad_norm_(self.args.max_grad_norm)

    def select_member(self) -> int:
        """Evaluate every student of the population still training on the (first) ``eval_dataset``, keep the best by
        ``metric_for_best_model`` (default: accuracy) as the trainer's model and objective, log ``population/*`` and
        the kept student's ``eval_*`` and name it on the console (a warning of ``lkd_hf.trainer``, main process).
        Called by :meth:`train` once training ends; returns the chosen student's index."""
        if self.distiller.num_students == 1:
            raise ValueError("This run trains a single student.")
        evaluations, scores = evaluate_students(self, self.distiller.active_members)
        best = max(scores, key=lambda k: (scores[k], -k))  # on a tie, the earlier student
        self.model = self.model_wrapped = self.distiller.keep(best)
        if self.is_world_process_zero():
            logger.warning(choice_line(best, evaluations, self.distiller.factors, self.args.metric_for_best_model,
                                       self.loss_knobs()))
        self.log(choice_logs(best, evaluations, self.distiller.factors, scores))
        return best

    # checkpoints
    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """Also restores the connectors of a feature-distillation run (saved beside the plain student)."""
        if not self.distiller.saves_connectors:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        self.distiller.trainable_module.load_state_dict(self.distiller.checkpoint_weights(resume_from_checkpoint))

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Save the plain student (timm-loadable ``model.safetensors``; every student, ``members.<k>.*``, while a
        population trains), the feature connectors (``connectors.safetensors``) and the learned loss (``lkd_loss/``),
        refusing non-finite weights; into the current step's checkpoint also ``lkd_run.json`` and, unless
        ``save_only_model``, the run state, before the Trainer writes ``trainer_state.json`` (``docs/training.md``)."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        check_finite(self.distiller.trainable_module, f"saving the student to {output_dir!r}")
        for module in self.objective.loss_modules:
            check_finite(module, f"saving the loss network {type(module).__name__} to {output_dir!r}")
        state_dict, connectors = self.distiller.weights_to_save(state_dict)
        super()._save(output_dir, state_dict)
        checkpoint = is_checkpoint_of_step(output_dir, self.state.global_step)
        if checkpoint and not self.args.save_only_model:
            save_run_state(output_dir, self.objective, self.loss_learner, self._metrics, self._step_seconds,
                           self.args.should_save)
        if not self.args.should_save:
            return
        if checkpoint:
            save_run_settings(output_dir, self.run_settings)
        if connectors is not None:
            save_file({n: t.contiguous() for n, t in connectors.items()}, os.path.join(output_dir, CONNECTORS_NAME))
        self.save_learned_loss(output_dir)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """:meth:`transformers.Trainer.save_model`, refused in an ``output_dir`` another trainer's run owns
        (:class:`~lkd_hf.safe_io.OutputDirLock`); a failed write (a full disk) names the folder.

        Args:
            output_dir, _internal_call: as in :meth:`transformers.Trainer.save_model`.
        """
        folder = output_dir if output_dir is not None else self.args.output_dir
        named = nullcontext() if _internal_call else named_save_failure(folder)
        with self._hold_output_dir("save_model()", folder=folder), named:
            super().save_model(output_dir, _internal_call)

    # the Hub (lkd_hf.trainer_hub)
    def learned_loss(self, **metadata: Any) -> LearnedLoss | None:
        """This run's loss networks with its setting as one :class:`~lkd_hf.LearnedLoss`; ``None`` when its losses are
        not loss networks. ``metadata`` overrides config fields, e.g. ``dataset="cifar100"``."""
        return trainer_hub.run_learned_loss(self.distiller, self.args.loss, self.train_dataset, self.state,
                                            0 if self.loss_learner is None else self.loss_learner.updates, **metadata)

    def save_learned_loss(self, output_dir: str) -> None:
        """Save the run's learned loss (:meth:`learned_loss`) to ``<output_dir>/lkd_loss``; nothing for hand-made
        losses."""
        trainer_hub.save_learned_loss(self.learned_loss(), output_dir, self.hub_model_id)

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        """:meth:`transformers.Trainer.init_hf_repo`, first creating the learned loss's own repo
        (``loss_hub_model_id``), so that a wrong id or an unreachable Hub fails before training."""
        if self.is_world_process_zero():
            trainer_hub.create_loss_repo(self.args, self.distiller.loss_networks(), token, private)
        super().init_hf_repo(token, private)

    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True,
                    token: str | None = None, revision: str | None = None, private: bool | None = None,
                    **kwargs: Any) -> Any:
        """Push the student with its learned loss (in ``lkd_loss/``), then, when ``loss_hub_model_id`` is set, the
        learned loss to that repo too; refused when another trainer's run owns ``output_dir``."""
        with self._hold_output_dir("push_to_hub()"):
            result = super().push_to_hub(commit_message=commit_message, blocking=blocking, token=token,
                                         revision=revision, private=private, **kwargs)
        if self.args.loss_hub_model_id is not None and self.is_world_process_zero():
            trainer_hub.push_learned_loss(self.learned_loss(), self.args, commit_message, token, private)
        return result

    def create_model_card(self, **kwargs: Any) -> None:
        """The Trainer's model card of the student; without ``finetuned_from=`` it says the student was trained from
        scratch (timm models have no ``config`` naming a base model)."""
        with trainer_hub.card_config(self.model, kwargs.get("finetuned_from")):
            super().create_model_card(**kwargs)
