"""The registry's builders of the learned losses (``"lkd"``, ``"feat"``) and the logit loss shipped with ``lkd_hf``."""

from __future__ import annotations

import os

from ..constants import PRETRAINED_LOSS_DIRNAME
from ..hub import LearnedLoss
from .networks import FeatureLossNet, LogitLossNet
from .registry import register_loss

PRETRAINED_LOSS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                   PRETRAINED_LOSS_DIRNAME)
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


def with_label_trust(net: LogitLossNet) -> LogitLossNet:
    """``net`` with a learned per-sample weight of the labels' cross-entropy (``LogitLossNet(label_trust=True)``):
    ``net`` itself when it has one, else a copy with its weights, its parameters' ``requires_grad`` and a new label
    head at zero (the same loss until the outer loop learns it).

    Args:
        net: a logit loss network.
    """
    if net.label_trust:
        return net
    trusting = LogitLossNet(**{**net._hub_mixin_config, "label_trust": True}).to(net.log_weight.device)
    trusting.load_state_dict(net.state_dict(), strict=False)
    for name, param in net.named_parameters():
        trusting.get_parameter(name).requires_grad_(param.requires_grad)
    return trusting.train(net.training)


@register_loss("lkd", config_fields={"init": "lkd_init", "learn_knobs": "lkd_learn_knobs",
                                     "hidden_dim": "loss_hidden_dim", "temperature": "temperature",
                                     "label_trust": "lkd_label_trust"})
def _build_lkd(
    init: str = "kd",
    learn_knobs: bool = True,
    hidden_dim: int = 32,
    temperature: float = 4.0,
    dist_beta: float = 1.0,
    dist_gamma: float = 1.0,
    dist_temperature: float = 1.0,
    label_trust: bool = False,
) -> LogitLossNet:
    """The learned logit loss network, started from the shipped loss (``init="pretrained"``), KD at ``temperature``
    or DIST with ``dist_beta``, ``dist_gamma`` at ``dist_temperature``; ``label_trust`` adds the learned per-sample
    weight of the labels' cross-entropy."""
    common = {"hidden_dim": hidden_dim, "learn_temperature": learn_knobs, "learn_weight": learn_knobs,
              "label_trust": label_trust}
    if init == "pretrained":
        net = pretrained_logit_loss(learn_knobs=learn_knobs)
        return with_label_trust(net) if label_trust else net
    if init == "dist":
        return LogitLossNet(temperature=dist_temperature, base="dist", dist_beta=dist_beta, dist_gamma=dist_gamma,
                            **common)
    return LogitLossNet(temperature=temperature, **common)


@register_loss("feat", kind="feature", config_fields={"hidden_dim": "feature_loss_hidden_dim"})
def _build_feat(hidden_dim: int = 16) -> FeatureLossNet:
    """The learned feature loss network."""
    return FeatureLossNet(hidden_dim=hidden_dim)
