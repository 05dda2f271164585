"""Hand-made logit distillation losses (baselines): Hinton KD, DIST and DKD.

Each module maps ``(student_logits, teacher_logits, labels)`` to a scalar (mean over the batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. (2015): ``T^2 * KL(softmax(z_t/T) || softmax(z_s/T))``, averaged over the batch."""
    log_p_s = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=-1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2


class KDLoss(nn.Module):
    """Hinton knowledge distillation (KL divergence of temperature-softened distributions)."""

    def __init__(self, temperature: float = 4.0) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return kd_loss(student_logits, teacher_logits, self.temperature)


def pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


class DISTLoss(nn.Module):
    """DIST (Huang et al., 2022): inter-class and intra-class Pearson relations of the predictions.

    ``tau^2 * (beta * (1 - mean_i pearson(p_s[i], p_t[i])) + gamma * (1 - mean_c pearson(p_s[:, c], p_t[:, c])))``.
    Defaults are the paper's ImageNet setting (beta = gamma = tau = 1).
    """

    def __init__(self, beta: float = 1.0, gamma: float = 1.0, temperature: float = 1.0) -> None:
        super().__init__()
        self.beta, self.gamma, self.temperature = beta, gamma, temperature

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        p_s = F.softmax(student_logits / self.temperature, dim=1)
        p_t = F.softmax(teacher_logits / self.temperature, dim=1)
        inter = 1 - pearson_rows(p_s, p_t).mean()
        intra = 1 - pearson_rows(p_s.t(), p_t.t()).mean()
        return self.temperature**2 * (self.beta * inter + self.gamma * intra)


class DKDLoss(nn.Module):
    """Decoupled KD (Zhao et al., 2022): ``alpha * TCKD + beta * NCKD``.

    TCKD is the binary KL of (target, non-target) probabilities; NCKD the KL among the non-target classes.
    Defaults are the paper's CIFAR-100 setting (alpha 1, beta 8, T 4); its ImageNet setting is beta 0.5, T 1.
    """

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0) -> None:
        super().__init__()
        self.alpha, self.beta, self.temperature = alpha, beta, temperature

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        gt = F.one_hot(labels, student_logits.shape[-1]).bool()
        p_s = F.softmax(student_logits / t, dim=1)
        p_t = F.softmax(teacher_logits / t, dim=1)
        b_s = torch.stack([p_s[gt], p_s.masked_fill(gt, 0).sum(1)], dim=1)
        b_t = torch.stack([p_t[gt], p_t.masked_fill(gt, 0).sum(1)], dim=1)
        tckd = F.kl_div(b_s.clamp_min(1e-12).log(), b_t, reduction="batchmean") * t**2
        # Non-target distributions: the target logit is pushed to -inf before the softmax.
        log_q_s = F.log_softmax(student_logits / t - 1000.0 * gt, dim=1)
        log_q_t = F.log_softmax(teacher_logits / t - 1000.0 * gt, dim=1)
        nckd = F.kl_div(log_q_s, log_q_t, reduction="batchmean", log_target=True) * t**2
        return self.alpha * tckd + self.beta * nckd
