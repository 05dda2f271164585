"""``LossLearner``: the outer (meta) loop of LKD, which learns the loss networks' parameters by bi-level optimisation.

Every ``meta_interval`` student steps a meta step updates the loss parameters along the hypergradient of the student's
validation loss (``meta_val_loss``; temperature-scaled by default, see :mod:`lkd_hf.meta.outer_objectives`) after ``K``
virtual student steps that clip their gradient like the real ones (see :mod:`lkd_hf.meta.hypergradients`), started
from a student snapshot (:mod:`lkd_hf.meta.snapshots`) over the last ``K`` training batches.

The learner owns the loss parameters' optimizer, the snapshot pool, the recent training batches, the horizon RNG,
the validation-batch stream, timing and meta metrics, and saves / loads all of it for an exact resume. It knows
nothing of the ``Trainer``: :class:`~lkd_hf.LKDTrainer` feeds it batches (:meth:`observe`) and calls :meth:`step`
when :meth:`is_due`.
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import random
import time
import warnings
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.func import functional_call
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..constants import LKD_STATE_DIRNAME
from ..objective import DistillationObjective, mean_across_processes, park_meta_parameters, pop_means
from ..safe_io import atomic_directory, verify_manifest, write_manifest
from .batches import MetaBatchStream, default_val_source
from .hypergradients import (
    Hypergradient,
    MetaProblem,
    available_hypergradients,
    get_hypergradient,
    unrolled_unsupported,
)
from .outer_objectives import META_VAL_LOSSES
from .settings import MetaConfig
from .snapshots import Snapshot, SnapshotPool

if TYPE_CHECKING:
    from ..config import LKDConfig

STATE_NAME = "state.pt"
SNAPSHOTS_SUBDIR = "snapshots"
RECENT_BATCHES_NAME = "recent_batches.pt"
STATE_FORMAT_VERSION = 2  # 2: with a manifest of checksums
_LOSS_MODULE_KINDS = (("distill_loss", "logit"), ("feature_loss", "feature"))


@contextlib.contextmanager
def full_precision(module: nn.Module) -> Iterator[None]:
    """Bypass the autocast wrapper that Accelerate puts on a prepared model's ``forward`` (``bf16=True`` /
    ``fp16=True``), so that the meta step's own precision applies: the estimators run every training-loss pass with
    autocast disabled and the validation pass in ``meta_precision`` (see :mod:`lkd_hf.meta.hypergradients`).

    The student step keeps the Trainer's autocast. The training-loss passes of a meta step stay in fp32: their
    hypergradient terms are differences or dot products of nearly cancelling gradients, which bf16/fp16 forwards
    distort (on a tiny ResNet a bf16 one-step hypergradient came out 6x too small).

    Args:
        module: the (possibly Accelerate-prepared) student.
    """
    wrapped, original = module.__dict__.get("forward"), module.__dict__.get("_original_forward")
    swap = wrapped is not None and original is not None
    if swap:
        module.forward = original
    try:
        yield
    finally:
        if swap:
            module.forward = wrapped


class LossLearner:
    """Learns the trainable parameters of a student objective's loss networks by bi-level optimisation.

    ``updates`` counts the meta steps that updated them (skipped ones not; kept in its saved state; ``None`` after
    loading a state saved without the count).

    Args:
        objective: the student objective; the trainable parameters of its loss networks are learned.
        config: the outer loop's settings, a :class:`~lkd_hf.meta.settings.MetaConfig` (an
            :class:`~lkd_hf.LKDConfig` is turned into one, :meth:`MetaConfig.from_config`).
        meta_dataset: the validation data of the meta steps (unused with ``val_source="train_batch"``). Without it
            a ``"heldout"`` learner takes no step.
        val_source: ``"heldout"`` (batches of ``meta_dataset``) or ``"train_batch"`` (the current training batch
            validates); default: :func:`~lkd_hf.meta.batches.default_val_source`.
        collate_fn: turns a list of ``meta_dataset`` examples into a batch.
        prepare_batch: moves a collated validation batch to the device (e.g. ``Trainer._prepare_inputs``).
        device: the device of the student.
        rank: this process's index (validation shard, file names of per-process state).
        world_size: the number of processes (hypergradients are averaged over them).
    """

    def __init__(
        self,
        objective: DistillationObjective,
        config: MetaConfig | LKDConfig,
        meta_dataset: Dataset | None = None,
        val_source: str | None = None,
        collate_fn: Callable[[list[Any]], dict[str, Any]] | None = None,
        prepare_batch: Callable[[dict[str, Any]], dict[str, Any]] = lambda batch: batch,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        args = config if isinstance(config, MetaConfig) else MetaConfig.from_config(config)
        if args.hypergradient not in available_hypergradients():
            raise ValueError(
                f"Unknown hypergradient {args.hypergradient!r}. Known: {', '.join(available_hypergradients())}."
            )
        self.objective, self.config = objective, args
        self.val_source = val_source or default_val_source(args, meta_dataset)
        self.params = objective.meta_parameters()
        if not self.params:
            raise ValueError("The objective has no trainable loss parameters to learn.")
        self.device = torch.device(device)
        self.rank, self.world_size = rank, world_size
        self.prepare_batch = prepare_batch
        self.meta_batches = (
            None
            if meta_dataset is None or self.val_source == "train_batch"
            else MetaBatchStream(
                meta_dataset,
                args.meta_batch_size,
                collate_fn,
                seed=args.seed,
                rank=rank,
                world_size=world_size,
                num_workers=args.dataloader_num_workers,
            )
        )
        self._broadcast_params()
        self.optimizer = self._create_optimizer()
        self.snapshot_pool = SnapshotPool(
            max_size=args.snapshot_pool_size,
            interval=args.snapshot_interval,
            strategy=args.snapshot_strategy,
            distance=args.snapshot_distance,
            seed=args.seed,
            # one directory per rank: ranks must not write (and thin away) the same snapshot files
            storage_dir=(
                os.path.join(args.snapshot_storage_dir, f"rank-{rank}")
                if args.snapshot_storage_dir is not None and world_size > 1
                else args.snapshot_storage_dir
            ),
        )
        self.recent_batches: collections.deque = collections.deque(maxlen=args.max_lookahead_steps)
        self.horizon_rng = random.Random(args.seed)
        self.bf16 = args.bf16_validation
        # The real step's gradient is the first virtual step's when the look-ahead starts from the live weights on
        # the current batch (K = 1) and that gradient is this process's, unscaled and in full precision.
        self.reuses_step_gradient = (
            args.snapshot_strategy == "current" and args.lookahead_steps == 1 and args.lookahead_steps_std <= 0
            and args.gradient_accumulation_steps == 1 and world_size == 1 and not args.mixed_precision
        )
        self.last_step = -1
        self.updates: int | None = 0
        self.warmup_steps = args.meta_warmup_steps
        self.seconds = 0.0
        self.metrics: dict[str, list[torch.Tensor]] = collections.defaultdict(list)
        park_meta_parameters(self.params)  # only meta steps may produce gradients for the loss networks

    @property
    def meta_dataset(self) -> Dataset | None:
        """The validation data of the meta steps (``None``: the training batch validates)."""
        return None if self.meta_batches is None else self.meta_batches.dataset

    def _create_optimizer(self) -> torch.optim.Optimizer:
        args = self.config
        kwargs = {"lr": args.meta_learning_rate, "weight_decay": args.meta_weight_decay}
        if args.meta_optimizer == "sgd":
            return torch.optim.SGD(self.params, momentum=0.9, **kwargs)
        return torch.optim.Adam(self.params, **kwargs)

    def _broadcast_params(self) -> None:
        if dist.is_available() and dist.is_initialized():
            for p in self.params:
                dist.broadcast(p.data, src=0)

    # ----------------------------------------------------------------------------------------------------------
    # the schedule
    def observe(self, step: int, batch: dict[str, Any], student: nn.Module) -> None:
        """Record a training batch (with its teacher outputs) for the virtual steps and, when due, a snapshot.

        Args:
            step: the student's global step.
            batch: the prepared training batch of this step, with ``teacher_logits`` (and ``teacher_features``).
            student: the unwrapped student module being trained.
        """
        self.recent_batches.append(batch)
        if self.snapshot_pool.is_due(step):  # (the dict is built only on recording steps)
            self.snapshot_pool.maybe_record(step, {n: p for n, p in student.named_parameters() if p.requires_grad})

    def set_total_steps(self, total_steps: int) -> None:
        """Resolve the warm-up for a run of ``total_steps`` student steps: ``meta_warmup_steps`` when set, else
        ``ceil(meta_warmup_ratio * total_steps)`` (the Trainer's rule for ``warmup_steps`` / ``warmup_ratio``).

        Args:
            total_steps: the run's number of optimizer steps.
        """
        args = self.config
        warmup = args.meta_warmup_steps
        self.warmup_steps = warmup if warmup > 0 else math.ceil(args.meta_warmup_ratio * total_steps)

    def is_due(self, step: int) -> bool:
        """Whether a meta step is due at student step ``step`` (warm-up over, on the interval, not yet done).

        Args:
            step: the student's global step.
        """
        args = self.config
        return (
            step >= self.warmup_steps
            and step % args.meta_interval == 0
            and step != self.last_step
            and (self.meta_batches is not None or self.val_source == "train_batch")
        )

    def sample_horizon(self) -> int:
        """The meta horizon K: fixed, or drawn from a Gaussian (``lookahead_steps_std > 0``)."""
        std = self.config.lookahead_steps_std
        k = self.config.lookahead_steps if std <= 0 else round(self.horizon_rng.gauss(self.config.lookahead_steps, std))
        return int(min(max(k, 1), self.config.max_lookahead_steps))

    # ----------------------------------------------------------------------------------------------------------
    # the meta step
    def step(
        self,
        student: nn.Module,
        step: int,
        lr: float,
        snapshot: Snapshot | None = None,
        horizon: int | None = None,
        first_step_grads: list[torch.Tensor] | None = None,
    ) -> None:
        """One meta step: update the loss parameters along the hypergradient of the validation loss.

        Args:
            student: the unwrapped student (its live weights are not changed).
            step: the student's global step (picks the snapshot, logged as the start's lag).
            lr: the student's current learning rate (the virtual steps' step size unless ``lookahead_lr`` is set).
            snapshot: the student weights the virtual steps start from; default: one the snapshot pool samples
                (``None``: the live weights).
            horizon: the number of virtual steps K; default: :meth:`sample_horizon`.
            first_step_grads: the training gradient of the first virtual step, when the caller has it (see
                :attr:`MetaProblem.first_step_grads` and :attr:`reuses_step_gradient`).
        """
        start = time.perf_counter()
        self.last_step = step
        if snapshot is None:
            snapshot = self.snapshot_pool.sample(step)
        result = self.compute_hypergradient(student, lr, snapshot, horizon, first_step_grads)
        if not (torch.isfinite(result.val_loss) and all(torch.isfinite(g).all() for g in result.grads)):
            warnings.warn(
                f"Non-finite learned loss or hypergradient at step {step}: meta update skipped.",
                RuntimeWarning,
                stacklevel=2,
            )
            self.metrics["meta/skipped"].append(torch.ones((), device=self.device))
            self.seconds += time.perf_counter() - start
            return
        for p, g in zip(self.params, result.grads):
            p.grad = g.to(p.dtype)
        max_norm = self.config.meta_max_grad_norm if self.config.meta_max_grad_norm > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.updates is not None:
            self.updates += 1
        self.metrics["meta/val_loss_after"].append(result.val_loss)
        self.metrics["meta/hypergrad_norm"].append(grad_norm.detach())
        self.metrics["meta/skipped"].append(torch.zeros((), device=self.device))
        self.metrics["meta/start_step_lag"].append(
            torch.tensor(float(step - snapshot.step if snapshot is not None else 0))
        )
        self.seconds += time.perf_counter() - start

    def compute_hypergradient(
        self,
        student: nn.Module,
        lr: float,
        snapshot: Snapshot | None = None,
        horizon: int | None = None,
        first_step_grads: list[torch.Tensor] | None = None,
    ) -> Hypergradient:
        """The hypergradient of the validation loss w.r.t. the loss parameters (averaged across processes), with the
        virtual steps from ``snapshot`` (``None``: the live weights) over the last ``K`` recorded training batches and
        the next validation batch. The weights are not changed; the RNGs and the validation stream advance, and the
        first call of a logging window records ``meta/val_loss_before``.

        Args:
            student: the unwrapped student.
            lr: the student's current learning rate (see :meth:`step`).
            snapshot: the start of the virtual steps.
            horizon: the number of virtual steps K; default: :meth:`sample_horizon`.
            first_step_grads: ``grad_w L_train`` at the start weights on the first virtual step's batch, one per
                trainable student parameter in ``named_parameters`` order (``None``: computed here).
        """
        params = {n: p for n, p in student.named_parameters() if p.requires_grad}
        if snapshot is not None:  # weights missing from the snapshot (e.g. new connectors) stay live
            stored = snapshot.params
            params = {n: stored[n].to(p.device, p.dtype) if n in stored else p for n, p in params.items()}
        frozen = {n: p for n, p in student.named_parameters() if not p.requires_grad}
        buffers = {n: b.clone() for n, b in student.named_buffers()}  # virtual steps must not touch BN statistics

        def forward(weights: dict[str, torch.Tensor], batch: dict[str, Any]) -> Any:
            """Logits, or ``(logits, connected features)`` on training batches of a feature loss."""
            kwargs = {"return_features": True} if "teacher_features" in batch else {}
            with full_precision(student):  # the estimator sets the precision (see full_precision)
                return functional_call(student, {**frozen, **buffers, **weights}, (batch["pixel_values"],), kwargs)

        def train_loss(output: Any, batch: dict[str, Any]) -> torch.Tensor:
            logits, features = output if isinstance(output, tuple) else (output, None)
            return self.objective(
                logits, batch["teacher_logits"], batch["labels"], features, batch.get("teacher_features")
            )[0]

        def val_loss(output: Any, batch: dict[str, Any]) -> torch.Tensor:
            logits = output[0] if isinstance(output, tuple) else output
            return META_VAL_LOSSES[self.config.meta_val_loss](logits.float(), batch["labels"])

        student_max_norm = self.config.max_grad_norm
        problem = MetaProblem(
            forward=forward,
            train_loss=train_loss,
            val_loss=val_loss,
            loss_params=self.params,
            train_batches=list(self.recent_batches)[-(horizon or self.sample_horizon()):],
            val_batch=(self.recent_batches[-1] if self.meta_batches is None
                       else self.prepare_batch(next(self.meta_batches))),
            lr=self.config.lookahead_lr if self.config.lookahead_lr is not None else lr,
            fd_epsilon=self.config.fd_epsilon,
            # the virtual steps clip their gradient like the real ones: unclipped, a loss with a large gradient (e.g.
            # DIST at T=8, norm ~200 where the real step is clipped to 1) looks ahead with a far larger step than the
            # student takes, and the hypergradient then turns the loss down whatever it does.
            max_grad_norm=student_max_norm if student_max_norm and student_max_norm > 0 else None,
            first_step_grads=first_step_grads,
            mixed_product="jvp" if self.bf16 else "finite_difference",
            autocast_dtype=torch.bfloat16 if self.bf16 else None,
        )
        if "meta/val_loss_before" not in self.metrics:  # once per logging window: it costs a validation forward
            with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
                self.metrics["meta/val_loss_before"].append(
                    problem.val_loss(forward(params, problem.val_batch), problem.val_batch)
                )
        estimator = get_hypergradient(self.config.hypergradient)
        for p in self.params:
            p.requires_grad_(True)
        try:
            result = estimator(problem, params)
        except (RuntimeError, NotImplementedError) as err:
            if self.config.hypergradient == "unrolled" and ("derivative for" in str(err) or "forward AD" in str(err)):
                raise RuntimeError(unrolled_unsupported(student, err)) from err
            raise
        finally:
            park_meta_parameters(self.params)
        return Hypergradient(grads=mean_across_processes(result.grads), val_loss=result.val_loss)

    # ----------------------------------------------------------------------------------------------------------
    # learning the loss alone
    def learn(
        self,
        student: nn.Module,
        num_steps: int,
        batches: Iterable[dict[str, Any]],
        lr: float,
        log: Callable[[int, dict[str, float]], None],
        log_every: int,
        progress: bool = True,
    ) -> dict[str, float]:
        """Train only the loss networks, from the frozen student snapshots in the pool; the student is not trained.

        Each of the ``num_steps`` meta steps draws a recorded snapshot uniformly, takes ``K`` fresh training batches
        for the virtual steps and a validation batch, and updates the loss networks.

        Args:
            student: the unwrapped student (its architecture; the weights come from the snapshots).
            num_steps: meta steps.
            batches: endless prepared training batches with their teacher outputs.
            lr: step size of the virtual steps unless ``lookahead_lr`` is set.
            log: called as ``log(meta_steps_done, logs)`` every ``log_every`` meta steps and after the last.
            log_every: meta steps between logs.
            progress: show a progress bar.

        Returns:
            The last logged statistics (meta metrics averaged over the logging window, and :meth:`knobs`).
        """
        if not len(self.snapshot_pool):
            raise ValueError("The snapshot pool is empty: seed it with LKDConfig(snapshot_checkpoints=[...]).")
        batches = iter(batches)
        logs: dict[str, float] = {}
        bar = tqdm(range(num_steps), desc="learning the loss", disable=not progress)
        for step in bar:
            snapshot = self.snapshot_pool.sample_recorded()
            horizon = self.sample_horizon()
            for _ in range(horizon):
                self.recent_batches.append(next(batches))
            self.step(student, snapshot.step, lr, snapshot, horizon)  # no student step: the start's lag is 0
            if (step + 1) % log_every == 0 or step + 1 == num_steps:
                logs = {**self.pop_metrics(), **self.knobs()}
                log(step + 1, dict(logs))
                bar.set_postfix({k: round(v, 4) for k, v in logs.items() if k.startswith(("meta/val", "lkd/"))})
        return logs

    # ----------------------------------------------------------------------------------------------------------
    # logging
    def knobs(self) -> dict[str, float]:
        """The learned losses' global knobs (:meth:`DistillationObjective.knobs`)."""
        return self.objective.knobs()

    def pop_metrics(self) -> dict[str, float]:
        """The meta statistics gathered since the last call, averaged; then reset."""
        return pop_means(self.metrics)

    def pool_metrics(self) -> dict[str, float]:
        """The snapshot pool's memory (``meta/pool_mb``) and disk use (``meta/pool_disk_mb``, disk-backed pools)."""
        sizes = {"meta/pool_mb": self.snapshot_pool.nbytes / 2**20}
        if self.snapshot_pool.storage_dir is not None:
            sizes["meta/pool_disk_mb"] = self.snapshot_pool.disk_bytes / 2**20
        return sizes

    # ----------------------------------------------------------------------------------------------------------
    # checkpoint state
    def state_dict(self) -> dict[str, Any]:
        """What an exact continuation needs besides the snapshot pool and the recent batches (on the CPU)."""
        return {
            "format_version": STATE_FORMAT_VERSION,
            **{key: None if m is None else _cpu_copy(m.state_dict()) for key, m in self._loss_modules()},
            "meta_optimizer": _cpu_copy(self.optimizer.state_dict()),
            "horizon_rng": self.horizon_rng.getstate(),
            "meta_batches_drawn": 0 if self.meta_batches is None else self.meta_batches.position,
            "last_meta_step": self.last_step,
            "meta_updates": self.updates,
            "metrics": {name: _cpu_copy(values) for name, values in self.metrics.items()},
            "meta_seconds": self.seconds,
        }

    def save(self, directory: str, main_process: bool = True, extra: dict[str, Any] | None = None) -> None:
        """Save the learner into ``directory``, written whole or not at all (a temporary folder renamed into place)
        with a ``manifest.json`` of checksums that :meth:`load` verifies:

        * ``state.pt``: :meth:`state_dict` and ``extra``;
        * ``snapshots/``: the snapshot pool (weights copied, also for a disk-backed pool, whose files may be thinned
          away later);
        * ``recent_batches.pt``: the last ``K - 1`` training batches, which the next meta step's ``K``-step horizon
          reuses. With several processes each writes its own, ``<directory>_recent_batches_<rank>.pt`` beside the
          folder (each file replaced in one step).

        Args:
            directory: the folder to write.
            main_process: whether this process writes the folder (with several processes only the main one does).
            extra: more state for ``torch.save``, stored in ``state.pt`` and returned by :meth:`load`.
        """
        keep = self.recent_batches.maxlen - 1  # the current batch is appended before a meta step uses them
        recent = _cpu_copy(list(self.recent_batches)[len(self.recent_batches) - keep:] if keep > 0 else [])
        if main_process:
            with atomic_directory(directory) as staging:
                torch.save({**self.state_dict(), "extra": extra or {}}, os.path.join(staging, STATE_NAME))
                self.snapshot_pool.save_state(os.path.join(staging, SNAPSHOTS_SUBDIR))
                if self.world_size <= 1:
                    torch.save(recent, os.path.join(staging, RECENT_BATCHES_NAME))
                write_manifest(staging)
        if self.world_size > 1:
            path = self._rank_batches_path(directory)
            torch.save(recent, f"{path}.tmp-{os.getpid()}")
            os.replace(f"{path}.tmp-{os.getpid()}", path)  # the file is replaced in one step

    def _rank_batches_path(self, directory: str) -> str:
        return f"{os.path.normpath(directory)}_recent_batches_{self.rank}.pt"

    def load(self, directory: str, loss: str = "") -> dict[str, Any]:
        """Restore what :meth:`save` wrote, after checking it against its manifest; returns its ``extra``. A damaged
        or incomplete folder raises ``ValueError`` naming the file.

        Args:
            directory: the saved folder.
            loss: the run's loss spec, named in the error when the saved loss networks do not fit.
        """
        verify_manifest(directory, "LKD state")
        state_path = os.path.join(directory, STATE_NAME)
        state = _read(state_path, lambda path: torch.load(path, map_location="cpu", weights_only=True))
        if not isinstance(state, dict) or "format_version" not in state:
            raise ValueError(f"{state_path} is not an LKD state: resume from a checkpoint of an LKD run.")
        if state["format_version"] > STATE_FORMAT_VERSION:
            raise ValueError(
                f"The LKD state in {directory!r} has format version {state['format_version']}; this lkd_hf reads "
                f"up to {STATE_FORMAT_VERSION}. Upgrade lkd_hf to resume from it."
            )
        for (key, module), (_, kind) in zip(self._loss_modules(), _LOSS_MODULE_KINDS):
            saved = state[key]
            if (saved is None) != (module is None):
                raise ValueError(
                    f"The LKD state in {directory!r} was saved by a run {'without' if saved is None else 'with'} a "
                    f"{kind} distillation loss, this run has {'one' if saved is None else 'none'}: resume with the "
                    f"same `loss` (now {loss!r})."
                )
            if module is not None:
                try:
                    module.load_state_dict(saved)
                except RuntimeError as error:
                    raise ValueError(
                        f"The {key} saved in {directory!r} does not fit this run's ({type(module).__name__}): resume "
                        f"with the loss settings of the checkpoint's run. {error}"
                    ) from error
        self.optimizer.load_state_dict(state["meta_optimizer"])
        version, internal, gauss_next = state["horizon_rng"]
        self.horizon_rng.setstate((version, tuple(internal), gauss_next))
        if self.meta_batches is not None:
            self.meta_batches.seek(int(state["meta_batches_drawn"]))
        self.last_step = int(state["last_meta_step"])
        self.updates = state.get("meta_updates")  # states saved before the count lack it: unknown
        self.metrics = collections.defaultdict(list)
        for name, values in state["metrics"].items():
            self.metrics[name] = [v.to(self.device) for v in values]
        self.seconds = float(state["meta_seconds"])
        _read(os.path.join(directory, SNAPSHOTS_SUBDIR), self.snapshot_pool.load_state)
        self.recent_batches.clear()
        recent_file = (
            os.path.join(directory, RECENT_BATCHES_NAME) if self.world_size <= 1 else self._rank_batches_path(directory)
        )
        if os.path.isfile(recent_file):
            self.recent_batches.extend(
                _read(recent_file, lambda path: torch.load(path, map_location=self.device, weights_only=True))
            )
        elif self.recent_batches.maxlen > 1:
            warnings.warn(
                f"No {recent_file!r} (resumed with another number of processes?): the first meta step after resuming "
                "sees fewer recent training batches than an uninterrupted run.",
                UserWarning,
                stacklevel=2,
            )
        return state.get("extra", {})

    def save_checkpoint(self, checkpoint_dir: str, main_process: bool = True,
                        extra: dict[str, Any] | None = None) -> None:
        """:meth:`save` into ``<checkpoint_dir>/lkd_state``.

        Args:
            checkpoint_dir: a Trainer checkpoint folder.
            main_process: whether this process writes the shared files.
            extra: more state to keep (see :meth:`save`).
        """
        self.save(os.path.join(checkpoint_dir, LKD_STATE_DIRNAME), main_process, extra)

    def load_checkpoint(self, checkpoint_dir: str, loss: str = "") -> dict[str, Any] | None:
        """:meth:`load` from ``<checkpoint_dir>/lkd_state``; ``None`` with a warning when the checkpoint holds no
        learner state (from a run without a learned loss, or saved with ``save_only_model``).

        Args:
            checkpoint_dir: a Trainer checkpoint folder.
            loss: the run's loss spec (named in errors).
        """
        directory = os.path.join(checkpoint_dir, LKD_STATE_DIRNAME)
        if not os.path.isfile(os.path.join(directory, STATE_NAME)):
            warnings.warn(
                f"Checkpoint {checkpoint_dir!r} holds no LKD state ({LKD_STATE_DIRNAME}/{STATE_NAME}): it comes from "
                "a run without a learned loss, or was saved with save_only_model. The student, its optimizer and "
                "scheduler resume, but the loss network(s) start from their initial weights, with a fresh meta "
                "optimizer, an empty snapshot pool and no recent batches: not an exact continuation.",
                UserWarning,
                stacklevel=2,
            )
            return None
        return self.load(directory, loss)

    def _loss_modules(self) -> list[tuple[str, nn.Module | None]]:
        return [("distill_loss", self.objective.distill_loss), ("feature_loss", self.objective.feature_loss)]


def _read(path: str, reader: Callable[[str], Any]) -> Any:
    """``reader(path)``, with any error turned into a ``ValueError`` that names the file and says what to do."""
    try:
        return reader(path)
    except Exception as error:  # torch.load, safetensors and json raise many types on damaged files
        raise ValueError(
            f"Cannot read {path} ({type(error).__name__}: {error}): the checkpoint is damaged. Resume from an "
            "earlier checkpoint (or delete this one)."
        ) from error


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
