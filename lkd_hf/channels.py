"""Per-channel normalisation statistics adapted to a model's number of input channels (no package imports)."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

__all__ = ["adapt_channel_stats"]


def adapt_channel_stats(values: float | Sequence[float], channels: int) -> tuple[float, ...]:
    """``mean`` / ``std`` values for an input of ``channels`` channels.

    The rule of timm's loaders (``timm.data.loader.adapt_to_chs``): values that already match ``channels`` are
    kept, a single value is repeated, any other number of values is replaced by their mean, repeated. So the
    3-channel ImageNet statistics become their average for a 1-channel model, and a 1-channel ``(0.5,)``
    becomes ``(0.5, 0.5, 0.5)`` for a 3-channel model.

    Args:
        values: one value or a sequence of per-channel values (e.g. a data config's ``mean``).
        channels: the number of input channels of the model; a positive integer.

    Returns:
        ``channels`` floats.

    Raises:
        ValueError: ``channels`` is not a positive integer, or ``values`` is empty.
    """
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be a positive integer, got {channels!r}.")
    stats = (float(values),) if isinstance(values, numbers.Real) else tuple(float(v) for v in values)
    if not stats:
        raise ValueError("Cannot adapt an empty sequence of channel statistics.")
    if len(stats) == channels:
        return stats
    return (sum(stats) / len(stats),) * channels
