"""A bounded pool of student snapshots recorded during training, sampled as starting points of meta steps.

LKD learns the loss "with various convergence rates of predictions" by computing hypergradients at students
taken from across training, not only at the current weights (uniform sampling of previously trained students;
``docs/method.md``, "Snapshot pool"). The pool keeps at most ``max_size`` snapshots spread over the *whole* run: when it
is full, every second snapshot is dropped and the recording interval doubles. Snapshots live in CPU memory by
default, or as safetensors files in a directory (``storage_dir``) for models too large to keep ``max_size`` copies in
memory.

A pool can be written into a Trainer checkpoint and read back on resume (:meth:`SnapshotPool.save_state`,
:meth:`SnapshotPool.load_state`): the snapshots' weights are always copied into the checkpoint (a disk-backed
pool's files may be thinned away after the checkpoint was written), with the recording interval and the sampling RNG.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass

import torch
from safetensors.torch import load_file, save_file

from ..constants import SNAPSHOT_STRATEGIES

POOL_STATE_NAME = "pool.json"


def snapshot_filename(step: int) -> str:
    """File name of the snapshot of ``step`` (in a disk-backed pool and in a saved pool state).

    Args:
        step: the student step the snapshot was taken at.
    """
    return f"snapshot-{step}.safetensors"


@dataclass
class Snapshot:
    """Student weights at ``step``: held in memory (``tensors``) or in a safetensors file (``path``)."""

    step: int
    tensors: dict[str, torch.Tensor] | None = None
    path: str | None = None

    @property
    def params(self) -> dict[str, torch.Tensor]:
        """The weights (read from disk for a disk-backed snapshot)."""
        return self.tensors if self.tensors is not None else load_file(self.path)


class SnapshotPool:
    """Student weights recorded every ``interval`` steps (on ``device``, CPU by default), at most ``max_size``.

    Args:
        max_size: the most snapshots kept; when exceeded, every second one is dropped and ``interval`` doubles.
        interval: initial recording interval, in student steps.
        strategy: which snapshot a meta step starts from: ``current`` (always the live weights), ``uniform`` (uniform
            over the pool and the live weights), ``gaussian`` (a snapshot about ``|N(0, distance)|`` steps back), or
            ``fixed`` (the snapshot nearest to ``distance`` steps back).
        distance: the step distance of ``gaussian`` (its standard deviation) and ``fixed``.
        device: where in-memory snapshots are kept.
        seed: seed of the sampling RNG.
        storage_dir: if given, snapshots are written there as ``snapshot-<step>.safetensors`` files (and deleted
            when thinned) instead of being kept in memory.
    """

    def __init__(
        self,
        max_size: int = 16,
        interval: int = 100,
        strategy: str = "uniform",
        distance: int = 500,
        device: str | torch.device = "cpu",
        seed: int = 0,
        storage_dir: str | None = None,
    ) -> None:
        if strategy not in SNAPSHOT_STRATEGIES:
            raise ValueError(f"Unknown snapshot strategy {strategy!r}. Known: {', '.join(SNAPSHOT_STRATEGIES)}.")
        if max_size < 2 or interval < 1:
            raise ValueError(f"Need max_size >= 2 and interval >= 1, got {max_size} and {interval}.")
        self.max_size, self.interval, self.strategy, self.distance = max_size, interval, strategy, distance
        self.device = torch.device(device)
        self.storage_dir = storage_dir
        if storage_dir is not None:
            os.makedirs(storage_dir, exist_ok=True)
        self.snapshots: list[Snapshot] = []
        self._rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.snapshots)

    @property
    def nbytes(self) -> int:
        """Memory held by the pool's in-memory tensors (0 for a disk-backed pool)."""
        return sum(t.numel() * t.element_size() for s in self.snapshots if s.tensors for t in s.tensors.values())

    @property
    def disk_bytes(self) -> int:
        """Bytes of the pool's snapshot files."""
        return sum(os.path.getsize(s.path) for s in self.snapshots if s.path is not None)

    def is_due(self, step: int) -> bool:
        """Whether ``step`` is a recording step not recorded yet.

        Args:
            step: the student's global step.
        """
        return step % self.interval == 0 and not (self.snapshots and self.snapshots[-1].step == step)

    def maybe_record(self, step: int, params: dict[str, torch.Tensor]) -> bool:
        """Record ``params`` if ``step`` is a recording step; thin the pool when it overflows. Returns whether it
        recorded.

        Args:
            step: the student's global step.
            params: the student's weights by parameter name (copied).
        """
        if not self.is_due(step):
            return False
        self.add(step, params)
        return True

    def add(self, step: int, params: dict[str, torch.Tensor]) -> None:
        """Add a snapshot (copied to the pool's device), keeping the pool sorted by step and bounded.

        Args:
            step: the student step the weights are from.
            params: the student's weights by parameter name (copied).
        """
        if self.storage_dir is None:
            snapshot = Snapshot(step, tensors={n: p.detach().to(self.device, copy=True) for n, p in params.items()})
        else:
            path = os.path.join(self.storage_dir, snapshot_filename(step))
            save_file({n: p.detach().cpu().contiguous() for n, p in params.items()}, path)
            snapshot = Snapshot(step, path=path)
        self.snapshots.append(snapshot)
        self.snapshots.sort(key=lambda s: s.step)
        if len(self.snapshots) > self.max_size:
            for dropped in self.snapshots[1::2]:
                if dropped.path is not None:
                    os.remove(dropped.path)
            self.snapshots = self.snapshots[::2]
            self.interval *= 2

    def sample_recorded(self) -> Snapshot:
        """A recorded snapshot drawn uniformly (never the live weights)."""
        if not self.snapshots:
            raise ValueError("The snapshot pool is empty.")
        return self.snapshots[self._rng.randrange(len(self.snapshots))]

    def sample(self, current_step: int) -> Snapshot | None:
        """The snapshot a meta step starts from, or ``None`` for the live weights.

        Args:
            current_step: the student's global step (the ``gaussian`` and ``fixed`` strategies look back from it).
        """
        if self.strategy == "current" or not self.snapshots:
            return None
        if self.strategy == "uniform":
            index = self._rng.randrange(len(self.snapshots) + 1)
            return None if index == len(self.snapshots) else self.snapshots[index]
        back = abs(self._rng.gauss(0.0, self.distance)) if self.strategy == "gaussian" else self.distance
        target = current_step - back
        best = min(self.snapshots, key=lambda s: abs(s.step - target))
        return None if abs(current_step - target) < abs(best.step - target) else best

    # ----------------------------------------------------------------------------------------------------------
    # checkpointing
    def save_state(self, directory: str) -> None:
        """Write the pool to ``directory``: each snapshot as ``snapshot-<step>.safetensors`` (a disk-backed pool's
        files are copied) and ``pool.json`` with the snapshot steps, the current recording interval and the state of
        the sampling RNG. :meth:`load_state` restores it.

        Args:
            directory: the folder to write (created if needed), e.g. in a Trainer checkpoint.
        """
        os.makedirs(directory, exist_ok=True)
        for snapshot in self.snapshots:
            target = os.path.join(directory, snapshot_filename(snapshot.step))
            if snapshot.path is not None:
                shutil.copyfile(snapshot.path, target)
            else:
                save_file({n: t.detach().cpu().contiguous() for n, t in snapshot.tensors.items()}, target)
        version, internal, gauss_next = self._rng.getstate()
        state = {
            "steps": [s.step for s in self.snapshots],
            "interval": self.interval,
            "max_size": self.max_size,
            "strategy": self.strategy,
            "rng_state": [version, list(internal), gauss_next],
        }
        with open(os.path.join(directory, POOL_STATE_NAME), "w") as f:
            json.dump(state, f)

    def load_state(self, directory: str) -> None:
        """Replace the snapshots, the recording interval and the sampling RNG state by those :meth:`save_state`
        wrote to ``directory``. The pool keeps its own ``max_size``, ``strategy``, ``distance``, device and storage:
        a disk-backed pool copies the snapshot files into its ``storage_dir`` (and deletes the files of the snapshots
        it drops), an in-memory pool reads them into memory.

        Args:
            directory: a folder written by :meth:`save_state`.
        """
        with open(os.path.join(directory, POOL_STATE_NAME)) as f:
            state = json.load(f)
        restored = []
        for step in state["steps"]:
            source = os.path.join(directory, snapshot_filename(step))
            if self.storage_dir is None:
                tensors = {n: t.to(self.device) for n, t in load_file(source).items()}
                restored.append(Snapshot(step, tensors=tensors))
                continue
            path = os.path.join(self.storage_dir, snapshot_filename(step))
            if os.path.abspath(source) != os.path.abspath(path):
                partial = f"{path}.{os.getpid()}.partial"
                shutil.copyfile(source, partial)
                os.replace(partial, path)  # never a half-written snapshot file under its final name
            restored.append(Snapshot(step, path=path))
        kept = {s.path for s in restored}
        for dropped in self.snapshots:
            if dropped.path is not None and dropped.path not in kept and os.path.exists(dropped.path):
                os.remove(dropped.path)
        self.snapshots = restored
        self.interval = int(state["interval"])
        version, internal, gauss_next = state["rng_state"]
        self._rng.setstate((version, tuple(internal), gauss_next))
