"""Outer (validation) objectives of the meta step, by name: ``LKDConfig.meta_val_loss``.

* ``ce``: the student's cross-entropy on the validation batch (the paper's outer objective).
* ``calibrated_ce``: the cross-entropy after temperature scaling (Guo et al., 2017), ``min_a CE(a * z, y)`` over
  one positive scale ``a`` fitted on the batch. It measures what the student's logits rank, not their scale, which
  a post-hoc temperature sets for free. Distillation losses that leave the logit scale to the small cross-entropy
  term (DIST at high temperature, whose relation loss ignores the scale) give students with the best top-1 and the
  best calibrated CE but nearly uniform softmaxes, hence the *worst* plain CE: plain CE then steers the loss away
  from them. The scale is fitted without gradient; by the envelope theorem the gradient of the minimum is the
  gradient at the fitted scale. A batch the student already separates perfectly gives (almost) no signal: its
  fitted scale goes to the bound ``1e3`` and the loss to 0.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

MetaValLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_MIN_SCALE, _MAX_SCALE = 1e-3, 1e3


def fit_logit_scale(logits: torch.Tensor, labels: torch.Tensor, iterations: int = 30) -> torch.Tensor:
    """The scale ``a`` in ``[1e-3, 1e3]`` minimising ``CE(a * logits, labels)`` (convex in ``a``; safeguarded Newton
    steps from ``a = 1``), without gradient.

    Args:
        logits: the student's logits, ``(batch, classes)``.
        labels: ``(batch,)`` class indices.
        iterations: maximum number of Newton steps (fewer once the scale has converged).
    """
    with torch.no_grad():
        z = logits.detach().double()
        z_target = z.gather(1, labels.view(-1, 1)).squeeze(1)
        scale = torch.ones((), dtype=torch.float64, device=z.device)
        for _ in range(iterations):
            p = F.softmax(scale * z, dim=-1)
            mean_z = (p * z).sum(-1)
            grad = (mean_z - z_target).mean()
            hess = ((p * z * z).sum(-1) - mean_z**2).mean()
            new = (scale - grad / hess.clamp_min(1e-12)).clamp(scale / 4, scale * 4).clamp(_MIN_SCALE, _MAX_SCALE)
            converged = torch.abs(new - scale) <= 1e-6 * scale
            scale = new
            if converged:
                break
    return scale.to(logits.dtype)


def calibrated_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``CE(a * logits, labels)`` at the temperature-scaling optimum ``a`` (``fit_logit_scale``), ``a`` detached.

    Args:
        logits: the student's logits, ``(batch, classes)``.
        labels: ``(batch,)`` class indices.
    """
    return F.cross_entropy(logits * fit_logit_scale(logits, labels), labels)


META_VAL_LOSSES: dict[str, MetaValLoss] = {"ce": F.cross_entropy, "calibrated_ce": calibrated_cross_entropy}
"""The outer objectives by name (the names of :data:`lkd_hf.constants.META_VAL_LOSS_NAMES`)."""
