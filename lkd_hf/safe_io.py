"""Saving that loses nothing: folders written whole or not at all, checksummed state, one run per output folder, and
the last complete checkpoint of a run."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import time
import uuid
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

from safetensors import SafetensorError, safe_open
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import (
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
)

from .constants import LKD_STATE_DIRNAME
from .nonfinite import NonFiniteWeightsError

MANIFEST_NAME = "manifest.json"
LOCK_NAME = "_lkd_run.lock"  # "_": left out of the Trainer's pushes of output_dir
# transformers.trainer's names (importing it loads the Trainer)
TRAINER_STATE_NAME, OPTIMIZER_NAME, SCHEDULER_NAME = "trainer_state.json", "optimizer.pt", "scheduler.pt"
RNG_STATE_PATTERN = re.compile(r"^rng_state(_\d+)?\.pth$")
WEIGHTS_NAMES = (SAFE_WEIGHTS_NAME, WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_INDEX_NAME)


@contextlib.contextmanager
def atomic_directory(target: str) -> Iterator[str]:
    """Write a folder whole or not at all: yields a new temporary folder beside ``target`` (``_<name>.tmp-*``);
    when the block ends without error it replaces ``target`` as a whole (:func:`replace_directory`), else it is
    deleted and ``target`` is left as it was.

    Args:
        target: the folder to write.
    """
    target_path = Path(target).absolute()
    target_path.parent.mkdir(parents=True, exist_ok=True)
    staging = target_path.with_name(f"_{target_path.name}.tmp-{uuid.uuid4().hex[:12]}")
    staging.mkdir()
    try:
        yield str(staging)
        replace_directory(staging, target_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # a failed write's partial folder (gone after the rename)


def replace_directory(new: Path, target: Path) -> None:
    """Rename the complete folder ``new`` to ``target`` (same parent), replacing an existing ``target`` as a whole.

    A folder cannot be renamed onto a non-empty one, so an existing ``target`` is first renamed aside
    (``_<name>.old-*``), and deleted once ``new`` is in place. When another writer renames its folder into place
    in between, that one is moved aside too: the last rename wins, whole.

    Args:
        new: the folder to put in place.
        target: where it goes.
    """
    moved_aside: list[Path] = []
    try:
        while True:
            try:
                os.rename(new, target)
                break
            except OSError as error:
                if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
            aside = target.with_name(f"_{target.name}.old-{uuid.uuid4().hex[:12]}")
            try:
                os.rename(target, aside)
            except FileNotFoundError:
                continue  # another writer moved it aside first
            moved_aside.append(aside)
    except BaseException:
        if moved_aside and not target.exists():  # put back the folder this call moved aside last
            os.rename(moved_aside.pop(), target)
        raise
    finally:
        for aside in moved_aside:
            shutil.rmtree(aside, ignore_errors=True)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _files(directory: str) -> list[str]:
    found = []
    for root, _, files in os.walk(directory):
        found += [os.path.relpath(os.path.join(root, f), directory) for f in files]
    return sorted(f for f in found if f != MANIFEST_NAME)


def write_manifest(directory: str) -> None:
    """Write ``manifest.json``: the SHA-256 of every file in ``directory`` (written last, after the files).

    Args:
        directory: the folder to describe.
    """
    manifest = {"files": {f: _sha256(os.path.join(directory, f)) for f in _files(directory)}}
    with open(os.path.join(directory, MANIFEST_NAME), "w") as f:
        json.dump(manifest, f, indent=1)


def manifest_problem(directory: str) -> str | None:
    """What does not match ``directory``'s ``manifest.json`` (``None``: every file listed is there with its
    checksum): an unreadable manifest, a missing file or a changed one, named.

    Args:
        directory: a folder written with :func:`write_manifest`.
    """
    path = os.path.join(directory, MANIFEST_NAME)
    try:
        with open(path) as f:
            files = json.load(f)["files"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"cannot read the manifest {path} ({error})"
    for name, expected in files.items():
        file = os.path.join(directory, name)
        if not os.path.isfile(file):
            return f"{file} is missing"
        if _sha256(file) != expected:
            return f"{file} does not match its checksum in {path}"
    return None


def verify_manifest(directory: str, what: str = "saved state") -> None:
    """Check ``directory`` against its ``manifest.json`` (:func:`manifest_problem`); a problem raises ``ValueError``
    naming the file and what to do.

    Args:
        directory: a folder written with :func:`write_manifest`.
        what: how errors name the folder's content.
    """
    problem = manifest_problem(directory)
    if problem is not None:
        raise ValueError(f"The {what} in {directory} is damaged or incomplete: {problem}. Resume from an earlier "
                         "checkpoint (or delete this one).")


def file_problem(path: str) -> str | None:
    """What is wrong with a saved file, judged by its kind (``None``: nothing found): empty; a ``.json`` that does
    not parse; a ``.safetensors`` whose header does not read or does not cover the file (cut short); a ``.pt`` /
    ``.pth`` / ``.bin`` (``torch.save``'s zip format) that is not a whole zip archive or holds an entry whose
    checksum fails. Files of other kinds are only required to be non-empty.

    Args:
        path: the file.
    """
    if os.path.getsize(path) == 0:
        return "is empty"
    try:
        if path.endswith(".json"):
            with open(path) as f:
                json.load(f)
        elif path.endswith(".safetensors"):
            with safe_open(path, framework="pt"):
                pass
        elif path.endswith((".pt", ".pth", ".bin")):
            with zipfile.ZipFile(path) as archive:
                damaged = archive.testzip()
            if damaged is not None:
                return f"holds a damaged entry ({damaged})"
    except (OSError, ValueError, UnicodeDecodeError, SafetensorError, zipfile.BadZipFile) as error:
        return f"cannot be read ({type(error).__name__}: {error})"
    return None


def checkpoint_problem(checkpoint: str, full_state: bool = True) -> str | None:
    """What makes a Trainer checkpoint folder unusable for a resume (``None``: it is complete).

    A complete checkpoint holds ``trainer_state.json`` (the Trainer writes it last) and the model weights, and with
    ``full_state`` the optimizer, scheduler and RNG states; every file in it passes :func:`file_problem` and its
    ``lkd_state/`` matches its manifest (:func:`verify_manifest`). Folders named ``_*`` (leftovers of an interrupted
    atomic write) are not part of it.

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


class OutputDirLock:
    """One run per output folder: an exclusive lock on ``<output_dir>/_lkd_run.lock``, held while a trainer writes
    to the folder (``train``, ``save_model``, ``push_to_hub``, ``learn_loss``).

    The lock is an OS file lock (``fcntl.flock``): the operating system releases it when the process ends, so a
    crashed or killed run never leaves it stuck. It is taken on a file description of its own, so two trainers of
    one process exclude each other too. A second writer while the lock is held fails at once with the first one's
    host, process id and start time in the message.

    The lock file also records the folder's owner: the trainer (``owner``) that last started a run on it. A run
    (``claim=True``) takes the folder over; any other write (``claim=False``) is refused when the folder belongs to
    another trainer, whose files it would mix with its own.

    Args:
        output_dir: the run's output folder (created).
        enabled: take the lock (only the main process of a run does).
        owner: an id of the writing trainer, recorded in the lock file.
        claim: take the folder over (a run starting), rather than write into a folder of this ``owner`` or of none.
        action: what the writer does, for the messages (e.g. ``"save_model"``).
    """

    def __init__(self, output_dir: str, enabled: bool = True, owner: str | None = None, claim: bool = True,
                 action: str = "this run") -> None:
        self.path = os.path.join(output_dir, LOCK_NAME)
        self.enabled, self.owner, self.claim, self.action = enabled, owner, claim, action
        self._file = None

    def __enter__(self) -> OutputDirLock:
        if not self.enabled:
            return self
        import fcntl

        folder = os.path.dirname(self.path)
        os.makedirs(folder, exist_ok=True)
        handle = open(self.path, "a+")
        handle.seek(0)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RuntimeError(
                f"The output_dir {folder!r} is in use by another run ({holder}): two runs on one folder would "
                "overwrite each other's checkpoints and learned loss. Give this run its own output_dir, or wait for "
                "the other run to end."
            ) from None
        holder = handle.read().strip()
        recorded = re.match(r"run ([0-9a-f]+),", holder)
        if not self.claim and recorded is not None and recorded.group(1) != self.owner:
            handle.close()
            raise RuntimeError(
                f"The output_dir {folder!r} holds the files of another trainer's run ({holder}): {self.action} of "
                "this trainer there would mix its files with that run's checkpoints and learned loss. Write "
                "elsewhere (e.g. trainer.save_model('<another folder>')), or give each trainer its own output_dir."
            )
        handle.seek(0)
        handle.truncate()
        run = f"run {self.owner}, " if self.owner else ""
        handle.write(f"{run}host {socket.gethostname()}, pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        handle.flush()
        self._file = handle
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()  # closing releases the lock
            self._file = None


class OutputDirOwner:
    """A trainer's hold on its output folder: :meth:`hold` takes the :class:`OutputDirLock` as this trainer (one id
    per owner); calls nested in a held one (``train`` -> ``save_model``) pass through."""

    def __init__(self) -> None:
        self.id = uuid.uuid4().hex[:12]
        self._held = False

    @contextlib.contextmanager
    def hold(self, output_dir: str, *, claim: bool, action: str, enabled: bool = True) -> Iterator[None]:
        """Hold ``output_dir`` for the block.

        Args:
            output_dir: the folder.
            claim, action: as in :class:`OutputDirLock`.
            enabled: take the lock (only the main process of a run does).
        """
        if self._held or not enabled:
            yield
            return
        with OutputDirLock(output_dir, owner=self.id, claim=claim, action=action):
            self._held = True
            try:
                yield
            finally:
                self._held = False


@contextlib.contextmanager
def named_save_failure(folder: str) -> Iterator[None]:
    """Name ``folder`` when writing into it fails (a full disk, ...): the error is raised again as a
    ``RuntimeError`` naming the folder and the way on. A refusal of non-finite weights passes unchanged.

    Args:
        folder: the folder being written.
    """
    try:
        yield
    except NonFiniteWeightsError:
        raise
    except Exception as error:
        raise RuntimeError(
            f"Saving to {folder} failed ({type(error).__name__}: {error}); what was written there may be incomplete. "
            "If the disk is full, free space and save again."
        ) from error
