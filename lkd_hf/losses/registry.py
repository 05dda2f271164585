"""Distillation losses registered by name, so that a config string selects them (torchdistill style).

A registry entry is a *factory*: a callable taking the run's :class:`~lkd_hf.LKDConfig` and returning an
``nn.Module``. Two kinds of losses:

* ``"logit"``: ``forward(student_logits, teacher_logits, labels)`` returns the (unweighted) scalar distillation
  term; the factory may return ``None`` for losses that need no teacher (``"ce"``).
* ``"feature"``: ``forward(student_feature, teacher_feature)`` returns a scalar for one feature tap, both of shape
  ``(batch, channels, height, width)`` (the student's after its connector).

A loss spec joins at most one logit loss and one feature loss with ``+``, e.g. ``"kd+fitnet"`` or ``"lkd+feat"``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, NamedTuple

from torch import nn

if TYPE_CHECKING:
    from ..config import LKDConfig

LossFactory = Callable[["LKDConfig"], "nn.Module | None"]
LOSS_KINDS = ("logit", "feature")

_LOSSES: dict[str, tuple[str, LossFactory]] = {}


def register_loss(
    name: str, *, kind: str = "logit", overwrite: bool = False
) -> Callable[[LossFactory], LossFactory]:
    """Register a distillation loss factory under ``name`` (``kind`` is ``"logit"`` or ``"feature"``).

    Example::

        @register_loss("my_kd")
        def build_my_kd(config):
            return MyKD(temperature=config.temperature)

    Args:
        name: the loss's name in loss specs (no ``+``).
        kind: ``"logit"`` or ``"feature"`` (what the built module's ``forward`` takes, see the module docstring).
        overwrite: replace a loss already registered under ``name`` instead of raising ``ValueError``.

    Returns:
        A decorator that registers the factory and returns it unchanged.
    """
    if "+" in name:
        raise ValueError(f"Loss names cannot contain '+' (reserved for combinations): {name!r}")
    if kind not in LOSS_KINDS:
        raise ValueError(f"kind must be one of {LOSS_KINDS}, got {kind!r}")

    def decorator(factory: LossFactory) -> LossFactory:
        if name in _LOSSES and not overwrite:
            raise ValueError(f"A loss named {name!r} is already registered; pass overwrite=True to replace it.")
        _LOSSES[name] = (kind, factory)
        return factory

    return decorator


def available_losses(kind: str | None = None) -> list[str]:
    """Names of the registered losses (of one ``kind``, or all), sorted.

    Args:
        kind: ``"logit"``, ``"feature"`` or ``None`` (all).
    """
    return sorted(n for n, (k, _) in _LOSSES.items() if kind is None or k == kind)


def build_loss(name: str, config: "LKDConfig") -> nn.Module | None:
    """Build the registered loss ``name`` for ``config``; unknown names list the known ones.

    Args:
        name: a registered loss name (one part of a loss spec).
        config: the run's config, passed to the loss's factory.
    """
    if name not in _LOSSES:
        raise ValueError(f"Unknown loss {name!r}. Known losses: {', '.join(available_losses())}.")
    return _LOSSES[name][1](config)


class LossSpec(NamedTuple):
    """A parsed loss spec: the logit loss name and the feature loss name (either may be ``None``)."""

    logit: str | None
    feature: str | None


def parse_loss_spec(spec: str) -> LossSpec:
    """Split ``"kd+fitnet"`` into ``LossSpec(logit="kd", feature="fitnet")``, checking names and kinds.

    Args:
        spec: registered loss names joined with ``+``, at most one of each kind.

    Raises:
        ValueError: an unknown name, or two losses of one kind.
    """
    names = [n.strip() for n in spec.split("+")]
    by_kind: dict[str, str] = {}
    for name in names:
        if name not in _LOSSES:
            raise ValueError(f"Unknown loss {name!r} in {spec!r}. Known losses: {', '.join(available_losses())}.")
        kind = _LOSSES[name][0]
        if kind in by_kind:
            raise ValueError(
                f"Loss spec {spec!r} names two {kind} losses ({by_kind[kind]!r} and {name!r}); combine at most one "
                f"logit loss ({', '.join(available_losses('logit'))}) with one feature loss "
                f"({', '.join(available_losses('feature')) or 'none registered'})."
            )
        by_kind[kind] = name
    return LossSpec(by_kind.get("logit"), by_kind.get("feature"))
