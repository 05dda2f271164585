"""The settings of the outer (meta) loop alone: :class:`MetaConfig`, what a :class:`~lkd_hf.LossLearner` reads."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class MetaConfig:
    """The outer loop's settings; :meth:`from_config` takes them from an :class:`~lkd_hf.LKDConfig`, whose fields of
    the same names document them.

    Args:
        hypergradient: the hypergradient estimator's registered name.
        meta_interval: student steps between meta steps.
        meta_optimizer, meta_learning_rate, meta_weight_decay, meta_max_grad_norm: the loss networks' optimizer.
        meta_warmup_steps, meta_warmup_ratio: the meta steps' warm-up.
        meta_batch_size, meta_val_loss, meta_val_source, lkd_val_fraction: the validation batches and loss.
        lookahead_steps, lookahead_steps_std, max_lookahead_steps, lookahead_lr: the virtual steps' horizon and
            learning rate (``None``: the student's).
        fd_epsilon: the finite-difference step.
        snapshot_pool_size, snapshot_interval, snapshot_strategy, snapshot_distance, snapshot_storage_dir: the pool of
            student snapshots the virtual steps start from.
        seed: seeds the meta batches, the pool's sampling and the horizon.
        bf16_validation: whether the validation pass runs in bf16 (``meta_precision`` resolved).
        mixed_precision: whether the student trains in bf16 or fp16.
        gradient_accumulation_steps: the student's micro-batches per optimizer step.
        max_grad_norm: the student's gradient clipping (the virtual steps clip as the real ones).
        dataloader_num_workers: workers of the meta batches' loader.
    """

    hypergradient: str
    meta_interval: int
    meta_optimizer: str
    meta_learning_rate: float
    meta_weight_decay: float
    meta_max_grad_norm: float
    meta_warmup_steps: int
    meta_warmup_ratio: float
    meta_batch_size: int
    meta_val_loss: str
    meta_val_source: str | None
    lkd_val_fraction: float | None
    lookahead_steps: int
    lookahead_steps_std: float
    max_lookahead_steps: int
    lookahead_lr: float | None
    fd_epsilon: float
    snapshot_pool_size: int
    snapshot_interval: int
    snapshot_strategy: str
    snapshot_distance: int
    snapshot_storage_dir: str | None
    seed: int
    bf16_validation: bool
    mixed_precision: bool
    gradient_accumulation_steps: int
    max_grad_norm: float
    dataloader_num_workers: int

    @classmethod
    def from_config(cls, args: Any) -> MetaConfig:
        """The outer loop's settings of a run's :class:`~lkd_hf.LKDConfig`.

        Args:
            args: the run's config.
        """
        derived = {
            "bf16_validation": args.meta_precision == "bf16" or (args.meta_precision == "auto" and args.bf16),
            "mixed_precision": bool(args.fp16 or args.bf16),
        }
        return cls(**{f.name: derived[f.name] if f.name in derived else getattr(args, f.name) for f in fields(cls)})
