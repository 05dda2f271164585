"""Distillation losses: the name registry and the hand-made baselines.

Logit losses: ``ce``, ``kd``, ``dist``, ``dkd``, ``ls`` (KD with logit standardization), ``ctkd`` (KD at an
adversarially learned temperature, trained with the student) and ``la`` (the logit-adjusted cross-entropy of long-tailed
learning, no teacher). Feature losses (``kind="feature"``): ``fitnet``, ``at``.
The learned losses ``lkd`` (logits) and ``feat`` (features) are registered by :mod:`lkd_hf.loss_networks`.
"""

from .ctkd import CTKDLoss, gradient_reversal
from .feature import ATLoss, FitNetLoss, attention_map
from .logit import DISTLoss, DKDLoss, KDLoss, LSKDLoss, kd_loss, standardize
from .logit_adjustment import LogitAdjustedLoss, class_prior
from .registry import LossSpec, available_losses, build_loss, parse_loss_spec, register_loss


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
    return DKDLoss(
        alpha=config.dkd_alpha,
        beta=config.dkd_beta,
        temperature=config.temperature,
        logit_stand=getattr(config, "dkd_logit_stand", False),
        warmup_fraction=config.dkd_warmup_fraction,
    )


@register_loss("ls")
def _build_ls(config):
    """KD on per-sample z-scored logits (logit standardization) at the base temperature ``ls_temperature``."""
    return LSKDLoss(temperature=config.ls_temperature)


@register_loss("ctkd")
def _build_ctkd(config):
    """KD at a learned global temperature (curriculum temperature); its parameter trains with the student."""
    return CTKDLoss(
        temperature_min=config.ctkd_temperature_min,
        temperature_range=config.ctkd_temperature_range,
        lambda_min=config.ctkd_lambda_min,
        lambda_max=config.ctkd_lambda_max,
        curriculum_fraction=config.ctkd_curriculum_fraction,
    )


@register_loss("la")
def _build_la(config):
    """The logit-adjusted cross-entropy at ``la_tau`` over ``la_class_prior`` (no teacher; with ``ce_weight=0`` it
    replaces the cross-entropy)."""
    if config.la_class_prior is None:
        raise ValueError("loss='la' needs la_class_prior: each class's fraction of the training labels "
                         "(lkd_hf.losses.class_prior(labels, num_classes)).")
    return LogitAdjustedLoss(config.la_class_prior, tau=config.la_tau)


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
    "parse_loss_spec",
    "register_loss",
    "standardize",
]
