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


def freeze_knobs(net: LogitLossNet) -> None:
    """Keep a logit loss network's temperature and global weight fixed (``LKDConfig.lkd_learn_knobs=False``): the
    outer loop then learns only its per-class and per-sample weights.

    Args:
        net: a logit loss network.
    """
    net.log_temperature.requires_grad_(False)
    net.log_weight.requires_grad_(False)


def pretrained_logit_loss(learn_knobs: bool = True) -> LogitLossNet:
    """The logit loss shipped with ``lkd_hf``, where ``loss="lkd"`` starts by default (``LKDConfig.lkd_init=
    "pretrained"``): a DIST-based :class:`LogitLossNet` learned beforehand over several teacher -> student pairs and
    datasets. Its folder, :data:`PRETRAINED_LOSS_DIR`, is a :class:`~lkd_hf.LearnedLoss` (``README.md`` and
    ``pretraining.json`` say how it was learned). It works for any number of classes.

    Args:
        learn_knobs: whether the outer loop may change its temperature and global weight.
    """
    net = LearnedLoss.from_pretrained(PRETRAINED_LOSS_DIR).logit.train()  # loaded in eval mode, all trainable
    if not learn_knobs:
        freeze_knobs(net)
    return net


@register_loss("lkd", config_fields={"init": "lkd_init", "learn_knobs": "lkd_learn_knobs",
                                     "hidden_dim": "loss_hidden_dim", "temperature": "temperature"})
def _build_lkd(
    init: str = "kd",
    learn_knobs: bool = True,
    hidden_dim: int = 32,
    temperature: float = 4.0,
    dist_beta: float = 1.0,
    dist_gamma: float = 1.0,
    dist_temperature: float = 1.0,
) -> LogitLossNet:
    """The learned logit loss network, started from the shipped loss (``init="pretrained"``), KD at ``temperature``
    or DIST with ``dist_beta``, ``dist_gamma`` at ``dist_temperature``."""
    common = {"hidden_dim": hidden_dim, "learn_temperature": learn_knobs, "learn_weight": learn_knobs}
    if init == "pretrained":
        return pretrained_logit_loss(learn_knobs=learn_knobs)
    if init == "dist":
        return LogitLossNet(temperature=dist_temperature, base="dist", dist_beta=dist_beta, dist_gamma=dist_gamma,
                            **common)
    return LogitLossNet(temperature=temperature, **common)


@register_loss("feat", kind="feature", config_fields={"hidden_dim": "feature_loss_hidden_dim"})
def _build_feat(hidden_dim: int = 16) -> FeatureLossNet:
    """The learned feature loss network."""
    return FeatureLossNet(hidden_dim=hidden_dim)
