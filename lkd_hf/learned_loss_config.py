"""The configuration of a :class:`~lkd_hf.LearnedLoss` (its ``config.json``): :class:`LearnedLossConfig`, its
schema and the validation of a loaded file, which names the file, the field and what to do."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .version import __version__

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
LEGACY_FEATURE_SUBDIR = "feature"  # the layout before bundles: LogitLossNet in the folder, FeatureLossNet in feature/


@dataclass
class LearnedLossConfig:
    """What a :class:`LearnedLoss` holds and how it was learned (its ``config.json``). ``None``: not known.

    Attributes:
        logit_net / feature_net: constructor arguments of the :class:`~lkd_hf.LogitLossNet` (``base``, initial
            ``temperature``, ...) / :class:`~lkd_hf.FeatureLossNet`; ``None`` when the bundle has no such network.
        loss: the run's ``LKDConfig.loss`` (pass it again with ``loss_from``), e.g. ``"lkd"``, ``"lkd+feat"``.
        teacher / student: timm architecture names.
        num_classes: classes of the teacher and student.
        student_taps / teacher_taps: the resolved feature taps (stage indices or module names) of the feature loss.
        student_feature_shapes / teacher_feature_shapes: ``[C, H, W]`` per tap; the feature loss saw teacher-shaped
            maps (the student's went through connectors).
        dataset: the training dataset, when known.
        steps: the trainer's ``global_step`` when saved (meta steps for ``LKDTrainer.learn_loss``).
        metrics: the student's last evaluation metrics (``eval_accuracy``, ...) and their ``step``.
        lkd_hf_version / format_version: the writing ``lkd_hf`` and the bundle format.
        meta_steps: the meta steps that updated the loss networks in the run that saved them; 0: the run kept them
            fixed (``freeze_loss``, or no meta step was due).
        population_factors: the ``[temperature factor, weight factor]`` of each student of the run's population
            (``None``: the run trained a single student).
        population_member: the index of the population's student kept at the end of training; ``None`` while the
            population trains (the networks are then the first student's, at factors 1.0).
        population_network_knobs: the ``temperature`` and ``weight`` of the logit loss network the students shared,
            before each student's factors; the networks saved are the kept student's: that network at its factors.
        population_dropped: the indices of the population's students that stopped training part-way (each the worst
            of those still training when dropped; ``population_drop_fractions``); ``[]``: none stopped.

    ``meta_steps`` and the ``population_*`` fields are written only when known (files written before them lack them,
    and load with ``None``).
    """

    logit_net: dict[str, Any] | None = None
    feature_net: dict[str, Any] | None = None
    loss: str | None = None
    teacher: str | None = None
    student: str | None = None
    num_classes: int | None = None
    student_taps: list[int | str] | None = None
    teacher_taps: list[int | str] | None = None
    student_feature_shapes: list[list[int]] | None = None
    teacher_feature_shapes: list[list[int]] | None = None
    dataset: str | None = None
    steps: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    lkd_hf_version: str | None = None
    format_version: int = FORMAT_VERSION
    meta_steps: int | None = None
    population_factors: list[list[float]] | None = None
    population_member: int | None = None
    population_network_knobs: dict[str, float] | None = None
    population_dropped: list[int] | None = None

    @property
    def learned_in_run(self) -> bool | None:
        """Whether meta steps updated the loss networks in the run that saved them (``None``: not recorded)."""
        return None if self.meta_steps is None else self.meta_steps > 0

    def to_json(self) -> dict[str, Any]:
        """The ``config.json`` content: every field, but the optional ones (:data:`OPTIONAL_FIELDS`) only when set."""
        return {name: value for name, value in asdict(self).items() if value is not None or name not in OPTIONAL_FIELDS}


LOAD_ADVICE = (
    "Save the learned loss again with LearnedLoss.save_pretrained (the trainer writes <output_dir>/lkd_loss), or "
    "load an intact copy; a hand-edited file must keep the fields and types that lkd_hf writes."
)


def invalid_file(source: str, path: str, problem: str, advice: str = LOAD_ADVICE) -> ValueError:
    """``ValueError("Cannot load the learned loss <source>: <path>: <problem>. <advice>")``."""
    return ValueError(f"Cannot load the learned loss {source!r}: {path}: {problem.rstrip('.')}. {advice}")


def read_json(path: str, source: str) -> Any:
    """The JSON content of ``path``; ``ValueError`` naming the file when it is not valid JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise invalid_file(source, path, f"not valid JSON ({error})") from error


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_tap_list(value: Any) -> bool:
    return isinstance(value, list) and all(_is_int(t) or isinstance(t, str) for t in value)


def _is_shape_list(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(shape, list) and len(shape) == 3 and all(_is_int(d) and d > 0 for d in shape) for shape in value
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_factor_pairs(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(pair, list) and len(pair) == 2 and all(_is_number(f) and f > 0 for f in pair) for pair in value
    )


def _is_knobs(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"temperature", "weight"} and all(
        _is_number(v) and v > 0 for v in value.values()
    )


def _is_metrics(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and _is_number(v) for k, v in value.items())


_TAPS = (_is_tap_list, "a list of stage indices (integers) or module names (strings), or null")
_SHAPES = (_is_shape_list, "a list of [C, H, W] lists of positive integers, or null")
_OPTIONAL_STRING = (lambda v: isinstance(v, str), "a string or null")
# Each LearnedLossConfig field but format_version: (check of a non-null value, what it must be). Only ``metrics``
# may not be null.
_FIELD_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "logit_net": (lambda v: isinstance(v, dict), "an object of LogitLossNet arguments, or null"),
    "feature_net": (lambda v: isinstance(v, dict), "an object of FeatureLossNet arguments, or null"),
    "loss": _OPTIONAL_STRING,
    "teacher": _OPTIONAL_STRING,
    "student": _OPTIONAL_STRING,
    "num_classes": (lambda v: _is_int(v) and v > 0, "a positive integer or null"),
    "student_taps": _TAPS,
    "teacher_taps": _TAPS,
    "student_feature_shapes": _SHAPES,
    "teacher_feature_shapes": _SHAPES,
    "dataset": _OPTIONAL_STRING,
    "steps": (lambda v: _is_int(v) and v >= 0, "a non-negative integer or null"),
    "metrics": (_is_metrics, "an object of metric names to numbers"),
    "lkd_hf_version": _OPTIONAL_STRING,
}
# Fields added to format 1 later: a file may lack them (loaded as None); when present, checked as above.
_OPTIONAL_FIELD_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "meta_steps": (lambda v: _is_int(v) and v >= 0, "a non-negative integer or null"),
    "population_factors": (_is_factor_pairs, "a list of [temperature, weight] factor pairs > 0, or null"),
    "population_member": (lambda v: _is_int(v) and v >= 0, "a non-negative integer or null"),
    "population_network_knobs": (_is_knobs, 'an object {"temperature": number > 0, "weight": number > 0}, or null'),
    "population_dropped": (lambda v: isinstance(v, list) and all(_is_int(k) and k >= 0 for k in v) and
                           len(set(v)) == len(v), "a list of distinct non-negative integers, or null"),
}
OPTIONAL_FIELDS = frozenset(_OPTIONAL_FIELD_CHECKS)
"""The :class:`LearnedLossConfig` fields a ``config.json`` may lack (written only when set)."""


def config_from_json(raw: Any, path: str, source: str) -> LearnedLossConfig:
    """The :class:`LearnedLossConfig` of a bundle's ``config.json`` content ``raw`` (read from ``path``), validated.

    ``format_version`` must be an integer from 1 to :data:`FORMAT_VERSION`; every field of that format must be
    present, of its type (:data:`_FIELD_CHECKS`), with at least one of ``logit_net`` / ``feature_net`` set; the
    optional fields (:data:`OPTIONAL_FIELDS`) may be missing (``None``), and are checked when present. Keys that are
    not fields are ignored.

    Args:
        raw: the parsed JSON.
        path: the file it was read from (for messages).
        source: what the caller asked to load (for messages).

    Raises:
        ValueError: naming ``path``, the field and what to do.
    """
    if not isinstance(raw, dict):
        raise invalid_file(source, path, f"expected a JSON object, got {type(raw).__name__}")
    if "format_version" not in raw:
        raise invalid_file(
            source, path, "`format_version` is missing (every config.json of a LearnedLoss has one), and the folder "
            "is not in the layout before bundles either (a LogitLossNet's config.json and model.safetensors, and / or "
            f"a FeatureLossNet's in {LEGACY_FEATURE_SUBDIR}/)",
        )
    version = raw["format_version"]
    if not _is_int(version):
        raise invalid_file(
            source, path, f"`format_version` must be an integer, got {version!r} ({type(version).__name__})"
        )
    if version > FORMAT_VERSION:
        raise invalid_file(
            source, path, f"the learned loss has format version {version}; this lkd_hf ({__version__}) reads up to "
            f"{FORMAT_VERSION}", advice="Upgrade lkd_hf to load it (pip install -U lkd_hf).",
        )
    if version < 1:
        raise invalid_file(
            source, path, f"`format_version` {version} is not a LearnedLoss format (1 to {FORMAT_VERSION})"
        )
    missing = [name for name in _FIELD_CHECKS if name not in raw]
    if missing:
        raise invalid_file(source, path, f"missing field(s) {', '.join(f'`{name}`' for name in missing)}")
    raw = {**dict.fromkeys(OPTIONAL_FIELDS), **raw}
    for name, (check, expected) in {**_FIELD_CHECKS, **_OPTIONAL_FIELD_CHECKS}.items():
        value = raw[name]
        if value is None and name != "metrics":
            continue
        if value is None or not check(value):
            raise invalid_file(source, path, f"`{name}` must be {expected}, got {value!r} ({type(value).__name__})")
    if raw["logit_net"] is None and raw["feature_net"] is None:
        raise invalid_file(source, path, "`logit_net` and `feature_net` are both null: it holds no loss network")
    member, factors = raw["population_member"], raw["population_factors"]
    if member is not None and (factors is None or member >= len(factors)):
        raise invalid_file(source, path, f"`population_member` {member} is not a student of `population_factors` "
                           f"{factors}")
    dropped = raw["population_dropped"] or []
    if dropped and (factors is None or max(dropped) >= len(factors) or member in dropped):
        raise invalid_file(source, path, f"`population_dropped` {dropped} must name students of `population_factors` "
                           f"{factors} other than the one kept (`population_member` {member})")
    return LearnedLossConfig(**{f.name: raw[f.name] for f in fields(LearnedLossConfig)})


def differ(learned: Any, run: Any) -> bool:
    """Both known and different."""
    return learned is not None and run is not None and learned != run


def feature_channels(shapes: list[list[int]] | None) -> list[int] | None:
    """The channels ``C`` of ``[C, H, W]`` feature shapes (``None`` for ``None``)."""
    return None if shapes is None else [int(shape[0]) for shape in shapes]
