"""Logit adjustment (Menon et al., ICLR 2021): the cross-entropy on logits shifted by the log class prior.

``CE(z + tau * log(prior), y)`` trains a classifier whose plain ``argmax z`` targets the *balanced* error when the
training labels are long-tailed (``tau = 1`` is the paper's Fisher-consistent choice; ``tau = 0`` is plain CE). It
needs no teacher: used as the logit loss with ``ce_weight=0`` it replaces the cross-entropy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def class_prior(labels: Sequence[int] | torch.Tensor, num_classes: int) -> list[float]:
    """The fraction of each class among ``labels`` (the training labels).

    Args:
        labels: class indices.
        num_classes: the number of classes (classes without a label get 0).
    """
    counts = torch.bincount(torch.as_tensor(labels, dtype=torch.long), minlength=num_classes).double()
    return (counts / counts.sum()).tolist()


class LogitAdjustedLoss(nn.Module):
    """The logit-adjusted cross-entropy ``CE(z_s + tau * log(prior), y)``, averaged over the batch.

    Args:
        prior: each class's fraction of the training labels (positive, one per class; normalised here).
        tau: scale of the adjustment.
    """

    def __init__(self, prior: Sequence[float], tau: float = 1.0) -> None:
        super().__init__()
        prior = torch.as_tensor(prior, dtype=torch.float64)
        if prior.ndim != 1 or bool((prior <= 0).any()):
            raise ValueError(f"The class prior must be one positive value per class, got {prior.tolist()}.")
        self.tau = tau
        self.register_buffer("log_prior", (prior / prior.sum()).log().float())

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scalar logit-adjusted cross-entropy (mean over the batch).

        Args:
            student_logits: the student's logits, ``(batch, classes)``.
            teacher_logits: the teacher's logits; unused.
            labels: ``(batch,)`` class indices.
        """
        shift = self.tau * self.log_prior.to(student_logits.device)
        return F.cross_entropy(student_logits.float() + shift, labels)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, classes={self.log_prior.numel()}"
