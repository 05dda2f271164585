"""Plots of learned losses against the hand-made losses they started from (matplotlib is optional).

:func:`plot_learned_loss` draws a learned :class:`~lkd_hf.LogitLossNet` against the hand-made loss it was initialised
to (its ``base``: Hinton KD or DIST, at its initial temperature: its exact starting point) and a learned
:class:`~lkd_hf.FeatureLossNet` against MSE (FitNet). It uses matplotlib's object-oriented API (no ``pyplot``, no
global backend change); without matplotlib it logs a warning and returns ``None``.
"""

from __future__ import annotations

import copy
import importlib.util
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import logging

from .losses.networks import FeatureLossNet, LogitLossNet
from .losses.logit import DISTLoss, KDLoss, kd_loss

logger = logging.get_logger(__name__)

DEFAULT_TEMPERATURE = 4.0  # LogitLossNet's default initial temperature


def matplotlib_available() -> bool:
    """Whether matplotlib is installed (:func:`plot_learned_loss` draws nothing without it)."""
    return importlib.util.find_spec("matplotlib") is not None


def initial_temperature(net: LogitLossNet) -> float:
    """The temperature a :class:`~lkd_hf.LogitLossNet` was created with (where its learning started).

    Args:
        net: the logit loss network; one without a saved config gives :data:`DEFAULT_TEMPERATURE`.
    """
    config = getattr(net, "_hub_mixin_config", None) or {}
    return float(config.get("temperature", DEFAULT_TEMPERATURE))


def starting_loss(net: LogitLossNet) -> tuple[nn.Module, str]:
    """The hand-made loss a :class:`~lkd_hf.LogitLossNet` equals at initialisation (its ``base`` at its initial
    temperature) and a label for it, e.g. ``"KD, T=4"``.

    Args:
        net: the logit loss network.
    """
    t0 = initial_temperature(net)
    if net.base == "dist":
        name = f"DIST (beta={net.dist_beta:g}, gamma={net.dist_gamma:g}), T={t0:g}"
        return DISTLoss(net.dist_beta, net.dist_gamma, t0), name
    return KDLoss(t0), f"KD, T={t0:g}"


def synthetic_teacher_logits(num_classes: int = 10) -> tuple[torch.Tensor, int]:
    """A fixed, plausible teacher output (label 0, about 90% confident, graded non-target logits) for plots.

    Args:
        num_classes: number of classes (length of the returned 1-D logits).
    """
    logits = torch.linspace(2.0, -2.0, num_classes)
    logits[0] = 6.0
    return logits, 0


@torch.no_grad()
def plot_learned_loss(
    loss: LogitLossNet | FeatureLossNet | Any,
    path: str,
    *,
    teacher_logits: torch.Tensor | None = None,
    label: int | None = None,
    title: str | None = None,
) -> str | None:
    """Plot a learned loss against the hand-made loss it started from and save the figure as ``path`` (PNG).

    Panels, for the networks the loss holds:

    * logit loss network, for one fixed teacher distribution (``teacher_logits`` of one example and its ``label``;
      default: :func:`synthetic_teacher_logits`): (a) the learned loss and its starting loss (:func:`starting_loss`:
      KD or DIST at the initial temperature) against the student's logit margin on the label (other logits 0);
      (b) both against ``KL(teacher || student)`` at that temperature, for students softer (``s * z_t``, ``s < 1``)
      and sharper (``s > 1``) than the teacher. The losses are evaluated on the batch of the ``C`` cyclic class
      rotations of that example (the same per-sample value for KD; DIST's intra-class term needs a batch);
    * feature loss network: (c) the learned feature loss against MSE (its initialisation) for a fixed random teacher
      map ``t`` and students ``t + a * d`` along a fixed random direction ``d``.

    Args:
        loss: a :class:`~lkd_hf.LearnedLoss` (or any object with ``logit`` / ``feature`` loss networks), or a
            bare :class:`~lkd_hf.LogitLossNet` / :class:`~lkd_hf.FeatureLossNet`. Load a saved one first:
            ``plot_learned_loss(LearnedLoss.from_pretrained(folder_or_repo_id), path)``.
        path: where to write the PNG.
        teacher_logits / label: the teacher distribution of the logit panels (1-D logits and the true class).
        title: figure title.

    Returns:
        ``path``, or ``None`` when matplotlib is not installed (a warning is logged).

    Raises:
        TypeError: ``loss`` is neither a loss network nor holds one (e.g. a path: load it first, see ``loss``).
    """
    logit_net, feature_net = _networks(loss)
    try:
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning("matplotlib is not installed: skipping the plot of the learned loss (pip install matplotlib).")
        return None
    panels = (2 if logit_net is not None else 0) + (1 if feature_net is not None else 0)
    fig = Figure(figsize=(5 * panels, 4))
    axes = fig.subplots(1, panels, squeeze=False)[0]
    if logit_net is not None:
        if teacher_logits is None:
            teacher_logits, label = synthetic_teacher_logits()
        _plot_logit(_cpu_copy(logit_net), teacher_logits.detach().cpu(), int(label or 0), axes[0], axes[1])
    if feature_net is not None:
        _plot_feature(_cpu_copy(feature_net), axes[-1])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def _cpu_copy(net: nn.Module) -> nn.Module:
    """An eval-mode CPU copy (plotting must not move or switch the caller's network)."""
    return copy.deepcopy(net).cpu().eval()


def _networks(loss: Any) -> tuple[LogitLossNet | None, FeatureLossNet | None]:
    """The logit and feature loss networks of ``loss``: a network itself, or a bundle's ``logit`` / ``feature``."""
    if isinstance(loss, LogitLossNet):
        return loss, None
    if isinstance(loss, FeatureLossNet):
        return None, loss
    logit, feature = getattr(loss, "logit", None), getattr(loss, "feature", None)
    holds_networks = logit is not None or feature is not None
    if holds_networks and isinstance(logit, LogitLossNet | None) and isinstance(feature, FeatureLossNet | None):
        return logit, feature
    hint = " (load it first: plot_learned_loss(LearnedLoss.from_pretrained(...), path))"
    raise TypeError(
        f"Cannot plot a {type(loss).__name__}: pass a LearnedLoss, a LogitLossNet or a FeatureLossNet"
        + (hint if isinstance(loss, (str, os.PathLike)) else "") + "."
    )


def _rotations(logits: torch.Tensor, label: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``C`` cyclic class rotations of one example's logits ``(C,)``, as a batch ``(C, C)``, and their labels."""
    num_classes = logits.shape[-1]
    batch = torch.stack([logits.roll(k) for k in range(num_classes)])
    return batch, (label + torch.arange(num_classes)) % num_classes


def _plot_logit(net: LogitLossNet, teacher_logits: torch.Tensor, label: int, ax_a, ax_b) -> None:
    t0 = initial_temperature(net)
    reference, reference_name = starting_loss(net)
    z_t = teacher_logits.float()
    teacher_batch, labels = _rotations(z_t, label)

    def losses(z_s: torch.Tensor) -> tuple[float, float]:
        student_batch, _ = _rotations(z_s, label)
        return float(net(student_batch, teacher_batch, labels)), float(reference(student_batch, teacher_batch, labels))

    margins = torch.linspace(-5, 15, 81)
    curves = [losses(m * F.one_hot(torch.tensor(label), z_t.shape[-1]).float()) for m in margins]
    learned = f"learned (T={float(net.temperature):.2f}, w={float(net.weight):.2f})"
    ax_a.plot(margins, [c[0] for c in curves], label=learned)
    ax_a.plot(margins, [c[1] for c in curves], "--", label=f"{reference_name} (its initialisation)")
    ax_a.set_xlabel("student logit margin on the label (others 0)")
    ax_a.set_ylabel("distillation loss")
    ax_a.set_title("(a) loss vs the student's margin")
    ax_a.legend(fontsize=8)
    for scales, style, name in ((torch.linspace(0, 1, 41), "-", "softer"), (torch.linspace(1, 3, 41), ":", "sharper")):
        points = [(float(kd_loss(s * z_t[None], z_t[None], t0)) / t0**2, *losses(s * z_t)) for s in scales]
        ax_b.plot([p[0] for p in points], [p[1] for p in points], style, color="tab:blue",
                  label=f"learned, student {name} than the teacher")
        ax_b.plot([p[0] for p in points], [p[2] for p in points], style, color="tab:orange",
                  label=f"{reference_name}, student {name}")
    ax_b.set_xlabel(f"KL(teacher || student) at T={t0:g} (student logits = s x teacher logits)")
    ax_b.set_title("(b) loss vs teacher-student KL")
    ax_b.legend(fontsize=7)


def _plot_feature(net: FeatureLossNet, ax) -> None:
    generator = torch.Generator().manual_seed(0)
    teacher = torch.randn(2, 16, 4, 4, generator=generator)
    direction = torch.randn(2, 16, 4, 4, generator=generator)
    points = []
    for a in torch.linspace(0, 2, 41):
        student = teacher + a * direction
        points.append((float(net.mse_reference(student, teacher)), float(net(student, teacher))))
    ax.plot([p[0] for p in points], [p[1] for p in points], label=f"learned (w={float(net.weight):.2f})")
    ax.plot([p[0] for p in points], [p[0] for p in points], "--", label="MSE / FitNet (its initialisation)")
    ax.set_xlabel("MSE(student, teacher) (student = t + a d, random t, d)")
    ax.set_ylabel("feature loss")
    ax.set_title("(c) feature loss vs MSE")
    ax.legend(fontsize=8)
