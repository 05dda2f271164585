"""The student objective: ``ce_weight * CE + distill_weight * distill_loss + feature_weight * sum_k feature_loss_k``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .losses import build_loss, parse_loss_spec


LOSS_STATE_NAME = "loss_state.safetensors"


class DistillationObjective:
    """The loss the student minimises, with its parts for logging.

    Args:
        distill_loss: the logit distillation loss, ``distill_loss(student_logits, teacher_logits, labels)``, or
            ``None`` (cross-entropy only).
        feature_loss: the feature distillation loss, ``feature_loss(student_feature, teacher_feature)`` for one tap,
            or ``None``.
        ce_weight: weight of the cross-entropy on the labels.
        distill_weight: weight of the logit distillation term.
        feature_weight: weight of the sum of the feature terms over the taps.
        taps: names of the feature taps, in the order of the features passed in (they name the ``feature/<tap>``
            parts).
    """

    def __init__(
        self,
        distill_loss: nn.Module | None,
        feature_loss: nn.Module | None = None,
        ce_weight: float = 1.0,
        distill_weight: float = 1.0,
        feature_weight: float = 1.0,
        taps: Sequence[object] = (),
    ) -> None:
        self.distill_loss = distill_loss
        self.feature_loss = feature_loss
        self.ce_weight, self.distill_weight, self.feature_weight = ce_weight, distill_weight, feature_weight
        self.taps = list(taps)

    @property
    def loss_modules(self) -> list[nn.Module]:
        """The distillation loss modules (logit first), without the ``None`` ones."""
        return [m for m in (self.distill_loss, self.feature_loss) if m is not None]

    def meta_parameters(self) -> list[torch.Tensor]:
        """The trainable parameters a :class:`~lkd_hf.meta.learner.LossLearner` learns: those of the loss modules that
        are not trained with the student (a learner's :func:`park_meta_parameters` keeps them counted)."""
        return [p for m in self.loss_modules if not _trains_with_student(m) for p in m.parameters()
                if p.requires_grad or getattr(p, _PARKED, False)]

    def student_trained_parameters(self) -> list[torch.Tensor]:
        """The trainable parameters of loss modules trained by the student's optimizer (``trains_with_student``,
        e.g. CTKD's adversarial temperature)."""
        return [p for m in self.loss_modules if _trains_with_student(m) for p in m.parameters() if p.requires_grad]

    def set_progress(self, step: int, total_steps: int) -> None:
        """Tell the loss modules that follow a curriculum (``set_progress``, e.g. CTKD) the training progress.

        Args:
            step: the student's global step.
            total_steps: the run's number of optimizer steps.
        """
        for module in self.loss_modules:
            if hasattr(module, "set_progress"):
                module.set_progress(step, total_steps)

    def average_student_trained_gradients(self) -> None:
        """Average the gradients of :meth:`student_trained_parameters` across processes (the student's own are
        averaged by DistributedDataParallel; these live outside it)."""
        grads = [p.grad for p in self.student_trained_parameters() if p.grad is not None]
        for grad, mean in zip(grads, mean_across_processes(grads)):
            grad.copy_(mean)

    def clear_student_trained_gradients(self) -> None:
        """Drop the gradients of :meth:`student_trained_parameters` (after an optimizer step, or a skipped step)."""
        for p in self.student_trained_parameters():
            p.grad = None

    def save_student_trained(self, directory: str) -> None:
        """Save the state (parameters and buffers) of the loss modules trained with the student to
        ``<directory>/loss_state.safetensors``; nothing when there are none.

        Args:
            directory: a checkpoint folder.
        """
        state = {
            f"{i}.{k}": v.detach().cpu().contiguous()
            for i, m in self._student_trained()
            for k, v in m.state_dict().items()
        }
        if state:
            save_file(state, os.path.join(directory, LOSS_STATE_NAME))

    def load_student_trained(self, directory: str) -> None:
        """Restore what :meth:`save_student_trained` wrote to ``directory`` (a missing file leaves the modules as
        they are).

        Args:
            directory: a checkpoint folder.
        """
        path = os.path.join(directory, LOSS_STATE_NAME)
        if not os.path.isfile(path) or not self._student_trained():
            return
        state = load_file(path)
        for i, module in self._student_trained():
            module.load_state_dict({k[len(f"{i}."):]: v for k, v in state.items() if k.startswith(f"{i}.")})

    def _student_trained(self) -> list[tuple[int, nn.Module]]:
        return [(i, m) for i, m in enumerate(self.loss_modules) if _trains_with_student(m)]

    def knobs(self) -> dict[str, float]:
        """The losses' interpretable global knobs, where they have them: ``lkd/temperature`` and ``lkd/weight`` of
        the logit loss, ``lkd/feature_weight`` of the feature loss."""
        knobs = {f"lkd/{k}": float(v) for k, v in _global_knobs(self.distill_loss).items()}
        knobs.update({f"lkd/feature_{k}": float(v) for k, v in _global_knobs(self.feature_loss).items()})
        return knobs

    def __call__(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor | None,
        labels: torch.Tensor,
        student_features: Sequence[torch.Tensor] | None = None,
        teacher_features: Sequence[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The objective and its parts ``ce``, ``distill``, ``feature`` and ``feature/<tap>`` (those that apply).

        Args:
            student_logits: ``(batch, classes)``.
            teacher_logits: ``(batch, classes)``; unused without a logit distillation loss.
            labels: ``(batch,)`` class indices.
            student_features: the student's connector-mapped features, one per tap (feature loss only).
            teacher_features: the teacher's features, one per tap (feature loss only).
        """
        ce = F.cross_entropy(student_logits.float(), labels)
        parts = {"ce": ce}
        total = self.ce_weight * ce
        if self.distill_loss is not None:
            distill = self.distill_loss(student_logits, teacher_logits, labels)
            parts["distill"] = distill
            total = total + self.distill_weight * distill
        if self.feature_loss is not None:
            per_tap = [self.feature_loss(s, t) for s, t in zip(student_features, teacher_features)]
            parts["feature"] = torch.stack(per_tap).sum()
            parts.update({f"feature/{tap}": value for tap, value in zip(self.taps, per_tap)})
            total = total + self.feature_weight * parts["feature"]
        return total, parts


def build_objective(
    args: Any, loss_network: nn.Module | None = None, feature_loss_network: nn.Module | None = None
) -> DistillationObjective:
    """The objective of a run's config: the registered losses of ``args.loss`` (or the networks passed in) and its
    weights; with ``args.freeze_loss`` the losses' parameters are frozen.

    Args:
        args: an :class:`~lkd_hf.LKDConfig` (``loss``, ``ce_weight``, ``distill_weight``, ``feature_weight``,
            ``freeze_loss`` and the fields the registered losses read).
        loss_network: a ready logit loss used instead of the registered one (e.g. a loaded learned loss).
        feature_loss_network: the same for the feature loss.
    """
    spec = parse_loss_spec(args.loss)
    distill_loss = loss_network
    if distill_loss is None and spec.logit is not None:
        distill_loss = build_loss(spec.logit, args)
    feature_loss = feature_loss_network
    if feature_loss is None and spec.feature is not None:
        feature_loss = build_loss(spec.feature, args)
    objective = DistillationObjective(
        distill_loss, feature_loss, args.ce_weight, args.distill_weight, args.feature_weight
    )
    if args.freeze_loss:
        for module in objective.loss_modules:
            module.requires_grad_(False)
            for p in module.parameters():
                p.__dict__.pop(_PARKED, None)
    return objective


def park_meta_parameters(params: list[torch.Tensor]) -> None:
    """Turn off ``requires_grad`` of meta-learned parameters between meta steps (so that the student's backward
    leaves them alone) while :meth:`DistillationObjective.meta_parameters` still counts them as learned: a network
    handed on to another run stays learnable there.

    Args:
        params: the meta-learned parameters.
    """
    for p in params:
        p.requires_grad_(False)
        setattr(p, _PARKED, True)


def mean_across_processes(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The mean of each tensor over the processes of ``torch.distributed`` (one all-reduce); the tensors themselves
    when there is one process.

    Args:
        tensors: this process's tensors (the same shapes on every process).
    """
    if not tensors or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return tensors
    if torch.distributed.get_world_size() == 1:
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors])
    torch.distributed.all_reduce(flat)
    flat /= torch.distributed.get_world_size()
    return [chunk.view_as(t) for chunk, t in zip(flat.split([t.numel() for t in tensors]), tensors)]


def pop_means(values: dict[str, list[torch.Tensor]]) -> dict[str, float]:
    """The mean of each name's logged values (names without values left out); then empty ``values``.

    Args:
        values: logged scalar tensors by name, e.g. the objective's parts of each micro-batch.
    """
    means = {name: torch.stack([v.float() for v in vals]).mean().item() for name, vals in values.items() if vals}
    values.clear()
    return means


_PARKED = "_lkd_meta_parked"


def _trains_with_student(module: nn.Module) -> bool:
    return bool(getattr(module, "trains_with_student", False))


def _global_knobs(loss: nn.Module | None) -> dict[str, torch.Tensor]:
    """The tensor-valued ``temperature`` and ``weight`` attributes of a loss, detached."""
    return {
        k: getattr(loss, k).detach()
        for k in ("temperature", "weight")
        if isinstance(getattr(loss, k, None), torch.Tensor)
    }
