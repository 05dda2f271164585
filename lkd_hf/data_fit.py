"""Checks of a run's datasets at trainer construction: the columns of their examples, and that they fit the models
(examples the student and the teacher take, labels that are class indices of the models, classes that are the
models'); each message names the dataset and the fix."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from .data import check_columns, read_labels


def check_datasets(**datasets: Any) -> None:
    """Check that every dataset given (by its argument name) yields ``pixel_values`` and labels
    (:func:`~lkd_hf.data.check_columns`); ``None`` ones are skipped.

    Args:
        **datasets: the trainer's datasets by argument name, e.g. ``train_dataset=...``.
    """
    for name, dataset in datasets.items():
        if dataset is not None:
            check_columns(dataset, name)


def check_data_fits(model: nn.Module, teacher: nn.Module | None, num_classes: int | None, **datasets: Any) -> None:
    """Check, before training, that every dataset given (by its argument name; ``None`` ones skipped, each of a
    mapping) fits the models, with the fix in each message:

    * its first example goes through the student (an image of other channels, a 2-D input, ...), and the teacher's
      first convolution takes its channels;
    * its labels, when they can be read without decoding the images (:func:`~lkd_hf.data.read_labels`), are
      integers in ``[0, num_classes)``;
    * its classes are the models': a ``ClassLabel`` declaring another number of classes is an error, and so are
      undeclared labels of the training set that cover fewer classes than the models predict (labels ``0 .. k-1``,
      ``k < num_classes``). Data holding only some of the models' classes on purpose declares the models' classes
      (``dataset.cast_column("label", datasets.ClassLabel(num_classes=num_classes))``): the training set's missing
      classes are then a warning.

    Args:
        model: the student.
        teacher: the teacher (``None``: not checked).
        num_classes: the models' number of outputs (``None``: classes not checked).
        **datasets: the trainer's datasets by argument name, e.g. ``train_dataset=...``.
    """
    for name, dataset in datasets.items():
        parts = dataset.items() if isinstance(dataset, Mapping) else [(None, dataset)]
        for key, part in parts:
            if part is None:
                continue
            where = name if key is None else f"{name}/{key}"
            example = _first_example(part)
            if example is not None:
                pixel_values = torch.as_tensor(example["pixel_values"])
                _check_takes(model, pixel_values, where)
                if teacher is not None:
                    _check_channels(teacher, "teacher", pixel_values, where)
            _check_labels(part, where, num_classes, is_training_set=name == "train_dataset")


def _first_example(dataset: Any) -> dict[str, Any] | None:
    """The first example of a map-style dataset with ``pixel_values`` (``None`` when there is none to read)."""
    try:
        example = dataset[0] if len(dataset) > 0 else None
    except (TypeError, KeyError, IndexError, NotImplementedError):
        return None
    return example if isinstance(example, Mapping) and "pixel_values" in example else None


def _input_channels(model: nn.Module) -> int | None:
    """Input channels of the model's first convolution, if it has one."""
    return next((m.in_channels for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)


def _check_takes(model: nn.Module, pixel_values: torch.Tensor, where: str) -> None:
    """Raise ``ValueError`` when the student cannot take one example of ``where`` (run in eval mode, no gradient)."""
    x = pixel_values[None].float()
    param = next(model.parameters(), None)
    if param is not None:
        x = x.to(param.device, param.dtype if param.is_floating_point() else x.dtype)
    training = model.training
    try:
        with torch.no_grad():
            model.eval()(x)
    except Exception as error:
        _check_channels(model, "student", pixel_values, where)
        hint = ("Examples must be images, pixel_values of shape (C, H, W)." if pixel_values.ndim != 3 else
                "Build the data for the model, e.g. with lkd_hf.build_datasets(source, model).")
        raise ValueError(
            f"The student ({type(model).__name__}) cannot take the examples of {where}: pixel_values of shape "
            f"{tuple(pixel_values.shape)} ({type(error).__name__}: {error}). {hint}"
        ) from error
    finally:
        model.train(training)


def _check_channels(model: nn.Module, role: str, pixel_values: torch.Tensor, where: str) -> None:
    """Raise ``ValueError`` when the examples of ``where`` are images of other channels than ``model``'s first
    convolution takes."""
    channels = _input_channels(model)
    if pixel_values.ndim == 3 and channels is not None and channels != pixel_values.shape[0]:
        raise ValueError(
            f"The {role} ({type(model).__name__}) cannot take the examples of {where}: pixel_values of shape "
            f"{tuple(pixel_values.shape)}, and the {role} takes {channels}-channel images. Build the data for the "
            "models (lkd_hf.build_datasets(source, model) converts the images to the model's channels), or create "
            f"the models with in_chans={pixel_values.shape[0]}."
        )


def _check_labels(dataset: Any, where: str, num_classes: int | None, is_training_set: bool) -> None:
    """Raise ``ValueError`` on labels of ``where`` that are not class indices of the models, or classes that are not
    theirs; warn when a training set declaring the models' classes lacks some (see :func:`check_data_fits`)."""
    read = read_labels(dataset)
    if read is None:
        return
    column, labels, declared = read
    values = np.unique(labels)
    if values.size and (values.dtype.kind not in "iuf" or (values.dtype.kind == "f"
                                                           and not np.all(np.mod(values, 1) == 0))):
        bad = [v for v in values.tolist() if not (isinstance(v, (int, float)) and float(v).is_integer())]
        raise ValueError(
            f"{where} has labels that are not class indices ({bad[:5]}): labels must be integers 0 .. num_classes - 1 "
            "(a float label would be cut to an integer). Map the dataset's labels to class ids first."
        )
    if num_classes is None or not values.size:
        return
    values = values.astype(np.int64)
    outside = [v for v in values.tolist() if v < 0 or v >= num_classes]
    if outside:
        raise ValueError(
            f"{where} has labels {outside[:5]} outside [0, {num_classes}): the teacher and student predict "
            f"{num_classes} classes. Create them with the dataset's number of classes, or fix its labels."
        )
    declare = f"dataset.cast_column({column!r}, datasets.ClassLabel(num_classes={num_classes}))"
    if declared is not None and declared != num_classes:
        raise ValueError(
            f"{where} declares {declared} classes (its {column!r} ClassLabel), the teacher and student predict "
            f"{num_classes}. Create them with num_classes={declared}; or, if the data holds only some of the models' "
            f"classes on purpose, declare the models' classes: {declare}."
        )
    if not is_training_set:
        return
    present = int(values.max()) + 1
    if declared is None and present < num_classes:
        raise ValueError(
            f"{where} has labels of {present} classes (0 .. {present - 1}), the teacher and student predict "
            f"{num_classes}: their other outputs would never meet a label. Create them with num_classes={present}; "
            f"or, if the data holds only some of the models' classes on purpose, declare the models' classes: "
            f"{declare}."
        )
    if len(values) < num_classes:
        warnings.warn(
            f"{where} has labels of {len(values)} of the {num_classes} classes of the teacher and student: the "
            "others never meet a label in training.",
            UserWarning,
            stacklevel=3,
        )
