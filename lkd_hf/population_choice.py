"""When a population chooses among its students: each student still training evaluated on the ``eval_dataset``, the
worst one dropped once a fraction of training has run (``population_drop_fraction``), the best kept at the end.

Dropping the worst of three students halfway trains 2.5 students' worth of steps instead of three and keeps the
choice at the end between the two that lead halfway (``docs/method.md``, the population).
"""

from __future__ import annotations

import copy
from typing import Any

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
    """Drop the population's worst student (by ``metric_for_best_model`` on the ``eval_dataset``) after the step
    that ends ``fraction`` of training; the others train on and the best of them is kept at the end. A run resumed
    after that step finds the student already dropped (the population's ``active`` buffer is in its checkpoint).

    Args:
        trainer: the :class:`~lkd_hf.LKDTrainer` of a population of three or more students.
        fraction: the fraction of the run's steps after which the worst student is dropped, in (0, 1).
        learns_loss: whether the run learns its loss (meta steps learn from the first student: not with a drop).
    """

    def __init__(self, trainer: Any, fraction: float, learns_loss: bool) -> None:
        if trainer.distiller.num_students < 3:
            raise ValueError("population_drop_fraction needs three or more students (population_temperature_factors "
                             f"/ population_weight_factors), got {trainer.distiller.num_students}.")
        if learns_loss:
            raise ValueError("population_drop_fraction needs a loss kept fixed (freeze_loss=True): meta steps learn "
                             "from the first student, which may be dropped.")
        self.trainer, self.fraction, self.drop_step = trainer, fraction, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.drop_step = max(1, round(self.fraction * state.max_steps))

    def on_step_end(self, args, state, control, **kwargs):
        distiller = self.trainer.distiller
        if state.global_step != self.drop_step or len(distiller.active_members) < distiller.num_students:
            return
        flags = copy.copy(control)  # evaluating and logging here must not reset this step's log / evaluate / save
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
