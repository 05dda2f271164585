"""The settings that shape what a run learns, saved in each checkpoint (``lkd_run.json``) and compared with a resumed
run's: a difference that changes what is learned, or how, is an error naming each field."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from ..losses.registry import loss_options, parse_loss_spec

RUN_SETTINGS_NAME = "lkd_run.json"

SETTINGS_FIELDS: dict[str, str] = {
    "loss": "the loss spec (LKDConfig.loss)",
    "lkd_init": "the start of the learned logit loss (LKDConfig.lkd_init, or loss_kwargs['lkd']['init'])",
    "loss_from": "the learned loss loaded with LKDConfig.loss_from (the checksum of its weights)",
    "freeze_loss": "whether the learned loss is kept fixed (LKDConfig.freeze_loss)",
    "logit_net": "the learned logit loss network's constructor arguments",
    "feature_net": "the learned feature loss network's constructor arguments",
    "student_taps": "the student's feature taps (LKDConfig.feature_taps)",
    "teacher_taps": "the teacher's feature taps (LKDConfig.teacher_feature_taps)",
    "population": "the population's (temperature factor, weight factor) pairs, one per student",
    "population_drop": "when the population drops its worst students (LKDConfig.population_drop_fractions)",
}
"""The settings a checkpoint records, and what each is."""


def run_settings(args: Any, distiller: Any, drop_fractions: Sequence[float], loss_from: Any = None) -> dict[str, Any]:
    """A run's settings that shape what it learns (:data:`SETTINGS_FIELDS`), as JSON values.

    Args:
        args: the run's :class:`~lkd_hf.LKDConfig`.
        distiller: the run's :class:`~lkd_hf.Distiller`, as built (its logit / feature loss modules, whose
            constructor arguments are recorded for a loss network (its ``_hub_mixin_config``), the resolved feature
            taps and the population's factor pairs).
        drop_fractions: when the population drops its worst students (:func:`~lkd_hf.population.population_drops`).
        loss_from: the :class:`~lkd_hf.LearnedLoss` loaded with ``loss_from`` (``None``: none).
    """
    learned_logit = parse_loss_spec(args.loss).logit == "lkd"
    run = distiller.describe()
    return {
        "loss": args.loss,
        "lkd_init": loss_options("lkd", args).get("init") if learned_logit and loss_from is None else None,
        "loss_from": None if loss_from is None else weights_digest(loss_from),
        "freeze_loss": bool(args.freeze_loss),
        "logit_net": _constructor_arguments(distiller.objective.distill_loss),
        "feature_net": _constructor_arguments(distiller.objective.feature_loss),
        "student_taps": run.get("student_taps"),
        "teacher_taps": run.get("teacher_taps"),
        "population": [list(pair) for pair in distiller.factors],
        "population_drop": list(drop_fractions) or None,  # None: no drops (as checkpoints without the key)
    }


def _constructor_arguments(module: Any) -> dict[str, Any] | None:
    """A loss network's constructor arguments (``None`` for a module that records none, or ``None``)."""
    arguments = getattr(module, "_hub_mixin_config", None)
    return None if arguments is None else dict(arguments)


def weights_digest(module: Any) -> str:
    """The SHA-256 of a module's weights (names, shapes, dtypes and values), to tell one learned loss from another.

    Args:
        module: an ``nn.Module``.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return f"sha256:{digest.hexdigest()}"


def save_run_settings(folder: str, settings: dict[str, Any]) -> None:
    """Write ``settings`` (keys of :data:`SETTINGS_FIELDS`) as ``<folder>/lkd_run.json``, replacing the file in one
    step.

    Args:
        folder: a checkpoint folder.
        settings: the run's settings (:data:`SETTINGS_FIELDS`; JSON values).
    """
    path = os.path.join(folder, RUN_SETTINGS_NAME)
    with open(f"{path}.tmp-{os.getpid()}", "w") as f:
        json.dump(settings, f, indent=1)
    os.replace(f"{path}.tmp-{os.getpid()}", path)


def settings_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The differences between a checkpoint's settings and a resumed run's that change what is learned, one line
    each (field, saved and current value). A learned logit loss network's initial ``temperature`` is no difference
    when the loss is learned: the resumed run restores the learned one.

    Args:
        saved: the checkpoint's settings.
        current: the resumed run's.
    """
    differences = []
    for field in SETTINGS_FIELDS:
        before, now = saved.get(field), current.get(field)
        if field == "logit_net" and before and now and saved.get("freeze_loss") is False:
            before, now = ({k: v for k, v in args.items() if k != "temperature"} for args in (before, now))
        if _normalised(before) != _normalised(now):
            differences.append(f"{field} ({SETTINGS_FIELDS[field]}): saved {saved.get(field)!r}, "
                               f"now {current.get(field)!r}")
    return differences


def _normalised(value: Any) -> Any:
    """``value`` as JSON would give it back (tuples as lists)."""
    return json.loads(json.dumps(value))


def check_resume_settings(checkpoint: str, current: dict[str, Any]) -> None:
    """Refuse to resume from ``checkpoint`` with settings that change what is learned (:func:`settings_differences`),
    naming each field, its saved and its current value, and how to proceed; a checkpoint without ``lkd_run.json``
    (written by an older ``lkd_hf``) resumes with a warning that its settings cannot be compared.

    Args:
        checkpoint: the checkpoint folder.
        current: the resumed run's settings.
    """
    path = os.path.join(checkpoint, RUN_SETTINGS_NAME)
    if not os.path.isfile(path):
        warnings.warn(f"{checkpoint} records no {RUN_SETTINGS_NAME}: this run's loss settings cannot be compared with "
                      "the checkpoint's. Resume with the settings of the run that wrote it.", UserWarning, stacklevel=3)
        return
    with open(path) as f:
        saved = json.load(f)
    differences = settings_differences(saved, current)
    if differences:
        raise ValueError(
            f"Cannot resume from {checkpoint}: this run's settings differ from the checkpoint's in what is learned, "
            "or how:\n- " + "\n- ".join(differences) + "\nResume with the checkpoint's settings (saved in "
            f"{path}), or start a new run in another output_dir."
        )
