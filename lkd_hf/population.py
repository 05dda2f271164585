"""A temperature population: students trained side by side on the same batches and teacher outputs, each distilled
with the learned logit loss at its own temperature (the loss's temperature times a factor); the trainer keeps the
one with the best evaluation metric.

The teacher's forward and the data pipeline, most of a small student's step, are shared, so a second student costs
about its own forward and backward. The population answers a question that one run cannot: which temperature suits
this teacher, student and dataset over a *whole* run (a meta step's one-step hypergradient sees a short stretch of
training only and pulls the temperature down; ``docs/benchmarks.md``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from .objective import DistillationObjective

DEFAULT_TEMPERATURE_FACTORS = (1.0, 2.0)
"""The factors ``population_temperature_factors=None`` resolves to when a population applies."""


class StudentPopulation(nn.Module):
    """Students of one architecture trained side by side (the first is the trainer's own student).

    In training mode the forward returns every member's logits stacked, ``(members, batch, classes)``; in evaluation
    mode only the ``selected`` member's, ``(batch, classes)``, as a plain student would.

    Args:
        members: the students; their parameters must not be shared.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"A population needs at least two students, got {len(members)}.")
        self.members = nn.ModuleList(members)
        self.selected = 0

    @classmethod
    def of_copies(cls, student: nn.Module, size: int) -> StudentPopulation:
        """A population of ``student`` and ``size - 1`` copies of it (the same initial weights).

        Args:
            student: the first member.
            size: the number of members.
        """
        return cls([student, *(copy.deepcopy(student) for _ in range(size - 1))])

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The members' logits (training) or the selected member's (evaluation).

        Args:
            pixel_values: ``(batch, channels, height, width)``.
        """
        if not self.training:
            return self.members[self.selected](pixel_values)
        return torch.stack([member(pixel_values) for member in self.members])


class ScaledTemperatureLoss(nn.Module):
    """A logit loss network evaluated at its temperature times ``factor``; its parameters stay the network's own.

    Args:
        loss: a loss with a ``log_temperature`` parameter (e.g. :class:`~lkd_hf.LogitLossNet`).
        factor: the temperature factor (> 0).
    """

    def __init__(self, loss: nn.Module, factor: float) -> None:
        super().__init__()
        if not factor > 0:
            raise ValueError(f"A temperature factor must be > 0, got {factor}.")
        self.loss, self.factor = loss, factor

    @property
    def temperature(self) -> torch.Tensor:
        """The temperature this loss is evaluated at (before the wrapped network clamps it to its range)."""
        return self.loss.temperature * self.factor

    @property
    def weight(self) -> torch.Tensor:
        """The global weight of the wrapped loss."""
        return self.loss.weight

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The wrapped loss with ``log_temperature`` shifted by ``log(factor)``.

        Args:
            student_logits, teacher_logits: ``(batch, classes)``.
            labels: ``(batch,)`` class indices.
        """
        shifted = {"log_temperature": self.loss.log_temperature + math.log(self.factor)}
        return functional_call(self.loss, shifted, (student_logits, teacher_logits, labels), strict=False)

    def materialize(self) -> nn.Module:
        """A copy of the wrapped loss whose own temperature is this one's (e.g. to save or reuse it)."""
        loss = copy.deepcopy(self.loss)
        with torch.no_grad():
            loss.log_temperature.add_(math.log(self.factor))
        return loss


def temperature_factors(args: Any, objective: DistillationObjective, has_eval_dataset: bool) -> tuple[float, ...]:
    """The temperature factors of a run's population (one factor: a single student).

    A population needs a logit loss with a learnable temperature parameter (``log_temperature``, e.g. ``loss="lkd"``),
    no feature loss, and an evaluation dataset to choose the student on. ``population_temperature_factors=None`` gives
    :data:`DEFAULT_TEMPERATURE_FACTORS` where a population applies and a single student elsewhere; factors set by hand
    where none applies are an error.

    Args:
        args: an :class:`~lkd_hf.LKDConfig`.
        objective: the run's student objective.
        has_eval_dataset: whether the trainer has an ``eval_dataset``.
    """
    factors = args.population_temperature_factors
    supported = (isinstance(getattr(objective.distill_loss, "log_temperature", None), torch.Tensor)
                 and objective.feature_loss is None and has_eval_dataset)
    if factors is None:
        return DEFAULT_TEMPERATURE_FACTORS if supported else (1.0,)
    factors = tuple(factors)  # floats: LKDConfig checked them
    if len(factors) > 1 and not supported:
        raise ValueError(
            "population_temperature_factors needs a learned logit loss with a temperature (e.g. loss='lkd'), no "
            "feature loss, and an eval_dataset to choose the student on; set it to [1.0] (a single student)."
        )
    return factors


def member_objectives(objective: DistillationObjective, factors: Sequence[float]) -> list[DistillationObjective]:
    """One objective per member: ``objective`` itself for the first factor (1.0), then the same loss at the scaled
    temperatures (sharing its parameters, so the meta steps of the first member move every member's loss).

    Args:
        objective: the run's objective (a logit loss with ``log_temperature``, no feature loss).
        factors: the temperature factors, the first 1.0.
    """
    return [objective] + [
        DistillationObjective(ScaledTemperatureLoss(objective.distill_loss, f), None, objective.ce_weight,
                              objective.distill_weight, objective.feature_weight)
        for f in factors[1:]
    ]


def selection_score(metrics: dict[str, float], metric: str | None, greater_is_better: bool | None,
                    prefix: str = "eval") -> float:
    """A member's score from its evaluation metrics, the higher the better (``metric_for_best_model`` semantics).

    Args:
        metrics: the output of ``Trainer.evaluate`` (keys prefixed ``<prefix>_``).
        metric: ``metric_for_best_model`` (with or without the ``eval_`` prefix); default ``accuracy`` when evaluated,
            else ``loss``.
        greater_is_better: as in ``TrainingArguments``; default: ``True`` unless the metric ends in ``loss``.
        prefix: the ``metric_key_prefix`` the metrics were evaluated with.
    """
    if metric is None:
        metric = "accuracy" if f"{prefix}_accuracy" in metrics else "loss"
    key = f"{prefix}_{metric.removeprefix('eval_')}"
    if key not in metrics:
        raise KeyError(f"The population is chosen by {key!r}, which the evaluation did not return: {sorted(metrics)}.")
    if greater_is_better is None:
        greater_is_better = not key.endswith("loss")
    return metrics[key] if greater_is_better else -metrics[key]
