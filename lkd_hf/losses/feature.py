"""Hand-made feature distillation losses (baselines): FitNet hints and attention transfer.

Each module maps ``(student_feature, teacher_feature)`` of one feature tap to a scalar. Both tensors have shape
``(batch, channels, height, width)``; the student's has already been mapped to the teacher's shape by its
connector. Losses are computed in (at least) float32, also for bf16/fp16 inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _upcast(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Cast to float32, or keep a wider floating dtype (float64)."""
    dtype = torch.promote_types(tensors[0].dtype, torch.float32)
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return tuple(t.to(dtype) for t in tensors)


class FitNetLoss(nn.Module):
    """FitNets (Romero et al., 2015) hint loss: mean squared error over all elements.

    As RepDistiller's ``nn.MSELoss()`` on the (connector-mapped) student hint and the teacher hint.
    """

    def forward(self, student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
        """Scalar MSE between the two features.

        Args:
            student_feature: the connector-mapped student feature, ``(batch, channels, height, width)``.
            teacher_feature: the teacher feature, of the same shape.

        Raises:
            ValueError: the shapes differ.
        """
        if student_feature.shape != teacher_feature.shape:
            raise ValueError(
                f"FitNetLoss needs features of identical shape, got student {tuple(student_feature.shape)} and "
                f"teacher {tuple(teacher_feature.shape)} (map the student's with a connector first)."
            )
        s, t = _upcast(student_feature, teacher_feature)
        return F.mse_loss(s, t)


def attention_map(feature: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Spatial attention map of Zagoruyko & Komodakis: ``normalize(mean_c f^p)`` flattened, shape ``(B, H*W)``.

    Args:
        feature: a feature map ``(B, C, H, W)``.
        p: the power applied element-wise before the mean over channels.
    """
    return F.normalize(feature.pow(p).mean(1).flatten(1))


class ATLoss(nn.Module):
    """Attention transfer (Zagoruyko & Komodakis, 2017) for one feature pair.

    ``mean((a(s) - a(t))^2)`` with ``a(f) = normalize(mean_c f^p)`` (p = 2), as RepDistiller's ``Attention``
    loss for one pair. Channel counts may differ; spatial sizes must match.

    Args:
        p: the power of the attention map (:func:`attention_map`).
    """

    def __init__(self, p: float = 2.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
        """Scalar attention transfer loss for one feature pair.

        Args:
            student_feature: the student feature, ``(batch, channels, height, width)``.
            teacher_feature: the teacher feature, with the same batch size and ``(height, width)`` (any channels).

        Raises:
            ValueError: a feature that is not 4-D, or a different batch or spatial size.
        """
        if student_feature.dim() != 4 or teacher_feature.dim() != 4:
            raise ValueError(
                f"ATLoss expects (batch, channels, height, width) features, got shapes "
                f"{tuple(student_feature.shape)} and {tuple(teacher_feature.shape)}."
            )
        s_shape, t_shape = student_feature.shape, teacher_feature.shape
        if s_shape[0] != t_shape[0] or s_shape[2:] != t_shape[2:]:
            raise ValueError(
                f"ATLoss needs the same batch size and spatial size (H, W) for student and teacher, got student "
                f"{tuple(student_feature.shape)} and teacher {tuple(teacher_feature.shape)}; resize one of them "
                f"(e.g. F.adaptive_avg_pool2d) or use a connector."
            )
        s, t = _upcast(student_feature, teacher_feature)
        return (attention_map(s, self.p) - attention_map(t, self.p)).pow(2).mean()

    def extra_repr(self) -> str:
        return f"p={self.p}"
