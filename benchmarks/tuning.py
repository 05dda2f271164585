"""Search spaces of the accuracy benchmark's tuned hand-made baselines, their edge extension, and paired intervals.

Every tuned method searches a grid of the same size (:data:`BUDGET` trials) over its published knobs, picked by
validation top-1 of seed 0 (ties: the earlier trial). A pick that lies on an edge of the range tried so far is
extended: one more trial per such knob, the knob moved one value outward from the pick (its other knobs kept), until
the pick is inside on every knob or sits on the knob's last listed value (its bound, e.g. a weight of 0, or a stated
cap). Extension trials are counted and reported apart from the budget.

:func:`paired_ci95`: the 95% confidence interval of the mean of per-seed differences (t distribution over seeds).
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

BUDGET = 16
"""Grid trials of every tuned method (extensions come on top, counted apart)."""

Point = dict[str, float]


@dataclass(frozen=True)
class Knob:
    """One searched ``LKDConfig`` field or loss knob (``common.LOSS_KNOBS``, given to ``loss_kwargs``).

    Args:
        field: the ``LKDConfig`` field or loss knob it sets.
        label: its short name in run names (``T``, ``w``, ...).
        values: its grid values, ascending.
        below: extension values beyond the lowest grid value, outward; the last is the knob's bound or cap.
        above: extension values beyond the highest grid value, outward; the last is the knob's bound or cap.
    """

    field: str
    label: str
    values: tuple[float, ...]
    below: tuple[float, ...] = ()
    above: tuple[float, ...] = ()

    def outward(self, value: float, lowest: bool) -> float | None:
        """The next value beyond ``value`` on the low (``lowest``) or high side, ``None`` past the last one."""
        side = (self.values[0], *self.below) if lowest else (self.values[-1], *self.above)
        later = [v for v in side if (v < value if lowest else v > value)]
        return later[0] if later else None


@dataclass(frozen=True)
class SearchSpace:
    """A tuned method's search: the fields every trial sets and the knobs' grid (their product, in order).

    Args:
        prefix: run names start with it (``dist-grid-T4-w1-g1``, ``dist-ext-T32-w1-g1``).
        fixed: ``LKDConfig`` fields and loss knobs of every trial.
        knobs: the searched fields.
        note: where the ranges come from (the tables' caption).
    """

    prefix: str
    fixed: Mapping[str, Any]
    knobs: tuple[Knob, ...]
    note: str = ""

    def grid(self) -> list[Point]:
        """The grid's points, the first knob varying slowest."""
        return [dict(zip((k.field for k in self.knobs), values))
                for values in itertools.product(*(k.values for k in self.knobs))]

    def name(self, point: Point) -> str:
        """The run name of a trial (``-grid-`` for grid points, ``-ext-`` for extensions)."""
        kind = "grid" if point in self.grid() else "ext"
        return f"{self.prefix}-{kind}-" + "-".join(f"{k.label}{point[k.field]:g}" for k in self.knobs)

    def fields(self, point: Point) -> dict[str, Any]:
        """The ``LKDConfig`` fields and loss knobs of a trial."""
        return {**self.fixed, **point}

    def knob_values(self, point: Point) -> dict[str, float]:
        """``{label: value}`` of a trial, for tables."""
        return {k.label: point[k.field] for k in self.knobs}

    def pick(self, trials: list[tuple[Point, float]]) -> Point:
        """The trial with the best score (the earlier one on ties).

        Args:
            trials: ``(point, validation score)`` in the order they were planned.
        """
        best = max(range(len(trials)), key=lambda i: (trials[i][1], -i))
        return trials[best][0]

    def extensions(self, trials: list[tuple[Point, float]]) -> list[Point]:
        """The next round of extension trials: for each knob on which the pick holds the lowest or highest value
        tried so far, the pick with that knob moved one value outward (none past the knob's last value).

        Args:
            trials: ``(point, validation score)`` of every trial so far (the whole grid first).
        """
        pick = self.pick(trials)
        tried = [p for p, _ in trials]
        new = []
        for knob in self.knobs:
            seen = [p[knob.field] for p in tried]
            value = pick[knob.field]
            for lowest, extreme in ((True, min(seen)), (False, max(seen))):
                if value != extreme:
                    continue
                outward = knob.outward(value, lowest)
                point = {**pick, knob.field: outward}
                if outward is not None and point not in tried and point not in new:
                    new.append(point)
        return new


def _weight(label: str, field_name: str, values: tuple[float, ...]) -> Knob:
    """A loss weight: extended down by halving to 1/32 of the lowest value, then 0 (its bound), up by doubling twice
    (the cap)."""
    low, high = values[0], values[-1]
    return Knob(field_name, label, values, below=(*(low / 2**k for k in range(1, 6)), 0.0), above=(high * 2, high * 4))


def _temperature(values: tuple[float, ...]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Extension values of a softmax temperature: halving twice below, doubling twice above (caps)."""
    return (values[0] / 2, values[0] / 4), (values[-1] * 2, values[-1] * 4)


_T = (1.0, 2.0, 4.0, 8.0)
SEARCHES: dict[str, SearchSpace] = {
    "kd-tuned": SearchSpace(
        "kd", dict(loss="kd", ce_weight=1.0),
        (Knob("temperature", "T", _T, *_temperature(_T)), _weight("w", "distill_weight", (0.5, 1.0, 2.0, 4.0))),
        "Hinton et al. 2015: T 1-20 (CIFAR practice T 4, KD weight 0.9 with CE 0.1).",
    ),
    "dist-tuned": SearchSpace(
        "dist", dict(loss="dist", ce_weight=1.0, dist_beta=1.0),
        (Knob("dist_temperature", "T", (2.0, 4.0, 8.0, 16.0), *_temperature((2.0, 4.0, 8.0, 16.0))),
         _weight("w", "distill_weight", (1.0, 2.0)),
         Knob("dist_gamma", "g", (1.0, 4.0), below=(0.5, 0.25, 0.0), above=(8.0, 16.0, 32.0))),
        "Huang et al. 2022: beta = gamma = 1, tau 1 (ImageNet), beta = gamma = 2, tau 4 (CIFAR). The loss is "
        "w * tau^2 * (beta * inter + gamma * intra): (w, beta, gamma) act only through w * beta and w * gamma, so "
        "w and gamma at beta 1 span beta as well.",
    ),
    "dist-tuned-g8": SearchSpace(
        "distg8", dict(loss="dist", ce_weight=1.0, dist_beta=1.0),
        (Knob("dist_temperature", "T", (2.0, 4.0, 8.0, 16.0), *_temperature((2.0, 4.0, 8.0, 16.0))),
         _weight("w", "distill_weight", (1.0, 2.0)),
         Knob("dist_gamma", "g", (1.0, 8.0), below=(0.5, 0.25, 0.0), above=(16.0, 32.0))),
        "A study of DIST's search: dist-tuned's grid with gamma {1, 8} (8: the intra-class weight the shipped loss "
        "uses).",
    ),
    "dist-tuned-wg": SearchSpace(
        "distwg", dict(loss="dist", ce_weight=1.0, dist_beta=1.0),
        (Knob("dist_temperature", "T", (2.0, 4.0), *_temperature((2.0, 4.0))),
         _weight("w", "distill_weight", (1 / 16, 1 / 8, 1 / 4, 1 / 2)),
         Knob("dist_gamma", "g", (1.0, 8.0), below=(0.5, 0.25, 0.0), above=(16.0, 32.0))),
        "A study of DIST's search: small weights at low temperature with gamma {1, 8}, the region where a weak "
        "teacher's tuned DIST and population student lie.",
    ),
    "dkd-tuned": SearchSpace(
        "dkd", dict(loss="dkd", ce_weight=1.0, distill_weight=1.0, temperature=4.0, dkd_warmup_fraction=20 / 240),
        (_weight("a", "dkd_alpha", (0.5, 1.0, 2.0, 4.0)), _weight("b", "dkd_beta", (1.0, 2.0, 4.0, 8.0))),
        "Zhao et al. 2022: alpha 1, beta 8 (CIFAR-100, T 4), beta 0.5 (ImageNet, T 1), beta ablated over 1-10; "
        "the loss warmed up linearly over the first 20 of 240 epochs (1/12 of the run).",
    ),
    "ls-tuned": SearchSpace(
        "ls", dict(loss="ls", ce_weight=1.0),
        (Knob("ls_temperature", "T", _T, *_temperature(_T)), _weight("w", "distill_weight", (1.0, 3.0, 9.0, 27.0))),
        "Sun et al. 2024: KD + logit standardization, base T 2, KD weight 9 (CIFAR-100).",
    ),
    "ctkd-tuned": SearchSpace(
        "ctkd", dict(loss="ctkd", ce_weight=1.0),
        (_weight("l", "ctkd_lambda_max", (0.25, 0.5, 1.0, 2.0)), _weight("w", "distill_weight", (0.5, 1.0, 2.0, 4.0))),
        "Li et al. 2023: gradient-reversal strength lambda rising to 1 by a cosine curriculum; KD weight 0.9 "
        "with CE 0.1.",
    ),
    "la-tuned": SearchSpace(
        "la", dict(loss="la", ce_weight=0.0, distill_weight=1.0),
        (Knob("la_tau", "tau", tuple(0.25 * i for i in range(16)), above=(4.0, 4.5, 5.0, 6.0, 8.0)),),
        "Menon et al. 2021: the logit-adjusted cross-entropy in place of the cross-entropy, no teacher; tau = 1 "
        "is Fisher-consistent for the balanced error, tau 0 is plain CE (its bound).",
    ),
}
"""The tuned hand-made baselines: tuned method -> its search space (each grid has :data:`BUDGET` points)."""


def paired_ci95(values: Iterable[float], reference: Iterable[float]) -> dict[str, float]:
    """The mean of ``values - reference`` (paired by position, e.g. by seed) and its two-sided 95% confidence
    interval, ``mean ± t(0.975, n - 1) * std / sqrt(n)``; the interval is ``nan`` below two pairs.

    Args:
        values: one value per seed.
        reference: the reference's value for the same seeds, in the same order.
    """
    from scipy.stats import t

    differences = [a - b for a, b in zip(values, reference, strict=True)]
    n = len(differences)
    mean = statistics.fmean(differences)
    if n < 2:
        return dict(mean=mean, low=math.nan, high=math.nan, n=n)
    half = t.ppf(0.975, n - 1) * statistics.stdev(differences) / math.sqrt(n)
    return dict(mean=mean, low=mean - half, high=mean + half, n=n)


def format_ci95(ci: dict[str, float] | None) -> str:
    """A :func:`paired_ci95` result as ``"+mean [+low, +high]"`` with two decimals; ``"-"`` for ``None``.

    Args:
        ci: the interval, or ``None`` where none was computed.
    """
    return f"{ci['mean']:+.2f} [{ci['low']:+.2f}, {ci['high']:+.2f}]" if ci else "-"
