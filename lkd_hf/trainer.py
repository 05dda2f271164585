"""``LKDTrainer``: a ``transformers.Trainer`` that distills a timm student from a frozen timm teacher.

The student step minimises ``ce_weight * CE + distill_weight * distill_loss``. When the distillation loss has
trainable parameters (the learned ``lkd`` loss network), every ``meta_interval`` student steps a meta step
updates them along the hypergradient of the student's validation cross-entropy (``meta_val_loss``; temperature-scaled
by default, see :mod:`lkd_hf.meta.objectives`) after a virtual look-ahead whose steps clip the gradient like the
real ones (see :mod:`lkd_hf.meta.hypergradients`).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import random
import shutil
import time
import types
import warnings
from typing import Any, Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.func import functional_call
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, random_split
from tqdm.auto import tqdm
from transformers import Trainer
from transformers.utils import SAFE_WEIGHTS_NAME, logging

from .config import LKDConfig
from .data import ImageCollator, resolve_data_config
from .features import StudentWithConnectors, forward_with_features
from .hub import LearnedLoss, create_repo, dataset_name, describe_run, last_eval_metrics
from .meta.hypergradients import Hypergradient, MetaProblem, get_hypergradient
from .loss_networks import FeatureLossNet, LogitLossNet
from .losses import build_loss
from .losses.registry import parse_loss_spec
from .meta.objectives import META_VAL_LOSSES
from .metrics import build_compute_metrics
from .meta.snapshots import Snapshot, SnapshotPool

logger = logging.get_logger(__name__)

LOSS_DIRNAME = "lkd_loss"
CONNECTORS_NAME = "connectors.safetensors"
LKD_STATE_DIRNAME = "lkd_state"  # in a checkpoint: what a resumed LKD run needs beyond the Trainer's own state
LKD_STATE_NAME = "state.pt"
LKD_SNAPSHOTS_SUBDIR = "snapshots"
LKD_STATE_FORMAT_VERSION = 1


def model_num_classes(model: nn.Module) -> int | None:
    """Number of output classes of a timm (or timm-like) classifier, or ``None`` if it cannot be told."""
    num_classes = getattr(model, "num_classes", None)
    if isinstance(num_classes, int):
        return num_classes
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    return getattr(head, "out_features", None)


@contextlib.contextmanager
def full_precision(module: nn.Module, device_type: str) -> Iterator[None]:
    """Run ``module``'s forward in fp32 under mixed precision: bypass the autocast wrapper that Accelerate puts on a
    prepared model's ``forward`` (``bf16=True`` / ``fp16=True``) and any enclosing autocast region.

    The meta step runs in fp32: its hypergradients are differences or dot products of nearly cancelling gradients,
    which bf16/fp16 forwards distort (on a tiny ResNet a bf16 one-step hypergradient came out 6x too small), and fp16
    ones would also need loss scaling. The student step keeps the Trainer's autocast.
    """
    wrapped, original = module.__dict__.get("forward"), module.__dict__.get("_original_forward")
    swap = wrapped is not None and original is not None
    if swap:
        module.forward = original
    try:
        with torch.autocast(device_type, enabled=False):
            yield
    finally:
        if swap:
            module.forward = wrapped


class LKDTrainer(Trainer):
    """Trainer for knowledge distillation with a learned (or hand-made) distillation loss.

    Args:
        model: the timm student (trained).
        teacher: the timm teacher. Frozen (``requires_grad=False``, eval mode) and never trained; not needed for
            ``loss="ce"``.
        args: an :class:`~lkd_hf.LKDConfig`.
        train_dataset / eval_dataset: datasets of ``{"pixel_values", "labels"}`` examples.
        meta_dataset: held-out data for the meta (validation) loss. Default: ``args.lkd_val_fraction`` of
            ``train_dataset`` is split off (seeded by ``args.seed``) and the student trains on the rest.
        loss_network: a ready logit distillation loss module (e.g. a loaded :class:`~lkd_hf.LogitLossNet`) used
            instead of building the logit loss of ``args.loss`` from the registry.
        feature_loss_network: the same for the feature loss (e.g. a loaded :class:`~lkd_hf.FeatureLossNet`).
        data_collator / compute_metrics: default to :class:`~lkd_hf.data.ImageCollator` (validates labels) and
            top-1/top-5 accuracy.
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
        spec = parse_loss_spec(args.loss)
        learned = LearnedLoss.from_pretrained(args.loss_from) if args.loss_from is not None else None
        if learned is not None:  # networks passed in are kept
            loss_network = loss_network if loss_network is not None else learned.logit
            feature_loss_network = feature_loss_network if feature_loss_network is not None else learned.feature
        distill_loss = loss_network if loss_network is not None else build_loss(spec.logit, args) if spec.logit else None
        feature_loss = feature_loss_network
        if feature_loss is None and spec.feature is not None:
            feature_loss = build_loss(spec.feature, args)
        loss_modules = [m for m in (distill_loss, feature_loss) if m is not None]
        if args.freeze_loss:
            for module in loss_modules:
                module.requires_grad_(False)
        num_classes = model_num_classes(model)
        if loss_modules:
            teacher = self._check_teacher(model, teacher, num_classes)
        if feature_loss is not None:
            model = StudentWithConnectors.build(
                model, teacher, args.feature_taps, args.teacher_feature_taps or args.feature_taps,
                input_size=self._input_size(model, train_dataset),
            )
        if learned is not None:  # errors on other classes / teacher feature taps, warns on another pair
            learned.check_compatible(**describe_run(model, teacher, num_classes))
        self.loss_params = [p for m in loss_modules for p in m.parameters() if p.requires_grad]

        heldout = args.meta_val_source == "heldout"  # "train_batch" validates on the training batch: no split
        if self.loss_params and heldout and train_dataset is not None and meta_dataset is None:
            train_dataset, meta_dataset = split_meta_dataset(train_dataset, args.lkd_val_fraction, args.seed)
        if data_collator is None:
            data_collator = ImageCollator(num_classes=num_classes)
        if compute_metrics is None and num_classes is not None:
            compute_metrics = build_compute_metrics(num_classes)
        self._check_optimizer(kwargs.get("optimizers"), teacher)

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
        self.teacher = None if teacher is None else self.accelerator.prepare_model(teacher, evaluation_mode=True)
        self.distill_loss = None if distill_loss is None else distill_loss.to(self.args.device, torch.float32)
        self.feature_loss = None if feature_loss is None else feature_loss.to(self.args.device, torch.float32)
        self.meta_dataset = meta_dataset
        self._metrics: dict[str, list[torch.Tensor]] = collections.defaultdict(list)
        self._recent_batches: collections.deque = collections.deque(maxlen=args.max_lookahead_steps)
        self._horizon_rng = random.Random(args.seed)
        self.snapshot_pool: SnapshotPool | None = None
        self._last_meta_step = -1
        self._meta_seconds = 0.0
        self._step_seconds = 0.0
        self._meta_iterator: Iterator[dict[str, Any]] | None = None
        self._meta_batches_drawn = 0  # position of the meta-batch stream (restored on resume)
        self.meta_optimizer: torch.optim.Optimizer | None = None
        if self.loss_params:
            self._broadcast_loss_params()
            self.meta_optimizer = self._create_meta_optimizer()
            self.snapshot_pool = SnapshotPool(
                max_size=args.snapshot_pool_size,
                interval=args.snapshot_interval,
                strategy=args.snapshot_strategy,
                distance=args.snapshot_distance,
                seed=args.seed,
                # one directory per rank: ranks must not write (and thin away) the same snapshot files
                storage_dir=(
                    os.path.join(args.snapshot_storage_dir, f"rank-{args.process_index}")
                    if args.snapshot_storage_dir is not None and args.world_size > 1
                    else args.snapshot_storage_dir
                ),
            )
            for checkpoint in args.snapshot_checkpoints:
                self.snapshot_pool.add(checkpoint_step(checkpoint), self._checkpoint_params(checkpoint))
            for p in self.loss_params:  # only meta steps may produce gradients for the loss network
                p.requires_grad_(False)

    # ----------------------------------------------------------------------------------------------------------
    # construction checks
    @staticmethod
    def _check_teacher(model: nn.Module, teacher: nn.Module | None, num_classes: int | None) -> nn.Module:
        if teacher is None:
            raise ValueError("This loss distills from a teacher: pass `teacher=` (or use loss='ce').")
        teacher_classes = model_num_classes(teacher)
        if num_classes is not None and teacher_classes is not None and num_classes != teacher_classes:
            raise ValueError(
                f"Teacher and student predict different numbers of classes ({teacher_classes} vs {num_classes}); "
                "create both with the same num_classes."
            )
        student_params = {id(p) for p in model.parameters()}
        shared = [n for n, p in teacher.named_parameters() if id(p) in student_params]
        if shared:
            raise ValueError(
                f"The teacher shares {len(shared)} parameter(s) with the student (e.g. {shared[0]!r}); they would be "
                "updated by the student's optimizer. Pass a separate, frozen teacher."
            )
        trainable = [n for n, p in teacher.named_parameters() if p.requires_grad]
        if trainable:
            logger.info(f"Freezing {len(trainable)} trainable teacher parameter tensors (the teacher is never trained).")
        return teacher.eval().requires_grad_(False)

    @staticmethod
    def _check_optimizer(optimizers: Any, teacher: nn.Module | None) -> None:
        optimizer = optimizers[0] if optimizers else None
        if optimizer is None or teacher is None:
            return
        teacher_params = {id(p) for p in teacher.parameters()}
        if any(id(p) in teacher_params for group in optimizer.param_groups for p in group["params"]):
            raise ValueError("The optimizer passed to LKDTrainer would update the teacher's parameters.")

    @staticmethod
    def _input_size(model: nn.Module, dataset: Dataset | None) -> tuple[int, int, int]:
        """``(C, H, W)`` of the training images (the first example), else the model's data config."""
        if dataset is not None and len(dataset) > 0:
            return tuple(torch.as_tensor(dataset[0]["pixel_values"]).shape)
        return tuple(resolve_data_config(model)["input_size"])

    @property
    def student(self) -> nn.Module:
        """The plain student model (without the feature connectors), e.g. for export."""
        model = self.accelerator.unwrap_model(self.model)
        return model.student if isinstance(model, StudentWithConnectors) else model

    def _checkpoint_params(self, checkpoint_dir: str) -> dict[str, torch.Tensor]:
        """Student (and connector) weights of a Trainer checkpoint, named as in the trained module."""
        path = os.path.join(checkpoint_dir, SAFE_WEIGHTS_NAME)
        if not os.path.exists(path):
            raise FileNotFoundError(f"No {SAFE_WEIGHTS_NAME} in checkpoint {checkpoint_dir!r}.")
        params = load_file(path)
        if not isinstance(self.model, StudentWithConnectors):
            return params
        params = {f"student.{n}": t for n, t in params.items()}
        connectors = os.path.join(checkpoint_dir, CONNECTORS_NAME)
        if os.path.exists(connectors):
            params.update({f"connectors.{n}": t for n, t in load_file(connectors).items()})
        return params

    def _create_meta_optimizer(self) -> torch.optim.Optimizer:
        if self.args.meta_optimizer == "sgd":
            return torch.optim.SGD(
                self.loss_params, lr=self.args.meta_learning_rate, momentum=0.9, weight_decay=self.args.meta_weight_decay
            )
        return torch.optim.Adam(self.loss_params, lr=self.args.meta_learning_rate, weight_decay=self.args.meta_weight_decay)

    def _broadcast_loss_params(self) -> None:
        if dist.is_available() and dist.is_initialized():
            for p in self.loss_params:
                dist.broadcast(p.data, src=0)

    # ----------------------------------------------------------------------------------------------------------
    # the student objective
    def distillation_objective(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor | None,
        labels: torch.Tensor,
        student_features: list[torch.Tensor] | None = None,
        teacher_features: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``ce_weight * CE + distill_weight * distill_loss + feature_weight * sum_k feature_loss_k`` and its
        components (for logging: ``ce``, ``distill``, ``feature`` and ``feature/<tap>`` per tap)."""
        ce = F.cross_entropy(student_logits.float(), labels)
        parts = {"ce": ce}
        total = self.args.ce_weight * ce
        if self.distill_loss is not None:
            distill = self.distill_loss(student_logits, teacher_logits, labels)
            parts["distill"] = distill
            total = total + self.args.distill_weight * distill
        if self.feature_loss is not None:
            per_tap = [self.feature_loss(s, t) for s, t in zip(student_features, teacher_features)]
            parts["feature"] = torch.stack(per_tap).sum()
            taps = self.accelerator.unwrap_model(self.model).taps
            parts.update({f"feature/{tap}": value for tap, value in zip(taps, per_tap)})
            total = total + self.args.feature_weight * parts["feature"]
        return total, parts

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training: the distillation objective. Evaluation: the student's cross-entropy."""
        labels = inputs["labels"]
        if model.training:
            if self.teacher is not None and "teacher_logits" not in inputs:
                inputs = self._with_teacher_outputs(dict(inputs))
            features = None
            if self.feature_loss is not None:
                logits, features = model(inputs["pixel_values"], return_features=True)
            else:
                logits = model(inputs["pixel_values"])
            loss, parts = self.distillation_objective(
                logits, inputs.get("teacher_logits"), labels, features, inputs.get("teacher_features")
            )
            for name, value in parts.items():
                self._metrics[name].append(value.detach())
        else:
            logits = model(inputs["pixel_values"])
            loss = F.cross_entropy(logits.float(), labels)
        return (loss, {"logits": logits}) if return_outputs else loss

    def _with_teacher_outputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Add the teacher's outputs to a prepared batch (computed once, reused by the student and meta steps)."""
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

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        """Teacher forward once per batch, a meta step when due, then the student step."""
        start = time.perf_counter()
        inputs = self._with_teacher_outputs(self._prepare_inputs(inputs))
        if self.loss_params:
            self._recent_batches.append(inputs)
            if self.snapshot_pool.is_due(self.state.global_step):
                student = self.accelerator.unwrap_model(model)
                self.snapshot_pool.add(
                    self.state.global_step, {n: p for n, p in student.named_parameters() if p.requires_grad}
                )
            if self._meta_due():
                self._last_meta_step = self.state.global_step
                meta_start = time.perf_counter()
                self.meta_step(model)
                self._meta_seconds += time.perf_counter() - meta_start
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._step_seconds += time.perf_counter() - start
        return loss

    # ----------------------------------------------------------------------------------------------------------
    # the outer (meta) loop
    def _meta_due(self) -> bool:
        step = self.state.global_step
        return (
            step >= self.args.meta_warmup_steps
            and step % self.args.meta_interval == 0
            and step != self._last_meta_step
            and (self.meta_dataset is not None or self.args.meta_val_source == "train_batch")
        )

    def _next_meta_batch(self) -> dict[str, Any]:
        """The next validation batch of ``meta_batch_size`` examples (per process).

        With several processes every rank draws from its own disjoint shard of the meta set (every
        ``world_size``-th example), so that the averaged hypergradient sees ``world_size`` different validation
        batches, just as the student step sees ``world_size`` different training batches.
        """
        if self._meta_iterator is None:
            dataset = self.meta_dataset
            world_size, rank = self.args.world_size, self.args.process_index
            if world_size > 1 and len(dataset) >= world_size:
                dataset = Subset(dataset, range(rank, len(dataset), world_size))
            sampler = MetaBatchSampler(
                len(dataset), self.args.meta_batch_size, seed=self.args.seed, start=self._meta_batches_drawn
            )
            loader = DataLoader(
                dataset,
                batch_sampler=sampler,
                collate_fn=self.data_collator,
                num_workers=self.args.dataloader_num_workers,
                generator=torch.Generator().manual_seed(self.args.seed),  # worker seeds: never the global RNG
            )
            self._meta_iterator = iter(loader)
        batch = next(self._meta_iterator)
        self._meta_batches_drawn += 1
        return self._prepare_inputs(batch)

    def meta_step(self, model: nn.Module, snapshot: Snapshot | None = None) -> None:
        """Update the loss network along the hypergradient of the validation loss (one outer step).

        The virtual steps start from ``snapshot`` if given, else from one the snapshot pool samples (``None``: the
        live weights), and use the last ``K`` training batches.
        """
        if snapshot is None:
            snapshot = self.snapshot_pool.sample(self.state.global_step)
        result = self.compute_hypergradient(model, snapshot)
        grads = result.grads
        if not (torch.isfinite(result.val_loss) and all(torch.isfinite(g).all() for g in grads)):
            warnings.warn(
                f"Non-finite learned loss or hypergradient at step {self.state.global_step}: meta update skipped.",
                RuntimeWarning,
                stacklevel=2,
            )
            self._metrics["meta/skipped"].append(torch.ones((), device=self.args.device))
            return
        for p, g in zip(self.loss_params, grads):
            p.grad = g.to(p.dtype)
        max_norm = self.args.meta_max_grad_norm if self.args.meta_max_grad_norm > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.loss_params, max_norm)
        self.meta_optimizer.step()
        self.meta_optimizer.zero_grad(set_to_none=True)
        self._metrics["meta/val_loss_after"].append(result.val_loss)
        self._metrics["meta/hypergrad_norm"].append(grad_norm.detach())
        self._metrics["meta/skipped"].append(torch.zeros((), device=self.args.device))
        self._metrics["meta/start_step_lag"].append(
            torch.tensor(float(self.state.global_step - snapshot.step if snapshot is not None else 0))
        )

    def compute_hypergradient(self, model: nn.Module, snapshot: Snapshot | None = None) -> Hypergradient:
        """The hypergradient of the validation loss w.r.t. the loss parameters (averaged across processes), with
        the virtual steps from ``snapshot`` (``None``: the live weights) over the last ``K`` training batches and
        the next validation batch; the loss networks are not changed."""
        student = self.accelerator.unwrap_model(model)
        params = {n: p for n, p in student.named_parameters() if p.requires_grad}
        if snapshot is not None:  # weights missing from the snapshot (e.g. new connectors) stay live
            stored = snapshot.params
            params = {n: stored[n].to(p.device, p.dtype) if n in stored else p for n, p in params.items()}
        frozen = {n: p for n, p in student.named_parameters() if not p.requires_grad}
        buffers = {n: b.clone() for n, b in student.named_buffers()}  # virtual steps must not touch BN statistics

        def forward(weights: dict[str, torch.Tensor], batch: dict[str, Any]) -> Any:
            """Logits, or ``(logits, connected features)`` on training batches of a feature loss."""
            kwargs = {"return_features": True} if "teacher_features" in batch else {}
            with full_precision(student, self.args.device.type):  # fp32 under bf16/fp16 (see full_precision)
                return functional_call(student, {**frozen, **buffers, **weights}, (batch["pixel_values"],), kwargs)

        def train_loss(output: Any, batch: dict[str, Any]) -> torch.Tensor:
            logits, features = output if isinstance(output, tuple) else (output, None)
            return self.distillation_objective(
                logits, batch["teacher_logits"], batch["labels"], features, batch.get("teacher_features")
            )[0]

        def val_loss(output: Any, batch: dict[str, Any]) -> torch.Tensor:
            logits = output[0] if isinstance(output, tuple) else output
            return META_VAL_LOSSES[self.args.meta_val_loss](logits.float(), batch["labels"])

        problem = MetaProblem(
            forward=forward,
            train_loss=train_loss,
            val_loss=val_loss,
            loss_params=self.loss_params,
            train_batches=list(self._recent_batches)[-self._sample_horizon():],
            val_batch=self._recent_batches[-1] if self.args.meta_val_source == "train_batch" else self._next_meta_batch(),
            lr=self._lookahead_lr(),
            fd_epsilon=self.args.fd_epsilon,
            # the virtual steps clip their gradient like the real ones: unclipped, a loss with a large gradient (e.g.
            # DIST at T=8, norm ~200 where the real step is clipped to 1) looks ahead with a far larger step than the
            # student takes, and the hypergradient then turns the loss down whatever it does.
            max_grad_norm=self.args.max_grad_norm if self.args.max_grad_norm and self.args.max_grad_norm > 0 else None,
        )
        if "meta/val_loss_before" not in self._metrics:  # once per logging window: it costs a validation forward
            with torch.no_grad():
                self._metrics["meta/val_loss_before"].append(
                    problem.val_loss(forward(params, problem.val_batch), problem.val_batch)
                )
        estimator = get_hypergradient(self.args.hypergradient)
        for p in self.loss_params:
            p.requires_grad_(True)
        try:
            result = estimator(problem, params)
        except RuntimeError as error:
            if self.args.hypergradient == "unrolled" and "derivative for" in str(error):
                raise RuntimeError(
                    f"hypergradient='unrolled' differentiates twice through the student, which "
                    f"{type(student).__name__} does not support ({error}). Use hypergradient='finite_difference'."
                ) from error
            raise
        finally:
            for p in self.loss_params:
                p.requires_grad_(False)
        return Hypergradient(grads=self._average_across_ranks(result.grads), val_loss=result.val_loss)

    def _lookahead_lr(self) -> float:
        """``lookahead_lr``, else the student's current learning rate (its initial one before training)."""
        if self.args.lookahead_lr is not None:
            return self.args.lookahead_lr
        return self._get_learning_rate() if self.lr_scheduler is not None else self.args.learning_rate

    def learn_loss(self, num_steps: int) -> dict[str, float]:
        """Train only the loss network(s), from the frozen student snapshots in the pool; the student is not trained.

        The pool must hold snapshots, e.g. seeded from an earlier run's checkpoints (``snapshot_checkpoints``).
        Each of the ``num_steps`` meta steps draws a snapshot uniformly, takes ``K`` fresh training batches (with
        their teacher outputs) for the virtual steps and a validation batch, and updates the loss network. Logs
        every ``logging_steps`` meta steps to ``report_to`` (with ``global_step`` counting meta steps) and returns
        the last logged statistics. Save the result with
        ``trainer.learned_loss().save_pretrained(dir)`` (reload it with ``loss_from=dir``).
        """
        if not self.loss_params:
            raise ValueError("learn_loss needs a learnable loss (e.g. loss='lkd') that is not frozen.")
        if not len(self.snapshot_pool):
            raise ValueError("The snapshot pool is empty: seed it with LKDConfig(snapshot_checkpoints=[...]).")
        model = self.model.to(self.args.device).train()
        batches = itertools.chain.from_iterable(itertools.repeat(self.get_train_dataloader()))
        logs: dict[str, float] = {}
        progress = tqdm(range(num_steps), desc="learning the loss", disable=self.args.disable_tqdm)
        for step in progress:
            self.state.global_step = step
            snapshot = self.snapshot_pool.sample_recorded()
            for _ in range(self._sample_horizon()):
                self._recent_batches.append(self._with_teacher_outputs(self._prepare_inputs(next(batches))))
            self.meta_step(model, snapshot)
            if (step + 1) % self.args.logging_steps == 0 or step + 1 == num_steps:
                self.state.global_step = step + 1
                logs = {**self._pop_metrics(), **self.loss_knobs()}
                super().log(dict(logs))
                progress.set_postfix({k: round(v, 4) for k, v in logs.items() if k.startswith(("meta/val", "lkd/"))})
        return logs

    def loss_knobs(self) -> dict[str, float]:
        """The learned losses' global knobs for logging: ``lkd/temperature``, ``lkd/weight``, ``lkd/feature_weight``."""
        knobs = {f"lkd/{k}": float(v) for k, v in loss_summary(self.distill_loss).items()}
        knobs.update({f"lkd/feature_{k}": float(v) for k, v in loss_summary(self.feature_loss).items()})
        return knobs

    def _sample_horizon(self) -> int:
        """The meta horizon K: fixed, or drawn from a Gaussian (``lookahead_steps_std > 0``)."""
        std = self.args.lookahead_steps_std
        k = self.args.lookahead_steps if std <= 0 else round(self._horizon_rng.gauss(self.args.lookahead_steps, std))
        return int(min(max(k, 1), self.args.max_lookahead_steps))

    def _average_across_ranks(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return grads
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        return [chunk.view_as(g) for chunk, g in zip(flat.split([g.numel() for g in grads]), grads)]

    # ----------------------------------------------------------------------------------------------------------
    # logging and saving
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the averaged loss components and meta statistics to the Trainer's training logs."""
        if "loss" in logs and self._metrics:
            logs.update(self._pop_metrics())
            if self.loss_params:
                logs["meta/time_share"] = self._meta_seconds / max(self._step_seconds, 1e-9)
                logs["meta/pool_mb"] = self.snapshot_pool.nbytes / 2**20
                if self.snapshot_pool.storage_dir is not None:
                    logs["meta/pool_disk_mb"] = self.snapshot_pool.disk_bytes / 2**20
                logs.update(self.loss_knobs())
        super().log(logs, start_time)

    def _pop_metrics(self) -> dict[str, float]:
        """The loss components and meta statistics gathered since the last log, averaged; then reset."""
        averaged = {name: torch.stack([v.float() for v in vals]).mean().item() for name, vals in self._metrics.items()}
        self._metrics.clear()
        return averaged

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Save the plain student (loadable by ``timm.create_model`` + ``load_state_dict``) as ``model.safetensors``,
        the feature connectors as ``connectors.safetensors`` and the learned loss (:meth:`learned_loss`) under
        ``lkd_loss/`` (its card names ``<hub_model_id>/lkd_loss`` when the trainer pushes)."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
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
        learned = self.learned_loss() if self.loss_params else None
        if learned is not None:
            repo_id = None if self.hub_model_id is None else f"{self.hub_model_id}/{LOSS_DIRNAME}"
            learned.save_pretrained(os.path.join(output_dir, LOSS_DIRNAME), repo_id=repo_id)

    def learned_loss(self, **metadata: Any) -> LearnedLoss | None:
        """This run's loss networks with its setting (teacher, student, classes, taps, dataset, steps, last evaluation)
        as one :class:`~lkd_hf.LearnedLoss`; ``None`` when its losses are not loss networks. ``metadata`` overrides
        config fields, e.g. ``dataset="cifar100"`` (the trainer only knows the names of Hub datasets)."""
        logit = self.distill_loss if isinstance(self.distill_loss, LogitLossNet) else None
        feature = self.feature_loss if isinstance(self.feature_loss, FeatureLossNet) else None
        if logit is None and feature is None:
            return None
        teacher = None if self.teacher is None else self.accelerator.unwrap_model(self.teacher)
        run = describe_run(self.accelerator.unwrap_model(self.model), teacher, model_num_classes(self.student))
        run.update(loss=self.args.loss, dataset=dataset_name(self.train_dataset), steps=self.state.global_step,
                   metrics=last_eval_metrics(self.state.log_history))
        return LearnedLoss.from_networks(logit, feature, **{**run, **metadata})

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        """Also create the learned loss's own repo (``loss_hub_model_id``), so that a wrong id or an unreachable Hub
        fails before training, as it does for the student's repo."""
        if self.args.loss_hub_model_id is not None and self.loss_params and self.is_world_process_zero():
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
        learned loss to that repo too (blocking). Arguments as :meth:`transformers.Trainer.push_to_hub`."""
        result = super().push_to_hub(
            commit_message=commit_message, blocking=blocking, token=token, revision=revision, private=private, **kwargs
        )
        repo_id = self.args.loss_hub_model_id
        if repo_id is not None and self.is_world_process_zero():
            learned = self.learned_loss() if self.loss_params else None
            if learned is None:
                logger.warning(f"loss_hub_model_id={repo_id!r}: this run learned no loss network, nothing to push.")
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
        scratch."""
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

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """Also restores the connectors of a feature-distillation run (saved beside the plain student)."""
        model = model if model is not None else self.model
        if not isinstance(self.accelerator.unwrap_model(model), StudentWithConnectors):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        wrapper = self.accelerator.unwrap_model(model)
        wrapper.load_state_dict(self._checkpoint_params(resume_from_checkpoint))

    # ----------------------------------------------------------------------------------------------------------
    # exact resume: the LKD state of a checkpoint
    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        """Beside the student's optimizer and scheduler, save the LKD state (:meth:`_save_lkd_state`)."""
        super()._save_optimizer_and_scheduler(output_dir)
        self._save_lkd_state(output_dir)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """Beside the student's optimizer and scheduler, restore the LKD state (:meth:`_load_lkd_state`) on resume."""
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            self._load_lkd_state(checkpoint)

    def _save_lkd_state(self, output_dir: str) -> None:
        """Save what the meta-learning needs to continue exactly into ``<checkpoint>/lkd_state/``.

        * ``state.pt`` (process 0): the loss networks' ``state_dict``s, the meta optimizer's state (there is no
          meta learning-rate scheduler: the meta learning rate is constant), the horizon RNG, the position of the
          meta-batch stream, the last meta step, the not yet logged loss/meta statistics and the timing counters;
        * ``snapshots/`` (process 0): the snapshot pool (:meth:`SnapshotPool.save_state`; weights copied, also for a
          disk-backed pool, whose files may be thinned away later);
        * ``recent_batches.pt`` (``recent_batches_<rank>.pt`` in distributed runs): this process's last ``K - 1``
          training batches with their teacher outputs, which the next meta step's ``K``-step horizon reuses.

        The Trainer's checkpoint already holds the student (and connectors), its optimizer, scheduler, RNG states and
        data position. Losses without trainable parameters save nothing here.
        """
        if not self.loss_params:
            return
        directory = os.path.join(output_dir, LKD_STATE_DIRNAME)
        os.makedirs(directory, exist_ok=True)
        if self.args.should_save:
            state = {
                "format_version": LKD_STATE_FORMAT_VERSION,
                "distill_loss": None if self.distill_loss is None else _cpu_copy(self.distill_loss.state_dict()),
                "feature_loss": None if self.feature_loss is None else _cpu_copy(self.feature_loss.state_dict()),
                "meta_optimizer": _cpu_copy(self.meta_optimizer.state_dict()),
                "horizon_rng": self._horizon_rng.getstate(),
                "meta_batches_drawn": self._meta_batches_drawn,
                "last_meta_step": self._last_meta_step,
                "metrics": {name: _cpu_copy(values) for name, values in self._metrics.items()},
                "meta_seconds": self._meta_seconds,
                "step_seconds": self._step_seconds,
            }
            torch.save(state, os.path.join(directory, LKD_STATE_NAME))
            self.snapshot_pool.save_state(os.path.join(directory, LKD_SNAPSHOTS_SUBDIR))
        keep = self._recent_batches.maxlen - 1  # the current batch is appended before a meta step uses them
        recent = list(self._recent_batches)[len(self._recent_batches) - keep:] if keep > 0 else []
        torch.save(_cpu_copy(recent), os.path.join(directory, self._recent_batches_filename()))

    def _recent_batches_filename(self) -> str:
        return "recent_batches.pt" if self.args.world_size <= 1 else f"recent_batches_{self.args.process_index}.pt"

    def _load_lkd_state(self, checkpoint: str) -> None:
        """Restore what :meth:`_save_lkd_state` saved (on every process). A checkpoint without LKD state (from a run
        whose loss was not learned, or saved with ``save_only_model``) resumes with a warning: the loss networks,
        meta optimizer, snapshot pool and recent batches then start afresh."""
        directory = os.path.join(checkpoint, LKD_STATE_DIRNAME)
        state_file = os.path.join(directory, LKD_STATE_NAME)
        if not self.loss_params:
            if os.path.isfile(state_file):
                logger.info(f"The loss of this run is not learned: ignoring the LKD state in {checkpoint}.")
            return
        if not os.path.isfile(state_file):
            warnings.warn(
                f"Checkpoint {checkpoint!r} holds no LKD state ({LKD_STATE_DIRNAME}/{LKD_STATE_NAME}): it comes from a "
                "run without a learned loss, or was saved with save_only_model. The student, its optimizer and "
                "scheduler resume, but the loss network(s) start from their initial weights, with a fresh meta "
                "optimizer, an empty snapshot pool and no recent batches: not an exact continuation.",
                UserWarning,
                stacklevel=2,
            )
            return
        state = torch.load(state_file, map_location="cpu", weights_only=True)
        if state.get("format_version", 0) > LKD_STATE_FORMAT_VERSION:
            raise ValueError(
                f"The LKD state in {checkpoint!r} has format version {state['format_version']}; this lkd_hf reads "
                f"up to {LKD_STATE_FORMAT_VERSION}. Upgrade lkd_hf to resume from it."
            )
        for key, module in (("distill_loss", self.distill_loss), ("feature_loss", self.feature_loss)):
            saved = state[key]
            if (saved is None) != (module is None):
                raise ValueError(
                    f"Checkpoint {checkpoint!r} was saved by a run {'without' if saved is None else 'with'} a "
                    f"{'logit' if key == 'distill_loss' else 'feature'} distillation loss, this run has "
                    f"{'one' if saved is None else 'none'}: resume with the same `loss` (now {self.args.loss!r})."
                )
            if module is not None:
                try:
                    module.load_state_dict(saved)
                except RuntimeError as error:
                    raise ValueError(
                        f"The {key} saved in {checkpoint!r} does not fit this run's ({type(module).__name__}): resume "
                        f"with the loss settings of the checkpoint's run. {error}"
                    ) from error
        self.meta_optimizer.load_state_dict(state["meta_optimizer"])
        version, internal, gauss_next = state["horizon_rng"]
        self._horizon_rng.setstate((version, tuple(internal), gauss_next))
        self._meta_batches_drawn = int(state["meta_batches_drawn"])
        self._meta_iterator = None  # re-created at the restored position
        self._last_meta_step = int(state["last_meta_step"])
        self._metrics = collections.defaultdict(list)
        for name, values in state["metrics"].items():
            self._metrics[name] = [v.to(self.args.device) for v in values]
        self._meta_seconds, self._step_seconds = float(state["meta_seconds"]), float(state["step_seconds"])
        self.snapshot_pool.load_state(os.path.join(directory, LKD_SNAPSHOTS_SUBDIR))
        self._recent_batches.clear()
        recent_file = os.path.join(directory, self._recent_batches_filename())
        if os.path.isfile(recent_file):
            self._recent_batches.extend(torch.load(recent_file, map_location=self.args.device, weights_only=True))
        elif self._recent_batches.maxlen > 1:
            warnings.warn(
                f"No {self._recent_batches_filename()} in {directory!r} (resumed with another number of processes?): "
                "the first meta step after resuming sees fewer recent training batches than an uninterrupted run.",
                UserWarning,
                stacklevel=2,
            )


def _cpu_copy(obj: Any) -> Any:
    """``obj`` (tensors in nested dicts / lists / tuples) with every tensor detached and copied to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_cpu_copy(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_cpu_copy(v) for v in obj)
    return obj


def checkpoint_step(checkpoint_dir: str) -> int:
    """The global step of a ``checkpoint-<step>`` directory (-1 if its name does not tell)."""
    suffix = os.path.basename(os.path.normpath(checkpoint_dir)).rsplit("-", 1)[-1]
    return int(suffix) if suffix.isdigit() else -1


def loss_summary(loss: nn.Module | None) -> dict[str, torch.Tensor]:
    """The interpretable global knobs of a learned loss (temperature, weight), where it has them."""
    return {k: getattr(loss, k).detach() for k in ("temperature", "weight") if isinstance(getattr(loss, k, None), torch.Tensor)}


def split_meta_dataset(dataset: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Split ``fraction`` of ``dataset`` off (seeded) as the meta/validation set; returns ``(train, meta)``."""
    n = len(dataset)
    n_meta = int(round(n * fraction))
    if n_meta < 1 or n - n_meta < 1:
        raise ValueError(
            f"lkd_val_fraction={fraction} of {n} training examples leaves an empty split "
            f"({n - n_meta} train / {n_meta} validation); use a larger dataset or pass meta_dataset=."
        )
    if hasattr(dataset, "train_test_split"):
        split = dataset.train_test_split(test_size=n_meta, seed=seed)
        return split["train"], split["test"]
    train, meta = random_split(dataset, [n - n_meta, n_meta], generator=torch.Generator().manual_seed(seed))
    return train, meta


class MetaBatchSampler(Sampler[list[int]]):
    """Endless shuffled batches of indices into a meta dataset of ``size`` examples, resumable at any position.

    Epoch ``e`` visits the examples in the order of ``torch.randperm(size)`` drawn from a generator seeded with
    ``seed + e``, ``batch_size`` at a time; an incomplete last batch is dropped, unless the dataset is smaller than one
    batch (then every batch holds all examples). Batch ``i`` of the stream depends only on ``(seed, i)``, so a resumed
    run starts at the number of batches already drawn (``start``) without loading them.
    """

    def __init__(self, size: int, batch_size: int, seed: int = 0, start: int = 0) -> None:
        if size < 1 or batch_size < 1:
            raise ValueError(f"Need a non-empty meta dataset and batch size, got {size} examples, batch {batch_size}.")
        self.size, self.batch_size, self.seed, self.start = size, batch_size, seed, start
        self.batches_per_epoch = max(size // batch_size, 1)

    def __iter__(self) -> Iterator[list[int]]:
        index, epoch, order = self.start, None, []
        while True:
            batch_epoch, offset = divmod(index, self.batches_per_epoch)
            if batch_epoch != epoch:
                epoch = batch_epoch
                order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
            yield order[offset * self.batch_size : (offset + 1) * self.batch_size]
            index += 1
