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


register_loss("kd", config_fields={"temperature": "temperature"})(KDLoss)
register_loss("dist")(DISTLoss)
register_loss("dkd", config_fields={"temperature": "temperature"})(DKDLoss)
register_loss("ls")(LSKDLoss)  # KD on per-sample z-scored logits (logit standardization)
register_loss("ctkd")(CTKDLoss)  # KD at a learned global temperature; its parameter trains with the student


@register_loss("la")
def _build_la(class_prior: list[float] | None = None, tau: float = 1.0) -> LogitAdjustedLoss:
    """The logit-adjusted cross-entropy at ``tau`` over ``class_prior`` (no teacher; with ``ce_weight=0`` it replaces
    the cross-entropy)."""
    if class_prior is None:
        raise ValueError("loss='la' needs la_class_prior (loss_kwargs={'la': {'class_prior': [...]}}): each class's "
                         "fraction of the training labels (lkd_hf.losses.class_prior(labels, num_classes)).")
    return LogitAdjustedLoss(class_prior, tau=tau)


register_loss("fitnet", kind="feature")(FitNetLoss)  # FitNet hints: MSE to the teacher feature
register_loss("at", kind="feature")(ATLoss)  # attention transfer


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
