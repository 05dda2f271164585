"""Learned (meta-trained) distillation loss networks.

``LogitLossNet`` is the logit-side loss network of LKD (see ``LKD_METHOD.md``, "Generic loss networks"):

* per (sample, class) inputs built from student/teacher probabilities at the learned temperature and at
  temperature 1, their log-ratio and the target indicator; one small MLP shared by all classes, so the
  network works for any number of classes and is equivariant to permuting them;
* the loss is Hinton KD at temperature ``T`` plus a learned, bounded correction, scaled by a learned
  per-sample weight and a learned global weight:

  ``L = exp(log_weight) * mean_i s_i * T^2 * (KL_i + sum_c d_ic * m_ic)``

  where ``d_ic = p_t log(p_t / p_s) - p_t + p_s >= 0`` (so that ``sum_c d_ic = KL_i``), ``m_ic = tanh(MLP)``
  in (-1, 1) and ``s_i = 1 + tanh(.)`` in (0, 2). Hence ``L >= 0`` (bounded below), finite, and since the
  last layers are zero-initialised, ``L`` equals Hinton KD(T=4) exactly at initialisation;
* ``log_weight`` (weight of the distillation term) and ``log_temperature`` are the well-conditioned global
  knobs: the outer loop can turn distillation down/off and retune the temperature.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from .losses.logit import kd_loss
from .losses.registry import register_loss

_NUM_INPUTS = 6
_MIN_TEMPERATURE, _MAX_TEMPERATURE = 0.5, 20.0
_MIN_LOG_WEIGHT, _MAX_LOG_WEIGHT = -10.0, 3.0
_LOG_RATIO_CLIP = 10.0


class LogitLossNet(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="lkd_hf",
    tags=["knowledge-distillation", "lkd", "loss-network"],
    repo_url="https://github.com/lkd-hf/lkd_hf",
):
    """Learned logit distillation loss, initialised to reproduce Hinton KD exactly.

    Args:
        temperature: initial temperature ``T`` (learned as ``log_temperature``).
        hidden_dim: width of the per-class MLP.
        learn_temperature: whether the outer loop may change ``T``.
        learn_weight: whether the outer loop may change the global weight of the distillation term.
    """

    def __init__(
        self,
        temperature: float = 4.0,
        hidden_dim: int = 32,
        learn_temperature: bool = True,
        learn_weight: bool = True,
    ) -> None:
        super().__init__()
        if not _MIN_TEMPERATURE <= temperature <= _MAX_TEMPERATURE:
            raise ValueError(f"temperature must be in [{_MIN_TEMPERATURE}, {_MAX_TEMPERATURE}], got {temperature}")
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)), requires_grad=learn_temperature)
        self.log_weight = nn.Parameter(torch.zeros(()), requires_grad=learn_weight)
        self.mlp = nn.Sequential(
            nn.Linear(_NUM_INPUTS, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, hidden_dim), nn.SiLU()
        )
        self.class_head = nn.Linear(hidden_dim, 1)
        self.sample_head = nn.Linear(hidden_dim, 1)
        for head in (self.class_head, self.sample_head):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    @property
    def temperature(self) -> torch.Tensor:
        """The current temperature (clamped to a safe range)."""
        return self.log_temperature.clamp(math.log(_MIN_TEMPERATURE), math.log(_MAX_TEMPERATURE)).exp()

    @property
    def weight(self) -> torch.Tensor:
        """The current global weight of the distillation term."""
        return self.log_weight.clamp(_MIN_LOG_WEIGHT, _MAX_LOG_WEIGHT).exp()

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scalar loss (mean over the batch) for logits of shape ``(batch, classes)``."""
        dtype = self.log_temperature.dtype  # fp32 under mixed precision (loss networks stay in full precision)
        student_logits, teacher_logits = student_logits.to(dtype), teacher_logits.to(dtype)
        t = self.temperature
        log_p_s = F.log_softmax(student_logits / t, dim=-1)
        log_p_t = F.log_softmax(teacher_logits / t, dim=-1)
        p_s, p_t = log_p_s.exp(), log_p_t.exp()
        kl = (p_t * (log_p_t - log_p_s)).sum(-1)
        divergence = p_t * (log_p_t - log_p_s) - p_t + p_s  # >= 0 elementwise, sums to KL over classes
        target = F.one_hot(labels, student_logits.shape[-1]).to(p_s.dtype)
        features = torch.stack(
            [
                p_t,
                p_s,
                (log_p_t - log_p_s).clamp(-_LOG_RATIO_CLIP, _LOG_RATIO_CLIP) / _LOG_RATIO_CLIP,
                target,
                F.softmax(teacher_logits, dim=-1),
                F.softmax(student_logits, dim=-1),
            ],
            dim=-1,
        )
        hidden = self.mlp(features)  # (batch, classes, hidden)
        modulation = torch.tanh(self.class_head(hidden).squeeze(-1))
        sample_weight = 1 + torch.tanh(self.sample_head(hidden.mean(dim=1)).squeeze(-1))
        per_sample = sample_weight * t**2 * (kl + (divergence * modulation).sum(-1))
        return self.weight * per_sample.mean()

    def kd_reference(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """Hinton KD at this network's current temperature (what the network computed at initialisation)."""
        dtype = self.log_temperature.dtype
        return kd_loss(student_logits.to(dtype), teacher_logits.to(dtype), float(self.temperature))

    def extra_repr(self) -> str:
        return f"temperature={float(self.temperature):.3f}, weight={float(self.weight):.3f}"


@register_loss("lkd")
def _build_lkd(config) -> LogitLossNet:
    return LogitLossNet(temperature=config.temperature, hidden_dim=config.loss_hidden_dim)
