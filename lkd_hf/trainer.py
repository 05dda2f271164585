"""``LKDTrainer``: a ``transformers.Trainer`` that distills a timm student from a frozen timm teacher.

The student step minimises the :class:`~lkd_hf.objective.DistillationObjective` ``ce_weight * CE + distill_weight *
distill_loss (+ feature_weight * feature_loss)``. When the distillation loss has trainable parameters (the learned
``lkd`` / ``feat`` loss networks), a :class:`~lkd_hf.meta.learner.LossLearner` updates them every ``meta_interval``
student steps. With a learned logit loss and an evaluation dataset, students at several temperatures of that loss train
side by side and the best is kept (:mod:`lkd_hf.population`). The trainer wires these into the Trainer's hooks (see also
``trainer_checkpoints``, ``trainer_hub``, ``trainer_population``).
"""

from __future__ import annotations

import collections
import contextlib
import os
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from transformers.utils import logging

from .checkpoints import checkpoint_step, load_student_params
from .config import LKDConfig
from .data import ImageCollator
from .features import StudentWithConnectors, forward_with_features
from .hub import LearnedLoss, describe_run
from .meta.batches import meta_validation_data
from .meta.hypergradients import Hypergradient
from .meta.learner import LossLearner
from .meta.snapshots import Snapshot
from .metrics import build_compute_metrics
from .model_info import model_num_classes
from .nonfinite import NonFiniteGuard, check_finite
from .objective import build_objective, pop_means
from .population import StudentPopulation, member_objectives, population_factors
from .run_checks import (
    check_data_fits,
    check_datasets,
    check_optimizer,
    check_unrolled_support,
    checked_teacher,
    input_size,
    reused_networks,
)
from .run_settings import check_resume_settings, run_settings, save_run_settings
from .safe_io import (
    OutputDirOwner,
    checkpoint_to_resume,
    named_checkpoint_failure,
    named_save_failure,
)
from .trainer_checkpoints import CheckpointMixin
from .trainer_hub import HubExportMixin
from .trainer_population import PopulationMixin

logger = logging.get_logger(__name__)


class LKDTrainer(CheckpointMixin, HubExportMixin, PopulationMixin):
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
            reused_logit, reused_feature = reused_networks(args.loss, learned)
            loss_network = loss_network if loss_network is not None else reused_logit
            feature_loss_network = feature_loss_network if feature_loss_network is not None else reused_feature
        objective = build_objective(args, loss_network, feature_loss_network)
        num_classes = model_num_classes(model)
        if objective.loss_modules:
            teacher = checked_teacher(model, teacher, num_classes)
        check_data_fits(model, teacher, num_classes, train_dataset=train_dataset, eval_dataset=eval_dataset,
                        meta_dataset=meta_dataset)
        if objective.feature_loss is not None:
            model = StudentWithConnectors.build(
                model, teacher, args.feature_taps, args.teacher_feature_taps or args.feature_taps,
                input_size=input_size(model, train_dataset),
            )
            objective.taps = list(model.taps)
        if learned is not None:  # errors on other classes / teacher feature taps, warns on another pair
            learned.check_compatible(**describe_run(model, teacher, num_classes))
        learns_loss = bool(objective.meta_parameters())
        if learns_loss and args.hypergradient == "unrolled":
            check_unrolled_support(model, input_size(model, train_dataset))
        val_source, train_dataset, meta_dataset = meta_validation_data(args, train_dataset, meta_dataset, learns_loss)
        if data_collator is None:
            data_collator = ImageCollator(num_classes=num_classes)
        if compute_metrics is None and num_classes is not None:
            compute_metrics = build_compute_metrics(num_classes)
        check_optimizer(kwargs.get("optimizers"), teacher)
        self.population_factors = population_factors(args, objective, eval_dataset is not None)
        if len(self.population_factors) > 1:  # students side by side, one per (temperature, weight) factor pair
            model = StudentPopulation.of_copies(model, len(self.population_factors))
        self.member_objectives = member_objectives(objective, self.population_factors)
        taps = (model.taps, model.teacher_taps) if isinstance(model, StudentWithConnectors) else (None, None)
        self.run_settings = run_settings(args, objective.distill_loss, objective.feature_loss, *taps,
                                         self.population_factors, learned)
        self.objective, self.loss_learner = objective, None  # the Trainer's __init__ may call init_hf_repo
        self.output_dir_owner = OutputDirOwner()

        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            compute_metrics=compute_metrics,
            **kwargs,
        )
        self.loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean
        if self.population is not None and (self.is_fsdp_enabled or self.is_deepspeed_enabled):
            raise ValueError("A population clips each student on its own: not under FSDP or DeepSpeed; "
                             "leave population_weight_factors unset and set population_temperature_factors=[1.0].")
        self.teacher = None if teacher is None else self.accelerator.prepare_model(teacher, evaluation_mode=True)
        for module in objective.loss_modules:
            module.to(self.args.device, torch.float32)
        self._metrics: dict[str, list[torch.Tensor]] = collections.defaultdict(list)
        self._step_seconds = 0.0
        self.nonfinite_guard = NonFiniteGuard(args.max_nonfinite_steps)
        if learns_loss:
            self.loss_learner = LossLearner(
                objective,
                args,
                meta_dataset=meta_dataset,
                val_source=val_source,
                collate_fn=self.data_collator,
                prepare_batch=self._prepare_inputs,
                device=self.args.device,
                rank=args.process_index,
                world_size=args.world_size,
            )
            connectors = isinstance(self.model, StudentWithConnectors)
            for checkpoint in args.snapshot_checkpoints:
                self.loss_learner.snapshot_pool.add(checkpoint_step(checkpoint), load_student_params(checkpoint, connectors))

    # public views
    @property
    def student(self) -> nn.Module:
        """The plain student model (without the feature connectors), e.g. for export."""
        model = self.trained_model()
        return model.student if isinstance(model, StudentWithConnectors) else model

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
        """Training: the distillation objective. Evaluation: the student's cross-entropy.

        Args:
            model: the (possibly wrapped) student; in training mode the objective is computed, else the CE.
            inputs: a batch on the device with ``pixel_values`` and ``labels`` (and, when already computed,
                ``teacher_logits`` / ``teacher_features``; else the teacher's outputs are added).
            return_outputs: also return ``{"logits": student_logits}``.
            num_items_in_batch: as in :meth:`transformers.Trainer.compute_loss`; unused (a per-batch mean).
        """
        labels = inputs["labels"]
        if model.training:
            if self.teacher is not None and "teacher_logits" not in inputs:
                inputs = self.with_teacher_outputs(dict(inputs))
            with_features = self.feature_loss is not None
            output = model(inputs["pixel_values"], **({"return_features": True} if with_features else {}))
            logits, features = output if with_features else (output, None)
            logits = logits if self.population is not None else logits[None]  # (members, batch, classes)
            results = [objective(member_logits, inputs.get("teacher_logits"), labels, features,
                                 inputs.get("teacher_features")) for objective, member_logits in
                       zip(self.member_objectives, logits)]
            loss, parts, logits = sum(result[0] for result in results), results[0][1], logits[0]
            for name, value in parts.items():
                self._metrics[name].append(value.detach())
        else:
            logits = model(inputs["pixel_values"])
            loss = F.cross_entropy(logits.float(), labels)
        return (loss, {"logits": logits}) if return_outputs else loss

    def with_teacher_outputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """A prepared batch with the teacher's outputs added (``teacher_logits``, and ``teacher_features`` for a
        feature loss), computed once per batch and reused by the student and meta steps.

        Args:
            inputs: a batch on the device (e.g. from ``Trainer._prepare_inputs``).
        """
        if self.teacher is None:
            return inputs
        with torch.no_grad(), self.compute_loss_context_manager():
            if self.feature_loss is None:
                inputs["teacher_logits"] = self.teacher(inputs["pixel_values"]).float()
            else:
                teacher = self.accelerator.unwrap_model(self.teacher)
                taps = self.accelerator.unwrap_model(self.model).teacher_taps
                logits, inputs["teacher_features"] = forward_with_features(teacher, inputs["pixel_values"], taps)
                inputs["teacher_logits"] = logits.float()
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
        """:meth:`transformers.Trainer.train`, holding the output folder for this run alone (a second run on it fails
        at start), resuming only from a checkpoint whose every file is verified
        (:func:`~lkd_hf.safe_io.checkpoint_problem`), and naming the checkpoint folder when a save fails (a full disk).

        Args:
            resume_from_checkpoint: a checkpoint folder (an incomplete one is an error naming its bad file), ``True``
                (the last *complete* checkpoint of ``output_dir``: later incomplete ones, e.g. from a run stopped while
                saving, are skipped with a warning; ``ValueError`` when there is none) or ``None`` / ``False`` (start
                afresh).
            *args, **kwargs: as in :meth:`transformers.Trainer.train` (``trial``, ``ignore_keys_for_eval``).

        A population then keeps its best student (:meth:`select_member`).
        """
        full_state = not (self.args.save_only_model or self.is_deepspeed_enabled or self.is_fsdp_enabled)
        with self._writing(self.args.output_dir, "train()", claim=True):
            resume_from_checkpoint = checkpoint_to_resume(resume_from_checkpoint, self.args.output_dir, full_state)
            if resume_from_checkpoint is not None:
                check_resume_settings(resume_from_checkpoint, self.run_settings)
            with named_checkpoint_failure(self.args.output_dir, lambda: self.state.global_step, full_state):
                output = super().train(resume_from_checkpoint, *args, **kwargs)
            if self.population is not None:
                self.select_member()
            return output

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """:meth:`transformers.Trainer.save_model`, refusing loss networks with non-finite weights (as the student's),
        refused in an ``output_dir`` that another trainer's run owns (:class:`~lkd_hf.safe_io.OutputDirLock`), and
        naming the folder when the write fails (a full disk).

        Args:
            output_dir, _internal_call: as in :meth:`transformers.Trainer.save_model`.
        """
        folder = output_dir if output_dir is not None else self.args.output_dir
        for module in self.objective.loss_modules:
            check_finite(module, f"saving the loss network {type(module).__name__} to {folder!r}")
        named = contextlib.nullcontext() if _internal_call else named_save_failure(folder)  # checkpoints: train()
        with self._writing(folder, "save_model()"), named:
            super().save_model(output_dir, _internal_call)
            if _internal_call and self.args.should_save and checkpoint_step(folder) == self.state.global_step:
                save_run_settings(folder, self.run_settings)  # a checkpoint: what a resume compares

    def push_to_hub(self, *args: Any, **kwargs: Any) -> Any:
        """:meth:`HubExportMixin.push_to_hub`, refused when another trainer's run owns ``output_dir``
        (:class:`~lkd_hf.safe_io.OutputDirLock`).

        Args:
            *args, **kwargs: as in :meth:`transformers.Trainer.push_to_hub`.
        """
        with self._writing(self.args.output_dir, "push_to_hub()"):
            return super().push_to_hub(*args, **kwargs)

    def _writing(self, folder: str, action: str, claim: bool = False) -> contextlib.AbstractContextManager:
        """Hold ``output_dir`` as this trainer's while ``action`` writes into ``folder`` (nothing for a folder outside
        it); ``claim`` takes the folder over (a run starting)."""
        output_dir = os.path.abspath(self.args.output_dir)
        inside = os.path.commonpath([output_dir, os.path.abspath(folder)]) == output_dir
        if not inside:
            return contextlib.nullcontext()
        return self.output_dir_owner.hold(output_dir, claim=claim, action=action, enabled=self.is_world_process_zero())

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        """Teacher forward once per batch, a meta step when due, then the student step; a student step whose loss
        or gradient is not finite is skipped (:class:`~lkd_hf.nonfinite.NonFiniteGuard`).

        Args:
            model, inputs, num_items_in_batch: as in :meth:`transformers.Trainer.training_step` (``inputs`` is the
                collated batch, prepared here).
        """
        start = time.perf_counter()
        inputs = self.prepare_batch(inputs)
        step = self.state.global_step
        student = self.learning_student(model)
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
            model: the (possibly wrapped) student.
            snapshot: the start of the virtual steps; default: one the snapshot pool samples.
            first_step_grads: the first virtual step's training gradient, when known (:meth:`LossLearner.step`).
        """
        self._require_learner().step(self.learning_student(model), self.state.global_step,
                                     self._student_lr(), snapshot, first_step_grads=first_step_grads)

    def compute_hypergradient(self, model: nn.Module, snapshot: Snapshot | None = None) -> Hypergradient:
        """The hypergradient a meta step would apply (:meth:`LossLearner.compute_hypergradient`); changes no weights.

        Args:
            model: the (possibly wrapped) student.
            snapshot: the start of the virtual steps (``None``: the live weights).
        """
        return self._require_learner().compute_hypergradient(self.learning_student(model), self._student_lr(), snapshot)

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
            The last logged statistics.
        """
        with self._writing(self.args.output_dir, "learn_loss()", claim=True):
            return self._learn_loss(num_steps)

    def _learn_loss(self, num_steps: int) -> dict[str, float]:
        learner = self._require_learner()
        model = self.model.to(self.args.device).train()
        loader = self.get_train_dataloader()
        batches = (self.prepare_batch(b) for _ in iter(int, 1) for b in loader)

        def log(step: int, logs: dict[str, float]) -> None:
            self.state.global_step = step
            super(LKDTrainer, self).log(logs)

        return learner.learn(
            self.learning_student(model), num_steps, batches, self._student_lr(), log,
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
