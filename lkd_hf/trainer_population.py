"""The population side of :class:`~lkd_hf.LKDTrainer` (:mod:`lkd_hf.population`): per-student gradient
clipping while the students train side by side, and the choice of the student to keep once training ends."""

from __future__ import annotations

import torch
from torch import nn
from transformers import Trainer
from transformers.utils import logging

from .population import StudentPopulation, selection_score

logger = logging.get_logger(__name__)


class PopulationMixin(Trainer):
    """Population hooks of a distillation trainer (needs its ``objective``, ``member_objectives`` and
    ``population_factors``)."""

    @property
    def population(self) -> StudentPopulation | None:
        """The students trained side by side (``None`` when the run trains a single student, or once one is kept)."""
        model = self.accelerator.unwrap_model(self.model)
        return model if isinstance(model, StudentPopulation) else None

    def trained_model(self) -> nn.Module:
        """The unwrapped model without the population: the trainer's model, or the population's selected student."""
        model = self.accelerator.unwrap_model(self.model)
        return model.members[model.selected] if isinstance(model, StudentPopulation) else model

    def learning_student(self, model: nn.Module) -> nn.Module:
        """The student the meta steps learn from: the unwrapped ``model``, or a population's first member.

        Args:
            model: the (possibly wrapped) model being trained.
        """
        model = self.accelerator.unwrap_model(model)
        return model.members[0] if isinstance(model, StudentPopulation) else model

    def _clip_grad_norm(self, model: nn.Module) -> torch.Tensor:
        """Clip each member's gradient on its own to ``max_grad_norm``, as a run of that student alone would; returns
        the first member's norm (a single student: the Trainer's clipping)."""
        population = self.population
        if population is None:
            return super()._clip_grad_norm(model)
        self.accelerator.unscale_gradients()
        norms = [torch.nn.utils.clip_grad_norm_(m.parameters(), self.args.max_grad_norm) for m in population.members]
        return norms[0]

    def select_member(self) -> int:
        """Evaluate every member on the (first) ``eval_dataset`` and keep the best by ``metric_for_best_model``
        (default: accuracy): it becomes the trainer's model and its loss the trainer's objective (what
        :meth:`learned_loss` saves). Logs ``population/*``: each member's score, the chosen member and its
        factors, and the kept student's evaluation under the plain ``eval_*`` keys. Called by :meth:`train` once
        training ends.

        Returns:
            The index of the chosen member.
        """
        population = self.population
        if population is None:
            raise ValueError("This run trains a single student.")
        dataset = self.eval_dataset
        dataset = next(iter(dataset.values())) if isinstance(dataset, dict) else dataset
        scores, evaluations = [], []
        for k in range(len(population.members)):
            population.selected = k
            prefix = f"eval_member{k}"
            evaluations.append(self.evaluate(eval_dataset=dataset, metric_key_prefix=prefix))
            scores.append(selection_score(evaluations[k], self.args.metric_for_best_model, self.args.greater_is_better,
                                          prefix))
        best = max(range(len(scores)), key=scores.__getitem__)
        population.selected = best
        if best > 0:  # its loss at its own temperature and weight, a plain network
            chosen = self.member_objectives[best]
            chosen.distill_loss = chosen.distill_loss.materialize()
            self.objective = chosen
        self.model = self.model_wrapped = population.members[best]
        temperature_factor, weight_factor = self.population_factors[best]
        kept = f"eval_member{best}_"
        logger.info(f"Keeping student {best} of the population (temperature factor {temperature_factor:g}, weight "
                    f"factor {weight_factor:g}).")
        self.log({"population/selected": best, "population/temperature_factor": temperature_factor,
                  "population/weight_factor": weight_factor,
                  **{f"population/score_{k}": score for k, score in enumerate(scores)},
                  **{f"eval_{key[len(kept):]}": value for key, value in evaluations[best].items()
                     if key.startswith(kept)}})
        return best
