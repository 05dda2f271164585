"""Distillation losses: the name registry and the hand-made baselines (``ce``, ``kd``, ``dist``, ``dkd``).

The learned loss ``lkd`` is registered by :mod:`lkd_hf.loss_networks`.
"""

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


__all__ = [
    "DISTLoss",
    "DKDLoss",
    "KDLoss",
    "available_losses",
    "build_loss",
    "kd_loss",
    "register_loss",
]
