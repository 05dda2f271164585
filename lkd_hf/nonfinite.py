"""The guard of the student step: a step whose loss or gradient is not finite does not update the student."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping

import torch
from torch import nn


def nonfinite_names(tensors: Mapping[str, object]) -> list[str]:
    """The names of the tensors (or lists of tensors) that hold a NaN or an infinity.

    Args:
        tensors: named tensors, lists of tensors or other values (ignored).
    """
    named = [
        (name, v)
        for name, value in tensors.items()
        for v in (value if isinstance(value, (list, tuple)) else [value])
        if isinstance(v, torch.Tensor) and v.is_floating_point()
    ]
    if not named:
        return []
    device = named[0][1].device
    finite = torch.stack([torch.isfinite(v).all().to(device) for _, v in named])
    if bool(finite.all()):  # one device synchronisation when everything is finite (every step)
        return []
    return list(dict.fromkeys(name for (name, _), ok in zip(named, finite.tolist()) if not ok))


def gradients_are_finite(parameters: Iterable[torch.Tensor]) -> bool:
    """Whether every gradient of ``parameters`` is finite (parameters without a gradient count as finite).

    Args:
        parameters: the parameters whose ``.grad`` is checked.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    return not grads or bool(torch.isfinite(torch.nn.utils.get_total_norm(grads, 2.0)))


def find_nonfinite(module: nn.Module) -> list[str]:
    """The names of ``module``'s parameters and buffers that hold a NaN or an infinity.

    Args:
        module: the module to check.
    """
    named = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    return nonfinite_names(named)


class NonFiniteWeightsError(RuntimeError):
    """A save (or other action) refused because weights hold a NaN or an infinity."""


def check_finite(module: nn.Module, action: str) -> None:
    """Raise :class:`NonFiniteWeightsError` (a ``RuntimeError``) naming the non-finite weights of ``module``, if any.

    Args:
        module: the module to check.
        action: what is refused, for the message (e.g. ``"saving the student to 'out'"``).
    """
    nonfinite = find_nonfinite(module)
    if nonfinite:
        raise NonFiniteWeightsError(
            f"Refusing {action}: non-finite weights "
            f"({', '.join(nonfinite[:5])}{', ...' if len(nonfinite) > 5 else ''})."
            " Resume from an earlier checkpoint."
        )


class NonFiniteGuard:
    """Counts the student steps skipped for a non-finite loss or gradient, warns once per skipped step naming what
    was not finite, and stops the run after ``max_consecutive`` skipped steps in a row.

    Args:
        max_consecutive: skipped steps in a row after which :meth:`skip` raises.
    """

    def __init__(self, max_consecutive: int) -> None:
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.skipped_since_log = 0
        self.last_skipped: int | None = None
        self._buffers: list[tuple[torch.Tensor, torch.Tensor]] = []

    def begin(self, module: nn.Module) -> None:
        """Keep a copy of ``module``'s floating-point buffers (e.g. BatchNorm statistics) before its forward, which
        :meth:`end` restores when the step is not finite.

        Args:
            module: the student, before its forward on the micro-batch.
        """
        self._buffers = [(b, b.detach().clone()) for b in module.buffers() if b.is_floating_point()]

    def end(self, step: int, tensors: Mapping[str, object], parameters: Iterable[torch.Tensor] | None) -> bool:
        """Check a micro-batch after its forward and backward; returns whether step ``step`` is skipped.

        Args:
            step: the student's global step.
            tensors: named tensors of the micro-batch (inputs, loss terms) that must be finite.
            parameters: the student's parameters, whose gradients must be finite (``None``: not checked, e.g. under
                fp16 loss scaling, whose scaler skips steps with non-finite gradients itself).
        """
        bad = nonfinite_names(tensors)
        if parameters is not None and not gradients_are_finite(parameters):
            bad.append("gradient")
        if bad:
            for buffer, value in self._buffers:
                buffer.copy_(value)
            self.skip(step, bad)
        self._buffers = []
        return self.is_skipping(step)

    def is_skipping(self, step: int) -> bool:
        """Whether step ``step`` is already being skipped (an earlier micro-batch of it was not finite).

        Args:
            step: the student's global step.
        """
        return self.last_skipped == step

    def skip(self, step: int, what: list[str]) -> None:
        """Record that step ``step`` is skipped because of ``what`` (names of non-finite terms or tensors).

        Args:
            step: the student's global step.
            what: what was not finite (e.g. ``["distill", "gradient"]``).

        Raises:
            RuntimeError: after ``max_consecutive`` skipped steps in a row.
        """
        if self.is_skipping(step):
            return
        self.consecutive = self.consecutive + 1 if self.last_skipped == step - 1 else 1
        self.last_skipped = step
        self.skipped_since_log += 1
        warnings.warn(
            f"Step {step}: non-finite {', '.join(what)}; the student step is skipped (the student is unchanged).",
            RuntimeWarning,
            stacklevel=3,
        )
        if self.consecutive >= self.max_consecutive:
            raise RuntimeError(
                f"{self.consecutive} student steps in a row (up to step {step}) had a non-finite loss or gradient "
                f"(last: {', '.join(what)}); training stops. Check the data and the teacher for NaN/inf values, a "
                "temperature or learning rate that overflows, or a learned loss with damaged weights "
                "(max_nonfinite_steps sets how many skipped steps in a row are tolerated)."
            )

    def pop_count(self) -> int:
        """Skipped steps since the last call."""
        count, self.skipped_since_log = self.skipped_since_log, 0
        return count
