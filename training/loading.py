"""The training pairs of every epoch from one DataLoader, whose worker processes start once per run.

Worker processes forked at every epoch start made the parent copy, page by page, all the memory it
wrote afterwards that the new workers shared (weights, optimizer state, freed activation buffers):
copy-on-write stalled the first step of each epoch for tens of seconds on small machines. Here
the workers persist across epochs, and each item's random picks and augmentations are seeded from
``(seed, epoch, index)`` alone. A batch therefore holds the same images whichever process loads it
and whatever that process loaded before: a resumed run, or one with another ``--num_workers``,
draws exactly the batches of the uninterrupted run.
"""
from typing import Iterator, Optional, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from .state import item_seed, seeded_rngs, shuffle_generator

__all__ = ["EpochItems", "EpochOrder", "TrainLoader"]


class EpochItems(Dataset):
    """``dataset`` addressed by ``(epoch, index)`` keys; every item is drawn under RNGs seeded from
    ``(seed, epoch, index)``, and the loading process's own RNG states are left as they were."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, int]):
        epoch, index = key
        with seeded_rngs(item_seed(self.seed, epoch, index)):
            return self.dataset[index]


class EpochOrder(Sampler):
    """The current epoch's shuffled indices as ``(epoch, index)`` keys, from position ``start`` on.

    The order depends on ``(seed, epoch)`` only (or on a ``DistributedSampler``'s own seeding, which
    gives each process its share); the epoch travels with each key to the worker processes, which
    live across epochs and never see this object change.
    """

    def __init__(self, num_items: int, seed: int, distributed: Optional[DistributedSampler] = None):
        if num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {num_items}")
        self.num_items, self.seed, self.distributed = num_items, seed, distributed
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        if epoch < 0 or start < 0:
            raise ValueError(f"epoch and start must be >= 0, got epoch={epoch}, start={start}")
        self.epoch, self.start = epoch, start

    def _epoch_size(self) -> int:
        return self.distributed.num_samples if self.distributed is not None else self.num_items

    def _order(self):
        if self.distributed is not None:
            self.distributed.set_epoch(self.epoch)
            return list(self.distributed)
        return torch.randperm(self.num_items, generator=shuffle_generator(self.seed, self.epoch)).tolist()

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        return iter([(self.epoch, index) for index in self._order()[self.start:]])

    def __len__(self) -> int:
        return max(self._epoch_size() - self.start, 0)


class TrainLoader:
    """Batches of any epoch of a run (the last incomplete one dropped) from one DataLoader.

    With ``num_workers > 0`` its worker processes start at the first :meth:`epoch` call and serve
    every later epoch; :meth:`close` ends them (garbage collection would too, but late).
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, num_workers: int = 0,
                 pin_memory: bool = False, distributed: Optional[DistributedSampler] = None):
        self.batch_size = batch_size
        self.order = EpochOrder(len(dataset), seed, distributed)
        self.loader = DataLoader(EpochItems(dataset, seed), batch_size=batch_size, sampler=self.order,
                                 drop_last=True, num_workers=num_workers, pin_memory=pin_memory,
                                 persistent_workers=num_workers > 0,
                                 # its own generator: starting an iterator draws nothing from torch's RNG
                                 generator=torch.Generator().manual_seed(seed % 2**63))

    def steps_per_epoch(self) -> int:
        return self.order._epoch_size() // self.batch_size

    def epoch(self, epoch: int, skip_batches: int = 0) -> Iterator:
        """An iterator over the batches of ``epoch`` (0-based), leaving out its first ``skip_batches``."""
        self.order.set_epoch(epoch, skip_batches * self.batch_size)
        return iter(self.loader)

    def close(self) -> None:
        iterator = getattr(self.loader, "_iterator", None)
        if iterator is not None:
            iterator._shutdown_workers()
            self.loader._iterator = None
