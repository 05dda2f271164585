"""The stream of validation batches of the meta steps: endless, sharded by rank, resumable at any position."""

from __future__ import annotations

import warnings
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, random_split


class MetaBatchSampler(Sampler[list[int]]):
    """Endless shuffled batches of indices into a meta dataset of ``size`` examples, resumable at any position.

    Epoch ``e`` visits the examples in the order of ``torch.randperm(size)`` drawn from a generator seeded with
    ``seed + e``, ``batch_size`` at a time; an incomplete last batch is dropped, unless the dataset is smaller than one
    batch (then every batch holds all examples). Batch ``i`` of the stream depends only on ``(seed, i)``, so a resumed
    run starts at the number of batches already drawn (``start``) without loading them.

    Args:
        size: number of examples.
        batch_size: examples per batch.
        seed: seed of the shuffling.
        start: index of the first batch to yield.
    """

    def __init__(self, size: int, batch_size: int, seed: int = 0, start: int = 0) -> None:
        if size < 1 or batch_size < 1:
            raise ValueError(f"Need a non-empty meta dataset and batch size, got {size} examples, batch {batch_size}.")
        self.size, self.batch_size, self.seed, self.start = size, batch_size, seed, start
        self.batches_per_epoch = max(size // batch_size, 1)

    def __iter__(self) -> Iterator[list[int]]:
        index, epoch, order = self.start, None, []
        while True:
            batch_epoch, offset = divmod(index, self.batches_per_epoch)
            if batch_epoch != epoch:
                epoch = batch_epoch
                order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
            yield order[offset * self.batch_size : (offset + 1) * self.batch_size]
            index += 1


class MetaBatchStream:
    """Validation batches for the meta steps, drawn endlessly from a dataset; ``position`` batches drawn so far.

    With several processes every rank draws from its own disjoint shard of the dataset (every ``world_size``-th
    example), so that the averaged hypergradient sees ``world_size`` different validation batches, just as the
    student step sees ``world_size`` different training batches.

    Args:
        dataset: the meta (validation) dataset.
        batch_size: examples per batch and process.
        collate_fn: turns a list of examples into a batch.
        seed: seed of the shuffling (and of the DataLoader's worker seeds: never the global RNG).
        rank: this process's index.
        world_size: number of processes.
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        collate_fn: Callable[[list[Any]], dict[str, Any]],
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
    ) -> None:
        self.dataset, self.batch_size, self.collate_fn = dataset, batch_size, collate_fn
        self.seed, self.rank, self.world_size, self.num_workers = seed, rank, world_size, num_workers
        self.position = 0  # batches drawn so far (a resumed run continues there: seek)
        self._iterator: Iterator[dict[str, Any]] | None = None

    def seek(self, position: int) -> None:
        """Continue the stream at batch ``position``.

        Args:
            position: the index of the next batch in the seeded batch order.
        """
        self.position, self._iterator = position, None

    def __next__(self) -> dict[str, Any]:
        if self._iterator is None:
            dataset = self.dataset
            if self.world_size > 1 and len(dataset) >= self.world_size:
                dataset = Subset(dataset, range(self.rank, len(dataset), self.world_size))
            sampler = MetaBatchSampler(len(dataset), self.batch_size, seed=self.seed, start=self.position)
            loader = DataLoader(
                dataset,
                batch_sampler=sampler,
                collate_fn=self.collate_fn,
                num_workers=self.num_workers,
                generator=torch.Generator().manual_seed(self.seed),
            )
            self._iterator = iter(loader)
        batch = next(self._iterator)
        self.position += 1
        return batch


def split_meta_dataset(dataset: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Split ``fraction`` of ``dataset`` off (seeded) as the meta (validation) set.

    Args:
        dataset: a ``datasets.Dataset`` (split with ``train_test_split``) or any sized torch dataset.
        fraction: the share held out, in ``(0, 1)``.
        seed: seed of the split.

    Returns:
        ``(train, meta)``.
    """
    n = len(dataset)
    n_meta = int(round(n * fraction))
    if n_meta < 1 or n - n_meta < 1:
        raise ValueError(
            f"lkd_val_fraction={fraction} of {n} training examples leaves an empty split "
            f"({n - n_meta} train / {n_meta} validation); use a larger dataset or pass meta_dataset=."
        )
    if hasattr(dataset, "train_test_split"):
        split = dataset.train_test_split(test_size=n_meta, seed=seed)
        return split["train"], split["test"]
    train, meta = random_split(dataset, [n - n_meta, n_meta], generator=torch.Generator().manual_seed(seed))
    return train, meta


def default_val_source(args: Any, meta_dataset: Dataset | None) -> str:
    """``args.meta_val_source``, else ``"heldout"`` when a ``meta_dataset`` is given or ``args.lkd_val_fraction`` is
    set, else ``"train_batch"``.

    Args:
        args: the run's :class:`~lkd_hf.LKDConfig`.
        meta_dataset: the validation set of the meta steps, if any.
    """
    return args.meta_val_source or (
        "heldout" if meta_dataset is not None or args.lkd_val_fraction is not None else "train_batch"
    )


def meta_validation_data(
    args: Any, train_dataset: Dataset | None, meta_dataset: Dataset | None, learns_loss: bool = True
) -> tuple[str, Dataset | None, Dataset | None]:
    """Where a run's meta steps validate: ``(val_source, train_dataset, meta_dataset)``.

    ``args.meta_val_source``, else ``"heldout"`` when a ``meta_dataset`` is given or ``args.lkd_val_fraction`` is
    set, else ``"train_batch"`` (no image held out). A ``"heldout"`` run without a ``meta_dataset`` splits
    ``lkd_val_fraction`` of ``train_dataset`` off (:func:`split_meta_dataset`).

    Args:
        args: the run's :class:`~lkd_hf.LKDConfig`.
        train_dataset: the training set.
        meta_dataset: the validation set passed to the trainer, if any.
        learns_loss: whether the run learns a loss (else nothing is split off; with ``freeze_loss`` a
            ``meta_dataset`` or ``lkd_val_fraction`` given is unused, and a warning says so).
    """
    unused = [name for name, value in (("meta_dataset", meta_dataset), ("lkd_val_fraction", args.lkd_val_fraction))
              if value is not None]
    if not learns_loss and args.freeze_loss and unused:
        warnings.warn(
            f"{' and '.join(unused)} unused: the learned loss is kept fixed (freeze_loss=True, the default for a loss "
            "learned beforehand), so no meta step validates on it. Set freeze_loss=False to learn the loss further, or "
            f"leave {' and '.join(unused)} out.",
            UserWarning,
            stacklevel=3,
        )
    val_source = default_val_source(args, meta_dataset)
    if learns_loss and val_source == "heldout" and meta_dataset is None and train_dataset is not None:
        if args.lkd_val_fraction is None:
            raise ValueError(
                "meta_val_source='heldout' needs validation data: pass meta_dataset= (e.g. the 'validation' split "
                "of lkd_hf.build_datasets) or set lkd_val_fraction to hold part of the training set out."
            )
        train_dataset, meta_dataset = split_meta_dataset(train_dataset, args.lkd_val_fraction, args.seed)
    return val_source, train_dataset, meta_dataset
