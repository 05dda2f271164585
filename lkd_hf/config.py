"""``LKDConfig``: ``TrainingArguments`` plus the fields of Learnable Knowledge Distillation (and nothing else)."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainingArguments

from .constants import (
    LKD_INITS,
    META_OPTIMIZERS,
    META_PRECISIONS,
    META_VAL_LOSS_NAMES,
    META_VAL_SOURCES,
    SNAPSHOT_STRATEGIES,
)
from .ranges import LKD_CONFIG_RANGES, LOSS_OPTION_RANGES, check_ranges


@dataclass
class LKDConfig(TrainingArguments):
    """Training arguments for :class:`~lkd_hf.LKDTrainer`: every :class:`transformers.TrainingArguments` field plus
    the fields of Learnable Knowledge Distillation below. The student minimises ``ce_weight * CE + distill_weight *
    distill_loss (+ feature_weight * feature_loss)``; a learned loss is trained against the student's validation loss
    by the outer (meta) loop. Why the defaults are what they are: ``docs/method.md``, ``docs/benchmarks.md`` and
    ``docs/experiments.md``.

    Defaults differing from ``TrainingArguments``: ``remove_unused_columns=False`` and ``label_names=["labels"]``
    (timm models are fed ``{"pixel_values", "labels"}`` batches).

    Args:
        > Student objective

        loss (`str`, defaults to `"lkd"`):
            The distillation loss by registered name, a logit and / or a feature loss joined by ``+`` (e.g.
            ``"lkd+feat"``, ``"kd+fitnet"``; ``"ce"``: no teacher). See :func:`~lkd_hf.available_losses`.
        ce_weight (`float`, defaults to `1.0`):
            Weight of the cross-entropy on the labels.
        distill_weight (`float`, defaults to `1.0`):
            Weight of the logit distillation term.
        feature_weight (`float`, defaults to `1.0`):
            Weight of the feature distillation term (summed over the taps).
        temperature (`float`, defaults to `4.0`):
            Temperature of KD and DKD, and the start of a learned loss started from KD (``lkd_init="kd"``).
        feature_taps (`list[str]`, defaults to `["-1"]`):
            Student stages whose features a feature loss distills: ``feature_info`` indices or module names.
        teacher_feature_taps (`list[str]` or `None`, defaults to `None`):
            Teacher stages paired with ``feature_taps`` (default: the same).
        loss_kwargs (`dict` or `None`, defaults to `None`):
            Options of single losses by loss name, e.g. ``{"dist": {"beta": 2.0}}``; each loss takes only its own
            (``docs/method.md`` lists them).

        > Options of single hand-made losses (deprecated: set them in ``loss_kwargs``)

        dist_beta, dist_gamma (`float`, default to `1.0`):
            DIST: weights of the inter-class and the intra-class relation (also the start of ``lkd_init="dist"``).
        dist_temperature (`float`, defaults to `1.0`):
            DIST: softmax temperature.
        dkd_alpha, dkd_beta (`float`, default to `1.0`, `8.0`):
            DKD: weights of target-class and non-target-class KD.
        dkd_logit_stand (`bool`, defaults to `False`):
            DKD: z-score each sample's logits first.
        dkd_warmup_fraction (`float`, defaults to `0.0`):
            DKD: share of the training steps over which the loss's factor rises linearly from 0 to 1.
        la_tau (`float`, defaults to `1.0`):
            ``"la"`` (logit-adjusted cross-entropy, no teacher): scale of the log class prior added to the logits.
        la_class_prior (`list[float]` or `None`, defaults to `None`):
            ``"la"``: each class's fraction of the training labels (required; ``lkd_hf.losses.class_prior``).
        ls_temperature (`float`, defaults to `2.0`):
            ``"ls"`` (KD with logit standardization): temperature on the z-scored logits.
        ctkd_temperature_min, ctkd_temperature_range (`float`, default to `1.0`, `20.0`):
            CTKD: the learned temperature is ``min + range * sigmoid(raw)``.
        ctkd_lambda_min, ctkd_lambda_max (`float`, default to `0.0`, `1.0`):
            CTKD: gradient-reversal strength at the start and once the curriculum is over.
        ctkd_curriculum_fraction (`float`, defaults to `10 / 240`):
            CTKD: share of the training steps over which the reversal strength rises (a cosine).

        > Learned loss

        lkd_init (`str`, defaults to `"pretrained"`):
            Start of the learned logit loss: ``"pretrained"`` (the loss shipped with lkd_hf), ``"kd"`` or ``"dist"``
            (the hand-made loss, reproduced exactly). ``loss_from``, when set, is the start instead.
        loss_from (`str` or `None`, defaults to `None`):
            A learned loss (:class:`~lkd_hf.LearnedLoss`) to start from: a folder, a Hub repo id or a folder in a
            repo. It must fit the run's classes and teacher feature taps.
        freeze_loss (`bool` or `None`, defaults to `None`):
            Keep the learned loss fixed (no meta steps). Default: fixed when every learned loss starts from one learned
            beforehand (``lkd_init="pretrained"`` or ``loss_from``), else learned.
        lkd_learn_knobs (`bool`, defaults to `True`):
            Whether the outer loop may change the learned logit loss's temperature and weight.
        loss_hidden_dim (`int`, defaults to `32`):
            Width of the learned logit loss network's MLP.
        feature_loss_hidden_dim (`int`, defaults to `16`):
            Width of the learned feature loss network's per-element MLP.
        loss_hub_model_id (`str` or `None`, defaults to `None`):
            Also push the learned loss to this Hub repo of its own (the student's repo holds it under ``lkd_loss/``).

        > Population

        population_temperature_factors (`list[float]` or `None`, defaults to `None`):
            One student per factor, trained side by side, each with the learned logit loss at its temperature times
            the factor (the first is 1.0); the best on the eval_dataset is kept. Default: ``[1.0, 2.0, 0.3333]`` for
            a learned logit loss alone with an eval_dataset (``[1.0, 2.0]`` with meta steps), else one student.
        population_weight_factors (`list[float]` or `None`, defaults to `None`):
            The population's factors of the learned loss's weight, one per student (the first is 1.0). Default:
            ``[1.0, 2.0, 0.0625]`` with the default temperature factors (``[1.0, 2.0]`` with meta steps).
        population_drop_fractions (`list[float]` or `None`, defaults to `None`):
            With a loss kept fixed, after each of these fractions of training (increasing, fewer than the students)
            the student still training that scores worst on the eval_dataset is dropped; the best of the others is
            kept at the end (``[]``: none). Default: ``[0.5, 0.75]`` for the default population, else none.

        > Outer (meta) loop

        meta_interval (`int`, defaults to `5`):
            Update the learned loss every N student steps.
        meta_warmup_steps (`int`, defaults to `0`):
            Student steps before the first meta update (overrides ``meta_warmup_ratio`` when > 0).
        meta_warmup_ratio (`float`, defaults to `0.0`):
            Share of the training steps before the first meta update.
        meta_learning_rate (`float`, defaults to `1e-3`):
            Learning rate of the loss networks.
        meta_optimizer (`str`, defaults to `"adam"`):
            Optimizer of the loss networks: ``"adam"`` or ``"sgd"``.
        meta_weight_decay (`float`, defaults to `0.0`):
            Weight decay of the loss networks.
        meta_max_grad_norm (`float`, defaults to `1.0`):
            Clip the hypergradient to this norm (<= 0: no clipping).
        meta_batch_size (`int` or `None`, defaults to `None`):
            Validation batch size of a held-out meta step (default: ``per_device_train_batch_size``).
        meta_val_loss (`str`, defaults to `"calibrated_ce"`):
            Outer objective: ``"calibrated_ce"`` (the validation cross-entropy after temperature scaling) or
            ``"ce"``.
        meta_val_source (`str` or `None`, defaults to `None`):
            Validation batch: ``"heldout"`` (the meta set) or ``"train_batch"`` (the current training batch).
            Default: ``"heldout"`` when there is a meta set, else ``"train_batch"``.
        lkd_val_fraction (`float` or `None`, defaults to `None`):
            Hold this fraction of the training set out as the meta set when the trainer gets no ``meta_dataset``.
        meta_precision (`str`, defaults to `"auto"`):
            Precision of the meta step's validation pass: ``"fp32"``, ``"bf16"``, or ``"auto"`` (``"bf16"`` when the
            run trains in bf16); the training-loss passes stay in fp32.
        hypergradient (`str`, defaults to `"unrolled"`):
            Hypergradient estimator: ``"unrolled"`` (exact, second order), ``"finite_difference"`` or
            ``"implicit"`` (no double backward).
        fd_epsilon (`float`, defaults to `0.01`):
            ``finite_difference``: perturbation size, relative to the weights' gradient norm.
        lookahead_steps (`int`, defaults to `1`):
            Virtual student steps K before the validation loss (the horizon).
        lookahead_steps_std (`float`, defaults to `0.0`):
            If > 0, each meta step draws K from a normal of this standard deviation around ``lookahead_steps``.
        lookahead_lr (`float` or `None`, defaults to `None`):
            Step size of the virtual steps (default: the student's current learning rate).
        snapshot_strategy (`str`, defaults to `"uniform"`):
            Student a meta step starts from: ``"current"``, ``"uniform"`` (over recorded snapshots and the live
            weights), ``"gaussian"`` or ``"fixed"`` (by step distance).
        snapshot_interval (`int`, defaults to `50`):
            Record a student snapshot every N steps.
        snapshot_pool_size (`int`, defaults to `16`):
            At most this many snapshots (thinned evenly over the run when full).
        snapshot_distance (`int`, defaults to `200`):
            Step distance of ``"fixed"``, standard deviation of ``"gaussian"``.
        snapshot_checkpoints (`list[str]`, defaults to `[]`):
            Trainer checkpoints of the same student architecture that seed the snapshot pool.
        snapshot_storage_dir (`str` or `None`, defaults to `None`):
            Keep the snapshots as files in this folder instead of CPU memory.

        > Safety

        max_nonfinite_steps (`int`, defaults to `10`):
            Stop with an error after this many consecutive student steps skipped for a non-finite loss or gradient.
    """

    # --- student objective -----------------------------------------------------------------------------------
    loss: str = field(
        default="lkd",
        metadata={"help": "Distillation loss by registered name: a logit loss ('lkd' (learned), 'kd', 'dist', 'dkd', "
                  "'ls', 'ctkd', 'ce' (no teacher)) and/or a feature loss ('feat' (learned), 'fitnet', 'at'), joined "
                  "by '+', e.g. 'lkd+feat'. See lkd_hf.available_losses()."},
    )
    ce_weight: float = field(default=1.0, metadata={"help": "Weight of the cross-entropy on the labels."})
    distill_weight: float = field(default=1.0, metadata={"help": "Weight of the distillation term."})
    feature_weight: float = field(default=1.0, metadata={"help": "Weight of the feature distillation term."})
    temperature: float = field(
        default=4.0, metadata={"help": "Temperature of KD and DKD, and the initial temperature of the learned loss "
                                  "started from KD (lkd_init='kd')."}
    )
    feature_taps: list[str] = field(
        default_factory=lambda: ["-1"],
        metadata={"help": "Student stages whose features a feature loss distills: indices into the model's "
                  "feature_info (e.g. -1, or 1 2 3) or module names (forward hooks)."},
    )
    teacher_feature_taps: list[str] | None = field(
        default=None,
        metadata={"help": "Teacher stages paired with feature_taps, in the same order (default: the same indices)."},
    )
    loss_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "Options of single losses by loss name, e.g. {\"dist\": {\"beta\": 2.0}} (a JSON string on "
                  "the command line). Each loss's options: docs/method.md."},
    )

    # --- options of single hand-made losses (deprecated: use loss_kwargs) ------------------------------------
    dist_beta: float = field(
        default=1.0,
        metadata={"help": "DIST: weight of the inter-class relation (a loaded learned loss keeps its own)."},
    )
    dist_gamma: float = field(
        default=1.0,
        metadata={"help": "DIST: weight of the intra-class relation (a loaded learned loss keeps its own)."},
    )
    dist_temperature: float = field(default=1.0, metadata={"help": "DIST: softmax temperature."})
    dkd_alpha: float = field(default=1.0, metadata={"help": "DKD: weight of target-class KD (TCKD)."})
    dkd_beta: float = field(default=8.0, metadata={"help": "DKD: weight of non-target-class KD (NCKD)."})
    dkd_logit_stand: bool = field(
        default=False, metadata={"help": "DKD: z-score each sample's logits first (logit standardization)."}
    )
    dkd_warmup_fraction: float = field(
        default=0.0,
        metadata={"help": "DKD: fraction of the training steps over which the loss's factor rises linearly from 0 to 1 "
                  "(the paper's reference code: 20 of 240 epochs, 20 / 240); 0 applies it fully from the start."},
    )
    la_tau: float = field(
        default=1.0,
        metadata={"help": "'la' (logit-adjusted cross-entropy, no teacher; use with ce_weight=0): scale tau of the "
                  "log class prior added to the logits (1: the paper's choice, 0: plain cross-entropy)."},
    )
    la_class_prior: list[float] | None = field(
        default=None,
        metadata={"help": "'la': each class's fraction of the training labels (required by 'la'; "
                  "lkd_hf.losses.class_prior computes it)."},
    )
    ls_temperature: float = field(
        default=2.0,
        metadata={"help": "'ls' (KD with logit standardization): base temperature on the z-scored logits."},
    )
    ctkd_temperature_min: float = field(
        default=1.0, metadata={"help": "CTKD: lower end of the learned temperature (the reference code's t_start)."}
    )
    ctkd_temperature_range: float = field(
        default=20.0,
        metadata={"help": "CTKD: width of the learned temperature's range (the reference code's t_end); temperature "
                  "= ctkd_temperature_min + ctkd_temperature_range * sigmoid(raw)."},
    )
    ctkd_lambda_min: float = field(default=0.0, metadata={"help": "CTKD: gradient-reversal strength at the start."})
    ctkd_lambda_max: float = field(
        default=1.0, metadata={"help": "CTKD: gradient-reversal strength once the curriculum is over."}
    )
    ctkd_curriculum_fraction: float = field(
        default=10 / 240,
        metadata={"help": "CTKD: share of the training steps over which the reversal strength rises from "
                  "ctkd_lambda_min to ctkd_lambda_max along a cosine."},
    )

    # --- learned loss ----------------------------------------------------------------------------------------
    lkd_init: str = field(
        default="pretrained",
        metadata={"help": "Start of the learned logit loss: 'pretrained' (the loss shipped with lkd_hf), or the "
                  "hand-made loss it reproduces exactly, 'kd' (at temperature) or 'dist' (at dist_temperature). "
                  "loss_from, when set, is the start instead."},
    )
    loss_from: str | None = field(
        default=None,
        metadata={"help": "Load a learned loss (lkd_hf.LearnedLoss) from a folder, a Hub repo id or a folder in a Hub "
                  "repo ('user/student/lkd_loss'). It must fit this run's classes and teacher feature taps."},
    )
    freeze_loss: bool | None = field(
        default=None,
        metadata={"help": "Keep the learned loss fixed: no meta steps (about the cost of KD). Default: fixed when "
                  "every learned loss starts from one learned beforehand (lkd_init='pretrained' or loss_from), else "
                  "learned."},
    )
    lkd_learn_knobs: bool = field(
        default=True,
        metadata={"help": "Whether the outer loop may change the learned logit loss's temperature and weight; False "
                  "learns only its per-class and per-sample weights."},
    )
    loss_hidden_dim: int = field(default=32, metadata={"help": "Width of the learned loss network's MLP."})
    feature_loss_hidden_dim: int = field(
        default=16, metadata={"help": "Width of the learned feature loss network's per-element MLP."}
    )
    loss_hub_model_id: str | None = field(
        default=None,
        metadata={"help": "When the trainer pushes to the Hub, also push the learned loss to this repo of its own. "
                  "The student's repo gets it under lkd_loss/ in any case."},
    )

    # --- population ------------------------------------------------------------------------------------------
    population_temperature_factors: list[float] | None = field(
        default=None,
        metadata={"help": "One student per factor, trained side by side with the learned logit loss at its "
                  "temperature times the factor (the first is 1.0); the best on the eval_dataset is kept. Default: "
                  "[1.0, 2.0, 0.3333] for a learned logit loss alone with an eval_dataset ([1.0, 2.0] with meta "
                  "steps), else one student ([1.0])."},
    )
    population_weight_factors: list[float] | None = field(
        default=None,
        metadata={"help": "The population's factors of the learned loss's weight, one per student (the first is 1.0). "
                  "Default: [1.0, 2.0, 0.0625] with the default temperature factors ([1.0, 2.0] with meta steps), "
                  "else 1.0 each."},
    )
    population_drop_fractions: list[float] | None = field(
        default=None,
        metadata={"help": "With a loss kept fixed, after each of these fractions of training (increasing, fewer than "
                  "the students) the student still training that scores worst on the eval_dataset is dropped; the "
                  "best of the others is kept at the end ([]: none). Default: [0.5, 0.75] for the default "
                  "population, else none."},
    )

    # --- outer (meta) loop -----------------------------------------------------------------------------------
    meta_interval: int = field(default=5, metadata={"help": "Update the learned loss every N student steps."})
    meta_warmup_steps: int = field(
        default=0,
        metadata={"help": "Student steps before the first meta update (overrides meta_warmup_ratio when > 0)."},
    )
    meta_warmup_ratio: float = field(
        default=0.0,
        metadata={"help": "Share of the run's training steps before the first meta update (like warmup_ratio)."},
    )
    meta_learning_rate: float = field(default=1e-3, metadata={"help": "Learning rate of the loss network."})
    meta_optimizer: str = field(default="adam", metadata={"help": "Loss network optimizer: 'adam' or 'sgd'."})
    meta_weight_decay: float = field(default=0.0, metadata={"help": "Weight decay of the loss network."})
    meta_max_grad_norm: float = field(
        default=1.0, metadata={"help": "Clip the hypergradient to this norm (<= 0 disables clipping)."}
    )
    meta_batch_size: int | None = field(
        default=None,
        metadata={"help": "Validation batch size of a held-out meta step (default: per_device_train_batch_size)."},
    )
    meta_val_loss: str = field(
        default="calibrated_ce",
        metadata={"help": "Outer objective of a meta step: 'calibrated_ce' (the validation cross-entropy after "
                  "temperature scaling, blind to the logits' scale) or 'ce' (the plain validation cross-entropy)."},
    )
    meta_val_source: str | None = field(
        default=None,
        metadata={"help": "Validation batch of a meta step: 'heldout' (a batch of the meta set) or 'train_batch' (the "
                  "current training batch). Default: 'heldout' when there is a meta set, else 'train_batch'."},
    )
    lkd_val_fraction: float | None = field(
        default=None,
        metadata={"help": "Hold this fraction of the training set out as the meta set when the trainer gets no "
                  "meta_dataset (default: hold nothing out)."},
    )
    meta_precision: str = field(
        default="auto",
        metadata={"help": "Precision of the meta step's validation pass: 'fp32', 'bf16', or 'auto' ('bf16' when the "
                  "run trains in bf16, else 'fp32'). The training-loss passes stay in fp32."},
    )
    hypergradient: str = field(
        default="unrolled",
        metadata={"help": "Hypergradient estimator: 'unrolled' (exact, second order), 'finite_difference' (no double "
                  "backward; works for every timm model) or 'implicit' (Neumann series at the current weights)."},
    )
    fd_epsilon: float = field(
        default=0.01, metadata={"help": "finite_difference: perturbation size, relative to the weights' gradient norm."}
    )
    lookahead_steps: int = field(
        default=1, metadata={"help": "Virtual student steps K before the validation loss (the meta horizon)."}
    )
    lookahead_steps_std: float = field(
        default=0.0,
        metadata={"help": "If > 0, each meta step draws its horizon K ~ round(N(lookahead_steps, std)), clipped to "
                  "[1, lookahead_steps + 2 std]; 0 keeps K fixed."},
    )
    lookahead_lr: float | None = field(
        default=None,
        metadata={"help": "Step size of the virtual student step(s); default: the student's current learning rate."},
    )
    snapshot_strategy: str = field(
        default="uniform",
        metadata={"help": "Student a meta step starts from: 'current', 'uniform' (over recorded snapshots and the "
                  "live weights), 'gaussian' or 'fixed' (by step distance)."},
    )
    snapshot_interval: int = field(default=50, metadata={"help": "Record a student snapshot every N steps."})
    snapshot_pool_size: int = field(
        default=16, metadata={"help": "At most this many snapshots (thinned evenly over the run when full)."}
    )
    snapshot_distance: int = field(
        default=200, metadata={"help": "Step distance of the 'fixed' strategy, standard deviation of 'gaussian'."}
    )
    snapshot_checkpoints: list[str] = field(
        default_factory=list,
        metadata={"help": "Trainer checkpoint dirs of the same student architecture that seed the snapshot pool."},
    )
    snapshot_storage_dir: str | None = field(
        default=None,
        metadata={
            "help": "Keep snapshots as safetensors files in this directory instead of CPU memory (large models)."
        },
    )

    # --- safety ----------------------------------------------------------------------------------------------
    max_nonfinite_steps: int = field(
        default=10,
        metadata={"help": "Stop training with an error after this many consecutive student steps skipped because the "
                  "loss or the gradient was not finite. A skipped step leaves the student unchanged."},
    )

    # --- TrainingArguments defaults that timm models need ---------------------------------------------------
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: timm models take pixel_values positionally."}
    )

    def __post_init__(self) -> None:
        if self.label_names is None:
            self.label_names = ["labels"]
        super().__post_init__()
        if self.use_cpu or not torch.accelerator.is_available():  # pinned memory only serves an accelerator
            self.dataloader_pin_memory = False
        check_ranges(self, LKD_CONFIG_RANGES, type(self).__name__)
        fractions = self.population_drop_fractions
        if fractions is not None and any(a >= b for a, b in zip(fractions, fractions[1:])):
            raise ValueError(f"population_drop_fractions must be increasing, got {fractions}.")
        self.loss_kwargs = _loss_kwargs_with_deprecated_fields(self)
        for name, options in self.loss_kwargs.items():
            check_ranges(options, LOSS_OPTION_RANGES.get(name, {}), f"{type(self).__name__}.loss_kwargs[{name!r}]")
        if self.lkd_init not in LKD_INITS:
            raise ValueError(f"lkd_init must be one of {LKD_INITS}, got {self.lkd_init!r}")
        if self.meta_val_loss not in META_VAL_LOSS_NAMES:
            raise ValueError(f"meta_val_loss must be one of {META_VAL_LOSS_NAMES}, got {self.meta_val_loss!r}")
        if self.meta_val_source is not None and self.meta_val_source not in META_VAL_SOURCES:
            raise ValueError(f"meta_val_source must be one of {META_VAL_SOURCES}, got {self.meta_val_source!r}")
        if self.snapshot_strategy not in SNAPSHOT_STRATEGIES:
            raise ValueError(
                f"Unknown snapshot_strategy {self.snapshot_strategy!r}. Known: {', '.join(SNAPSHOT_STRATEGIES)}."
            )
        if self.meta_precision not in META_PRECISIONS:
            raise ValueError(f"meta_precision must be one of {META_PRECISIONS}, got {self.meta_precision!r}")
        if self.meta_optimizer not in META_OPTIMIZERS:
            raise ValueError(f"meta_optimizer must be one of {META_OPTIMIZERS}, got {self.meta_optimizer!r}")
        self.feature_taps = _parse_taps(self.feature_taps)
        if self.teacher_feature_taps is not None:
            self.teacher_feature_taps = _parse_taps(self.teacher_feature_taps)
            if len(self.teacher_feature_taps) != len(self.feature_taps):
                raise ValueError(
                    f"teacher_feature_taps ({self.teacher_feature_taps}) must pair one to one with feature_taps "
                    f"({self.feature_taps})."
                )
        if self.meta_batch_size is None:
            self.meta_batch_size = self.per_device_train_batch_size
        if self.meta_batch_size < 1:
            raise ValueError(f"meta_batch_size must be >= 1, got {self.meta_batch_size}")
        if self.freeze_loss is None:
            names = {name.strip() for name in self.loss.split("+")}
            self.freeze_loss = "lkd" in names and "feat" not in names and (
                self.lkd_init == "pretrained" or self.loss_from is not None)
        factor_lists = {"population_temperature_factors": self.population_temperature_factors,
                        "population_weight_factors": self.population_weight_factors}
        for name, factors in factor_lists.items():
            if factors is not None:
                factors = [float(f) for f in factors]
                if not factors or factors[0] != 1.0 or not all(math.isfinite(f) and f > 0 for f in factors):
                    raise ValueError(f"{name} must start with 1.0 and hold finite factors > 0, got {factors}")
                setattr(self, name, factors)
        temperatures, weights = self.population_temperature_factors, self.population_weight_factors
        if temperatures is not None and weights is not None and len(temperatures) != len(weights):
            raise ValueError("population_temperature_factors and population_weight_factors must have one factor per "
                             f"student, got {len(temperatures)} and {len(weights)}")
        members = self.population_members
        if members is not None and len(set(members)) < len(members):
            raise ValueError(f"The population's students must differ in their factors, got {members}")
    @property
    def population_members(self) -> list[tuple[float, float]] | None:
        """The population's ``(temperature factor, weight factor)`` pairs as set (a list set alone pairs with factors
        1.0); ``None`` when neither list is set (the trainer's default applies)."""
        temperatures, weights = self.population_temperature_factors, self.population_weight_factors
        if temperatures is None and weights is None:
            return None
        ones = [1.0] * len(temperatures if temperatures is not None else weights)
        return list(zip(temperatures or ones, weights or ones, strict=True))

    @property
    def max_lookahead_steps(self) -> int:
        """The largest horizon a meta step may draw."""
        return self.lookahead_steps + math.ceil(2 * self.lookahead_steps_std)


def _parse_taps(taps: list) -> list[int | str]:
    """Tap indices given as strings on the command line ('-1') become ints; module names stay strings."""
    return [int(t) if isinstance(t, str) and t.lstrip("-").isdigit() else t for t in taps]


# The per-loss fields kept for compatibility, by field: its default and the (loss, option) pairs it sets.
DEPRECATED_LOSS_FIELDS: dict[str, tuple[Any, tuple[tuple[str, str], ...]]] = {
    "dist_beta": (1.0, (("dist", "beta"), ("lkd", "dist_beta"))),
    "dist_gamma": (1.0, (("dist", "gamma"), ("lkd", "dist_gamma"))),
    "dist_temperature": (1.0, (("dist", "temperature"), ("lkd", "dist_temperature"))),
    "dkd_alpha": (1.0, (("dkd", "alpha"),)),
    "dkd_beta": (8.0, (("dkd", "beta"),)),
    "dkd_logit_stand": (False, (("dkd", "logit_stand"),)),
    "dkd_warmup_fraction": (0.0, (("dkd", "warmup_fraction"),)),
    "la_tau": (1.0, (("la", "tau"),)),
    "la_class_prior": (None, (("la", "class_prior"),)),
    "ls_temperature": (2.0, (("ls", "temperature"),)),
    "ctkd_temperature_min": (1.0, (("ctkd", "temperature_min"),)),
    "ctkd_temperature_range": (20.0, (("ctkd", "temperature_range"),)),
    "ctkd_lambda_min": (0.0, (("ctkd", "lambda_min"),)),
    "ctkd_lambda_max": (1.0, (("ctkd", "lambda_max"),)),
    "ctkd_curriculum_fraction": (10 / 240, (("ctkd", "curriculum_fraction"),)),
}


def _loss_kwargs_with_deprecated_fields(config: LKDConfig) -> dict[str, dict[str, Any]]:
    """``config.loss_kwargs`` (parsed from JSON when a string) with the deprecated per-loss fields set away from
    their defaults added (a ``FutureWarning`` each; an option set in ``loss_kwargs`` too keeps that value)."""
    raw = config.loss_kwargs
    loss_kwargs = json.loads(raw) if isinstance(raw, str) else dict(raw or {})
    if not isinstance(loss_kwargs, dict) or not all(isinstance(v, dict) for v in loss_kwargs.values()):
        raise ValueError(f"loss_kwargs must map loss names to dicts of options, got {raw!r}")
    loss_kwargs = {name: dict(options) for name, options in loss_kwargs.items()}
    for name, (default, targets) in DEPRECATED_LOSS_FIELDS.items():
        value = getattr(config, name)
        if value == default:
            continue
        warnings.warn(f"LKDConfig.{name} is deprecated: set loss_kwargs={{{targets[0][0]!r}: {{{targets[0][1]!r}: "
                      f"{value!r}}}}} instead.", FutureWarning, stacklevel=4)
        for loss, option in targets:
            loss_kwargs.setdefault(loss, {}).setdefault(option, value)
    return loss_kwargs
