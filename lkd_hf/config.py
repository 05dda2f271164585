"""``LKDConfig``: ``TrainingArguments`` plus the fields of Learnable Knowledge Distillation (and nothing else)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from transformers import TrainingArguments

from .constants import (
    LKD_INITS,
    META_OPTIMIZERS,
    META_PRECISIONS,
    META_VAL_LOSS_NAMES,
    META_VAL_SOURCES,
    SNAPSHOT_STRATEGIES,
)
from .ranges import LKD_CONFIG_RANGES, check_ranges


@dataclass
class LKDConfig(TrainingArguments):
    """Training arguments for :class:`~lkd_hf.LKDTrainer`.

    Inherits every :class:`transformers.TrainingArguments` field. Its own fields define the student objective
    ``ce_weight * CE + distill_weight * distill_loss`` and, when the distillation loss is learned (``loss="lkd"``),
    the bi-level (meta) optimisation of the loss network against the student's validation cross-entropy.

    Defaults differing from ``TrainingArguments``: ``remove_unused_columns=False`` and ``label_names=["labels"]``
    (needed for timm models fed ``{"pixel_values", "labels"}`` batches).
    """

    # --- the student objective -------------------------------------------------------------------------------
    loss: str = field(
        default="lkd",
        metadata={"help": "Distillation loss by registered name: a logit loss ('lkd' (learned), 'kd', 'dist', 'dkd', "
                  "'ce' (no teacher)) and/or a feature loss ('feat' (learned), 'fitnet', 'at'), joined by '+', e.g. "
                  "'lkd+feat' or 'kd+fitnet'. See lkd_hf.available_losses()."},
    )
    ce_weight: float = field(default=1.0, metadata={"help": "Weight of the cross-entropy on the labels."})
    distill_weight: float = field(default=1.0, metadata={"help": "Weight of the distillation term."})
    temperature: float = field(
        default=4.0, metadata={"help": "Temperature of KD and DKD, and the initial temperature of the learned loss "
                                  "started from KD (lkd_init='kd')."}
    )
    dist_beta: float = field(
        default=1.0, metadata={"help": "DIST: weight of the inter-class relation (a learned loss loaded from a folder, "
                                      "the shipped one included, keeps its own)."}
    )
    dist_gamma: float = field(
        default=1.0, metadata={"help": "DIST: weight of the intra-class relation (a learned loss loaded from a folder, "
                                      "the shipped one included, keeps its own)."}
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
        metadata={"help": "'ls' (KD with logit standardization): base temperature on the z-scored logits (the "
                  "paper's CIFAR-100 setting 2, with a distillation weight of 9)."},
    )
    ctkd_temperature_min: float = field(
        default=1.0, metadata={"help": "CTKD: lower end of the learned temperature (the reference code's t_start)."}
    )
    ctkd_temperature_range: float = field(
        default=20.0,
        metadata={"help": "CTKD: width of the learned temperature's range (the reference code's t_end): temperature "
                  "= ctkd_temperature_min + ctkd_temperature_range * sigmoid(raw), raw starting at 1."},
    )
    ctkd_lambda_min: float = field(default=0.0, metadata={"help": "CTKD: gradient-reversal strength at the start."})
    ctkd_lambda_max: float = field(
        default=1.0, metadata={"help": "CTKD: gradient-reversal strength once the curriculum is over."}
    )
    ctkd_curriculum_fraction: float = field(
        default=10 / 240,
        metadata={"help": "CTKD: fraction of the training steps over which the reversal strength rises from "
                  "ctkd_lambda_min to ctkd_lambda_max along a cosine (10 of 240 epochs in the paper's CIFAR-100 "
                  "setting)."},
    )
    loss_hidden_dim: int = field(default=32, metadata={"help": "Width of the learned loss network's MLP."})
    lkd_init: str = field(
        default="pretrained",
        metadata={"help": "Start of the learned logit loss: 'pretrained' (the loss shipped with lkd_hf, learned "
                  "beforehand over several teacher -> student pairs; see docs/method.md), or the hand-made loss it "
                  "reproduces exactly: 'kd' (Hinton KD at `temperature`) or 'dist' (DIST with dist_beta, dist_gamma "
                  "at dist_temperature). loss_from, when set, is the start instead."},
    )
    lkd_learn_knobs: bool = field(
        default=True,
        metadata={"help": "Whether the outer loop may change the learned logit loss's global knobs (temperature and "
                  "weight); False keeps them at their start and learns only the per-class / per-sample weights."},
    )
    feature_weight: float = field(default=1.0, metadata={"help": "Weight of the feature distillation term."})
    feature_taps: list[str] = field(
        default_factory=lambda: ["-1"],
        metadata={"help": "Student stages whose features are distilled (used when the loss names a feature loss): "
                  "indices into the model's feature_info (e.g. -1, or 1 2 3), or module names (forward hooks)."},
    )
    teacher_feature_taps: list[str] | None = field(
        default=None,
        metadata={"help": "Teacher stages paired with feature_taps, in the same order (default: the same indices)."},
    )
    feature_loss_hidden_dim: int = field(
        default=16, metadata={"help": "Width of the learned feature loss network's per-element MLP."}
    )

    # --- the population --------------------------------------------------------------------------------------
    population_temperature_factors: list[float] | None = field(
        default=None,
        metadata={"help": "Train one student per factor side by side on the same batches and teacher outputs, each "
                  "with the learned logit loss at its temperature times the factor (the first factor is 1.0: the "
                  "loss's own) and its weight times the matching population_weight_factors entry, and keep the one "
                  "with the best metric_for_best_model (default: accuracy) on the eval_dataset once training ends; "
                  "the meta steps learn from the first student. Default (both lists None): temperature factors "
                  "[1.0, 2.0] with weight factors [1.0, 2.0] for a learned logit loss without a feature loss when "
                  "the trainer has an eval_dataset, else a single student. [1.0] trains a single student."},
    )
    population_weight_factors: list[float] | None = field(
        default=None,
        metadata={"help": "The population's factors of the learned loss's weight, one per student (the first is 1.0); "
                  "set alone, the temperature factors are 1.0, and population_temperature_factors set alone pairs "
                  "with weight factors 1.0. Default: see population_temperature_factors."},
    )

    # --- the outer (meta) loop -------------------------------------------------------------------------------
    meta_interval: int = field(default=5, metadata={"help": "Update the learned loss every N student steps."})
    meta_warmup_steps: int = field(
        default=0, metadata={"help": "Student steps before the first meta update (overrides meta_warmup_ratio when > 0)."}
    )
    meta_warmup_ratio: float = field(
        default=0.0,
        metadata={"help": "Share of the run's training steps before the first meta update (like warmup_ratio)."},
    )
    max_nonfinite_steps: int = field(
        default=10,
        metadata={"help": "Stop training with an error after this many consecutive student steps skipped because the "
                  "loss or the gradient was not finite (a skipped step leaves the student unchanged)."},
    )
    meta_learning_rate: float = field(default=1e-3, metadata={"help": "Learning rate of the loss network."})
    meta_optimizer: str = field(default="adam", metadata={"help": "Loss network optimizer: 'adam' or 'sgd'."})
    meta_weight_decay: float = field(default=0.0, metadata={"help": "Weight decay of the loss network."})
    meta_max_grad_norm: float = field(
        default=1.0, metadata={"help": "Clip the hypergradient to this norm (<= 0 disables clipping)."}
    )
    meta_batch_size: int | None = field(
        default=None,
        metadata={"help": "Validation batch size of a held-out meta step (default: per_device_train_batch_size; "
                  "chosen by measurement, docs/benchmark_meta_batch_size)."},
    )
    hypergradient: str = field(
        default="unrolled",
        metadata={"help": "Hypergradient estimator: 'unrolled' (exact, second order), 'finite_difference' (no double "
                  "backward; works for every timm model) or 'implicit' (Neumann-series implicit differentiation at "
                  "the current weights, no trajectory; no double backward)."},
    )
    lookahead_lr: float | None = field(
        default=None,
        metadata={"help": "Step size of the virtual student step(s); default: the student's current learning rate."},
    )
    lookahead_steps: int = field(
        default=1, metadata={"help": "Virtual student steps K before the validation loss (the meta horizon)."}
    )
    lookahead_steps_std: float = field(
        default=0.0,
        metadata={"help": "If > 0, each meta step draws its horizon K ~ round(N(lookahead_steps, std)), clipped to "
                  "[1, lookahead_steps + 2 std] ('Gaussian sampling'); 0 keeps K fixed."},
    )
    meta_val_loss: str = field(
        default="calibrated_ce",
        metadata={"help": "Outer objective of a meta step: 'calibrated_ce' (the validation cross-entropy after "
                  "temperature scaling, blind to the logits' scale; see lkd_hf.meta.objectives) or 'ce' (the plain "
                  "validation cross-entropy)."},
    )
    meta_val_source: str | None = field(
        default=None,
        metadata={"help": "Validation batch of a meta step: 'heldout' (a fresh batch of the meta set: the trainer's "
                  "meta_dataset, or lkd_val_fraction of the training set) or 'train_batch' (the current training "
                  "batch: no image held out). Default: 'heldout' when the trainer gets a meta_dataset or "
                  "lkd_val_fraction is set, else 'train_batch'."},
    )
    meta_precision: str = field(
        default="auto",
        metadata={"help": "Precision of the meta step: 'fp32', or 'bf16' (the validation pass under bf16 autocast, "
                  "the training-loss passes in fp32 and exact forward-mode mixed products; cosine >= 0.99 to an fp64 "
                  "hypergradient in tests/test_meta_precision.py). 'auto': 'bf16' when the run trains in bf16, else "
                  "'fp32' (fp16 gradients would need loss scaling)."},
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
        metadata={"help": "Keep snapshots as safetensors files in this directory instead of CPU memory (large models)."},
    )
    loss_from: str | None = field(
        default=None,
        metadata={"help": "Load a learned loss (lkd_hf.LearnedLoss) from a folder, a Hub repo id or a folder in a Hub "
                  "repo ('user/student/lkd_loss'); it must fit this run's classes and teacher feature taps."},
    )
    freeze_loss: bool | None = field(
        default=None,
        metadata={"help": "Keep the learned loss fixed: no meta steps (costs about as much as KD). Default: fixed when "
                  "every learned loss of the run starts from a loss learned beforehand (loss='lkd' from the shipped "
                  "loss, lkd_init='pretrained', or from loss_from; its temperature and weight were learned over whole "
                  "runs, and meta steps on top added nothing measurable, docs/benchmarks.md), else learned (a start "
                  "from KD or DIST, or a feature loss network). False learns a loaded loss further."},
    )
    loss_hub_model_id: str | None = field(
        default=None,
        metadata={"help": "When the trainer pushes to the Hub, also push the learned loss (config, weights, model "
                  "card) to this repo of its own; the student's repo gets it under lkd_loss/ in any case."},
    )
    fd_epsilon: float = field(
        default=0.01, metadata={"help": "finite_difference: perturbation size, relative to the weights' gradient norm."}
    )
    lkd_val_fraction: float | None = field(
        default=None,
        metadata={"help": "Hold this fraction of the training set out for the meta (validation) loss when no "
                  "meta_dataset is given to the trainer (default: hold nothing out)."},
    )

    # --- TrainingArguments defaults that timm models need ---------------------------------------------------
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: timm models take pixel_values positionally."}
    )

    def __post_init__(self) -> None:
        if self.label_names is None:
            self.label_names = ["labels"]
        super().__post_init__()
        check_ranges(self, LKD_CONFIG_RANGES, type(self).__name__)
        if self.lkd_val_fraction is not None and not 0.0 < self.lkd_val_fraction < 1.0:
            raise ValueError(f"lkd_val_fraction must be in (0, 1), got {self.lkd_val_fraction}")
        if self.lkd_init not in LKD_INITS:
            raise ValueError(f"lkd_init must be one of {LKD_INITS}, got {self.lkd_init!r}")
        if self.meta_interval < 1:
            raise ValueError(f"meta_interval must be >= 1, got {self.meta_interval}")
        if self.lookahead_steps < 1:
            raise ValueError(f"lookahead_steps must be >= 1, got {self.lookahead_steps}")
        if self.lookahead_steps_std < 0:
            raise ValueError(f"lookahead_steps_std must be >= 0, got {self.lookahead_steps_std}")
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
        if self.snapshot_interval < 1 or self.snapshot_pool_size < 2:
            raise ValueError("snapshot_interval must be >= 1 and snapshot_pool_size >= 2.")
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
        if not 0.0 <= self.meta_warmup_ratio < 1.0:
            raise ValueError(f"meta_warmup_ratio must be in [0, 1), got {self.meta_warmup_ratio}")
        if self.max_nonfinite_steps < 1:
            raise ValueError(f"max_nonfinite_steps must be >= 1, got {self.max_nonfinite_steps}")
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
        temperatures = {
            "temperature": self.temperature,
            "dist_temperature": self.dist_temperature,
            "ls_temperature": self.ls_temperature,
            "ctkd_temperature_range": self.ctkd_temperature_range,
        }
        for name, value in temperatures.items():
            if not value > 0:  # also rejects NaN
                raise ValueError(f"{name} must be > 0, got {value}: a temperature divides the logits.")
        if not self.ctkd_temperature_min >= 0:
            raise ValueError(f"ctkd_temperature_min must be >= 0, got {self.ctkd_temperature_min}")

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
