"""A population: students trained side by side on the same batches and teacher outputs, each distilled
with the learned logit loss at its own temperature and weight (the loss's own times a factor each); the trainer keeps
the one with the best evaluation metric.

The teacher's forward and the data pipeline, most of a small student's step, are shared, so a second student costs
about its own forward and backward. The population answers a question that one run cannot: which temperature and
weight suit this teacher, student and dataset over a *whole* run (a meta step's one-step hypergradient sees a short
stretch of training only and pulls the temperature down; ``docs/experiments.md``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from .objective import DistillationObjective

DEFAULT_TEMPERATURE_FACTORS = (1.0, 2.0, 1 / 3)
"""The temperature factors ``population_temperature_factors=None`` resolves to when a population applies and the loss
is kept fixed (with meta steps: the first two)."""
DEFAULT_WEIGHT_FACTORS = (1.0, 2.0, 1 / 16)
"""The weight factors ``population_weight_factors=None`` resolves to when a population applies by default."""
DEFAULT_MEMBERS = tuple(zip(DEFAULT_TEMPERATURE_FACTORS, DEFAULT_WEIGHT_FACTORS, strict=True))
"""The default population's ``(temperature factor, weight factor)`` pairs."""
DEFAULT_DROP_FRACTIONS = (0.5, 0.75)
"""The fractions of training after which the default population (loss kept fixed) drops its worst student still
training: the worst of three at half, the worse of two at three quarters; the last one is kept."""


class StudentPopulation(nn.Module):
    """Students of one architecture trained side by side (the first is the trainer's own student).

    In training mode the forward returns the logits of every member still training stacked, ``(active members,
    batch, classes)``; in evaluation mode only the ``selected`` member's, ``(batch, classes)``, as a plain student
    would. A member :meth:`drop`-ped stops training; which members still train is the ``active`` buffer, saved and
    loaded with the members' weights.

    Args:
        members: the students; their parameters must not be shared.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"A population needs at least two students, got {len(members)}.")
        self.members = nn.ModuleList(members)
        self.selected = 0
        self.register_buffer("active", torch.ones(len(members), dtype=torch.bool))
        self._active = list(range(len(members)))  # the buffer's indices, kept on the host: no device sync per step
        self.register_load_state_dict_post_hook(lambda module, keys: module._sync_active())

    @property
    def active_members(self) -> list[int]:
        """The indices of the members still training."""
        return list(self._active)

    def drop(self, k: int) -> None:
        """Stop training member ``k`` (its weights stay as they are; it is no longer a candidate to keep).

        Args:
            k: an active member's index; at least one other stays active.
        """
        if k not in self._active or len(self._active) < 2:
            raise ValueError(f"Cannot drop student {k}: the students training are {self._active}.")
        self.active[k] = False
        self._sync_active()

    def _sync_active(self) -> None:
        self._active = [k for k, on in enumerate(self.active.tolist()) if on]

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
        return torch.stack([self.members[k](pixel_values) for k in self._active])


class ScaledLoss(nn.Module):
    """A logit loss network evaluated at its temperature times ``temperature_factor`` and its weight times
    ``weight_factor``; its parameters stay the network's own.

    Args:
        loss: a loss with ``log_temperature`` and ``log_weight`` parameters (e.g. :class:`~lkd_hf.LogitLossNet`).
        temperature_factor: the temperature factor (> 0).
        weight_factor: the weight factor (> 0).
    """

    def __init__(self, loss: nn.Module, temperature_factor: float, weight_factor: float = 1.0) -> None:
        super().__init__()
        if not (temperature_factor > 0 and weight_factor > 0):
            raise ValueError(f"Factors must be > 0, got temperature {temperature_factor}, weight {weight_factor}.")
        self.loss, self.temperature_factor, self.weight_factor = loss, temperature_factor, weight_factor

    @property
    def temperature(self) -> torch.Tensor:
        """The temperature this loss is evaluated at (the wrapped network's, clamped as it clamps its own)."""
        return type(self.loss).temperature.fget(SimpleNamespace(**self._shifts()))

    @property
    def weight(self) -> torch.Tensor:
        """The weight this loss is evaluated at (the wrapped network's, clamped as it clamps its own)."""
        return type(self.loss).weight.fget(SimpleNamespace(**self._shifts()))

    def _shifts(self) -> dict[str, torch.Tensor]:
        return {"log_temperature": self.loss.log_temperature + math.log(self.temperature_factor),
                "log_weight": self.loss.log_weight + math.log(self.weight_factor)}

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The wrapped loss with ``log_temperature`` and ``log_weight`` shifted by the logs of the factors.

        Args:
            student_logits, teacher_logits: ``(batch, classes)``.
            labels: ``(batch,)`` class indices.
        """
        return functional_call(self.loss, self._shifts(), (student_logits, teacher_logits, labels), strict=False)

    def materialize(self) -> nn.Module:
        """A copy of the wrapped loss whose own temperature and weight are this one's (e.g. to save or reuse it)."""
        loss = copy.deepcopy(self.loss)
        with torch.no_grad():
            for name, value in self._shifts().items():
                getattr(loss, name).copy_(value)
        return loss


def population_factors(args: Any, objective: DistillationObjective,
                       has_eval_dataset: bool) -> tuple[tuple[float, float], ...]:
    """The members of a run's population as ``(temperature factor, weight factor)`` pairs (one pair: a single student).

    A population needs a logit loss with learnable temperature and weight parameters (``log_temperature``,
    ``log_weight``, e.g. ``loss="lkd"``), no feature loss, and an evaluation dataset to choose the student on. With
    ``population_temperature_factors`` and ``population_weight_factors`` both ``None``, the members are
    :data:`DEFAULT_TEMPERATURE_FACTORS` and :data:`DEFAULT_WEIGHT_FACTORS` paired where a population applies (with
    a loss learned by meta steps, the first two pairs: the meta steps learn from the first student, which the default
    drops may remove) and a single student elsewhere; one list set alone pairs with factors 1.0; factors set by hand
    where no population applies are an error.

    Args:
        args: an :class:`~lkd_hf.LKDConfig`.
        objective: the run's student objective.
        has_eval_dataset: whether the trainer has an ``eval_dataset``.
    """
    supported = (all(isinstance(getattr(objective.distill_loss, name, None), torch.Tensor)
                     for name in ("log_temperature", "log_weight"))
                 and objective.feature_loss is None and has_eval_dataset)
    members = args.population_members
    if members is None:
        if not supported:
            return ((1.0, 1.0),)
        return DEFAULT_MEMBERS[:2] if objective.meta_parameters() else DEFAULT_MEMBERS
    if len(members) > 1 and not supported:
        raise ValueError(
            "A population (population_temperature_factors, population_weight_factors) needs a learned logit loss with "
            "a temperature and a weight (e.g. loss='lkd'), no feature loss, and an eval_dataset to choose the student "
            "on; leave population_weight_factors unset and set population_temperature_factors=[1.0] (a single student)."
        )
    return tuple(members)


def population_drops(args: Any, factors: Sequence[tuple[float, float]]) -> tuple[float, ...]:
    """The fractions of training after which the population drops its worst student still training (empty: none).

    ``population_drop_fractions`` when set (``[]``: none); else :data:`DEFAULT_DROP_FRACTIONS` for the default
    population of a loss kept fixed (:func:`population_factors` resolves to all of :data:`DEFAULT_MEMBERS` only
    then), and none otherwise.

    Args:
        args: an :class:`~lkd_hf.LKDConfig`.
        factors: the population's members (:func:`population_factors`).
    """
    if args.population_drop_fractions is not None:
        return tuple(args.population_drop_fractions)
    if args.population_members is None and tuple(factors) == DEFAULT_MEMBERS:
        return DEFAULT_DROP_FRACTIONS
    return ()


def member_objectives(objective: DistillationObjective,
                      factors: Sequence[tuple[float, float]]) -> list[DistillationObjective]:
    """One objective per member: ``objective`` itself for the first pair (1.0, 1.0), then the same loss at the scaled
    temperatures and weights (sharing its parameters, so the meta steps of the first member move every member's loss).

    Args:
        objective: the run's objective (a logit loss with ``log_temperature`` and ``log_weight``, no feature loss).
        factors: ``(temperature factor, weight factor)`` pairs, the first ``(1.0, 1.0)``.
    """
    return [objective] + [
        DistillationObjective(ScaledLoss(objective.distill_loss, t, w), None, objective.ce_weight,
                              objective.distill_weight, objective.feature_weight)
        for t, w in factors[1:]
    ]


def member_key(k: int, name: str) -> str:
    """The log key of student ``k``'s value ``name`` (``member0/loss``, ``member1/distill``, ...).

    Args:
        k: the student's index in the population.
        name: ``loss`` (its objective) or a part of it (``ce``, ``distill``).
    """
    return f"member{k}/{name}"


def selection_metric(metrics: dict[str, float], metric: str | None, prefix: str = "eval") -> str:
    """The metric a member is chosen by, without ``prefix`` (e.g. ``accuracy``; ``metric_for_best_model`` semantics).

    Args:
        metrics: the output of ``Trainer.evaluate`` (keys prefixed ``<prefix>_``).
        metric: ``metric_for_best_model`` (with or without the ``eval_`` prefix); default ``accuracy`` when evaluated,
            else ``loss``.
        prefix: the ``metric_key_prefix`` the metrics were evaluated with.
    """
    if metric is None:
        metric = "accuracy" if f"{prefix}_accuracy" in metrics else "loss"
    metric = metric.removeprefix("eval_")
    if f"{prefix}_{metric}" not in metrics:
        raise KeyError(f"The population is chosen by {f'{prefix}_{metric}'!r}, which the evaluation did not return: "
                       f"{sorted(metrics)}.")
    return metric


def selection_score(metrics: dict[str, float], metric: str | None, greater_is_better: bool | None,
                    prefix: str = "eval") -> float:
    """A member's score from its evaluation metrics, the higher the better (``metric_for_best_model`` semantics).

    Args:
        metrics: the output of ``Trainer.evaluate`` (keys prefixed ``<prefix>_``).
        metric: ``metric_for_best_model`` (see :func:`selection_metric`).
        greater_is_better: as in ``TrainingArguments``; default: ``True`` unless the metric ends in ``loss``.
        prefix: the ``metric_key_prefix`` the metrics were evaluated with.
    """
    key = f"{prefix}_{selection_metric(metrics, metric, prefix)}"
    if greater_is_better is None:
        greater_is_better = not key.endswith("loss")
    return metrics[key] if greater_is_better else -metrics[key]


def choice_logs(best: int, evaluations: dict[int, dict[str, float]], factors: Sequence[tuple[float, float]],
                scores: dict[int, float]) -> dict[str, float]:
    """The log of the population's choice: ``population/*`` and the kept student's evaluation under ``eval_*``.

    Args:
        best: the index of the student kept.
        evaluations: each evaluated student's evaluation (keys prefixed ``eval_member<k>_``), by index.
        factors: each student's ``(temperature factor, weight factor)``.
        scores: each evaluated student's :func:`selection_score`, by index.
    """
    kept = f"eval_member{best}_"
    return {"population/selected": best, "population/temperature_factor": factors[best][0],
            "population/weight_factor": factors[best][1],
            **{f"population/score_{k}": score for k, score in scores.items()},
            **{f"eval_{key[len(kept):]}": value for key, value in evaluations[best].items() if key.startswith(kept)}}


def choice_line(best: int, evaluations: dict[int, dict[str, float]], factors: Sequence[tuple[float, float]],
                metric: str | None, knobs: dict[str, float]) -> str:
    """The console line of the population's choice: the student kept, its factors, its score and every student's
    (``dropped`` for a student dropped during the run), and the temperature and weight of the logit loss it trained
    with.

    Args:
        best: the index of the student kept.
        evaluations: each evaluated student's evaluation (keys prefixed ``eval_member<k>_``), by index.
        factors: each student's ``(temperature factor, weight factor)``.
        metric: ``metric_for_best_model`` (see :func:`selection_metric`).
        knobs: the kept student's loss knobs (``lkd/temperature``, ``lkd/weight``).
    """
    metric = selection_metric(evaluations[best], metric, f"eval_member{best}")
    values = [f"{evaluations[k][f'eval_member{k}_{metric}']:.4g}" if k in evaluations else "dropped"
              for k in range(len(factors))]
    temperature_factor, weight_factor = factors[best]
    return (f"Population: keeping student {best} of {len(factors)} (temperature factor {temperature_factor:.4g}, "
            f"weight factor {weight_factor:.4g}), eval_{metric} {values[best]} (each student's: "
            f"{', '.join(values)}); it trained with the logit loss at temperature "
            f"{knobs['lkd/temperature']:.4g}, weight {knobs['lkd/weight']:.4g}.")
