"""Checks of a distillation run's models and data at trainer construction, with the fix in each message."""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.utils.data import Dataset
from transformers.utils import logging

from .data import check_columns, resolve_data_config
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
    """Check that ``hypergradient="unrolled"`` can take its exact products through ``model``: a dry double backward
    and a dry forward-mode pass on two random images (the model's weights and buffers are left as they were).

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
        logits = output[0] if isinstance(output, tuple) else output
        grads = torch.autograd.grad(logits.float().square().mean(), list(params.values()), create_graph=True, allow_unused=True)
        second = sum(g.square().sum() for g in grads if g is not None)
        torch.autograd.grad(second, list(params.values()), allow_unused=True)
        with torch.no_grad(), fwAD.dual_level(), warnings.catch_warnings():
            # torch's first forward-mode call scripts its decompositions with the deprecated torch.jit.script
            warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
            duals = {n: fwAD.make_dual(p.detach(), torch.ones_like(p)) for n, p in params.items()}
            torch.func.functional_call(model, {**duals, **buffers}, (x,))
    except (RuntimeError, NotImplementedError) as error:
        raise ValueError(unrolled_unsupported(model, error)) from error


def check_datasets(**datasets: Any) -> None:
    """Check that every dataset given (by its argument name) yields ``pixel_values`` and labels
    (:func:`~lkd_hf.data.check_columns`); ``None`` ones are skipped.

    Args:
        **datasets: the trainer's datasets by argument name, e.g. ``train_dataset=...``.
    """
    for name, dataset in datasets.items():
        if dataset is not None:
            check_columns(dataset, name)
