"""Evaluation metrics for ``Trainer(compute_metrics=...)``: top-1, top-k and balanced accuracy from logits.

The computation lives in one place, the ``evaluate`` metric module ``lkd_hf/metric_modules/topk_accuracy``
(shipped with the package and loaded by local path, so it works offline, without the Hugging Face Hub)::

    import evaluate
    from lkd_hf.metrics import TOPK_METRIC_PATH

    topk = evaluate.load(TOPK_METRIC_PATH)
    topk.compute(predictions=logits, references=labels, k=5)
    # {"accuracy": ..., "top5_accuracy": ..., "balanced_accuracy": ...}
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import evaluate
import numpy as np
from transformers import EvalPrediction

__all__ = ["TOPK_METRIC_PATH", "build_compute_metrics", "load_topk_accuracy"]

TOPK_METRIC_PATH: str = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "metric_modules", "topk_accuracy"
)
"""Absolute path of the top-k accuracy metric module (a directory holding ``topk_accuracy.py``)."""


@lru_cache(maxsize=1)
def load_topk_accuracy() -> evaluate.EvaluationModule:
    """The top-1 / top-k / balanced accuracy metric module, loaded once per process from
    :data:`TOPK_METRIC_PATH` (no Hub).

    It is kept in memory (``keep_in_memory=True``): no cache files or locks on disk.
    """
    return evaluate.load(TOPK_METRIC_PATH, keep_in_memory=True)


def _first(value: Any) -> Any:
    """The first element of a tuple of outputs (e.g. ``(logits, features)``), else the value itself."""
    while isinstance(value, tuple) and value:
        value = value[0]
    return value


def build_compute_metrics(num_classes: int, k: int = 5) -> Callable[[EvalPrediction], dict[str, float]]:
    """A ``compute_metrics`` function for the ``Trainer``.

    It returns ``{"accuracy": ..., "balanced_accuracy": ...}`` (top-1 accuracy, and the mean top-1 recall over
    the classes present in the evaluated labels: classes absent from them are left out of the mean, so it is
    never NaN), plus ``{f"top{k}_accuracy": ...}`` when ``num_classes > k`` (otherwise top-k accuracy would
    trivially be 1). The ``Trainer`` logs them as ``eval_accuracy``, ``eval_balanced_accuracy``, ...

    The returned function takes an :class:`~transformers.EvalPrediction` (or a ``(predictions, label_ids)``
    pair) whose ``predictions`` are logits of shape ``(N, num_classes)``, a numpy array or a tuple whose first
    element is the logits (models that also return features).

    Args:
        num_classes: number of classes of the model (the logits' last dimension); a positive integer.
        k: the k of top-k accuracy; a positive integer.

    Raises:
        ValueError: ``num_classes`` or ``k`` is not positive. The returned function raises it for logits of
            another shape or missing labels.
    """
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
    if int(k) < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}.")
    num_classes, k = int(num_classes), int(k)
    topk_key = f"top{k}_accuracy"

    def compute_metrics(eval_pred: EvalPrediction) -> dict[str, float]:
        if isinstance(eval_pred, EvalPrediction):
            predictions, label_ids = eval_pred.predictions, eval_pred.label_ids
        else:
            predictions, label_ids = eval_pred[0], eval_pred[1]
        if label_ids is None:
            raise ValueError(
                "compute_metrics needs the labels: evaluate on a dataset with a 'labels' column."
            )
        logits = np.asarray(_first(predictions), dtype=np.float32)
        labels = np.asarray(_first(label_ids)).reshape(-1)
        if logits.ndim != 2 or logits.shape[-1] != num_classes:
            raise ValueError(
                f"Expected logits of shape (N, {num_classes}), got {logits.shape}; is the model's "
                f"num_classes {num_classes}?"
            )
        result = load_topk_accuracy().compute(predictions=logits, references=labels, k=k)
        metrics = {"accuracy": float(result["accuracy"])}
        if num_classes > k:
            metrics[topk_key] = float(result[topk_key])
        metrics["balanced_accuracy"] = float(result["balanced_accuracy"])
        return metrics

    return compute_metrics
