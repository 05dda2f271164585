"""Hand-made logit distillation losses (baselines): Hinton KD, DIST, DKD and KD with logit standardization.

Each module maps ``(student_logits, teacher_logits, labels)`` to a scalar (mean over the batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. (2015): ``T^2 * KL(softmax(z_t/T) || softmax(z_s/T))``, averaged over the batch.

    Args:
        student_logits: the student's logits ``z_s``, ``(batch, classes)``.
        teacher_logits: the teacher's logits ``z_t``, ``(batch, classes)``.
        temperature: the softmax temperature ``T`` (a float or a scalar tensor).
    """
    log_p_s = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=-1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2


class KDLoss(nn.Module):
    """Hinton knowledge distillation (KL divergence of temperature-softened distributions).

    Args:
        temperature: Softmax temperature ``T`` of both distributions; the KL term is multiplied by ``T^2``.
    """

    def __init__(self, temperature: float = 4.0) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scalar KD loss (mean over the batch).

        Args:
            student_logits: the student's logits, ``(batch, classes)``.
            teacher_logits: the teacher's logits, ``(batch, classes)``.
            labels: ``(batch,)`` class indices; unused.
        """
        return kd_loss(student_logits, teacher_logits, self.temperature)


def standardize(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Z-score each row: ``(z - mean(z)) / (eps + std(z))`` with the unbiased standard deviation.

    This is the pre-process of logit standardization (Sun et al., 2024), with the reference implementation's
    ``eps`` added to the standard deviation.

    Args:
        logits: logits of shape ``(..., classes)``; each row (last dimension) is standardized.
        eps: added to each row's standard deviation before dividing.
    """
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (eps + std)


class LSKDLoss(nn.Module):
    """KD with logit standardization (Sun et al., CVPR 2024): Hinton KD on per-sample z-scored logits.

    ``T^2 * KL(softmax(standardize(z_t) / T) || softmax(standardize(z_s) / T))``, averaged over the batch. The
    student is matched to the teacher's logit relations rather than to its logit range: the loss does not change
    when a sample's logits are shifted by a constant or scaled by a positive factor.

    Args:
        temperature: Base temperature ``T`` applied to the standardized logits (the paper's CIFAR-100 setting for
            KD is 2, with a distillation weight of 9).
        eps: Added to each sample's standard deviation before dividing.
    """

    def __init__(self, temperature: float = 2.0, eps: float = 1e-7) -> None:
        super().__init__()
        self.temperature, self.eps = temperature, eps

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scalar KD loss on the standardized logits (mean over the batch).

        Args:
            student_logits: the student's logits, ``(batch, classes)``.
            teacher_logits: the teacher's logits, ``(batch, classes)``.
            labels: ``(batch,)`` class indices; unused.
        """
        return kd_loss(standardize(student_logits, self.eps), standardize(teacher_logits, self.eps), self.temperature)


def pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``.

    Args:
        a: a 2-D tensor ``(rows, n)``.
        b: a tensor of the same shape.
        eps: added to the product of the row norms before dividing.
    """
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


class DISTLoss(nn.Module):
    """DIST (Huang et al., 2022): inter-class and intra-class Pearson relations of the predictions.

    ``tau^2 * (beta * (1 - mean_i pearson(p_s[i], p_t[i])) + gamma * (1 - mean_c pearson(p_s[:, c], p_t[:, c])))``.
    Defaults are the paper's ImageNet setting (beta = gamma = tau = 1).

    Args:
        beta: Weight of the inter-class relation (per-sample Pearson correlation).
        gamma: Weight of the intra-class relation (per-class Pearson correlation over the batch).
        temperature: Softmax temperature ``tau``.
    """

    def __init__(self, beta: float = 1.0, gamma: float = 1.0, temperature: float = 1.0) -> None:
        super().__init__()
        self.beta, self.gamma, self.temperature = beta, gamma, temperature

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scalar DIST loss (inter-class relations averaged over the batch, intra-class ones over the classes).

        Args:
            student_logits: the student's logits, ``(batch, classes)``.
            teacher_logits: the teacher's logits, ``(batch, classes)``.
            labels: ``(batch,)`` class indices; unused.
        """
        p_s = F.softmax(student_logits / self.temperature, dim=1)
        p_t = F.softmax(teacher_logits / self.temperature, dim=1)
        inter = 1 - pearson_rows(p_s, p_t).mean()
        intra = 1 - pearson_rows(p_s.t(), p_t.t()).mean()
        return self.temperature**2 * (self.beta * inter + self.gamma * intra)


class DKDLoss(nn.Module):
    """Decoupled KD (Zhao et al., 2022): ``alpha * TCKD + beta * NCKD``, optionally warmed up.

    TCKD is the binary KL of (target, non-target) probabilities; NCKD the KL among the non-target classes.
    Defaults are the paper's CIFAR-100 setting (alpha 1, beta 8, T 4); its ImageNet setting is beta 0.5, T 1.
    The reference code multiplies the loss by ``min(epoch / 20, 1)`` over 240 epochs: ``warmup_fraction=20 / 240``
    is that ramp, by optimizer step, at any run length. The progress comes from :meth:`set_progress` (kept in
    buffers, so it survives a checkpoint resume); until it is called the ramp is at 0.

    Args:
        alpha: Weight of TCKD.
        beta: Weight of NCKD.
        temperature: Softmax temperature ``T``; both terms are multiplied by ``T^2``.
        logit_stand: Z-score each sample's student and teacher logits first (:func:`standardize`), as in DKD with
            logit standardization (Sun et al., 2024).
        warmup_fraction: Fraction of the training steps over which the loss's factor rises linearly from 0 to 1;
            0 (the default) applies the full loss from the start.
    """

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        logit_stand: bool = False,
        warmup_fraction: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= warmup_fraction <= 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1], got {warmup_fraction}")
        self.alpha, self.beta, self.temperature, self.logit_stand = alpha, beta, temperature, logit_stand
        self.warmup_fraction = warmup_fraction
        self.register_buffer("progress_step", torch.zeros((), dtype=torch.long))
        self.register_buffer("progress_total", torch.zeros((), dtype=torch.long))

    def set_progress(self, step: int, total_steps: int) -> None:
        """Record that ``step`` of ``total_steps`` optimizer steps are done (drives the warm-up).

        Args:
            step: the student's global step.
            total_steps: the run's number of optimizer steps.
        """
        self.progress_step.fill_(int(step))
        self.progress_total.fill_(int(total_steps))

    def warmup_factor(self) -> float:
        """The loss's current factor: ``min(progress / warmup_fraction, 1)``, ``progress = step / total_steps``."""
        if self.warmup_fraction == 0:
            return 1.0
        progress = int(self.progress_step) / max(int(self.progress_total), 1)
        return min(progress / self.warmup_fraction, 1.0)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scalar DKD loss (mean over the batch).

        Args:
            student_logits: the student's logits, ``(batch, classes)``.
            teacher_logits: the teacher's logits, ``(batch, classes)``.
            labels: ``(batch,)`` class indices (the target class of TCKD / NCKD).
        """
        if self.logit_stand:
            student_logits, teacher_logits = standardize(student_logits), standardize(teacher_logits)
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
        return self.warmup_factor() * (self.alpha * tckd + self.beta * nckd)
