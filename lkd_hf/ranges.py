"""The allowed range of every numeric setting: :class:`~lkd_hf.LKDConfig`'s own fields, the options of the registered
losses in its ``loss_kwargs`` and the constructor arguments of the learned loss networks (a ``LearnedLoss``'s
``config.json``), checked by one function (no package imports)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Range:
    """An interval of finite numbers, ``[low, high]`` with open ends where asked.

    Args:
        low / high: the ends (``None``: unbounded).
        low_open / high_open: exclude the end.
        integer: the value must be an integer.
        optional: ``None`` is allowed too.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    optional: bool = False

    def allows(self, value: Any) -> bool:
        """Whether ``value`` lies in the range.

        Args:
            value: the setting's value.
        """
        if value is None:
            return self.optional
        if isinstance(value, bool) or not isinstance(value, numbers.Integral if self.integer else numbers.Real):
            return False
        if not math.isfinite(value):
            return False
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def __str__(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            bounds = f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        elif self.low is not None:
            bounds = f"{'>' if self.low_open else '>='} {self.low:g}"
        elif self.high is not None:
            bounds = f"{'<' if self.high_open else '<='} {self.high:g}"
        else:
            bounds = "finite"
        return f"{bounds} ({kind}{' or None' if self.optional else ''})"


AT_LEAST_0 = Range(low=0)
ABOVE_0 = Range(low=0, low_open=True)
FINITE = Range()
FRACTION = Range(low=0, high=1)
COUNT = Range(low=1, integer=True)

LKD_CONFIG_RANGES: dict[str, Range] = {
    "ce_weight": AT_LEAST_0,
    "distill_weight": AT_LEAST_0,
    "temperature": ABOVE_0,
    "dist_beta": AT_LEAST_0,
    "dist_gamma": AT_LEAST_0,
    "dist_temperature": ABOVE_0,
    "dkd_alpha": AT_LEAST_0,
    "dkd_beta": AT_LEAST_0,
    "dkd_warmup_fraction": FRACTION,
    "la_tau": AT_LEAST_0,
    "la_class_prior": Range(low=0, high=1, optional=True),  # each class's fraction
    "ls_temperature": ABOVE_0,
    "ctkd_temperature_min": AT_LEAST_0,
    "ctkd_temperature_range": ABOVE_0,
    "ctkd_lambda_min": AT_LEAST_0,
    "ctkd_lambda_max": AT_LEAST_0,
    "ctkd_curriculum_fraction": FRACTION,
    "loss_hidden_dim": COUNT,
    "feature_weight": AT_LEAST_0,
    "feature_loss_hidden_dim": COUNT,
    "meta_interval": COUNT,
    "meta_warmup_steps": Range(low=0, integer=True),
    "meta_warmup_ratio": Range(low=0, high=1, high_open=True),
    "max_nonfinite_steps": COUNT,
    "meta_learning_rate": ABOVE_0,
    "meta_weight_decay": AT_LEAST_0,
    "meta_max_grad_norm": FINITE,  # <= 0 disables clipping
    "meta_batch_size": Range(low=1, integer=True, optional=True),
    "lookahead_lr": Range(low=0, low_open=True, optional=True),
    "lookahead_steps": COUNT,
    "lookahead_steps_std": AT_LEAST_0,
    "snapshot_interval": COUNT,
    "snapshot_pool_size": Range(low=2, integer=True),
    "snapshot_distance": Range(low=0, integer=True),
    "fd_epsilon": ABOVE_0,
    "lkd_val_fraction": Range(low=0, high=1, low_open=True, high_open=True, optional=True),
    "population_drop_fractions": Range(low=0, high=1, low_open=True, high_open=True, optional=True),
}
"""The range of each numeric field of :class:`~lkd_hf.LKDConfig` (its own; ``TrainingArguments``' are its own), of
each element for a list. The population's factor lists are checked with their pairing rules in ``LKDConfig``."""

LOSS_OPTION_RANGES: dict[str, dict[str, Range]] = {
    "kd": {"temperature": ABOVE_0},
    "dist": {"beta": AT_LEAST_0, "gamma": AT_LEAST_0, "temperature": ABOVE_0},
    "dkd": {"alpha": AT_LEAST_0, "beta": AT_LEAST_0, "temperature": ABOVE_0, "warmup_fraction": FRACTION},
    "la": {"tau": AT_LEAST_0, "class_prior": LKD_CONFIG_RANGES["la_class_prior"]},
    "ls": {"temperature": ABOVE_0, "eps": ABOVE_0},
    "ctkd": {"temperature_min": AT_LEAST_0, "temperature_range": ABOVE_0, "lambda_min": AT_LEAST_0,
             "lambda_max": AT_LEAST_0, "curriculum_fraction": FRACTION},
    "lkd": {"hidden_dim": COUNT, "temperature": ABOVE_0, "dist_beta": AT_LEAST_0, "dist_gamma": AT_LEAST_0,
            "dist_temperature": ABOVE_0},
    "feat": {"hidden_dim": COUNT},
    "at": {"p": ABOVE_0},
}
"""The range of each numeric option of the registered losses in ``LKDConfig.loss_kwargs``, by loss name (the
options the deprecated per-loss fields map to included)."""

NETWORK_RANGES: dict[str, dict[str, Range]] = {
    "LogitLossNet": {"hidden_dim": COUNT, "dist_beta": AT_LEAST_0, "dist_gamma": AT_LEAST_0},  # temperature: its own
    "FeatureLossNet": {"hidden_dim": COUNT},
}
"""The range of each numeric constructor argument of the learned loss networks, by class name (the ``logit_net`` /
``feature_net`` objects of a ``LearnedLoss``'s ``config.json``)."""


def check_ranges(values: Mapping[str, Any] | object, ranges: Mapping[str, Range], owner: str) -> None:
    """Raise ``ValueError`` naming the first value outside its range (for a list or tuple: the first element).

    Args:
        values: a mapping of names to values, or an object whose attributes they are (absent names are skipped).
        ranges: the range of each name, e.g. :data:`LKD_CONFIG_RANGES`.
        owner: how the message names where the values come from, e.g. ``"LKDConfig"``.
    """
    for name, allowed in ranges.items():
        if isinstance(values, Mapping):
            if name not in values:
                continue
            value = values[name]
        elif hasattr(values, name):
            value = getattr(values, name)
        else:
            continue
        for item, label in ([(v, f"{name}[{i}]") for i, v in enumerate(value)] if isinstance(value, (list, tuple))
                            else [(value, name)]):
            if not allowed.allows(item):
                raise ValueError(f"{owner}.{label} must be {allowed}, got {item!r}.")
