"""Curriculum Temperature for Knowledge Distillation (Li et al., AAAI 2023), global-temperature variant.

KD whose temperature is one learnable scalar trained *adversarially*: the student minimises the KD loss, and the
temperature, reached through a gradient-reversal layer, receives ``-lambda`` times its gradient, so the same
optimizer step moves it to *increase* the loss. ``lambda`` follows an easy-to-hard cosine curriculum from
``lambda_min`` to ``lambda_max`` over the first ``curriculum_fraction`` of training.

The temperature is ``temperature_min + temperature_range * sigmoid(global_t)`` with the raw parameter ``global_t``
starting at 1, as in the reference implementation (``t_start`` 1, ``t_end`` 20, ``Global_T`` initialised to ones),
so the temperature starts at about 15.6 and stays in ``(1, 21)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .logit import kd_loss


class _GradientReversal(torch.autograd.Function):
    """Identity in the forward pass; multiplies the incoming gradient by ``-lambda_`` in the backward pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lambda_: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(lambda_)
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (lambda_,) = ctx.saved_tensors
        return -lambda_.to(grad.dtype) * grad, None


def gradient_reversal(x: torch.Tensor, lambda_: torch.Tensor | float) -> torch.Tensor:
    """Gradient-reversal layer (Ganin & Lempitsky, 2015): returns ``x``; its gradient becomes ``-lambda_`` times
    the gradient it receives.

    Args:
        x: the tensor passed through.
        lambda_: the reversal strength (a float or a scalar tensor).
    """
    return _GradientReversal.apply(x, torch.as_tensor(lambda_, dtype=x.dtype, device=x.device))


class CTKDLoss(nn.Module):
    """Hinton KD at a learnable global temperature trained adversarially through a gradient-reversal layer.

    The raw temperature parameter ``global_t`` must be optimised by the *student's* optimizer, in the same step as
    the student (``trains_with_student`` is ``True``). The curriculum reads the training progress stored by
    :meth:`set_progress` in the buffers ``progress_step`` and ``progress_total``, so it survives a checkpoint resume
    through ``state_dict``; until it is called the progress is 0 and ``lambda`` is ``lambda_min``.

    Args:
        temperature_min: Lower end of the temperature (``t_start`` of the reference code).
        temperature_range: Width of the temperature's range (``t_end`` of the reference code): the temperature is
            ``temperature_min + temperature_range * sigmoid(global_t)``.
        lambda_min: Reversal strength at the start of training.
        lambda_max: Reversal strength once the curriculum is over.
        curriculum_fraction: Fraction of the training steps over which ``lambda`` rises from ``lambda_min`` to
            ``lambda_max`` along a half cosine (the reference uses 10 of 240 epochs on CIFAR-100 and 5 of 120 on
            ImageNet, both 1/24); 0 starts at ``lambda_max``.
    """

    trains_with_student = True

    def __init__(
        self,
        temperature_min: float = 1.0,
        temperature_range: float = 20.0,
        lambda_min: float = 0.0,
        lambda_max: float = 1.0,
        curriculum_fraction: float = 10 / 240,
    ) -> None:
        super().__init__()
        if temperature_min < 0 or temperature_range <= 0:
            raise ValueError(
                f"CTKD needs temperature_min >= 0 and temperature_range > 0, got {temperature_min} and "
                f"{temperature_range}."
            )
        if not 0.0 <= curriculum_fraction <= 1.0:
            raise ValueError(f"curriculum_fraction must be in [0, 1], got {curriculum_fraction}")
        self.temperature_min, self.temperature_range = temperature_min, temperature_range
        self.lambda_min, self.lambda_max = lambda_min, lambda_max
        self.curriculum_fraction = curriculum_fraction
        self.global_t = nn.Parameter(torch.ones(()))
        self.register_buffer("progress_step", torch.zeros((), dtype=torch.long))
        self.register_buffer("progress_total", torch.zeros((), dtype=torch.long))

    def set_progress(self, step: int, total_steps: int) -> None:
        """Record that ``step`` of ``total_steps`` optimizer steps are done (drives the ``lambda`` curriculum).

        Args:
            step: the student's global step.
            total_steps: the run's number of optimizer steps.
        """
        self.progress_step.fill_(int(step))
        self.progress_total.fill_(int(total_steps))

    def grl_lambda(self) -> torch.Tensor:
        """The current reversal strength: ``lambda_min + (lambda_max - lambda_min) * (1 - cos(pi * r)) / 2`` with
        ``r = min(progress / curriculum_fraction, 1)`` and ``progress = step / total_steps``."""
        if self.curriculum_fraction == 0:
            return torch.tensor(self.lambda_max, device=self.progress_step.device)
        progress = self.progress_step.double() / self.progress_total.clamp_min(1).double()
        ratio = (progress / self.curriculum_fraction).clamp(0.0, 1.0)
        return self.lambda_min + (self.lambda_max - self.lambda_min) * (1 - torch.cos(math.pi * ratio)) / 2

    def temperature_from(self, raw: torch.Tensor) -> torch.Tensor:
        """Map the raw parameter value to the temperature.

        Args:
            raw: a value of the raw parameter ``global_t`` (a tensor).
        """
        return self.temperature_min + self.temperature_range * torch.sigmoid(raw)

    @property
    def temperature(self) -> torch.Tensor:
        """The current temperature (detached)."""
        return self.temperature_from(self.global_t.detach())

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scalar KD loss at the current temperature (mean over the batch); the temperature's gradient is reversed.

        Args:
            student_logits: the student's logits, ``(batch, classes)``.
            teacher_logits: the teacher's logits, ``(batch, classes)``.
            labels: ``(batch,)`` class indices; unused.
        """
        temperature = self.temperature_from(gradient_reversal(self.global_t, self.grl_lambda()))
        return kd_loss(student_logits, teacher_logits, temperature)

    def extra_repr(self) -> str:
        return (
            f"temperature_min={self.temperature_min}, temperature_range={self.temperature_range}, "
            f"lambda_min={self.lambda_min}, lambda_max={self.lambda_max}, "
            f"curriculum_fraction={self.curriculum_fraction}"
        )
