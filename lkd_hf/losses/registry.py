"""Distillation losses registered by name, so that a config string selects them (torchdistill style).

A registry entry is a *factory*: a callable taking its loss's own keyword arguments and returning an ``nn.Module``.
:func:`build_loss` gives it the options of the run's :class:`~lkd_hf.LKDConfig` for that loss: its entry of
``loss_kwargs`` (e.g. ``loss_kwargs={"dist": {"beta": 2.0}}``) and the shared config fields it was registered with
(``config_fields``, e.g. ``temperature`` for KD). Two kinds of losses:

* ``"logit"``: ``forward(student_logits, teacher_logits, labels)`` returns the (unweighted) scalar distillation
  term; the factory may return ``None`` for losses that need no teacher (``"ce"``).
* ``"feature"``: ``forward(student_feature, teacher_feature)`` returns a scalar for one feature tap, both of shape
  ``(batch, channels, height, width)`` (the student's after its connector).

A loss spec joins at most one logit loss and one feature loss with ``+``, e.g. ``"kd+fitnet"`` or ``"lkd+feat"``.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

from torch import nn

LossFactory = Callable[..., "nn.Module | None"]
LOSS_KINDS = ("logit", "feature")

_LOSSES: dict[str, tuple[str, LossFactory, dict[str, str]]] = {}


def register_loss(
    name: str, *, kind: str = "logit", overwrite: bool = False, config_fields: dict[str, str] | None = None
) -> Callable[[LossFactory], LossFactory]:
    """Register a distillation loss factory under ``name`` (``kind`` is ``"logit"`` or ``"feature"``).

    Example::

        @register_loss("my_kd", config_fields={"temperature": "temperature"})
        def build_my_kd(temperature: float = 4.0, margin: float = 0.0):
            return MyKD(temperature=temperature, margin=margin)

        LKDConfig(loss="my_kd", loss_kwargs={"my_kd": {"margin": 0.5}})

    Args:
        name: the loss's name in loss specs (no ``+``).
        kind: ``"logit"`` or ``"feature"`` (what the built module's ``forward`` takes, see the module docstring).
        overwrite: replace a loss already registered under ``name`` instead of raising ``ValueError``.
        config_fields: keyword arguments of the factory taken from shared config fields, ``{keyword: field}``;
            ``loss_kwargs`` overrides them.

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
        _LOSSES[name] = (kind, factory, dict(config_fields or {}))
        return factory

    return decorator


def available_losses(kind: str | None = None) -> list[str]:
    """Names of the registered losses (of one ``kind``, or all), sorted.

    Args:
        kind: ``"logit"``, ``"feature"`` or ``None`` (all).
    """
    return sorted(n for n, (k, _, _) in _LOSSES.items() if kind is None or k == kind)


def loss_options(name: str, config: Any) -> dict[str, Any]:
    """The keyword arguments a run's config gives the registered loss ``name``: its ``config_fields`` (those the
    config has), overridden by ``config.loss_kwargs[name]``.

    Args:
        name: a registered loss name.
        config: the run's :class:`~lkd_hf.LKDConfig` (or any object with such attributes), or ``None``.
    """
    if config is None:
        return {}
    options = {keyword: getattr(config, f) for keyword, f in _entry(name)[2].items() if hasattr(config, f)}
    options.update((getattr(config, "loss_kwargs", None) or {}).get(name, {}))
    return options


def build_loss(name: str, config: Any = None, **options: Any) -> nn.Module | None:
    """Build the registered loss ``name`` with the options ``config`` gives it (:func:`loss_options`) and
    ``options``; unknown names list the known ones, unknown options the loss's own.

    Args:
        name: a registered loss name (one part of a loss spec).
        config: the run's config (``None``: the factory's defaults).
        **options: keyword arguments of the loss's factory, over the config's.
    """
    _, factory, _ = _entry(name)
    parameters = inspect.signature(factory).parameters
    if list(parameters) == ["config"]:  # a factory of the whole config (before per-loss options)
        warnings.warn(f"The factory of loss {name!r} takes the whole config; give it keyword arguments of its own "
                      "(lkd_hf.register_loss).", FutureWarning, stacklevel=2)
        return factory(config)
    options = {**loss_options(name, config), **options}
    unknown = sorted(set(options) - set(parameters))
    if unknown and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        raise ValueError(f"Loss {name!r} takes no option(s) {', '.join(unknown)} (loss_kwargs); its options: "
                         f"{', '.join(parameters) or 'none'}.")
    return factory(**options)


def _entry(name: str) -> tuple[str, LossFactory, dict[str, str]]:
    if name not in _LOSSES:
        raise ValueError(f"Unknown loss {name!r}. Known losses: {', '.join(available_losses())}.")
    return _LOSSES[name]


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
