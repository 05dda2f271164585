"""The model card of a :class:`~lkd_hf.LearnedLoss` and what it reports of the run that saved it: whether the run
learned the loss or kept it fixed, and, for a population, whose loss it is."""

from __future__ import annotations

import json
from typing import Any

from huggingface_hub import ModelCardData

from .learned_loss_config import feature_channels
from .plots import starting_loss

PLOT_NAME = "learned_loss.png"
TAGS = ["knowledge-distillation", "lkd", "timm", "loss-network"]
METHOD_URL = "https://doi.org/10.1371/journal.pone.0325599"
REPO_URL = "https://github.com/lkd-hf/lkd_hf"


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


def meta_steps(count: int) -> str:
    """``"1 meta step"``, ``"12 meta steps"``.

    Args:
        count: the number of meta steps.
    """
    return f"{count} meta step{'' if count == 1 else 's'}"


def provenance(config: Any, pair: str) -> tuple[str, str]:
    """The card's title and first paragraph: whether the run that saved the loss learned it or kept it fixed.

    Args:
        config: the bundle's :class:`~lkd_hf.LearnedLossConfig`.
        pair: the teacher -> student pair, as the card names it.
    """
    library = f"[`lkd_hf`]({REPO_URL})"
    if config.learned_in_run:
        return f"Learned distillation loss: {pair}", (
            f"A distillation loss learned with [Learnable Knowledge Distillation]({METHOD_URL}) (bi-level "
            f"optimisation against the student's validation loss: {meta_steps(config.meta_steps)}) by {library} while "
            f"distilling {pair}."
        )
    if config.learned_in_run is False:
        return f"Distillation loss: {pair}", (
            f"The distillation loss {library} distilled {pair} with. The run did not learn it: no meta step updated "
            "its loss networks (`freeze_loss`, or no meta step was due), which stayed as the run started with them."
        )
    return f"Distillation loss: {pair}", (
        f"A distillation loss saved by {library} from a run distilling {pair}. The file does not record whether that "
        f"run learned it ([Learnable Knowledge Distillation]({METHOD_URL})) or kept it fixed."
    )


def population_paragraph(config: Any) -> str:
    """What the saved logit loss is to the run's population (empty without one): the students' factors, the shared
    network's own temperature and weight, and whose loss the file holds.

    Args:
        config: the bundle's :class:`~lkd_hf.LearnedLossConfig`.
    """
    factors, member, shared = config.population_factors, config.population_member, config.population_network_knobs
    if factors is None:
        return ""
    when = " at the end of the run" if config.learned_in_run else ""
    network = ("" if shared is None else
               f" (temperature {shared['temperature']:.3f}, weight {shared['weight']:.3f}{when})")
    pairs = ", ".join(f"({t:g}, {w:g})" for t, w in factors)
    temperature_factor, weight_factor = factors[member or 0]
    return (f"\n\nThe run trained a population of {len(factors)} students side by side, each with the shared logit "
            f"loss network{network} at its own factors of the temperature and weight: {pairs}. This file holds the "
            f"loss of student {member or 0} ({'the one kept' if member is not None else 'before one was kept'}): the "
            f"shared network at temperature factor {temperature_factor:g} and weight factor {weight_factor:g}, as "
            f"that student used it.{dropped_sentence(config.population_dropped)}")


def dropped_sentence(dropped: list[int] | None) -> str:
    """The card's sentence on the population's students that stopped training part-way (empty when none did or it
    is not recorded).

    Args:
        dropped: the config's ``population_dropped``.
    """
    if not dropped:
        return ""
    if len(dropped) == 1:
        who = f"Student {dropped[0]} stopped training part-way,"
    else:
        who = f"Students {' and '.join(str(k) for k in sorted(dropped))} stopped training part-way, each"
    return f" {who} the worst on the validation metric of the students still training when it was dropped."


def network_text(loss: Any) -> str:
    """The card's bullet per loss network (what it was initialised as, its temperature and weights) and, for a
    population, what the logit loss is to it.

    Args:
        loss: the learned loss bundle.
    """
    c, lines = loss.config, []
    when = " (at the end of the run)" if c.learned_in_run else ""
    if loss.logit is not None:
        lines.append(
            f"- **logit loss** (`LogitLossNet`, initialised as {starting_loss(loss.logit)[1]}): temperature "
            f"{loss.logit.temperature.item():.3f}, weight {loss.logit.weight.item():.3f}{when}."
        )
    if loss.feature is not None:
        lines.append(
            f"- **feature loss** (`FeatureLossNet`, initialised as MSE (FitNet)): weight "
            f"{loss.feature.weight.item():.3f}{when}; teacher taps {c.teacher_taps} with "
            f"{feature_channels(c.teacher_feature_shapes)} channels (student taps {c.student_taps})."
        )
    return "\n".join(lines) + (population_paragraph(c) if loss.logit is not None else "")


def run_rows(config: Any) -> list[tuple[str, Any]]:
    """The rows of the card's table of the run (``None``: shown as unknown).

    Args:
        config: the bundle's :class:`~lkd_hf.LearnedLossConfig`.
    """
    c, accuracy = config, config.metrics.get("eval_accuracy")
    learning = {None: None, True: f"learned: {meta_steps(c.meta_steps)}", False: "kept fixed: no meta step"}
    rows = [
        ("teacher", c.teacher), ("student", c.student), ("dataset", c.dataset), ("classes", c.num_classes),
        ("loss (`LKDConfig.loss`)", c.loss), ("trainer steps", c.steps),
        ("loss networks in this run", learning[c.learned_in_run]),
    ]
    if c.population_factors is not None:
        kept = "none kept yet" if c.population_member is None else f"student {c.population_member} kept"
        rows.append(("population", f"{len(c.population_factors)} students, {kept}"))
    rows += [
        ("student top-1 accuracy", None if accuracy is None else f"{100 * accuracy:.2f}% (last evaluation, step "
                                                                  f"{c.metrics.get('step')})"),
        ("lkd_hf version", c.lkd_hf_version),
    ]
    return rows


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
    title, intro = provenance(c, pair)
    table = "\n".join(f"| {k} | {'unknown' if v is None else v} |" for k, v in run_rows(c))
    arguments = f"loss={json.dumps(c.loss or 'lkd')}, loss_from={json.dumps(where)}, freeze_loss=True"
    if loss.feature is not None and c.teacher_taps is not None:
        arguments += f", feature_taps={json.dumps(c.student_taps)}, teacher_feature_taps={json.dumps(c.teacher_taps)}"
    networks = network_text(loss)
    plot = (
        f"\n## The loss against the hand-made loss it was initialised as\n\n![the loss vs. the hand-made loss it "
        f"was initialised as]({PLOT_NAME})\n"
        if with_plot else ""
    )
    return f"""---
{data.to_yaml()}
---

# {title}

{intro}

{networks}

## The run

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
