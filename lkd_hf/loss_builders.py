"""The registry's builders of the learned losses (``"lkd"``, ``"feat"``) and the logit loss shipped with ``lkd_hf``."""

from __future__ import annotations

import os

from .constants import PRETRAINED_LOSS_DIRNAME
from .hub import LearnedLoss
from .loss_networks import FeatureLossNet, LogitLossNet
from .losses.registry import register_loss

PRETRAINED_LOSS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), PRETRAINED_LOSS_DIRNAME)
"""The folder of the logit loss shipped with ``lkd_hf`` (a :class:`~lkd_hf.LearnedLoss`)."""


def pretrained_logit_loss(learn_knobs: bool = True) -> LogitLossNet:
    """The logit loss shipped with ``lkd_hf``, where ``loss="lkd"`` starts by default (``LKDConfig.lkd_init=
    "pretrained"``): a DIST-based :class:`LogitLossNet` learned beforehand over several teacher -> student pairs and
    datasets. Its folder, :data:`PRETRAINED_LOSS_DIR`, is a :class:`~lkd_hf.LearnedLoss` (``README.md`` and
    ``pretraining.json`` say how it was learned). It works for any number of classes.

    Args:
        learn_knobs: whether the outer loop may change its temperature and global weight.
    """
    net = LearnedLoss.from_pretrained(PRETRAINED_LOSS_DIR).logit.train()  # loaded in eval mode, all trainable
    net.log_temperature.requires_grad_(learn_knobs)
    net.log_weight.requires_grad_(learn_knobs)
    return net


@register_loss("lkd")
def _build_lkd(config) -> LogitLossNet:
    knobs = getattr(config, "lkd_learn_knobs", True)
    common = dict(hidden_dim=config.loss_hidden_dim, learn_temperature=knobs, learn_weight=knobs)
    init = getattr(config, "lkd_init", "kd")
    if init == "pretrained":
        return pretrained_logit_loss(learn_knobs=knobs)
    if init == "dist":
        return LogitLossNet(temperature=config.dist_temperature, base="dist", dist_beta=config.dist_beta,
                            dist_gamma=config.dist_gamma, **common)
    return LogitLossNet(temperature=config.temperature, **common)


@register_loss("feat", kind="feature")
def _build_feat(config) -> FeatureLossNet:
    return FeatureLossNet(hidden_dim=getattr(config, "feature_loss_hidden_dim", 16))
