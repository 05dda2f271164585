"""Learned (meta-trained) distillation loss networks.

``LogitLossNet`` is the logit-side loss network of LKD (see ``docs/method.md``, "The loss networks"):

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
* ``base="dist"`` starts from DIST instead (Pearson relations of the predictions at temperature ``T``):

  ``L = exp(log_weight) * T^2 * (beta * mean_i s_i (1 - rho_i) + gamma * mean_c u_c (1 - rho_c))``

  with the inter-class correlations ``rho_i`` (per sample), the intra-class ones ``rho_c`` (per class, over the
  batch), the same learned per-sample weight ``s_i`` and a learned per-class weight ``u_c = 1 + mean_i m_ic`` in
  (0, 2). Bounded in ``[0, 4 (beta + gamma) T^2 exp(log_weight)]``, exactly DIST at initialisation.

``FeatureLossNet`` is the feature-side loss network (one network for every feature tap and model pair):

* per element ``(n, c, h, w)`` of the (connector-mapped) student feature ``s`` and teacher feature ``t``, inputs
  built from scale-normalised values (divided by the per-sample RMS of the teacher feature) and from pooled
  context that does not depend on the channel count or resolution (per-position means over channels and
  per-channel means over positions); one small MLP shared by all elements, so the network is independent of
  channel count and resolution and invariant to permuting the channels;
* the loss is MSE (FitNet) with a learned, bounded per-element re-weighting and a learned global weight:

  ``L = exp(log_weight) * mean_{n,c,h,w} (s - t)^2 * (1 + tanh(m))``, ``m = MLP(inputs)``

  Hence ``0 <= L <= 2 * exp(log_weight) * MSE`` (bounded below, finite), ``L = 0`` when ``s == t``, and since the
  last layer is zero-initialised, ``L`` equals the MSE exactly at initialisation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..constants import LOGIT_LOSS_BASES
from .logit import pearson_rows

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
        base: the hand-made loss reproduced exactly at initialisation: ``"kd"`` (Hinton KD) or ``"dist"`` (DIST).
        dist_beta / dist_gamma: DIST's inter- and intra-class weights (``base="dist"`` only).
    """

    def __init__(
        self,
        temperature: float = 4.0,
        hidden_dim: int = 32,
        learn_temperature: bool = True,
        learn_weight: bool = True,
        base: str = "kd",
        dist_beta: float = 1.0,
        dist_gamma: float = 1.0,
    ) -> None:
        super().__init__()
        if not _MIN_TEMPERATURE <= temperature <= _MAX_TEMPERATURE:
            raise ValueError(f"temperature must be in [{_MIN_TEMPERATURE}, {_MAX_TEMPERATURE}], got {temperature}")
        if base not in LOGIT_LOSS_BASES:
            raise ValueError(f"base must be one of {LOGIT_LOSS_BASES}, got {base!r}")
        self.base, self.dist_beta, self.dist_gamma = base, dist_beta, dist_gamma
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
        """Scalar loss (mean over the batch) for logits of shape ``(batch, classes)``.

        Args:
            student_logits: the student's logits, ``(batch, classes)``.
            teacher_logits: the teacher's logits, ``(batch, classes)``.
            labels: ``(batch,)`` class indices (the network's target indicator input).
        """
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
        if self.base == "dist":
            class_weight = 1 + modulation.mean(dim=0)
            inter = (sample_weight * (1 - pearson_rows(p_s, p_t))).mean()
            intra = (class_weight * (1 - pearson_rows(p_s.t(), p_t.t()))).mean()
            return self.weight * t**2 * (self.dist_beta * inter + self.dist_gamma * intra)
        per_sample = sample_weight * t**2 * (kl + (divergence * modulation).sum(-1)).clamp_min(0)  # >= 0 up to rounding
        return self.weight * per_sample.mean()

    @torch.no_grad()
    def knobs(self) -> dict[str, float]:
        """The current temperature and weight (and DIST's ``dist_beta`` / ``dist_gamma``) as plain floats."""
        knobs = {"temperature": self.temperature.item(), "weight": self.weight.item()}
        return knobs | ({"dist_beta": self.dist_beta, "dist_gamma": self.dist_gamma} if self.base == "dist" else {})

    def extra_repr(self) -> str:
        return f"base={self.base}, " + ", ".join(f"{name}={value:.3f}" for name, value in self.knobs().items())


_FEAT_NUM_ELEMENT_INPUTS = 3  # s_n, t_n, d_n
_FEAT_NUM_CONTEXT_INPUTS = 4  # per position: mean_c d_n^2, mean_c t_n^2; per channel: mean_hw d_n^2, mean_hw t_n^2
_FEAT_INPUT_CLIP = 10.0
_FEAT_EPS = 1e-6


class FeatureLossNet(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="lkd_hf",
    tags=["knowledge-distillation", "lkd", "loss-network", "feature-distillation"],
    repo_url="https://github.com/lkd-hf/lkd_hf",
):
    """Learned feature distillation loss for one feature tap, initialised to reproduce MSE (FitNet) exactly.

    ``forward(s, t)`` takes the connector-mapped student feature and the teacher feature, both of shape
    ``(batch, channels, height, width)``, and returns

    ``L = exp(log_weight) * mean_{n,c,h,w} d^2 * (1 + tanh(m))``, with ``d = s - t`` and ``m = MLP(x)`` per element.

    The MLP (one hidden layer, SiLU, zero-initialised output layer) sees per element
    ``x = [s_n, t_n, d_n, log1p(mean_c d_n^2), log1p(mean_c t_n^2), log1p(mean_hw d_n^2), log1p(mean_hw t_n^2)]``
    where ``s_n, t_n, d_n`` are ``s, t, d`` divided by the per-sample RMS of the (detached) teacher feature plus
    ``1e-6``, clipped to ``[-10, 10]``; the ``mean_c`` terms are broadcast over channels (one value per
    position), the ``mean_hw`` terms over positions (one value per channel). The per-position and per-channel
    parts of the first layer are applied on the pooled tensors before broadcasting, so the only full-size
    intermediates are the ``hidden_dim``-wide activations; set ``gradient_checkpointing = True`` to recompute
    them in the backward pass instead of storing them (works with double backward, too).

    Args:
        hidden_dim: width of the per-element MLP (``9 * hidden_dim + 2`` parameters in all).
        learn_weight: whether the outer loop may change the global weight of the feature term.
    """

    def __init__(self, hidden_dim: int = 16, learn_weight: bool = True) -> None:
        super().__init__()
        if hidden_dim < 1:
            raise ValueError(f"hidden_dim must be positive, got {hidden_dim}")
        self.log_weight = nn.Parameter(torch.zeros(()), requires_grad=learn_weight)
        self.input_layer = nn.Linear(_FEAT_NUM_ELEMENT_INPUTS + _FEAT_NUM_CONTEXT_INPUTS, hidden_dim)
        self.head = nn.Linear(hidden_dim, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.gradient_checkpointing = False  # runtime memory switch, not part of the saved config

    @property
    def weight(self) -> torch.Tensor:
        """The current global weight of the feature distillation term."""
        return self.log_weight.clamp(_MIN_LOG_WEIGHT, _MAX_LOG_WEIGHT).exp()

    def _modulation(self, student: torch.Tensor, teacher: torch.Tensor, inv_scale: torch.Tensor) -> torch.Tensor:
        """Per-element MLP output ``m`` of shape ``(batch, channels, height, width)``."""
        clip = _FEAT_INPUT_CLIP
        s_n = (student * inv_scale).clamp(-clip, clip)
        t_n = (teacher * inv_scale).clamp(-clip, clip)
        d_n = ((student - teacher) * inv_scale).clamp(-clip, clip)
        d2, t2 = d_n.square(), t_n.square()
        position_context = torch.stack([d2.mean(1, keepdim=True), t2.mean(1, keepdim=True)], dim=-1).log1p()
        channel_context = torch.stack([d2.mean((2, 3), keepdim=True), t2.mean((2, 3), keepdim=True)], dim=-1).log1p()
        del d2, t2
        w = self.input_layer.weight
        n_el = _FEAT_NUM_ELEMENT_INPUTS
        hidden = F.linear(torch.stack([s_n, t_n, d_n], dim=-1), w[:, :n_el], self.input_layer.bias)
        hidden = hidden + F.linear(position_context, w[:, n_el : n_el + 2])  # (B, 1, H, W, hidden), broadcast
        hidden.add_(F.linear(channel_context, w[:, n_el + 2 :]))  # (B, C, 1, 1, hidden), broadcast
        return F.linear(F.silu(hidden), self.head.weight, self.head.bias).squeeze(-1)

    def forward(self, student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
        """Scalar loss for features of identical shape ``(batch, channels, height, width)``.

        Args:
            student_feature: the connector-mapped student feature, ``(batch, channels, height, width)``.
            teacher_feature: the teacher feature, of the same shape.

        Raises:
            ValueError: when the features are not 4-D or their shapes differ.
        """
        if student_feature.shape != teacher_feature.shape or student_feature.dim() != 4:
            raise ValueError(
                f"FeatureLossNet needs (batch, channels, height, width) features of identical shape, got student "
                f"{tuple(student_feature.shape)} and teacher {tuple(teacher_feature.shape)} (map the student's with "
                f"a connector first)."
            )
        dtype = self.log_weight.dtype  # fp32 under mixed precision (loss networks stay in full precision)
        student, teacher = student_feature.to(dtype), teacher_feature.to(dtype)
        rms = teacher.detach().square().mean(dim=(1, 2, 3), keepdim=True).sqrt()
        inv_scale = 1.0 / (rms + _FEAT_EPS)
        if self.gradient_checkpointing and torch.is_grad_enabled():
            modulation = checkpoint(self._modulation, student, teacher, inv_scale, use_reentrant=False)
        else:
            modulation = self._modulation(student, teacher, inv_scale)
        squared = (student - teacher).square()
        # mean(d^2) + mean(d^2 * tanh(m)) == mean(d^2 * (1 + tanh(m))); written so that it is exactly MSE at init.
        return self.weight * (squared.mean() + (squared * torch.tanh(modulation)).mean())

    def mse_reference(self, student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
        """Plain MSE (FitNet) in this network's dtype (what the network computes at initialisation).

        Args:
            student_feature: the connector-mapped student feature.
            teacher_feature: the teacher feature, of the same shape.
        """
        dtype = self.log_weight.dtype
        return F.mse_loss(student_feature.to(dtype), teacher_feature.to(dtype))

    @torch.no_grad()
    def knobs(self) -> dict[str, float]:
        """The current global weight as a plain float."""
        return {"weight": self.weight.item()}

    def extra_repr(self) -> str:
        return f"weight={self.knobs()['weight']:.3f}"
