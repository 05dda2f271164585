"""Distillation losses: the name registry and the hand-made baselines.

Logit losses: ``ce``, ``kd``, ``dist``, ``dkd``. Feature losses (``kind="feature"``): ``fitnet``, ``at``.
The learned losses ``lkd`` (logits) and ``feat`` (features) are registered by :mod:`lkd_hf.loss_networks`.
"""

from .feature import ATLoss, FitNetLoss, attention_map
from .logit import DISTLoss, DKDLoss, KDLoss, kd_loss
from .registry import available_losses, build_loss, register_loss


@register_loss("ce")
def _build_ce(config):
    """Cross-entropy only: no teacher, no distillation term."""
    return None


@register_loss("kd")
def _build_kd(config):
    return KDLoss(temperature=config.temperature)


@register_loss("dist")
def _build_dist(config):
    return DISTLoss(beta=config.dist_beta, gamma=config.dist_gamma, temperature=config.dist_temperature)


@register_loss("dkd")
def _build_dkd(config):
    return DKDLoss(alpha=config.dkd_alpha, beta=config.dkd_beta, temperature=config.temperature)


@register_loss("fitnet", kind="feature")
def _build_fitnet(config):
    """FitNet hint loss: MSE between the connector-mapped student feature and the teacher feature."""
    return FitNetLoss()


@register_loss("at", kind="feature")
def _build_at(config):
    """Attention transfer (p = 2)."""
    return ATLoss()


__all__ = [
    "ATLoss",
    "DISTLoss",
    "DKDLoss",
    "FitNetLoss",
    "KDLoss",
    "attention_map",
    "available_losses",
    "build_loss",
    "kd_loss",
    "register_loss",
]
