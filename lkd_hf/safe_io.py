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
from collections.abc import Iterator
from typing import IO
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import SAFE_WEIGHTS_NAME

MANIFEST_NAME = "manifest.json"
LOCK_NAME = "_lkd_run.lock"  # "_": left out of the Trainer's pushes of output_dir
TRAINER_STATE_NAME = "trainer_state.json"  # transformers.trainer.TRAINER_STATE_NAME (importing it loads the Trainer)


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


def verify_manifest(directory: str, what: str = "saved state") -> None:
    """Check ``directory`` against its ``manifest.json``; a missing manifest, a missing file or a changed one raises
    ``ValueError`` naming the file and what to do.

    Args:
        directory: a folder written with :func:`write_manifest`.
        what: how errors name the folder's content.
    """
    path = os.path.join(directory, MANIFEST_NAME)
    advice = "It is damaged or incomplete: resume from an earlier checkpoint (or delete this one)."
    try:
        with open(path) as f:
            files = json.load(f)["files"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"Cannot read the manifest {path} of the {what} ({error}). {advice}") from error
    for name, expected in files.items():
        file = os.path.join(directory, name)
        if not os.path.isfile(file):
            raise ValueError(f"{file} is missing from the {what}. {advice}")
        if _sha256(file) != expected:
            raise ValueError(f"{file} does not match its checksum in {path}. {advice}")


def checkpoint_is_complete(checkpoint: str) -> bool:
    """Whether a Trainer checkpoint folder was written to the end: the Trainer writes ``trainer_state.json`` last, and
    a checkpoint holds the model weights.

    Args:
        checkpoint: a ``checkpoint-<step>`` folder.
    """
    has_weights = any(
        f == SAFE_WEIGHTS_NAME or (f.startswith("model") and f.endswith((".safetensors", ".bin", ".json")))
        for f in os.listdir(checkpoint)
    )
    return os.path.isfile(os.path.join(checkpoint, TRAINER_STATE_NAME)) and has_weights


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The ``checkpoint-<step>`` folder of ``output_dir`` with the highest step that is complete
    (:func:`checkpoint_is_complete`); incomplete later ones are skipped with a warning. ``None`` if there is none.

    Args:
        output_dir: a run's output folder.
    """
    pattern = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
    steps = sorted(
        (int(m.group(1)), name)
        for name in (os.listdir(output_dir) if os.path.isdir(output_dir) else [])
        if (m := pattern.match(name)) and os.path.isdir(os.path.join(output_dir, name))
    )
    for _, name in reversed(steps):
        checkpoint = os.path.join(output_dir, name)
        if checkpoint_is_complete(checkpoint):
            return checkpoint
        warnings.warn(
            f"Skipping the incomplete checkpoint {checkpoint} (no {TRAINER_STATE_NAME} or no model weights: the run "
            "was stopped while saving it); resuming from the last complete one.",
            UserWarning,
            stacklevel=2,
        )
    return None


class OutputDirLock:
    """One run per output folder: an exclusive lock on ``<output_dir>/_lkd_run.lock``, held while the run trains.

    The lock is an OS file lock (``fcntl.flock``): the operating system releases it when the process ends, so a
    crashed or killed run never leaves it stuck; a run that ends removes the file. A second run on the same folder
    fails at start with the first run's host, process id and start time in the message.

    Args:
        output_dir: the run's output folder (created).
        enabled: take the lock (only the main process of a run does).
    """

    def __init__(self, output_dir: str, enabled: bool = True) -> None:
        self.path = os.path.join(output_dir, LOCK_NAME)
        self.enabled = enabled
        self._file = None

    def __enter__(self) -> "OutputDirLock":
        if not self.enabled:
            return self
        import fcntl

        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if not _same_file(self.path, handle):
                handle.close()  # a run that just ended removed the file this handle locks: lock the current one
                return self.__enter__()
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RuntimeError(
                f"The output_dir {os.path.dirname(self.path)!r} is in use by another run ({holder}): two runs on one "
                "folder would overwrite each other's checkpoints and learned loss. Give this run its own output_dir, "
                "or wait for the other run to end."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"host {socket.gethostname()}, pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        handle.flush()
        self._file = handle
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)  # while still locked, so that no other run holds a lock on the removed file
            self._file.close()  # closing releases the lock
            self._file = None


def _same_file(path: str, handle: IO) -> bool:
    """Whether ``path`` still names the file open in ``handle``."""
    try:
        here, opened = os.stat(path), os.fstat(handle.fileno())
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (opened.st_dev, opened.st_ino)
