"""Saving that loses nothing: folders written whole or not at all, checksummed state, saved files verified by their
kind, a failed save named, and one writer per output folder."""

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
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from safetensors import SafetensorError, safe_open

from .nonfinite import NonFiniteWeightsError

MANIFEST_NAME = "manifest.json"
LOCK_NAME = "_lkd_run.lock"  # "_": left out of the Trainer's pushes of output_dir
OWNER_NAME = "_lkd_run.owner"  # the trainer whose run last started on the folder; kept when the run ends

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


class OutputDirLock:
    """One writer per output folder: an exclusive lock on ``<output_dir>/_lkd_run.lock``, held while a trainer writes
    to the folder (``train``, ``save_model``, ``push_to_hub``, ``learn_loss``).

    The lock is an OS file lock (``fcntl.flock``): the operating system releases it when the process ends, so a
    crashed or killed run never leaves it stuck; a writer that ends removes the file. It is taken on a file
    description of its own, so two trainers of one process exclude each other too. A second writer while the lock is
    held fails at once with the first one's host, process id and start time in the message.

    The folder's owner, the trainer (``owner``) whose run last started on it, is recorded in
    ``<output_dir>/_lkd_run.owner``, which stays when the run ends. A run (``claim=True``) takes the folder over; any
    other write (``claim=False``) is refused when the folder belongs to another trainer, whose files it would mix
    with its own.

    Args:
        output_dir: the run's output folder (created).
        enabled: take the lock (only the main process of a run does).
        owner: an id of the writing trainer, recorded in the lock file (and, claiming, in the owner file).
        claim: take the folder over (a run starting), rather than write into a folder of this ``owner`` or of none.
        action: what the writer does, for the messages (e.g. ``"save_model()"``).
    """

    def __init__(self, output_dir: str, enabled: bool = True, owner: str | None = None, claim: bool = True,
                 action: str = "this run") -> None:
        self.path = os.path.join(output_dir, LOCK_NAME)
        self.owner_path = os.path.join(output_dir, OWNER_NAME)
        self.enabled, self.owner, self.claim, self.action = enabled, owner, claim, action
        self._file: IO | None = None

    def __enter__(self) -> OutputDirLock:
        if not self.enabled:
            return self
        import fcntl

        folder = os.path.dirname(self.path)
        os.makedirs(folder, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if not _same_file(self.path, handle):
                handle.close()  # a writer that just ended removed the file this handle locks: lock the current one
                return self.__enter__()
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RuntimeError(
                f"The output_dir {folder!r} is in use by another run ({holder}): two runs on one folder would "
                "overwrite each other's checkpoints and learned loss. Give this run its own output_dir, or wait for "
                "the other run to end."
            ) from None
        self._file = handle
        recorded = _read(self.owner_path)
        owner = re.match(r"run ([0-9a-f]+),", recorded)
        if not self.claim and owner is not None and owner.group(1) != self.owner:
            self.__exit__()
            raise RuntimeError(
                f"The output_dir {folder!r} holds the files of another trainer's run ({recorded}): {self.action} of "
                "this trainer there would mix its files with that run's checkpoints and learned loss. Write "
                "elsewhere (e.g. trainer.save_model('<another folder>')), or give each trainer its own output_dir."
            )
        run = f"run {self.owner}, " if self.owner else ""
        record = f"{run}host {socket.gethostname()}, pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"
        handle.seek(0)
        handle.truncate()
        handle.write(record)
        handle.flush()
        if self.claim and self.owner:
            Path(self.owner_path).write_text(record)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)  # while still locked, so that no other writer holds a lock on the removed file
            self._file.close()  # closing releases the lock
            self._file = None


def _same_file(path: str, handle: IO) -> bool:
    """Whether ``path`` still names the file open in ``handle``."""
    try:
        here, opened = os.stat(path), os.fstat(handle.fileno())
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (opened.st_dev, opened.st_ino)


def _read(path: str) -> str:
    """The text of ``path``, stripped (empty when there is no such file)."""
    try:
        return Path(path).read_text().strip()
    except FileNotFoundError:
        return ""


class OutputDirOwner:
    """A trainer's hold on its output folder: :meth:`hold` takes the :class:`OutputDirLock` as this trainer (one id
    per owner); calls nested in a held one (``train`` -> ``save_model``) pass through."""

    def __init__(self) -> None:
        self.id = uuid.uuid4().hex[:12]
        self._held = False

    @contextlib.contextmanager
    def hold(self, output_dir: str, *, claim: bool, action: str, folder: str | None = None,
             enabled: bool = True) -> Iterator[None]:
        """Hold ``output_dir`` for the block while it writes into ``folder``.

        Args:
            output_dir: the trainer's output folder.
            claim, action: as in :class:`OutputDirLock`.
            folder: the folder written (default: ``output_dir``); one outside ``output_dir`` needs no hold.
            enabled: take the lock (only the main process of a run does).
        """
        root = os.path.abspath(output_dir)
        inside = os.path.commonpath([root, os.path.abspath(folder if folder is not None else root)]) == root
        if self._held or not enabled or not inside:
            yield
            return
        with OutputDirLock(output_dir, owner=self.id, claim=claim, action=action):
            self._held = True
            try:
                yield
            finally:
                self._held = False
