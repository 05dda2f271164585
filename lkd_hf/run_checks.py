"""Checks of a distillation run at trainer construction (the teacher against the student, the optimizer, the support
of the unrolled hypergradient, the reuse of a ``loss_from`` bundle), with the fix in each message. The datasets' checks
are in :mod:`lkd_hf.data_fit`."""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.utils.data import Dataset
from transformers.utils import logging

from .data import resolve_data_config
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
        with torch.no_grad(), warnings.catch_warnings():
            # torch's first forward-mode call scripts its decompositions with the deprecated torch.jit.script
            warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
            duals = {n: fwAD.make_dual(p.detach(), torch.ones_like(p)) for n, p in params.items()}
            torch.func.functional_call(model, {**duals, **buffers}, (x,))
    except (RuntimeError, NotImplementedError) as error:
        raise ValueError(unrolled_unsupported(model, error)) from error
    finally:
        level.__exit__(None, None, None)


def reused_networks(loss: str, learned: Any, logit_network: nn.Module | None = None,
                    feature_network: nn.Module | None = None) -> tuple[nn.Module | None, nn.Module | None]:
    """The run's logit and feature loss networks given a learned loss loaded with ``loss_from``: the networks passed
    to the trainer, else the bundle's that the run's loss spec reuses (its logit network where the spec names the
    learned logit loss, ``lkd``; its feature network where it names the learned feature loss, ``feat``).

    Args:
        loss: the run's loss spec (``LKDConfig.loss``).
        learned: the :class:`~lkd_hf.LearnedLoss` loaded with ``loss_from``.
        logit_network, feature_network: the networks passed to the trainer (``None``: none), kept.

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
        reused = "feature" if unused[0] == "logit" else "logit"
        warnings.warn(
            f"loss_from={source!r}: its learned {unused[0]} loss network is not used, loss={loss!r} does not name it "
            f"(it was learned with loss={learned.config.loss!r}); only its {reused} network is reused.",
            UserWarning,
            stacklevel=3,
        )
    return (logit_network if logit_network is not None else logit,
            feature_network if feature_network is not None else feature)
