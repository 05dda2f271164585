"""When a population chooses among its students: each student still training evaluated on the ``eval_dataset``, the
worst one dropped after each given fraction of training (``population_drop_fractions``), the best kept at the end.

Dropping the worst of three students halfway trains 2.5 students' worth of steps instead of three and keeps the
choice at the end between the two that lead halfway (``docs/method.md``, the population).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.utils import logging

from .population import selection_metric, selection_score

logger = logging.get_logger(__name__)


def evaluate_students(trainer: Any, students: list[int]) -> tuple[dict[int, dict[str, float]], dict[int, float]]:
    """Evaluate students of the population on the trainer's (first) ``eval_dataset``, each under the metric prefix
    ``eval_member<k>``, and score them by ``metric_for_best_model`` (:func:`~lkd_hf.population.selection_score`).

    Args:
        trainer: an :class:`~lkd_hf.LKDTrainer` training a population.
        students: the students' indices.

    Returns:
        Each student's evaluation and score, by index.
    """
    dataset = trainer.eval_dataset
    dataset = next(iter(dataset.values())) if isinstance(dataset, dict) else dataset
    evaluations, scores = {}, {}
    for k in students:
        trainer.distiller.select(k)
        prefix = f"eval_member{k}"
        evaluations[k] = trainer.evaluate(eval_dataset=dataset, metric_key_prefix=prefix)
        scores[k] = selection_score(evaluations[k], trainer.args.metric_for_best_model,
                                    trainer.args.greater_is_better, prefix)
    return evaluations, scores


class DropWorstStudent(TrainerCallback):
    """Drop the population's worst student still training (by ``metric_for_best_model`` on the ``eval_dataset``)
    after each step that ends one of ``fractions`` of training; the others train on and the best of them is kept at
    the end. The evaluations draw nothing from the training's random stream (a student trains as it would without
    them). A run resumed after a drop finds the student already dropped (the population's ``active`` buffer is in its
    checkpoint).

    Args:
        trainer: the :class:`~lkd_hf.LKDTrainer` of a population of more students than ``fractions``.
        fractions: the increasing fractions of the run's steps after which a student is dropped, each in (0, 1).
        learns_loss: whether the run learns its loss (meta steps learn from the first student: not with a drop).
    """

    def __init__(self, trainer: Any, fractions: list[float], learns_loss: bool) -> None:
        if trainer.distiller.num_students <= len(fractions):
            raise ValueError(f"population_drop_fractions drops {len(fractions)} student(s): it needs more students "
                             "(population_temperature_factors / population_weight_factors), got "
                             f"{trainer.distiller.num_students}.")
        if learns_loss:
            raise ValueError("population_drop_fractions needs a loss kept fixed (freeze_loss=True): meta steps learn "
                             "from the first student, which may be dropped.")
        if trainer.args.ddp_find_unused_parameters is False:  # under DDP a dropped student's weights get no gradient
            raise ValueError("Dropping students (population_drop_fractions) leaves their weights without gradients: "
                             "DistributedDataParallel needs ddp_find_unused_parameters=True (or unset); or set "
                             "population_drop_fractions=[].")
        self.trainer, self.fractions, self.drop_steps = trainer, list(fractions), []

    def on_train_begin(self, args, state, control, **kwargs):
        self.drop_steps = [max(1, round(fraction * state.max_steps)) for fraction in self.fractions]

    def on_step_end(self, args, state, control, **kwargs):
        distiller = self.trainer.distiller
        due = [i for i, step in enumerate(self.drop_steps) if step == state.global_step]
        # the i-th drop leaves num_students - i - 1 students; a resumed run finds its drops done
        due = [i for i in due if len(distiller.active_members) == distiller.num_students - i]
        if not due:
            return
        flags = copy.copy(control)  # evaluating and logging here must not reset this step's log / evaluate / save
        device = args.device
        with torch.random.fork_rng(devices=[device] if device.type != "cpu" else [], device_type=device.type):
            evaluations, scores = evaluate_students(self.trainer, distiller.active_members)
        worst = min(scores, key=lambda k: (scores[k], -k))  # on a tie, the later student goes
        distiller.drop(worst)
        if self.trainer.is_world_process_zero():
            metric = selection_metric(evaluations[worst], args.metric_for_best_model, f"eval_member{worst}")
            values = {k: evaluation[f"eval_member{k}_{metric}"] for k, evaluation in evaluations.items()}
            logger.warning(f"Population: dropping student {worst} of {distiller.num_students} after step "
                           f"{state.global_step} of {state.max_steps}, eval_{metric} {values[worst]:.4g} (each "
                           f"student's: {', '.join(f'{values[k]:.4g}' for k in sorted(values))}).")
        self.trainer.log({"population/dropped": worst, **{f"population/drop_score_{k}": score
                                                           for k, score in scores.items()}})
        vars(control).update(vars(flags))
        return control
