"""Which checkpoint a resumed run may use: every file of a Trainer checkpoint verified before a resume reads it
(the last complete checkpoint found, or an explicit one refused naming its bad file), and a save that fails while
training named with its checkpoint folder."""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Callable, Iterator

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import (
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
)

from ..constants import LKD_STATE_DIRNAME
from ..safe_io import file_problem, manifest_problem

# transformers.trainer's names (importing it loads the Trainer)
TRAINER_STATE_NAME, OPTIMIZER_NAME, SCHEDULER_NAME = "trainer_state.json", "optimizer.pt", "scheduler.pt"
RNG_STATE_PATTERN = re.compile(r"^rng_state(_\d+)?\.pth$")
WEIGHTS_NAMES = (SAFE_WEIGHTS_NAME, WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_INDEX_NAME)


def checkpoint_problem(checkpoint: str, full_state: bool = True) -> str | None:
    """What makes a Trainer checkpoint folder unusable for a resume (``None``: it is complete).

    A complete checkpoint holds ``trainer_state.json`` (the Trainer writes it last) and the model weights, and with
    ``full_state`` the optimizer, scheduler and RNG states; every file in it passes
    :func:`~lkd_hf.safe_io.file_problem` and its ``lkd_state/`` matches its manifest
    (:func:`~lkd_hf.safe_io.manifest_problem`). Folders named ``_*`` (leftovers of an interrupted atomic write) are
    not part of it.

    Args:
        checkpoint: a ``checkpoint-<step>`` folder.
        full_state: whether the run saves its optimizer, scheduler and RNG states (``save_only_model=False``).

    Returns:
        The first problem, naming the file, or ``None``.
    """
    present = set(os.listdir(checkpoint))
    required = [TRAINER_STATE_NAME, *((OPTIMIZER_NAME, SCHEDULER_NAME) if full_state else ())]
    for name in required:
        if name not in present:
            return f"{os.path.join(checkpoint, name)} is missing"
    if not present & set(WEIGHTS_NAMES):
        return f"{checkpoint} holds no model weights ({' or '.join(WEIGHTS_NAMES[:2])})"
    if full_state and not any(RNG_STATE_PATTERN.match(name) for name in present):
        return f"{os.path.join(checkpoint, 'rng_state.pth')} is missing"
    for root, folders, files in os.walk(checkpoint):
        folders[:] = sorted(f for f in folders if not f.startswith("_") and f != LKD_STATE_DIRNAME)
        for name in sorted(files):
            path = os.path.join(root, name)
            problem = file_problem(path)
            if problem is not None:
                return f"{path} {problem}"
    lkd_state = os.path.join(checkpoint, LKD_STATE_DIRNAME)
    return manifest_problem(lkd_state) if os.path.isdir(lkd_state) else None


def last_complete_checkpoint(output_dir: str, full_state: bool = True) -> str | None:
    """The ``checkpoint-<step>`` folder of ``output_dir`` with the highest step that is complete
    (:func:`checkpoint_problem`); later ones are skipped with a warning naming their first bad file. ``None`` if
    there is none.

    Args:
        output_dir: a run's output folder.
        full_state: as in :func:`checkpoint_problem`.
    """
    pattern = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
    steps = sorted(
        (int(m.group(1)), name)
        for name in (os.listdir(output_dir) if os.path.isdir(output_dir) else [])
        if (m := pattern.match(name)) and os.path.isdir(os.path.join(output_dir, name))
    )
    for _, name in reversed(steps):
        checkpoint = os.path.join(output_dir, name)
        problem = checkpoint_problem(checkpoint, full_state)
        if problem is None:
            return checkpoint
        warnings.warn(
            f"Skipping the incomplete checkpoint {checkpoint}: {problem} (the run was stopped, or the disk was full, "
            "while saving it, or a file was damaged since); resuming from the last complete one.",
            UserWarning,
            stacklevel=2,
        )
    return None


def checkpoint_to_resume(resume_from_checkpoint: str | bool | None, output_dir: str,
                         full_state: bool = True) -> str | None:
    """The verified checkpoint a ``train(resume_from_checkpoint=...)`` call resumes from.

    Args:
        resume_from_checkpoint: a checkpoint folder (an error naming the file when it is incomplete, see
            :func:`checkpoint_problem`), ``True`` (the last complete checkpoint of ``output_dir``, an error when there
            is none) or ``None`` / ``False`` (start afresh: ``None``).
        output_dir: the run's output folder.
        full_state: as in :func:`checkpoint_problem`.
    """
    if resume_from_checkpoint is True:
        checkpoint = last_complete_checkpoint(output_dir, full_state)
        if checkpoint is None:
            raise ValueError(f"No complete checkpoint to resume from in {output_dir!r}.")
        return checkpoint
    if not resume_from_checkpoint:
        return None
    checkpoint = str(resume_from_checkpoint)
    if not os.path.isdir(checkpoint):
        raise ValueError(f"Cannot resume from {checkpoint!r}: no such folder.")
    problem = checkpoint_problem(checkpoint, full_state)
    if problem is not None:
        raise ValueError(
            f"Cannot resume from {checkpoint}: {problem}. Resume from an earlier checkpoint, or pass "
            "resume_from_checkpoint=True to resume from the last complete one."
        )
    return checkpoint


@contextlib.contextmanager
def named_checkpoint_failure(output_dir: str, step: Callable[[], int], full_state: bool = True) -> Iterator[None]:
    """Name the checkpoint folder when an error ends a run while that folder is left incomplete (a full disk during
    a save, ...): the error is raised again as a ``RuntimeError`` naming the folder, the first bad file and the way
    on. Errors that leave no incomplete checkpoint pass unchanged.

    Args:
        output_dir: the run's output folder.
        step: gives the trainer's global step when the error is caught (the step of the checkpoint being written).
        full_state: as in :func:`checkpoint_problem`.
    """
    try:
        yield
    except Exception as error:
        folder = os.path.join(output_dir, f"{PREFIX_CHECKPOINT_DIR}-{step()}")
        problem = checkpoint_problem(folder, full_state) if os.path.isdir(folder) else None
        if problem is None:
            raise
        raise RuntimeError(
            f"Saving the checkpoint {folder} failed ({type(error).__name__}: {error}); it is incomplete ({problem}). "
            "If the disk is full, free space, then resume with train(resume_from_checkpoint=True): it skips this "
            "folder and resumes from the last complete checkpoint."
        ) from error
