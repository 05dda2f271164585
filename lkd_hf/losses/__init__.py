"""Distillation losses: the name registry and the hand-made baselines.

Logit losses: ``ce``, ``kd``, ``dist``, ``dkd``, ``ls`` (KD with logit standardization), ``ctkd`` (KD at an
adversarially learned temperature, trained with the student) and ``la`` (the logit-adjusted cross-entropy of long-tailed
learning, no teacher). Feature losses (``kind="feature"``): ``fitnet``, ``at``.
The learned losses ``lkd`` (logits) and ``feat`` (features) are registered by :mod:`lkd_hf.losses.learned`. Each
factory takes its loss's own options (``LKDConfig.loss_kwargs[name]``; ``docs/method.md`` lists them).
"""

from .ctkd import CTKDLoss, gradient_reversal
from .feature import ATLoss, FitNetLoss, attention_map
from .logit import DISTLoss, DKDLoss, KDLoss, LSKDLoss, kd_loss, standardize
from .logit_adjustment import LogitAdjustedLoss, class_prior
from .registry import LossSpec, available_losses, build_loss, loss_options, parse_loss_spec, register_loss


@register_loss("ce")
def _build_ce() -> None:
    """Cross-entropy only: no teacher, no distillation term."""
    return None


@register_loss("kd", config_fields={"temperature": "temperature"})
def _build_kd(temperature: float = 4.0) -> KDLoss:
    return KDLoss(temperature=temperature)


@register_loss("dist")
def _build_dist(beta: float = 1.0, gamma: float = 1.0, temperature: float = 1.0) -> DISTLoss:
    return DISTLoss(beta=beta, gamma=gamma, temperature=temperature)


@register_loss("dkd", config_fields={"temperature": "temperature"})
def _build_dkd(
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    logit_stand: bool = False,
    warmup_fraction: float = 0.0,
) -> DKDLoss:
    return DKDLoss(alpha=alpha, beta=beta, temperature=temperature, logit_stand=logit_stand,
                   warmup_fraction=warmup_fraction)


@register_loss("ls")
def _build_ls(temperature: float = 2.0) -> LSKDLoss:
    """KD on per-sample z-scored logits (logit standardization) at the base ``temperature``."""
    return LSKDLoss(temperature=temperature)


@register_loss("ctkd")
def _build_ctkd(
    temperature_min: float = 1.0,
    temperature_range: float = 20.0,
    lambda_min: float = 0.0,
    lambda_max: float = 1.0,
    curriculum_fraction: float = 10 / 240,
) -> CTKDLoss:
    """KD at a learned global temperature (curriculum temperature); its parameter trains with the student."""
    return CTKDLoss(temperature_min=temperature_min, temperature_range=temperature_range, lambda_min=lambda_min,
                    lambda_max=lambda_max, curriculum_fraction=curriculum_fraction)


@register_loss("la")
def _build_la(class_prior: list[float] | None = None, tau: float = 1.0) -> LogitAdjustedLoss:
    """The logit-adjusted cross-entropy at ``tau`` over ``class_prior`` (no teacher; with ``ce_weight=0`` it replaces
    the cross-entropy)."""
    if class_prior is None:
        raise ValueError("loss='la' needs la_class_prior (loss_kwargs={'la': {'class_prior': [...]}}): each class's "
                         "fraction of the training labels (lkd_hf.losses.class_prior(labels, num_classes)).")
    return LogitAdjustedLoss(class_prior, tau=tau)


@register_loss("fitnet", kind="feature")
def _build_fitnet() -> FitNetLoss:
    """FitNet hint loss: MSE between the connector-mapped student feature and the teacher feature."""
    return FitNetLoss()


@register_loss("at", kind="feature")
def _build_at() -> ATLoss:
    """Attention transfer (p = 2)."""
    return ATLoss()


__all__ = [
    "ATLoss",
    "CTKDLoss",
    "DISTLoss",
    "DKDLoss",
    "FitNetLoss",
    "KDLoss",
    "LSKDLoss",
    "LogitAdjustedLoss",
    "attention_map",
    "available_losses",
    "build_loss",
    "class_prior",
    "gradient_reversal",
    "LossSpec",
    "kd_loss",
    "loss_options",
    "parse_loss_spec",
    "register_loss",
    "standardize",
]
