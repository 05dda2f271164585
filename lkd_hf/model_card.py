"""The model card of a :class:`~lkd_hf.LearnedLoss` and what it reports of the run that learned it."""

from __future__ import annotations

import json
from typing import Any

from huggingface_hub import ModelCardData

from .learned_loss_config import feature_channels
from .plots import starting_loss

PLOT_NAME = "learned_loss.png"
TAGS = ["knowledge-distillation", "lkd", "timm", "loss-network"]
METHOD_URL = "https://doi.org/10.1371/journal.pone.0325599"


def last_eval_metrics(log_history: list[dict[str, Any]]) -> dict[str, float]:
    """The last evaluation's metrics in a Trainer's ``state.log_history`` (``eval_*`` without timings, and its
    ``step``); ``{}`` when there was none.

    Args:
        log_history: the Trainer's ``state.log_history``.
    """
    for entry in reversed(log_history):
        metrics = {
            k: float(v) for k, v in entry.items()
            if k.startswith("eval_") and not k.endswith(("_runtime", "_per_second")) and isinstance(v, (int, float))
        }
        if metrics:
            return {**metrics, "step": int(entry.get("step", 0))}
    return {}


def dataset_name(dataset: Any) -> str | None:
    """The name a ``datasets.Dataset`` knows itself by (Hub datasets, loading scripts), else ``None``.

    Args:
        dataset: the training dataset (any object; one without ``info`` gives ``None``).
    """
    info = getattr(dataset, "info", None)
    return getattr(info, "dataset_name", None) or getattr(info, "builder_name", None)


def model_card_text(loss: Any, repo_id: str | None, with_plot: bool) -> str:
    """The model card (YAML metadata and Markdown body) of a learned loss.

    Args:
        loss: the learned loss bundle.
        repo_id: the repo id (or folder) the reuse code loads from (``None``: a placeholder).
        with_plot: embed the plot ``learned_loss.png``.
    """
    c = loss.config
    tags = TAGS + (["feature-distillation"] if loss.feature is not None else [])
    data = ModelCardData(library_name="lkd_hf", tags=tags)
    where = repo_id or "<this repo id or folder>"
    pair = f"`{c.teacher}` → `{c.student}`" if c.teacher and c.student else "an unrecorded teacher → student pair"
    parts = []
    if loss.logit is not None:
        parts.append(
            f"- **logit loss** (`LogitLossNet`): started from {starting_loss(loss.logit)[1]}; learned temperature "
            f"{loss.logit.temperature.item():.3f}, weight {loss.logit.weight.item():.3f}."
        )
    if loss.feature is not None:
        parts.append(
            f"- **feature loss** (`FeatureLossNet`): started from MSE (FitNet); learned weight "
            f"{loss.feature.weight.item():.3f}; teacher taps {c.teacher_taps} with "
            f"{feature_channels(c.teacher_feature_shapes)} channels (student taps {c.student_taps})."
        )
    accuracy = c.metrics.get("eval_accuracy")
    rows = [
        ("teacher", c.teacher), ("student", c.student), ("dataset", c.dataset), ("classes", c.num_classes),
        ("loss (`LKDConfig.loss`)", c.loss), ("trainer steps", c.steps),
        ("student top-1 accuracy", None if accuracy is None else f"{100 * accuracy:.2f}% (last evaluation, step "
                                                                  f"{c.metrics.get('step')})"),
        ("lkd_hf version", c.lkd_hf_version),
    ]
    table = "\n".join(f"| {k} | {'unknown' if v is None else v} |" for k, v in rows)
    arguments = f"loss={json.dumps(c.loss or 'lkd')}, loss_from={json.dumps(where)}, freeze_loss=True"
    if loss.feature is not None and c.teacher_taps is not None:
        arguments += f", feature_taps={json.dumps(c.student_taps)}, teacher_feature_taps={json.dumps(c.teacher_taps)}"
    networks = "\n".join(parts)
    plot = (
        f"\n## The learned loss against its starting point\n\n![learned loss vs. the hand-made loss it started "
        f"from]({PLOT_NAME})\n"
        if with_plot else ""
    )
    return f"""---
{data.to_yaml()}
---

# Learned distillation loss: {pair}

A distillation loss learned with [Learnable Knowledge Distillation]({METHOD_URL}) (bi-level optimisation against
the student's validation loss) by [`lkd_hf`](https://github.com/lkd-hf/lkd_hf) while distilling {pair}.

{networks}

## How it was learned

| | |
|---|---|
{table}
{plot}
## Reuse

Distill another student with this loss, frozen (no meta steps: about the cost of KD):

```python
from lkd_hf import LKDConfig, LKDTrainer

args = LKDConfig(output_dir="out", {arguments})
trainer = LKDTrainer(model=student, teacher=teacher, args=args, train_dataset=train, eval_dataset=test)
trainer.train()
```

or load it with `lkd_hf.LearnedLoss.from_pretrained({json.dumps(where)})` (`.logit`, `.feature`). Loading
checks that the run fits: the same number of classes ({c.num_classes}) for the logit loss, the same teacher taps and
teacher feature channels for the feature loss (a `ValueError` says what differs); another teacher or student name
only warns.
"""
