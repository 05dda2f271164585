"""Checks of a distillation run's models and data at trainer construction, with the fix in each message."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.utils.data import Dataset
from transformers.utils import logging

from .data import check_columns, read_labels, resolve_data_config
from .losses.registry import parse_loss_spec
from .meta.hypergradients import unrolled_unsupported
from .model_info import model_num_classes

logger = logging.get_logger(__name__)


def checked_teacher(model: nn.Module, teacher: nn.Module | None, num_classes: int | None) -> nn.Module:
    """The teacher, frozen in eval mode, after checking that it fits the student.

    Args:
        model: the student.
        teacher: the teacher (an error when ``None``: the loss distills from a teacher).
        num_classes: the student's number of classes.
    """
    if teacher is None:
        raise ValueError("This loss distills from a teacher: pass `teacher=` (or use loss='ce').")
    teacher_classes = model_num_classes(teacher)
    if num_classes is not None and teacher_classes is not None and num_classes != teacher_classes:
        raise ValueError(
            f"Teacher and student predict different numbers of classes ({teacher_classes} vs {num_classes}); "
            "create both with the same num_classes."
        )
    student_params = {id(p) for p in model.parameters()}
    shared = [n for n, p in teacher.named_parameters() if id(p) in student_params]
    if shared:
        raise ValueError(
            f"The teacher shares {len(shared)} parameter(s) with the student (e.g. {shared[0]!r}); they would be "
            "updated by the student's optimizer. Pass a separate, frozen teacher."
        )
    trainable = [n for n, p in teacher.named_parameters() if p.requires_grad]
    if trainable:
        logger.info(f"Freezing {len(trainable)} trainable teacher parameter tensors (the teacher is never trained).")
    return teacher.eval().requires_grad_(False)


def check_optimizer(optimizers: Any, teacher: nn.Module | None) -> None:
    """Reject an optimizer passed to the trainer that would update the teacher.

    Args:
        optimizers: the trainer's ``optimizers`` argument (``(optimizer, scheduler)`` or ``None``).
        teacher: the teacher.
    """
    optimizer = optimizers[0] if optimizers else None
    if optimizer is None or teacher is None:
        return
    teacher_params = {id(p) for p in teacher.parameters()}
    if any(id(p) in teacher_params for group in optimizer.param_groups for p in group["params"]):
        raise ValueError("The optimizer passed to LKDTrainer would update the teacher's parameters.")


def input_size(model: nn.Module, dataset: Dataset | None) -> tuple[int, int, int]:
    """``(C, H, W)`` of the training images (the first example), else the model's data config.

    Args:
        model: the student.
        dataset: the training set.
    """
    if dataset is not None and len(dataset) > 0:
        return tuple(torch.as_tensor(dataset[0]["pixel_values"]).shape)
    return tuple(resolve_data_config(model)["input_size"])


def check_unrolled_support(model: nn.Module, input_size: tuple[int, ...]) -> None:
    """Check that ``hypergradient="unrolled"`` can take its exact products through ``model``: a dry forward, double
    backward and forward-mode pass on two random images (the model's weights and buffers are left as they were).
    Each stage reports its own cause: inputs the model does not take (a data / model mismatch), an operation without
    double backward or forward-mode support, forward-mode AD in use elsewhere in the process.

    Args:
        model: the student.
        input_size: ``(C, H, W)`` of its inputs.
    """
    param = next(model.parameters())
    x = torch.randn(2, *input_size, device=param.device, dtype=param.dtype)
    params = {n: p.detach().requires_grad_(True) for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    try:
        output = torch.func.functional_call(model, {**params, **buffers}, (x,))
    except Exception as error:
        raise ValueError(
            f"{type(model).__name__} does not take inputs of shape {tuple(x.shape)} ({type(error).__name__}: {error}): "
            "a mismatch of the data and the model, not of hypergradient='unrolled'. Give the trainer a train_dataset "
            "whose examples the student takes (its first example sets the shape checked here)."
        ) from error
    try:
        logits = output[0] if isinstance(output, tuple) else output
        grads = torch.autograd.grad(logits.float().square().mean(), list(params.values()), create_graph=True,
                                    allow_unused=True)
        second = sum(g.square().sum() for g in grads if g is not None)
        torch.autograd.grad(second, list(params.values()), allow_unused=True)
    except (RuntimeError, NotImplementedError) as error:
        raise ValueError(unrolled_unsupported(model, error)) from error
    level = fwAD.dual_level()
    try:
        level.__enter__()
    except RuntimeError as error:
        raise RuntimeError(
            f"Cannot check hypergradient='unrolled' now: forward-mode AD is in use elsewhere in this process (e.g. "
            f"another thread; {error}), and it allows one level at a time. Create the trainer when it is done."
        ) from error
    try:
        with torch.no_grad():
            duals = {n: fwAD.make_dual(p.detach(), torch.ones_like(p)) for n, p in params.items()}
            torch.func.functional_call(model, {**duals, **buffers}, (x,))
    except (RuntimeError, NotImplementedError) as error:
        raise ValueError(unrolled_unsupported(model, error)) from error
    finally:
        level.__exit__(None, None, None)


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


def reused_networks(loss: str, learned: Any) -> tuple[nn.Module | None, nn.Module | None]:
    """The networks of a learned loss loaded with ``loss_from`` that the run's loss spec reuses: its logit network
    where the spec names the learned logit loss (``lkd``), its feature network where it names the learned feature
    loss (``feat``).

    Args:
        loss: the run's loss spec (``LKDConfig.loss``).
        learned: the :class:`~lkd_hf.LearnedLoss` loaded with ``loss_from``.

    Raises:
        ValueError: the spec names no learned loss the bundle holds (``loss_from`` would be unused, or replace a
            hand-made loss the spec names). A bundle network the spec does not name is left out with a warning.
    """
    spec = parse_loss_spec(loss)
    logit = learned.logit if spec.logit == "lkd" else None
    feature = learned.feature if spec.feature == "feat" else None
    source = learned.source or "the learned loss"
    held = " and ".join(kind for kind, net in (("logit ('lkd')", learned.logit), ("feature ('feat')", learned.feature))
                        if net is not None)
    if logit is None and feature is None:
        raise ValueError(
            f"loss_from={source!r} holds a learned {held} loss, but loss={loss!r} names none of them: reusing it would "
            f"replace the loss this run asks for. Name it in the loss spec (it was learned with "
            f"loss={learned.config.loss!r}), or leave loss_from out."
        )
    unused = [kind for kind, net, used in (("logit", learned.logit, logit), ("feature", learned.feature, feature))
              if net is not None and used is None]
    if unused:
        warnings.warn(
            f"loss_from={source!r}: its learned {unused[0]} loss network is not used, loss={loss!r} does not name it "
            f"(it was learned with loss={learned.config.loss!r}); only its {'feature' if unused[0] == 'logit' else 'logit'} "
            "network is reused.",
            UserWarning,
            stacklevel=3,
        )
    return logit, feature
