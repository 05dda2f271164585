"""Distillation losses registered by name, so that a config string selects one (torchdistill style).

A registry entry is a *factory*: a callable taking the run's :class:`~lkd_hf.LKDConfig` and returning an
``nn.Module`` whose ``forward(student_logits, teacher_logits, labels)`` returns the (unweighted) scalar
distillation term, or ``None`` for losses that need no teacher (``"ce"``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from torch import nn

if TYPE_CHECKING:
    from ..config import LKDConfig

LossFactory = Callable[["LKDConfig"], "nn.Module | None"]

_LOGIT_LOSSES: dict[str, LossFactory] = {}


def register_loss(name: str, *, overwrite: bool = False) -> Callable[[LossFactory], LossFactory]:
    """Register a logit-distillation loss factory under ``name``.

    Example::

        @register_loss("my_kd")
        def build_my_kd(config):
            return MyKD(temperature=config.temperature)
    """

    if "+" in name:
        raise ValueError(f"Loss names cannot contain '+' (reserved for combinations): {name!r}")

    def decorator(factory: LossFactory) -> LossFactory:
        if name in _LOGIT_LOSSES and not overwrite:
            raise ValueError(f"A loss named {name!r} is already registered; pass overwrite=True to replace it.")
        _LOGIT_LOSSES[name] = factory
        return factory

    return decorator


def available_losses() -> list[str]:
    """Names of all registered logit losses, sorted."""
    return sorted(_LOGIT_LOSSES)


def build_loss(name: str, config: "LKDConfig") -> nn.Module | None:
    """Build the registered loss ``name`` for ``config``; unknown names list the known ones."""
    if name not in _LOGIT_LOSSES:
        raise ValueError(f"Unknown loss {name!r}. Known losses: {', '.join(available_losses())}.")
    return _LOGIT_LOSSES[name](config)
